"""NaN sent as a number through the HTTP API: ComfyUI's min/max check lets it through, the node refuses it."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfyui_atelier.client import runtime
from tests.fixtures import aesthetic_models as FX

TINY = "tiny-aesthetics-predictor-v2-hardening"


@pytest.fixture(scope="module")
def image_and_model(comfy_server, tmp_path_factory):
    hf = FX.build_hf_predictor(str(tmp_path_factory.mktemp("hardening-e2e") / TINY), layout="linear", seed=31)
    dest = Path(comfy_server.models_dir) / "aesthetic" / TINY
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(hf, dest)
    frame = (FX.sample_images(1, 48, 64, seed=32)[0].numpy() * 255).round().astype(np.uint8)
    name = "atelier_hardening_frame.png"
    Image.fromarray(frame).save(Path(comfy_server.input_dir) / name)
    return name


def _gate_prompt(image: str, threshold, prefix: str) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "AtelierAestheticLoader", "inputs": {"model_name": TINY}},
        "3": {"class_type": "AtelierAestheticScorer", "inputs": {"aesthetic_model": ["2", 0], "images": ["1", 0]}},
        "4": {"class_type": "AtelierAestheticSetGate", "inputs": {"images": ["1", 0], "scores": ["3", 0],
                                                                  "threshold": threshold, "on_fail": "stop workflow"}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": prefix}},
    }


def test_nan_threshold_through_the_api_is_refused_and_saves_nothing(comfy_server, image_and_model):
    prefix = "hardening_nan"
    with pytest.raises(runtime.PromptFailed, match=r"\[Atelier Aesthetic Set Gate\] input 'threshold': got NaN"):
        comfy_server.run(_gate_prompt(image_and_model, float("nan"), prefix), timeout=240)
    assert not list(Path(comfy_server.output_dir).glob(prefix + "*"))
    # +-inf never gets this far: ComfyUI's own min/max check refuses it when the prompt is queued
    with pytest.raises(runtime.PromptRejected, match="threshold"):
        comfy_server.run(_gate_prompt(image_and_model, float("inf"), prefix), timeout=240)
    # the same graph with a finite threshold runs and saves
    entry = comfy_server.run(_gate_prompt(image_and_model, -100.0, prefix + "_ok"), timeout=240)
    assert comfy_server.output_files(entry)
