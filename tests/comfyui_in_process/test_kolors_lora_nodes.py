"""Kolors LoRAs in the three published formats, applied in a real in-process ComfyUI (both runtimes).

One tiny LoRA (rank 16, alpha 4: DiffSynth-Studio's Kolors recipe, scale 0.25) on five modules of
the tiny Kolors UNet (a self-attention q, a mid-block cross-attention k, an up-block to_out.0, an
up-block ff.net.2 and encoder_hid_proj), written as kohya, diffusers/peft and DiffSynth-Studio keys.
Each must change the UNet's noise prediction exactly as merging W + s * (alpha/rank) * B @ A into
the weights does (max |d| <= 1e-4, fp32), through Atelier Kolors LoRA Loader; the kohya file also
through ComfyUI's own LoraLoaderModelOnly.

DiffSynth block numbers of the tiny UNet, derived by hand from diffsynth/models/sdxl_unet.py's
scheme (Resnet, [Attention], Push per down block; DownSampler + Push between levels; mid Resnet,
Attention, Resnet; Pop, Resnet, [Attention] per up block; UpSampler between levels):
down0 R0 P1 D2 P3 | down1 R4 A5 P6 | mid R7 A8 R9 | up0 P10 R11 A12 P13 R14 A15 U16 | up1 P17 R18 P19 R20.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.fixtures import kolors_models as KM

pytest.importorskip("diffusers")

RANK, ALPHA, STRENGTH = 16, 4.0, 0.8
TARGETS = {  # diffusers module -> DiffSynth module
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": "blocks.5.transformer_blocks.0.attn1.to_q",
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_k": "blocks.8.transformer_blocks.0.attn2.to_k",
    "up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_out.0": "blocks.15.transformer_blocks.0.attn1.to_out",
    "up_blocks.0.attentions.0.transformer_blocks.0.ff.net.2": "blocks.12.transformer_blocks.0.ff",
    "encoder_hid_proj": "text_intermediate_proj",
}


def _pairs(base: dict) -> dict:
    g = torch.Generator().manual_seed(11)
    out = {}
    for mod in TARGETS:
        w = base[mod + ".weight"]
        out[mod] = (torch.randn(RANK, w.shape[1], generator=g) * 0.3, torch.randn(w.shape[0], RANK, generator=g) * 0.3)
    return out


def _files(pairs: dict) -> dict:
    kohya, peft, diffsynth = {}, {}, {}
    for mod, (a, b) in pairs.items():
        k = "lora_unet_" + mod.replace(".", "_")
        kohya.update({f"{k}.lora_down.weight": a, f"{k}.lora_up.weight": b, f"{k}.alpha": torch.tensor(ALPHA)})
        peft.update({f"unet.{mod}.lora_A.weight": a, f"unet.{mod}.lora_B.weight": b, f"unet.{mod}.alpha": torch.tensor(ALPHA)})
        ds = TARGETS[mod]
        diffsynth.update({f"{ds}.lora_A.default.weight": a, f"{ds}.lora_B.default.weight": b})
    return {"kohya": kohya, "diffusers": peft, "diffsynth": diffsynth}


@pytest.fixture(scope="module")
def env(comfy):
    import folder_paths
    from safetensors.torch import save_file
    from comfyui_atelier.nodes import kolors as N
    unet_dir = Path(folder_paths.get_folder_paths([n for n in ("diffusion_models", "unet")
                                                   if n in folder_paths.folder_names_and_paths][0])[0]) / "kolors-lora"
    lora_dir = Path(folder_paths.get_folder_paths("loras")[0])
    lora_dir.mkdir(parents=True, exist_ok=True)
    base = KM.unet_state_dict()
    KM.build_unet(unet_dir / "base.safetensors")
    pairs = _pairs(base)
    merged = dict(base)
    for mod, (a, b) in pairs.items():
        merged[mod + ".weight"] = base[mod + ".weight"] + STRENGTH * (ALPHA / RANK) * (b @ a)
    save_file({k: v.contiguous() for k, v in merged.items()}, str(unet_dir / "merged.safetensors"))
    names = {}
    for fmt, sd in _files(pairs).items():
        name = f"atelier-kolors-lora-{fmt}.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(lora_dir / name))
        names[fmt] = name
    torch.save({"epoch": 3, "state_dict": _files(pairs)["diffsynth"]}, lora_dir / "atelier-kolors-lora-diffsynth.ckpt")
    names["diffsynth-ckpt"] = "atelier-kolors-lora-diffsynth.ckpt"
    return {"N": N, "names": names}


def _predict(patcher):
    import comfy.model_management as mm
    mm.load_models_gpu([patcher])
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 4, 8, 8, generator=g)
    ctx = torch.randn(1, 12, KM.TEXT_HIDDEN, generator=g)
    pooled = torch.randn(1, KM.TEXT_HIDDEN, generator=g)
    m = patcher.model
    with torch.no_grad():
        return m.diffusion_model(x, timesteps=torch.tensor([500.0]), context=ctx,
                                 y=m.encode_adm(pooled_output=pooled, width=64, height=64)).clone()


def _load(N, name):
    return N.AtelierKolorsUNetLoader().load(f"kolors-lora/{name}", "fp32")[0]


def test_diffsynth_block_numbers_match_diffsynth_sdxl_unet():
    from comfyui_atelier.core import kolors_lora as KL
    sdxl = KL.diffsynth_blocks([2, 2, 2], [0, 0, 2, 2, 10, 10], 10, [0, 0, 0, 2, 2, 2, 10, 10, 10])
    # diffsynth/models/sdxl_unet.py: AttentionBlocks at these list positions, 49 blocks in all
    assert sorted(i for i, v in sdxl.items() if ".attentions." in v) == [7, 10, 15, 18, 21, 25, 28, 31, 35, 38, 41]
    assert max(sdxl) == 48 and sdxl[4] == "down_blocks.0.downsamplers.0" and sdxl[32] == "up_blocks.0.upsamplers.0"


@pytest.mark.parametrize("fmt", ["kohya", "diffusers", "diffsynth", "diffsynth-ckpt"])
def test_lora_changes_the_output_exactly_as_merged_weights(env, fmt):
    N = env["N"]
    expected = _predict(_load(N, "merged.safetensors"))
    base_model = _load(N, "base.safetensors")
    base = _predict(base_model)
    (patched,) = N.AtelierKolorsLoraLoader().apply(base_model, env["names"][fmt], STRENGTH, ALPHA)
    got = _predict(patched)
    d = (got - expected).abs().max().item()
    print(f"Kolors LoRA {fmt}: max|lora - merged| {d:.2e}, change {(expected - base).abs().max():.3f}")
    assert (expected - base).abs().max() > 1e-2
    assert d <= 1e-4


def test_kohya_lora_works_in_comfyuis_own_loader(env):
    import nodes
    N = env["N"]
    expected = _predict(_load(N, "merged.safetensors"))
    (patched,) = nodes.LoraLoaderModelOnly().load_lora_model_only(_load(N, "base.safetensors"), env["names"]["kohya"], STRENGTH)
    assert (_predict(patched) - expected).abs().max() <= 1e-4


def test_a_non_kolors_lora_is_refused(env, comfy):
    import folder_paths
    from safetensors.torch import save_file
    from comfyui_atelier.core.errors import AtelierError
    N = env["N"]
    lora_dir = Path(folder_paths.get_folder_paths("loras")[0])
    save_file({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 8),
               "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(8, 4)},
              str(lora_dir / "atelier-kolors-not-unet.safetensors"))
    with pytest.raises(AtelierError) as e:
        N.AtelierKolorsLoraLoader().apply(_load(N, "base.safetensors"), "atelier-kolors-not-unet.safetensors", 1.0, 4.0)
    assert "Atelier Kolors LoRA Loader" in str(e.value) and "lora_name" in str(e.value)


def test_none_passes_the_model_through(env):
    """'none' (the selector's first choice, story_set_kolors' shipped value) needs no file and patches nothing;
    a LoRA file is still listed after it."""
    N = env["N"]
    choices = N.AtelierKolorsLoraLoader.INPUT_TYPES()["required"]["lora_name"]
    assert choices[0][0] == "none" and choices[1]["default"] == "none" and env["names"]["kohya"] in choices[0]
    base = _load(N, "base.safetensors")
    (out,) = N.AtelierKolorsLoraLoader().apply(base, "none", STRENGTH, ALPHA)
    assert out is base and not out.patches
    (patched,) = N.AtelierKolorsLoraLoader().apply(base, env["names"]["kohya"], STRENGTH, ALPHA)
    assert patched.patches and (_predict(patched) - _predict(out)).abs().max() > 1e-4
