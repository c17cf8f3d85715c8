"""Glyph nodes called with ComfyUI types, ComfyUI importable in-process (CPU)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from comfyui_atelier.core import fonts as F
from comfyui_atelier.core.errors import AtelierError
from tests.fixtures import checks as CK


@pytest.fixture(scope="module")
def N(comfy):
    from comfyui_atelier.nodes import glyph
    return glyph


@pytest.fixture(scope="module")
def fonts_folder(comfy, N):
    """A font copied into the `fonts` model folder under a name no system font has."""
    folder = Path(N.font_folder_paths()[0])
    folder.mkdir(parents=True, exist_ok=True)
    src = next(p for p in F.list_fonts(F.system_font_dirs()).values() if Path(p).name == "DejaVuSans.ttf")
    dst = folder / "AtelierTestSans.ttf"
    shutil.copy(src, dst)
    yield folder
    dst.unlink(missing_ok=True)


SPEC = json.dumps([{"text": "Atelier 2024", "box": [40, 40, 520, 120]},
                   {"text": "键盘皮肤", "box": [40, 200, 400, 290]}], ensure_ascii=False)


def test_mappings_follow_conventions(N):
    assert set(N.NODE_CLASS_MAPPINGS) == {"AtelierOCRBoxes", "AtelierTextBoxes", "AtelierGlyphRender",
                                          "AtelierGlyphCompose", "AtelierLayoutCompose", "AtelierTextReadback",
                                          "AtelierTextReadbackFilter", "AtelierTextReadbackGate"}
    for cid, cls in N.NODE_CLASS_MAPPINGS.items():
        assert N.NODE_DISPLAY_NAME_MAPPINGS[cid].startswith("Atelier ")
        assert cls.CATEGORY == "atelier/glyph" and cls.DESCRIPTION
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
        spec = cls.INPUT_TYPES()
        for group in spec.values():
            for name, (typ, *opts) in group.items():
                assert opts and opts[0].get("tooltip"), f"{cid}.{name} has no tooltip"


def test_font_list_uses_the_fonts_model_folder_and_validates(N, fonts_folder):
    choices = N.font_choices()
    assert choices[0] == "auto" and "AtelierTestSans.ttf" in choices
    assert N.AtelierGlyphRender.VALIDATE_INPUTS(font="AtelierTestSans.ttf") is True
    msg = N.AtelierGlyphRender.VALIDATE_INPUTS(font="Missing.ttf")
    assert isinstance(msg, str) and msg.startswith("[Atelier Glyph Render] input 'font': unknown font 'Missing.ttf'")
    assert N.AtelierGlyphCompose.VALIDATE_INPUTS(font="Missing.ttf").startswith("[Atelier Glyph Compose]")
    outside = fonts_folder.parent.parent / "stray.ttf"
    shutil.copy(fonts_folder / "AtelierTestSans.ttf", outside)
    try:
        assert "was not found inside the folders this node lists" in N.AtelierGlyphRender.VALIDATE_INPUTS(font=str(outside))
    finally:
        outside.unlink()
    (glyphs,) = N.AtelierTextBoxes().build("Hello | 10,10,200,60 | AtelierTestSans.ttf", 256, 128)
    img, mask, info = N.AtelierGlyphRender().render(glyphs)
    assert json.loads(info)[0][0]["font"] == "AtelierTestSans.ttf"


def test_text_boxes_then_render(N):
    (glyphs,) = N.AtelierTextBoxes().build(SPEC, 640, 320)
    assert glyphs["width"] == 640 and len(glyphs["items"]) == 1 and len(glyphs["items"][0]) == 2
    json.dumps(glyphs)  # serialisable
    img, mask, info = N.AtelierGlyphRender().render(glyphs)
    assert img.shape == (1, 320, 640, 3) and img.dtype == torch.float32 and mask.shape == (1, 320, 640)
    assert float(img.max()) == 1.0 and float(img[0, 0, 0, 0]) == 0.0
    assert float((img[0, ..., 0] > 0).logical_and(mask[0] == 0).sum()) == 0
    inv, _, _ = N.AtelierGlyphRender().render(glyphs, polarity="black_on_white")
    assert torch.allclose(inv, 1 - img)
    big, bmask, _ = N.AtelierGlyphRender().render(glyphs, width=1280, height=640)  # boxes scale with the canvas
    assert big.shape == (1, 640, 1280, 3) and float(bmask[0, 160, 100]) == 1.0 and float(bmask[0, 160, 1200]) == 0.0


def test_text_box_outside_canvas_is_reported_by_the_editor_node(N):
    with pytest.raises(AtelierError, match=r"\[Atelier Text Boxes\] input 'spec': text box #1 \('Far'\) lies outside"):
        N.AtelierTextBoxes().build('[{"text": "Far", "box": [900, 10, 1000, 60]}]', 512, 512)


def test_ocr_node_batch_rgba_gray_and_round_trip(N):
    (glyphs,) = N.AtelierTextBoxes().build(SPEC, 640, 320)
    img, _, _ = N.AtelierGlyphRender().render(glyphs, fit="stretch")
    rgba = torch.cat([1 - img, torch.ones_like(img[..., :1])], -1)  # black on white, opaque alpha
    batch = torch.cat([img, rgba[..., :3]], 0)
    # 640x320 is under rapidocr's 736 px: as is, it upscales and splits "Atelier 2024" at the space (read at 0.93,
    # below 0.98); padded, the line stays whole. Both behaviours are checked (test_ocr_small_image_as_is_or_padded).
    pad = "pad to 736"
    found, preview, spec = N.AtelierOCRBoxes().detect(batch, small_image=pad)
    assert preview.shape == (2, 320, 640, 3) and len(found["items"]) == 2
    for item in found["items"]:
        assert sorted(b["text"].replace(" ", "") for b in item) == ["Atelier2024", "键盘皮肤"]
        assert all(b["score"] >= 0.98 for b in item)
    found_rgba, _, _ = N.AtelierOCRBoxes().detect(rgba, small_image=pad)
    found_gray, _, _ = N.AtelierOCRBoxes().detect(img[..., :1], small_image=pad)
    assert len(found_rgba["items"][0]) == len(found_gray["items"][0]) == 2
    # the boxes_json output is a spec the text-box editor accepts
    (again,) = N.AtelierTextBoxes().build(spec, 640, 320)
    assert [b["text"] for b in again["items"][0]] == [b["text"] for b in found["items"][0]]


def test_ocr_small_image_as_is_or_padded(N):
    from comfyui_atelier.core import ocr as O
    (glyphs,) = N.AtelierTextBoxes().build(SPEC, 640, 320)
    img, _, _ = N.AtelierGlyphRender().render(glyphs, fit="stretch")
    rgb = (img[0].numpy() * 255).astype("uint8")
    as_is, _, _ = N.AtelierOCRBoxes().detect(img, min_confidence=0.0)
    raw = O.run_ocr(rgb, min_confidence=0.0)  # the default is rapidocr's own result on the same pixels
    assert [b["text"] for b in as_is["items"][0]] == raw.texts and len(raw) >= 2
    padded, _, _ = N.AtelierOCRBoxes().detect(img, min_confidence=0.0, small_image="pad to 736")
    assert [b["text"] for b in padded["items"][0]] == O.run_ocr(rgb, min_confidence=0.0, pad_small=True).texts


def test_ocr_node_paddle_missing_names_extra(N):
    import importlib.util
    if importlib.util.find_spec("paddleocr") is not None:
        pytest.skip("paddleocr is installed here")
    with pytest.raises(AtelierError, match=r'pip install "comfyui-atelier\[paddle\]"'):
        N.AtelierOCRBoxes().detect(torch.zeros(1, 64, 64, 3), backend="paddleocr")


def _edges(h: int, w: int, b: int = 1) -> torch.Tensor:
    bg = torch.zeros(b, h, w, 3)
    bg[:, ::40, :, :] = 1.0  # horizontal edge lines everywhere, also through the text boxes
    return bg


def test_compose_draws_glyphs_on_edges_and_clears_under_text(N):
    (glyphs,) = N.AtelierTextBoxes().build(SPEC, 640, 320)
    out, mask = N.AtelierGlyphCompose().compose(_edges(320, 640), glyphs)
    assert out.shape == (1, 320, 640, 3) and mask.shape == (1, 320, 640)
    assert float(out[0, 0, 600, 0]) == 1.0  # edge kept outside the text
    assert float(out[0, 240, 300, 0]) == 0.0 or float(mask[0, 240, 300]) == 0  # edge line cleared under text
    found, _, _ = N.AtelierOCRBoxes().detect(out, min_confidence=0.9, small_image="pad to 736")
    assert {b["text"].replace(" ", "") for b in found["items"][0]} >= {"Atelier2024", "键盘皮肤"}
    # batch: 3 backgrounds share one glyph set; glyphs sized for another canvas are scaled
    out3, mask3 = N.AtelierGlyphCompose().compose(_edges(640, 1280, 3), glyphs)
    assert out3.shape == (3, 640, 1280, 3) and torch.equal(mask3[0], mask3[2])
    assert float(mask3[0, 160, 100]) == 1.0


def test_compose_follows_pad_info(N):
    (glyphs,) = N.AtelierTextBoxes().build(SPEC, 640, 320)
    pad = {"orig_h": 320, "orig_w": 640, "scaled_h": 256, "scaled_w": 512, "top": 128, "bottom": 128,
           "left": 0, "right": 0}
    out, mask = N.AtelierGlyphCompose().compose(_edges(512, 512), glyphs, pad_info=pad)
    ys = torch.nonzero(mask[0].any(1)).flatten()
    assert int(ys.min()) >= 128 + 40 * 256 // 320 - 1 and int(ys.max()) <= 128 + 290 * 256 // 320 + 1
    with pytest.raises(AtelierError, match="pad_info describes a 512x512 image but the background is 640x320"):
        N.AtelierGlyphCompose().compose(_edges(320, 640), glyphs, pad_info=pad)


def test_compose_batch_mismatch_and_bad_glyphs(N):
    (glyphs,) = N.AtelierTextBoxes().build(SPEC, 640, 320)
    two = dict(glyphs, items=glyphs["items"] * 2)
    with pytest.raises(AtelierError, match="batch sizes do not match"):
        N.AtelierGlyphCompose().compose(_edges(320, 640, 3), two)
    with pytest.raises(AtelierError, match="not an ATELIER_GLYPHS value"):
        N.AtelierGlyphRender().render({"boxes": []})


def test_layout_compose_with_key_image_and_labels(N):
    key = torch.zeros(1, 32, 32, 4)
    key[..., 1] = 1.0
    key[..., 3] = 1.0
    img, mask, labels = N.AtelierLayoutCompose().compose("qwerty_26", width=1080, height=720, key=key)
    assert img.shape == (1, 720, 1080, 3) and mask.shape == (1, 720, 1080)
    texts = [b["text"] for b in labels["items"][0]]
    assert "Q" in texts and "Enter" in texts
    out, tmask = N.AtelierGlyphCompose().compose(img, labels)
    assert out.shape == img.shape and float(tmask.sum()) > 0
    img9, _, labels9 = N.AtelierLayoutCompose().compose("t9_9key", width=960, height=640,
                                                         key=torch.rand(1, 16, 16))  # grayscale key image
    assert "空格" in [b["text"] for b in labels9["items"][0]]
    with pytest.raises(AtelierError, match="layout_json is empty"):
        N.AtelierLayoutCompose().compose(N.AtelierLayoutCompose.CUSTOM, layout_json="")
    custom = json.dumps({"canvas": [100, 50], "regions": [{"slot": "key", "rect": [10, 10, 30, 30], "label": "A"}]})
    img_c, _, lab_c = N.AtelierLayoutCompose().compose(N.AtelierLayoutCompose.CUSTOM, layout_json=custom,
                                                       width=200, height=100)
    assert lab_c["items"][0][0]["polygon"][0][0] == pytest.approx(20 + 60 * 0.2)


def test_no_boxes_leave_the_background_unchanged(N):
    (empty,) = N.AtelierTextBoxes().build("", 320, 160)
    assert empty["items"] == [[]]
    bg = _edges(160, 320)
    out, mask = N.AtelierGlyphCompose().compose(bg, empty)
    assert torch.equal(out, bg) and float(mask.sum()) == 0
    img, m, _ = N.AtelierGlyphRender().render(empty)
    assert img.shape == (1, 160, 320, 3) and float(img.sum()) == 0


def test_direction_override_draws_vertically(N):
    (glyphs,) = N.AtelierTextBoxes().build('[{"text": "竖排", "box": [100, 10, 180, 300], "direction": "horizontal"}]',
                                           320, 320)
    _, _, info_box = N.AtelierGlyphRender().render(glyphs)
    _, _, info_override = N.AtelierGlyphRender().render(glyphs, direction="vertical")
    assert json.loads(info_box)[0][0]["direction"] == "horizontal"
    assert json.loads(info_override)[0][0]["direction"] == "vertical"


def test_ocr_and_compose_of_an_image_equal_those_of_its_saved_png(N, tmp_path, monkeypatch):
    (glyphs,) = N.AtelierTextBoxes().build(SPEC, 640, 320)
    img, _, _ = N.AtelierGlyphRender().render(glyphs, fit="stretch")
    ramp = torch.linspace(0.13, 0.71, 640).expand(1, 320, 640)[..., None]
    soft = (1 - img) * (0.6 + 0.4 * ramp) + 0.001  # dark text on a shaded ground, off the uint8 grid
    png = CK.saved_png(soft, tmp_path, monkeypatch)
    a, _, spec_a = N.AtelierOCRBoxes().detect(soft, min_confidence=0.5)
    b, _, spec_b = N.AtelierOCRBoxes().detect(png, min_confidence=0.5)
    assert a == b and spec_a == spec_b
    texts = [x["text"] for x in a["items"][0]]  # as is, rapidocr splits the Latin line of this 640x320 image
    assert "键盘皮肤" in texts and "2024" in "".join(texts) and len(texts) >= 2
    out_a, mask_a = N.AtelierGlyphCompose().compose(soft, glyphs, polarity="black_on_white")
    out_b, mask_b = N.AtelierGlyphCompose().compose(png, glyphs, polarity="black_on_white")
    assert torch.equal(out_a, out_b) and torch.equal(mask_a, mask_b)


# ------------------------------------------------------------------- size budget, NaN/inf, bad fonts

def test_glyph_canvases_are_budgeted_before_allocating(N, monkeypatch):
    (glyphs,) = N.AtelierTextBoxes().build(SPEC, 640, 320)
    api = dict(glyphs, width=200_000, height=100_000)  # a canvas sent through the API: 20 gigapixels
    CK.refused(lambda: N.AtelierGlyphRender().render(api), "Atelier Glyph Render", "glyphs", "200,000 x 100,000 px",
             "megapixels", "ATELIER_MAX_MEGAPIXELS")
    monkeypatch.setenv("ATELIER_MAX_MEGAPIXELS", "0.1")  # 100,000 px
    CK.refused(lambda: N.AtelierGlyphRender().render(glyphs, width=640, height=320), "Atelier Glyph Render", "width",
             "640 x 320 px")
    CK.refused(lambda: N.AtelierGlyphCompose().compose(_edges(320, 640), glyphs), "Atelier Glyph Compose",
             "background", "640 x 320 px")
    CK.refused(lambda: N.AtelierTextBoxes().build(SPEC, 640, 320), "Atelier Text Boxes", "width", "640 x 320 px")
    CK.refused(lambda: N.AtelierLayoutCompose().compose("qwerty_26", width=1216, height=832), "Atelier Layout Compose",
             "width", "1,216 x 832 px")
    assert N.AtelierGlyphRender().render(glyphs, width=320, height=160)[0].shape == (1, 160, 320, 3)
    monkeypatch.delenv("ATELIER_MAX_MEGAPIXELS")
    monkeypatch.setenv("ATELIER_MAX_GIB", "0.01")  # ~10 MiB: one 640 x 320 IMAGE + MASK is 3.1 MiB
    many = dict(glyphs, items=glyphs["items"] * 4)  # four glyph sets on one background: four outputs
    CK.refused(lambda: N.AtelierGlyphCompose().compose(_edges(320, 640), many), "Atelier Glyph Compose", "glyphs",
             "Split the batch")


def test_a_text_tile_too_large_to_rasterise_is_refused_first(N):
    spec = json.dumps([{"text": "W" * 3000, "box": [0, 0, 8000, 4000]}])
    (glyphs,) = N.AtelierTextBoxes().build(spec, 8192, 4096)
    msg = CK.refused(lambda: N.AtelierGlyphRender().render(glyphs, fit="stretch"),
                   "Atelier Glyph Render", "glyphs", "text box #1", "the text tile", "megapixels")
    assert "shorter text" in msg


@pytest.mark.parametrize("change,input,words", [
    (dict(width=float("nan")), "glyphs", ["canvas width is nan"]),
    (dict(height=float("inf")), "glyphs", ["canvas height is inf"]),
    (dict(box={"polygon": [[float("nan"), 0], [10, 0], [10, 10], [0, 10]]}), "glyphs",
     ["corner coordinates of box #1 of image #1", "NaN"]),
    (dict(box={"size": float("inf")}), "glyphs", ["box #1 of image #1 has font size inf"]),
    (dict(padding=float("nan")), "padding", ["NaN"]),
])
def test_glyph_floats_from_the_api_must_be_finite(N, change, input, words):
    (glyphs,) = N.AtelierTextBoxes().build(SPEC, 640, 320)
    g = json.loads(json.dumps(glyphs))
    kw = {}
    for k, v in change.items():
        if k == "box":
            g["items"][0][0].update(v)
        elif k == "padding":
            kw["padding"] = v
        else:
            g[k] = v
    for node, call in (("Atelier Glyph Render", lambda: N.AtelierGlyphRender().render(g, **kw)),
                       ("Atelier Glyph Compose", lambda: N.AtelierGlyphCompose().compose(_edges(320, 640), g, **kw))):
        CK.refused(call, node, input, *words)


def test_text_box_and_layout_json_refuse_nan_and_infinity(N):
    CK.refused(lambda: N.AtelierTextBoxes().build('[{"text": "A", "box": [NaN, 0, 60, 60]}]', 256, 256),
             "Atelier Text Boxes", "spec", "not 4 finite points")
    CK.refused(lambda: N.AtelierTextBoxes().build('[{"text": "A", "box": [0, 0, 60, 60], "size": Infinity}]', 256, 256),
             "Atelier Text Boxes", "spec", "size 'inf' is not a usable number")
    CK.refused(lambda: N.AtelierOCRBoxes().detect(torch.zeros(1, 32, 32, 3), min_confidence=float("nan")),
             "Atelier OCR Boxes", "min_confidence", "NaN")
    base = {"canvas": [400, 200], "regions": [{"slot": "key", "rect": [10, 10, 100, 100], "label": "Q"}]}
    for change, words in ((dict(canvas=[float("inf"), 200]), "canvas"),
                          (dict(regions=[{"slot": "key", "rect": [10, float("nan"), 100, 100]}]), "bad rect"),
                          (dict(regions=[{"slot": "key", "rect": [10, 10, 100, 100], "label": "Q", "size": 1e999}]),
                           "label size inf"),
                          (dict(radius=float("nan")), "layout radius is nan")):
        lay = json.dumps(dict(base, **change))
        CK.refused(lambda: N.AtelierLayoutCompose().compose(N.AtelierLayoutCompose.CUSTOM, lay, 400, 200),
                 "Atelier Layout Compose", "layout_json", words)
    assert N.AtelierLayoutCompose().compose(N.AtelierLayoutCompose.CUSTOM, json.dumps(base), 400, 200)[0].shape == (
        1, 200, 400, 3)


@pytest.fixture
def broken_font(fonts_folder):
    """A truncated copy of a real font in the fonts model folder (what a failed download leaves)."""
    p = fonts_folder / "AtelierBroken.ttf"
    p.write_bytes((fonts_folder / "AtelierTestSans.ttf").read_bytes()[:3000])
    yield p
    p.unlink(missing_ok=True)


def test_a_damaged_font_or_a_missing_face_is_an_error_naming_node_input_and_file(N, broken_font):
    (glyphs,) = N.AtelierTextBoxes().build(SPEC.replace("键盘皮肤", "Skin"), 640, 320)
    msg = CK.refused(lambda: N.AtelierGlyphRender().render(glyphs, font="AtelierBroken.ttf"), "Atelier Glyph Render",
                   "font", "font file 'AtelierBroken.ttf'", str(broken_font), "cannot be opened as a font",
                   "good copy")
    assert "OSError" in msg  # the cause is shown, not raised bare
    CK.refused(lambda: N.AtelierGlyphCompose().compose(_edges(320, 640), glyphs, font="AtelierTestSans.ttf#3"),
             "Atelier Glyph Compose", "font", "'AtelierTestSans.ttf'", "has 1 face", "face #3 does not exist",
             "'AtelierTestSans.ttf#0'")
    # a box that names its own bad font: the glyphs input is named
    (own,) = N.AtelierTextBoxes().build("Hello | 10,10,200,60 | AtelierTestSans.ttf#2", 256, 128)
    CK.refused(lambda: N.AtelierGlyphRender().render(own), "Atelier Glyph Render", "glyphs", "face #2 does not exist")
    # and the queue-time check says so before the run
    for bad in ("AtelierBroken.ttf", "AtelierTestSans.ttf#3"):
        v = N.AtelierGlyphRender.VALIDATE_INPUTS(font=bad)
        assert isinstance(v, str) and ("cannot be opened" in v or "does not exist" in v), v
    # 'auto' skips a damaged font instead of failing
    assert N.AtelierGlyphRender().render(glyphs)[0].shape == (1, 320, 640, 3)
