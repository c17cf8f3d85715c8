"""Image grid (contact sheet) with gaps, a background colour and optional captions under each cell.

Layout: cells are filled row by row (left to right, then top to bottom). Cell (r, c) has its
top-left pixel at (gap + c*(cell_w+gap), gap + r*(cell_h+caption_h+gap)); the caption strip of
height caption_h sits directly under the image. When rows and cols are both 0 (AUTO_LAYOUT_RULE):
cols = max(2, floor(sqrt(n))) (1 for a single image), rows = ceil(n / cols). Pages go two to a row,
as the story seed laid out its 8 pages (images[0:2], [2:4], [4:6], [6:8] as rows): 8 -> 4 rows x 2
columns, 2 -> 1x2, 6 -> 3x2; from 9 on the grid is near-square and never wider than tall (9 -> 3x3,
12 -> 4x3, 16 -> 4x4).

Captions are drawn with a font that has every character of them (CJK included), found with the
glyph family's font helpers (core/glyph.py: the pack's fonts folder, then the system fonts).
"""
from __future__ import annotations

import math
import os
import re
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageColor, ImageDraw, ImageFont

from . import glyph
from .budget import check_size
from .errors import AtelierError
from .images import image_batch, to_rgb

AUTO_LAYOUT_RULE = ("0 = automatic: two images a row like the story seed's pages, near-square from 9 on "
                    "(columns = max(2, floor(sqrt(n))), rows = ceil(n / columns)): 8 images -> 4 rows x 2 "
                    "columns, 6 -> 3x2, 9 -> 3x3, 12 -> 4x3. Set one of rows/cols to fix it and the other "
                    "follows.")


def auto_layout(n: int, rows: int = 0, cols: int = 0) -> tuple[int, int]:
    """(rows, cols) for n cells; 0 means 'choose' (module docstring: two a row, near-square from 9)."""
    if n <= 0:
        raise AtelierError("no images to put in the grid.", expected="at least one image")
    if rows < 0 or cols < 0:
        raise AtelierError(f"rows={rows}, cols={cols}.", expected="rows and cols >= 0 (0 = automatic)")
    if rows == 0 and cols == 0:
        cols = min(n, max(2, math.isqrt(n)))
        rows = math.ceil(n / cols)
    elif rows == 0:
        rows = math.ceil(n / cols)
    elif cols == 0:
        cols = math.ceil(n / rows)
    return rows, cols


def parse_color(text: str) -> tuple[int, int, int]:
    """'#rrggbb', '#rgb', 'r,g,b' or a CSS colour name -> (r, g, b)."""
    t = (text or "").strip()
    m = re.fullmatch(r"\(?\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*\)?", t)
    if m:
        rgb = tuple(int(v) for v in m.groups())
        if all(0 <= v <= 255 for v in rgb):
            return rgb  # type: ignore[return-value]
    try:
        c = ImageColor.getrgb(t)
        return tuple(c[:3])  # type: ignore[return-value]
    except (ValueError, AttributeError):
        raise AtelierError(f"'{text}' is not a colour.", input="background",
                           expected="#rrggbb, #rgb, 'r,g,b' or a colour name such as white",
                           fix="write e.g. #ffffff or 32,32,32.") from None


def _default_font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: scalable bundled font (Latin)
    except TypeError:
        return ImageFont.load_default()


def caption_font(captions: Sequence[str], size: int, *, font: str | None = "auto",
                 font_dirs: Sequence[str | os.PathLike] | None = None):
    """The font the captions are drawn with: one that has every character of all of them.

    `font` 'auto' (or None/''): plain ASCII captions use Pillow's bundled font; anything else
    (CJK, accents) the first preferred font in `font_dirs` + the system font folders that covers it
    (``glyph.choose_font``: CJK text prefers Noto Sans CJK and the like). A named font is checked for
    every character. Raises AtelierError (input 'captions' or 'font') naming the missing characters."""
    text = "".join(captions)
    auto = not font or font.strip().lower() == "auto"
    if auto and text.isascii():
        return _default_font(size)
    dirs = glyph.font_dirs(font_dirs)
    path, index = glyph.choose_font(font if not auto else "auto", text, dirs,
                                    input="captions" if auto else "font")
    return glyph.load_font(path, index, size)


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """`text` if it fits in `width` pixels, else its longest prefix that fits with "…" after it
    ("" when not even one character does). A binary search over the prefix length: about
    log2(len) measurements of at most len characters, O(n log n), where dropping one character at
    a time measured n prefixes (O(n^2)); same result, since a longer prefix is never narrower."""
    # every drawn character is at least a pixel wide, so no more than `width` of them can fit: measuring
    # only that prefix keeps a 1,000,000-character caption (PIL refuses such strings) as cheap as a short one
    cut = text[:max(0, width) + 1]
    if cut == text and draw.textlength(text, font=font) <= width:
        return text
    text = cut
    lo, hi = 0, len(text) + 1  # text[:lo] + "…" fits (lo = 0 stands for ""), text[:hi] + "…" does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if draw.textlength(text[:mid] + "…", font=font) <= width:
            lo = mid
        else:
            hi = mid
    return text[:lo] + "…" if lo else ""


def _frames(images) -> list[torch.Tensor]:
    """IMAGE [B,H,W,C] / [H,W,C] / gray [B,H,W], or a list of those -> list of [H,W,C] float CPU tensors."""
    items = images if isinstance(images, (list, tuple)) else [images]
    frames = []
    for t in items:
        t = image_batch(torch.as_tensor(t), input="images")
        frames.extend(t[i] for i in range(t.shape[0]))
    return frames


def make_grid(images, *, rows: int = 0, cols: int = 0, gap: int = 8,
              background: str | Sequence[int] = "#ffffff", captions: Sequence[str] | None = None,
              font_size: int = 18, text_color: str | Sequence[int] | None = None, font: str | None = "auto",
              font_dirs: Sequence[str | os.PathLike] | None = None) -> torch.Tensor:
    """images [B,H,W,C] float 0..1, or a list of batches of mixed sizes -> one grid image [1, GH, GW, 3].

    Cells are as large as the largest image; smaller images are centred on the background.

    captions: one per cell (missing / empty ones leave the strip blank); when any caption is given
    every cell gets a strip of height round(font_size * 1.5) below it, drawn with ``caption_font``
    (`font`, looked up in `font_dirs` and the system font folders).
    """
    frames = _frames(images)
    n = len(frames)
    h = max(int(f.shape[0]) for f in frames) if frames else 0
    w = max(int(f.shape[1]) for f in frames) if frames else 0
    asked = (rows, cols)
    rows, cols = auto_layout(n, rows, cols)
    if rows * cols < n:
        raise AtelierError(f"a {rows}x{cols} grid has {rows * cols} cells but the batch has {n} images.",
                           input="rows", expected=f"rows x cols >= {n}",
                           fix="raise rows or cols, or set one of them to 0 to let the grid choose.")
    if gap < 0:
        raise AtelierError(f"gap={gap}.", input="gap", expected="gap >= 0")
    bg = parse_color(background) if isinstance(background, str) else tuple(int(v) for v in background)[:3]
    if text_color is None:
        lum = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2]
        fg = (0, 0, 0) if lum > 127 else (255, 255, 255)
    else:
        fg = parse_color(text_color) if isinstance(text_color, str) else tuple(int(v) for v in text_color)[:3]
    caps = [str(s) if s is not None else "" for s in (captions or [])]
    cap_h = int(round(font_size * 1.5)) if any(s.strip() for s in caps) else 0
    gh = gap + rows * (h + cap_h + gap)
    gw = gap + cols * (w + gap)
    # the grid is allocated from rows, cols, cell size, gap and caption strip: check it first (256 x 256
    # cells of 512 px would ask for 61 GiB)
    check_size(gh, gw, channels=3, input="images" if asked == (0, 0) else ("rows" if rows >= cols else "cols"),
               what=f"the {rows} x {cols} grid of {w} x {h} px cells (gap {gap}, caption strip {cap_h} px)",
               fix="use fewer rows/cols (0 = automatic: just enough for the images), smaller images, a smaller "
                   "gap or font size, or several grids.")
    arr = np.empty((gh, gw, 3), dtype=np.uint8)
    arr[:] = np.array(bg, dtype=np.uint8)
    # keep full float precision for cells: paste floats, build the caption layer in 8 bit
    out = torch.from_numpy(arr.astype(np.float32) / 255.0)
    for i, cell in enumerate(frames):
        r, cc = divmod(i, cols)
        y, x = gap + r * (h + cap_h + gap), gap + cc * (w + gap)
        if cell.shape[-1] != 3:
            cell = to_rgb(cell[None])[0]  # gray expanded, alpha laid on white (the page), full precision
        fh, fw = int(cell.shape[0]), int(cell.shape[1])
        oy, ox = (h - fh) // 2, (w - fw) // 2  # smaller images are centred in their cell
        out[y + oy:y + oy + fh, x + ox:x + ox + fw] = cell.clamp(0, 1)
    if cap_h:
        layer = Image.new("RGB", (gw, gh), bg)
        draw = ImageDraw.Draw(layer)
        pil_font = caption_font([c.strip() for c in caps[:n]], font_size, font=font, font_dirs=font_dirs)
        mask = np.zeros((gh, gw), dtype=bool)
        for i in range(min(n, len(caps))):
            text = caps[i].strip()
            if not text:
                continue
            r, cc = divmod(i, cols)
            y, x = gap + r * (h + cap_h + gap) + h, gap + cc * (w + gap)
            text = _fit_text(draw, text, pil_font, w - 4)
            tw = draw.textlength(text, font=pil_font)
            draw.text((x + (w - tw) / 2, y + cap_h / 2), text, fill=fg, font=pil_font, anchor="lm")
            mask[y:y + cap_h, x:x + w] = True
        cap = torch.from_numpy(np.asarray(layer).astype(np.float32) / 255.0)
        m = torch.from_numpy(mask)
        out[m] = cap[m]
    return out[None]


def cell_boxes(n: int, h: int, w: int, *, rows: int = 0, cols: int = 0, gap: int = 8,
               caption_h: int = 0) -> list[tuple[int, int, int, int]]:
    """(y, x, h, w) of each image cell in the grid make_grid builds (for tests and overlays)."""
    rows, cols = auto_layout(n, rows, cols)
    return [(gap + (i // cols) * (h + caption_h + gap), gap + (i % cols) * (w + gap), h, w) for i in range(n)]
