"""The one size budget for allocations driven by user input (stdlib only).

A size typed in a widget or sent through the API (a grid of 256 x 256 cells, a 1 x 20000 image
scaled for PoolNet, a hand-made pad_info) must stop *before* anything is allocated, with an error
that names the input, the size it would need and how to proceed. Two limits, both changeable
before ComfyUI starts:

- ``ATELIER_MAX_MEGAPIXELS`` (default 67.1, i.e. 8192 x 8192): pixels in any one image a node makes
  or works on;
- ``ATELIER_MAX_GIB`` (default 16): bytes of one float32 batch a node allocates at once.

    from ..core.budget import check_size
    check_size(h, w, batch=b, channels=3, node="Atelier Image Grid", input="rows",
               what="the grid image", fix="use fewer rows/cols or a smaller cell size.")
"""
from __future__ import annotations

import os

from .errors import AtelierError

DEFAULT_MEGAPIXELS = 8192 * 8192 / 1e6
DEFAULT_GIB = 16.0
PIXELS_ENV = "ATELIER_MAX_MEGAPIXELS"
BYTES_ENV = "ATELIER_MAX_GIB"


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        v = float(raw)
    except ValueError:
        return default
    return v if v > 0 and v == v and v != float("inf") else default


def max_pixels() -> int:
    return int(_env_float(PIXELS_ENV, DEFAULT_MEGAPIXELS) * 1e6)


def max_bytes() -> int:
    return int(_env_float(BYTES_ENV, DEFAULT_GIB) * 2**30)


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def fits(height: int, width: int, *, batch: int = 1, channels: int = 3, bytes_per_value: int = 4) -> bool:
    """Whether ``batch`` images of ``height`` x ``width`` x ``channels`` (positive ints) are within both
    limits: the test check_size applies, without building its error texts (for a per-call fast path)."""
    return height * width <= max_pixels() and height * width * batch * channels * bytes_per_value <= max_bytes()


def check_size(height: int, width: int, *, batch: int = 1, channels: int = 3, bytes_per_value: int = 4,
               node: str | None = None, input: str | None = None, what: str = "the image",
               fix: str | None = None) -> None:
    """Raise an AtelierError when ``batch`` images of ``height`` x ``width`` x ``channels`` would exceed
    the budget (or a size is not a positive whole number); return None when they fit."""
    try:
        h, w, b, c = (int(v) for v in (height, width, batch, channels))
        whole = all(float(v) == int(v) for v in (height, width, batch, channels))
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole or min(h, w, b, c) < 1:
        raise AtelierError(f"{what} would be {height} x {width} (batch {batch})", node=node, input=input,
                           expected="positive whole-number sizes", fix=fix or "check the sizes fed to this node.")
    if fits(h, w, batch=b, channels=c, bytes_per_value=bytes_per_value):
        return
    pixels, nbytes = h * w, h * w * b * c * bytes_per_value
    limit_px, limit_b = max_pixels(), max_bytes()
    if pixels > limit_px:
        raise AtelierError(
            f"{what} would be {w:,} x {h:,} px ({pixels / 1e6:,.1f} megapixels, {_gib(h * w * c * bytes_per_value)} "
            f"per image), over the size budget of {limit_px / 1e6:,.1f} megapixels", node=node, input=input,
            expected=f"at most {limit_px / 1e6:,.1f} megapixels per image",
            fix=(fix + " " if fix else "") + f"To allow larger images, set {PIXELS_ENV} (megapixels) before "
                                              "starting ComfyUI, if the machine has the memory.")
    if nbytes > limit_b:
        raise AtelierError(
            f"{what} would need {_gib(nbytes)} at once ({b} x {w:,} x {h:,} x {c}), over the memory budget of "
            f"{_gib(limit_b)}", node=node, input=input, expected=f"at most {_gib(limit_b)} per batch",
            fix=(fix + " " if fix else "") + f"Split the batch, or set {BYTES_ENV} (GiB) before starting "
                                              "ComfyUI, if the machine has the memory.")
