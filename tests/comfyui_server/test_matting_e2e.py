"""Matting through a real ComfyUI server: line2product ends on a pure white border, the shipped
remove_background workflow writes a white composite and a transparent cut-out, bad inputs are refused."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfyui_atelier.client import demo, runtime

from tests.fixtures import poolnet_models as PM

ROOT = Path(__file__).resolve().parents[2]
CENTRE = "atelier-e2e-poolnet-centre.pth"
CLASSICAL = "classical"  # the stable id (the legacy prose value: test_matting_house_e2e.py)


@pytest.fixture(scope="module")
def saliency_models(comfy_server, tmp_path_factory):
    files = PM.build_poolnet_files(str(tmp_path_factory.getbasetemp() / "poolnet_models"))
    folder = comfy_server.models_dir / "saliency"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / CENTRE).exists():
        os.symlink(files["centre"], folder / CENTRE)
    yield {"centre": CENTRE}
    (folder / CENTRE).unlink()  # the workspace is shared by the session: leave the folder as found


def _api(name: str) -> dict:
    return json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())


def _node(prompt: dict, class_type: str) -> str:
    return next(k for k, v in prompt.items() if v["class_type"] == class_type)


def _product_png(path: Path, h=200, w=240):
    img = np.full((h, w, 3), 246, np.uint8)
    img[50:150, 60:180] = (200, 60, 30)
    Image.fromarray(img).save(path)
    return img


def test_line2product_ends_on_a_pure_white_border(comfy_server, tiny_sd15, saliency_models):
    assert "AtelierRemoveBackground" in {v["class_type"] for v in _api("line2product").values()}
    Image.open(ROOT / "example_inputs" / "line_drawing_mug.png").save(comfy_server.input_dir / "mug.png")
    prompt = demo.prepare_prompt(_api("line2product"), image_name="mug.png", caption="a mug", seed=3, steps=2,
                                 model_files={k: v.name for k, v in tiny_sd15.items()}, models_dir=None)
    prompt[_node(prompt, "AtelierSaliencyLoader")]["inputs"]["model_name"] = saliency_models["centre"]
    matting = _node(prompt, "AtelierRemoveBackground")
    save = _node(prompt, "SaveImage")
    assert prompt[save]["inputs"]["images"] == [matting, 0]
    entry = comfy_server.run(prompt, timeout=900)
    files = comfy_server.output_files(entry, save)
    assert len(files) == 1
    img = np.asarray(Image.open(files[0]).convert("RGB"))
    h, w = img.shape[:2]
    assert min(h, w) >= 64
    border = np.concatenate([img[:3].reshape(-1, 3), img[-3:].reshape(-1, 3),
                             img[:, :3].reshape(-1, 3), img[:, -3:].reshape(-1, 3)])
    assert (border == 255).all(), "border region is not pure white"
    centre = img[h // 4:3 * h // 4, w // 4:3 * w // 4]
    assert (centre != 255).any(), "the product region was blanked too"


def test_remove_background_workflow_writes_white_and_transparent(comfy_server, saliency_models):
    src = _product_png(comfy_server.input_dir / "atelier_product.png")
    prompt = _api("remove_background")
    prompt[_node(prompt, "LoadImage")]["inputs"]["image"] = "atelier_product.png"
    prompt[_node(prompt, "AtelierSaliencyLoader")]["inputs"]["model_name"] = saliency_models["centre"]
    entry = comfy_server.run(prompt, timeout=600)
    saves = {v["inputs"]["filename_prefix"]: k for k, v in prompt.items() if v["class_type"] == "SaveImage"}
    white = np.asarray(Image.open(comfy_server.output_files(entry, saves["remove_background"])[0]))
    cut = Image.open(comfy_server.output_files(entry, saves["remove_background_rgba"])[0])
    assert white.shape == (200, 240, 3) and cut.mode == "RGBA" and cut.size == (240, 200)
    assert (white[:3] == 255).all() and (white[:, -3:] == 255).all()
    assert (white[60:140, 70:170] == src[60:140, 70:170]).all()       # product pixels unchanged
    alpha = np.asarray(cut)[..., 3]
    assert (alpha[:3] == 0).all() and (alpha[60:140, 70:170] == 255).all()


def test_classical_backend_runs_without_weights(comfy_server):
    src = _product_png(comfy_server.input_dir / "atelier_product2.png")
    prompt = _api("remove_background")
    prompt[_node(prompt, "LoadImage")]["inputs"]["image"] = "atelier_product2.png"
    prompt[_node(prompt, "AtelierSaliencyLoader")]["inputs"]["model_name"] = CLASSICAL
    entry = comfy_server.run(prompt, timeout=600)
    save = next(k for k, v in prompt.items() if v["inputs"].get("filename_prefix") == "remove_background")
    white = np.asarray(Image.open(comfy_server.output_files(entry, save)[0]))
    assert (white[:40] == 255).all() and (white[60:140, 70:170] == src[60:140, 70:170]).all()


def test_missing_model_file_is_refused_with_manifest_id_and_folder(comfy_server):
    prompt = _api("remove_background")  # as shipped: poolnet_resnet50_final.pth, not installed here
    prompt[_node(prompt, "LoadImage")]["inputs"]["image"] = "atelier_product.png"
    with pytest.raises(runtime.PromptRejected) as err:
        comfy_server.queue(prompt)
    text = str(err.value)
    assert "poolnet-resnet50" in text and "saliency" in text and "poolnet_resnet50_final.pth" in text


def test_mismatched_mask_batch_fails_with_the_nodes_message(comfy_server, saliency_models):
    _product_png(comfy_server.input_dir / "atelier_product3.png", 120, 120)
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "atelier_product3.png"}},
        "2": {"class_type": "AtelierSaliencyLoader", "inputs": {"model_name": saliency_models["centre"]}},
        "3": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 3}},
        "4": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 120, "height": 120}},
        "5": {"class_type": "ImageToMask", "inputs": {"image": ["6", 0], "channel": "red"}},
        "6": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 2}},
        "7": {"class_type": "AtelierRemoveBackground", "inputs": {
            "saliency_model": ["2", 0], "image": ["3", 0], "mask": ["5", 0], "background": "#FFFFFF",
            "alpha_mode": "soft", "threshold": 0.5, "grow_shrink": 0, "feather": 0.0, "refine_edges": "none",
            "refine_radius": 0, "max_side": 1024, "small_input": "upscale"}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}},
    }
    del prompt["4"]
    with pytest.raises((runtime.PromptFailed, runtime.PromptRejected)) as err:
        comfy_server.run(prompt, timeout=300)
    text = str(err.value)
    assert "Atelier Remove Background" in text and "2 masks" in text and "3 images" in text
