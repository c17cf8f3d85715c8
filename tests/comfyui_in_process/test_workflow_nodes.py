"""The nodes that let shipped workflows run as shipped, with ComfyUI's own types (tiny SD1.5 models):

- Atelier LoRA (optional): 'none' passes model and clip through; a file patches them exactly as ComfyUI's
  LoraLoader does; a missing file is refused with a message saying what to do;
- Atelier Empty Latent Like Image: a latent the size of the control image (the drawing's aspect);
- the style adapter's 'none' choice: the conditioning blend passes the conditioning through.
"""
from __future__ import annotations

import logging
import os
import shutil

import pytest
import torch

from comfyui_atelier.core.errors import AtelierError

LORA = "workflow_nodes_lora.safetensors"


@pytest.fixture(scope="module")
def L(comfy):
    from comfyui_atelier.nodes import lora
    return lora


@pytest.fixture(scope="module")
def sd15(comfy, tiny_sd15):
    import comfy.sd
    with torch.no_grad():
        model, clip, vae = comfy.sd.load_checkpoint_guess_config(
            str(tiny_sd15["checkpoints"]), output_vae=True, output_clip=True)[:3]
    return model, clip, vae


@pytest.fixture(scope="module")
def lora_file(comfy, tiny_sd15):
    import folder_paths
    dst = comfy.models_dir / "loras" / LORA
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_sd15["loras"], dst)
    getattr(folder_paths, "filename_list_cache", {}).pop("loras", None)
    yield dst
    dst.unlink(missing_ok=True)
    getattr(folder_paths, "filename_list_cache", {}).pop("loras", None)


def test_optional_lora_declaration(L):
    cls = L.AtelierOptionalLora
    spec = cls.INPUT_TYPES()["required"]
    assert list(spec) == ["model", "clip", "lora_name", "strength_model", "strength_clip"]
    assert spec["lora_name"][0][0] == "none" and spec["lora_name"][1]["default"] == "none"
    for name, (_, opts) in spec.items():
        assert opts.get("tooltip"), name
    assert cls.RETURN_TYPES == ("MODEL", "CLIP") and len(cls.OUTPUT_TOOLTIPS) == 2
    assert cls.CATEGORY == "atelier/models" and L.NODE_DISPLAY_NAME_MAPPINGS["AtelierOptionalLora"] == \
        "Atelier LoRA (optional)"


def test_none_passes_model_and_clip_through(L, sd15, caplog):
    model, clip, _ = sd15
    with caplog.at_level(logging.INFO, logger="atelier"):
        m, c = L.AtelierOptionalLora().apply(model, clip, "none", 0.8, 0.8)
    assert m is model and c is clip
    assert "without a LoRA" in caplog.text
    assert L.AtelierOptionalLora.VALIDATE_INPUTS("none") is True
    assert L.AtelierOptionalLora.IS_CHANGED(lora_name="none", model=None, clip=None) == "none"


def test_a_file_patches_like_comfys_lora_loader(L, sd15, lora_file):
    import nodes as comfy_nodes

    model, clip, _ = sd15
    assert LORA in L.lora_choices()
    assert L.AtelierOptionalLora.VALIDATE_INPUTS(LORA) is True
    m, c = L.AtelierOptionalLora().apply(model, clip, LORA, 0.7, 0.4)
    ref_m, ref_c = comfy_nodes.LoraLoader().load_lora(model, clip, LORA, 0.7, 0.4)
    assert m is not model and c is not clip
    assert m.patches.keys() == ref_m.patches.keys() and len(m.patches) > 0
    assert c.patcher.patches.keys() == ref_c.patcher.patches.keys() and len(c.patcher.patches) > 0
    key = next(iter(m.patches))
    assert [p[0] for p in m.patches[key]] == [p[0] for p in ref_m.patches[key]] == [0.7]  # strength_model
    ckey = next(iter(c.patcher.patches))
    assert [p[0] for p in c.patcher.patches[ckey]] == [0.4]  # strength_clip
    assert model.patches == {}  # the input model is never patched in place
    # strength 0 on both is the identity, like LoraLoader
    m0, c0 = L.AtelierOptionalLora().apply(model, clip, LORA, 0.0, 0.0)
    assert m0 is model and c0 is clip


def test_lora_cache_follows_path_and_mtime(L, lora_file):
    first = L.load_lora_cached(str(lora_file))
    assert L.load_lora_cached(str(lora_file)) is first
    mtime = os.path.getmtime(lora_file)
    assert L.AtelierOptionalLora.IS_CHANGED(lora_name=LORA) == mtime
    os.utime(lora_file, (mtime + 5, mtime + 5))
    again = L.load_lora_cached(str(lora_file))
    assert again is not first and again.keys() == first.keys()
    assert L.AtelierOptionalLora.IS_CHANGED(lora_name=LORA) == mtime + 5


def test_missing_lora_says_what_to_do(L, sd15):
    msg = L.AtelierOptionalLora.VALIDATE_INPUTS("product_lora.safetensors")
    assert isinstance(msg, str)
    for part in ("Atelier LoRA (optional)", "lora_name", "product_lora.safetensors", "models/loras", "'none'"):
        assert part in msg, part
    with pytest.raises(AtelierError, match="product_lora.safetensors"):
        L.AtelierOptionalLora().apply(sd15[0], sd15[1], "product_lora.safetensors", 1.0, 1.0)


def test_lora_is_read_by_comfys_loader_and_a_policy_refusal_says_so(L, lora_file, monkeypatch):
    """The LoRA goes through comfy.utils.load_torch_file (so an organisation's model policy gates it); a
    refusal by that policy is reported as such, attributed to the node, not as a file to re-download."""
    import sys
    import types

    import comfy.utils

    class ModelNotPermittedError(RuntimeError):
        pass

    governance = types.ModuleType("app.governance")
    governance.ModelNotPermittedError = ModelNotPermittedError
    monkeypatch.setitem(sys.modules, "app.governance", governance)
    seen = []

    def refuse(ckpt, *args, **kwargs):
        seen.append(os.path.realpath(ckpt))
        raise ModelNotPermittedError(f"Model '{os.path.basename(ckpt)}' is not permitted by your organization's policy.")

    monkeypatch.setattr(comfy.utils, "load_torch_file", refuse)
    L._CACHE.clear()
    with pytest.raises(AtelierError) as e:
        L.load_lora_cached(str(lora_file))
    msg = str(e.value)
    assert "[Atelier LoRA (optional)]" in msg and "not permitted" in msg and "administrator" in msg
    assert "re-download" not in msg
    assert seen == [os.path.realpath(lora_file)]


# ----------------------------------------------------------------------------- empty latent like

@pytest.fixture(scope="module")
def C(comfy):
    from comfyui_atelier.nodes import conditioners
    return conditioners


def test_empty_latent_like_takes_the_control_images_size(C):
    node = C.AtelierEmptyLatentLike()
    spec = C.AtelierEmptyLatentLike.INPUT_TYPES()["required"]
    assert all(opts.get("tooltip") for _, opts in spec.values())
    assert C.NODE_DISPLAY_NAME_MAPPINGS["AtelierEmptyLatentLike"].startswith("Atelier ")
    control = torch.rand(1, 704, 512, 3)  # a 3:4 drawing after Atelier Lineart at resolution 512
    latent, w, h = node.generate(control, 1)
    assert latent["samples"].shape == (1, 4, 88, 64) and (w, h) == (512, 704)
    assert latent["samples"].abs().max() == 0 and latent["samples"].dtype == torch.float32
    lat2, _, _ = node.generate(torch.rand(3, 100, 77, 3), 2)  # a batch; sizes not multiples of 8 round down
    assert lat2["samples"].shape == (6, 4, 12, 9)
    gray = node.generate(torch.rand(64, 96), 1)[0]  # [H,W] gray is one image
    assert gray["samples"].shape == (1, 4, 8, 12)


def test_empty_latent_like_follows_lineart_and_crop_back_restores(C):
    drawing = torch.ones(1, 120, 90, 3)
    drawing[:, 20:100, 20:70] = 0.0
    lineart, _, pad = C.AtelierLineart().extract(drawing, resolution=64)
    latent, w, h = C.AtelierEmptyLatentLike().generate(lineart, 1)
    assert (h, w) == tuple(lineart.shape[1:3]) and h % 64 == 0 and w % 64 == 0
    decoded = torch.rand(1, h, w, 3)  # what VAE Decode gives for that latent
    back, _ = C.AtelierCropBack().crop(decoded, pad, True)
    assert tuple(back.shape[1:3]) == (120, 90)


def test_empty_latent_like_errors(C):
    with pytest.raises(AtelierError, match="smaller than one latent pixel"):
        C.AtelierEmptyLatentLike().generate(torch.rand(1, 4, 64, 3), 1)
    with pytest.raises(AtelierError, match="batch_size"):
        C.AtelierEmptyLatentLike().generate(torch.rand(1, 64, 64, 3), 0)


# ----------------------------------------------------------------------------- style adapter "none"

def test_style_adapter_none_passes_the_conditioning_through(comfy, caplog):
    from comfyui_atelier.nodes import style as N

    spec = N.AtelierStyleAdapterLoader.INPUT_TYPES()["required"]["adapter_name"]
    assert spec[0][0] == "none" and spec[1]["default"] == "none"
    assert N.AtelierStyleAdapterLoader.IS_CHANGED("none") == "none"
    (adapter,) = N.AtelierStyleAdapterLoader().load("none")
    assert adapter is None
    cond = [[torch.rand(1, 77, 768), {"pooled_output": torch.rand(1, 768)}]]
    with caplog.at_level(logging.INFO, logger="atelier"):
        (out,) = N.AtelierStyleConditioningBlend().blend(cond, style=object(), adapter=adapter, strength=0.01)
    assert out is cond
    assert "no trained style adapter" in caplog.text
