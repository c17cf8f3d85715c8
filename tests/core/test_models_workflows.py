"""Shipped workflows stay in step with models_manifest.json.

For every UI-format workflow in workflows/*.json:
- each ``properties.models`` item ({"name", "url", "directory"}) names a manifest entry: name is its
  filename, directory its save_path, url its url (so the frontend's missing-models dialog downloads
  exactly what the pack's downloader would);
- the item's name is the loader's selected value (widgets_values), or the dialog cannot match it;
- a node whose widget selects a manifest model carries that model in properties.models;
- the manifest entry lists the workflow in used_by.workflows (so `atelier models check --workflow`
  and the Atelier Model Check node know it).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfyui_atelier.core import manifest as mf

WORKFLOWS = sorted((mf.DEFAULT_MANIFEST.parent / "workflows").glob("*.json"))


def workflow_problems(workflow: dict, name: str, manifest: mf.Manifest) -> list[str]:
    problems: list[str] = []
    by_filename = {e.filename: e for e in manifest}
    for node in workflow.get("nodes", []):
        where = f"{name}: node {node.get('id')} ({node.get('type')})"
        items = (node.get("properties") or {}).get("models") or []
        widgets = node.get("widgets_values")
        widget_strings = [w for w in widgets if isinstance(w, str)] if isinstance(widgets, list) else []
        listed = set()
        for m in items:
            if not isinstance(m, dict) or not {"name", "url", "directory"} <= set(m):
                problems.append(f"{where}: properties.models item {m!r} needs name, url and directory")
                continue
            entry = manifest.find(m["name"], m["directory"])
            if entry is None or entry.filename != m["name"]:
                problems.append(f"{where}: model '{m['name']}' in '{m['directory']}' is not in models_manifest.json")
                continue
            listed.add(entry.filename)
            if m["url"] != entry.url:
                problems.append(f"{where}: url for '{m['name']}' is {m['url']}, the manifest ('{entry.id}') has {entry.url}")
            if m["directory"] != entry.save_path:
                problems.append(f"{where}: directory for '{m['name']}' is '{m['directory']}', manifest has '{entry.save_path}'")
            if isinstance(widgets, list) and m["name"] not in widget_strings:
                problems.append(f"{where}: lists '{m['name']}' in properties.models but its widgets select {widget_strings}")
            if name not in entry.workflows:
                problems.append(f"{where}: manifest entry '{entry.id}' does not list workflow '{name}' in used_by.workflows")
        for w in widget_strings:
            entry = by_filename.get(w) or by_filename.get(w.replace("\\", "/").rsplit("/", 1)[-1])
            if entry is not None and entry.filename not in listed:
                problems.append(f"{where}: selects manifest model '{w}' ('{entry.id}') without properties.models")
    return problems


@pytest.mark.skipif(not WORKFLOWS, reason="workflows/ holds no UI workflow (*.json) yet")
@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_shipped_workflow_models_match_manifest(path: Path):
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data.get("nodes"), list), f"{path.name} is not a UI-format workflow"
    problems = workflow_problems(data, path.stem, mf.load_manifest())
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- the checker itself

def _loader(node_id, ntype, value, models=None):
    node = {"id": node_id, "type": ntype, "widgets_values": [value]}
    if models is not None:
        node["properties"] = {"models": models}
    return node


def test_checker_accepts_a_consistent_workflow():
    m = mf.load_manifest()
    e = m.by_id("sd15-base")
    wf = {"nodes": [_loader(1, "CheckpointLoaderSimple", e.filename,
                            [{"name": e.filename, "url": e.url, "directory": e.save_path}]),
                    {"id": 2, "type": "KSampler", "widgets_values": [1, "fixed", 20, 7.0, "euler", "normal", 1.0]}]}
    assert workflow_problems(wf, "line2product", m) == []


def test_checker_reports_each_kind_of_drift():
    m = mf.load_manifest()
    e = m.by_id("sd15-controlnet-canny")
    good = {"name": e.filename, "url": e.url, "directory": e.save_path}
    cases = {
        "not in models_manifest.json": [_loader(1, "ControlNetLoader", "x.safetensors",
                                                [{**good, "name": "x.safetensors"}])],
        "the manifest ('sd15-controlnet-canny') has": [_loader(1, "ControlNetLoader", e.filename,
                                                              [{**good, "url": "https://example.com/other"}])],
        "its widgets select": [_loader(1, "ControlNetLoader", "other.safetensors", [good])],
        "without properties.models": [_loader(1, "ControlNetLoader", e.filename)],
        "does not list workflow 'mystery'": [_loader(1, "ControlNetLoader", e.filename, [good])],
        "needs name, url and directory": [_loader(1, "ControlNetLoader", e.filename, [{"name": e.filename}])],
    }
    for expected, nodes in cases.items():
        name = "mystery" if "mystery" in expected else "line2product"
        problems = workflow_problems({"nodes": nodes}, name, m)
        assert any(expected in p for p in problems), (expected, problems)


def test_cli_reads_properties_models_from_a_workflow_file(tmp_path, capsys):
    """`atelier models check --workflow path.json` takes the models from the file itself."""
    from comfyui_atelier.client import models_cli
    m = mf.load_manifest()
    e = m.by_id("sdxl-controlnet-canny")
    wf = {"nodes": [_loader(1, "ControlNetLoader", e.filename,
                            [{"name": e.filename, "url": e.url, "directory": e.save_path}])]}
    p = tmp_path / "my_flow.json"
    p.write_text(json.dumps(wf), encoding="utf-8")
    rc = models_cli.main(["check", "--workflow", str(p), "--models-dir", str(tmp_path / "models")])
    out = capsys.readouterr()[0]
    assert rc == 1 and "MISSING  sdxl-controlnet-canny" in out and "0 of 1 model(s) present" in out
