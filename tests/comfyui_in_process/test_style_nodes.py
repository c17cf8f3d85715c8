"""Style nodes with ComfyUI's own types: the tiny SD1.5 checkpoint's VAE / CLIP / model, LoraLoader."""
from __future__ import annotations

import os

import pytest
import torch

from comfyui_atelier.core import style as S
from comfyui_atelier.core.errors import AtelierError
from tests.fixtures import style_models as SM

RES = 64


@pytest.fixture(scope="module")
def N(comfy):
    from comfyui_atelier.nodes import style
    return style


@pytest.fixture(scope="module")
def sd15(comfy, tiny_sd15):
    import comfy.sd
    with torch.no_grad():  # as ComfyUI's executor does
        model, clip, vae = comfy.sd.load_checkpoint_guess_config(
            str(tiny_sd15["checkpoints"]), output_vae=True, output_clip=True)[:3]
    return model, clip, vae


@pytest.fixture(scope="module")
def refs():
    return torch.stack([SM.style_image(i, 64, 64) for i in range(2)])


@pytest.fixture(scope="module")
def style(N, sd15, refs):
    return N.AtelierStyleEncode().encode(refs, sd15[2], RES, "center", name="style07")[0]


def _encode_text(clip, text):
    import nodes as comfy_nodes
    with torch.no_grad():
        return comfy_nodes.CLIPTextEncode().encode(clip, text)[0]


@pytest.fixture(scope="module")
def cat_cond(sd15):
    return _encode_text(sd15[1], "a cat, style07")


def _adapter_file(comfy, name, ctx=768, seed=0, trained=True) -> str:
    torch.manual_seed(seed)
    a = S.StyleAdapter(context_dim=ctx, feature_size=RES // 8)
    if trained:
        for p in a.parameters():
            torch.nn.init.normal_(p, std=0.05)
    d = comfy.models_dir / "style_adapters"
    d.mkdir(parents=True, exist_ok=True)
    S.save_adapter(a, d / name)
    return name


def test_registration_and_tooltips(N):
    assert len(N.NODE_CLASS_MAPPINGS) == 7
    for cid, cls in N.NODE_CLASS_MAPPINGS.items():
        assert cid.startswith("Atelier") and N.NODE_DISPLAY_NAME_MAPPINGS[cid].startswith("Atelier ")
        assert cls.CATEGORY == "atelier/style" and cls.DESCRIPTION
        for section in cls.INPUT_TYPES().values():
            for name, (typ, *opts) in section.items():
                assert opts and opts[0].get("tooltip"), f"{cid}.{name} has no tooltip"
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)


def test_encode_gives_the_comfy_vae_distribution(style, sd15, refs):
    from comfy.ldm.modules.distributions.distributions import DiagonalGaussianDistribution
    fsm = sd15[2].first_stage_model
    dt = next(fsm.parameters()).dtype
    with torch.no_grad():
        px = torch.cat([S.prepare_image(im, RES) for im in refs]).to(dt)
        dist = DiagonalGaussianDistribution(fsm.quant_conv(fsm.encoder(px)).float())
    assert style.count == 2 and style.mu.shape == (4, RES // 8, RES // 8)
    assert torch.allclose(style.mu, dist.mean.mean(0), atol=1e-4)
    assert torch.allclose(style.sigma, dist.std.mean(0), atol=1e-4)


def test_encode_mixed_sizes_gray_and_rgba(N, sd15):
    vae = sd15[2]
    gray = SM.style_image(5, 40, 72, channels=1).unsqueeze(0)
    rgba = SM.style_image(6, 96, 48, channels=4).unsqueeze(0)
    s = N.AtelierStyleEncode().encode(gray, vae, RES, "pad", images_2=rgba)[0]
    assert s.count == 2 and torch.isfinite(s.mu).all()


def test_encode_zero_images_error(N, sd15):
    with pytest.raises(AtelierError, match=r"\[Atelier Style Encode\] input 'images': no style images"):
        N.AtelierStyleEncode().encode(torch.zeros(0, 64, 64, 3), sd15[2], RES, "center")


def test_save_load_bit_exact(N, style):
    path = N.AtelierStyleSave().save(style, "tests/style07")["result"][0]
    assert path.endswith(os.path.join("atelier_styles", "tests", "style07.style.safetensors"))
    assert "tests/style07.style.safetensors" in N.style_files()
    back = N.AtelierStyleLoad().load("tests/style07.style.safetensors")[0]
    for k in ("mu", "sigma", "channel_mean", "channel_std"):
        assert torch.equal(getattr(style, k), getattr(back, k))
    with pytest.raises(AtelierError, match="not a usable style file name"):
        N.AtelierStyleSave().save(style, "../escape")
    with pytest.raises(AtelierError, match="was not found"):
        N.AtelierStyleLoad().load("missing.style.safetensors")


def test_blend_with_real_conditioning(N, comfy, cat_cond, style):
    cond = cat_cond
    name = _adapter_file(comfy, "test_style_768.safetensors")
    assert name in N.adapter_files()
    adapter = N.AtelierStyleAdapterLoader().load(name)[0]
    assert N.AtelierStyleAdapterLoader().load(name)[0] is adapter  # cached by path + mtime
    out = N.AtelierStyleConditioningBlend().blend(cond, style, adapter, 0.01)[0]
    assert len(out) == len(cond)
    for (t0, d0), (t1, d1) in zip(cond, out):
        assert t1.shape == t0.shape and not torch.equal(t0, t1)
        assert set(d1) == set(d0)
        for k in d0:
            assert d1[k] is d0[k]  # pooled_output and every other key untouched
    same = N.AtelierStyleConditioningBlend().blend(cond, style, adapter, 0.0)[0]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(cond, same))


def test_zero_initialised_adapter_changes_nothing(N, comfy, cat_cond, style):
    cond = cat_cond
    adapter = N.AtelierStyleAdapterLoader().load(_adapter_file(comfy, "fresh_768.safetensors", trained=False))[0]
    out = N.AtelierStyleConditioningBlend().blend(cond, style, adapter, 1.0)[0]
    assert torch.equal(out[0][0], cond[0][0])


def test_adapter_for_another_width(N, comfy, cat_cond, style):
    cond = cat_cond
    adapter = N.AtelierStyleAdapterLoader().load(_adapter_file(comfy, "sd2_1024.safetensors", ctx=1024))[0]
    with pytest.raises(AtelierError) as ei:
        N.AtelierStyleConditioningBlend().blend(cond, style, adapter, 0.01)
    msg = str(ei.value)
    assert "Atelier Style Conditioning Blend" in msg and "1024" in msg and "768" in msg


def test_missing_adapter_file(N):
    with pytest.raises(AtelierError, match="style_adapters"):
        N.AtelierStyleAdapterLoader().load("nope.safetensors")


def test_latent_match_node(N, style):
    lat = {"samples": torch.randn(2, 4, 8, 8) * 2, "batch_index": [0, 1]}
    out = N.AtelierStyleLatentMatch().match(lat, style, 1.0)[0]
    assert out["batch_index"] == [0, 1]
    x = out["samples"]
    assert torch.allclose(x.mean(dim=(2, 3)), style.channel_mean.expand(2, -1), atol=1e-4)
    assert torch.allclose(x.std(dim=(2, 3), unbiased=False), style.channel_std.expand(2, -1), atol=1e-4)
    assert torch.equal(N.AtelierStyleLatentMatch().match(lat, style, 0.0)[0]["samples"], lat["samples"])


def test_latent_match_rejects_other_channel_count(N, style):
    with pytest.raises(AtelierError, match="4 latent channels but the latent has 16"):
        N.AtelierStyleLatentMatch().match({"samples": torch.randn(1, 16, 8, 8)}, style, 1.0)


def test_guidance_patch_changes_sampling(N, sd15, cat_cond, style):
    import nodes as comfy_nodes
    model = sd15[0]
    pos = neg = cat_cond
    lat = {"samples": torch.zeros(1, 4, 8, 8)}

    @torch.no_grad()
    def run(m):
        return comfy_nodes.common_ksampler(m, 3, 1, 1.0, "euler", "normal", pos, neg, lat, denoise=1.0)[0]["samples"]

    plain = run(model)
    guided_model = N.AtelierStyleGuidance().patch(model, style, 1.0, 1.0)[0]
    assert guided_model is not model and "sampler_post_cfg_function" in guided_model.model_options
    guided = run(guided_model)
    assert not torch.allclose(plain, guided)
    # strength 1 on the last step: the result carries the style's statistics in raw latent space
    assert torch.allclose(guided.mean(dim=(2, 3))[0], style.channel_mean, atol=0.05)
    off = N.AtelierStyleGuidance().patch(model, style, 0.0, 1.0)[0]
    assert torch.equal(run(off), plain)


def test_trainer_outputs_load_in_nodes_and_lora_loader(N, comfy, sd15, cat_cond, tmp_path):
    pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    import comfy.lora as comfy_lora
    import nodes as comfy_nodes
    from comfyui_atelier.core import style_train as T

    comps = SM.tiny_diffusers_components(tmp_path, comfy_compatible=True)
    cfg = T.TrainConfig(images=str(SM.write_style_images(tmp_path / "imgs", n=2)), output=str(tmp_path / "out"),
                        name="nodetest", style_token="style07", steps=2, resolution=64, style_resolution=64,
                        checkpoint_every=0, device="cpu", progress=False, lr=1e-2, adapter_lr=1e-3)
    res = T.train_style(cfg, comps)
    # adapter + style in our nodes
    adir = comfy.models_dir / "style_adapters"
    adir.mkdir(parents=True, exist_ok=True)
    os.replace(res["adapter"], adir / "nodetest_adapter.safetensors")
    os.replace(res["style"], adir / "nodetest.style.safetensors")
    adapter = N.AtelierStyleAdapterLoader().load("nodetest_adapter.safetensors")[0]
    style = N.AtelierStyleLoad().load("nodetest.style.safetensors")[0]
    out = N.AtelierStyleConditioningBlend().blend(cat_cond, style, adapter, 0.01)[0]
    assert out[0][0].shape == cat_cond[0][0].shape

    # the LoRA through ComfyUI's own key maps: every module in the file is recognised...
    from safetensors.torch import load_file
    lora_sd = load_file(str(res["lora"]))
    modules = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in lora_sd}
    model, clip = sd15[0], sd15[1]
    key_map = comfy_lora.model_lora_keys_unet(model.model, {})
    key_map = comfy_lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    patches = comfy_lora.load_lora(lora_sd, key_map)
    assert len(patches) == len(modules), sorted(modules - {k for k in key_map if key_map[k] in patches})
    assert any(k.startswith("lora_te_") for k in modules) and any(k.startswith("lora_unet_") for k in modules)

    # ...and LoraLoader applies it: patched weights differ from the originals
    ldir = comfy.models_dir / "loras"
    ldir.mkdir(parents=True, exist_ok=True)
    os.replace(res["lora"], ldir / "nodetest_lora.safetensors")
    m2, c2 = comfy_nodes.LoraLoader().load_lora(model, clip, "nodetest_lora.safetensors", 1.0, 1.0)
    key = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    assert key in m2.patches
    import comfy.model_management as mm
    mm.unload_all_models()  # start from unpatched weights, whichever patcher loaded them last
    before = model.model.state_dict()[key].clone()
    with torch.no_grad():
        mm.load_models_gpu([m2])  # the path KSampler takes: patches the weights
        try:
            after = m2.model.state_dict()[key].clone()
        finally:
            mm.unload_all_models()
    assert not torch.equal(before, after)
    te_key = "clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
    assert any(te_key in k for k in c2.patcher.patches)
