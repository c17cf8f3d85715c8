"""Keyboard-skin workflow through a real ComfyUI server.

The shipped workflows/api/keyboard_skin.json is validated whole against the live /object_info; its
reference chain (LoadImage -> AtelierLayoutCompose -> AtelierGlyphCompose lettering the keys) is run as
shipped and read back, and its conditioning half (reference -> AtelierCanny + AtelierOCRBoxes ->
AtelierGlyphCompose -> SaveImage) is run for real on a generated reference skin. The SDXL half (checkpoint, SDXL canny ControlNet, KSampler)
is not run: a ComfyUI-loadable SDXL-shaped checkpoint needs the full-size OpenCLIP-bigG text encoder
(~700 M parameters) and an SDXL ControlNet, far beyond CI time on these CPUs; the control image is the
part this family is responsible for.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfyui_atelier.client import convert
from comfyui_atelier.core import fonts as F
from comfyui_atelier.core import glyph as G
from comfyui_atelier.core import layout as L
from comfyui_atelier.core import ocr as O

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "workflows" / "api" / "keyboard_skin.json"
CONTROL_SAVE = "8"  # SaveImage of the control image in the shipped workflow


def _ancestors(api: dict, nid: str) -> set[str]:
    seen, todo = set(), [nid]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        todo += [v[0] for v in api[n]["inputs"].values() if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)]
    return seen


@pytest.fixture(scope="module")
def reference():
    """A 1216x832 9-key skin with white key legends (Chinese and Latin) on mid-grey keys over black."""
    lay = L.load_layout("t9_9key")
    lay["colors"].update(background=(0, 0, 0), function_bar=(70, 70, 90), key=(96, 104, 120), function_key=(120, 96, 104))
    img, _, labels = L.compose_layout(lay, 1216, 832)
    glyphs, _, _ = G.render_glyphs(labels, 1216, 832, dirs=F.font_dirs())
    return np.maximum(img, glyphs[..., None])


def test_keyboard_workflow_is_valid_for_the_server(comfy_server):
    api = json.loads(WORKFLOW.read_text(encoding="utf-8"))
    info = comfy_server.object_info()
    assert convert.validate_api(api, info, check_combos=False) == []
    assert "keyboard skin" in info["AtelierSystemPrompt"]["input"]["required"]["preset"][0]
    types = {n["class_type"] for n in api.values()}
    assert {"CheckpointLoaderSimple", "ControlNetLoader", "ControlNetApplyAdvanced", "AtelierCanny", "AtelierOCRBoxes",
            "AtelierGlyphCompose", "AtelierSystemPrompt"} <= types
    assert api["12"]["inputs"]["image"] == ["6", 0]  # the ControlNet gets the glyph-composed control image
    # the reference is a lettered layout; the generated image is read back inside the OCR'd boxes
    assert api["18"]["class_type"] == "AtelierLayoutCompose" and api["19"]["inputs"]["glyphs"] == ["18", 2]
    assert api["4"]["inputs"]["image"] == api["5"]["inputs"]["image"] == ["19", 0]
    assert api["20"]["class_type"] == "AtelierTextReadback"
    assert api["20"]["inputs"]["images"] == ["15", 0] and api["20"]["inputs"]["glyphs"] == ["5", 0]
    assert api["20"]["inputs"]["pad_info"] == ["4", 2]  # the boxes follow Glyph Compose's scaling


def test_keyboard_reference_chain_as_shipped_reads_back(comfy_server):
    """Layout Compose over the shipped artwork, lettered by Glyph Compose, then OCR Boxes and Text Read-back on
    that same reference: every label the OCR kept reads back exactly."""
    api = json.loads(WORKFLOW.read_text(encoding="utf-8"))
    prompt = {k: api[k] for k in ("3", "18", "19", "5")}
    prompt["30"] = {"class_type": "AtelierTextReadback", "inputs": dict(api["20"]["inputs"], images=["19", 0])}
    del prompt["30"]["inputs"]["pad_info"]  # no Canny here: the reference itself, in its own pixels
    prompt["31"] = {"class_type": "SaveImage", "inputs": {"filename_prefix": "atelier_readback_ref", "images": ["19", 0]}}
    hist = comfy_server.run(prompt, timeout=300)
    ui = hist["outputs"]["30"]
    assert ui["atelier_scores"] == [1.0], ui.get("atelier_report")
    assert "exact 100%" in ui["atelier_report"][0] and "ABC" in ui["atelier_report"][0]


def test_keyboard_control_image_contains_the_rendered_glyphs(comfy_server, reference):
    api = json.loads(WORKFLOW.read_text(encoding="utf-8"))
    keep = _ancestors(api, CONTROL_SAVE)
    assert {api[k]["class_type"] for k in keep} == {"LoadImage", "AtelierLayoutCompose", "AtelierCanny",
                                                     "AtelierOCRBoxes", "AtelierGlyphCompose", "SaveImage"}
    keep -= {"18", "19"}  # a finished reference skin goes straight to Canny + OCR (what the Note tells users)
    prompt = {k: json.loads(json.dumps(api[k])) for k in keep}
    prompt["4"]["inputs"]["image"] = prompt["5"]["inputs"]["image"] = ["3", 0]
    Image.fromarray(reference).save(comfy_server.input_dir / "atelier_glyph_e2e_reference.png")
    load = next(k for k in keep if api[k]["class_type"] == "LoadImage")
    prompt[load]["inputs"]["image"] = "atelier_glyph_e2e_reference.png"
    prompt[CONTROL_SAVE]["inputs"]["filename_prefix"] = "atelier_glyph_e2e"

    files = comfy_server.output_files(comfy_server.run(prompt, timeout=300), CONTROL_SAVE)
    assert len(files) == 1
    control = np.asarray(Image.open(files[0]).convert("RGB"))
    assert control.shape == (832, 1216, 3)  # 832 short side at resolution 832: no scaling, no padding

    # what the server's OCR node kept (same backend, same threshold) ...
    expected = O.run_ocr(reference, min_confidence=api["5"]["inputs"]["min_confidence"])
    assert len(expected) >= 8, expected.texts
    # ... is drawn crisply inside its boxes: inside every polygon the control image equals our rendering
    boxes = expected.to_boxes()
    glyphs, mask, _ = G.render_glyphs(boxes, 1216, 832, dirs=F.font_dirs(), fit=api["6"]["inputs"]["fit"],
                                      padding=api["6"]["inputs"]["padding"])
    inside = mask > 0
    assert np.abs(control[..., 0][inside].astype(int) - glyphs[inside].astype(int)).max() <= 1
    assert (control[..., 0][inside] > 128).sum() > 1000  # real ink, not an empty box
    # outside the text the Canny edges of the keys remain
    assert (control[..., 0][~inside] > 128).sum() > 5000
    # and the text reads back from the control image itself
    got = O.run_ocr(control, min_confidence=0.9)
    read = {t.replace(" ", "") for t in got.texts}
    want = {t.replace(" ", "") for t in expected.texts}
    assert len(want & read) >= 0.8 * len(want), (sorted(want), sorted(read))
