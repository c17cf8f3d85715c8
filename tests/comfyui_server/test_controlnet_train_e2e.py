"""The ControlNet trainer's exported file in a real ComfyUI (issue 15 item 2), on both runtimes.

A ControlNet is trained (`core.controlnet_train`, from the UNet, a few CPU steps on a fixed batch) on a
diffusers SD1.5 base whose UNet has the tiny SD1.5 checkpoint's architecture (tests/fixtures/
diffusers_models.py); the exported single file (ldm layout, `control_model.*`) goes into the server's
models/controlnet and runs CheckpointLoaderSimple -> CLIPTextEncode -> ControlNetLoader ->
ControlNetApplyAdvanced / ControlNetApply -> KSampler -> VAEDecode -> SaveImage on the tiny checkpoint:

- the untrained ControlNet from the UNet (zero convs) leaves the image as it is without a ControlNet;
- the trained one changes it, and so does the one fine-tuned from the tiny lllyasviel-layout ControlNet;
- the server log has no missing/leftover-key warnings (every weight landed somewhere).

SDXL: ComfyUI detects SDXL checkpoints by exact depths, so no tiny SDXL checkpoint takes a tiny SDXL
ControlNet in a graph; here ComfyUI's own ControlNet loader (in process) reads the exported tiny SDXL file
through its key-based fallback config and its ControlNet runs on SDXL-shaped inputs (y = pooled + ids).
"""
from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers")

from comfyui_atelier.core import controlnet_train as T  # noqa: E402
from tests.fixtures import diffusers_models as DM  # noqa: E402
from tests.fixtures import style_models as SM  # noqa: E402

CONTROL_IMAGE = "atelier_cn_train_control.png"
SIZE = 64
BAD_LOG_LINES = ("leftover keys", "left over keys", "missing controlnet keys", "control could not be applied")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, comfy_server, tiny_sd15):
    """{"zero": from the UNet, untrained; "trained": from the UNet, 2 steps; "finetuned": from the tiny
    ldm ControlNet, 1 step}: exported files in the server's models/controlnet."""
    tmp = tmp_path_factory.mktemp("cn-train-e2e")
    data = DM.write_controlnet_dataset(tmp / "data", n=2, size=SIZE)
    base = SM.tiny_diffusers_components(tmp / "_tok", comfy_compatible=True)
    dest = comfy_server.models_dir / "controlnet"
    dest.mkdir(parents=True, exist_ok=True)
    cfg = dict(data=str(data), steps=2, resolution=32, lr=1e-3, checkpoint_every=0, device="cpu", progress=False,
               fixed_batch=True)
    zero = T.export_single_file(T.load_controlnet(None, base["unet"]), dest / "atelier_cn_zero.safetensors")
    res = T.train_controlnet(T.ControlNetTrainConfig(output=str(tmp / "a"), from_unet=True, name="atelier_cn_trained",
                                                     **cfg), base=base)
    fine = T.train_controlnet(T.ControlNetTrainConfig(output=str(tmp / "b"), controlnet=str(tiny_sd15["controlnet"]),
                                                      name="atelier_cn_finetuned", **{**cfg, "steps": 1}), base=base)
    print(f"\nSD1.5-shaped ControlNet from the UNet, fixed batch: {dict(res['history'])} "
          f"({res['seconds_per_step']:.2f} s/step at {cfg['resolution']} px); fine-tuned: {dict(fine['history'])}")
    for r in (res, fine):
        shutil.copy(r["controlnet"], dest / r["controlnet"].name)
    control = np.zeros((SIZE, SIZE, 3), np.uint8)
    control[8:56:8, :] = 255
    control[:, 20:44] = 255
    Image.fromarray(control).save(comfy_server.input_dir / CONTROL_IMAGE)
    return {"zero": zero.name, "trained": res["controlnet"].name, "finetuned": fine["controlnet"].name,
            "losses": res["losses"]}


def _graph(ckpt: str, controlnet: str | None, advanced: bool = True, strength: float = 1.0) -> dict:
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a pattern, iflyskin"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry"}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "8": {"class_type": "KSampler",
              "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["7", 0],
                         "seed": 3, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal",
                         "denoise": 1.0}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "cn_train_e2e"}},
    }
    if controlnet:
        g["4"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": controlnet}}
        g["5"] = {"class_type": "LoadImage", "inputs": {"image": CONTROL_IMAGE}}
        if advanced:
            g["6"] = {"class_type": "ControlNetApplyAdvanced",
                      "inputs": {"positive": ["2", 0], "negative": ["3", 0], "control_net": ["4", 0],
                                 "image": ["5", 0], "strength": strength, "start_percent": 0.0, "end_percent": 1.0}}
            g["8"]["inputs"].update(positive=["6", 0], negative=["6", 1])
        else:
            g["6"] = {"class_type": "ControlNetApply", "inputs": {"conditioning": ["2", 0], "control_net": ["4", 0],
                                                                  "image": ["5", 0], "strength": strength}}
            g["8"]["inputs"].update(positive=["6", 0])
    return g


def _image(server, graph) -> np.ndarray:
    entry = server.run(graph)
    files = server.output_files(entry, "10")
    assert len(files) == 1
    return np.asarray(Image.open(files[0]).convert("RGB"), dtype=np.int16)


def test_exported_controlnet_loads_and_changes_the_output(comfy_server, tiny_sd15, trained):
    ckpt = tiny_sd15["checkpoints"].name
    names = comfy_server.object_info()["ControlNetLoader"]["input"]["required"]["control_net_name"][0]
    assert {trained["zero"], trained["trained"], trained["finetuned"]} <= set(names)
    plain = _image(comfy_server, _graph(ckpt, None))
    assert plain.std() > 1.0
    zero = _image(comfy_server, _graph(ckpt, trained["zero"]))
    assert np.abs(zero - plain).max() <= 1, "a ControlNet from the UNet (zero convs) must not change the image"
    after = _image(comfy_server, _graph(ckpt, trained["trained"]))
    simple = _image(comfy_server, _graph(ckpt, trained["trained"], advanced=False))
    fine = _image(comfy_server, _graph(ckpt, trained["finetuned"]))
    print(f"\nmean |diff| vs no ControlNet: zero-init {np.abs(zero - plain).mean():.3f}, trained (Advanced) "
          f"{np.abs(after - plain).mean():.3f}, trained (Apply) {np.abs(simple - plain).mean():.3f}, "
          f"fine-tuned {np.abs(fine - plain).mean():.3f}")
    for img in (after, simple, fine):
        assert np.abs(img - plain).mean() > 0.5 and np.abs(img - plain).max() >= 8
    log = comfy_server.log_tail(200_000)
    assert not [b for b in BAD_LOG_LINES if b in log], log[-3000:]


def _tensors(o) -> list:
    if isinstance(o, torch.Tensor):
        return [o]
    items = o.values() if isinstance(o, dict) else o
    return [t for x in items if x is not None for t in _tensors(x)]


def test_sdxl_controlnet_loads_in_comfyui_by_the_fallback(comfy, tmp_path, caplog):
    """A tiny SDXL-shaped ControlNet trained 1 step and exported: ComfyUI's loader builds it from the keys
    (no supported model matches; both runtimes fall back to a config read from the keys) and it runs."""
    import comfy.controlnet

    base = DM.sdxl_components(tmp_path)
    data = DM.write_controlnet_dataset(tmp_path / "data", n=1)
    res = T.train_controlnet(T.ControlNetTrainConfig(data=str(data), output=str(tmp_path / "o"), from_unet=True,
                                                     steps=1, resolution=32, lr=1e-3, checkpoint_every=0,
                                                     device="cpu", progress=False), base=base)
    with caplog.at_level(logging.WARNING):
        control = comfy.controlnet.load_controlnet(str(res["controlnet"]))
    assert not [r for r in caplog.records if "keys" in r.getMessage()], caplog.text
    net = control.control_model
    assert type(net).__name__ == "ControlNet" and net.num_classes == "sequential"
    assert [zc[0].weight.shape[0] for zc in net.zero_convs] == [32, 32, 32, 64]
    x = torch.randn(1, 4, 8, 8)
    hint = torch.rand(1, 3, 64, 64)
    ctx = torch.randn(1, 77, DM.SDXL_TE1 + DM.SDXL_TE2)
    y = torch.randn(1, DM.SDXL_TE2 + 6 * DM.SDXL_TIME)
    p = next(net.parameters())
    with torch.no_grad():
        outs = net(x.to(p), hint.to(p), torch.tensor([500.0]).to(p), ctx.to(p), y=y.to(p))
    flat = _tensors(outs)  # a list (pinned runtime) or {"input": [...], "middle": [...], "output": []} (0.3.64)
    assert len(flat) == 5 and all(torch.isfinite(o).all() for o in flat)
    assert any(o.abs().max() > 0 for o in flat)  # one step moved the zero convs
