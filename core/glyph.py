"""Glyph rendering: text lines drawn into boxes or 4-point polygons.

The output is what ControlNet / AnyText-style models expect as a text control: white glyphs on
black (or black on white on request) plus a position mask (the filled polygons).

Pure core: numpy, PIL and cv2 only; no ComfyUI. Fonts (discovery, resolution, coverage) are in
core/fonts.py: a list of folders the caller passes (the pack's `fonts` model folder) plus the system
font folders; an explicit path must resolve inside one of those folders, arbitrary paths are refused.

Box spec (one dict per text line, JSON-serialisable, what the OCR adapters also produce)::

    {"text": "Hello", "polygon": [[x, y] * 4],  # TL, TR, BR, BL (reading order)
     "font": None | "NotoSansCJK-Regular.ttc" | "file.ttc#2",  # '#n' picks a face of a collection
     "size": None | int,            # maximum font size in px; auto-fit shrinks it when needed
     "direction": "auto" | "horizontal" | "vertical",
     "score": None | float}         # OCR recognition score, if the box came from OCR

`parse_text_boxes` also accepts `box: [x0, y0, x1, y1]`, `rect: [x, y, w, h]`, a flat 8-number
polygon, and a typed line format `text | x0,y0,x1,y1 [| font [| size]]`.
"""
from __future__ import annotations

import functools
import math
import os
import threading
from collections import OrderedDict
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw

from .budget import check_size
from . import jsontext
from .errors import AtelierError
from .fonts import choose_font, clear_font_rankings, load_font
# font helpers other families reach through this module (core/grid.py, their tests, example_inputs)
from .fonts import FONT_EXTS, font_dirs, font_names, list_fonts, missing_glyphs, resolve_font, system_font_dirs  # noqa: F401

DIRECTIONS = ("auto", "horizontal", "vertical")
GLYPHS_TYPE = "atelier_glyphs"


# ----------------------------------------------------------------------------------------------
# box specs

def box_to_polygon(box: Sequence[float]) -> list[list[float]]:
    """[x0, y0, x1, y1] -> TL, TR, BR, BL."""
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = min(x0, x1), max(x0, x1)
    y0, y1 = min(y0, y1), max(y0, y1)
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def _num_list(v) -> list[float]:
    if isinstance(v, str):
        v = [s for s in v.replace(";", ",").replace(" ", ",").split(",") if s]
    out = []
    for item in v:
        if isinstance(item, (list, tuple)):
            out.extend(float(x) for x in item)
        else:
            out.append(float(item))
    return out


def normalize_box(item: dict, i: int = 0, *, node: str | None = None, input: str | None = None) -> dict:
    """Validate one spec dict and return the canonical box dict (see module doc)."""
    where = f"text box #{i + 1}"
    if not isinstance(item, dict):
        raise AtelierError(f"{where} is {type(item).__name__}, not an object", node=node, input=input,
                           expected='{"text": "...", "box": [x0, y0, x1, y1]}', fix="write each box as a JSON object.")
    text = item.get("text")
    if not isinstance(text, str) or not text.strip():
        raise AtelierError(f"{where} has empty text", node=node, input=input, expected="a non-empty 'text' string",
                           fix="type the text to draw, or delete the box.")
    try:
        if item.get("polygon") is not None:
            flat = _num_list(item["polygon"])
            if len(flat) != 8:
                raise ValueError(f"polygon has {len(flat)} numbers, needs 8")
            poly = [[flat[k], flat[k + 1]] for k in range(0, 8, 2)]
        elif item.get("box") is not None:
            flat = _num_list(item["box"])
            if len(flat) != 4:
                raise ValueError(f"box has {len(flat)} numbers, needs 4")
            poly = box_to_polygon(flat)
        elif item.get("rect") is not None:
            x, y, w, h = _num_list(item["rect"])
            poly = box_to_polygon([x, y, x + w, y + h])
        else:
            raise ValueError("no 'box', 'rect' or 'polygon'")
    except (TypeError, ValueError) as exc:
        raise AtelierError(f"{where} ('{text}'): {exc}", node=node, input=input,
                           expected="'box': [x0, y0, x1, y1] or 'polygon': [[x, y], [x, y], [x, y], [x, y]]",
                           fix="give the box corners in pixels.") from exc
    size = item.get("size")
    if size is not None:
        try:
            size = int(float(size))  # NaN: ValueError, inf / 1e999: OverflowError
        except (TypeError, ValueError, OverflowError):
            raise AtelierError(f"{where}: size '{size}' is not a usable number", node=node, input=input,
                               expected="a finite font size in pixels",
                               fix="write e.g. \"size\": 32 or leave it out (an API client must not send NaN or "
                                   "Infinity).") from None
        if size <= 0:
            size = None
    direction = str(item.get("direction") or "auto").lower()
    if item.get("vertical") is True:
        direction = "vertical"
    if direction not in DIRECTIONS:
        raise AtelierError(f"{where}: unknown direction '{direction}'", node=node, input=input,
                           expected=" / ".join(DIRECTIONS), fix="use one of those.")
    font = item.get("font")
    score = item.get("score")
    return {"text": text, "polygon": poly, "font": (str(font) if font else None), "size": size,
            "direction": direction, "score": (float(score) if score is not None else None)}


def _parse_lines(spec: str, node, input) -> list[dict]:
    items = []
    for n, line in enumerate(spec.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < 2:
            raise AtelierError(f"line {n} '{line}' has no box", node=node, input=input,
                               expected="'text | x0,y0,x1,y1 [| font [| size]]' or a JSON list",
                               fix="add the box after a '|'.")
        try:
            nums = _num_list(parts[1])
        except ValueError:
            raise AtelierError(f"line {n} '{line}': the box '{parts[1]}' is not a list of numbers", node=node,
                               input=input, expected="'text | x0,y0,x1,y1 [| font [| size]]' with the corners in pixels",
                               fix="write the corners as numbers, e.g. 'Q | 10,10,60,60'.") from None
        item = {"text": parts[0]}
        item["box" if len(nums) == 4 else "polygon"] = nums
        if len(parts) > 2 and parts[2]:
            item["font"] = parts[2]
        if len(parts) > 3 and parts[3]:
            item["size"] = parts[3]
        items.append(item)
    return items


def parse_text_boxes(spec, *, node: str | None = None, input: str | None = None) -> list[dict]:
    """Parse a JSON string / list / dict (with 'boxes') or the line format into canonical boxes."""
    if isinstance(spec, str):
        s = spec.strip()
        if not s:
            return []
        if s[0] in "[{":
            try:
                spec = jsontext.loads(s)
            except ValueError as exc:  # invalid, or nested too deep for json.loads' recursion
                raise AtelierError(f"the text-box spec is not valid JSON: {exc}", node=node, input=input,
                                   expected='[{"text": "Q", "box": [10, 10, 60, 60]}]',
                                   fix="fix the JSON (double quotes, commas) or use lines 'text | x0,y0,x1,y1'.") from None
        else:
            spec = _parse_lines(s, node, input)
    if isinstance(spec, dict):
        spec = spec.get("boxes", [spec] if "text" in spec else [])
    if not isinstance(spec, list):
        raise AtelierError("the text-box spec must be a list of boxes", node=node, input=input,
                           expected="a JSON list", fix="wrap the boxes in [ ].")
    return [normalize_box(it, i, node=node, input=input) for i, it in enumerate(spec)]


def make_glyphs(items: list[list[dict]], width: int, height: int) -> dict:
    """The ATELIER_GLYPHS value: canvas size plus one list of boxes per batch image (JSON-serialisable)."""
    return {"type": GLYPHS_TYPE, "version": 1, "width": int(width), "height": int(height),
            "items": [list(b) for b in items]}


def scale_boxes(boxes: list[dict], sx: float, sy: float) -> list[dict]:
    out = []
    for b in boxes:
        nb = dict(b)
        nb["polygon"] = [[p[0] * sx, p[1] * sy] for p in b["polygon"]]
        if b.get("size"):
            nb["size"] = max(1, int(round(b["size"] * min(sx, sy))))
        out.append(nb)
    return out


# ----------------------------------------------------------------------------------------------
# geometry

def _signed_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def check_polygon(poly, width: int, height: int, *, text: str = "", index: int = 0, node=None, input=None,
                  tolerance: float = 2.0) -> np.ndarray:
    """Validate a 4-point polygon against the canvas; return it as float32 (4, 2) in TL,TR,BR,BL order."""
    p = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    where = f"text box #{index + 1} ('{text}')"
    if p.shape != (4, 2) or not np.isfinite(p).all():
        raise AtelierError(f"{where} polygon is not 4 finite points", node=node, input=input,
                           expected="[[x, y], [x, y], [x, y], [x, y]]", fix="give 4 corner points.")
    if _signed_area(p) < 0:  # counter-clockwise on screen: keep p0, reverse the walk
        p = p[[0, 3, 2, 1]]
    cross = []
    for k in range(4):
        a, b, c = p[k], p[(k + 1) % 4], p[(k + 2) % 4]
        cross.append((b[0] - a[0]) * (c[1] - b[1]) - (b[1] - a[1]) * (c[0] - b[0]))
    w, h = polygon_size(p)
    if abs(_signed_area(p)) < 16.0 or min(w, h) < 3.0 or min(cross) <= 0:
        raise AtelierError(f"{where} polygon is degenerate (area {abs(_signed_area(p)):.1f} px², "
                           f"{w:.1f}x{h:.1f} px, {'not convex' if min(cross) <= 0 else 'too small'})",
                           node=node, input=input,
                           expected="a convex quadrilateral at least 3 px on each side, corners in reading order",
                           fix="check the corner order (top-left, top-right, bottom-right, bottom-left) and size.")
    if (p[:, 0].min() < -tolerance or p[:, 1].min() < -tolerance or p[:, 0].max() > width + tolerance
            or p[:, 1].max() > height + tolerance):
        x0, y0 = p.min(0)
        x1, y1 = p.max(0)
        raise AtelierError(f"{where} lies outside the {width}x{height} canvas (spans x {x0:.0f}..{x1:.0f}, "
                           f"y {y0:.0f}..{y1:.0f})", node=node, input=input,
                           expected="every corner inside the canvas",
                           fix="move the box inside the canvas or enlarge the canvas (width/height).")
    p[:, 0] = np.clip(p[:, 0], 0, width)
    p[:, 1] = np.clip(p[:, 1], 0, height)
    return p.astype(np.float32)


def polygon_size(p: np.ndarray) -> tuple[float, float]:
    """(width along the text line, height across it) of a TL,TR,BR,BL quadrilateral."""
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = np.asarray(p, np.float64).tolist()
    w = (math.hypot(x1 - x0, y1 - y0) + math.hypot(x2 - x3, y2 - y3)) / 2
    h = (math.hypot(x3 - x0, y3 - y0) + math.hypot(x2 - x1, y2 - y1)) / 2
    return float(w), float(h)


# ----------------------------------------------------------------------------------------------
# rendering

def _fit_horizontal(path, index, text, avail_w, avail_h, max_size):
    return _fit_horizontal_cached(path, os.path.getmtime(path), index, text, avail_w, avail_h, max_size)


@functools.lru_cache(maxsize=4096)
def _fit_horizontal_cached(path, mtime, index, text, avail_w, avail_h, max_size):
    ref = 64
    l, t, r, b = load_font(path, index, ref).getbbox(text)
    # ink height, floored at 0.72 em so punctuation-only text ("," ".") does not blow up to the box height
    tw, th = max(1, r - l), max(1, b - t, 0.72 * ref)
    size = int(min(ref * avail_w / tw, ref * avail_h / th))
    if max_size:
        size = min(size, int(max_size))
    while size > 1:
        l, t, r, b = load_font(path, index, size).getbbox(text)
        if r - l <= avail_w and max(b - t, 0.72 * size) <= avail_h:
            break
        size -= 1
    return max(1, size)


def _vertical_extent(font, chars, gap):
    """(ink width, column height, per-char bboxes) of chars stacked in em cells of size*(1+gap)."""
    boxes = [font.getbbox(c) for c in chars]
    cw = max(b[2] - b[0] for b in boxes)
    inks = max(b[3] - b[1] for b in boxes)
    step = font.size * (1 + gap)
    return cw, step * (len(chars) - 1) + max(font.size, inks), boxes


def _fit_vertical(path, index, chars, avail_w, avail_h, max_size, gap):
    return _fit_vertical_cached(path, os.path.getmtime(path), index, tuple(chars), avail_w, avail_h, max_size, gap)


@functools.lru_cache(maxsize=4096)
def _fit_vertical_cached(path, mtime, index, chars, avail_w, avail_h, max_size, gap):
    ref = 64
    cw, ch, _ = _vertical_extent(load_font(path, index, ref), chars, gap)
    size = int(min(ref * avail_w / max(cw, 1), ref * avail_h / max(ch, 1)))
    if max_size:
        size = min(size, int(max_size))
    while size > 1:
        cw, ch, _ = _vertical_extent(load_font(path, index, size), chars, gap)
        if cw <= avail_w and ch <= avail_h:
            break
        size -= 1
    return max(1, size)


class _TileCache:
    """Least-recently-used cache of rendered tiles, bounded by their total bytes (thread-safe)."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self._items: "OrderedDict[tuple, tuple]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit

    def put(self, key, value: tuple) -> None:
        n = value[0].nbytes
        if n > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self.bytes += n
            while self.bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self.bytes -= old[0].nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.bytes = 0


#: rendered tiles by (text, font file + mtime, face, box size, options): a box drawn again (the same
#: layout re-run, a label repeated) costs a dictionary look-up instead of fitting and rasterising
_TILES = _TileCache(64 << 20)


def clear_caches() -> None:
    """Forget fitted sizes, rendered tiles and font rankings (fonts and glyph checks stay cached)."""
    _TILES.clear()
    _fit_horizontal_cached.cache_clear()
    _fit_vertical_cached.cache_clear()
    clear_font_rankings()


def render_tile(text: str, path: str, index: int, w: float, h: float, *, direction: str = "horizontal",
                max_size: int | None = None, padding: float = 0.08, gap: float = 0.05, fit: str = "contain",
                min_size: int = 3) -> tuple[np.ndarray, int]:
    """Upright text tile (uint8, 255 = ink, read-only: it is cached) for a w x h box; returns (tile, font size).

    Tiles are cached by every argument and the font file's mtime, so the same box costs one
    rasterisation however often it is drawn.

    fit="contain": the largest font size that fits the padded box (never above max_size), text centred,
    tile of the box's size; text too long for its box is shrunk, never clipped.
    fit="stretch": the font size fits the box's thickness only and the tile is cut to the text, so the
    caller's warp stretches or squeezes it along the line to fill the box exactly (as OCR boxes do).
    """
    if fit not in ("contain", "stretch"):
        raise AtelierError(f"unknown fit '{fit}'", input="fit", expected="contain or stretch", fix="pick one.")
    key = (text, path, os.path.getmtime(path), int(index), float(w), float(h), direction,
           None if max_size is None else int(max_size), float(padding), float(gap), fit, int(min_size))
    hit = _TILES.get(key)
    if hit is None:
        hit = _render_tile(text, path, index, w, h, direction, max_size, padding, gap, fit, min_size)
        hit[0].flags.writeable = False
        _TILES.put(key, hit)
    return hit


def _render_tile(text, path, index, w, h, direction, max_size, padding, gap, fit, min_size):
    pad = max(1.0, padding * min(w, h))
    avail_w, avail_h = max(1.0, w - 2 * pad), max(1.0, h - 2 * pad)
    big = 1e9 if fit == "stretch" else None
    if direction == "vertical":
        chars = [c for c in text if not c.isspace()] or [text[0]]
        size = _fit_vertical(path, index, chars, avail_w, big or avail_h, max_size, gap)
    else:
        size = _fit_horizontal(path, index, text, big or avail_w, avail_h, max_size)
    if size < min_size:
        raise AtelierError(f"text '{text}' does not fit its {w:.0f}x{h:.0f} px box even at {size} px",
                           expected=f"a box large enough for {len(text)} characters at {min_size}+ px",
                           fix="enlarge the box, shorten the text, or split it over several boxes.")
    font = load_font(path, index, size)
    if direction == "vertical":
        cw, total, boxes = _vertical_extent(font, chars, gap)
        if fit == "stretch":
            h = total + 2 * pad
    else:
        l, t, r, b = font.getbbox(text)
        if fit == "stretch":
            w = (r - l) + 2 * pad
    W, H = max(1, int(math.ceil(w))), max(1, int(math.ceil(h)))
    check_size(H, W, channels=1, bytes_per_value=1, input="spec", what=f"the text tile for '{text[:24]}'",
               fix="use shorter text or a thinner box with fit 'stretch', or split the text over several boxes.")
    tile = Image.new("L", (W, H), 0)
    draw = ImageDraw.Draw(tile)
    if direction == "vertical":
        step = size * (1 + gap)
        cell = total - step * (len(chars) - 1)
        top = (h - total) / 2
        for k, (c, bb) in enumerate(zip(chars, boxes)):
            cy = top + k * step + cell / 2
            draw.text((w / 2 - (bb[0] + bb[2]) / 2, cy - (bb[1] + bb[3]) / 2), c, fill=255, font=font)
    else:
        draw.text((w / 2 - (l + r) / 2, h / 2 - (t + b) / 2), text, fill=255, font=font)
    return np.array(tile, dtype=np.uint8), size


def pick_direction(direction: str, text: str, w: float, h: float) -> str:
    if direction in ("horizontal", "vertical"):
        return direction
    n = len([c for c in text if not c.isspace()])
    return "vertical" if (n > 1 and h >= 1.5 * w) else "horizontal"


def render_glyphs(boxes: list[dict], width: int, height: int, *, font: str | None = "auto",
                  dirs: Sequence[str | os.PathLike] = (), invert: bool = False, padding: float = 0.08,
                  direction: str | None = None, fit: str = "contain", node: str | None = None,
                  input: str | None = None, progress=None) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Render canonical boxes on a (height, width) canvas.

    Returns (glyphs uint8 [H, W] (255 = text unless invert), mask uint8 [H, W] (1 inside the text
    polygons), info: one dict per box with the font file, face, size and direction used).
    A box's own 'font' wins over `font`; `direction` (if given) overrides the boxes' own; `fit` is
    "contain" (keep the font's proportions, centre in the box) or "stretch" (fill the box along the line).
    """
    width, height = int(width), int(height)
    if width < 8 or height < 8:
        raise AtelierError(f"canvas {width}x{height} is too small", node=node, input="width/height",
                           expected="at least 8x8 pixels", fix="set a real canvas size.")
    canvas = np.zeros((height, width), np.uint8)
    mask = np.zeros((height, width), np.uint8)
    info = []
    chosen: dict = {}
    for i, b in enumerate(boxes):
        text = b.get("text") or ""
        if not text.strip():
            raise AtelierError(f"text box #{i + 1} has empty text", node=node, input=input,
                               expected="non-empty text", fix="type the text or delete the box.")
        poly = check_polygon(b["polygon"], width, height, text=text, index=i, node=node, input=input)
        key = (b.get("font") or font, text)  # one font choice per distinct (font, text) in this call
        if key not in chosen:
            chosen[key] = choose_font(b.get("font") or font, text, dirs, node=node,
                                      input=("font" if not b.get("font") else input))
        path, index = chosen[key]
        w, h = polygon_size(poly)
        d = pick_direction(direction or b.get("direction") or "auto", text, w, h)
        try:
            tile, size = render_tile(text, path, index, w, h, direction=d, max_size=b.get("size"), padding=padding,
                                     fit=fit)
        except AtelierError as exc:
            raise AtelierError(f"text box #{i + 1}: {exc.problem}", node=node, input=input, expected=exc.expected,
                               fix=exc.fix) from None
        th, tw = tile.shape
        x0, y0 = np.floor(poly.min(0)).astype(int)
        x1, y1 = np.ceil(poly.max(0)).astype(int)
        x0, y0 = max(0, x0), max(0, y0)
        x1, y1 = min(width, max(x1, x0 + 1)), min(height, max(y1, y0 + 1))
        src = np.float32([[0, 0], [tw, 0], [tw, th], [0, th]])
        M = cv2.getPerspectiveTransform(src, poly - np.float32([x0, y0]))
        warped = cv2.warpPerspective(tile, M, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        np.maximum(canvas[y0:y1, x0:x1], warped, out=canvas[y0:y1, x0:x1])
        cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
        info.append({"text": text, "font": os.path.basename(path), "face": index, "size": size, "direction": d})
        if progress is not None:
            progress(i + 1, len(boxes))
    if invert:
        canvas = 255 - canvas
    return canvas, mask, info


def compose_glyphs(background: np.ndarray, glyphs: np.ndarray, mask: np.ndarray, *, clear_under_text: bool = True,
                   invert: bool = False) -> np.ndarray:
    """Overlay rendered glyphs on a control image (e.g. Canny edges), as the keyboard-skin seed did.

    background: uint8 [H, W, C] or [H, W]; glyphs uint8 [H, W] with 255 = text (white on black);
    mask: [H, W] text polygons. With clear_under_text the background inside the polygons is set to the
    paper colour first, so the text reads cleanly. invert=True for black-on-white control images.
    """
    bg = background.copy()
    g = glyphs if glyphs.ndim == bg.ndim else glyphs[..., None]
    m = (mask > 0) if mask.ndim == bg.ndim else (mask > 0)[..., None]
    if invert:
        if clear_under_text:
            bg = np.where(m, 255, bg).astype(np.uint8)
        return np.minimum(bg, 255 - g).astype(np.uint8)
    if clear_under_text:
        bg = np.where(m, 0, bg).astype(np.uint8)
    return np.maximum(bg, g).astype(np.uint8)


def draw_boxes_preview(image: np.ndarray, boxes: list[dict], *, color=(255, 64, 64)) -> np.ndarray:
    """RGB uint8 copy of `image` with each polygon outlined and its index written beside it."""
    out = np.ascontiguousarray(image[..., :3] if image.ndim == 3 else np.repeat(image[..., None], 3, -1)).copy()
    th = max(1, round(min(out.shape[:2]) / 400))
    for i, b in enumerate(boxes):
        p = np.round(np.asarray(b["polygon"], np.float32)).astype(np.int32)
        cv2.polylines(out, [p], True, color, th, cv2.LINE_AA)
        cv2.putText(out, str(i + 1), (int(p[0][0]), max(10, int(p[0][1]) - 3)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4 * th, color, th, cv2.LINE_AA)
    return out
