"""Kolors end to end on a real ComfyUI server (pinned runtime and 0.3.64): the tiny Kolors UNet and
tiny ChatGLM3 through the pack's loaders -> ComfyUI's CLIPTextEncode -> KSampler (2 steps, 64x64)
-> VAEDecode (the tiny SD1.5 checkpoint's VAE: same KL-f8 architecture as SDXL's) -> SaveImage; the same
with a tiny Kolors ControlNet through ComfyUI's ControlNetApply."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures import kolors_models as KM

pytest.importorskip("diffusers")
pytest.importorskip("sentencepiece")

UNET = "atelier-kolors-e2e-unet.safetensors"
TE = "atelier-kolors-e2e-te"


@pytest.fixture(scope="module")
def kolors_files(comfy_workspace):
    models = Path(comfy_workspace) / "models"
    unet = KM.build_unet(models / "unet" / "kolors-e2e" / UNET)
    te = KM.build_text_encoder(models / "clip" / TE)
    return {"unet": f"kolors-e2e/{UNET}", "te": TE, "paths": (unet, te)}


def _graph(files, ckpt, prompt, negative="", lora=None):
    g = {
        "1": {"class_type": "AtelierKolorsUNetLoader", "inputs": {"unet_name": files["unet"], "weight_dtype": "default"}},
        "2": {"class_type": "AtelierKolorsTextEncoderLoader",
              "inputs": {"text_encoder": files["te"], "weight_dtype": "default", "device": "default"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": prompt}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": negative}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["3", 0], "negative": ["4", 0],
                                                    "latent_image": ["5", 0], "seed": 7, "steps": 2, "cfg": 5.0,
                                                    "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "7": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["7", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "atelier_kolors"}},
    }
    return g


def test_kolors_graph_runs_and_saves_a_finite_image(kolors_files, comfy_server, tiny_sd15):
    from PIL import Image
    ckpt = tiny_sd15["checkpoints"].name
    t0 = time.perf_counter()
    files = comfy_server.output_files(comfy_server.run(_graph(kolors_files, ckpt, "一只猫坐在红色的椅子上, watercolor")), "9")
    wall = time.perf_counter() - t0
    print(f"Kolors tiny e2e (load + encode + 2 steps 64x64 + decode + save): {wall:.1f} s")
    assert len(files) == 1 and files[0].is_file()
    img = np.asarray(Image.open(files[0]).convert("RGB"), dtype=np.float32)
    assert img.shape == (64, 64, 3) and np.isfinite(img).all()
    assert img.std() > 0.5                               # a real decode, not a constant frame
    # the prompt reaches the UNet: another prompt, same seed, gives another image
    files2 = comfy_server.output_files(comfy_server.run(_graph(kolors_files, ckpt, "a red sports car at night")), "9")
    img2 = np.asarray(Image.open(files2[0]).convert("RGB"), dtype=np.float32)
    assert np.abs(img - img2).max() > 1.0


def test_kolors_loader_error_reaches_the_user(kolors_files, comfy_server, tiny_sd15):
    from safetensors.torch import save_file
    unet_dir = kolors_files["paths"][0].parent
    sd = {k: v for k, v in KM.unet_state_dict().items() if not k.startswith("encoder_hid_proj.")}
    save_file(sd, str(unet_dir / "not-kolors.safetensors"))
    g = _graph(dict(kolors_files, unet="kolors-e2e/not-kolors.safetensors"), tiny_sd15["checkpoints"].name, "x")
    with pytest.raises(Exception) as e:
        comfy_server.run(g)
    assert "encoder_hid_proj" in str(e.value) and "Atelier Kolors UNet Loader" in str(e.value)


def test_kolors_controlnet_graph(kolors_files, comfy_server, tiny_sd15):
    """Atelier Kolors ControlNet Loader -> ComfyUI's ControlNetApply on the Kolors conditioning -> KSampler."""
    from PIL import Image
    cn_dir = Path(kolors_files["paths"][0]).parents[2] / "controlnet"
    cn_dir.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in KM.controlnet_state_dict().items()}, str(cn_dir / "atelier-kolors-e2e-cn.safetensors"))
    ckpt = tiny_sd15["checkpoints"].name
    plain = _graph(kolors_files, ckpt, "a mug")
    g = _graph(kolors_files, ckpt, "a mug")
    g["10"] = {"class_type": "AtelierKolorsControlNetLoader", "inputs": {"control_net_name": "atelier-kolors-e2e-cn.safetensors"}}
    g["11"] = {"class_type": "LoadImage", "inputs": {"image": "line_drawing_mug.png"}}
    g["12"] = {"class_type": "ImageScale", "inputs": {"image": ["11", 0], "upscale_method": "bilinear", "width": 64,
                                                      "height": 64, "crop": "center"}}
    g["13"] = {"class_type": "ControlNetApply", "inputs": {"conditioning": ["3", 0], "control_net": ["10", 0],
                                                           "image": ["12", 0], "strength": 1.0}}
    g["6"]["inputs"]["positive"] = ["13", 0]
    a = np.asarray(Image.open(comfy_server.output_files(comfy_server.run(plain), "9")[0]).convert("RGB"), dtype=np.float32)
    b = np.asarray(Image.open(comfy_server.output_files(comfy_server.run(g), "9")[0]).convert("RGB"), dtype=np.float32)
    assert b.shape == (64, 64, 3) and np.isfinite(b).all() and np.abs(a - b).max() > 1.0
