"""The one finite-values check: NaN / inf in image batches, tensors and float inputs.

A real VAE decode chain can produce NaN (an fp16 VAE overflowing), and NaN or inf sent as a number
through the API passes ComfyUI's min/max check (every comparison with NaN is False). Nodes where a
non-finite value would give a silent wrong result call one of these and get an AtelierError naming
the node, the input, what was found and the fix:

    from ..core.finite import check_finite, check_finite_float
    check_finite(images, node="Atelier Style Encode", input="images")          # IMAGE / MASK / LATENT tensor
    strength = check_finite_float(strength, node="Atelier Style Latent Match", input="strength")
    scores = check_finite_floats(scores, node="Atelier Aesthetic Filter", input="scores", what="scores")

Cost: one reduction over the tensor (a finite sum means every element is finite); only a batch
that fails is looked at item by item to say which items are bad.
"""
from __future__ import annotations

import math
from typing import Iterable

import cv2
import numpy as np
import torch

from .errors import AtelierError

#: the fix for NaN/inf pixels: almost always an fp16 VAE decode that overflowed
VAE_NAN_FIX = ("the VAE decode (or a node before this one) produced NaN/inf pixels; an fp16 VAE overflowing is the "
               "usual cause: start ComfyUI with --fp32-vae (or --bf16-vae), use a different VAE (for SDXL: "
               "sdxl-vae-fp16-fix), or find the upstream node whose output has NaN.")
NUMBER_FIX = ("set a finite number in the widget; an API client must send a JSON number (not NaN, Infinity or "
              "1e999), and a linked FLOAT output must not be NaN.")


class NonFinitePixels(AtelierError):
    """Raised by a conversion that checks as it reads (core.images.to_uint8 with ``finite="refuse"``) at the
    first strip holding NaN/inf: the node that catches it re-checks its batch with :func:`check_finite`,
    which names every bad image."""


def sum_is_finite(a: np.ndarray) -> bool:
    """True when every value of a float32 array is finite: OpenCV's SIMD sum, accumulated in double (a finite
    float32 array never overflows it, and any NaN/inf makes it non-finite). ~3x cheaper than numpy's sum and
    single-threaded (torch's threaded one stalls for milliseconds on a busy machine). Non-contiguous or
    other-typed arrays go through numpy."""
    if not a.size:
        return True
    if a.dtype != np.float32 or not a.flags.c_contiguous:
        with np.errstate(all="ignore"):
            return bool(np.isfinite(np.asarray(a, np.float64).sum()))
    return math.isfinite(sum(cv2.sumElems(a.reshape(a.shape[0] if a.ndim > 1 else 1, -1))))


def _kind(x: float) -> str:
    return "NaN" if math.isnan(x) else ("+inf" if x > 0 else "-inf")


def nonfinite_items(x) -> list[int]:
    """Indices along dim 0 of a tensor / array with a NaN or inf anywhere in them ([] when all finite).
    A 0-d value counts as one item (index 0)."""
    if isinstance(x, torch.Tensor):
        if not (x.is_floating_point() or x.is_complex()) or x.numel() == 0:
            return []
        if bool(torch.isfinite(x.sum())):  # fast path: a finite sum has no NaN/inf term
            return []
        if x.ndim == 0:
            return [0]
        bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
        return [int(i) for i in torch.nonzero(bad).flatten()]
    a = np.asarray(x)
    if not np.issubdtype(a.dtype, np.inexact) or a.size == 0:
        return []
    with np.errstate(all="ignore"):
        if np.isfinite(a.sum()):
            return []
    if a.ndim == 0:
        return [0]
    return [int(i) for i in np.flatnonzero(~np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1))]


def _shown(idx: list[int], limit: int = 8) -> str:
    s = ", ".join(f"#{i}" for i in idx[:limit])
    return s + (f" and {len(idx) - limit} more" if len(idx) > limit else "")


def check_finite(x, *, node: str | None = None, input: str | None = None, what: str = "images",
                 unit: str = "pixels", fix: str | None = None):
    """Returns `x` unchanged when every value is finite; otherwise raises an AtelierError like
    "[node] input 'images': 3 of 8 images (#0, #2, #5) contain NaN/inf pixels. ... Fix: ...".

    x: a torch tensor or numpy array, items along dim 0 (IMAGE [B,H,W,C], MASK [B,H,W], LATENT
    [B,C,H,W]), or a list of those (counted item by item across the list).
    """
    parts = x if isinstance(x, (list, tuple)) else [x]
    bad, total, offset = [], 0, 0
    for p in parts:
        if p is None:
            continue
        n = int(p.shape[0]) if getattr(p, "ndim", 0) > 0 else 1
        bad += [offset + i for i in nonfinite_items(p)]
        offset += n
        total += n
    if bad:
        raise AtelierError(f"{len(bad)} of {total} {what} ({_shown(bad)}) contain NaN/inf {unit}.",
                           node=node, input=input, expected=f"finite {unit} (ComfyUI images are 0..1)",
                           fix=fix or VAE_NAN_FIX)
    return x


def check_finite_float(value, *, node: str | None = None, input: str | None = None,
                       fix: str | None = None) -> float:
    """float(value), refused when it is NaN or +-inf (which pass ComfyUI's min/max check)."""
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise AtelierError(f"got {value!r}, which is not a number.", node=node, input=input,
                           expected="a finite number", fix=fix or NUMBER_FIX) from exc
    if not math.isfinite(v):
        why = ("every comparison with NaN is false, so it passes ComfyUI's min/max check" if math.isnan(v)
               else "an infinite value has no meaning here")
        raise AtelierError(f"got {_kind(v)}, which is not a usable number ({why}).", node=node, input=input,
                           expected="a finite number within the widget's min/max", fix=fix or NUMBER_FIX)
    return v


def check_finite_floats(values: Iterable, *, node: str | None = None, input: str | None = None,
                        what: str = "values", fix: str | None = None) -> list[float]:
    """[float(v) ...], refused (naming how many and which) when any is NaN or +-inf."""
    vals = [float(v) for v in values]
    bad = [i for i, v in enumerate(vals) if not math.isfinite(v)]
    if bad:
        kinds = sorted({_kind(vals[i]) for i in bad})
        raise AtelierError(f"{len(bad)} of {len(vals)} {what} ({_shown(bad)}) are {'/'.join(kinds)}.", node=node,
                           input=input, expected=f"finite {what}", fix=fix or NUMBER_FIX)
    return vals


def is_finite_number(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
