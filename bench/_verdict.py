"""Shared by the bench scripts (not a bench itself): per-row targets and their verdicts, and the allocator
set-up every timed bench does before it measures anything.

A target is a bound on a ratio against the row's peer, measured in the same run: ``("<=", 1.1)`` means the
ratio must be at most 1.1, ``(">=", 4)`` at least 4. Rows without a target print "—".
"""
from __future__ import annotations

import math

import numpy as np

NO_TARGET = "—"


def target_text(target: tuple[str, float] | None) -> str:
    """``("<=", 1.1)`` -> ``"<= 1.1"``; None -> "—"."""
    if target is None:
        return NO_TARGET
    op, bound = target
    return f"{op} {bound:g}"


def verdict(value: float | None, target: tuple[str, float] | None) -> str:
    """"met" / "missed" for ``value`` against ``target``; "—" without a target or without a value."""
    if target is None or value is None or (isinstance(value, float) and math.isnan(value)):
        return NO_TARGET
    op, bound = target
    if op == "<=":
        ok = value <= bound
    elif op == ">=":
        ok = value >= bound
    else:
        raise ValueError(f"unknown target operator {op!r} (use '<=' or '>=')")
    return "met" if ok else "missed"


def cells(value: float | None, target: tuple[str, float] | None) -> str:
    """``"<= 1.1 met"``-style text for a table cell (target and verdict)."""
    if target is None:
        return NO_TARGET
    return f"{target_text(target)} {verdict(value, target)}"


def settle_allocator() -> None:
    """Put glibc's allocator where a long-running ComfyUI process has it: there, torch has long since freed
    tensors of every size, which raised malloc's dynamic mmap threshold to its 32 MiB ceiling, so buffers
    below it are recycled warm from the heap. A fresh bench process starts at 128 KiB instead, and whether
    an image's few-MiB temporaries come back warm or as fresh pages (page faults: up to 2x the time of a
    512² call, for the floor as much as for ours) then depends on the order the cases happen to run in.
    Freeing one 31 MiB block (mmapped, below the ceiling) sets the threshold once, for every method alike."""
    block = np.ones(31 * 2**20, np.uint8)
    del block
