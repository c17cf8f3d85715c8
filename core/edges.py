"""Edge and line-art extraction for ControlNet conditioning (pure: numpy + OpenCV).

Everything here works on one image at a time, as numpy arrays:

- input images are float32 ``[H, W]`` or ``[H, W, C]`` (C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA) in 0..1,
  the layout of one ComfyUI IMAGE batch item (``image[i].numpy()``, no copy);
- working images are uint8 ``[H, W]`` gray;
- edge / line maps are uint8 ``[H, W]`` with **white lines (255) on black (0)**, the way ControlNet
  canny/lineart models expect them.

The resolution helpers (:func:`fit_resolution`, :func:`pad`, :func:`crop_back`) scale an image so its
short side matches a target, pad it (black, centred) up to a multiple of 64, and describe what they did in a
small JSON-serialisable dict (``PadInfo``) that is enough to crop and scale a generated image back to the
original size and aspect.
"""
from __future__ import annotations

import functools
import math
from typing import Literal, TypedDict

import cv2
import numpy as np

from .errors import AtelierError
from .images import to_uint8_into
from .parallel import for_row_bands

#: ComfyUI's own MAX_RESOLUTION; no side we produce is longer than this.
MAX_SIDE = 16384
#: Pad multiple: SD latents are 1/8 of the image and most ControlNets like multiples of 64.
PAD_MULTIPLE = 64

Polarity = Literal["dark_on_light", "light_on_dark"]


class PadInfo(TypedDict):
    """What :func:`fit_resolution` + :func:`pad` did to an image (all ints, JSON-serialisable).

    ``orig_h/orig_w``: size of the input; ``scaled_h/scaled_w``: size after scaling, before padding;
    ``top/bottom/left/right``: black rows/columns added around the scaled image. The padded size is
    ``(scaled_h + top + bottom, scaled_w + left + right)``.
    """
    orig_h: int
    orig_w: int
    scaled_h: int
    scaled_w: int
    top: int
    bottom: int
    left: int
    right: int


# ---------------------------------------------------------------------------------------------------------
# input conversion
# ---------------------------------------------------------------------------------------------------------

def _check_image(img: np.ndarray, node: str | None, input: str) -> np.ndarray:
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] > 4):
        raise AtelierError(f"got an image of shape {tuple(img.shape)}", node=node, input=input,
                           expected="an image [H, W] or [H, W, C] with C = 1 (gray), 2 (gray+alpha), 3 (RGB) "
                                    "or 4 (RGBA)",
                           fix="connect a normal IMAGE output (Load Image, VAE Decode, ...).")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise AtelierError(f"got an empty image ({img.shape[0]}x{img.shape[1]} pixels)", node=node, input=input,
                           expected="an image at least 1x1 pixel", fix="check the node that produces this image.")
    return img


def _to_u8_strips(img: np.ndarray, *, finite: bool | str = False) -> np.ndarray:
    """Float ``[H,W(,C)]`` -> uint8 with Save Image's conversion (:func:`core.images.to_uint8`), a cache-sized
    strip of rows at a time (:func:`core.images.to_uint8_into`): no full-size float temporary, and faster."""
    return to_uint8_into(img, np.empty(img.shape, np.uint8), finite=finite)


def _rgb_to_gray_strips(img: np.ndarray, *, finite: bool | str = False) -> np.ndarray:
    """Float RGB ``[H,W,3]`` -> uint8 gray: Save Image's conversion then BT.601 luma, a strip of rows at a time,
    each strip's uint8 RGB turned to gray while it is still in cache (same bytes as converting it whole;
    :func:`core.images.to_uint8_into`). A large image is converted in one band of strips per CPU
    (core.parallel: numpy and OpenCV release the GIL): 0.6-0.75x the time on two cores from 1024²."""
    h, w = img.shape[:2]
    out = np.empty((h, w), np.uint8)
    for_row_bands(lambda r0, r1: to_uint8_into(img[r0:r1], out[r0:r1], finite=finite,
                                               convert=cv2.COLOR_RGB2GRAY), h, w)
    return out


def to_gray_u8(img: np.ndarray, *, background: Literal["auto", "white", "black"] = "auto",
               node: str | None = None, input: str = "image", finite: bool | str = False) -> np.ndarray:
    """Image ``[H,W]`` / ``[H,W,C]`` (float 0..1 or uint8) -> uint8 gray ``[H,W]``; never in place.

    Floats are first brought to uint8 exactly as ComfyUI's Save Image does (x 255, clip, truncate), so an
    IMAGE and its saved PNG give the same gray and the same edges. Transparent pixels (C = 2 or 4) are
    composited over ``background``; ``auto`` picks white or black, whichever contrasts with the opaque
    content (so a light drawing on a transparent canvas is not lost on white, nor a dark one on black).
    Luma uses the BT.601 weights (0.299, 0.587, 0.114). ``finite``: as in :func:`core.images.to_uint8`
    (``"refuse"``, what the nodes pass: NaN/inf raise core.finite.NonFinitePixels, checked as each strip
    is converted; True: the caller has refused them already).
    """
    img = _check_image(np.asarray(img), node, input)
    if img.dtype != np.uint8 and img.ndim == 3 and img.shape[2] == 3:
        return _rgb_to_gray_strips(img, finite=finite)
    u8 = img if img.dtype == np.uint8 else _to_u8_strips(img, finite=finite)
    if u8.ndim == 2:
        return u8 if u8 is not img else u8.copy()
    if not u8.flags.c_contiguous:
        u8 = np.ascontiguousarray(u8)
    c = u8.shape[2]
    if c == 3:
        return cv2.cvtColor(u8, cv2.COLOR_RGB2GRAY)
    if c == 2:
        gray, alpha = u8[:, :, 0], u8[:, :, 1]
    else:  # 4: gray is linear in RGB, so composite after the conversion (1 channel, not 3)
        gray, alpha = cv2.cvtColor(u8, cv2.COLOR_RGBA2GRAY), u8[:, :, 3]
    if background == "auto":
        opaque = alpha > 127
        bg = 0.0 if opaque.any() and float(gray[opaque].mean()) > 127.5 else 255.0
    else:
        bg = 255.0 if background == "white" else 0.0
    a = alpha.astype(np.float32) * np.float32(1 / 255)
    out = gray.astype(np.float32) * a + np.float32(bg) * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def histogram(gray: np.ndarray) -> np.ndarray:
    """256-bin histogram of a uint8 image as int64 counts."""
    return cv2.calcHist([gray], [0], None, [256], [0, 256]).ravel().astype(np.int64)


def median_u8(gray: np.ndarray, hist: np.ndarray | None = None) -> int:
    """Median of a uint8 image (lower median), from its histogram (no sort)."""
    h = histogram(gray) if hist is None else hist
    cum = np.cumsum(h)
    return int(np.searchsorted(cum, (cum[-1] + 1) // 2))


# ---------------------------------------------------------------------------------------------------------
# Canny
# ---------------------------------------------------------------------------------------------------------

def check_thresholds(low: float, high: float, *, node: str | None = None,
                     low_input: str = "low_threshold", high_input: str = "high_threshold") -> None:
    """Raise :class:`AtelierError` unless ``0 <= low <= high``."""
    if low < 0 or high < 0:
        bad = low_input if low < 0 else high_input
        raise AtelierError(f"{bad} is negative ({low if low < 0 else high})", node=node, input=bad,
                           expected="thresholds >= 0 (typical: 50..300)", fix="use a positive value.")
    if low > high:
        raise AtelierError(f"{low_input} ({low:g}) is above {high_input} ({high:g})", node=node, input=low_input,
                           expected=f"{low_input} <= {high_input} (e.g. the defaults 50 and 80)",
                           fix=f"lower {low_input} or raise {high_input}, or set threshold_mode to 'auto_median'.")


def auto_thresholds(gray: np.ndarray, sigma: float = 0.33, hist: np.ndarray | None = None) -> tuple[float, float]:
    """Canny thresholds from the image median ``v``: ``((1 - sigma) v, (1 + sigma) v)``, clipped to 0..255.

    A very dark or flat image has a tiny median; ``high`` is kept at least 10 (and ``low <= high``) so that
    sensor noise is not traced as edges.
    """
    if sigma < 0:
        raise AtelierError(f"auto sigma is negative ({sigma})", input="auto_sigma", expected="sigma in 0..1",
                           fix="use e.g. 0.33.")
    v = median_u8(gray, hist)
    low = max(0.0, (1.0 - sigma) * v)
    high = min(255.0, (1.0 + sigma) * v)
    high = max(high, 10.0)
    return float(min(low, high)), float(high)


def canny(gray: np.ndarray, low: float, high: float, *, blur_sigma: float = 0.0, l2_gradient: bool = False,
          node: str | None = None) -> np.ndarray:
    """cv2.Canny on a uint8 gray image -> uint8 edges (255 on 0).

    ``low``/``high`` are hysteresis thresholds on the Sobel (3x3) gradient magnitude, in OpenCV's units
    (L1 ``|gx| + |gy|`` unless ``l2_gradient``). ``blur_sigma`` > 0 applies a Gaussian blur first (the kernel
    size follows from sigma), which suppresses texture and noise edges.
    """
    check_thresholds(low, high, node=node)
    if blur_sigma and blur_sigma > 0:
        gray = cv2.GaussianBlur(gray, (0, 0), float(blur_sigma))
    return cv2.Canny(gray, float(low), float(high), L2gradient=bool(l2_gradient))


# ---------------------------------------------------------------------------------------------------------
# Line art
# ---------------------------------------------------------------------------------------------------------

def detect_polarity(gray: np.ndarray, hist: np.ndarray | None = None, margin: int = 24,
                    median: int | None = None) -> Polarity:
    """Is this a drawing of dark lines on a light ground or light lines on a dark ground?

    The ground is the median (lines are sparse); the lines are whatever departs from it by more than
    ``margin`` levels. Whichever side has more such pixels gives the line colour. A flat image, or one with
    equally many of both, falls back to the ground's brightness (light ground -> dark lines). ``median``: the
    image's median when the caller has it already (:func:`median_u8`).
    """
    h = histogram(gray) if hist is None else hist
    m = median_u8(gray, h) if median is None else int(median)
    n_dark = int(h[: max(0, m - margin)].sum())
    n_light = int(h[min(256, m + margin + 1):].sum())
    if n_dark > n_light:
        return "dark_on_light"
    if n_light > n_dark:
        return "light_on_dark"
    return "dark_on_light" if m >= 128 else "light_on_dark"


@functools.lru_cache(maxsize=512)  # 2 polarities x 256 grounds: every table is built once per process
def line_strength_lut(polarity: Polarity, ground: int) -> np.ndarray:
    """LUT gray -> line strength (uint8): ground and anything on the ground's side -> 0, the far extreme -> 255.

    Dark lines on a ground of level g map ``v -> (g - v) * 255 / g``; light lines ``v -> (v - g) * 255 / (255 - g)``.
    The table is shared (cached), so it is read-only.
    """
    v = np.arange(256, dtype=np.float32)
    if polarity == "dark_on_light":
        s = (ground - v) * (255.0 / max(ground, 1))
    else:
        s = (v - ground) * (255.0 / max(255 - ground, 1))
    lut = np.clip(np.rint(s), 0, 255).astype(np.uint8)
    lut.flags.writeable = False
    return lut


@functools.lru_cache(maxsize=4096)
def _binary_cut(polarity: Polarity, ground: int, threshold: int) -> tuple[int, int]:
    """``(thresh, type)`` for cv2.threshold that maps the gray levels whose line strength
    (:func:`line_strength_lut`) is above ``threshold`` to 255 and the rest to 0, in one SIMD pass (~0.2x a
    LUT's time). The strength falls (dark lines) or rises (light lines) with the gray level, so those
    levels are 0..k-1 or 256-k..255."""
    on = np.flatnonzero(line_strength_lut(polarity, ground) > threshold)
    k = int(on.size)
    if polarity == "dark_on_light":
        assert not k or on[-1] == k - 1, "the strength of dark lines falls as the gray level rises"
        return k - 1, cv2.THRESH_BINARY_INV  # 255 where gray <= k - 1 (k = 0: nowhere)
    assert not k or on[0] == 256 - k, "the strength of light lines rises with the gray level"
    return 255 - k, cv2.THRESH_BINARY  # 255 where gray > 255 - k (k = 0: nowhere)


def otsu_threshold(hist: np.ndarray) -> int:
    """Otsu's threshold from a 256-bin histogram (same rule as OpenCV: lines are ``v > t``; first maximum wins)."""
    h = np.asarray(hist, np.float64)
    q1 = np.cumsum(h)
    total = q1[-1]
    if total <= 0:
        return 0
    q1 /= total
    mu = np.cumsum(h * _LEVELS[: h.size])
    mu /= total
    q2 = 1.0 - q1
    valid = (q1 > 1e-12) & (q2 > 1e-12)
    if not valid.any():
        return 0
    with np.errstate(divide="ignore", invalid="ignore"):  # the invalid levels are zeroed below
        sigma = (mu[-1] * q1 - mu) ** 2 / (q1 * q2)
    return int(np.argmax(np.where(valid, sigma, 0.0)))


_LEVELS = np.arange(256, dtype=np.float64)


def binarize(strength: np.ndarray, threshold: int | None = None) -> np.ndarray:
    """uint8 strength -> {0,255}. ``threshold`` None = Otsu (automatic); otherwise pixels > threshold are lines."""
    if threshold is None:
        if int(strength.max(initial=0)) == 0:
            return np.zeros_like(strength)
        threshold = otsu_threshold(histogram(strength))
    _, out = cv2.threshold(strength, int(threshold), 255, cv2.THRESH_BINARY)
    return out


def remove_specks(lines: np.ndarray, min_area: int, support: np.ndarray | None = None, *,
                  binary_support: bool = False) -> np.ndarray:
    """Zero every 8-connected blob of line pixels smaller than ``min_area`` pixels.

    ``lines`` is uint8 (binary or soft); blobs are found on ``support`` (a binary map, default ``lines > 0``);
    ``binary_support`` says it holds only 0 and 255 (as lineart's mask does), which saves one pass.
    Returns a new array; ``min_area`` <= 1, or nothing to remove, returns ``lines`` itself.

    Only *candidate* pixels are labelled: every 8-neighbour of a line pixel is in its blob, so a pixel whose
    3x3 window holds ``min_area`` or more line pixels (a *core* pixel) is in a blob at least that large.
    Small blobs therefore consist of candidates alone; a blob of candidates that touches a core pixel belongs
    to a large blob, one that touches none is a whole blob of the support, kept or removed by its size.
    The result is the same as labelling the whole support, touching only what it must:

    - clean areas and filled shapes have no candidates at all and cost a box filter;
    - the labelling runs on the candidates' bounding box only (32-bit labels: with OpenCV 4.10 and 5.0 they
      are as fast as or faster than 16-bit ones on sparse maps), and the candidates are found four pixels
      at a time (:func:`_nonzero_flat`);
    - whether a candidate blob touches a core pixel is looked up only for the blobs small enough to be
      erased (at their pixels' 8 neighbours, in one gather, when they are few; one dilation of the core map
      otherwise);
    - ``min_area`` <= 4 (the Lineart node's default is 4) labels nothing: blobs of 1-3 pixels are told apart
      by their pixels' counts alone (:func:`_erase_tiny_blobs`).
    """
    if min_area <= 1:
        return lines
    sup = lines if support is None else support
    fg = sup if binary_support else cv2.threshold(sup, 0, 255, cv2.THRESH_BINARY)[1]  # 255 where support > 0
    # mean of each 3x3 window (zero padding outside the image): c line pixels give round(255 c / 9), levels 28
    # apart, so "fewer than min_area" is "at most the level half-way below min_area's"
    mean = cv2.boxFilter(fg, -1, (3, 3), normalize=True, borderType=cv2.BORDER_CONSTANT)
    # min_area > 9: no pixel is provably in a large blob, every line pixel is a candidate (plain labelling)
    level = int(255 * (min(int(min_area), 10) - 0.5) / 9)
    if cv2.minMaxLoc(mean, fg)[0] > level:  # no line pixel has a sparse window (photos, filled shapes): one pass
        return lines
    if min_area <= 4:
        return _erase_tiny_blobs(lines, fg, mean, level, int(min_area))
    few = cv2.threshold(mean, level, 255, cv2.THRESH_BINARY_INV)[1]
    cand = cv2.bitwise_and(few, fg)
    idx = _nonzero_flat(cand)  # candidates, as flat indices into the image (raster order)
    if not idx.size:
        return lines
    h, w = fg.shape
    ys, xs = np.divmod(idx, w)
    y0, x0 = int(ys[0]), int(xs.min())  # every candidate blob lies in the candidates' box: label that only
    bh, bw = int(ys[-1]) + 1 - y0, int(xs.max()) + 1 - x0
    n, labels = cv2.connectedComponents(cand[y0:y0 + bh, x0:x0 + bw], connectivity=8, ltype=cv2.CV_32S)
    lab = labels.ravel()[(ys - y0) * bw + (xs - x0)]
    small = np.bincount(lab, minlength=n) < min_area
    small[0] = False
    sel = np.flatnonzero(small[lab])  # the candidates of blobs small enough to be erased
    if not sel.size:
        return lines
    idx, lab = idx[sel], lab[sel]
    if min_area <= 9:  # a core pixel exists only then: blobs that touch one are kept
        if sel.size * 64 <= h * w:  # few: look at their 8 neighbours (off-image ones clip onto the window)
            yy = np.minimum(np.maximum(ys[sel, None] + _DY, 0), h - 1)  # ufuncs: np.clip costs ~5 us a call
            xx = np.minimum(np.maximum(xs[sel, None] + _DX, 0), w - 1)
            nb = yy * w + xx
            touch = ((fg.ravel()[nb] != 0) & (mean.ravel()[nb] > level)).any(axis=1)
        else:
            near_core = cv2.dilate(cv2.subtract(fg, few), np.ones((3, 3), np.uint8))  # pads with -inf
            touch = near_core.ravel()[idx] != 0
        attached = np.zeros(n, bool)
        attached[lab[touch]] = True
        keep = attached[lab]
        if keep.all():
            return lines
        idx = idx[~keep]
    out = np.ascontiguousarray(lines).copy()
    out.ravel()[idx] = 0
    return out


#: the 8 neighbours of a pixel, as row and column offsets
_DY = np.array([-1, -1, -1, 0, 0, 1, 1, 1], np.intp)
_DX = np.array([-1, 0, 1, -1, 1, -1, 0, 1], np.intp)
_FOUR = np.arange(4, dtype=np.intp)
#: a 3x3 mean of a 0/255 map -> the number of its pixels that are on (the means of 0..9 pixels are 28.3 apart)
_MEAN_TO_COUNT = np.round(np.arange(256) * 9 / 255).astype(np.uint8)
#: bit k of a code = neighbour k (in _DY/_DX order) is on: True where exactly two are on and they touch
_TWO_TOUCHING = np.array([bin(code).count("1") == 2 and max(
    max(abs(int(_DY[i]) - int(_DY[j])), abs(int(_DX[i]) - int(_DX[j])))
    for i in range(8) for j in range(8) if code >> i & 1 and code >> j & 1) <= 1 for code in range(256)])
_U4, _U8 = np.dtype("<u4"), np.dtype("<u8")


def _erase_tiny_blobs(lines: np.ndarray, fg: np.ndarray, mean: np.ndarray, level: int,
                      min_area: int) -> np.ndarray:
    """:func:`remove_specks` for ``min_area`` 2, 3 or 4, without labelling. ``fg`` is the 0/255 support,
    ``mean`` its 3x3 mean (zero outside), ``level`` the mean below which a window holds < ``min_area`` pixels.

    Let c(p) count the support pixels in p's 3x3 window (p included) and s(p) add up c over p's 8 neighbours
    (0 off the support). A blob of at most 3 pixels is one of four shapes, each told by one of its pixels:

    - 1 pixel: c = 1;
    - 2 pixels: c = 2 and s = 2 (its one neighbour's only neighbour is p), true of both;
    - a 3-pixel path: its middle has c = 3 and s = 4 (both ends have c = 2, so no further neighbours);
      the middle erases its two neighbours with it;
    - 3 pixels that all touch (an L in a 2x2 square): c = 3, s = 6 and p's two neighbours touch each other,
      so both have c >= 3, hence c = 3: no further neighbours; true of all three.

    Conversely each test holds only in such a blob, as its reason shows, so exactly the blobs of fewer than
    ``min_area`` pixels are erased: the same output as labelling (tested against it on every 4x4 pattern).
    Only the candidates (c < min_area) are looked at, through 32-bit windows of the count map.
    """
    h, w = fg.shape
    w2, n2 = w + 2, (h + 2) * (w + 2)
    buf = np.empty(n2 + 3, np.uint8)  # the support's means with a 1 px frame of zeros, + 3 bytes for the windows
    buf[n2:] = 0
    q = cv2.copyMakeBorder(cv2.min(mean, fg), 1, 1, 1, 1, cv2.BORDER_CONSTANT,
                           dst=buf[:n2].reshape(h + 2, w2), value=0)
    pts = cv2.findNonZero(cv2.inRange(q, 1, level))  # the candidates, (x, y) in the framed map
    if pts is None:
        return lines
    pts = pts.reshape(-1, 2).astype(np.intp)
    idx = pts[:, 1] * w2 + pts[:, 0]
    win = np.ndarray((n2,), _U4, buf, 0, (1,))  # win[j] = bytes j..j+3 of the framed map
    # per candidate: the three bytes above, the row itself (left, p, right) and the three below, as counts
    cnt = cv2.LUT(np.stack([win[idx - w2 - 1], win[idx - 1], win[idx + w2 - 1]]).view(np.uint8),
                  _MEAN_TO_COUNT).view(_U4)
    c = (cnt[1] >> 8) & 0xFF
    erase = c == 1
    ends = None
    if min_area >= 3:
        row_sums = (cnt[0] & 0xFFFFFF) + (cnt[1] & 0xFF00FF) + (cnt[2] & 0xFFFFFF)  # bytes <= 27: no carries
        s = (row_sums * np.uint32(0x01010101)) >> 24  # the sum of its bytes
        erase |= (c == 2) & (s == 2)
    if min_area >= 4:
        middle = (c == 3) & (s == 4)
        erase |= middle
        tri = np.flatnonzero((c == 3) & (s == 6))
        if tri.size:
            t = cnt[:, tri].astype(_U8)  # the 8 neighbours' counts as the bytes of one word, in _DY/_DX order
            ring = (t[0] & 0xFFFFFF) | (t[1] & 0xFF) << 24 | (t[1] >> 16 & 0xFF) << 32 | (t[2] & 0xFFFFFF) << 40
            on = ((ring + np.uint64(0x7F7F7F7F7F7F7F7F)) & np.uint64(0x8080808080808080)) >> 7  # 1 per byte > 0
            erase[tri] = _TWO_TOUCHING[(on * np.uint64(0x0102040810204080)) >> 56]  # byte k's bit -> bit k
        if middle.any():
            nb = idx[middle, None] + _DY * w2 + _DX
            ends = nb[buf[nb] != 0]
    sel = idx[erase] if ends is None else np.concatenate([idx[erase], ends])
    if not sel.size:
        return lines
    y, x = np.divmod(sel, w2)
    out = np.ascontiguousarray(lines).copy()
    out.ravel()[(y - 1) * w + (x - 1)] = 0
    return out


def _nonzero_flat(a: np.ndarray) -> np.ndarray:
    """Flat indices of the non-zero pixels of a C-contiguous uint8 image, in raster order, the same as
    ``np.flatnonzero(a)``: the image is scanned as 32-bit words (4 pixels each, cv2.findNonZero on a view)
    and only the non-zero words are looked into, which on a sparse map is 2-3x faster than a pixel-wise
    scan (cv2.findNonZero on the pixels; np.flatnonzero is slower still)."""
    flat = a.reshape(-1)
    n4 = flat.size - flat.size % 4
    words = cv2.findNonZero(flat[:n4].view(np.int32).reshape(1, -1)) if n4 else None
    if words is None:  # no non-zero word
        idx = np.empty(0, np.intp)
    else:
        cols = (words.reshape(-1, 2)[:, 0].astype(np.intp)[:, None] * 4 + _FOUR).ravel()
        idx = cols[flat[cols] != 0]
    if n4 < flat.size:
        idx = np.concatenate([idx, n4 + np.flatnonzero(flat[n4:])])
    return idx


def change_thickness(lines: np.ndarray, thickness: int) -> np.ndarray:
    """Grow (``thickness`` > 0) or thin (< 0) white lines by ``|thickness|`` pixels on each side (elliptic kernel)."""
    if thickness == 0:
        return lines
    k = 2 * abs(int(thickness)) + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    return cv2.dilate(lines, kernel) if thickness > 0 else cv2.erode(lines, kernel)


def lineart(gray: np.ndarray, *, polarity: Literal["auto", "dark_on_light", "light_on_dark"] = "auto",
            binarize_lines: bool = True, threshold: int | None = None, min_speck_area: int = 0,
            thickness: int = 0) -> tuple[np.ndarray, Polarity]:
    """Clean a line drawing into white lines on black (uint8 ``[H,W]``); also returns the polarity used.

    Steps: polarity (auto-detected unless given) -> line strength relative to the ground (one LUT)
    -> optional binarisation (``threshold`` 0..254 on the strength, None = Otsu) -> speck removal
    (blobs under ``min_speck_area`` px, judged on the binarised lines) -> thickness change.
    """
    if polarity not in ("auto", "dark_on_light", "light_on_dark"):
        raise AtelierError(f"unknown polarity {polarity!r}", input="polarity",
                           expected="'auto', 'dark_on_light' or 'light_on_dark'", fix="pick one from the list.")
    hist = histogram(gray)
    ground = median_u8(gray, hist)
    pol: Polarity = detect_polarity(gray, hist, median=ground) if polarity == "auto" else polarity
    # a drawing that is mostly ink still has its ground at the light (or dark) end, not at the median
    if pol == "dark_on_light" and ground < 128:
        ground = 255
    elif pol == "light_on_dark" and ground >= 128:
        ground = 0
    lut = line_strength_lut(pol, int(ground))
    if threshold is None:  # Otsu on the strength histogram, derived from the gray one (no extra pass)
        strength_hist = np.bincount(lut, weights=hist, minlength=256)
        threshold = otsu_threshold(strength_hist) if strength_hist[1:].any() else 255  # 255: only ground
    cut, kind = _binary_cut(pol, int(ground), int(threshold))  # strength + threshold in one pass
    mask = cv2.threshold(gray, cut, 255, kind)[1]
    out = mask if binarize_lines else cv2.LUT(gray, lut)
    if min_speck_area > 1:  # blobs are judged on the binarised lines, also when the output stays soft
        out = remove_specks(out, min_speck_area, support=mask, binary_support=True)
    out = change_thickness(out, thickness)
    return out, pol


# ---------------------------------------------------------------------------------------------------------
# Resolution: scale the short side, pad to a multiple of 64, crop back
# ---------------------------------------------------------------------------------------------------------

def fit_resolution(h: int, w: int, resolution: int, multiple: int = PAD_MULTIPLE,
                   max_side: int = MAX_SIDE) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """Size for an ``h x w`` image whose short side should be ``resolution``, padded to ``multiple``.

    Returns ``((scaled_h, scaled_w), (top, bottom, left, right))``. The aspect ratio is kept (each side
    rounded, at least 1 px); the long side never exceeds ``max_side`` (the scale is lowered instead).
    Padding is split evenly, the odd pixel going to the bottom/right. ``resolution`` 0 keeps the image as
    it is: no scaling, no padding.
    """
    if h < 1 or w < 1:
        raise AtelierError(f"cannot size an empty image ({h}x{w})", input="image", expected="at least 1x1 pixel")
    if resolution < 0:
        raise AtelierError(f"resolution is negative ({resolution})", input="resolution",
                           expected="0 (keep size) or a short-side length such as 512",
                           fix="set resolution to 0 or a positive value.")
    if resolution == 0:
        return (h, w), (0, 0, 0, 0)
    scale = resolution / min(h, w)
    scale = min(scale, max_side / max(h, w))
    sh, sw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    ph, pw = math.ceil(sh / multiple) * multiple, math.ceil(sw / multiple) * multiple
    top, left = (ph - sh) // 2, (pw - sw) // 2
    return (sh, sw), (top, ph - sh - top, left, pw - sw - left)


def pad_info(h: int, w: int, resolution: int) -> PadInfo:
    """:func:`fit_resolution` as a :class:`PadInfo` dict."""
    (sh, sw), (t, b, l, r) = fit_resolution(h, w, resolution)
    return PadInfo(orig_h=int(h), orig_w=int(w), scaled_h=sh, scaled_w=sw, top=t, bottom=b, left=l, right=r)


def resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Resize to ``h x w`` (area filter to shrink, cubic to enlarge); returns ``img`` itself if the size matches.

    uint8 stays uint8; float images are clipped back to 0..1 after cubic overshoot.
    """
    ih, iw = img.shape[:2]
    if (ih, iw) == (h, w):
        return img
    interp = cv2.INTER_AREA if h * w <= ih * iw else cv2.INTER_CUBIC
    out = cv2.resize(img, (w, h), interpolation=interp)
    if img.ndim == 3 and out.ndim == 2:  # cv2 drops a trailing 1-channel axis
        out = out[:, :, None]
    if out.dtype.kind == "f" and interp == cv2.INTER_CUBIC:
        np.clip(out, 0.0, 1.0, out=out)
    return out


def pad(img: np.ndarray, info: PadInfo, value: float = 0) -> np.ndarray:
    """Add the black (``value``) border described by ``info`` around a scaled image."""
    t, b, l, r = info["top"], info["bottom"], info["left"], info["right"]
    if not (t or b or l or r):
        return img
    out = cv2.copyMakeBorder(img, t, b, l, r, cv2.BORDER_CONSTANT, value=value)
    if img.ndim == 3 and out.ndim == 2:
        out = out[:, :, None]
    return out


def check_pad_info(info: object, *, node: str | None = None, input: str = "pad_info") -> PadInfo:
    """Validate a PadInfo-like dict (e.g. loaded from JSON) and return it with int values.

    Refused: not a dict, a missing key, a value that is not a whole number (3.5, "64", NaN, True), a negative
    value, a zero size, or a size above MAX_SIDE x 16 (a restore to it could not be allocated).
    """
    keys = list(PadInfo.__annotations__.keys())
    expected = f"the ATELIER_PAD output of an Atelier conditioner (a dict with {', '.join(keys)})"
    if not isinstance(info, dict):
        raise AtelierError(f"is not crop-back information (got {type(info).__name__})", node=node, input=input,
                           expected=expected, fix="connect the pad_info output of Atelier Canny / Atelier Lineart.")
    missing = [k for k in keys if k not in info]
    if missing:
        raise AtelierError(f"is not crop-back information: missing {', '.join(missing)}", node=node, input=input,
                           expected=expected, fix="connect the pad_info output of Atelier Canny / Atelier Lineart.")
    out: dict[str, int] = {}
    for k in keys:
        v = info[k]
        whole = (isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))) or (
            isinstance(v, (float, np.floating)) and math.isfinite(v) and float(v).is_integer())
        if not whole:
            raise AtelierError(f"{k} is {v!r}, not a whole number of pixels", node=node, input=input,
                               expected="integer sizes and padding (pixels)",
                               fix="connect the pad_info output of Atelier Canny / Atelier Lineart unchanged.")
        out[k] = int(v)
    bad = [k for k in keys if out[k] < 0] + [k for k in ("orig_h", "orig_w", "scaled_h", "scaled_w") if out[k] == 0]
    big = [k for k in keys if out[k] > MAX_SIDE * 16]
    if bad or big:
        what = (f"negative or zero {', '.join(bad)}" if bad else f"{', '.join(big)} above {MAX_SIDE * 16}")
        raise AtelierError(f"has impossible sizes ({what}): {out}", node=node, input=input,
                           expected="positive sizes and non-negative padding",
                           fix="connect the pad_info output of Atelier Canny / Atelier Lineart unchanged.")
    return PadInfo(**out)  # type: ignore[typeddict-item]


def check_pad_fits(img_h: int, img_w: int, info: PadInfo, *, node: str | None = None,
                   input: str = "pad_info", multiple: int = 8) -> None:
    """Refuse applying ``info`` to an ``img_h x img_w`` image that cannot come from its padded size.

    The image may be the padded map at any scale (a 2x upscale, a 1.5x one), and each side may have lost up
    to ``multiple - 1`` pixels before scaling (a latent rounds the size down to a multiple of 8): accepted
    when one scale ``s`` gives ``s * (padded - (multiple - 1)) - 1 <= image <= s * padded + 1`` on both axes.
    Another image's pad_info (a different aspect) is refused, naming both sizes.
    """
    ph = info["scaled_h"] + info["top"] + info["bottom"]
    pw = info["scaled_w"] + info["left"] + info["right"]
    slack = max(0, multiple - 1)

    def scales(n: int, p: int) -> tuple[float, float]:
        lo = max(n - 1, 0) / p
        hi = (n + 1) / (p - slack) if p - slack > 0 else math.inf
        return lo, hi

    (lo_h, hi_h), (lo_w, hi_w) = scales(img_h, ph), scales(img_w, pw)
    if max(lo_h, lo_w) > min(hi_h, hi_w):
        raise AtelierError(
            f"describes a {pw}x{ph} padded image (content {info['scaled_w']}x{info['scaled_h']}, original "
            f"{info['orig_w']}x{info['orig_h']}) but the image it is applied to is {img_w}x{img_h}, which is not "
            f"that size at any scale (aspect {img_w / img_h:.3f} vs {pw / ph:.3f})", node=node, input=input,
            expected=f"an image of {pw}x{ph} (or the same aspect at another scale) made from this pad_info's "
                     "conditioner output",
            fix="connect the pad_info of the conditioner whose output this image was generated from (the same "
                "Atelier Canny / Atelier Lineart that fed the ControlNet and the latent size).")


def crop_box(img_h: int, img_w: int, info: PadInfo) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` of the un-padded content in an image of ``img_h x img_w``.

    The image may be the padded map itself or a generation at another scale (e.g. 2x upscaled):
    the padding is scaled per axis by ``img / padded`` size.
    """
    ph = info["scaled_h"] + info["top"] + info["bottom"]
    pw = info["scaled_w"] + info["left"] + info["right"]
    fy, fx = img_h / ph, img_w / pw
    y0, x0 = int(round(info["top"] * fy)), int(round(info["left"] * fx))
    y1 = max(y0 + 1, min(img_h, int(round((info["top"] + info["scaled_h"]) * fy))))
    x1 = max(x0 + 1, min(img_w, int(round((info["left"] + info["scaled_w"]) * fx))))
    return min(y0, img_h - 1), y1, min(x0, img_w - 1), x1


def crop_back(img: np.ndarray, info: PadInfo, restore_size: bool = True) -> np.ndarray:
    """Remove the padding from ``img`` (``[H,W]`` or ``[H,W,C]``) and, if ``restore_size``, scale it back to
    the original ``orig_h x orig_w``."""
    y0, y1, x0, x1 = crop_box(img.shape[0], img.shape[1], info)
    out = img[y0:y1, x0:x1]
    if restore_size:
        out = resize(np.ascontiguousarray(out), info["orig_h"], info["orig_w"])
    return out


# ---------------------------------------------------------------------------------------------------------
# One image, end to end (what the nodes call per batch item)
# ---------------------------------------------------------------------------------------------------------

def prepare_gray(img: np.ndarray, resolution: int, *, node: str | None = None,
                 finite: bool | str = False) -> tuple[np.ndarray, PadInfo]:
    """Float image -> uint8 gray scaled for ``resolution`` (not yet padded) + its :class:`PadInfo`.
    ``finite``: see :func:`to_gray_u8`."""
    gray = to_gray_u8(img, node=node, finite=finite)
    info = pad_info(gray.shape[0], gray.shape[1], resolution)
    return resize(gray, info["scaled_h"], info["scaled_w"]), info


def canny_image(img: np.ndarray, *, low: float = 50, high: float = 80, auto: bool = False, sigma: float = 0.33,
                blur_sigma: float = 0.0, l2_gradient: bool = False, resolution: int = 0,
                node: str | None = None, finite: bool | str = False) -> tuple[np.ndarray, PadInfo, tuple[float, float]]:
    """Float image -> padded uint8 Canny edge map, its PadInfo and the thresholds used."""
    gray, info = prepare_gray(img, resolution, node=node, finite=finite)
    if auto:
        if blur_sigma and blur_sigma > 0:  # judge the median on what Canny will see
            gray = cv2.GaussianBlur(gray, (0, 0), float(blur_sigma))
            blur_sigma = 0.0
        low, high = auto_thresholds(gray, sigma)
    edges = canny(gray, low, high, blur_sigma=blur_sigma, l2_gradient=l2_gradient, node=node)
    return pad(edges, info), info, (low, high)


def lineart_image(img: np.ndarray, *, polarity: str = "auto", binarize_lines: bool = True,
                  threshold: int | None = None, min_speck_area: int = 0, thickness: int = 0, resolution: int = 0,
                  node: str | None = None, finite: bool | str = False) -> tuple[np.ndarray, PadInfo, Polarity]:
    """Float image -> padded uint8 line map (white on black), its PadInfo and the polarity used."""
    gray, info = prepare_gray(img, resolution, node=node, finite=finite)
    lines, pol = lineart(gray, polarity=polarity, binarize_lines=binarize_lines,  # type: ignore[arg-type]
                         threshold=threshold, min_speck_area=min_speck_area, thickness=thickness)
    return pad(lines, info), info, pol
