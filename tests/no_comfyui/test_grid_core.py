"""Core tests of the image grid (core/grid.py): automatic layout, placement, captions in any script."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from comfyui_atelier.core import glyph
from comfyui_atelier.core.errors import AtelierError
from comfyui_atelier.core.grid import AUTO_LAYOUT_RULE, auto_layout, caption_font, cell_boxes, make_grid, parse_color

STORY_CAPTION = "小狐狸找到了灯笼"


def _solid(colors, h, w):
    return torch.stack([torch.tensor(c, dtype=torch.float32).expand(h, w, 3) for c in colors])


COLORS = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1), (0.5, 0.5, 0.5), (0, 0, 0)]


def _font_path(name: str) -> Path:
    """An installed font by file name (the system font folders the glyph helpers search)."""
    table = glyph.list_fonts(glyph.font_dirs())
    assert name in table, f"{name} is not installed (fonts found: {sorted(table)[:10]}...)"
    return Path(table[name])


# --------------------------------------------------------------------------- layout

def test_auto_layout_follows_the_story_seed_for_eight():
    # the story seed concatenated images[0:2], [2:4], [4:6], [6:8] as rows: 4 rows x 2 columns
    assert auto_layout(8) == (4, 2)
    expected = {1: (1, 1), 2: (1, 2), 3: (2, 2), 4: (2, 2), 5: (3, 2), 6: (3, 2), 7: (4, 2), 8: (4, 2),
                9: (3, 3), 10: (4, 3), 12: (4, 3), 13: (5, 3), 16: (4, 4), 20: (5, 4), 25: (5, 5)}
    for n, rc in expected.items():
        assert auto_layout(n) == rc, n
    for n in range(1, 101):
        rows, cols = auto_layout(n)
        assert rows * cols >= n and (rows - 1) * cols < n, n  # no empty row
        assert cols == min(n, max(2, math.isqrt(n))) and rows >= cols or n == 2, n  # never wider than tall
    # one side fixed: the other follows
    assert auto_layout(8, rows=2) == (2, 4) and auto_layout(8, cols=3) == (3, 3) and auto_layout(8, cols=4) == (2, 4)
    assert "8 images -> 4 rows x 2" in AUTO_LAYOUT_RULE
    with pytest.raises(AtelierError, match="no images"):
        auto_layout(0)
    with pytest.raises(AtelierError, match="rows and cols >= 0"):
        auto_layout(4, rows=-1)


def test_grid_of_eight_is_four_rows_of_two_like_the_story_seed():
    h, w, gap = 20, 30, 4
    imgs = _solid(COLORS, h, w)
    g = make_grid(imgs, gap=gap, background="#808080")
    assert g.shape == (1, gap + 4 * (h + gap), gap + 2 * (w + gap), 3)
    for i, (y, x, ch, cw) in enumerate(cell_boxes(8, h, w, gap=gap)):
        assert (i // 2, i % 2) == ((y - gap) // (h + gap), (x - gap) // (w + gap))  # row by row, two a row
        cell = g[0, y:y + ch, x:x + cw]
        assert torch.allclose(cell, torch.tensor(COLORS[i], dtype=torch.float32).expand_as(cell))
    # the seed's layout without gaps: rows = images[0:2], [2:4], [4:6], [6:8] concatenated side by side
    seed = torch.cat([torch.cat(list(imgs[k:k + 2]), dim=1) for k in range(0, 8, 2)], dim=0)
    assert torch.equal(make_grid(imgs, gap=0)[0], seed)
    bg = torch.tensor([128 / 255] * 3)
    assert torch.allclose(g[0, :gap], bg.expand_as(g[0, :gap]))           # top border
    assert torch.allclose(g[0, :, gap + w:2 * gap + w], bg.expand_as(g[0, :, gap + w:2 * gap + w]))  # column gap


def test_grid_explicit_layout_captions_and_errors():
    imgs = _solid(COLORS, 16, 16)
    g = make_grid(imgs, rows=2, cols=4, gap=2, background="0,0,0", captions=["a", "b", "c"], font_size=10)
    cap_h = 15
    assert g.shape == (1, 2 + 2 * (16 + cap_h + 2), 2 + 4 * (16 + 2), 3)
    boxes = cell_boxes(8, 16, 16, rows=2, cols=4, gap=2, caption_h=cap_h)
    y, x, _, _ = boxes[0]
    strip = g[0, y + 16:y + 16 + cap_h, x:x + 16]
    assert strip.max() > 0.5  # white text on black
    y, x, _, _ = boxes[5]
    assert g[0, y + 16:y + 16 + cap_h, x:x + 16].max() == 0  # no caption for cell 5
    assert torch.allclose(g[0, boxes[7][0]:boxes[7][0] + 16, boxes[7][1]:boxes[7][1] + 16], torch.zeros(16, 16, 3))
    with pytest.raises(AtelierError, match="has 4 cells but the batch has 8"):
        make_grid(imgs, rows=2, cols=2)
    with pytest.raises(AtelierError, match="not a colour"):
        parse_color("#12")
    assert parse_color("white") == (255, 255, 255) and parse_color("#102030") == (16, 32, 48)


def test_grid_mixed_sizes_are_centred():
    a = _solid([(1, 0, 0)], 10, 10)
    b = _solid([(0, 0, 1)], 20, 30)
    g = make_grid([a, b], gap=0, background="white")
    assert g.shape == (1, 20, 60, 3)  # two images: one row of two
    assert torch.allclose(g[0, 5:15, 10:20], torch.tensor([1.0, 0, 0]).expand(10, 10, 3))
    assert torch.allclose(g[0, 0:5, 0:30], torch.ones(5, 30, 3))
    assert torch.allclose(g[0, :, 30:], torch.tensor([0, 0, 1.0]).expand(20, 30, 3))


# --------------------------------------------------------------------------- CJK captions

def _strip(g, box, h, cap_h):
    y, x, _, w = box
    return (g[0, y + h:y + h + cap_h, x:x + w].numpy() * 255).round().astype(np.uint8)


def _tofu_reference(text: str, size: int, latin: Path) -> np.ndarray:
    """What a Latin-only font draws for `text`: one .notdef box per character."""
    font = ImageFont.truetype(str(latin), size)
    im = Image.new("L", (size * (len(text) + 2), size * 2), 0)
    ImageDraw.Draw(im).text((size, size), text, fill=255, font=font, anchor="lm")
    return np.asarray(im)


def test_cjk_captions_are_drawn_with_a_font_that_has_every_character():
    dejavu = _font_path("DejaVuSans.ttf")
    cjk = _font_path("NotoSansCJK-Regular.ttc")
    # the check itself can fail: DejaVu has none of these characters (it would draw .notdef boxes)
    assert glyph.missing_glyphs(str(dejavu), 0, STORY_CAPTION) == list(STORY_CAPTION)
    assert glyph.missing_glyphs(str(cjk), 0, STORY_CAPTION) == []

    font = caption_font([STORY_CAPTION, "page 2"], 24)
    assert glyph.missing_glyphs(font.path, getattr(font, "index", 0), STORY_CAPTION + "page 2") == []
    assert "cjk" in Path(font.path).name.lower()

    h, w, size = 24, 260, 24
    imgs = torch.ones(8, h, w, 3)
    caps = [STORY_CAPTION, "", "The fox found the lantern"] + [""] * 5
    g = make_grid(imgs, gap=4, background="#ffffff", captions=caps, font_size=size)
    cap_h = round(size * 1.5)
    rows, cols = auto_layout(8)
    assert (rows, cols) == (4, 2) and g.shape == (1, 4 + rows * (h + cap_h + 4), 4 + cols * (w + 4), 3)
    boxes = cell_boxes(8, h, w, gap=4, caption_h=cap_h)
    strip = _strip(g, boxes[0], h, cap_h)
    ink = strip.min(axis=2) < 128
    assert ink.sum() > 150, ink.sum()  # dark text on white
    assert (_strip(g, boxes[1], h, cap_h) == 255).all()  # empty caption: blank strip
    # every character rendered: one ink blob per character column band, not truncated
    cols_with_ink = np.flatnonzero(ink.any(axis=0))
    assert cols_with_ink[-1] - cols_with_ink[0] > size * (len(STORY_CAPTION) - 1)

    # not tofu: the ink is the CJK font's glyphs, not DejaVu's .notdef boxes for the same text
    ours = Image.new("L", (size * (len(STORY_CAPTION) + 2), size * 2), 0)
    ImageDraw.Draw(ours).text((size, size), STORY_CAPTION, fill=255, font=ImageFont.truetype(str(cjk), size),
                              anchor="lm")
    ours, tofu = np.asarray(ours) > 127, _tofu_reference(STORY_CAPTION, size, dejavu) > 127
    assert (ours != tofu).mean() > 0.02
    glyph_ink = ours.sum()
    # the caption strip carries as much ink as the CJK rendering (a box outline per char would differ)
    assert abs(int(ink.sum()) - int(glyph_ink)) < 0.1 * glyph_ink, (ink.sum(), glyph_ink)  # tofu: about half


def test_caption_font_choices_and_errors(tmp_path):
    # plain ASCII keeps Pillow's bundled font (no font scan)
    assert caption_font(["6.25", "7.10"], 18).getname() == ImageFont.load_default(size=18).getname()
    # a named Latin-only font for CJK text is refused, naming the characters and a font that has them
    with pytest.raises(AtelierError) as ei:
        caption_font([STORY_CAPTION], 18, font="DejaVuSans.ttf")
    msg = str(ei.value)
    assert "'狐' (U+72D0)" in msg and "NotoSansCJK" in msg and "font" in msg
    with pytest.raises(AtelierError, match="has no glyph"):
        make_grid(torch.ones(1, 8, 8, 3), captions=[STORY_CAPTION], font="DejaVuSans.ttf")
    # a folder of its own fonts is searched first (here: a copy of the CJK font under another name)
    own = tmp_path / "fonts"
    own.mkdir()
    (own / "MyStoryFont.ttc").symlink_to(_font_path("NotoSansCJK-Regular.ttc"))
    f = caption_font([STORY_CAPTION], 18, font="MyStoryFont", font_dirs=[own])
    assert Path(f.path).name == "MyStoryFont.ttc"


def test_grid_size_is_checked_before_anything_is_allocated(monkeypatch):
    """rows = cols = 256 with 512 px cells would ask for a 133,128 px square grid (198 GiB in float32):
    refused from rows, cols, cell size, gap and caption strip, before the grid array exists."""
    import comfyui_atelier.core.grid as G

    def no_alloc(*a, **k):
        raise AssertionError("the grid was allocated before the size check")
    monkeypatch.setattr(G.np, "empty", no_alloc)
    one = torch.zeros(1, 512, 512, 3)
    with pytest.raises(AtelierError) as e:
        make_grid(one, rows=256, cols=256)
    msg = str(e.value)
    assert "input 'rows'" in msg and "256 x 256 grid of 512 x 512 px cells" in msg
    assert "133,128 x 133,128 px" in msg and "fewer rows/cols" in msg
    with pytest.raises(AtelierError, match=r"input 'cols'.*1 x 256 grid.*caption strip 27 px"):
        make_grid(one, rows=1, cols=256, captions=["a"], font_size=18)
    monkeypatch.setenv("ATELIER_MAX_MEGAPIXELS", "1")  # automatic layout: the images themselves are too big
    with pytest.raises(AtelierError, match=r"input 'images'.*2 x 2 grid"):
        make_grid(torch.zeros(4, 600, 600, 3))
    monkeypatch.undo()
    grid = make_grid(torch.rand(2, 16, 16, 4), gap=2)  # an ordinary grid still works (alpha laid on white)
    assert grid.shape == (1, 20, 38, 3)
