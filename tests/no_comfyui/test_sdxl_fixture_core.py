"""The tiny SDXL builder's pieces that need no ComfyUI: the streaming safetensors writer and the key layouts
(the files themselves are checked against ComfyUI's detection in tests/comfyui_server/test_sdxl_e2e.py)."""
from __future__ import annotations

import struct

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.fixtures import sdxl_models as SX


def test_streamed_file_is_a_safetensors_file_with_materialise_weights(tmp_path):
    spec = dict(list(SX.controlnet_spec().items())[:12])
    spec["conditioner.embedders.1.model.logit_scale"] = ()
    path = tmp_path / "x.safetensors"
    size = SX.write_safetensors(path, spec, seed=3, metadata={"atelier.version": 1})
    assert path.stat().st_size == size
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert (8 + n) % 8 == 0  # data 8-byte aligned, as safetensors writes it
    got = load_file(str(path))
    assert set(got) == set(spec)
    for i, (k, shape) in enumerate(spec.items()):
        want = SX.materialise({k: shape}, 3 * 1_000_003 + i)[k]
        assert got[k].dtype == torch.float16 and tuple(got[k].shape) == tuple(shape)
        assert torch.equal(got[k], want), k
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"atelier.version": "1"}
    # The same seed gives the same bytes.
    SX.write_safetensors(tmp_path / "y.safetensors", spec, seed=3, metadata={"atelier.version": 1})
    assert (tmp_path / "y.safetensors").read_bytes() == path.read_bytes()


def test_checkpoint_layout_is_sgm_single_file():
    spec = SX.checkpoint_spec()
    prefixes = {"model.diffusion_model.", "conditioner.embedders.0.transformer.text_model.",
                "conditioner.embedders.1.model.", "first_stage_model."}
    assert all(any(k.startswith(p) for p in prefixes) for k in spec)
    g = "conditioner.embedders.1.model."
    assert spec[f"{g}transformer.resblocks.31.attn.in_proj_weight"] == (3840, 1280)
    assert spec[f"{g}text_projection"] == (1280, 1280) and spec[f"{g}positional_embedding"] == (77, 1280)
    assert spec[f"{g}token_embedding.weight"] == (49408, 1280) and f"{g}ln_final.weight" in spec
    assert spec["conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc1.weight"] == (3072, 768)
    u = "model.diffusion_model."
    assert spec[f"{u}label_emb.0.0.weight"] == (1280, 2816)
    assert spec[f"{u}input_blocks.8.1.transformer_blocks.1.attn2.to_k.weight"] == (1280, 2048)
    assert spec[f"{u}input_blocks.4.1.proj_in.weight"] == (640, 640)  # linear: use_linear_in_transformer
    assert not any(k.startswith(f"{u}middle_block") for k in spec)
    assert spec[f"{u}out.2.weight"] == (4, 320, 3, 3)
    # Text encoders at their standard sizes; the whole file stays under 3 GB in fp16.
    assert 810e6 < SX.n_params(SX.clip_l_spec()) + SX.n_params(SX.clip_g_spec()) < 830e6
    assert 2 * SX.n_params(spec) < 3e9


def test_controlnet_layout_is_diffusers():
    spec = SX.controlnet_spec()
    assert spec["controlnet_cond_embedding.conv_in.weight"] == (16, 3, 3, 3)
    assert spec["controlnet_cond_embedding.conv_out.weight"] == (320, 256, 3, 3)
    assert spec["add_embedding.linear_1.weight"] == (1280, 2816)
    zero = [spec[f"controlnet_down_blocks.{i}.weight"][0] for i in range(9)]
    assert zero == [320, 320, 320, 320, 640, 640, 640, 1280, 1280]
    assert "controlnet_down_blocks.9.weight" not in spec and spec["controlnet_mid_block.weight"][0] == 1280
    assert not any(".attentions." in k and k.startswith("down_blocks") for k in spec)
