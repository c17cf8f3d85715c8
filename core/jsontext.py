"""JSON text from users and API clients, read with a bound on nesting (stdlib only).

``json.loads`` recurses once per nested array/object, so a few kilobytes of ``[[[[...`` raise
RecursionError (a bare traceback, or worse inside a server). Every reader of user-supplied JSON
(presets, the models manifest, text boxes, layouts, workflow files) checks the depth first.
"""
from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 32  # the pack's own formats nest at most ~6 levels


def depth_problem(text: str, limit: int = MAX_DEPTH) -> str | None:
    """None, or why `text` nests deeper than `limit` arrays/objects; one linear scan that skips
    strings, run before json.loads (whose recursion would otherwise raise RecursionError)."""
    depth = 0
    in_str = esc = False
    line = 1
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return f"nested more than {limit} levels deep (at line {line})"
        elif ch in "]}":
            depth -= 1
        if ch == "\n":
            line += 1
    return None


def loads(text: str, limit: int = MAX_DEPTH) -> Any:
    """``json.loads(text)`` after the depth check; too deep raises ``ValueError`` with the reason
    (``json.JSONDecodeError`` is a ValueError too, so one ``except ValueError`` catches both)."""
    problem = depth_problem(text, limit)
    if problem:
        raise ValueError(f"the JSON is {problem}")
    return json.loads(text)
