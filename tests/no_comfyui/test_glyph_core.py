"""Glyph renderer, font lookup, missing-glyph detection, box specs and the layout composer (no ComfyUI)."""
from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

import numpy as np
import pytest

from comfyui_atelier.core import fonts as F
from comfyui_atelier.core import glyph as G
from comfyui_atelier.core import layout as L
from comfyui_atelier.core.errors import AtelierError

CJK_TEXT = "键盘皮肤"


@pytest.fixture(scope="module")
def dirs():
    return F.font_dirs()


@pytest.fixture(scope="module")
def latin_font(dirs):
    """A font without CJK glyphs (DejaVu Sans ships with most Linux images)."""
    for path in F.list_fonts(dirs).values():
        if Path(path).name == "DejaVuSans.ttf":
            return path
    pytest.fail("DejaVuSans.ttf not found: install fonts-dejavu-core")


@pytest.fixture(scope="module")
def cjk_font(dirs):
    try:
        path, _ = F.choose_font("auto", CJK_TEXT, dirs)
    except AtelierError:
        pytest.fail("no CJK font installed: apt-get install fonts-noto-cjk (CI installs it)")
    return path


def _ink_outside(glyph: np.ndarray, mask: np.ndarray) -> int:
    return int(((glyph > 0) & (mask == 0)).sum())


# ------------------------------------------------------------------------------------- fonts

def test_resolve_font_by_name_stem_and_face(dirs, latin_font, cjk_font):
    assert F.resolve_font("DejaVuSans.ttf", dirs) == (latin_font, 0)
    assert F.resolve_font("dejavusans", dirs) == (latin_font, 0)
    name = Path(cjk_font).name
    if name.lower().endswith(".ttc"):
        assert F.resolve_font(f"{name}#1", dirs) == (cjk_font, 1)
    assert F.resolve_font(cjk_font, dirs) == (str(Path(cjk_font).resolve()), 0)  # absolute inside a font dir


def test_unknown_font_is_an_actionable_error(dirs):
    with pytest.raises(AtelierError) as e:
        F.resolve_font("NoSuchFont-Regular.ttf", dirs, node="Atelier Glyph Render")
    msg = str(e.value)
    assert "unknown font 'NoSuchFont-Regular.ttf'" in msg and "[Atelier Glyph Render]" in msg
    assert "models/fonts" in msg and "DejaVuSans.ttf" in msg


def test_explicit_path_outside_font_folders_is_refused(tmp_path, latin_font):
    allowed = tmp_path / "fonts"
    allowed.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(latin_font, outside / "Mine.ttf")
    shutil.copy(latin_font, allowed / "Inside.ttf")
    (allowed / "sneaky.ttf").symlink_to(outside / "Mine.ttf")  # link escaping the folder
    only = [allowed]
    assert F.resolve_font(str(allowed / "Inside.ttf"), only)[0] == str((allowed / "Inside.ttf").resolve())
    assert F.resolve_font("Inside", only)[0].endswith("Inside.ttf")
    for bad in (str(outside / "Mine.ttf"), "../elsewhere/Mine.ttf", str(allowed / "sneaky.ttf"), "/etc/passwd"):
        with pytest.raises(AtelierError, match="was not found inside the folders this node lists"):
            F.resolve_font(bad, only)


def test_missing_glyph_detection_has_no_false_positives_or_negatives(latin_font, cjk_font):
    latin1 = "".join(chr(c) for c in range(0x21, 0x7F)) + "".join(chr(c) for c in range(0xC0, 0x100))
    assert F.missing_glyphs(latin_font, 0, latin1) == []
    cjk = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 200))
    assert F.missing_glyphs(latin_font, 0, cjk) == list(cjk)  # DejaVu has no Han characters
    assert F.missing_glyphs(cjk_font, 0, cjk + string.ascii_letters) == []
    assert F.missing_glyphs(latin_font, 0, "A B\tC") == []  # whitespace needs no glyph


def test_font_without_the_needed_glyphs_is_reported_not_drawn_as_boxes(dirs, latin_font, cjk_font):
    boxes = G.parse_text_boxes([{"text": "Key 键", "box": [10, 10, 300, 80]}])
    with pytest.raises(AtelierError) as e:
        G.render_glyphs(boxes, 320, 100, font="DejaVuSans.ttf", dirs=dirs, node="Atelier Glyph Render")
    msg = str(e.value)
    assert "has no glyph for '键' (U+952E)" in msg and "CJK font" in msg
    assert Path(cjk_font).name in msg  # suggests a font that has it


def test_auto_font_picks_a_cjk_font_for_chinese_and_latin_font_for_latin(dirs, cjk_font, latin_font):
    assert F.choose_font("auto", CJK_TEXT, dirs)[0] == cjk_font
    assert F.missing_glyphs(F.choose_font("auto", "Hello", dirs)[0], 0, "Hello") == []


def test_auto_font_with_no_covering_font_says_what_to_install(tmp_path, latin_font):
    d = tmp_path / "fonts"
    d.mkdir()
    shutil.copy(latin_font, d / "OnlyLatin.ttf")
    with pytest.raises(AtelierError, match="fonts-noto-cjk"):
        F.choose_font("auto", CJK_TEXT, [d])


# ------------------------------------------------------------------------------------- specs

def test_parse_json_line_and_polygon_forms():
    js = G.parse_text_boxes('[{"text": "A", "box": [30, 10, 10, 40]}, {"text": "B", "rect": [0, 0, 20, 10], "size": 12},'
                            ' {"text": "C", "polygon": [1, 2, 30, 2, 30, 20, 1, 20], "direction": "vertical"}]')
    assert js[0]["polygon"] == [[10, 10], [30, 10], [30, 40], [10, 40]]
    assert js[1]["polygon"][2] == [20, 10] and js[1]["size"] == 12
    assert js[2]["direction"] == "vertical" and js[2]["polygon"][1] == [30, 2]
    lines = G.parse_text_boxes("# comment\nHello | 10,10,200,60\n你好 | 10,70,120,120 | NotoSansCJK-Regular.ttc | 40\n")
    assert [b["text"] for b in lines] == ["Hello", "你好"]
    assert lines[1]["font"] == "NotoSansCJK-Regular.ttc" and lines[1]["size"] == 40
    assert G.parse_text_boxes({"boxes": [{"text": "x", "box": [0, 0, 9, 9]}]})[0]["text"] == "x"
    assert json.loads(json.dumps(G.make_glyphs([js], 64, 64)))["items"][0][0]["text"] == "A"


@pytest.mark.parametrize("spec, match", [
    ('[{"text": "", "box": [0, 0, 10, 10]}]', "empty text"),
    ('[{"text": "   ", "box": [0, 0, 10, 10]}]', "empty text"),
    ('[{"text": "A"}]', "no 'box', 'rect' or 'polygon'"),
    ('[{"text": "A", "box": [1, 2, 3]}]', "box has 3 numbers"),
    ('[{"text": "A", "box": [0, 0, 10, 10], "direction": "diagonal"}]', "unknown direction"),
    ('[{"text": "A", "box": [0, 0, 10, 10],}]', "not valid JSON"),
    ("Hello without a box", "has no box"),
])
def test_bad_specs_are_actionable_errors(spec, match):
    with pytest.raises(AtelierError, match=match):
        G.parse_text_boxes(spec, node="Atelier Text Boxes", input="spec")


# ------------------------------------------------------------------------------------- rendering

def test_render_shapes_polarity_and_mask(dirs):
    boxes = G.parse_text_boxes([{"text": "Hello", "box": [20, 20, 220, 80]}, {"text": CJK_TEXT, "box": [20, 100, 300, 170]}])
    g, m, info = G.render_glyphs(boxes, 320, 200, dirs=dirs)
    assert g.shape == (200, 320) and g.dtype == np.uint8 and m.shape == (200, 320)
    assert g.max() == 255 and g[0, 0] == 0  # white text on black
    assert _ink_outside(g, m) == 0
    assert m[50, 120] == 1 and m[190, 310] == 0
    assert [i["direction"] for i in info] == ["horizontal", "horizontal"]
    gi, mi, _ = G.render_glyphs(boxes, 320, 200, dirs=dirs, invert=True)
    assert np.array_equal(gi, 255 - g) and np.array_equal(mi, m)  # black on white option


def test_rotated_polygon_renders_inside_its_polygon(dirs):
    c, s = np.cos(np.radians(25)), np.sin(np.radians(25))
    w, h, cx, cy = 300, 70, 256, 256
    corners = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
    poly = [[cx + x * c - y * s, cy + x * s + y * c] for x, y in corners]
    g, m, info = G.render_glyphs(G.parse_text_boxes([{"text": "Rotated", "polygon": poly}]), 512, 512, dirs=dirs)
    assert _ink_outside(g, m) == 0
    ys, xs = np.nonzero(g > 128)
    assert len(xs) > 500
    # the ink is tilted like the box: its principal axis is at about 25 degrees
    cov = np.cov(np.stack([xs, ys]).astype(float))
    ang = np.degrees(0.5 * np.arctan2(2 * cov[0, 1], cov[0, 0] - cov[1, 1]))
    assert abs(ang - 25) < 5


def test_tall_narrow_box_renders_vertical_text_inside_it(dirs):
    box = [100, 20, 160, 380]
    g, m, info = G.render_glyphs(G.parse_text_boxes([{"text": "竖排文字", "box": box}]), 256, 400, dirs=dirs)
    assert info[0]["direction"] == "vertical"
    assert _ink_outside(g, m) == 0
    rows = np.nonzero((g > 128).any(1))[0]
    cols = np.nonzero((g > 128).any(0))[0]
    assert rows.max() - rows.min() > 3 * (cols.max() - cols.min())  # a column of characters
    # four separate characters stacked: four runs of inked rows
    inked = (g > 128).any(1).astype(int)
    assert int((np.diff(inked) == 1).sum()) + inked[0] == 4


def test_text_too_long_for_its_box_is_shrunk_not_clipped(dirs):
    box = [10, 10, 210, 70]
    short = G.render_glyphs(G.parse_text_boxes([{"text": "Hi", "box": box}]), 220, 80, dirs=dirs)
    long_text = "A much longer line of text"
    g, m, info = G.render_glyphs(G.parse_text_boxes([{"text": long_text, "box": box, "size": 200}]), 220, 80, dirs=dirs)
    assert info[0]["size"] < short[2][0]["size"]
    assert _ink_outside(g, m) == 0
    cols = np.nonzero((g > 64).any(0))[0]
    assert cols.min() > 10 and cols.max() < 210  # margin kept on both ends: nothing cut off
    # same ink as the text drawn at that size unclipped
    font = F.load_font(*F.choose_font("auto", long_text, dirs), info[0]["size"])
    l, t, r, b = font.getbbox(long_text)
    assert abs((cols.max() - cols.min() + 1) - (r - l)) <= 2


def test_user_size_is_a_maximum(dirs):
    g, m, info = G.render_glyphs(G.parse_text_boxes([{"text": "Hi", "box": [0, 0, 300, 100], "size": 20}]), 300, 100,
                                 dirs=dirs)
    assert info[0]["size"] == 20


@pytest.mark.parametrize("item, match", [
    ({"text": "Out", "box": [500, 500, 600, 560]}, "outside the 320x200 canvas"),
    ({"text": "Half", "box": [250, 20, 400, 80]}, "outside the 320x200 canvas"),
    ({"text": "Line", "polygon": [[10, 10], [100, 10], [200, 10], [300, 10]]}, "degenerate"),
    ({"text": "Tiny", "box": [10, 10, 12, 12]}, "degenerate"),
    ({"text": "Bow", "polygon": [[10, 10], [100, 60], [100, 10], [10, 60]]}, "degenerate"),
    ({"text": "x" * 400, "box": [0, 0, 60, 20]}, "does not fit"),
])
def test_bad_boxes_are_actionable_errors(dirs, item, match):
    with pytest.raises(AtelierError, match=match):
        G.render_glyphs(G.parse_text_boxes([item]), 320, 200, dirs=dirs, node="Atelier Glyph Render")


def test_reversed_corner_order_is_accepted(dirs):
    cw = G.render_glyphs(G.parse_text_boxes([{"text": "Ok", "polygon": [[10, 10], [110, 10], [110, 60], [10, 60]]}]),
                         128, 80, dirs=dirs)[0]
    ccw = G.render_glyphs(G.parse_text_boxes([{"text": "Ok", "polygon": [[10, 10], [10, 60], [110, 60], [110, 10]]}]),
                          128, 80, dirs=dirs)[0]
    assert np.array_equal(cw, ccw)


def test_compose_clears_under_text_and_overlays():
    bg = np.zeros((50, 50, 3), np.uint8)
    bg[:, 25] = 255  # an edge line crossing the text box
    glyphs = np.zeros((50, 50), np.uint8)
    glyphs[20:30, 10:20] = 255
    mask = np.zeros((50, 50), np.uint8)
    mask[15:35, 5:40] = 1
    out = G.compose_glyphs(bg, glyphs, mask)
    assert out[25, 15].tolist() == [255] * 3 and out[25, 25].tolist() == [0] * 3 and out[5, 25].tolist() == [255] * 3
    kept = G.compose_glyphs(bg, glyphs, mask, clear_under_text=False)
    assert kept[25, 25].tolist() == [255] * 3
    inv = G.compose_glyphs(255 - bg, glyphs, mask, invert=True)
    assert inv[25, 15].tolist() == [0] * 3 and inv[25, 25].tolist() == [255] * 3


# ------------------------------------------------------------------------------------- layout

def test_shipped_layouts_26_and_9_key():
    shipped = L.shipped_layouts()
    assert {"qwerty_26", "t9_9key"} <= set(shipped)
    q = L.load_layout("qwerty_26")
    letters = {r["label"] for r in q["regions"] if r["slot"] == "key" and r["label"] and len(r["label"]) == 1}
    assert set(string.ascii_uppercase) <= letters
    t9 = L.load_layout("t9_9key")
    grid = [r["label"] for r in t9["regions"] if r["slot"] == "key" and r["label"] and r["label"].isalpha()
            and r["label"].isascii()]
    assert grid == ["ABC", "DEF", "GHI", "JKL", "MNO", "PQRS", "TUV", "WXYZ"]


def test_layout_compose_places_elements_and_returns_label_boxes(dirs):
    lay = L.load_layout("qwerty_26")
    key = np.zeros((20, 20, 4), np.uint8)
    key[..., 0] = 255  # opaque red key
    key[:5, :, 3] = 0  # transparent top rows
    key[5:, :, 3] = 255
    img, mask, labels = L.compose_layout(lay, 1080, 720, {"key": key})
    assert img.shape == (720, 1080, 3) and mask.shape == (720, 1080)
    q = next(r for r in lay["regions"] if r["label"] == "Q")
    x, y, w, h = (int(v) for v in q["rect"])
    assert img[y + h - 5, x + w // 2].tolist() == [255, 0, 0]  # opaque part of the key image
    assert img[y + 2, x + w // 2].tolist() == list(lay["colors"]["background"])  # transparent part shows the canvas
    assert mask[y + h - 5, x + w // 2] == 1 and mask[50, 540] == 1  # function bar at the top
    shift = next(r for r in lay["regions"] if r["label"] == "Shift")
    sx, sy, sw, sh = (int(v) for v in shift["rect"])
    assert img[sy + sh // 2, sx + 8].tolist() == list(lay["colors"]["function_key"])  # placeholder key
    assert len(labels) == sum(1 for r in lay["regions"] if r["label"])
    g, m, _ = G.render_glyphs(labels, 1080, 720, dirs=dirs)  # labels render inside their keys
    assert _ink_outside(g, m) == 0 and g[y:y + h, x:x + w].max() == 255
    small, _, small_labels = L.compose_layout(lay, 540, 360)  # scaled canvas
    assert small.shape == (360, 540, 3) and small_labels[0]["polygon"][0][0] == pytest.approx(labels[0]["polygon"][0][0] / 2)


@pytest.mark.parametrize("spec, match", [
    ('{"regions": []}', "canvas"),
    ('{"canvas": [100, 100], "regions": []}', "no regions"),
    ('{"canvas": [100, 100], "regions": [{"slot": "key", "rect": [90, 90, 20, 20]}]}', "outside the 100x100 canvas"),
    ('{"canvas": [100, 100], "regions": [{"rect": [0, 0, 20, 20]}]}', "no slot name"),
    ('{"canvas": [100, 100], "colors": {"key": "blue-ish"}, "regions": [{"slot": "key", "rect": [0, 0, 2, 2]}]}',
     "not a colour"),
    ("not a layout", "neither a shipped layout name nor valid JSON"),
])
def test_bad_layouts_are_actionable_errors(spec, match):
    with pytest.raises(AtelierError, match=match):
        L.load_layout(spec, node="Atelier Layout Compose")


# ----------------------------------------------------------------------------- caching (speed) keeps the output

def _mixed_boxes():
    """Latin and CJK, axis-aligned, rotated (both ways), a tall vertical column, a user size cap, repeats."""
    def rotated(cx, cy, w, h, deg):
        c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
        return [[cx + x * c - y * s, cy + x * s + y * c] for x, y in
                [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]]
    return G.parse_text_boxes([
        {"text": "Enter", "box": [10, 10, 150, 60]},
        {"text": CJK_TEXT, "box": [160, 10, 380, 70]},
        {"text": "Rotated", "polygon": rotated(120, 160, 200, 50, 18)},
        {"text": "键盘", "polygon": rotated(300, 170, 150, 60, -25)},
        {"text": "竖排文字", "box": [420, 10, 470, 300]},
        {"text": "Enter", "box": [10, 320, 150, 370]},  # the same text and box size again elsewhere
        {"text": "Small", "box": [200, 320, 400, 380], "size": 12},
    ])


def test_cached_rendering_is_pixel_identical_and_rasterises_each_box_once(dirs, monkeypatch):
    boxes = _mixed_boxes()
    G.clear_caches()
    calls = []
    real = G._render_tile
    monkeypatch.setattr(G, "_render_tile", lambda *a: calls.append(a[0]) or real(*a))
    cold = G.render_glyphs(boxes, 480, 400, dirs=dirs)
    assert [i["direction"] for i in cold[2]][4] == "vertical"
    assert sorted(calls) == sorted(set(b["text"] for b in boxes)), calls  # the repeated "Enter" box: drawn once
    calls.clear()
    warm = G.render_glyphs(boxes, 480, 400, dirs=dirs)
    assert calls == []  # every tile from the cache
    assert np.array_equal(warm[0], cold[0]) and np.array_equal(warm[1], cold[1]) and warm[2] == cold[2]
    for fit in ("contain", "stretch"):
        warm = G.render_glyphs(boxes, 480, 400, dirs=dirs, fit=fit)
        G.clear_caches()
        again = G.render_glyphs(boxes, 480, 400, dirs=dirs, fit=fit)
        assert np.array_equal(warm[0], again[0]) and np.array_equal(warm[1], again[1]) and warm[2] == again[2]
    assert cold[0].max() == 255 and _ink_outside(cold[0], cold[1]) == 0
    # one box rendered on its own gives the same pixels as inside the batch (nothing leaks between boxes)
    alone = G.render_glyphs(boxes[2:3], 480, 400, dirs=dirs)[0]
    inside = np.where(alone > 0)
    assert np.array_equal(alone[inside], cold[0][inside])


def test_cached_tile_is_read_only_and_follows_the_font_file(tmp_path, dirs):
    regular = next(p for p in F.list_fonts(dirs).values() if Path(p).name == "DejaVuSans.ttf")
    bold = Path(regular).with_name("DejaVuSans-Bold.ttf")
    if not bold.exists():
        pytest.fail("DejaVuSans-Bold.ttf not found: install fonts-dejavu-core")
    font = tmp_path / "Swap.ttf"
    shutil.copyfile(regular, font)
    tile, size = G.render_tile("Swap", str(font), 0, 200, 60)
    assert not tile.flags.writeable
    with pytest.raises(ValueError):
        tile[0, 0] = 1
    assert G.render_tile("Swap", str(font), 0, 200, 60)[0] is tile  # a cache hit
    shutil.copyfile(bold, font)
    import os
    st = os.stat(font)
    os.utime(font, (st.st_atime, st.st_mtime + 10))  # a replaced file: new mtime, new glyphs
    tile2, _ = G.render_tile("Swap", str(font), 0, 200, 60)
    assert tile2 is not tile and (tile2 > 128).sum() > (tile > 128).sum()  # bold has more ink


# ------------------------------------------------------------------- bad fonts, budget, NaN/inf (core)

def test_damaged_font_and_missing_face_are_atelier_errors_naming_the_file(tmp_path, latin_font, cjk_font):
    broken = tmp_path / "Broken.ttf"
    broken.write_bytes(Path(latin_font).read_bytes()[:3000])
    shutil.copy(latin_font, tmp_path / "Good.ttf")
    with pytest.raises(AtelierError) as e:
        F.choose_font("Broken.ttf", "Hi", [tmp_path], node="Atelier Glyph Render")
    msg = str(e.value)
    assert msg.startswith("[Atelier Glyph Render] input 'font': font file 'Broken.ttf'") and str(broken) in msg
    assert "cannot be opened as a font" in msg and "Fix:" in msg
    with pytest.raises(AtelierError, match=r"has 1 face \(numbered 0..0\); face #5 does not exist"):
        F.choose_font("Good.ttf#5", "Hi", [tmp_path], node="N")
    if cjk_font.lower().endswith(".ttc"):
        n = F.face_count(cjk_font)
        assert n and n > 1
        with pytest.raises(AtelierError, match=rf"has {n} faces \(numbered 0..{n - 1}\); face #{n} does not"):
            F.load_font(cjk_font, n, 20, node="N")
    with pytest.raises(AtelierError, match="cannot be opened"):
        F.missing_glyphs(str(broken), 0, "Hi")  # was a bare OSError
    # 'auto' passes over the damaged file and takes a good one
    assert Path(F.choose_font("auto", "Hi", [tmp_path])[0]).name == "Good.ttf"


def test_a_huge_text_tile_is_refused_before_rasterising(latin_font):
    with pytest.raises(AtelierError, match="the text tile for 'WWWW.*megapixels"):
        G.render_tile("W" * 3000, latin_font, 0, 8000, 4000, fit="stretch")


@pytest.mark.parametrize("size", ["Infinity", "NaN", "1e999"])
def test_box_font_size_must_be_a_finite_number(size):
    with pytest.raises(AtelierError, match=r"\[N\] input 'spec': text box #1: size '(inf|nan)' is not a usable"):
        G.parse_text_boxes('[{"text": "A", "box": [0, 0, 50, 50], "size": %s}]' % size, node="N", input="spec")


def test_layout_refuses_nonfinite_numbers():
    ok = {"canvas": [400, 200], "regions": [{"slot": "key", "rect": [10, 10, 100, 100]}]}
    assert L.load_layout(json.dumps(ok))["canvas"] == [400.0, 200.0]
    for bad in ('{"canvas": [Infinity, 200], "regions": [{"slot": "key", "rect": [1, 1, 5, 5]}]}',
                '{"canvas": [400, 200], "regions": [{"slot": "key", "rect": [1, NaN, 5, 5]}]}',
                '{"canvas": [400, 200], "label_inset": NaN, "regions": [{"slot": "key", "rect": [1, 1, 5, 5]}]}'):
        with pytest.raises(AtelierError, match=r"\[N\] input 'layout_json'"):
            L.load_layout(bad, node="N")


def test_font_scan_survives_a_link_loop_and_lists_each_font_once(tmp_path, latin_font):
    root = tmp_path / "fonts"
    (root / "sub").mkdir(parents=True)
    shutil.copy(latin_font, root / "sub" / "LoopSans.ttf")
    (root / "sub" / "back").symlink_to(root, target_is_directory=True)  # fonts/sub/back -> fonts: a loop
    (root / ".hidden").mkdir()
    shutil.copy(latin_font, root / ".hidden" / "Hidden.ttf")
    table = F.list_fonts([root])
    assert table["LoopSans.ttf"] == str(root / "sub" / "LoopSans.ttf") and "sub/LoopSans.ttf" in table
    assert not any("back/" in k for k in table) and "Hidden.ttf" not in table
    assert F.font_names([root]) == ["LoopSans.ttf"]
