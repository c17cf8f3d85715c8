"""Shipped workflows: UI format -> API format with the live server's /object_info equals the
shipped API twin; and the line2product workflow runs keyed rows through the batch client, its graph
unedited: the optional LoRA as shipped ('none'), or a row's own LoRA through a NODE.INPUT column."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from comfyui_atelier.client import convert
from comfyui_atelier.client.batch import BatchConfig, run_batch
from comfyui_atelier.client.server_api import ComfyServer as ApiServer
from tests.fixtures import client_data as CD

ROOT = Path(__file__).resolve().parents[2]
PAIRS = sorted(p.name for p in (ROOT / "workflows").glob("*.json") if (ROOT / "workflows" / "api" / p.name).exists())


def _strip_meta(api: dict) -> dict:
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}


@pytest.fixture(scope="module")
def live_info(comfy_server):
    return ApiServer(comfy_server.url).object_info()


def test_there_are_shipped_pairs():
    assert PAIRS, "no workflows/<name>.json with a workflows/api/<name>.json twin"


@pytest.mark.parametrize("name", PAIRS)
def test_shipped_workflow_converts_to_its_api_twin(name, live_info):
    ui = json.loads((ROOT / "workflows" / name).read_text())
    twin = json.loads((ROOT / "workflows" / "api" / name).read_text())
    got = convert.ui_to_api(ui, live_info)
    assert _strip_meta(got) == _strip_meta(twin)


def test_line2product_rows_get_their_prompt_and_seed(comfy_server, tiny_sd15, live_info, tmp_path):
    if "line2product.json" not in PAIRS:
        pytest.skip("line2product workflow not shipped")
    api = convert.to_api(str(ROOT / "workflows" / "line2product.json"), live_info)
    by_type = {v["class_type"]: k for k, v in api.items()}
    tiny = {"ckpt_name": tiny_sd15["checkpoints"].name, "control_net_name": tiny_sd15["controlnet"].name}
    for nid, node in api.items():  # tiny models, tiny sizes, and whatever the test server offers elsewhere
        specs = convert.node_inputs(live_info[node["class_type"]])
        for name, value in list(node["inputs"].items()):
            opts = convert.combo_options(specs.get(name))
            if name in tiny:
                node["inputs"][name] = tiny[name]
            elif opts and value not in opts and name != "image":  # PoolNet -> the classical backend
                node["inputs"][name] = opts[0]
            elif name in ("resolution", "width", "height") and isinstance(value, int):
                node["inputs"][name] = 64
            elif name == "steps" and isinstance(value, int):
                node["inputs"][name] = 1
    lora = by_type["AtelierOptionalLora"]
    assert api[lora]["inputs"]["lora_name"] == "none"  # as shipped: no LoRA needed
    ids = ["24806", "24807", "24808"]
    cols = {i: {"seed": 100 + k} for k, i in enumerate(ids)}
    cols["24808"][f"{lora}.lora_name"] = tiny_sd15["loras"].name  # one row brings its own LoRA
    CD.make_dataset(tmp_path / "ds", ids, extra_cols=cols)
    res = run_batch(BatchConfig(workflow=api, servers=[comfy_server.url], out_dir=str(tmp_path / "out"),
                                images=str(tmp_path / "ds"), progress=False, job_timeout=300))
    assert res.exit_code == 0, res.results
    assert res.bindings.get("image") == [(by_type["LoadImage"], "image")]
    srv = ApiServer(comfy_server.url)
    for k, rid in enumerate(ids):
        rec = res.results[rid]
        sent = srv.history(rec["prompt_id"])["prompt"][2]
        assert sent[by_type["AtelierSystemPrompt"]]["inputs"]["prompt"] == f"product photo of item {rid}"
        assert sent[by_type["KSampler"]]["inputs"]["seed"] == 100 + k
        assert sent[by_type["LoadImage"]]["inputs"]["image"].endswith(f"/{rid}.png")
        assert sent[lora]["inputs"]["lora_name"] == (tiny_sd15["loras"].name if rid == "24808" else "none")
        out = Image.open(tmp_path / "out" / f"{rid}.png")
        assert out.size == Image.open(tmp_path / "ds" / f"{rid}.png").size  # the input's size and aspect
