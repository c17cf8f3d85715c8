"""NaN/inf inputs and unclear-error cases for the aesthetic, style and prompt nodes (in-process ComfyUI)."""
from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from comfyui_atelier.core.errors import AtelierError
from tests.fixtures import aesthetic_models as FX

NAN, INF = float("nan"), float("inf")
HF_NAME = "tiny-hardening-predictor"


@pytest.fixture(scope="module")
def AN(comfy):
    from comfyui_atelier.nodes import aesthetic
    return aesthetic


@pytest.fixture(scope="module")
def SN(comfy):
    from comfyui_atelier.nodes import style
    return style


@pytest.fixture(scope="module")
def PN(comfy):
    from comfyui_atelier.nodes import prompt
    return prompt


@pytest.fixture(scope="module")
def aes_folder(comfy, tmp_path_factory):
    import folder_paths
    folder = Path(folder_paths.get_folder_paths("aesthetic")[0])
    folder.mkdir(parents=True, exist_ok=True)
    src = FX.build_hf_predictor(str(tmp_path_factory.mktemp("hardening") / HF_NAME), layout="linear", seed=9)
    if not (folder / HF_NAME).exists():
        shutil.copytree(src, folder / HF_NAME)
    return folder


def _listed(cls, **kw):
    return getattr(cls(), cls.FUNCTION)(**{k: (v if isinstance(v, list) else [v]) for k, v in kw.items()})


def _nan_batch(n=8, bad=(1, 4, 6)):
    x = FX.sample_images(n, 40, 48, seed=2)
    for i in bad:
        x[i, 3, 5, 0] = NAN if i % 2 else INF
    return x


# --------------------------------------------------------------------------- aesthetic family
def test_scorer_refuses_nan_images(AN, aes_folder):
    (m,) = AN.AtelierAestheticLoader().load(HF_NAME)
    with pytest.raises(AtelierError) as e:
        AN.AtelierAestheticScorer().score([m], [_nan_batch()])
    msg = str(e.value)
    assert msg.startswith("[Atelier Aesthetic Scorer] input 'images': 3 of 8 images (#1, #4, #6) contain NaN/inf")
    assert "--fp32-vae" in msg
    # all-NaN set, arriving as a list of batches
    with pytest.raises(AtelierError, match=r"4 of 4 images \(#0, #1, #2, #3\) contain NaN/inf pixels"):
        AN.AtelierAestheticScorer().score([m], [torch.full((2, 32, 32, 3), NAN), torch.full((2, 32, 32, 3), NAN)])
    out = AN.AtelierAestheticScorer().score([m], [FX.sample_images(2, 40, 48, seed=3)])["result"][0]
    assert len(out) == 2 and all(isinstance(v, float) for v in out)


def test_set_gate_nan_scores_or_images_never_pass(AN):
    imgs = FX.sample_images(4, 16, 16, seed=1)
    for scores in ([NAN] * 4, [9.0, 9.0, NAN, 9.0], [9.0, INF, 9.0, 9.0]):
        out = _listed(AN.AtelierAestheticSetGate, images=imgs, scores=scores, threshold=-100.0, on_fail="continue")
        _, passed, _, report = out["result"]
        assert passed is False and "FAIL" in report and "NaN" in report
        assert out["ui"]["atelier_gate"][0]["passed"] is False
        assert None in out["ui"]["atelier_scores"]  # JSON-safe UI message
        with pytest.raises(AtelierError, match=r"\[Atelier Aesthetic Set Gate\] input 'scores': set rejected: "):
            _listed(AN.AtelierAestheticSetGate, images=imgs, scores=scores, threshold=-100.0, on_fail="stop workflow")
    nan_imgs = torch.full((4, 16, 16, 3), NAN)
    out = _listed(AN.AtelierAestheticSetGate, images=nan_imgs, scores=[9.0] * 4, threshold=6.0, on_fail="continue")
    assert out["result"][1] is False
    with pytest.raises(AtelierError, match=r"input 'images': set rejected: 4 of 4 images"):
        _listed(AN.AtelierAestheticSetGate, images=nan_imgs, scores=[9.0] * 4, threshold=6.0, on_fail="stop workflow")
    for thr in (NAN, INF, -INF):
        with pytest.raises(AtelierError, match=r"\[Atelier Aesthetic Set Gate\] input 'threshold': got (NaN|\+inf|-inf)"):
            _listed(AN.AtelierAestheticSetGate, images=imgs, scores=[9.0] * 4, threshold=thr, on_fail="continue")
    assert _listed(AN.AtelierAestheticSetGate, images=imgs, scores=[9.0] * 4, threshold=6.0,
                   on_fail="continue")["result"][1] is True


def test_set_gate_message_prints_what_decided_it(AN):
    imgs = FX.sample_images(2, 16, 16, seed=1)
    with pytest.raises(AtelierError) as e:
        _listed(AN.AtelierAestheticSetGate, images=imgs, scores=[15.55468, 15.55468], threshold=15.5547,
                on_fail="stop workflow")
    msg = str(e.value)
    assert "set rejected: mean aesthetic score 15.55468 < threshold 15.5547 (2e-05 below)" in msg, msg
    report = _listed(AN.AtelierAestheticSetGate, images=imgs, scores=[15.55468, 15.55468], threshold=15.5547,
                     on_fail="continue")["result"][3]
    assert "mean 15.55468 < threshold 15.5547" in report


def test_filter_refuses_nan_threshold_and_scores(AN):
    imgs = FX.sample_images(3, 16, 16, seed=1)
    kw = dict(images=imgs, mode="threshold", top_k=2, if_none_pass="keep best")
    for thr in (NAN, INF):
        with pytest.raises(AtelierError, match=r"\[Atelier Aesthetic Filter\] input 'threshold': got (NaN|\+inf)"):
            _listed(AN.AtelierAestheticFilter, scores=[5.0, 6.0, 7.0], threshold=thr, **kw)
    with pytest.raises(AtelierError, match=r"input 'scores': 1 of 3 scores \(#1\) are NaN"):
        _listed(AN.AtelierAestheticFilter, scores=[5.0, NAN, 7.0], threshold=6.0, **kw)
    with pytest.raises(AtelierError, match=r"input 'images': 3 of 3 images"):
        _listed(AN.AtelierAestheticFilter, scores=[5.0, 6.0, 7.0], threshold=6.0,
                **{**kw, "images": torch.full((3, 16, 16, 3), NAN)})
    with pytest.raises(AtelierError) as e:
        _listed(AN.AtelierAestheticFilter, scores=[6.99995, 5.0, 6.0], threshold=7.0,
                **{**kw, "if_none_pass": "stop with error"})
    assert "the best was #0 with score 6.99995 < threshold 7" in str(e.value)


def test_loader_broken_config_and_malicious_bin_name_folder_and_file(AN, aes_folder):
    broken = aes_folder / "hardening-broken-config"
    shutil.copytree(aes_folder / HF_NAME, broken, dirs_exist_ok=True)
    (broken / "config.json").write_text("{ this is not json", encoding="utf-8")
    with pytest.raises(AtelierError) as e:
        AN.AtelierAestheticLoader().load("hardening-broken-config")
    msg = str(e.value)
    assert msg.startswith("[Atelier Aesthetic Loader] input 'model_name':")
    assert "'config.json' in model folder 'hardening-broken-config'" in msg and "JSONDecodeError" in msg

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > /dev/null",))

    evil = aes_folder / "hardening-evil-bin"
    shutil.copytree(aes_folder / HF_NAME, evil, dirs_exist_ok=True)
    os.unlink(evil / "model.safetensors")
    with open(evil / "pytorch_model.bin", "wb") as f:
        pickle.dump({"vision_model.x": Evil()}, f)
    with pytest.raises(AtelierError) as e:
        AN.AtelierAestheticLoader().load("hardening-evil-bin")
    msg = str(e.value)
    assert "[Atelier Aesthetic Loader]" in msg
    assert "'pytorch_model.bin' in model folder 'hardening-evil-bin'" in msg, msg


# --------------------------------------------------------------------------- style family
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_style_float_inputs_refuse_nan(SN, bad):
    with pytest.raises(AtelierError, match=r"\[Atelier Style Conditioning Blend\] input 'strength': got"):
        SN.AtelierStyleConditioningBlend().blend([[torch.zeros(1, 77, 8), {}]], None, None, bad)
    with pytest.raises(AtelierError, match=r"\[Atelier Style Latent Match\] input 'strength': got"):
        SN.AtelierStyleLatentMatch().match({"samples": torch.zeros(1, 4, 8, 8)}, None, bad)
    with pytest.raises(AtelierError, match=r"\[Atelier Style Guidance\] input 'strength': got"):
        SN.AtelierStyleGuidance().patch(None, None, bad, 0.6)
    with pytest.raises(AtelierError, match=r"\[Atelier Style Guidance\] input 'end_percent': got"):
        SN.AtelierStyleGuidance().patch(None, None, 0.3, bad)


def test_style_encode_refuses_nan_images(SN):
    with pytest.raises(AtelierError, match=r"\[Atelier Style Encode\] input 'images_2': 1 of 2 images \(#1\) "
                                           r"contain NaN/inf pixels"):
        SN.AtelierStyleEncode().encode(torch.rand(1, 64, 64, 3), None, 64, "center",
                                       images_2=torch.rand(2, 64, 64, 3).index_fill_(0, torch.tensor([1]), NAN))


def test_style_encode_refuses_a_lone_surrogate_in_the_name(SN):
    with pytest.raises(AtelierError, match=r"\[Atelier Style Encode\] input 'name': the text holds 1 lone surrogate"):
        SN.AtelierStyleEncode().encode(torch.rand(1, 64, 64, 3), None, 64, "center", name="style\ud83d07")


def test_style_save_long_name_says_limit_and_characters(SN):
    with pytest.raises(AtelierError) as e:
        SN.AtelierStyleSave().save(None, "s" * 300)
    msg = str(e.value)
    assert msg.startswith("[Atelier Style Save] input 'filename': the file name is 300 characters long")
    assert f"at most {SN.MAX_STYLE_NAME} characters" in msg and "digits" in msg
    with pytest.raises(AtelierError, match="is not a usable style file name") as e:
        SN.AtelierStyleSave().save(None, "bad\ud800name")
    str(e.value).encode("utf-8")  # the lone surrogate is shown escaped


# --------------------------------------------------------------------------- prompt family
def test_prompt_nodes_refuse_lone_surrogates(PN):
    with pytest.raises(AtelierError) as e:
        PN.AtelierSystemPrompt().run("a red \ud83d bottle", PN.DEFAULT_PRESET, "preset default", "")
    msg = str(e.value)
    assert msg.startswith("[Atelier System Prompt] input 'prompt': the text holds 1 lone surrogate (first U+D83D")
    with pytest.raises(AtelierError, match=r"\[Atelier System Prompt\] input 'extra_negative': the text holds"):
        PN.AtelierSystemPrompt().run("a bottle", PN.DEFAULT_PRESET, "preset default", "blur \udc00")
    with pytest.raises(AtelierError, match=r"\[Atelier Prompt Lines\] input 'text': the text holds 1 lone surrogate"):
        PN.AtelierPromptLines().run("one\ntwo \ud800")
    out = PN.AtelierSystemPrompt().run("a red \U0001F600 bottle", PN.DEFAULT_PRESET, "preset default", "")
    assert "\U0001F600" in out["result"][0]
