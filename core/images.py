"""The one home for ComfyUI IMAGE plumbing: batch normalising, RGB conversion, float <-> uint8.

ComfyUI's IMAGE is float32 ``[B,H,W,C]`` in 0..1. Every family goes through these, so an image and
its saved PNG give the same analysis (``to_uint8`` is the conversion ComfyUI's Save Image uses:
scale by 255, clip, truncate) and an RGBA or gray input is treated the same way everywhere.
"""
from __future__ import annotations

import math
import threading
import time

import cv2
import numpy as np
import torch

from .errors import AtelierError
from .finite import VAE_NAN_FIX, NonFinitePixels, sum_is_finite
from .parallel import in_parallel

#: where RGBA/LA pixels are laid when flattening: white (the neutral page colour, and the colour a
#: transparent product shot should end on); glyph and line maps pass 0.0 (black) explicitly
WHITE = (1.0, 1.0, 1.0)


def image_batch(image, node: str | None = None, input: str = "image") -> torch.Tensor:
    """ComfyUI IMAGE (or something close to it) -> CPU float32 ``[B,H,W,C]``, C in 1..4.

    Accepts ``[B,H,W,C]``, a single ``[H,W,C]`` (C <= 4) and gray ``[B,H,W]`` / ``[H,W]``. No copy when
    the input already is a CPU float32 IMAGE. Anything else raises an AtelierError naming node and input.
    """
    if not isinstance(image, torch.Tensor):
        raise AtelierError(f"got {type(image).__name__}, not an image tensor", node=node, input=input,
                           expected="an IMAGE (float tensor [B,H,W,C] in 0..1)",
                           fix="connect an IMAGE output (Load Image, VAE Decode, ...).")
    x = image.detach() if image.requires_grad else image  # (detach: a dispatcher call, ~10 us on a cold cache)
    if x.ndim == 2:
        x = x[None, :, :, None]
    elif x.ndim == 3:
        x = x[None] if x.shape[-1] <= 4 else x[..., None]
    if x.ndim != 4 or x.shape[-1] > 4:
        raise AtelierError(f"got a tensor of shape {tuple(image.shape)}", node=node, input=input,
                           expected="an IMAGE [B,H,W,C] with C = 1, 2, 3 or 4",
                           fix="connect an IMAGE output; to use a MASK, convert it with 'Convert Mask to Image'.")
    if 0 in x.shape:
        raise AtelierError(f"got an empty image batch of shape {tuple(image.shape)}", node=node, input=input,
                           expected="at least one image of at least 1x1 pixel",
                           fix="check the node that produces this image.")
    if not x.is_cpu or x.dtype != torch.float32:
        x = x.to("cpu", torch.float32)
    return x


def to_rgb(image: torch.Tensor, background: float | tuple[float, float, float] = WHITE) -> torch.Tensor:
    """``[B,H,W,C]`` float with C = 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA) -> ``[B,H,W,3]`` in 0..1.

    Gray is repeated; alpha is composited onto ``background`` (a float for gray, or an RGB triple), because
    the stored colour of transparent pixels is arbitrary. Values are clamped to 0..1. A 3-channel input
    in range is returned as is (no copy). Normalise odd shapes with :func:`image_batch` first.
    """
    x = image if image.ndim == 4 else image_batch(image)
    c = x.shape[-1]
    if c not in (1, 2, 3, 4):
        raise AtelierError(f"an image has {c} channels", expected="1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA)")
    if not x.is_floating_point():
        x = x.float()
    if c in (2, 4):
        rgb, a = x[..., :c - 1], x[..., c - 1:].clamp(0, 1)
        if rgb.shape[-1] == 1:
            rgb = rgb.expand(*rgb.shape[:-1], 3)
        bg = torch.as_tensor(background, dtype=x.dtype, device=x.device)
        return (rgb * a + bg * (1 - a)).clamp(0, 1)
    if c == 1:
        x = x.expand(*x.shape[:-1], 3)
    if x.numel() and (x.min() < 0 or x.max() > 1):
        x = x.clamp(0, 1)
    return x


def to_uint8(image: torch.Tensor | np.ndarray, *, finite: bool | str = False, out: np.ndarray | None = None,
             scratch: np.ndarray | None = None) -> np.ndarray:
    """float 0..1 (any shape) -> uint8 ndarray, exactly as ComfyUI's Save Image writes it
    (``clip(255 * x, 0, 255)`` then truncation), so analysing an IMAGE and its saved PNG agree.

    ``finite``: False -- NaN becomes 0 (what Save Image's cast gives on x86); True -- the caller has already
    refused NaN/inf (core.finite), which skips the NaN pass; ``"refuse"`` -- check while converting (the
    values are in cache from the product just taken: at 2048² this saves a whole extra read of the image)
    and raise core.finite.NonFinitePixels on NaN/inf. ``out``: a uint8 array of the same shape to write into
    (returned); ``scratch``: a float32 array of at least as many values for the x255 product. Callers that
    convert strip after strip pass both, which saves two allocations per strip (~15 % at 1024²)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().to("cpu", torch.float32).numpy()
    if image.dtype == np.uint8:
        if out is None:
            return image
        out[...] = image
        return out
    src = np.asarray(image, dtype=np.float32)
    if _in_unit_range(src):  # the common case (VAE Decode, Load Image): x 255 needs no clip, nothing is NaN
        if out is None:
            out = np.empty(src.shape, np.uint8)
        # the float product is truncated straight into the output (numpy casts it in small buffers): one
        # pass fewer than product then cast, 0.6x the time on a whole 512² image
        np.multiply(src, np.float32(255.0), out=out, casting="unsafe")
        return out
    a = None if scratch is None else scratch.reshape(-1)[:src.size].reshape(src.shape)
    a = np.multiply(src, np.float32(255.0), out=a)
    if finite == "refuse" and not sum_is_finite(src):
        raise NonFinitePixels("the image contains NaN/inf pixels",
                              expected="finite pixels (ComfyUI images are 0..1)", fix=VAE_NAN_FIX)
    np.clip(a, 0, 255, out=a)
    if not finite and np.isnan(a).any():  # checked first: nan_to_num costs ten times a clip, and NaN is rare
        np.nan_to_num(a, copy=False, nan=0.0)
    if out is None:
        return a.astype(np.uint8)
    np.copyto(out, a, casting="unsafe")
    return out


#: the bits of float32 1.0: read as unsigned integers, the floats +0.0..1.0 are exactly the bit patterns up to
#: this one (negative values, -0.0, NaN and inf all lie above it)
_ONE_BITS = int(np.float32(1.0).view(np.uint32))


def _in_unit_range(a: np.ndarray) -> bool:
    """True when every value of a float32 array is in +0.0..1.0 (so none is NaN or inf, and x 255 needs no
    clip): one integer max over the bits, ~0.4x the cost of the finite sum it replaces, and exact."""
    return not a.size or int(a.view(np.uint32).max()) <= _ONE_BITS


#: bytes of float32 per strip in :func:`to_uint8_into` for a conversion that runs alone on a core: the faster
#: of these two on this machine, timed once on first use (:func:`single_strip_bytes`). Which one wins depends
#: on the CPU, not on the image: on a 2 MB-L2 Xeon a strip that stays in L2 with its uint8 result is fastest
#: (512² RGB to gray 0.45 ms at 384 KiB against 0.56 ms at 1.5 MiB), on a 1 MB-L2 EPYC (Zen 5) the per-call
#: cost of each strip outweighs that and the whole image in one call is (0.79-0.86x the 384 KiB time, where
#: OpenCV's cvtColor also runs on two threads).
STRIP_CHOICES = (384 * 1024, 4 * 1024 * 1024)
#: beside other threads (row bands, a batch's lanes) each numpy/OpenCV call also waits for the GIL, and few
#: large strips win: eight 512² images on two lanes, 3.4 ms at 3-8 MiB against 5.1 ms at 1 MiB
PARALLEL_STRIP_BYTES = 4 * 1024 * 1024

_single_strip: list = []  # [bytes] once chosen
_choosing = threading.Lock()


def single_strip_bytes() -> int:
    """The strip size (bytes of float32) for a conversion alone on a core: the faster of
    :data:`STRIP_CHOICES` at converting a 512² RGB image to gray (the fastest of 12 alternating runs each,
    about 14 ms in all), timed the first time it is asked for in this process. Only speed depends on it:
    every strip size gives the same bytes."""
    if not _single_strip:
        with _choosing:
            if not _single_strip:
                _single_strip.append(_time_strip_choices())
    return _single_strip[0]


def _time_strip_choices(side: int = 512, rounds: int = 12) -> int:
    ramp = np.arange(side * side * 3, dtype=np.uint32) % 256
    img = (ramp.astype(np.float32) * np.float32(1 / 255)).reshape(side, side, 3)
    out = np.empty((side, side), np.uint8)
    row = side * 3 * 4
    times: dict[int, list[float]] = {c: [] for c in STRIP_CHOICES}
    for r in range(rounds + 1):  # round 0 warms up
        for c in STRIP_CHOICES if r % 2 else STRIP_CHOICES[::-1]:  # either goes first in turn
            t = time.perf_counter()
            to_uint8_into(img, out, rows=max(1, c // row), convert=cv2.COLOR_RGB2GRAY)
            if r:
                times[c].append(time.perf_counter() - t)
    return min(STRIP_CHOICES, key=lambda c: (min(times[c]), c))  # the fastest run: least disturbed by load


def strip_rows(image: np.ndarray) -> int:
    """Rows of ``image`` ``[H, ...]`` that make one strip of float32 for :func:`to_uint8_into` (at least 1):
    :func:`single_strip_bytes`, or :data:`PARALLEL_STRIP_BYTES` in a thread that runs beside others
    (core.parallel.in_parallel)."""
    row = 4 * math.prod(image.shape[1:])  # (math.prod: np.prod costs ~2.5 us a call, a fifth of a small image's)
    return max(1, (PARALLEL_STRIP_BYTES if in_parallel() else single_strip_bytes()) // max(row, 1))


def to_uint8_into(image: np.ndarray, out: np.ndarray, *, rows: int | None = None, finite: bool | str = False,
                  convert: int | None = None) -> np.ndarray:
    """:func:`to_uint8` of a float image ``[H, ...]`` written into ``out``, a strip of ``rows`` rows at a time
    (default :func:`strip_rows`) through one reused float and one reused uint8 buffer, so no full-size
    temporary is made and each strip is still in cache when it is used. ``convert``: an OpenCV colour code
    (cv2.COLOR_RGB2GRAY, ...) applied to each uint8 strip into ``out`` (whose rows then have the converted
    shape); None writes the uint8 values themselves. Returns ``out``."""
    h = image.shape[0]
    rows = strip_rows(image) if rows is None else rows
    k = max(1, min(rows, h))
    scratch = np.empty((k,) + image.shape[1:], np.float32)
    u8 = np.empty((k,) + image.shape[1:], np.uint8) if convert is not None else None
    for r in range(0, h, k):
        e = min(r + k, h)
        if convert is None:
            to_uint8(image[r:e], finite=finite, out=out[r:e], scratch=scratch)
        else:
            cv2.cvtColor(to_uint8(image[r:e], finite=finite, out=u8[:e - r], scratch=scratch), convert, dst=out[r:e])
    return out


def rgb_uint8(image: torch.Tensor, background: float | tuple[float, float, float] = WHITE) -> np.ndarray:
    """IMAGE (any accepted channel count) -> uint8 RGB ``[B,H,W,3]``: :func:`to_rgb` then :func:`to_uint8`."""
    return to_uint8(to_rgb(image, background))  # to_rgb normalises odd shapes itself


def from_uint8(array: np.ndarray) -> torch.Tensor:
    """uint8 ``[..., C]`` -> float32 tensor in 0..1 (the inverse of :func:`to_uint8` on its values)."""
    return torch.from_numpy(np.ascontiguousarray(array)).to(torch.float32).div_(255.0)
