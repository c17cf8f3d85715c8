"""Kolors nodes in a real in-process ComfyUI (pinned runtime and 0.3.64): the tiny Kolors UNet and
ChatGLM through the pack's loaders, against diffusers on identical weights (fp32).

- noise prediction: ComfyUI's UNetModel + our encoder_hid_proj + our adm vs diffusers'
  UNet2DConditionModel (encoder_hid_proj "text_proj", "text_time" add embedding), same latent,
  timestep, ChatGLM context, pooled state and time ids: max |d| <= 1e-4;
- the noise schedule ComfyUI samples with = diffusers' EulerDiscreteScheduler from Kolors' config;
- CLIPTextEncode over the loaded CLIP = KolorsPipeline's encode_prompt path (core parity is in
  tests/no_comfyui/test_kolors_core.py);
- the MODEL is a ModelPatcher over an SDXL-class model_base, loaded by model management;
- a non-Kolors UNet file and a missing text-encoder folder give errors naming node and input.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.fixtures import kolors_models as KM

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("sentencepiece")

UNET = "atelier-kolors-tiny-unet.safetensors"
NOT_KOLORS = "atelier-kolors-tiny-sdxl-like.safetensors"
TE = "atelier-kolors-tiny-te"


@pytest.fixture(scope="module")
def env(comfy):
    import folder_paths
    from safetensors.torch import save_file
    names = [n for n in ("diffusion_models", "unet") if n in folder_paths.folder_names_and_paths]
    unet_dir = Path(folder_paths.get_folder_paths(names[0])[0])
    te_names = [n for n in ("text_encoders", "clip") if n in folder_paths.folder_names_and_paths]
    te_dir = Path(folder_paths.get_folder_paths(te_names[0])[0])
    KM.build_unet(unet_dir / "kolors-tiny" / UNET)
    sd = {k: v for k, v in KM.unet_state_dict().items() if not k.startswith("encoder_hid_proj.")}
    save_file(sd, str(unet_dir / NOT_KOLORS))
    KM.build_text_encoder(te_dir / TE)
    from comfyui_atelier.nodes import kolors as N
    return {"N": N, "unet": f"kolors-tiny/{UNET}"}


def _diffusers_unet():
    from diffusers import UNet2DConditionModel
    m = UNet2DConditionModel(**KM.unet_config())
    m.load_state_dict(KM.unet_state_dict())
    return m.eval()


def test_selectors_list_the_tiny_files(env):
    N = env["N"]
    unet_names = N.AtelierKolorsUNetLoader.INPUT_TYPES()["required"]["unet_name"][0]
    assert env["unet"] in unet_names
    assert TE in N.AtelierKolorsTextEncoderLoader.INPUT_TYPES()["required"]["text_encoder"][0]


def test_unet_noise_prediction_matches_diffusers(env):
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    N = env["N"]
    (patcher,) = N.AtelierKolorsUNetLoader().load(env["unet"], "fp32")
    assert isinstance(patcher, comfy.model_patcher.ModelPatcher)
    model = patcher.model
    assert isinstance(model, comfy.model_base.SDXL) and isinstance(model, N.KolorsModel)
    mm.load_models_gpu([patcher])
    assert any(getattr(lm, "model", None) is patcher for lm in mm.current_loaded_models)

    g = torch.Generator().manual_seed(3)
    B, h, w = 2, 8, 12
    x = torch.randn(B, 4, h, w, generator=g)
    ctx = torch.randn(B, 19, KM.TEXT_HIDDEN, generator=g)
    pooled = torch.randn(B, KM.TEXT_HIDDEN, generator=g)
    t = torch.tensor([999.0, 37.0])
    H, W = h * 8, w * 8
    time_ids = torch.tensor([[H, W, 0, 0, H, W]] * B, dtype=torch.float32)
    with torch.no_grad():
        ref = _diffusers_unet()(x, t, encoder_hidden_states=ctx,
                                added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        adm = model.encode_adm(pooled_output=pooled, width=W, height=H)
        ours = model.diffusion_model(x, timesteps=t, context=ctx, y=adm)
    d = (ours - ref).abs().max().item()
    print(f"Kolors UNet parity (ComfyUI UNetModel + projection vs diffusers): max|d| {d:.2e}, |ref| {ref.abs().max():.2f}")
    assert d <= 1e-4
    assert ref.abs().max() > 0.1 and (ref[0] - ref[1]).abs().max() > 1e-2


def test_noise_schedule_is_kolors(env):
    from diffusers import EulerDiscreteScheduler
    from comfyui_atelier.core import kolors as K
    (patcher,) = env["N"].AtelierKolorsUNetLoader().load(env["unet"], "fp32")
    ms = patcher.model.model_sampling
    sched = EulerDiscreteScheduler(**K.SCHEDULE)
    ref = ((1 - sched.alphas_cumprod) / sched.alphas_cumprod) ** 0.5
    assert ms.sigmas.shape == (1100,)
    assert torch.allclose(ms.sigmas.float(), ref.float(), rtol=1e-4, atol=0)
    assert abs(float(ms.sigma_max) - 14.61) > 0.01 and float(ms.timestep(ms.sigmas[1099:])) == 1099


def test_clip_text_encode_gives_kolors_conditioning(env):
    import nodes
    from comfyui_atelier.core import kolors as K
    N = env["N"]
    (clip,) = N.AtelierKolorsTextEncoderLoader().load(TE, "fp32", "default")
    enc = nodes.CLIPTextEncode()
    texts = ["a cat on a red chair", "一只猫坐在红色的椅子上，电影感"]
    model, tok, _ = K.load_text_encoder(str(N.text_encoder_folders()[TE]))
    for text in texts:
        (cond,) = enc.encode(clip, text)
        c, extra = cond[0]
        assert c.shape == (1, 256, KM.TEXT_HIDDEN) and extra["pooled_output"].shape == (1, KM.TEXT_HIDDEN)
        rc, rp = K.encode(model, tok, [text])
        assert (c - rc).abs().max() <= 1e-4 and (extra["pooled_output"] - rp).abs().max() <= 1e-4
    # the pack's token counter (system prompt nodes) counts the prompt's own ChatGLM tokens
    from comfyui_atelier.nodes.prompt import clip_token_counter
    assert clip_token_counter(clip)(texts[1]) == len(tok.sp.encode(texts[1]))


def test_system_prompt_encode_reports_chatglm_tokens_for_a_chinese_prompt(env):
    """Atelier System Prompt (encode) on the Kolors CLIP: a Chinese prompt's phrases (split at ，、；。：) are
    merged with the preset's, both sides are encoded to Kolors conditioning, and the report counts ChatGLM
    tokens ([gMASK] sop included) against Kolors' 256-token window; a prompt past 256 is reported as cut."""
    from comfyui_atelier.core import kolors as K
    from comfyui_atelier.nodes import prompt as P
    N = env["N"]
    (clip,) = N.AtelierKolorsTextEncoderLoader().load(TE, "fp32", "default")
    tok = K.ChatGLMTokenizer(str(Path(N.text_encoder_folders()[TE]) / "tokenizer.model"))
    user = "红色运动鞋；pure white background、bright。柔和的光：高清"
    out = P.AtelierSystemPromptEncode().run(clip, user, "e-commerce white background", "preset default", "")
    pos_c, neg_c, positive, negative, report = out["result"]
    # phrase splitting on the Chinese punctuation: the preset's phrases already in the prompt are not repeated
    assert positive.lower().count("pure white background") == 1 and positive.count("bright") == 1
    assert "红色运动鞋；pure white background、bright。柔和的光：高清" in positive
    assert "already in prompt: pure white background, bright" in report
    # token report in ChatGLM tokens against 256, the counts of the Kolors tokenizer itself
    line = next(ln for ln in report.splitlines() if ln.startswith("tokens:"))
    assert line == (f"tokens: positive {tok.count(positive)}/256, negative {tok.count(negative)}/256 "
                    "(ChatGLM tokens)"), line
    assert "WARNING" not in report
    for cond, text in ((pos_c, positive), (neg_c, negative)):
        c, extra = cond[0]
        assert c.shape == (1, 256, KM.TEXT_HIDDEN) and extra["pooled_output"].shape == (1, KM.TEXT_HIDDEN)
        ref_c, _ = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        assert (c - ref_c).abs().max() == 0
    # past the window: the warning says the text is cut, naming the first words past token 256
    long = "，".join(["一只猫坐在红色的椅子上"] * 40 + ["最后的水彩画"])
    assert tok.count(long) > 256
    out = P.AtelierSystemPromptEncode().run(clip, long, "e-commerce white background", "preset default", "")
    positive, report = out["result"][2], out["result"][4]
    assert f"positive prompt is {tok.count(positive)} ChatGLM tokens, over the 256-token window" in report
    assert "is cut" in report and "/256 (cut)" in report
    from comfyui_atelier.core import prompt as core
    rep = core.token_report(positive, tok.count, 256, "ChatGLM", True)
    kept = positive[:len(positive) - len(rep.overflow)]
    assert rep.overflow and positive.endswith(rep.overflow) and "最后的水彩画" in rep.overflow
    assert tok.count(kept.rstrip("，")) <= 256 < tok.count(positive)
    assert rep.overflow[:40] in report


def test_non_kolors_unet_is_refused_with_a_clear_error(env):
    from comfyui_atelier.core.errors import AtelierError
    with pytest.raises(AtelierError) as e:
        env["N"].AtelierKolorsUNetLoader().load(NOT_KOLORS, "default")
    msg = str(e.value)
    assert "Atelier Kolors UNet Loader" in msg and "unet_name" in msg and "encoder_hid_proj" in msg and "Fix:" in msg


def test_missing_text_encoder_folder_is_explained(env):
    from comfyui_atelier.core.errors import AtelierError
    with pytest.raises(AtelierError, match="text_encoder") as e:
        env["N"].AtelierKolorsTextEncoderLoader().load("no-such-folder", "default", "default")
    assert "Atelier Kolors Text Encoder Loader" in str(e.value)


def test_node_definitions(env):
    N = env["N"]
    assert set(N.NODE_CLASS_MAPPINGS) == {"AtelierKolorsUNetLoader", "AtelierKolorsTextEncoderLoader",
                                        "AtelierKolorsLoraLoader", "AtelierKolorsControlNetLoader"}
    for cid, cls in N.NODE_CLASS_MAPPINGS.items():
        assert cls.CATEGORY == "atelier/kolors" and cls.DISPLAY.startswith("Atelier Kolors ")
        assert N.NODE_DISPLAY_NAME_MAPPINGS[cid] == cls.DISPLAY
        for group in cls.INPUT_TYPES().values():
            for name, (typ, opts) in group.items():
                assert opts.get("tooltip"), f"{cid}.{name} has no tooltip"
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
    # the memory a full-size Kolors needs is stated where the user picks the files
    assert "5.2 GB" in N.AtelierKolorsUNetLoader.DESCRIPTION and "12.0 GB" in N.AtelierKolorsTextEncoderLoader.DESCRIPTION
