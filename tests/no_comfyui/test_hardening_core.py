"""Finite-values check, gate comparison text, lone surrogates, broken predictor folders (core, no ComfyUI)."""
from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from comfyui_atelier.core import aesthetic as A
from comfyui_atelier.core import finite as F
from comfyui_atelier.core import prompt as P
from comfyui_atelier.core.errors import AtelierError
from tests.fixtures import aesthetic_models as FX

NAN, INF = float("nan"), float("inf")


def test_check_finite_names_the_bad_images_and_the_fix():
    x = torch.rand(8, 5, 6, 3)
    x[0, 1, 1, 0] = NAN
    x[2] = INF
    x[5, 0, 0, 2] = -INF
    with pytest.raises(AtelierError) as e:
        F.check_finite(x, node="Atelier X", input="images")
    msg = str(e.value)
    assert msg.startswith("[Atelier X] input 'images': 3 of 8 images (#0, #2, #5) contain NaN/inf pixels.")
    assert "--fp32-vae" in msg and "different VAE" in msg
    ok = torch.rand(3, 4, 4, 3)
    assert F.check_finite(ok) is ok
    assert F.check_finite(torch.zeros(2, 3, dtype=torch.uint8)) is not None  # integer tensors are always finite
    assert F.nonfinite_items(np.array([[1.0, NAN], [0.0, 1.0]])) == [0]
    with pytest.raises(AtelierError, match=r"2 of 5 images \(#2, #4\)"):  # a list of batches counts across it
        F.check_finite([torch.rand(2, 2, 2, 3), torch.full((3, 2, 2, 3), 0.5).index_fill_(0, torch.tensor([0, 2]), NAN)])
    big = torch.full((2, 4), 3e38)  # the sum overflows but every value is finite
    assert F.nonfinite_items(big) == []


@pytest.mark.parametrize("value,kind", [(NAN, "NaN"), (INF, "+inf"), (-INF, "-inf")])
def test_check_finite_float_refuses_nan_and_inf(value, kind):
    with pytest.raises(AtelierError) as e:
        F.check_finite_float(value, node="Atelier Y", input="strength")
    assert str(e.value).startswith(f"[Atelier Y] input 'strength': got {kind}")
    assert "finite number" in str(e.value)
    assert F.check_finite_float(0.25) == 0.25


def test_check_finite_floats():
    assert F.check_finite_floats([1, 2.5]) == [1.0, 2.5]
    with pytest.raises(AtelierError, match=r"input 'scores': 2 of 4 scores \(#1, #3\) are \+inf/NaN"):
        F.check_finite_floats([1.0, NAN, 2.0, INF], input="scores", what="scores")


def test_gate_never_passes_nan():
    assert A.gate([NAN] * 4, 6.0)[0] is False
    assert A.gate([7.0, NAN], -100.0)[0] is False
    assert A.gate([7.0, 7.0], NAN)[0] is False
    assert A.gate([7.0, INF], 6.0)[0] is False
    assert A.gate([7.0, 7.0], 6.0) == (True, 7.0)
    assert "NaN/inf -> FAIL" in A.format_report([NAN, 7.0], 6.0)


def test_compare_text_is_visibly_right():
    t = A.compare_text(15.55468, 15.5547)
    a, op, b = t.split()[:3]
    assert op == "<" and float(a) < float(b) and "below" in t  # never '15.555 < 15.5547'
    t = A.compare_text(6.000004, 6.0)
    a, op, b = t.split()[:3]
    assert op == ">=" and float(a) > float(b) and "above" in t
    assert A.compare_text(6.5, 6.0) == "6.5 >= 6"
    assert A.compare_text(6.0, 6.0) == "6 >= 6"
    for v, th in [(1 / 3, 0.33333334), (5.999999999, 6.0), (100.00001, 100.0)]:
        a, op, b = A.compare_text(v, th).split()[:3]
        assert (float(a) >= float(b)) == (v >= th) and a != b
    assert A.compare_text(15.55468, 15.5547, names=("mean ", "threshold ")).startswith("mean 15.55468 < threshold 15.5547")
    rep = A.format_report([15.55468, 15.55468], 15.5547)
    assert "set gate: mean 15.55468 < threshold 15.5547" in rep


def test_lone_surrogate_is_refused_with_the_input_named():
    preset = P.parse_preset({"name": "t", "positive": "white background"})
    for key in ("prompt", "extra_negative"):
        kw = {"prompt": "a cat", "extra_negative": ""}
        kw[key] = "a red \ud83d bottle"
        with pytest.raises(AtelierError) as e:
            P.build_prompts(kw.pop("prompt"), preset, node="AtelierSystemPrompt", **kw)
        msg = str(e.value)
        assert msg.startswith(f"[AtelierSystemPrompt] input '{key}': the text holds 1 lone surrogate (first U+D83D")
        assert "surrogate pair" in msg
        msg.encode("utf-8")  # the message itself is printable / sendable
    with pytest.raises(AtelierError, match=r"input 'text': the text holds 2 lone surrogates"):
        P.split_lines("one\ntwo \udc00\n\ud800", node="AtelierPromptLines")
    # a real emoji (a whole character, or a JSON surrogate pair decoded by json) is fine
    assert P.split_lines(json.loads('"a \\ud83d\\ude00 cat"')) == ["a \U0001F600 cat"]
    assert "\U0001F600" in P.build_prompts("a \U0001F600 cat", preset).positive


# --------------------------------------------------------------------------- broken predictor folders
@pytest.fixture(scope="module")
def hf_src(tmp_path_factory):
    return FX.build_hf_predictor(str(tmp_path_factory.mktemp("hf") / "tiny-predictor"), layout="linear", seed=3)


def _copy(hf_src, tmp_path, name):
    d = tmp_path / name
    shutil.copytree(hf_src, d)
    return d


@pytest.mark.parametrize("text,what", [("{not json", "JSONDecodeError"), ("[1, 2]", "holds a JSON list"),
                                       ('{"model_type": "clip_vision_model", "hidden_size": "wide"}', "not a usable"),
                                       (b"\xff\xfe\x00garbage", "UnicodeDecodeError")])
def test_broken_config_json_names_folder_and_file(hf_src, tmp_path, text, what):
    d = _copy(hf_src, tmp_path, "my-predictor")
    (d / "config.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(AtelierError) as e:
        A.load_hf_predictor(str(d), node="Atelier Aesthetic Loader", input="model_name")
    msg = str(e.value)
    assert "'config.json' in model folder 'my-predictor'" in msg and what in msg, msg
    assert msg.startswith("[Atelier Aesthetic Loader] input 'model_name':") and "download config.json" in msg


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pytorch_model_bin_names_folder_and_file(hf_src, tmp_path):
    d = _copy(hf_src, tmp_path, "evil-predictor")
    os.unlink(d / "model.safetensors")
    with open(d / "pytorch_model.bin", "wb") as f:
        pickle.dump({"vision_model.x": _Evil()}, f)
    with pytest.raises(AtelierError) as e:
        A.load_hf_predictor(str(d), node="Atelier Aesthetic Loader", input="model_name")
    msg = str(e.value)
    assert "could not read 'pytorch_model.bin' in model folder 'evil-predictor'" in msg, msg
    assert "download the model folder again" in msg and len(msg) < 1200
