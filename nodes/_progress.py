"""The one progress helper for nodes: ComfyUI's ProgressBar when running inside ComfyUI, a no-op
elsewhere (bench, scripts, core tests). Progress is a help, never a failure."""
from __future__ import annotations


class Progress:
    """``p = Progress(total); p.step(); p.set(done)`` -- updates the node's bar in the editor."""

    def __init__(self, total: int):
        self.total = max(0, int(total))
        self._bar = None
        if self.total >= 1:
            try:
                import comfy.utils
                self._bar = comfy.utils.ProgressBar(self.total)
            except Exception:  # outside ComfyUI: no bar
                self._bar = None

    def step(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def set(self, done: int, total: int | None = None) -> None:
        if self._bar is not None:
            self._bar.update_absolute(done, total if total is not None else self.total)

    def callback(self):
        """A ``(done, total) -> None`` function for core loops that report absolute progress."""
        return self.set
