"""Kolors core: ChatGLM text encoding vs diffusers' KolorsPipeline path, the schedule, time ids,
the UNet layout reader and its errors (tiny random weights in the published layouts, fp32)."""
from __future__ import annotations

import shutil

import pytest
import torch

from comfyui_atelier.core import kolors as K
from comfyui_atelier.core import kolors_lora as KL
from comfyui_atelier.core.errors import AtelierError
from tests.fixtures import kolors_models as KM

pytest.importorskip("sentencepiece")
diffusers = pytest.importorskip("diffusers")

PROMPTS = ["a cat on a red chair", "一只猫坐在红色的椅子上，光线柔和，电影感", "", "watercolor " * 300,
           "  leading and trailing spaces  "]


@pytest.fixture(scope="module", params=["safetensors", "bin"])
def text_folder(request, tmp_path_factory):
    return KM.build_text_encoder(tmp_path_factory.mktemp(f"te-{request.param}"), fmt=request.param)


def _reference(folder, texts):
    """KolorsPipeline.encode_prompt's computation with diffusers' ChatGLMModel + ChatGLMTokenizer."""
    from diffusers.pipelines.kolors.text_encoder import ChatGLMModel
    from diffusers.pipelines.kolors.tokenizer import ChatGLMTokenizer
    tok = ChatGLMTokenizer.from_pretrained(str(folder))
    model = ChatGLMModel.from_pretrained(str(folder), torch_dtype=torch.float32).eval()
    ti = tok(texts, padding="max_length", max_length=256, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=ti["input_ids"], attention_mask=ti["attention_mask"],
                    position_ids=ti["position_ids"], output_hidden_states=True)
    return ti, out.hidden_states[-2].permute(1, 0, 2), out.hidden_states[-1][-1, :, :]


def test_text_encoding_matches_diffusers(text_folder):
    model, tok, cfg = K.load_text_encoder(str(text_folder))
    assert cfg.num_layers == 3 and cfg.kv_groups == 2
    ti, ctx_ref, pooled_ref = _reference(text_folder, PROMPTS)
    ours = tok(PROMPTS)
    for k in ("input_ids", "attention_mask", "position_ids"):
        assert torch.equal(ours[k], ti[k]), k
    assert int(ours["attention_mask"][3].sum()) == 256          # the long prompt is truncated to the window
    ctx, pooled = K.encode(model, tok, PROMPTS)
    assert ctx.shape == (len(PROMPTS), 256, KM.TEXT_HIDDEN) and pooled.shape == (len(PROMPTS), KM.TEXT_HIDDEN)
    d_ctx, d_pool = (ctx - ctx_ref).abs().max().item(), (pooled - pooled_ref).abs().max().item()
    print(f"ChatGLM parity: context max|d| {d_ctx:.2e}, pooled max|d| {d_pool:.2e}")
    assert d_ctx <= 1e-4 and d_pool <= 1e-4
    # not a vacuous match: prompts give different conditioning, and the padding rows are real outputs
    assert (ctx[0] - ctx[1]).abs().max() > 1e-2 and (pooled[0] - pooled[1]).abs().max() > 1e-2
    assert ctx[0, :200].abs().max() > 1e-2


def test_token_count_and_window(text_folder):
    tok = K.ChatGLMTokenizer(str(text_folder / "tokenizer.model"))
    assert tok.count("") == 2                                   # [gMASK] sop
    assert tok.count("一只猫") == 2 + len(tok.sp.encode("一只猫"))
    assert len(tok.ids("watercolor " * 300)) == K.MAX_TOKENS


def test_schedule_and_time_ids_match_diffusers():
    from diffusers import EulerDiscreteScheduler
    from diffusers.models.embeddings import Timesteps
    sched = EulerDiscreteScheduler(**K.SCHEDULE)
    betas = K.kolors_betas()
    assert betas.shape == (1100,)
    assert torch.allclose(betas.float(), sched.betas.float(), atol=0, rtol=1e-5)  # diffusers: fp32 linspace
    ids = torch.tensor([[1024., 1024., 0., 0., 1024., 1024.], [768., 1344., 16., 32., 768., 1344.]])
    ref = Timesteps(256, True, 0)(ids.flatten()).reshape(2, -1)
    assert (K.time_ids_embedding(ids) - ref).abs().max() < 1e-5
    assert K.ADM_IN == 5632


def test_unet_layout_reads_the_published_keys():
    sd = KM.unet_state_dict()
    lay = K.unet_layout(sd)
    assert (lay.text_dim, lay.context_dim, lay.adm_in, lay.time_embed_dim) == (KM.TEXT_HIDDEN, KM.CONTEXT, KM.TEXT_HIDDEN + 1536, 256)
    c = lay.unet_config
    assert c["model_channels"] == 64 and c["channel_mult"] == [1, 2] and c["num_res_blocks"] == [1, 1]
    assert c["transformer_depth"] == [0, 1] and c["transformer_depth_middle"] == 1
    assert c["transformer_depth_output"] == [0, 0, 1, 1]        # shallow level first, as ComfyUI pops it
    assert c["context_dim"] == KM.CONTEXT and c["adm_in_channels"] == KM.TEXT_HIDDEN + 1536


@pytest.mark.parametrize("drop,words", [("encoder_hid_proj.", "encoder_hid_proj"), ("add_embedding.", "add_embedding"),
                                        ("conv_in.", "conv_in")])
def test_unet_layout_refuses_other_unets(drop, words):
    sd = {k: v for k, v in KM.unet_state_dict().items() if not k.startswith(drop)}
    with pytest.raises(AtelierError) as e:
        K.unet_layout(sd)
    msg = str(e.value)
    assert words in msg and K.NODE_UNET in msg and "unet_name" in msg and "Fix:" in msg


def test_unet_layout_refuses_ldm_checkpoints():
    with pytest.raises(AtelierError, match="ldm"):
        K.unet_layout({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)})


def test_text_encoder_folder_errors(tmp_path, text_folder):
    with pytest.raises(AtelierError, match="not a folder"):
        K.text_encoder_files(str(tmp_path / "nope"))
    broken = tmp_path / "te"
    shutil.copytree(text_folder, broken)
    (broken / "tokenizer.model").unlink()
    with pytest.raises(AtelierError, match="tokenizer.model"):
        K.text_encoder_files(str(broken))
    shutil.copy(text_folder / "tokenizer.model", broken / "tokenizer.model")
    shard = sorted(p for p in broken.iterdir() if "00002" in p.name)[0]
    shard.unlink()
    with pytest.raises(AtelierError, match="absent") as e:
        K.text_encoder_files(str(broken))
    assert K.NODE_TE in str(e.value)


def test_lora_formats_convert_to_the_same_kohya_keys():
    a, b = torch.randn(16, 128), torch.randn(128, 16)
    mod = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0"
    kohya_name = "lora_unet_" + mod.replace(".", "_")
    blocks = KL.diffsynth_blocks([1, 1], [0, 1], 1, [0, 0, 1, 1])
    files = {
        "diffusers": {f"unet.{mod}.lora_A.weight": a, f"unet.{mod}.lora_B.weight": b},
        "diffsynth": {"blocks.5.transformer_blocks.0.attn1.to_out.lora_A.default.weight": a,
                      "blocks.5.transformer_blocks.0.attn1.to_out.lora_B.default.weight": b},
    }
    for fmt, sd in files.items():
        assert KL.lora_format(sd) == fmt
        out, got_fmt, unmapped = KL.lora_to_kohya(sd, blocks, 4.0 if fmt == "diffsynth" else None)
        assert got_fmt == fmt and not unmapped
        assert torch.equal(out[f"{kohya_name}.lora_down.weight"], a) and torch.equal(out[f"{kohya_name}.lora_up.weight"], b)
        assert float(out[f"{kohya_name}.alpha"]) == (4.0 if fmt == "diffsynth" else 16.0)   # no alpha: rank (scale 1)
    kohya = {f"{kohya_name}.lora_down.weight": a, f"{kohya_name}.lora_up.weight": b, f"{kohya_name}.alpha": torch.tensor(8.0)}
    assert KL.lora_to_kohya(kohya)[0] is not kohya and KL.lora_format(kohya) == "kohya"
    with pytest.raises(AtelierError, match="LoRA"):
        KL.lora_format({"conv_in.weight": a})


def test_incomplete_weights_are_refused(tmp_path, text_folder):
    broken = tmp_path / "te-half"
    shutil.copytree(text_folder, broken)
    for p in broken.glob("*.index.json"):
        p.unlink()                                   # no index: every weight file in the folder is read
    sorted(p for p in broken.iterdir() if "00002" in p.name)[0].unlink()
    with pytest.raises(AtelierError, match="lack") as e:
        K.load_text_encoder(str(broken))
    assert "text_encoder" in str(e.value) and "shard" in str(e.value)


def test_prompt_report_in_chatglm_tokens_against_256():
    """core.prompt with KOLORS_TOKENS: counts against 256, no chunks, text past the window reported as cut."""
    from comfyui_atelier.core import presets as PR
    from comfyui_atelier.core import prompt as P

    preset = PR.get_preset(PR.load_presets([PR.SHIPPED_PRESET_DIR]), "e-commerce white background")
    chars = lambda t: 2 + sum(1 for ch in t if not ch.isspace())   # a stand-in tokenizer: [gMASK] sop + one per char
    short = P.build_prompts("红色运动鞋，白色背景", preset, count_tokens=chars, tokens=P.KOLORS_TOKENS)
    line = next(ln for ln in short.report.splitlines() if ln.startswith("tokens:"))
    assert line == (f"tokens: positive {chars(short.positive)}/256, negative {chars(short.negative)}/256 "
                    "(ChatGLM tokens)")
    assert short.positive_tokens.unit == "ChatGLM" and short.positive_tokens.cuts and not short.warnings
    long = P.build_prompts("，".join(["一只猫坐在红色的椅子上"] * 30), preset, count_tokens=chars, tokens=P.KOLORS_TOKENS)
    assert chars(long.positive) > 256 and "/256 (cut)" in long.report and "chunks" not in long.report
    (w,) = [w for w in long.warnings if "positive prompt" in w]
    assert "ChatGLM tokens, over the 256-token window" in w and "is cut" in w
    # the CLIP default is unchanged: chunks of 75, no unit named
    clip = P.build_prompts("，".join(["一只猫坐在红色的椅子上"] * 30), preset, count_tokens=chars)
    assert "/75 (" in clip.report and "chunks" in clip.report and "ChatGLM" not in clip.report
