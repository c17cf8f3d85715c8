"""Errors a user can act on.

Every error raised to a ComfyUI user says where it happened (node, input), what was
expected and how to fix it. They subclass ValueError so ComfyUI shows the message as-is.
"""
from __future__ import annotations


class AtelierError(ValueError):
    """An input or setup problem the user can fix.

    str(err) reads: "[Node] input 'name': problem. Expected: ... Fix: ..."
    """

    def __init__(self, problem: str, *, node: str | None = None, input: str | None = None,
                 expected: str | None = None, fix: str | None = None):
        self.problem, self.node, self.input = problem, node, input
        self.expected, self.fix = expected, fix
        parts = []
        where = " ".join(p for p in (f"[{node}]" if node else "", f"input '{input}':" if input else "") if p)
        parts.append(f"{where} {problem}".strip())
        if expected:
            parts.append(f"Expected: {expected}.")
        if fix:
            parts.append(f"Fix: {fix}")
        super().__init__(" ".join(parts))

    def at(self, node: str, input: str | None = None) -> "AtelierError":
        """This error attributed to `node` (and to `input` when it names none), for core errors
        raised without a node; an error that already names its node is returned unchanged."""
        if self.node is not None:
            return self
        return AtelierError(self.problem, node=node, input=self.input or input, expected=self.expected, fix=self.fix)


class MissingModelError(AtelierError):
    """A model file is not where ComfyUI looks for it; names the manifest entry and the folder."""

    def __init__(self, model_id: str, filename: str, folder: str, *, node: str | None = None,
                 input: str | None = None, url: str | None = None):
        self.model_id, self.filename, self.folder, self.url = model_id, filename, folder, url
        how = f"run `atelier models download {model_id}`"
        if url:
            how += f", or download {url}"
        how += f" and put it in ComfyUI/models/{folder}/{filename}"
        super().__init__(f"model file '{filename}' (manifest id '{model_id}') was not found in the '{folder}' model folder.",
                         node=node, input=input, fix=how + ".")
