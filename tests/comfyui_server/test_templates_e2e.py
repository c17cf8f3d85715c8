"""The shipped workflows open from ComfyUI's Templates browser.

ComfyUI (since late 2024) lists a pack's templates at `/workflow_templates` and serves them at
`/api/workflow_templates/<pack folder>/<name>.json`, from the first of `example_workflows`,
`example`, `examples`, `workflow`, `workflows` that the pack has. An `examples/` folder of input
images once shadowed our `workflows/`; the example inputs now live in `example_inputs/`.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from comfyui_atelier.client import runtime

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))
# ComfyUI's list, in the order it serves them (app/custom_node_manager.py).
TEMPLATE_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def test_workflows_is_the_first_template_folder_the_pack_has():
    present = [name for name in TEMPLATE_FOLDERS if (ROOT / name).is_dir()]
    assert present and present[0] == "workflows", present


def test_every_shipped_workflow_opens_from_the_templates_browser(comfy_server):
    status, body = _get(comfy_server.url + "/workflow_templates")
    if status == 404:
        # The pinned early-2024 runtime predates the Templates browser (no route, no version file);
        # any ComfyUI that declares a version has it.
        assert runtime.comfyui_version(comfy_server.root) is None, "a versioned ComfyUI without /workflow_templates"
        assert not (comfy_server.root / "app" / "custom_node_manager.py").exists()
        return
    assert status == 200
    listed = json.loads(body)
    pack = runtime.PACK_DIR.name  # the folder name the pack is linked under in custom_nodes
    assert sorted(listed.get(pack, [])) == SHIPPED
    for name in SHIPPED:
        status, got = _get(f"{comfy_server.url}/api/workflow_templates/{pack}/{name}.json")
        assert status == 200, name
        assert json.loads(got) == json.loads((ROOT / "workflows" / f"{name}.json").read_text()), name
