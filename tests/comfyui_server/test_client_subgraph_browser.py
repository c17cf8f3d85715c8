"""Subgraphs: our ui_to_api against the real frontend's own graphToPrompt, and the flattened prompt run.

tests/data/client_subgraph.json is a workflow built in the current frontend (comfyui-frontend-package
1.27.10, the one ComfyUI 0.3.64 pins) and saved with app.graph.serialize(); its graphToPrompt() output is
tests/data/client_subgraph_api.json. ATELIER_UPDATE_SUBGRAPH_DATA=1 rebuilds both in the editor (see
BUILD). The graph: EmptyImage feeds subgraph "Soften" (Reroute -> ImageInvert -> ImageBlur with blur_radius
promoted to the subgraph node, and a nested subgraph "Fit": a bypassed ImageInvert -> ImageScale whose
height is promoted through both levels and linked to Atelier Empty Latent Like's height at the root), whose
output goes to SaveImage; a second instance of "Soften" has other widget values, its height unconnected,
and feeds PreviewImage.

The pinned runtime's legacy web UI has no subgraphs: there the comparison is skipped with the reason, and
the flattened prompt still has to run on its backend.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from comfyui_atelier.client import convert
from comfyui_atelier.client.server_api import ComfyServer as ApiServer, output_files

from tests.comfyui_server.test_editor_browser import Editor, _models_and_inputs, browser  # noqa: F401  (fixture)

DATA = Path(__file__).resolve().parents[1] / "data"
UI = DATA / "client_subgraph.json"
API = DATA / "client_subgraph_api.json"
INFO = DATA / "client_subgraph_object_info.json"

BUILD = """async () => {
    const g = app.graph;
    g.clear();
    const mk = (type, pos, values = {}) => {
        const n = LiteGraph.createNode(type);
        n.pos = pos;
        g.add(n);
        for (const [k, v] of Object.entries(values)) n.widgets.find((w) => w.name === k).value = v;
        return n;
    };
    const slot = (n, name) => n.inputs.findIndex((i) => i.name === name);
    const setw = (n, name, v) => { n.widgets.find((w) => w.name === name).value = v; };
    const empty = mk('EmptyImage', [0, 0], {width: 64, height: 48, color: 0x336699});
    const like = mk('AtelierEmptyLatentLike', [0, 300]);
    const reroute = mk('Reroute', [300, 0]);
    const invert = mk('ImageInvert', [400, 0]);
    const blur = mk('ImageBlur', [600, 0], {sigma: 0.75});
    const invert2 = mk('ImageInvert', [850, 0]);
    invert2.mode = 4;  // bypassed
    const scale = mk('ImageScale', [1050, 0], {upscale_method: 'bilinear', width: 40, height: 30});
    const save = mk('SaveImage', [1400, 0], {filename_prefix: 'atelier_subgraph'});
    empty.connect(0, like, 0);
    empty.connect(0, reroute, 0);
    reroute.connect(0, invert, 0);
    invert.connect(0, blur, 0);
    like.connect(1, blur, slot(blur, 'blur_radius'));  // only so that the conversion promotes it
    blur.connect(0, invert2, 0);
    invert2.connect(0, scale, 0);
    like.connect(2, scale, slot(scale, 'height'));  // through two subgraph inputs
    scale.connect(0, save, 0);
    const fit = g.convertToSubgraph(new Set([invert2, scale])).node;
    fit.subgraph.name = 'Fit';
    const soften = g.convertToSubgraph(new Set([reroute, invert, blur, fit])).node;
    soften.subgraph.name = 'Soften';
    soften.disconnectInput(slot(soften, 'blur_radius'));
    setw(soften, 'blur_radius', 2);
    const second = LiteGraph.createNode(soften.type);
    second.pos = [700, 500];
    g.add(second);
    empty.connect(0, second, 0);
    setw(second, 'blur_radius', 7);
    setw(second, 'height', 36);
    const preview = mk('PreviewImage', [1400, 500]);
    second.connect(0, preview, 0);
    return {soften: soften.id, second: second.id, inputs: second.inputs.map((i) => i.name),
            widgets: second.widgets.map((w) => [w.name, w.value])};
}"""


@pytest.fixture(scope="module")
def subgraph_server(comfy_server_factory):
    server = comfy_server_factory()
    _models_and_inputs(server.root, {})  # the user folder of a used install (no first-run noise)
    return server


def _ours(info: dict) -> dict:
    return convert.ui_to_api(json.loads(UI.read_text(encoding="utf-8")), info)


def _comparable(prompt: dict) -> dict:
    """node id -> (class_type, inputs): what the server executes (_meta titles are ignored by it)."""
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


@pytest.mark.current_frontend  # the pinned runtime's legacy web UI has no subgraphs: not collected there
def test_conversion_equals_the_frontends_graph_to_prompt(browser, subgraph_server):  # noqa: F811
    ed = Editor(browser, subgraph_server.url)
    try:
        assert ed.js("() => typeof app.graph.convertToSubgraph === 'function' && !!window.LiteGraph"), \
            "this ComfyUI serves the current frontend, yet it has no subgraphs"
        if os.environ.get("ATELIER_UPDATE_SUBGRAPH_DATA") == "1":
            print(ed.js(BUILD))
            UI.write_text(json.dumps(json.loads(ed.js("() => JSON.stringify(app.graph.serialize())")), indent=1)
                          + "\n", encoding="utf-8")
        else:
            ed.load(json.loads(UI.read_text(encoding="utf-8")))
        # as the frontend posts it (JSON.stringify drops undefined fields)
        frontend = json.loads(ed.js("async () => JSON.stringify((await app.graphToPrompt()).output)"))
        if os.environ.get("ATELIER_UPDATE_SUBGRAPH_DATA") == "1":
            API.write_text(json.dumps(frontend, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            info = subgraph_server.object_info()
            used = {v["class_type"] for v in frontend.values()} | {"Reroute"} & set(info)
            INFO.write_text(json.dumps({k: info[k] for k in sorted(used)}, indent=1) + "\n", encoding="utf-8")
        assert ed.open_dialogs() == [] and ed.errors == [], (ed.open_dialogs(), ed.errors)
    finally:
        ed.close()
    assert any(":" in k for k in frontend) and any(k.count(":") == 2 for k in frontend), "no nested subgraph"
    assert _comparable(_ours(subgraph_server.object_info())) == _comparable(frontend)
    assert _comparable(frontend) == _comparable(json.loads(API.read_text(encoding="utf-8")))


def test_flattened_subgraph_prompt_runs_on_the_server(subgraph_server):
    """Our conversion (with this server's /object_info) is accepted and run, on either runtime."""
    srv = ApiServer(subgraph_server.url)
    prompt = _ours(srv.object_info())
    pid = srv.queue_prompt(prompt)
    entry = srv.wait(pid, timeout=120, poll=0.2)
    assert (entry.get("status") or {}).get("status_str") in (None, "success"), entry.get("status")
    saved = {f["node"]: f for f in output_files(entry)}
    save_id = next(k for k, v in prompt.items() if v["class_type"] == "SaveImage")
    preview_id = next(k for k, v in prompt.items() if v["class_type"] == "PreviewImage")
    assert saved[save_id]["type"] == "output" and saved[preview_id]["type"] == "temp"
    with Image.open(subgraph_server.output_dir / saved[save_id]["subfolder"] / saved[save_id]["filename"]) as im:
        assert im.size == (40, 48)  # the nested ImageScale ran, its height linked through two subgraph inputs
