"""Matting through a real ComfyUI server: line2product ends on a pure white border, the shipped
remove_background workflow writes a white composite and a transparent cut-out, the classical backend runs
by its stable id and by its legacy value (API prompt and UI workflow), bad inputs are refused, and sizes
over the budget (Remove Background's working size, Image Grid) are refused before allocating."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfyui_atelier.client import convert, demo, runtime

from tests.fixtures import poolnet_models as PM

ROOT = Path(__file__).resolve().parents[2]
CENTRE = "atelier-e2e-poolnet-centre.pth"
CLASSICAL = "classical"  # the stable id
LEGACY = "classical (no weights: border flood fill + GrabCut)"  # its value in workflows saved before


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


@pytest.mark.parametrize("value", [CLASSICAL, LEGACY])
def test_classical_backend_runs_without_weights(comfy_server, value):
    """By its stable id, and by the prose value an API prompt saved before carries."""
    src = _product_png(comfy_server.input_dir / "atelier_product2.png")
    prompt = _api("remove_background")
    prompt[_node(prompt, "LoadImage")]["inputs"]["image"] = "atelier_product2.png"
    prompt[_node(prompt, "AtelierSaliencyLoader")]["inputs"]["model_name"] = value
    _white_border_and_product(comfy_server, comfy_server.run(prompt, timeout=600), prompt, src)


def _white_border_and_product(comfy_server, entry, prompt, src):
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


def test_ui_workflow_saved_with_the_legacy_value_converts_and_runs(comfy_server):
    """A workflow saved by an earlier version (prose value in widgets_values) converts with the live
    /object_info and runs: ComfyUI leaves the value to the loader's VALIDATE_INPUTS."""
    src = _product_png(comfy_server.input_dir / "atelier_product_ui.png")
    ui = json.loads((ROOT / "workflows" / "remove_background.json").read_text())
    for n in ui["nodes"]:
        if n["type"] == "AtelierSaliencyLoader":
            n["widgets_values"] = [LEGACY]
        elif n["type"] == "LoadImage":
            n["widgets_values"][0] = "atelier_product_ui.png"
    prompt = convert.ui_to_api(ui, comfy_server.object_info())
    assert prompt[_node(prompt, "AtelierSaliencyLoader")]["inputs"]["model_name"] == LEGACY
    _white_border_and_product(comfy_server, comfy_server.run(prompt, timeout=600), prompt, src)


def test_thin_image_is_refused_by_the_size_budget(comfy_server, saliency_models):
    Image.fromarray(np.full((1, 20000, 3), 240, np.uint8)).save(comfy_server.input_dir / "atelier_thin.png")
    prompt = _api("remove_background")
    prompt[_node(prompt, "LoadImage")]["inputs"]["image"] = "atelier_thin.png"
    prompt[_node(prompt, "AtelierSaliencyLoader")]["inputs"]["model_name"] = saliency_models["centre"]
    with pytest.raises(runtime.PromptFailed) as err:
        comfy_server.run(prompt, timeout=600)
    text = str(err.value)
    assert "[Atelier Remove Background] input 'small_input'" in text and "2,220,000 x 111 px" in text
    assert "'pad'" in text


def test_image_grid_of_256_by_256_is_refused_before_allocating(comfy_server):
    Image.new("RGB", (512, 512), "white").save(comfy_server.input_dir / "atelier_grid_cell.png")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "atelier_grid_cell.png"}},
        "2": {"class_type": "AtelierImageGrid", "inputs": {
            "images": ["1", 0], "rows": 256, "cols": 256, "gap": 8, "background": "#ffffff", "font_size": 18,
            "captions": ""}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    with pytest.raises(runtime.PromptFailed) as err:
        comfy_server.run(prompt, timeout=300)
    text = str(err.value)
    assert "[Atelier Image Grid] input 'rows'" in text and "133,128 x 133,128 px" in text


CUTOUT_INPUTS = ("decontaminate", "shadow_strength", "shadow_softness", "shadow_offset")


def _green_screen_png(path: Path, h=200, w=240):
    """An orange product with 10-px soft edges on pure green (the edges carry the green), and its alpha as a PNG."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dist = np.minimum(np.minimum(yy - 50, 150 - yy), np.minimum(xx - 60, 180 - xx))
    a = np.clip((dist + 5) / 10, 0, 1)[..., None]
    img = a * np.array([255, 128, 0]) + (1 - a) * np.array([0, 255, 0])
    Image.fromarray(img.astype(np.uint8)).save(path)
    Image.fromarray((a[..., 0] * 255).round().astype(np.uint8)).convert("RGB").save(path.with_name("mask_" + path.name))


def _with_mask(prompt: dict, name: str) -> dict:
    """The true alpha (a PNG) as Remove Background's external mask: the matte is known, only the colour differs."""
    prompt["90"] = {"class_type": "LoadImage", "inputs": {"image": "mask_" + name}}
    prompt["91"] = {"class_type": "ImageToMask", "inputs": {"image": ["90", 0], "channel": "red"}}
    prompt[_node(prompt, "AtelierRemoveBackground")]["inputs"]["mask"] = ["91", 0]
    return prompt


def test_workflows_saved_before_the_clean_cutout_inputs_run_as_before(comfy_server, saliency_models):
    """A UI workflow with the 9 widget values of earlier versions and an API prompt without the new inputs
    both run and give exactly the composite of the inputs set off; the shipped (decontaminating) one differs."""
    _green_screen_png(comfy_server.input_dir / "atelier_green_product.png")
    ui = json.loads((ROOT / "workflows" / "remove_background.json").read_text())
    for n in ui["nodes"]:
        if n["type"] == "AtelierRemoveBackground":
            n["widgets_values"] = n["widgets_values"][:9]
        elif n["type"] == "AtelierSaliencyLoader":
            n["widgets_values"] = [saliency_models["centre"]]
        elif n["type"] == "LoadImage":
            n["widgets_values"][0] = "atelier_green_product.png"
    from_ui = convert.ui_to_api(ui, comfy_server.object_info())
    shipped = _api("remove_background")
    old_api = json.loads(json.dumps(shipped))
    rb = _node(shipped, "AtelierRemoveBackground")
    for p in (shipped, old_api):
        p[_node(p, "LoadImage")]["inputs"]["image"] = "atelier_green_product.png"
        p[_node(p, "AtelierSaliencyLoader")]["inputs"]["model_name"] = saliency_models["centre"]
    assert shipped[rb]["inputs"]["decontaminate"] is True
    for k in CUTOUT_INPUTS:
        del old_api[rb]["inputs"][k]
    off = json.loads(json.dumps(shipped))
    off[rb]["inputs"].update(decontaminate=False, shadow_strength=0.0)
    assert from_ui[rb]["inputs"]["decontaminate"] is False and from_ui[rb]["inputs"]["shadow_strength"] == 0.0

    def white(prompt):
        entry = comfy_server.run(_with_mask(prompt, "atelier_green_product.png"), timeout=600)
        save = next(k for k, v in prompt.items() if v["inputs"].get("filename_prefix") == "remove_background")
        return np.asarray(Image.open(comfy_server.output_files(entry, save)[0]).convert("RGB"))

    ref = white(off)
    assert np.array_equal(white(old_api), ref) and np.array_equal(white(from_ui), ref)
    clean = white(shipped)
    assert (clean[:3] == 255).all() and not np.array_equal(clean, ref)
    # green excess G - (R + B) / 2 over the soft edge: the decontaminated composite has less of it
    ring = np.zeros(ref.shape[:2], bool)
    ring[40:160, 50:190] = True
    ring[60:140, 70:170] = False
    excess = lambda x: (x[..., 1].astype(float) - (x[..., 0].astype(float) + x[..., 2]) / 2)[ring]  # noqa: E731
    # (the ideal on white has an excess of at most 0.5 of 255: orange is (255, 128, 0))
    assert excess(ref).max() > 40 and excess(clean).max() <= 0.02 * 255 + 1
