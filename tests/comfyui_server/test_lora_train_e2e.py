"""LoRAs from `atelier train-lora` (core/lora_train.py) in a real ComfyUI, on both runtimes.

- SD1.5: trained a few CPU steps on a diffusers UNet with the tiny SD1.5 checkpoint's architecture (UNet +
  text-encoder LoRA), applied with ComfyUI's LoraLoader on that checkpoint in a real server: no "lora key
  not loaded", and the image changes.
- SDXL: the tiny SDXL-class checkpoint ComfyUI detects as Segmind_Vega is too big to train on a CPU in CI,
  so a LoRA for a diffusers UNet of its layout (+ CLIP-L, CLIP-G), random and untrained
  (tests/fixtures/lora_train_models.py), goes through the same exporter and ComfyUI's own key maps in
  process (comfy.lora.model_lora_keys_unet / model_lora_keys_clip / load_lora on that checkpoint's keys
  and SDXLClipModel): every module maps, every patch has its weight's shape. No SDXL server here (the
  SDXL server of test_sdxl_e2e.py takes ~7.6 GB).
- Kolors: trained on the tiny Kolors UNet (UNet-only), applied with Atelier Kolors LoRA Loader in the
  server: the image changes.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fixtures import diffusers_models as DM
from tests.fixtures import kolors_models as KM
from tests.fixtures import lora_train_models as LT

pytest.importorskip("diffusers")
pytest.importorskip("peft")
pytest.importorskip("sentencepiece")

NOT_LOADED = "lora key not loaded"
KOLORS_UNET = "atelier-lora-e2e-unet.safetensors"
KOLORS_TE = "atelier-lora-e2e-te"


def _train(family: str, tmp: Path, **kw):
    from comfyui_atelier.core import lora_train as L
    cfg = L.LoraTrainConfig(data=str(LT.write_lora_dataset(tmp / "data", n=2, trigger="sks")), output=str(tmp / "out"),
                            name=f"e2e-{family}", trigger="sks", steps=3, resolution=64, rank=4, alpha=4.0,
                            unet_lr=1e-2, text_encoder_lr=1e-2, checkpoint_every=0, device="cpu", progress=False, **kw)
    comps = LT.kolors_components(tmp) if family == "kolors" else None
    if comps is None:
        cfg.model = str(DM.sd15_folder(tmp / "sd15"))
    return L.train_lora(cfg, comps)


@pytest.fixture(scope="module")
def loras(comfy_server, tmp_path_factory):
    """The trained SD1.5 and Kolors LoRAs in the server's models/loras, and the tiny Kolors UNet + text encoder."""
    d = comfy_server.models_dir / "loras"
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for fam, kw in (("sd", {"train_text_encoder": True}), ("kolors", {})):
        res = _train(fam, tmp_path_factory.mktemp(f"lora-{fam}"), **kw)
        assert res["family"] == fam and len(res["losses"]) == 3
        shutil.copy(res["lora"], d / res["lora"].name)
        out[fam] = res["lora"].name
    KM.build_unet(comfy_server.models_dir / "unet" / "lora-e2e" / KOLORS_UNET)   # the UNet trained on (seed 0)
    KM.build_text_encoder(comfy_server.models_dir / "clip" / KOLORS_TE)
    return out


def _log(server) -> str:
    return server.log_path.read_text(errors="replace")


def _image(server, graph, save="9") -> np.ndarray:
    files = server.output_files(server.run(graph), save)
    assert len(files) == 1
    return np.asarray(Image.open(files[0]).convert("RGB"), dtype=np.int16)


def _sample(model, clip, vae, prefix: str, seed: int) -> dict:
    """Nodes 3-9: the trigger prompt + empty negative -> KSampler 2 steps at 64x64 -> VAEDecode -> SaveImage ("9")."""
    return {
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": "a pattern number 0, sks"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": ""}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {"model": model, "positive": ["3", 0], "negative": ["4", 0],
                                                    "latent_image": ["5", 0], "seed": seed, "steps": 2, "cfg": 5.0,
                                                    "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": vae}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }


def _sd15_graph(ckpt, lora, strength):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": lora,
                                                      "strength_model": strength, "strength_clip": strength}},
        **_sample(["2", 0], ["2", 1], ["1", 2], "atelier_lora_sd15", seed=3),
    }


def test_sd15_lora_applies_with_loraloader(comfy_server, tiny_sd15, loras):
    ckpt = tiny_sd15["checkpoints"].name
    before = len(_log(comfy_server))
    plain = _image(comfy_server, _sd15_graph(ckpt, loras["sd"], 0.0))
    with_lora = _image(comfy_server, _sd15_graph(ckpt, loras["sd"], 1.0))
    log = _log(comfy_server)[before:]
    assert NOT_LOADED not in log, log
    assert np.abs(with_lora - plain).max() > 0, "the LoRA did not change the image"
    # strength 0 is the plain checkpoint: the same seed again gives the same pixels
    assert np.array_equal(plain, _image(comfy_server, _sd15_graph(ckpt, loras["sd"], 0.0)))


def _kolors_graph(ckpt, lora, strength):
    return {
        "1": {"class_type": "AtelierKolorsUNetLoader", "inputs": {"unet_name": f"lora-e2e/{KOLORS_UNET}",
                                                                   "weight_dtype": "default"}},
        "2": {"class_type": "AtelierKolorsTextEncoderLoader",
              "inputs": {"text_encoder": KOLORS_TE, "weight_dtype": "default", "device": "default"}},
        "10": {"class_type": "AtelierKolorsLoraLoader", "inputs": {"model": ["1", 0], "lora_name": lora,
                                                                    "strength_model": strength, "diffsynth_alpha": 4.0}},
        "7": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},  # its VAE: KL-f8 as SDXL's
        **_sample(["10", 0], ["2", 0], ["7", 2], "atelier_lora_kolors", seed=7),
    }


def test_kolors_lora_applies_with_the_kolors_lora_loader(comfy_server, tiny_sd15, loras):
    ckpt = tiny_sd15["checkpoints"].name
    before = len(_log(comfy_server))
    plain = _image(comfy_server, _kolors_graph(ckpt, "none", 1.0))
    with_lora = _image(comfy_server, _kolors_graph(ckpt, loras["kolors"], 1.0))
    log = _log(comfy_server)[before:]
    assert NOT_LOADED not in log and "modules apply" not in log, log
    assert np.abs(with_lora - plain).max() > 0, "the Kolors LoRA did not change the image"


class _KeysOnly:
    """What comfy.lora.model_lora_keys_unet reads of a model: its state dict's keys and model_config."""

    def __init__(self, keys, model_config):
        self._keys, self.model_config = keys, model_config

    def state_dict(self):
        return dict.fromkeys(self._keys)


def test_sdxl_export_maps_in_comfyui_key_maps(comfy, tiny_sdxl_models, caplog, capsys):
    import torch
    from safetensors import safe_open

    import comfy.lora
    import comfy.model_detection
    import comfy.sdxl_clip

    from comfyui_atelier.core import lora_export as LE

    with safe_open(str(tiny_sdxl_models["checkpoints"]), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    pre = "model.diffusion_model."
    meta = {k: torch.empty(s, dtype=torch.float16, device="meta") for k, s in shapes.items()}
    config = comfy.model_detection.model_config_from_unet(meta, pre)
    assert type(config).__name__ == "Segmind_Vega"
    weights = {"diffusion_model." + k[len(pre):]: s for k, s in shapes.items() if k.startswith(pre)}
    key_map = comfy.lora.model_lora_keys_unet(_KeysOnly(weights, config), {})
    with torch.no_grad():   # CLIP-L + CLIP-G with their real shapes, no weights
        clip = comfy.sdxl_clip.SDXLClipModel(device="meta")
    weights.update({k: tuple(v.shape) for k, v in clip.state_dict().items()})
    key_map = comfy.lora.model_lora_keys_clip(clip, key_map)

    sd = LT.vega_lora(rank=4)
    modules = LE.kohya_modules(sd)
    unmapped = sorted(m for m in modules if m not in key_map)
    assert not unmapped, unmapped[:5]
    assert {m.split("_text_model")[0] for m in modules if "_text_model_" in m} == {"lora_te1", "lora_te2"}
    assert sum(m.startswith("lora_unet_") for m in modules) == 60   # 2x1 + 2x2 transformer blocks x 10 linears
    with caplog.at_level(logging.WARNING):
        patches = comfy.lora.load_lora(sd, key_map)
    printed = capsys.readouterr().out
    assert NOT_LOADED not in caplog.text and NOT_LOADED not in printed
    assert len(patches) == len(modules)
    for m in modules:   # each delta up @ down has the shape of the weight it patches
        target = key_map[m]
        out_in = (sd[f"{m}.lora_up.weight"].shape[0], sd[f"{m}.lora_down.weight"].shape[1])
        assert tuple(weights[target][:2]) == out_in, (m, target)
