"""OCR fidelity: by default core.ocr.run_ocr gives exactly what raw rapidocr gives on the same pixels (no
padding of small images), and OCR of a float IMAGE equals OCR of its Save-Image PNG."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_atelier.core import fonts as F
from comfyui_atelier.core import glyph as G
from comfyui_atelier.core import ocr as O
from comfyui_atelier.core.images import to_uint8

if not O.backend_available("rapidocr"):
    pytest.fail("rapidocr is not installed: pip install rapidocr_onnxruntime onnxruntime (the [ocr] extra)",
                pytrace=False)

DIRS = F.font_dirs()
LINES = ["Shift", "Enter 123", "键盘皮肤", "空格 Space", "Atelier 2024", "你好世界", "Del", "中/英"]
# (width, height): small (under 736 px on a side, where the pack used to pad) and large
SIZES = [(320, 200), (640, 360), (500, 760), (1216, 832), (900, 900), (180, 120)]


def _scene(k: int, w: int, h: int) -> np.ndarray:
    """uint8 RGB [h, w, 3]: two or three text lines in a colour on a tinted background."""
    rng = np.random.default_rng(k)
    n = 2 + k % 2
    boxes = []
    for j in range(n):
        y0 = h * (0.1 + 0.8 * j / n)
        boxes.append({"text": LINES[(k * 3 + j) % len(LINES)],
                      "box": [w * 0.08, y0, w * (0.55 + 0.35 * rng.random()), y0 + h * 0.8 / n * 0.7]})
    glyph, _, _ = G.render_glyphs(G.parse_text_boxes(boxes), w, h, dirs=DIRS, fit="contain")
    a = glyph.astype(np.float32)[..., None] / 255
    ink, paper = rng.integers(0, 90, 3), rng.integers(170, 256, 3)
    if k % 2:
        ink, paper = paper, ink
    return (paper * (1 - a) + ink * a).astype(np.uint8)


def _raw(engine, rgb: np.ndarray, **kwargs) -> tuple[list[str], list[float], np.ndarray]:
    res, _ = engine(np.ascontiguousarray(rgb[..., ::-1]), **kwargs)
    res = [r for r in (res or []) if str(r[1]).strip()]  # our one documented difference: blank texts dropped
    quads = [O._order_quad(r[0]) for r in res]
    return [str(r[1]) for r in res], [float(r[2]) for r in res], np.asarray(quads, np.float32).reshape(-1, 4, 2)


@pytest.fixture(scope="module")
def raw_engine():
    from rapidocr_onnxruntime import RapidOCR
    return RapidOCR()  # an engine of its own: nothing our adapter does to its engine reaches this one


@pytest.mark.parametrize("k", range(len(SIZES)))
def test_default_ocr_is_raw_rapidocr(raw_engine, k):
    w, h = SIZES[k]
    img = _scene(k, w, h)
    texts, scores, quads = _raw(raw_engine, img, text_score=0.0)
    ours = O.run_ocr(img, min_confidence=0.0)
    assert texts, f"the {w}x{h} scene should have readable text"
    assert ours.texts == texts and ours.scores == scores
    assert np.allclose(ours.polygons, np.clip(quads, 0, [w, h]), atol=1e-4)
    # rapidocr's own default filter (text_score 0.5) is min_confidence 0.5
    texts5, scores5, _ = _raw(raw_engine, img)
    got5 = O.run_ocr(img, min_confidence=0.5)
    assert got5.texts == texts5 and got5.scores == scores5


def test_padding_is_an_option_and_changes_the_input_of_small_images(raw_engine):
    img = _scene(0, *SIZES[0])  # 320x200: padded to 736x736 when asked
    padded = O.pad_to_min_side(img)
    assert padded.shape[:2] == (736, 736) and np.array_equal(padded[:200, :320], img)
    texts, scores, _ = _raw(raw_engine, padded, text_score=0.0)
    got = O.run_ocr(img, min_confidence=0.0, pad_small=True)
    assert got.texts == texts and got.scores == scores
    big = _scene(3, *SIZES[3])  # both sides >= 736: padding is a no-op
    assert O.pad_to_min_side(big) is big


def test_ocr_of_an_image_equals_ocr_of_its_saved_png():
    rng = np.random.default_rng(7)
    base = _scene(2, 500, 760).astype(np.float32) / 255
    # values between the uint8 steps, where rounding and Save Image's truncation disagree
    x = np.clip(base + rng.uniform(0.0, 0.9 / 255, base.shape).astype(np.float32), 0, 1)
    image = torch.from_numpy(x)[None]
    u8 = to_uint8(image)[0]
    assert (u8 != np.round(x * 255).astype(np.uint8)).mean() > 0.3  # the two conversions really differ here
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="PNG")  # what ComfyUI's Save Image writes
    png = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    a, b = O.run_ocr(x, min_confidence=0.0), O.run_ocr(png, min_confidence=0.0)
    assert a.texts and a.texts == b.texts and a.scores == b.scores
    assert np.array_equal(a.polygons, b.polygons)
