"""Through a real ComfyUI server: the classical backend's stable id and its legacy value (an API prompt and
a UI workflow saved with the old prose value still validate and run), and the size budget of Remove
Background and Image Grid refusing a run before it allocates."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfyui_atelier.client import convert, runtime

from tests.fixtures import poolnet_models as PM

ROOT = Path(__file__).resolve().parents[2]
LEGACY = "classical (no weights: border flood fill + GrabCut)"
CENTRE = "atelier-e2e-poolnet-centre.pth"


def _api(name: str) -> dict:
    return json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())


def _node(prompt: dict, class_type: str) -> str:
    return next(k for k, v in prompt.items() if v["class_type"] == class_type)


def _product_png(path: Path, h=120, w=160):
    img = np.full((h, w, 3), 246, np.uint8)
    img[30:90, 40:120] = (200, 60, 30)
    Image.fromarray(img).save(path)
    return img


def _white_border_and_product(comfy_server, entry, prompt, src):
    save = next(k for k, v in prompt.items() if v["inputs"].get("filename_prefix") == "remove_background")
    white = np.asarray(Image.open(comfy_server.output_files(entry, save)[0]))
    assert (white[:20] == 255).all() and (white[40:80, 50:110] == src[40:80, 50:110]).all()


@pytest.mark.parametrize("value", ["classical", LEGACY])
def test_api_prompt_with_new_or_legacy_classical_value_runs(comfy_server, value):
    src = _product_png(comfy_server.input_dir / "atelier_house_product.png")
    prompt = _api("remove_background")
    prompt[_node(prompt, "LoadImage")]["inputs"]["image"] = "atelier_house_product.png"
    prompt[_node(prompt, "AtelierSaliencyLoader")]["inputs"]["model_name"] = value
    _white_border_and_product(comfy_server, comfy_server.run(prompt, timeout=600), prompt, src)


def test_ui_workflow_saved_with_the_legacy_value_converts_and_runs(comfy_server):
    """A workflow saved by an earlier version (prose value in widgets_values) converts with the live
    /object_info and runs: ComfyUI leaves the value to the loader's VALIDATE_INPUTS."""
    src = _product_png(comfy_server.input_dir / "atelier_house_product_ui.png")
    ui = json.loads((ROOT / "workflows" / "remove_background.json").read_text())
    for n in ui["nodes"]:
        if n["type"] == "AtelierSaliencyLoader":
            n["widgets_values"] = [LEGACY]
        elif n["type"] == "LoadImage":
            n["widgets_values"][0] = "atelier_house_product_ui.png"
    prompt = convert.ui_to_api(ui, comfy_server.object_info())
    assert prompt[_node(prompt, "AtelierSaliencyLoader")]["inputs"]["model_name"] == LEGACY
    _white_border_and_product(comfy_server, comfy_server.run(prompt, timeout=600), prompt, src)


@pytest.fixture(scope="module")
def centre_model(comfy_server, tmp_path_factory):
    files = PM.build_poolnet_files(str(tmp_path_factory.getbasetemp() / "poolnet_models"))
    folder = comfy_server.models_dir / "saliency"
    folder.mkdir(parents=True, exist_ok=True)
    made = not (folder / CENTRE).exists()
    if made:
        os.symlink(files["centre"], folder / CENTRE)
    yield CENTRE
    if made:
        (folder / CENTRE).unlink()


def test_thin_image_is_refused_by_the_size_budget(comfy_server, centre_model):
    Image.fromarray(np.full((1, 20000, 3), 240, np.uint8)).save(comfy_server.input_dir / "atelier_thin.png")
    prompt = _api("remove_background")
    prompt[_node(prompt, "LoadImage")]["inputs"]["image"] = "atelier_thin.png"
    prompt[_node(prompt, "AtelierSaliencyLoader")]["inputs"]["model_name"] = centre_model
    with pytest.raises(runtime.PromptFailed) as err:
        comfy_server.run(prompt, timeout=600)
    text = str(err.value)
    assert "[Atelier Remove Background] input 'small_input'" in text and "2,220,000 x 111 px" in text
    assert "'pad'" in text


def test_image_grid_of_256_by_256_is_refused_before_allocating(comfy_server):
    _product_png(comfy_server.input_dir / "atelier_house_cell.png", 512, 512)
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "atelier_house_cell.png"}},
        "2": {"class_type": "AtelierImageGrid", "inputs": {
            "images": ["1", 0], "rows": 256, "cols": 256, "gap": 8, "background": "#ffffff", "font_size": 18,
            "captions": ""}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    with pytest.raises(runtime.PromptFailed) as err:
        comfy_server.run(prompt, timeout=300)
    text = str(err.value)
    assert "[Atelier Image Grid] input 'rows'" in text and "133,128 x 133,128 px" in text
