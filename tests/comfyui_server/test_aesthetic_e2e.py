"""The story-set quality gate through a real ComfyUI server.

The generation half of workflows/story_set.json (SDXL-class checkpoint + LoRA + KSampler) is too heavy for CI
on a CPU, so these tests run its scoring half exactly as shipped in workflows/api/story_set.json (scorer ->
gate -> grid -> SaveImage x2) and feed it a LoadImage of an 8-frame TIFF (LoadImage turns the frames into a
batch). The aesthetic model is a tiny simple-aesthetics-predictor folder (tiny CLIP vision + LAION v2 head)
in the server's models/aesthetic: ComfyUI's CLIPVisionLoader only accepts full-size CLIP vision models, so
the tiny CLIP comes in through the model-folder path instead of a CLIP_VISION input.
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_atelier.client import convert, runtime
from comfyui_atelier.core import aesthetic as A

REPO = Path(__file__).resolve().parents[2]
TINY = "tiny-aesthetics-predictor-v2-e2e"
H, W = 64, 80


from tests.fixtures import aesthetic_models as FX  # noqa: E402


@pytest.fixture(scope="module")
def story(comfy_server, tmp_path_factory):
    src = tmp_path_factory.mktemp("aesthetic-e2e")
    hf = FX.build_hf_predictor(str(src / TINY), layout="linear", seed=21)
    dest = Path(comfy_server.models_dir) / "aesthetic" / TINY
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(hf, dest)
    frames = (FX.sample_images(8, H, W, seed=22).numpy() * 255).round().astype(np.uint8)
    pil = [Image.fromarray(f) for f in frames]
    name = "atelier_story_frames.tiff"
    pil[0].save(Path(comfy_server.input_dir) / name, save_all=True, append_images=pil[1:])
    expected = A.load_hf_predictor(hf).score(torch.from_numpy(frames.astype(np.float32) / 255.0)).tolist()
    return {"frames": frames, "image": name, "expected": expected, "hf": hf}


def _scoring_half(image: str, threshold: float, on_fail: str = "stop workflow", prefix: str = "story_e2e") -> dict:
    """The shipped API workflow's scoring half, with LoadImage instead of the sampler and the tiny model."""
    api = json.loads((REPO / "workflows" / "api" / "story_set.json").read_text(encoding="utf-8"))
    by_type = {n["class_type"]: k for k, n in api.items() if n["class_type"] != "SaveImage"}
    keep = {by_type[t] for t in ("AtelierAestheticLoader", "AtelierAestheticScorer", "AtelierAestheticSetGate",
                                 "AtelierImageGrid", "AtelierSetCoherence")}
    saves = {k for k, n in api.items() if n["class_type"] == "SaveImage"}
    prompt = {k: copy.deepcopy(api[k]) for k in keep | saves}
    prompt["100"] = {"class_type": "LoadImage", "inputs": {"image": image}}
    scorer = prompt[by_type["AtelierAestheticScorer"]]["inputs"]
    scorer["images"] = ["100", 0]
    scorer.pop("clip_vision", None)  # the tiny folder model has its own CLIP vision tower
    coherence = prompt[by_type["AtelierSetCoherence"]]["inputs"]
    coherence["images"] = ["100", 0]
    coherence.pop("clip_vision", None)
    prompt[by_type["AtelierAestheticLoader"]]["inputs"]["model_name"] = TINY
    gate = prompt[by_type["AtelierAestheticSetGate"]]["inputs"]
    gate["threshold"], gate["on_fail"] = threshold, on_fail
    for k in saves:
        prompt[k]["inputs"]["filename_prefix"] = prompt[k]["inputs"]["filename_prefix"].replace("story_set", prefix)
    return prompt, by_type


def test_story_scoring_half_passes_and_saves_grid_and_frames(comfy_server, story):
    exp = story["expected"]
    mean = sum(exp) / len(exp)
    prompt, ids = _scoring_half(story["image"], threshold=round(mean - 0.25, 3), prefix="story_pass")
    entry = comfy_server.run(prompt, timeout=240)
    outs = entry["outputs"]
    # scores shown on the scorer node (ui data), equal to the in-process core scores
    got = outs[ids["AtelierAestheticScorer"]]["atelier_scores"]
    assert len(got) == 8 and max(abs(a - b) for a, b in zip(got, exp)) <= 1e-4
    gate = outs[ids["AtelierAestheticSetGate"]]["atelier_gate"][0]
    assert gate["passed"] is True and gate["mean"] == pytest.approx(mean, abs=1e-4)
    # the grid: 8 cells -> 4 rows x 2 columns (the story seed's), gap 16, a caption strip (scores) of 1.5 x font 24
    saved = {Path(p).name: p for p in comfy_server.output_files(entry)}
    grids = [p for n, p in saved.items() if n.startswith("grid")]
    frames = sorted(p for n, p in saved.items() if n.startswith("frame"))
    assert len(grids) == 1 and len(frames) == 8
    g = np.asarray(Image.open(grids[0]).convert("RGB"))
    assert g.shape == (16 + 4 * (H + 36 + 16), 16 + 2 * (W + 16), 3)
    order = sorted(range(8), key=lambda i: -exp[i])  # the gate passes the scorer's sorted images on
    for cell, i in enumerate(order):
        r, c = divmod(cell, 2)
        y, x = 16 + r * (H + 36 + 16), 16 + c * (W + 16)
        assert np.abs(g[y:y + H, x:x + W].astype(int) - story["frames"][i]).max() <= 1
    for k, path in enumerate(frames):
        assert np.abs(np.asarray(Image.open(path).convert("RGB")).astype(int) - story["frames"][order[k]]).max() <= 1


def test_story_gate_rejects_a_weak_set_and_saves_nothing(comfy_server, story):
    exp = story["expected"]
    mean = sum(exp) / len(exp)
    prompt, ids = _scoring_half(story["image"], threshold=round(mean + 0.25, 3), prefix="story_reject")
    with pytest.raises(runtime.PromptFailed) as e:
        comfy_server.run(prompt, timeout=240)
    msg = str(e.value)
    assert "set rejected: mean aesthetic score" in msg and "[Atelier Aesthetic Set Gate]" in msg
    assert not list(Path(comfy_server.output_dir).glob("story_reject*"))


def test_shipped_story_workflow_matches_server_and_api_twin(comfy_server):
    info = comfy_server.object_info()
    for cid in ("AtelierAestheticLoader", "AtelierAestheticScorer", "AtelierAestheticFilter",
                "AtelierAestheticSetGate", "AtelierImageGrid", "AtelierSetCoherence"):
        assert cid in info, f"{cid} is not registered on the server"
    assert info["AtelierAestheticSetGate"]["output"][1] == "BOOLEAN"
    assert info["AtelierAestheticScorer"]["output_is_list"][0] is True
    ui = json.loads((REPO / "workflows" / "story_set.json").read_text(encoding="utf-8"))
    api = json.loads((REPO / "workflows" / "api" / "story_set.json").read_text(encoding="utf-8"))
    assert ui["version"] == 0.4
    assert convert.ui_to_api(ui, info) == api
    # every link row is [id, from_node, from_slot, to_node, to_slot, type] and matches the nodes' slots
    nodes = {n["id"]: n for n in ui["nodes"]}
    for lid, a, aslot, b, bslot, typ in ui["links"]:
        assert lid in nodes[a]["outputs"][aslot]["links"] and nodes[b]["inputs"][bslot]["link"] == lid
        assert nodes[b]["inputs"][bslot]["type"] == typ
    types = [n["type"] for n in ui["nodes"]]
    assert {"CheckpointLoaderSimple", "AtelierOptionalLora", "KSampler", "AtelierAestheticScorer",
            "AtelierAestheticSetGate", "AtelierImageGrid", "SaveImage", "AtelierSetCoherence"} <= set(types)
    lines = next(n for n in ui["nodes"] if n["type"] == "AtelierPromptLines")["widgets_values"][0]
    assert len([ln for ln in lines.splitlines() if ln.strip()]) == 8


def test_story_gate_reports_coherence_and_old_prompts_keep_their_behaviour(comfy_server, story):
    """The shipped gate shows the set's coherence (min_coherence 0: reported, not checked); an API prompt
    written before the coherence inputs existed (no coherence node, no coherence / min_coherence on the gate)
    still validates and passes the same set with the same mean."""
    exp = story["expected"]
    mean = sum(exp) / len(exp)
    prompt, ids = _scoring_half(story["image"], threshold=round(mean - 0.25, 3), prefix="story_coh")
    assert prompt[ids["AtelierAestheticSetGate"]]["inputs"]["min_coherence"] == 0.0
    outs = comfy_server.run(prompt, timeout=240)["outputs"]
    gate = outs[ids["AtelierAestheticSetGate"]]["atelier_gate"][0]
    frames = torch.from_numpy(story["frames"].astype(np.float32) / 255.0)
    from comfyui_atelier.core import coherence as C
    want = C.coherence(A.load_hf_predictor(story["hf"]).image_embeddings(frames))
    assert gate["passed"] is True and gate["coherence"] == pytest.approx(want.coherence, abs=1e-5)
    assert f"#{want.outlier}" in outs[ids["AtelierSetCoherence"]]["atelier_report"][0]
    old, _ = _scoring_half(story["image"], threshold=round(mean - 0.25, 3), prefix="story_old")
    del old[ids["AtelierSetCoherence"]]
    for k in ("coherence", "min_coherence"):
        del old[ids["AtelierAestheticSetGate"]]["inputs"][k]
    entry = comfy_server.run(old, timeout=240)
    gate_old = entry["outputs"][ids["AtelierAestheticSetGate"]]["atelier_gate"][0]
    assert gate_old["passed"] is True and "coherence" not in gate_old
    assert gate_old["mean"] == pytest.approx(gate["mean"], abs=1e-6)
    assert len([p for p in comfy_server.output_files(entry) if Path(p).name.startswith("frame")]) == 8


def test_story_gate_rejects_an_incoherent_set_when_min_coherence_is_set(comfy_server, story):
    exp = story["expected"]
    mean = sum(exp) / len(exp)
    prompt, ids = _scoring_half(story["image"], threshold=round(mean - 0.25, 3), prefix="story_incoherent")
    prompt[ids["AtelierAestheticSetGate"]]["inputs"]["min_coherence"] = 1.0  # 8 distinct frames are never 1.0
    with pytest.raises(runtime.PromptFailed) as e:
        comfy_server.run(prompt, timeout=240)
    assert "set rejected: set coherence" in str(e.value) and "[Atelier Aesthetic Set Gate]" in str(e.value)
    assert not list(Path(comfy_server.output_dir).glob("story_incoherent*"))
