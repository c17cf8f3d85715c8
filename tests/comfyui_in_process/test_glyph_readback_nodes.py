"""Text read-back nodes (Read-back, Filter, Gate) and Layout Compose's per-key images, called with ComfyUI types."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from comfyui_atelier.core import fonts as F
from comfyui_atelier.core import glyph as G
from comfyui_atelier.core.errors import AtelierError

LABELS = [{"text": "Shift", "box": [40, 40, 300, 120]}, {"text": "键盘", "box": [40, 180, 300, 260]}]


@pytest.fixture(scope="module")
def N(comfy):
    from comfyui_atelier.nodes import glyph
    return glyph


@pytest.fixture(scope="module")
def scene():
    """A clean 480x320 label image (black text on white) and a copy with the labels erased, as IMAGEs."""
    boxes = G.parse_text_boxes(LABELS)
    glyph, mask, _ = G.render_glyphs(boxes, 480, 320, dirs=F.font_dirs(), padding=0.1)
    clean = torch.from_numpy(1.0 - glyph.astype(np.float32) / 255)[None, ..., None].expand(1, 320, 480, 3)
    blank = torch.ones(1, 320, 480, 3)
    return G.make_glyphs([boxes], 480, 320), clean.contiguous(), blank


def test_mappings_and_conventions(N):
    for cid in ("AtelierTextReadback", "AtelierTextReadbackFilter", "AtelierTextReadbackGate"):
        cls = N.NODE_CLASS_MAPPINGS[cid]
        assert N.NODE_DISPLAY_NAME_MAPPINGS[cid] == cls.DISPLAY and cls.DISPLAY.startswith("Atelier")
        assert cls.CATEGORY == "atelier/glyph" and len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
        spec = cls.INPUT_TYPES()
        for section in spec.values():
            for name, (_, opts) in section.items():
                assert opts.get("tooltip"), (cid, name)


def test_readback_scores_a_batch_and_a_list(N, scene):
    glyphs, clean, blank = scene
    out = N.AtelierTextReadback().read([torch.cat([clean, blank]), clean], [glyphs])
    acc, report, ranked, details = out["result"]
    assert acc[0] == 1.0 and acc[2] == 1.0 and acc[1] == 0.0
    assert out["ui"]["atelier_scores"] == acc and "'Shift' -> 'Shift'" in report
    assert [float(r.mean()) for r in ranked] == [float(clean.mean()), float(clean.mean()), 1.0]  # blank last
    d = json.loads(details)
    assert d[1]["items"][0] == dict(d[1]["items"][0], expected="Shift", read="", accuracy=0.0, confidence=0.0)
    assert d[0]["exact_fraction"] == 1.0 and d[0]["confidence"] > 0.9
    assert len(out["ui"]["images"]) == 3  # annotated previews on the node


def test_readback_follows_pad_info_and_image_size(N, scene):
    glyphs, clean, _ = scene
    # the glyph canvas 480x320 padded into 480x800 (480 px on top), and the "generated" image at half size
    pad = {"orig_h": 320, "orig_w": 480, "scaled_h": 320, "scaled_w": 480, "top": 480, "bottom": 0,
           "left": 0, "right": 0}
    canvas = torch.ones(1, 800, 480, 3)
    canvas[:, 480:800] = clean
    small = torch.nn.functional.interpolate(canvas.permute(0, 3, 1, 2), size=(400, 240), mode="area").permute(0, 2, 3, 1)
    acc = N.AtelierTextReadback().read([small], [glyphs], pad_info=[pad])["result"][0]
    assert acc == [1.0]
    # without pad_info the boxes land far above the labels: the labels are not where they are looked for
    assert N.AtelierTextReadback().read([small], [glyphs], margin=[0.0])["result"][0][0] < 1.0


def test_readback_errors_name_the_input(N, scene):
    glyphs, clean, _ = scene
    two = G.make_glyphs([glyphs["items"][0]] * 2, 480, 320)
    with pytest.raises(AtelierError, match=r"batch sizes do not match") as e:
        N.AtelierTextReadback().read([torch.cat([clean] * 3)], [two])
    assert "Atelier Text Read-back" in str(e.value)
    with pytest.raises(AtelierError, match="margin") as e:
        N.AtelierTextReadback().read([clean], [glyphs], margin=[5.0])
    with pytest.raises(AtelierError, match="not an ATELIER_GLYPHS"):
        N.AtelierTextReadback().read([clean], [{"boxes": []}])


def test_filter_keeps_the_best_of_n_and_the_threshold(N, scene):
    _, clean, blank = scene
    imgs = [torch.cat([blank, clean, blank * 0.5])]
    out = N.AtelierTextReadbackFilter().filter(imgs, [0.2, 1.0, 0.6], ["top_k"], [0.9], [1], ["keep best"])
    kept, idx, n, report = out["result"]
    assert idx == [1] and n == 1 and torch.equal(kept[0], clean)
    out = N.AtelierTextReadbackFilter().filter(imgs, [0.2, 1.0, 0.6], ["threshold"], [0.5], [1], ["keep best"])
    assert out["result"][1] == [1, 2]
    out = N.AtelierTextReadbackFilter().filter(imgs, [0.2, 0.3, 0.6], ["threshold"], [0.9], [1], ["keep best"])
    assert out["result"][1] == [2] and out["result"][2] == 0 and out["result"][3].startswith("NOTHING PASSED")
    with pytest.raises(AtelierError, match="no image passed"):
        N.AtelierTextReadbackFilter().filter(imgs, [0.2, 0.3, 0.6], ["threshold"], [0.9], [1], ["stop with error"])
    with pytest.raises(AtelierError, match="2 accuracies for 3 images"):
        N.AtelierTextReadbackFilter().filter(imgs, [0.2, 0.3], ["threshold"], [0.9], [1], ["keep best"])


def test_gate_every_image_or_mean(N, scene):
    _, clean, blank = scene
    imgs = [torch.cat([clean, blank])]
    out = N.AtelierTextReadbackGate().gate(imgs, [1.0, 0.8], [0.9], ["every image"], ["continue"])
    _, passed, value, report = out["result"]
    assert passed is False and value == 0.8 and "FAIL" in report
    out = N.AtelierTextReadbackGate().gate(imgs, [1.0, 0.8], [0.9], ["mean"], ["continue"])
    assert out["result"][1] is True and out["result"][2] == pytest.approx(0.9)
    assert out["ui"]["atelier_gate"][0]["passed"] is True
    with pytest.raises(AtelierError, match="batch rejected: lowest image accuracy 0.8 < threshold 0.9"):
        N.AtelierTextReadbackGate().gate(imgs, [1.0, 0.8], [0.9], ["every image"], ["stop workflow"])
    with pytest.raises(AtelierError, match="accuracies"):
        N.AtelierTextReadbackGate().gate(imgs, [1.0, float("nan")], [0.9], ["mean"], ["continue"])


def test_ocr_boxes_small_image_option(N, scene):
    _, clean, _ = scene
    assert N.AtelierOCRBoxes.INPUT_TYPES()["optional"]["small_image"][1]["default"] == "as is"
    a = N.AtelierOCRBoxes().detect(clean, min_confidence=0.0)[0]
    b = N.AtelierOCRBoxes().detect(clean, min_confidence=0.0, small_image="as is")[0]
    c = N.AtelierOCRBoxes().detect(clean, min_confidence=0.0, small_image="pad to 736")[0]
    assert a == b and [x["text"] for x in a["items"][0]] and c["items"][0]  # old call = as is; padding still runs
    with pytest.raises(AtelierError, match="small_image"):
        N.AtelierOCRBoxes().detect(clean, small_image="pad")


def test_layout_compose_per_key_images(N):
    from comfyui_atelier.core import layout as L
    keys = L.key_regions(L.load_layout("qwerty_26"))
    assert [r.get("label") for r in keys[:3]] == ["Q", "W", "E"] and len(keys) == 33
    red, green = torch.zeros(1, 8, 8, 3), torch.zeros(1, 8, 8, 3)
    red[..., 0], green[..., 1] = 1.0, 1.0
    blue = torch.zeros(1, 8, 8, 3)
    blue[..., 2] = 1.0
    img, mask, labels = N.AtelierLayoutCompose().compose("qwerty_26", width=1080, height=720, key=blue,
                                                          per_key=torch.cat([red, green]))
    centre = lambda r: img[0, int(r["rect"][1] + r["rect"][3] / 2), int(r["rect"][0] + r["rect"][2] / 2)].tolist()
    assert centre(keys[0]) == [1.0, 0.0, 0.0] and centre(keys[1]) == [0.0, 1.0, 0.0]  # Q, W: their own images
    assert centre(keys[2]) == [0.0, 0.0, 1.0]  # E and after: the one key image
    alone = N.AtelierLayoutCompose().compose("qwerty_26", width=1080, height=720, key=blue)[0]
    assert centre(keys[5]) == alone[0, int(keys[5]["rect"][1] + keys[5]["rect"][3] / 2),
                                    int(keys[5]["rect"][0] + keys[5]["rect"][2] / 2)].tolist()
    with pytest.raises(AtelierError, match="34 per-key images for a layout with 33 keys") as e:
        N.AtelierLayoutCompose().compose("qwerty_26", per_key=torch.zeros(34, 8, 8, 3))
    assert "per_key" in str(e.value)
