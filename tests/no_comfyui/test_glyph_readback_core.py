"""Text read-back (core.readback) against the real rapidocr backend: edit distance and normalisation by hand,
rendered labels read back, misspelt labels scored as computed by hand, and accuracy falling along degradation
ladders (blur, noise, JPEG, low-contrast colour)."""
from __future__ import annotations

import numpy as np
import pytest

from comfyui_atelier.core import fonts as F
from comfyui_atelier.core import glyph as G
from comfyui_atelier.core import ocr as O
from comfyui_atelier.core import readback as R

if not O.backend_available("rapidocr"):
    pytest.fail("rapidocr is not installed: pip install rapidocr_onnxruntime onnxruntime (the [ocr] extra)",
                pytrace=False)

DIRS = F.font_dirs()
LABELS = ["Shift", "Enter", "空格", "删除", "ABC", "符号", "123", "换行"]
W, H = 240, 56  # one ladder step: 8 key labels about 18 px high, 2 rows of 4


def _labels(texts=LABELS) -> list[dict]:
    out = []
    for i, t in enumerate(texts):
        r, c = divmod(i, 4)
        out.append({"text": t, "box": [8 + c * 59, 5 + r * 26, 55 + c * 59, 23 + r * 26]})
    return G.parse_text_boxes(out)


def _render(boxes, w=W, h=H) -> np.ndarray:
    """Dark blue labels on cream paper, uint8 RGB."""
    glyph, _, _ = G.render_glyphs(boxes, w, h, dirs=DIRS, padding=0.1)
    a = glyph[..., None].astype(np.float32) / 255
    return (np.array([245, 235, 210]) * (1 - a) + np.array([30, 40, 120]) * a).astype(np.uint8)


def test_edit_distance_and_accuracy_by_hand():
    assert R.edit_distance("kitten", "sitting") == 3  # k->s, e->i, +g
    assert R.edit_distance("", "abc") == 3 and R.edit_distance("abc", "") == 3
    assert R.edit_distance("Shift", "Shlft") == 1 and R.edit_distance("键盘皮肤", "键盘") == 2
    assert R.char_accuracy("Shift", "Shlft") == pytest.approx(0.8)  # 1 - 1/5
    assert R.char_accuracy("ab", "wxyz") == 0.0  # 1 - 4/2 clipped at 0
    assert R.char_accuracy("Enter", "") == 0.0 and R.char_accuracy("", "") == 1.0


def test_normalisation_modes():
    assert R.normalize_text("空格 Space") == "空格space" and R.char_accuracy("空格 Space", "空格Space") == 1.0
    assert R.normalize_text("ＡＢＣ １２３") == "abc123"  # NFKC: full-width Latin and digits
    assert R.char_accuracy("Shift", "shift", "ignore spaces") == pytest.approx(0.8)
    assert R.char_accuracy("Shift", "shift") == 1.0
    assert R.char_accuracy("a b", "ab", "exact") == pytest.approx(2 / 3)


def test_clean_labels_read_back_exactly_and_misspellings_score_by_hand():
    boxes = _labels()
    res = R.read_back(_render(boxes), boxes)
    assert [b.read.replace(" ", "") for b in res.boxes] == LABELS
    assert res.accuracy == 1.0 and res.min_accuracy == 1.0 and res.exact_fraction == 1.0 and res.confidence > 0.9
    # what is drawn differs from what is expected: "Shlft" for Shift, "键盘" for 键盘皮肤, "Entr" for Enter
    drawn = _labels(["Shlft", "Entr", "空格", "键盘"])
    want = [dict(b, text=t) for b, t in zip(drawn, ["Shift", "Enter", "空格", "键盘皮肤"])]
    res = R.read_back(_render(drawn), want)
    assert [b.read for b in res.boxes] == ["Shlft", "Entr", "空格", "键盘"]
    assert [b.accuracy for b in res.boxes] == pytest.approx([1 - 1 / 5, 1 - 1 / 5, 1.0, 1 - 2 / 4])
    assert res.accuracy == pytest.approx((0.8 + 0.8 + 1.0 + 0.5) / 4) and res.exact_fraction == 0.25
    assert res.min_accuracy == pytest.approx(0.5)


def test_nothing_to_read_and_nothing_read():
    empty = R.read_back(np.zeros((40, 60, 3), np.uint8), [])
    assert empty.summary() == {"boxes": 0, "accuracy": 1.0, "min_accuracy": 1.0, "exact_fraction": 1.0,
                               "confidence": 0.0}
    boxes = _labels()
    blank = R.read_back(np.full((H, W, 3), 240, np.uint8), boxes)
    assert blank.accuracy == 0.0 and blank.confidence == 0.0 and all(b.read == "" for b in blank.boxes)
    assert "'Shift' -> ''" in R.format_report([blank], threshold=0.9) and "below" in R.format_report([blank], 0.9)


def test_crop_rect_grows_by_the_margin_and_stays_inside():
    assert R.crop_rect([[10, 10], [50, 10], [50, 30], [10, 30]], 100, 100, 0.25) == (5, 5, 55, 35)
    assert R.crop_rect([[0, 0], [40, 0], [40, 20], [0, 20]], 30, 30, 1.0) == (0, 0, 30, 30)


@pytest.fixture(scope="module")
def ladders():
    """kind -> [(level, mean accuracy, mean confidence)]: every level of a ladder on one stacked image (one
    read-back call per ladder; a box reads the same whatever else is on its page)."""
    boxes = _labels()
    base = _render(boxes)
    out = {}
    for kind, levels in R.LADDERS.items():
        stack = np.concatenate([R.degrade(base, kind, lv, seed=1) for lv in levels])
        many = [dict(b, polygon=[[x, y + k * H] for x, y in b["polygon"]]) for k in range(len(levels)) for b in boxes]
        res = R.read_back(stack, many).boxes
        n = len(boxes)
        out[kind] = [(lv, float(np.mean([b.accuracy for b in res[k * n:(k + 1) * n]])),
                      float(np.mean([b.confidence for b in res[k * n:(k + 1) * n]]))) for k, lv in enumerate(levels)]
    print("\nread-back accuracy (confidence) under degradation, 8 labels (Latin + Chinese), 18 px high:")
    for kind, row in out.items():
        print(f"  {kind:9s}" + "  ".join(f"{lv:g}: {a:.3f} ({c:.2f})" for lv, a, c in row))
    return out


@pytest.mark.parametrize("kind", list(R.LADDERS))
def test_accuracy_falls_monotonically_along_each_ladder(ladders, kind):
    acc = [a for _, a, _ in ladders[kind]]
    assert acc[0] == 1.0, ladders[kind]  # the mildest step reads every label
    assert all(b <= a for a, b in zip(acc, acc[1:])), ladders[kind]  # never better when worse (ties allowed)
    assert acc[-1] < 0.5, ladders[kind]  # and the ladder really reaches illegible


def test_degrade_is_what_it_says():
    img = _render(_labels())
    assert np.array_equal(R.degrade(img, "blur", 0), img) and np.array_equal(R.degrade(img, "contrast", 1.0), img)
    low = R.degrade(img, "contrast", 0.1).astype(int)
    assert low.max() - low.min() <= 0.1 * (int(img.max()) - int(img.min())) + 1
    assert np.array_equal(R.degrade(img, "noise", 50, seed=3), R.degrade(img, "noise", 50, seed=3))
    with pytest.raises(ValueError, match="unknown degradation"):
        R.degrade(img, "rain", 1)
