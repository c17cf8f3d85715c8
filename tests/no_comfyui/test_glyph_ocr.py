"""OCR adapters against the real rapidocr backend (its wheel ships the PP-OCR ONNX models): round trips of
rendered text, the confidence filter, and backend errors."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from comfyui_atelier.core import fonts as F
from comfyui_atelier.core import glyph as G
from comfyui_atelier.core import ocr as O
from comfyui_atelier.core.errors import AtelierError

if not O.backend_available("rapidocr"):
    pytest.fail("rapidocr is not installed: pip install rapidocr_onnxruntime onnxruntime (the [ocr] extra)",
                pytrace=False)

DIRS = F.font_dirs()

ROUND_TRIP = [
    {"text": "Atelier 2024", "box": [40, 40, 520, 120]},
    {"text": "Enter", "box": [40, 700, 300, 790]},
    {"text": "键盘皮肤", "box": [40, 300, 400, 390]},
    {"text": "你好世界", "box": [500, 300, 860, 390]},
    {"text": "空格", "box": [400, 700, 600, 790]},
    {"text": "ROTATED", "polygon": [[560, 480], [900, 540], [886, 620], [546, 560]]},
]


def _match(result: O.OcrResult, boxes: list[dict]) -> dict[str, tuple[str, float, float]]:
    """requested text -> (read text, score, IoU of the best-overlapping detection)."""
    out = {}
    for b in boxes:
        ious = [O.polygon_iou(b["polygon"], p) for p in result.polygons]
        if ious:
            k = int(np.argmax(ious))
            out[b["text"]] = (result.texts[k], result.scores[k], ious[k])
    return out


@pytest.fixture(scope="module")
def rendered():
    boxes = G.parse_text_boxes(ROUND_TRIP)
    img, mask, info = G.render_glyphs(boxes, 1024, 1024, dirs=DIRS, fit="stretch")
    return boxes, img


def test_round_trip_latin_and_chinese(rendered):
    boxes, img = rendered
    res = O.run_ocr(img)  # default backend rapidocr, default min_confidence 0.98
    assert all(s >= 0.98 for s in res.scores)
    got = _match(res, boxes)
    for b in boxes:
        assert b["text"] in got, f"{b['text']!r} not detected; read {res.texts}"
        text, score, iou = got[b["text"]]
        assert text.replace(" ", "") == b["text"].replace(" ", ""), (text, b["text"])
        assert iou >= 0.7, (b["text"], iou)
    assert len(res) == len(boxes)


def test_round_trip_black_on_white_and_rgba_input(rendered):
    boxes, img = rendered
    inverted = 255 - img
    res = O.run_ocr(np.stack([inverted] * 3, -1))
    assert sorted(t.replace(" ", "") for t in res.texts) == sorted(b["text"].replace(" ", "") for b in boxes)
    rgba = np.zeros(img.shape + (4,), np.float32)  # float 0..1 RGBA: black text, alpha = ink
    rgba[..., 3] = img / 255.0
    res = O.run_ocr(rgba)  # alpha laid on white
    assert {"键盘皮肤", "Enter"} <= set(res.texts)


def test_vertical_chinese_round_trip():
    boxes = G.parse_text_boxes([{"text": "竖排文字", "box": [120, 40, 200, 380]}])
    img, mask, info = G.render_glyphs(boxes, 320, 420, dirs=DIRS, fit="stretch")
    assert info[0]["direction"] == "vertical"
    res = O.run_ocr(img, min_confidence=0.9)
    got = _match(res, boxes)
    assert got["竖排文字"][0] == "竖排文字" and got["竖排文字"][2] >= 0.7


def test_long_text_shrunk_in_its_box_reads_back_whole():
    text = "Keyboard skin designer 2024"
    boxes = G.parse_text_boxes([{"text": text, "box": [20, 20, 620, 110], "size": 300}])
    img, mask, info = G.render_glyphs(boxes, 1024, 512, dirs=DIRS)
    res = O.run_ocr(img, min_confidence=0.9)
    assert " ".join(res.texts).replace(" ", "") == text.replace(" ", "")


def _damaged(rendered_boxes, img, cut=0.4):
    """Erase the bottom `cut` of every text line: still detected, read with low confidence."""
    out = img.copy()
    for b in rendered_boxes:
        (x0, y0), (x1, y1) = b["polygon"][0], b["polygon"][2]
        out[int(y0 + (y1 - y0) * (1 - cut)):int(y1), int(x0):int(x1)] = 0
    return out


def test_text_below_the_confidence_threshold_returns_nothing():
    boxes = G.parse_text_boxes([{"text": "Atelier 2024", "box": [40, 40, 520, 120]},
                                {"text": "HELLO WORLD", "box": [40, 180, 520, 260]}])
    img, _, _ = G.render_glyphs(boxes, 640, 320, dirs=DIRS, fit="stretch")
    damaged = _damaged(boxes, img)
    raw = O.run_ocr(damaged, min_confidence=0.0)
    assert len(raw) >= 2 and max(raw.scores) < 0.98  # there is text, read with low confidence
    assert len(O.run_ocr(damaged)) == 0  # default 0.98 keeps none of it
    for t in (0.6, 0.9):
        kept = O.run_ocr(damaged, min_confidence=t)
        assert all(s >= t for s in kept.scores)
        assert len(kept) == sum(s >= t for s in raw.scores)


def test_filter_keeps_only_scores_at_or_above_min_confidence():
    r = O.OcrResult(np.arange(32, dtype=np.float32).reshape(4, 4, 2), ["a", "b", "c", " "], [0.97, 0.98, 0.999, 0.99])
    kept = r.filter(0.98)
    assert kept.texts == ["b", "c"] and kept.scores == [0.98, 0.999]
    assert np.array_equal(kept.polygons, r.polygons[[1, 2]])
    assert kept.to_boxes()[0]["polygon"] == r.polygons[1].tolist() and kept.to_boxes()[0]["score"] == 0.98


def test_blank_image_gives_empty_result():
    res = O.run_ocr(np.zeros((200, 300), np.uint8))
    assert len(res) == 0 and res.polygons.shape == (0, 4, 2)


def test_order_quad_returns_tl_tr_br_bl():
    q = O._order_quad([[100, 50], [10, 50], [10, 10], [100, 10]])
    assert q.tolist() == [[10, 10], [100, 10], [100, 50], [10, 50]]


@pytest.mark.skipif(importlib.util.find_spec("paddleocr") is not None, reason="paddleocr is installed here")
def test_paddleocr_selected_but_not_installed_names_the_extra():
    with pytest.raises(AtelierError) as e:
        O.run_ocr(np.zeros((64, 64, 3), np.uint8), backend="paddleocr", node="Atelier OCR Boxes")
    msg = str(e.value)
    assert "[Atelier OCR Boxes]" in msg and "'paddleocr' is not installed" in msg
    assert 'pip install "comfyui-atelier[paddle]"' in msg and "paddlepaddle" in msg


@pytest.mark.parametrize("kwargs, match", [
    ({"backend": "tesseract"}, "unknown OCR backend"),
    ({"min_confidence": 1.5}, "outside 0..1"),
])
def test_bad_ocr_arguments(kwargs, match):
    with pytest.raises(AtelierError, match=match):
        O.run_ocr(np.zeros((64, 64, 3), np.uint8), **kwargs)


def test_paddle_adapter_reads_the_3x_predict_structure(monkeypatch, tmp_path):
    """PaddleOCR itself cannot be installed with its models offline here, so a stand-in module with the
    3.x result structure (dict-like results, .json == {"res": {...}}, rec_polys / rec_texts / rec_scores)
    checks our adapter: constructor flags, model dirs, BGR input, corner order and the score filter."""
    import sys
    import types

    seen = {}

    class Result(dict):
        @property
        def json(self):
            return {"res": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.items()}}

    class PaddleOCR:
        def __init__(self, **kwargs):
            seen["kwargs"] = kwargs

        def predict(self, img):
            seen["pixel"] = img[0, 0].tolist()
            polys = [np.array([[90, 30], [10, 30], [10, 10], [90, 10]]), np.array([[5, 40], [60, 40], [60, 60], [5, 60]])]
            return [Result(rec_polys=polys, rec_texts=["KEY", "low"], rec_scores=np.array([0.995, 0.4]))]

    mod = types.ModuleType("paddleocr")
    mod.PaddleOCR = PaddleOCR
    monkeypatch.setitem(sys.modules, "paddleocr", mod)
    monkeypatch.delenv("PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK", raising=False)
    det = tmp_path / "det"
    det.mkdir()
    img = np.zeros((64, 96, 3), np.uint8)
    img[0, 0] = [255, 0, 0]  # red in RGB
    try:
        res = O.run_ocr(img, backend="paddleocr", det_model_dir=str(det))
        assert seen["kwargs"]["text_detection_model_dir"] == str(det)
        assert seen["kwargs"]["use_doc_unwarping"] is False and seen["kwargs"]["use_textline_orientation"] is False
        import os
        assert os.environ["PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK"] == "True"  # offline: no model-hoster check
        assert seen["pixel"] == [0, 0, 255]  # PaddleOCR gets BGR like cv2.imread
        assert res.texts == ["KEY"] and res.scores == [0.995]
        assert res.polygons[0].tolist() == [[10, 10], [90, 10], [90, 30], [10, 30]]
        with pytest.raises(AtelierError, match="PaddleOCR model folder .* does not exist"):
            O.run_ocr(img, backend="paddleocr", rec_model_dir=str(tmp_path / "nope"))
    finally:
        for k in [k for k in O._ENGINES if k[0] == "paddleocr"]:
            del O._ENGINES[k]
