"""Layout composer: place element images (keys, function bar, background) on a canvas by layout rules.

A layout is JSON (see layouts/*.json)::

    {"name": "qwerty_26", "canvas": [1080, 720],
     "colors": {"background": "#20242c", "function_bar": "#2b303a", "key": "#3a404c", "function_key": "#4a5160"},
     "radius": 0.18,                       # corner radius of drawn placeholder elements, fraction of min(w, h)
     "label_inset": 0.2,                   # label box = element rect shrunk by this fraction on each side
     "label_size": 56,                     # maximum label font size in canvas px (uniform keycap legends)
     "regions": [{"slot": "function_bar", "rect": [x, y, w, h]},
                 {"slot": "key", "rect": [x, y, w, h], "label": "Q"}, ...]}

Coordinates are pixels of `canvas`; the composer scales them to the requested output size. A slot with
an element image gets that image (RGBA alpha respected, stretched or contained in the rect); a slot
without one is drawn as a flat rounded rectangle of its colour, so a layout alone already makes a usable
control image. Labels come back as glyph boxes (core.glyph format) to feed the glyph renderer.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np

from . import jsontext
from .errors import AtelierError

LAYOUT_DIR = Path(__file__).resolve().parent.parent / "layouts"
_DEFAULT_COLORS = {"background": "#20242c", "function_bar": "#2b303a", "key": "#3a404c", "function_key": "#4a5160"}


def _is_number(v) -> bool:
    """A finite int/float (JSON's NaN / Infinity, which json.loads accepts, and booleans are not)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def shipped_layouts() -> dict[str, Path]:
    """name -> path of the layouts shipped in layouts/."""
    return {p.stem: p for p in sorted(LAYOUT_DIR.glob("*.json"))}


def _color(value, where, node) -> tuple[int, int, int]:
    if isinstance(value, (list, tuple)) and len(value) == 3:
        return tuple(int(np.clip(v, 0, 255)) for v in value)
    s = str(value).strip().lstrip("#")
    if len(s) == 3:
        s = "".join(c * 2 for c in s)
    try:
        if len(s) != 6:
            raise ValueError
        return tuple(int(s[i:i + 2], 16) for i in (0, 2, 4))
    except ValueError:
        raise AtelierError(f"layout colour {where} '{value}' is not a colour", node=node, input="layout_json",
                           expected="'#rrggbb' or [r, g, b]", fix="write e.g. \"#3a404c\".") from None


def load_layout(spec: str | dict, *, node: str | None = None, input: str = "layout_json") -> dict:
    """Parse and validate a layout (a dict, a JSON string, or the name of a shipped layout)."""
    if isinstance(spec, str):
        s = spec.strip()
        shipped = shipped_layouts()
        if s in shipped:
            spec = json.loads(shipped[s].read_text(encoding="utf-8"))
        else:
            try:
                spec = jsontext.loads(s)
            except ValueError as exc:  # invalid, or nested too deep for json.loads' recursion
                raise AtelierError(f"layout is neither a shipped layout name nor valid JSON ({exc})", node=node,
                                   input=input, expected=f"one of {', '.join(shipped) or '(none)'} or a layout JSON",
                                   fix="pick a shipped layout or fix the JSON.") from None
    if not isinstance(spec, dict):
        raise AtelierError("layout must be a JSON object", node=node, input=input,
                           expected='{"canvas": [w, h], "regions": [...]}', fix="wrap it in { }.")
    canvas = spec.get("canvas")
    if (not isinstance(canvas, (list, tuple)) or len(canvas) != 2
            or not all(_is_number(v) and v >= 8 for v in canvas)):
        raise AtelierError(f"layout canvas '{canvas}' is invalid", node=node, input=input,
                           expected="\"canvas\": [width, height] in pixels, each >= 8", fix="add the canvas size.")
    cw, ch = float(canvas[0]), float(canvas[1])
    regions = spec.get("regions")
    if not isinstance(regions, list) or not regions:
        raise AtelierError("layout has no regions", node=node, input=input,
                           expected="\"regions\": [{\"slot\": \"key\", \"rect\": [x, y, w, h]}, ...]",
                           fix="add at least one region.")
    colors = dict(_DEFAULT_COLORS)
    colors.update(spec.get("colors") or {})
    out_regions = []
    for i, r in enumerate(regions):
        where = f"region #{i + 1}"
        if not isinstance(r, dict) or not isinstance(r.get("slot"), str):
            raise AtelierError(f"{where} has no slot name", node=node, input=input,
                               expected="{\"slot\": \"key\", \"rect\": [x, y, w, h]}", fix="name the slot.")
        rect = r.get("rect")
        if (not isinstance(rect, (list, tuple)) or len(rect) != 4
                or not all(_is_number(v) for v in rect)):
            raise AtelierError(f"{where} ({r['slot']}) has a bad rect '{rect}'", node=node, input=input,
                               expected="[x, y, w, h] in canvas pixels, finite numbers",
                               fix="give four numbers (JSON NaN / Infinity are not sizes).")
        if r.get("size") is not None and not (_is_number(r["size"]) and r["size"] > 0):
            raise AtelierError(f"{where} ({r['slot']}) has label size {r['size']!r}", node=node, input=input,
                               expected="a finite label font size in canvas pixels (> 0), or none",
                               fix="write e.g. \"size\": 48 or leave it out.")
        x, y, w, h = (float(v) for v in rect)
        if w < 1 or h < 1 or x < -0.5 or y < -0.5 or x + w > cw + 0.5 or y + h > ch + 0.5:
            raise AtelierError(f"{where} ({r['slot']}) rect {list(rect)} is empty or outside the {cw:g}x{ch:g} canvas",
                               node=node, input=input, expected="a rect inside the canvas",
                               fix="fix the rect or the canvas size.")
        if r["slot"] not in colors and r.get("color") is None:
            colors[r["slot"]] = colors["key"]
        out_regions.append({"slot": r["slot"], "rect": [x, y, w, h], "label": r.get("label"),
                            "color": r.get("color"), "font": r.get("font"), "size": r.get("size")})
    for key, lo, hi in (("radius", 0.0, 0.5), ("label_inset", 0.0, 0.45), ("label_size", 0.0, None)):
        v = spec.get(key)
        if v is not None and not (_is_number(v) and v >= lo and (hi is None or v <= hi)):
            raise AtelierError(f"layout {key} is {v!r}", node=node, input=input,
                               expected=f"a finite number >= {lo:g}" + (f" and <= {hi:g}" if hi is not None else ""),
                               fix=f"fix \"{key}\" or leave it out for the default.")
    return {"name": spec.get("name", "custom"), "canvas": [cw, ch],
            "colors": {k: _color(v, k, node) for k, v in colors.items()},
            "radius": float(spec.get("radius", 0.18)), "label_inset": float(spec.get("label_inset", 0.2)),
            "label_size": (float(spec["label_size"]) if spec.get("label_size") else None),
            "regions": out_regions}


def _rounded_mask(h: int, w: int, radius: float) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    r = int(max(0, min(radius, min(w, h) / 2)))
    if r < 1:
        m[:] = 255
        return m
    cv2.rectangle(m, (r, 0), (w - 1 - r, h - 1), 255, -1)
    cv2.rectangle(m, (0, r), (w - 1, h - 1 - r), 255, -1)
    for cx, cy in ((r, r), (w - 1 - r, r), (r, h - 1 - r), (w - 1 - r, h - 1 - r)):
        cv2.circle(m, (cx, cy), r, 255, -1, cv2.LINE_AA)
    return m


def _fit_element(elem: np.ndarray, w: int, h: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Resize an RGB(A) uint8 element to (h, w); return (rgb, alpha 0..255)."""
    if elem.ndim == 2:
        elem = np.repeat(elem[..., None], 3, -1)
    rgb = elem[..., :3]
    alpha = elem[..., 3] if elem.shape[-1] == 4 else np.full(elem.shape[:2], 255, np.uint8)
    eh, ew = rgb.shape[:2]
    if mode == "contain":
        s = min(w / ew, h / eh)
        nw, nh = max(1, round(ew * s)), max(1, round(eh * s))
    else:
        nw, nh = w, h
    interp = cv2.INTER_AREA if nw < ew else cv2.INTER_LINEAR
    rgb = cv2.resize(rgb, (nw, nh), interpolation=interp)
    alpha = cv2.resize(alpha, (nw, nh), interpolation=interp)
    if (nw, nh) != (w, h):
        out_rgb, out_a = np.zeros((h, w, 3), np.uint8), np.zeros((h, w), np.uint8)
        ox, oy = (w - nw) // 2, (h - nh) // 2
        out_rgb[oy:oy + nh, ox:ox + nw], out_a[oy:oy + nh, ox:ox + nw] = rgb, alpha
        rgb, alpha = out_rgb, out_a
    return rgb, alpha


#: slots that are not keys (everything else is a key: key, function_key, space_key, ...)
NON_KEY_SLOTS = ("background", "function_bar")


def key_regions(layout: dict) -> list[dict]:
    """The key regions (slots other than background / function_bar) in layout order: what per-key images map to."""
    return [r for r in layout["regions"] if r["slot"] not in NON_KEY_SLOTS]


def compose_layout(layout: dict, width: int, height: int, elements: dict | None = None, *,
                   fit: str = "stretch", node: str | None = None,
                   per_key: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Draw a validated layout at (height, width).

    elements: slot -> uint8 [h, w, 3|4] (RGBA alpha respected) or None (flat placeholder); one image is
    reused for every region of its slot.
    per_key: optional images for the keys in layout order (key_regions): key k gets per_key[k] where given
    (k < len(per_key)), the keys after those get their slot's image (or the placeholder) as without it.
    Returns (image uint8 [H, W, 3], mask uint8 [H, W] (1 where any non-background element lies),
    label boxes in output pixels, ready for core.glyph.render_glyphs).
    """
    if fit not in ("stretch", "contain"):
        raise AtelierError(f"unknown fit '{fit}'", node=node, input="fit", expected="stretch or contain", fix="pick one.")
    elements = elements or {}
    width, height = int(width), int(height)
    sx, sy = width / layout["canvas"][0], height / layout["canvas"][1]
    img = np.zeros((height, width, 3), np.uint8)
    img[:] = layout["colors"].get("background", (0, 0, 0))
    mask = np.zeros((height, width), np.uint8)
    labels = []
    per_key = list(per_key or [])
    if len(per_key) > len(key_regions(layout)):
        raise AtelierError(f"{len(per_key)} per-key images for a layout with {len(key_regions(layout))} keys",
                           node=node, input="per_key", expected=f"at most {len(key_regions(layout))} images (one per key, "
                           "in layout order)", fix="pass one image per key, or fewer (the rest use the slot images).")
    k = 0
    bg = elements.get("background")
    if bg is not None:
        rgb, a = _fit_element(bg, width, height, "stretch")
        af = a[..., None].astype(np.float32) / 255
        img = np.round(rgb * af + img * (1 - af)).astype(np.uint8)
    for r in layout["regions"]:
        x, y, w, h = r["rect"]
        x0, y0 = int(round(x * sx)), int(round(y * sy))
        x1, y1 = min(width, int(round((x + w) * sx))), min(height, int(round((y + h) * sy)))
        rw, rh = max(1, x1 - x0), max(1, y1 - y0)
        if r["slot"] == "background":
            continue
        elem = elements.get(r["slot"])
        if r["slot"] not in NON_KEY_SLOTS:
            if k < len(per_key):
                elem = per_key[k]
            k += 1
        if elem is not None:
            rgb, a = _fit_element(elem, rw, rh, fit)
        else:
            color = _color(r["color"], r["slot"], node) if r.get("color") else layout["colors"][r["slot"]]
            rgb = np.empty((rh, rw, 3), np.uint8)
            rgb[:] = color
            a = _rounded_mask(rh, rw, layout["radius"] * min(rw, rh))
        af = a[..., None].astype(np.float32) / 255
        dst = img[y0:y0 + rh, x0:x0 + rw]
        img[y0:y0 + rh, x0:x0 + rw] = np.round(rgb[:dst.shape[0], :dst.shape[1]] * af[:dst.shape[0], :dst.shape[1]]
                                               + dst * (1 - af[:dst.shape[0], :dst.shape[1]])).astype(np.uint8)
        mask[y0:y0 + rh, x0:x0 + rw] |= (a[:dst.shape[0], :dst.shape[1]] > 127).astype(np.uint8)
        if r.get("label"):
            ins = layout["label_inset"]
            lx0, ly0 = x0 + rw * ins, y0 + rh * ins
            lx1, ly1 = x0 + rw * (1 - ins), y0 + rh * (1 - ins)
            size = r.get("size") or layout.get("label_size")
            labels.append({"text": str(r["label"]), "polygon": [[lx0, ly0], [lx1, ly0], [lx1, ly1], [lx0, ly1]],
                           "font": r.get("font"), "size": (max(1, int(size * min(sx, sy))) if size else None),
                           "direction": "horizontal", "score": None})
    return img, mask, labels
