"""A dataset-preparation graph through a real ComfyUI server: a folder of the input folder -> Atelier Dataset
Filter -> Atelier Caption (tiny BLIP from models/captioners) and Atelier Canny -> Atelier Dataset Export
(ControlNet layout in the output folder). Lists (OUTPUT_IS_LIST / INPUT_IS_LIST) are what this checks: ids,
images, captions and control images must stay together through ComfyUI's own executor."""
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fixtures import blip_models as BM

BLIP = "tiny-blip-e2e"
SIZES = {"k1": (64, 64), "k2": (96, 64), "k3": (64, 96), "narrow": (40, 64), "flat": (160, 64)}


@pytest.fixture(scope="module")
def data(comfy_server, tmp_path_factory):
    dest = Path(comfy_server.models_dir) / "captioners" / BLIP
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(BM.build_blip(tmp_path_factory.mktemp("blip-e2e") / BLIP), dest)
    rel = f"ds-e2e-{uuid.uuid4().hex[:6]}"
    folder = Path(comfy_server.input_dir) / rel
    folder.mkdir(parents=True)
    for i, (sid, (w, h)) in enumerate(sorted(SIZES.items())):
        a = np.full((h, w, 3), 255, np.uint8)
        a[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = (60 * i, 30, 0)
        Image.fromarray(a).save(folder / f"{sid}.png")
    return {"folder": rel}


def graph(folder: str, name: str, template: str) -> dict:
    return {
        "1": {"class_type": "AtelierDatasetFilter", "inputs": {
            "folder": folder, "min_width": 48, "max_width": 0, "min_height": 48, "max_height": 0,
            "min_ratio": 0.5, "max_ratio": 2.0, "any_or_all": "any"}},
        "2": {"class_type": "AtelierCaptionerLoader", "inputs": {"model_name": BLIP}},
        "3": {"class_type": "AtelierCaption", "inputs": {
            "captioner": ["2", 0], "images": ["1", 0], "ids": ["1", 1], "prompt": "a keyboard skin of",
            "template": template, "trigger": "", "strip_prompt": False, "max_new_tokens": 4, "batch_size": 2}},
        "4": {"class_type": "AtelierCanny", "inputs": {
            "image": ["1", 0], "low_threshold": 100, "high_threshold": 200, "threshold_mode": "manual",
            "auto_sigma": 0.33, "blur_sigma": 0.0, "l2_gradient": False, "resolution": 0}},
        "5": {"class_type": "AtelierDatasetExport", "inputs": {
            "images": ["1", 0], "captions": ["3", 0], "ids": ["1", 1], "conditioning": ["4", 0],
            "layout": "controlnet", "dataset_name": name}},
    }


def test_filter_caption_canny_export_graph(comfy_server, data):
    name = f"datasets/{data['folder']}"
    entry = comfy_server.run(graph(data["folder"], name, "{id} {caption}, iflyskin"), timeout=300)
    out = Path(comfy_server.output_dir) / name
    rows = [json.loads(x) for x in open(out / "train.jsonl", encoding="utf-8")]
    assert [r["id"] for r in rows] == ["k1", "k2", "k3"]  # narrow (40 px) and flat (ratio 2.5) dropped
    for r in rows:
        assert r["text"].startswith(f"{r['id']} a keyboard skin of") and r["text"].endswith(", iflyskin")
        img = np.asarray(Image.open(out / r["image"]))
        src = np.asarray(Image.open(Path(comfy_server.input_dir) / data["folder"] / f"{r['id']}.png"))
        assert np.array_equal(img, src)  # each id has its own pixels, never a neighbour's
        edges = np.asarray(Image.open(out / r["conditioning_image"]))
        assert edges.shape == src.shape and edges.max() == 255 and edges[0, 0].max() == 0
    report = entry["outputs"]["1"]["text"][0]
    assert "narrow: image_shape_filter" in report and "flat: image_aspect_ratio_filter" in report
    assert "3 ids (3 written, 0 unchanged)" in entry["outputs"]["5"]["text"][0]
    # a new template re-captions: every id is rewritten, its files replaced in place
    again = comfy_server.run(graph(data["folder"], name, "{caption}"), timeout=300)
    assert "3 ids (3 written, 0 unchanged)" in again["outputs"]["5"]["text"][0]
    rows2 = [json.loads(x) for x in open(out / "train.jsonl", encoding="utf-8")]
    assert [r["text"] for r in rows2] == [r["text"][len(r["id"]) + 1: -len(", iflyskin")] for r in rows]
