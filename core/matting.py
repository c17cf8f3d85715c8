"""Matting helpers: input normalisation, working resolution, alpha operations, guided-filter edge
refinement, compositing, and a classical (weights-free) background remover.

All functions take and return torch tensors in ComfyUI layouts: images [B,H,W,C] float 0..1,
masks/alpha [B,H,W] float 0..1. Pure: no ComfyUI imports.
"""
from __future__ import annotations

import math
import re
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .budget import check_size
from .errors import AtelierError
from .images import from_uint8, image_batch, to_rgb, to_uint8

# alpha below / above these is snapped to exactly 0 / 1 before compositing, so a background that
# the model is sure about becomes exactly the background colour after 8-bit saving (SaveImage truncates)
ALPHA_SNAP_LOW = 1.0 / 255.0
ALPHA_SNAP_HIGH = 254.0 / 255.0


# ----------------------------------------------------------------------------------------- inputs

def parse_color(text: str, node: str | None = None, input: str = "background") -> tuple[float, float, float]:
    """'#RRGGBB', '#RGB', 'r,g,b' (0..255) or a few names -> RGB floats 0..1."""
    names = {"white": "#ffffff", "black": "#000000", "gray": "#808080", "grey": "#808080",
             "green": "#00ff00", "blue": "#0000ff", "red": "#ff0000"}
    s = names.get(str(text).strip().lower(), str(text).strip())
    m = re.fullmatch(r"#?([0-9a-fA-F]{6})", s) or re.fullmatch(r"#?([0-9a-fA-F]{3})", s)
    if m:
        h = m.group(1)
        if len(h) == 3:
            h = "".join(ch * 2 for ch in h)
        return tuple(int(h[i:i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]
    parts = [p for p in re.split(r"[,\s;]+", s) if p]
    if len(parts) == 3:
        try:
            vals = [float(p) for p in parts]
        except ValueError:
            vals = []
        if vals and all(0 <= v <= 255 for v in vals):
            return tuple(v / 255.0 for v in vals)  # type: ignore[return-value]
    raise AtelierError(f"cannot read the colour '{text}'", node=node, input=input,
                       expected="'#RRGGBB' (e.g. #FFFFFF for pure white) or 'R,G,B' with values 0..255",
                       fix="type a hex colour such as #FFFFFF")


def match_mask(mask: torch.Tensor, batch: int, height: int, width: int, node: str | None = None,
               input: str = "mask") -> torch.Tensor:
    """External MASK [B,H,W] / [H,W] / [B,1,H,W] -> [batch,height,width]: a batch of 1 is broadcast,
    another size is resized (bilinear); a different batch count is an error."""
    m = mask.float()
    if m.ndim == 2:
        m = m[None]
    elif m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    elif m.ndim == 4 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim != 3:
        raise AtelierError(f"mask has shape {tuple(mask.shape)}", node=node, input=input,
                           expected="MASK [batch, height, width]")
    if m.shape[0] not in (1, batch):
        raise AtelierError(f"mask batch has {m.shape[0]} masks but the image batch has {batch} images",
                           node=node, input=input, expected=f"1 mask (used for every image) or {batch} masks",
                           fix="feed a mask batch of the same length as the image batch, or a single mask")
    if tuple(m.shape[-2:]) != (height, width):
        m = F.interpolate(m[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    if m.shape[0] != batch:
        m = m.expand(batch, -1, -1)
    return m.clamp(0, 1).contiguous()


# ----------------------------------------------------------------------------------------- resolution

def working_size(h: int, w: int, max_side: int, min_side: int, small_input: str = "upscale"
                 ) -> tuple[int, int, int, int]:
    """Size the network runs at -> (work_h, work_w, pad_h, pad_w).

    Downscale so the longer side is <= max_side (0 = no limit). Then, if the shorter side is below
    min_side: 'upscale' scales up (keeping aspect) so it reaches min_side; 'pad' keeps the pixels and
    pads up to min_side (pad_h/pad_w are the total padding, split evenly)."""
    scale = 1.0
    if max_side and max(h, w) > max_side:
        # never shrink the short side below min_side just to honour max_side (very wide images)
        scale = min(1.0, max(max_side / max(h, w), min_side / min(h, w)))
    wh, ww = max(1, round(h * scale)), max(1, round(w * scale))
    ph = pw = 0
    if min(wh, ww) < min_side:
        if small_input == "upscale":
            s = min_side / min(wh, ww)
            wh, ww = max(min_side, math.ceil(wh * s - 1e-6)), max(min_side, math.ceil(ww * s - 1e-6))
        elif small_input == "pad":
            ph, pw = max(0, min_side - wh), max(0, min_side - ww)
        else:
            raise AtelierError(f"unknown small_input mode '{small_input}'", input="small_input",
                               expected="'upscale' or 'pad'")
    return wh, ww, ph, pw


def run_at_working_size(image: torch.Tensor, predict: Callable[[torch.Tensor], torch.Tensor],
                        max_side: int, min_side: int, small_input: str = "upscale") -> torch.Tensor:
    """Resize/pad RGB [B,H,W,3] to the working size, run ``predict`` (RGB batch -> [B,h,w] in 0..1)
    and bring the result back to [B,H,W] (crop the padding, bilinear resize)."""
    b, h, w, _ = image.shape
    wh, ww, ph, pw = working_size(h, w, max_side, min_side, small_input)
    x = image.permute(0, 3, 1, 2)
    if (wh, ww) != (h, w):
        down = wh < h and ww < w
        x = F.interpolate(x, size=(wh, ww), mode="area" if down else "bilinear",
                          align_corners=None if down else False).clamp(0, 1)
    if ph or pw:
        top, left = ph // 2, pw // 2
        x = F.pad(x, (left, pw - left, top, ph - top), mode="replicate")
        y = predict(x.permute(0, 2, 3, 1).contiguous())[:, top:top + wh, left:left + ww]
    else:
        y = predict(x.permute(0, 2, 3, 1).contiguous())
    if tuple(y.shape[-2:]) != (h, w):
        y = F.interpolate(y[:, None].float(), size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    return y.clamp(0, 1)


# ----------------------------------------------------------------------------------------- alpha ops

def box_filter(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 window, windows clipped at the border (separable). x: [N,C,H,W]."""
    if r <= 0:
        return x
    h, w = x.shape[-2:]
    rh, rw = min(r, h - 1), min(r, w - 1)
    if rh > 0:
        x = F.avg_pool2d(x, (2 * rh + 1, 1), stride=1, padding=(rh, 0), count_include_pad=False)
    if rw > 0:
        x = F.avg_pool2d(x, (1, 2 * rw + 1), stride=1, padding=(0, rw), count_include_pad=False)
    return x


def _inv_sym3(a11, a12, a13, a22, a23, a33):
    """Elementwise inverse of symmetric 3x3 matrices given by their 6 entries (adjugate / det)."""
    c11 = a22 * a33 - a23 * a23
    c12 = a13 * a23 - a12 * a33
    c13 = a12 * a23 - a13 * a22
    c22 = a11 * a33 - a13 * a13
    c23 = a12 * a13 - a11 * a23
    c33 = a11 * a22 - a12 * a12
    det = a11 * c11 + a12 * c12 + a13 * c13
    return [t / det for t in (c11, c12, c13, c22, c23, c33)]


def guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int = 8, eps: float = 1e-3) -> torch.Tensor:
    """Colour guided filter (He, Sun, Tang 2010). guide [B,H,W,3] 0..1, src [B,H,W] -> [B,H,W].

    Edges of ``src`` move onto edges of the guide image; flat regions are smoothed. Vectorised, with
    the per-pixel 3x3 (covariance + eps) systems solved in closed form."""
    if radius <= 0:
        return src
    a, b = guided_coefficients(guide, src, radius, eps)
    q = (a * guide.permute(0, 3, 1, 2).float()).sum(1, keepdim=True) + b
    return q[:, 0].clamp(0, 1)


def guided_coefficients(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float = 1e-3):
    """Per-pixel linear model of the guided filter: (a [B,3,H,W], b [B,1,H,W]), averaged over windows,
    such that output = sum(a * I) + b."""
    I = guide.permute(0, 3, 1, 2).float()
    p = src[:, None].float()
    mI = box_filter(I, radius)
    mp = box_filter(p, radius)
    cov = box_filter(I * p, radius) - mI * mp
    prods = torch.cat([I[:, 0:1] * I[:, 0:1], I[:, 0:1] * I[:, 1:2], I[:, 0:1] * I[:, 2:3],
                       I[:, 1:2] * I[:, 1:2], I[:, 1:2] * I[:, 2:3], I[:, 2:3] * I[:, 2:3]], 1)
    mprods = box_filter(prods, radius)
    pairs = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
    var = [mprods[:, k] - mI[:, i] * mI[:, j] + (eps if i == j else 0.0) for k, (i, j) in enumerate(pairs)]
    i11, i12, i13, i22, i23, i33 = _inv_sym3(*var)
    c0, c1, c2 = cov[:, 0], cov[:, 1], cov[:, 2]
    a = torch.stack([i11 * c0 + i12 * c1 + i13 * c2,
                     i12 * c0 + i22 * c1 + i23 * c2,
                     i13 * c0 + i23 * c1 + i33 * c2], 1)
    b = mp - (a * mI).sum(1, keepdim=True)
    return box_filter(a, radius), box_filter(b, radius)


def guided_upsample(guide_hr: torch.Tensor, guide_lr: torch.Tensor, src_lr: torch.Tensor, radius: int = 2,
                    eps: float = 1e-3) -> torch.Tensor:
    """Fast guided filter (He & Sun 2015): fit the linear model at low resolution, upsample its
    coefficients bilinearly and apply them to the full-resolution image. -> [B,H,W] at guide_hr's size."""
    a, b = guided_coefficients(guide_lr, src_lr, radius, eps)
    size = guide_hr.shape[1:3]
    a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
    b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
    q = (a * guide_hr.permute(0, 3, 1, 2).float()).sum(1) + b[:, 0]
    return q.clamp(0, 1)


def threshold_alpha(alpha: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    return (alpha >= threshold).to(alpha.dtype)


def grow_shrink(alpha: torch.Tensor, pixels: int) -> torch.Tensor:
    """Dilate (pixels > 0) or erode (pixels < 0) the alpha by |pixels| with a disc-like (octagon)
    structuring element, as grey-level max/min filters."""
    if pixels == 0:
        return alpha
    x = alpha[:, None]
    inv = pixels < 0
    if inv:
        x = 1 - x
    r = abs(int(pixels))
    # alternate square (3x3) and cross steps: an octagon close to a disc of radius r
    for i in range(r):
        if i % 2 == 0:
            x = F.max_pool2d(x, 3, stride=1, padding=1)
        else:
            xp = F.pad(x, (1, 1, 1, 1), value=0.0)
            x = torch.stack([x, xp[..., :-2, 1:-1], xp[..., 2:, 1:-1], xp[..., 1:-1, :-2], xp[..., 1:-1, 2:]]).amax(0)
    if inv:
        x = 1 - x
    return x[:, 0]


def feather(alpha: torch.Tensor, radius: float) -> torch.Tensor:
    """Gaussian blur of the alpha with sigma = radius / 2 (radius in pixels)."""
    if radius <= 0:
        return alpha
    sigma = radius / 2.0
    k = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-k, k + 1, dtype=torch.float32, device=alpha.device)
    g = torch.exp(-(t ** 2) / (2 * sigma ** 2))
    g = (g / g.sum()).to(alpha.dtype)
    x = alpha[:, None]
    x = F.conv2d(F.pad(x, (k, k, 0, 0), mode="replicate"), g.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, k, k), mode="replicate"), g.view(1, 1, -1, 1))
    return x[:, 0].clamp(0, 1)


def snap_alpha(alpha: torch.Tensor, low: float = ALPHA_SNAP_LOW, high: float = ALPHA_SNAP_HIGH) -> torch.Tensor:
    """Values below ``low`` become exactly 0, above ``high`` exactly 1 (others unchanged)."""
    a = alpha.clamp(0, 1)
    return torch.where(a < low, torch.zeros_like(a), torch.where(a > high, torch.ones_like(a), a))


def refine_alpha(image: torch.Tensor, alpha: torch.Tensor, *, mode: str = "soft", threshold: float = 0.5,
                 grow: int = 0, feather_px: float = 0.0, refine: str = "guided_filter",
                 refine_radius: int = 0, refine_eps: float = 1e-3) -> torch.Tensor:
    """Saliency -> final alpha. Order: edge refinement (guided filter on the RGB image), threshold
    (mode 'threshold'), grow/shrink, feather, snap near-0/1. ``refine_radius`` 0 = automatic
    (about 1% of the longer side, at least 2)."""
    a = alpha.float().clamp(0, 1)
    if refine == "guided_filter":
        r = refine_radius or max(2, round(max(a.shape[-2:]) / 100))
        a = guided_filter(image, a, r, refine_eps)
    elif refine not in ("none", "", None):
        raise AtelierError(f"unknown edge refinement '{refine}'", input="refine_edges",
                           expected="'none' or 'guided_filter'")
    if mode == "threshold":
        a = threshold_alpha(a, threshold)
    elif mode != "soft":
        raise AtelierError(f"unknown alpha mode '{mode}'", input="alpha_mode", expected="'soft' or 'threshold'")
    a = grow_shrink(a, grow)
    a = feather(a, feather_px)
    return snap_alpha(a)


# ----------------------------------------------------------------------------------------- outputs

def composite(image: torch.Tensor, alpha: torch.Tensor, background: tuple[float, float, float] = (1.0, 1.0, 1.0)
              ) -> torch.Tensor:
    """image [B,H,W,3] over a flat colour: bg + alpha * (image - bg), exact at alpha 0 and 1 and
    exact wherever the pixel already equals the background colour. ``background`` may also be an RGB
    tensor broadcastable to [B,H,W,3] (a background image, e.g. white with a contact shadow)."""
    if isinstance(background, torch.Tensor):
        bg = background.to(image.dtype)
    else:
        bg = torch.tensor(background, dtype=image.dtype, device=image.device).view(1, 1, 1, 3)
    a = alpha[..., None].to(image.dtype)
    out = bg + a * (image - bg)
    out = torch.where(a >= 1, image, out)
    return out.clamp(0, 1)


def rgba_cutout(image: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """[B,H,W,3] + [B,H,W] -> straight (not premultiplied) RGBA [B,H,W,4]."""
    return torch.cat([image, alpha[..., None].to(image.dtype)], dim=-1)


# ----------------------------------------------------------------------------------------- clean cut-outs

#: alpha at or above this is foreground as it is: decontamination leaves those pixels untouched
DECONTAM_KEEP = 0.99
#: weight of the prior (nearest pure foreground colour) in the per-pixel foreground solve: the composite
#: follows the image's own colour wherever alpha >> sqrt(this) and the prior where alpha ~ 0
DECONTAM_PRIOR = 1e-3
#: the squashed silhouette of the contact shadow: the bottom FOOTPRINT of the product's height, squashed to
#: SQUASH of its height (a flat band at the base)
SHADOW_FOOTPRINT = 0.25
SHADOW_SQUASH = 0.2
#: the contact shadow fades out over this fraction of the shorter side next to the image's edge
SHADOW_BORDER = 0.02


def push_pull(values: torch.Tensor, weight: torch.Tensor, fallback: torch.Tensor | None = None) -> torch.Tensor:
    """Fill every pixel with the weighted colour of the nearest pixels that have weight (push-pull,
    Gortler et al. 1996): ``values`` [N,C,H,W], ``weight`` [N,1,H,W] in 0..1 -> [N,C,H,W].

    Push: 2x2 weighted means, weights summed (capped at 1), up to one pixel. Pull: each level keeps its
    own estimate where its weight is 1 and takes the bilinearly upsampled coarser estimate where it has
    none. Every result is a convex combination of weighted pixels' values; an image with no weight at
    all gets ``fallback`` (default: ``values``). Cost about 4/3 of one pass over the image."""
    w = weight.clamp(0, 1)
    pyramid = []
    c, cw = values, w
    while max(c.shape[-2:]) > 1:
        pyramid.append((c, cw))
        h, wd = c.shape[-2:]
        pad = (0, wd % 2, 0, h % 2)  # zero weight outside: padded pixels count for nothing
        s = F.avg_pool2d(F.pad(c * cw, pad), 2) * 4
        sw = F.avg_pool2d(F.pad(cw, pad), 2) * 4
        c = s / sw.clamp_min(1e-12)
        cw = sw.clamp(max=1.0)
    est = c
    for c_l, w_l in reversed(pyramid):
        h, wd = c_l.shape[-2:]
        up = F.interpolate(est, size=(h + h % 2, wd + wd % 2), mode="bilinear", align_corners=False)[..., :h, :wd]
        est = w_l * c_l + (1 - w_l) * up
    have = cw > 0  # [N,1,1,1]: any weight at all in this image
    return torch.where(have, est, values if fallback is None else fallback)


def decontaminate(image: torch.Tensor, alpha: torch.Tensor, *, node: str | None = None) -> torch.Tensor:
    """Foreground colour decontamination: image [B,H,W,3] 0..1 and its alpha [B,H,W] -> the foreground
    colour F [B,H,W,3] with image = alpha * F + (1 - alpha) * B.

    B, the local background colour, is the push-pull fill of the pixels with alpha < 0.05 (the nearest
    background whatever the width of the soft edge); F is solved per pixel, least squares with a small
    prior towards F0, the push-pull fill of the pixels with alpha > 0.95 (the nearest solid colour of
    the product):  F = (alpha * (image - (1 - alpha) * B) + k * F0) / (alpha^2 + k), k = DECONTAM_PRIOR,
    clamped to 0..1. Pixels with alpha >= DECONTAM_KEEP are returned as they are; where alpha is 0, F is
    F0 (finite everywhere). Composited, ``alpha * F + (1 - alpha) * white`` shows no background colour
    where B is right. One image at a time (memory: about 14 floats per pixel on top of the inputs)."""
    b, h, w = (int(v) for v in image.shape[:3])
    check_size(h, w, batch=1, channels=14, node=node, input="image",
               what="the decontamination buffers for one image",
               fix="resize the images or turn decontaminate off.")
    out = []
    for i in range(b):
        x = image[i:i + 1, ..., :3].permute(0, 3, 1, 2).float()
        a = alpha[i:i + 1, None].float().clamp(0, 1)
        bg = push_pull(x, (1 - 20 * a).clamp(0, 1))
        f0 = push_pull(x, (20 * a - 19).clamp(0, 1))
        f = ((a * (x - (1 - a) * bg) + DECONTAM_PRIOR * f0) / (a * a + DECONTAM_PRIOR)).clamp(0, 1)
        f = torch.where(a >= DECONTAM_KEEP, x, torch.where(a <= 0, f0, f))
        out.append(f.permute(0, 2, 3, 1).to(image.dtype))
    return torch.cat(out, 0) if out else image[..., :3].clone()


def contact_shadow(alpha: torch.Tensor, softness: float = 3.0, offset: float = 0.5, *,
                   node: str | None = None) -> torch.Tensor:
    """A soft contact shadow under each product: alpha [B,H,W] -> shadow opacity [B,H,W] in 0..1.

    Per image: the product is where alpha >= 0.5; its base is the lowest such row and its height runs
    from the highest one. The bottom SHADOW_FOOTPRINT of the silhouette is squashed vertically to
    SHADOW_SQUASH of its height (a flat band as wide as the product's base), centred on the base line, moved
    down by ``offset``
    percent of the product's height, and blurred (Gaussian, sigma = ``softness`` percent of the product's
    height). It fades out next to the image's edge (:func:`_border_fade`), so the frame's border stays the
    background colour. An image without a product gets no shadow. The blur runs at a reduced resolution (sigma
    about 3 px there), so its cost does not grow with the softness."""
    b, h, w = (int(v) for v in alpha.shape)
    check_size(h, w, batch=1, channels=4, node=node, input="shadow_strength",
               what="the contact-shadow buffers for one image", fix="resize the images or set shadow_strength to 0.")
    out = torch.zeros(b, h, w, dtype=torch.float32, device=alpha.device)
    for i in range(b):
        a = alpha[i].float().clamp(0, 1)
        rows = torch.nonzero((a >= 0.5).any(1)).flatten()
        if rows.numel() == 0:
            continue
        top, base = int(rows[0]), int(rows[-1])
        height = base - top + 1
        band_top = max(top, base + 1 - max(1, round(SHADOW_FOOTPRINT * height)))
        band = a[band_top:base + 1]
        squashed_h = max(1, round(band.shape[0] * SHADOW_SQUASH))
        flat = F.interpolate(band[None, None], size=(squashed_h, w), mode="area")[0, 0]
        shift = round(offset / 100.0 * height)
        canvas = torch.zeros(h, w, dtype=torch.float32, device=alpha.device)
        y1 = base + 1 + shift + squashed_h // 2  # the squashed band is centred on the (shifted) base line
        y0 = y1 - squashed_h
        s0, s1 = max(0, y0), min(h, y1)
        if s1 > s0:
            canvas[s0:s1] = flat[s0 - y0:s1 - y0]
        sigma = max(0.0, softness / 100.0 * height)
        if sigma > 0.5:
            d = max(1, int(sigma // 3))  # blur at 1/d resolution: sigma about 3 px there
            if d > 1:
                small = F.avg_pool2d(F.pad(canvas[None, None], (0, (-w) % d, 0, (-h) % d)), d)[0]
                small = feather(small, 2 * sigma / d)
                canvas = F.interpolate(small[None], scale_factor=d, mode="bilinear",
                                       align_corners=False)[0, 0, :h, :w]
            else:
                canvas = feather(canvas[None], 2 * sigma)[0]
        out[i] = canvas.clamp(0, 1)
    return out * _border_fade(h, w, alpha.device)[None]


def _border_fade(h: int, w: int, device=None) -> torch.Tensor:
    """[H,W]: exactly 0 on the image's outer 4 pixels, rising linearly to 1 over SHADOW_BORDER of the shorter
    side (at least 3 px): a shadow never reaches the frame, whose border stays exactly the background colour
    (Save Image truncates, so any shadow at all would make a white pixel 254)."""
    m = max(3, round(SHADOW_BORDER * min(h, w)))
    ramp = lambda n: ((torch.minimum(torch.arange(n, device=device), torch.arange(n, device=device).flip(0))  # noqa: E731
                       .float() - 3) / m).clamp(0, 1)
    return ramp(h)[:, None] * ramp(w)[None, :]


def clean_composite(image: torch.Tensor, alpha: torch.Tensor, background=(1.0, 1.0, 1.0), *,
                    decontaminate_edges: bool = False, shadow_strength: float = 0.0, shadow_softness: float = 3.0,
                    shadow_offset: float = 0.5, node: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The cut-out placed on the flat ``background``: -> (composite [B,H,W,3], foreground colour [B,H,W,3]).

    ``decontaminate_edges``: the edge pixels' foreground colour is estimated (:func:`decontaminate`), so
    the old background does not bleed onto the new one. ``shadow_strength`` > 0: a contact shadow
    (:func:`contact_shadow`) darkens the background under the product, ``background * (1 - strength *
    shadow)``, and only the background: alpha * F + (1 - alpha) * shadowed background. Both off: exactly
    :func:`composite` (and F is the image)."""
    fg = decontaminate(image, alpha, node=node) if decontaminate_edges else image
    if shadow_strength <= 0:
        return composite(fg, alpha, background), fg
    s = contact_shadow(alpha, shadow_softness, shadow_offset, node=node)
    bg = torch.tensor(background, dtype=torch.float32, device=image.device).view(1, 1, 1, 3)
    shaded = bg * (1 - min(1.0, float(shadow_strength)) * s[..., None])
    return composite(fg, alpha, shaded.to(image.dtype)), fg


def alpha_iou(a: torch.Tensor, b: torch.Tensor, threshold: float = 0.5) -> float:
    """IoU of the two alphas thresholded at ``threshold`` (1.0 when both are empty)."""
    x, y = a >= threshold, b >= threshold
    union = (x | y).sum().item()
    return 1.0 if union == 0 else (x & y).sum().item() / union


# ----------------------------------------------------------------------------------------- classical

def classical_alpha(image: torch.Tensor, tolerance: float = 0.08, grabcut_iters: int = 4,
                    work_side: int = 512, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Weights-free background removal for near-uniform backgrounds (studio / near-white shots).

    Per image: estimate the background colour from the border (median), flood-fill from the border
    through pixels within ``tolerance`` (0..1, Lab-ish distance) of it, then GrabCut seeded with that
    (filled = probable background, far from the fill = probable foreground, the 1-px frame = definite
    background). Runs at ``work_side`` and upsamples. RGB [B,H,W,3] -> alpha [B,H,W] in {0,1}
    (use the guided-filter refinement for soft edges). Clearly worse than a trained model on cluttered
    backgrounds."""
    import cv2

    out = []
    b, h, w, _ = image.shape
    for i in range(b):
        img = to_uint8(image[i])  # Save Image's conversion: the IMAGE and its PNG give the same mask
        scale = min(1.0, work_side / max(h, w)) if work_side else 1.0
        sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
        small = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA) if scale < 1 else img
        a = _classical_one(small, tolerance, grabcut_iters)
        if (sh, sw) != (h, w):
            a = cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR)
        out.append(torch.from_numpy(a.astype(np.float32)))
        if progress is not None:
            progress(1)
    return torch.stack(out).clamp(0, 1)


def _classical_one(rgb: np.ndarray, tol: float, iters: int) -> np.ndarray:
    import cv2

    h, w = rgb.shape[:2]
    if h < 3 or w < 3:
        return np.zeros((h, w), np.float32)
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    border = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    bg = np.median(border, axis=0)
    dist = np.linalg.norm(lab - bg, axis=-1) / 255.0
    close = (dist <= tol).astype(np.uint8)
    # background = close-to-bg pixels connected to the border
    _, labels = cv2.connectedComponents(close, connectivity=4)
    frame = np.zeros((h, w), bool)
    frame[0, :] = frame[-1, :] = frame[:, 0] = frame[:, -1] = True
    edge_labels = np.unique(labels[frame & (close > 0)])
    bgmask = np.isin(labels, edge_labels) & (close > 0)
    fg0 = ~bgmask
    if fg0.sum() == 0 or bgmask.sum() == 0:
        return fg0.astype(np.float32)
    gc = np.where(bgmask, cv2.GC_PR_BGD, cv2.GC_PR_FGD).astype(np.uint8)
    k = max(1, round(min(h, w) / 100))
    core_fg = cv2.erode(fg0.astype(np.uint8), np.ones((2 * k + 1, 2 * k + 1), np.uint8)) > 0
    far_bg = cv2.erode(bgmask.astype(np.uint8), np.ones((2 * k + 1, 2 * k + 1), np.uint8)) > 0
    gc[far_bg] = cv2.GC_BGD
    gc[core_fg & (dist > 2 * tol)] = cv2.GC_FGD
    gc[0, :] = gc[-1, :] = cv2.GC_BGD
    gc[:, 0] = gc[:, -1] = cv2.GC_BGD
    if iters > 0 and (gc == cv2.GC_PR_FGD).any() | (gc == cv2.GC_FGD).any():
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        try:
            cv2.grabCut(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), gc, None, bgd, fgd, iters, cv2.GC_INIT_WITH_MASK)
        except cv2.error:
            return fg0.astype(np.float32)
    return ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.float32)


# ----------------------------------------------------------------------------------------- backends

PIXEL_BUDGET = 2 * 1024 * 1024  # pixels per forward pass when the batch is chunked automatically
#: the selector value of the weights-free backend: a stable id that saved workflows store (the tooltip
#: says what it is); the prose value of earlier versions is still accepted
CLASSICAL_NAME = "classical"
LEGACY_CLASSICAL_NAMES = ("classical (no weights: border flood fill + GrabCut)",)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class OnnxSaliency:
    """A salient-object ONNX model (e.g. BiRefNet, MIT licence, exported to ONNX), run with onnxruntime
    if it is installed (optional, never a hard dependency).

    Contract: one image input [N,3,H,W] RGB normalised with ImageNet mean/std; the last output is the
    saliency [N,1,H,W] (logits or probabilities: a sigmoid is applied when values leave 0..1). A fixed
    H, W in the graph (BiRefNet exports use 1024x1024) is honoured; otherwise sides are rounded to
    multiples of 32."""

    def __init__(self, path: str, device: str = "cpu"):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise AtelierError(f"'{path}' is an ONNX model, which needs the optional package onnxruntime",
                               input="model_name", fix="pip install onnxruntime (or onnxruntime-gpu) into "
                               "ComfyUI's Python, or pick a PoolNet .pth/.safetensors model") from exc
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(path, providers=providers)
        except Exception as exc:
            raise AtelierError(f"onnxruntime cannot open '{path}': {str(exc).splitlines()[0]}",
                               input="model_name", expected="a complete salient-object .onnx model",
                               fix="download/export the model again") from exc
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        if len(shape) != 4:
            raise AtelierError(f"'{path}' takes an input of rank {len(shape)}", input="model_name",
                               expected="one image input [N,3,H,W]")
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.fixed_size = (shape[2], shape[3]) if isinstance(shape[2], int) and isinstance(shape[3], int) else None

    def predict(self, rgb: torch.Tensor, batch_size: int = 4, progress=None) -> torch.Tensor:
        b, h, w, _ = rgb.shape
        size = self.fixed_size or (max(32, round(h / 32) * 32), max(32, round(w / 32) * 32))
        step = self.fixed_batch or max(1, batch_size)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        outs = []
        for i in range(0, b, step):
            x = rgb[i:i + step].permute(0, 3, 1, 2).float().cpu()
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            x = ((x - mean) / std).numpy().astype(np.float32)
            y = torch.from_numpy(np.asarray(self.session.run(None, {self.input_name: x})[-1], dtype=np.float32))
            y = y.reshape(y.shape[0], -1, *y.shape[-2:])[:, 0]
            if y.min() < 0 or y.max() > 1:
                y = torch.sigmoid(y)
            outs.append(F.interpolate(y[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0])
            if progress is not None:
                progress(x.shape[0])
        return torch.cat(outs, 0).clamp(0, 1)


class SaliencyModel:
    """What the loader hands to the matting node (ComfyUI type ATELIER_SALIENCY).

    kind: 'poolnet' (PoolNet-ResNet50 w/o edge, .pth/.safetensors), 'onnx' (e.g. BiRefNet ONNX) or
    'classical' (no weights). ``predict(rgb [B,H,W,3]) -> [B,H,W]`` runs at the given size, which must
    respect ``min_side``."""

    def __init__(self, kind: str, name: str, path: str | None = None, net=None, device: str = "cpu"):
        self.kind, self.name, self.path, self.net, self.device = kind, name, path, net, device
        from . import poolnet as _pn
        self.min_side = _pn.MIN_SIDE if kind == "poolnet" else (32 if kind == "onnx" else 3)

    def __repr__(self):
        return f"SaliencyModel({self.kind}, {self.name!r})"

    def predict(self, rgb: torch.Tensor, batch_size: int = 4, progress=None) -> torch.Tensor:
        if self.kind == "poolnet":
            from .poolnet import predict_saliency
            return predict_saliency(self.net, rgb, batch_size=batch_size, progress=progress)
        if self.kind == "onnx":
            return self.net.predict(rgb, batch_size=batch_size, progress=progress)
        return classical_alpha(rgb, work_side=0, progress=progress)


def load_saliency_model(path: str | None, device: str = "cpu") -> SaliencyModel:
    """.pth/.safetensors -> PoolNet, .onnx -> ONNX salient-object model, None -> classical."""
    if path is None:
        return SaliencyModel("classical", CLASSICAL_NAME)
    import os
    name = os.path.basename(path)
    if path.lower().endswith(".onnx"):
        return SaliencyModel("onnx", name, path, OnnxSaliency(path, device), device)
    from .poolnet import load_poolnet
    return SaliencyModel("poolnet", name, path, load_poolnet(path, device=device), device)


def check_budget(model: SaliencyModel, shape, max_side: int, small_input: str, has_mask: bool = False,
                 node: str | None = None) -> tuple[int, int, int, int]:
    """Check the outputs for an image batch of ``shape`` [B,H,W,C] and the size the network would run at
    against the size budget (core.budget), before anything is allocated (a 1 x 20000 image upscaled for
    PoolNet's 111 px minimum would run on 111 x 2,220,000 px); return :func:`working_size`'s result."""
    b, h, w = (int(v) for v in shape[:3])
    check_size(h, w, batch=b, channels=4, node=node, input="image", what="the RGBA cut-out of this batch",
               fix="resize the images (e.g. Upscale Image By below 1) or split the batch.")
    if has_mask:  # an external mask: the network does not run
        return h, w, 0, 0
    wh, ww, ph, pw = working_size(h, w, max_side, model.min_side, small_input)
    if (wh + ph) * (ww + pw) > h * w:  # only upscaling a small side makes it larger than the checked output
        check_size(wh + ph, ww + pw, batch=b, channels=3, node=node, input="small_input",
                   what=f"the {model.kind} working image for a {w:,} x {h:,} input (small_input '{small_input}')",
                   fix=f"set small_input to 'pad' (with 'upscale' the short side is scaled up to {model.min_side} "
                       "px, and the long side with it), or crop the image to a less extreme aspect ratio.")
    return wh, ww, ph, pw


def remove_background(model: SaliencyModel, image: torch.Tensor, *, background=(1.0, 1.0, 1.0),
                      mask: torch.Tensor | None = None, alpha_mode: str = "soft", threshold: float = 0.5,
                      grow: int = 0, feather_px: float = 0.0, refine: str = "guided_filter",
                      refine_radius: int = 0, max_side: int = 1024, small_input: str = "upscale",
                      batch_size: int | None = None, progress=None, node: str | None = None,
                      decontaminate_edges: bool = False, shadow_strength: float = 0.0, shadow_softness: float = 3.0,
                      shadow_offset: float = 0.5):
    """The whole matting step. image: IMAGE [B,H,W,C] (C 1/3/4). Returns
    (composite [B,H,W,3], alpha [B,H,W], rgba [B,H,W,4], saliency [B,H,W]).

    saliency is the model's own output (or the external ``mask``) at full size; alpha is the refined,
    thresholded/grown/feathered, snapped alpha used for the composite and the cut-out.
    With ``max_side`` > 0 the model runs with the longer side at most max_side and the result is
    brought back with a fast guided filter (refine='guided_filter') or bilinear resizing.
    ``batch_size`` None: as many images per forward pass as fit PIXEL_BUDGET (PoolNet's decoder needs
    about 1.3 GB per 1024x1024 image in fp32).
    ``decontaminate_edges`` / ``shadow_*``: see :func:`clean_composite` (the RGBA cut-out then carries the
    decontaminated colour; the shadow is only in the composite). Off (the defaults): today's composite."""
    image = image_batch(image, node=node)
    b, h, w = (int(v) for v in image.shape[:3])
    wh, ww, ph, pw = check_budget(model, image.shape, max_side, small_input, mask is not None, node)
    rgb = to_rgb(image, background)
    # the model and the edge refinement see the 8-bit pixels Save Image would write, so an IMAGE and
    # its saved PNG give the same mask; the composite keeps the full float precision
    seen = from_uint8(to_uint8(rgb))
    refine = refine or "none"
    if refine not in ("none", "guided_filter"):
        raise AtelierError(f"unknown edge refinement '{refine}'", node=node, input="refine_edges",
                           expected="'none' or 'guided_filter'")
    if mask is not None:
        sal = match_mask(mask, b, h, w, node=node, input="mask")
        low = None
    else:
        if not batch_size:
            batch_size = max(1, min(8, PIXEL_BUDGET // ((wh + ph) * (ww + pw))))
        holder = {}

        def predict(x):
            y = model.predict(x, batch_size=batch_size, progress=progress)
            holder["lr"] = (x, y)
            return y
        sal = run_at_working_size(seen, predict, max_side, model.min_side, small_input)
        down = wh < h and ww < w
        low = None
        if down and refine == "guided_filter" and "lr" in holder and holder["lr"][0].shape[1:3] == (wh, ww):
            low = holder["lr"]
    r = refine_radius or max(2, round(max(h, w) / 100))
    if refine == "guided_filter" and low is not None:
        # coefficients at the working size, applied at full size (fast guided filter)
        scale = max(h, w) / max(low[0].shape[1:3])
        lr_radius = max(1, round(r / scale))
        alpha = guided_upsample(seen, low[0], low[1], lr_radius)
        alpha = refine_alpha(seen, alpha, mode=alpha_mode, threshold=threshold, grow=grow, feather_px=feather_px,
                             refine="none")
    else:
        alpha = refine_alpha(seen, sal, mode=alpha_mode, threshold=threshold, grow=grow, feather_px=feather_px,
                             refine=refine, refine_radius=r)
    if image.shape[-1] in (2, 4):  # keep the input's own transparency
        alpha = alpha * image[..., -1].clamp(0, 1)
    out, fg = clean_composite(rgb, alpha, background, decontaminate_edges=decontaminate_edges,
                              shadow_strength=shadow_strength, shadow_softness=shadow_softness,
                              shadow_offset=shadow_offset, node=node)
    return out, alpha, rgba_cutout(fg, alpha), sal
