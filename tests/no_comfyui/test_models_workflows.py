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
            # a folder entry (the Kolors text encoder) cannot be matched or fetched by the missing-models dialog
            if entry is not None and entry.filename not in listed and entry.kind != "directory":
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


# ----------------------------------------------------------------------------- files nobody has

# Model selectors of the loader nodes the workflows use: node type -> (widget index, model folder).
LOADER_WIDGETS = {
    "CheckpointLoaderSimple": (0, "checkpoints"),
    "ControlNetLoader": (0, "controlnet"),
    "LoraLoader": (0, "loras"),
    "AtelierOptionalLora": (0, "loras"),
    "CLIPVisionLoader": (0, "clip_vision"),
    "VAELoader": (0, "vae"),
    "AtelierSaliencyLoader": (0, "saliency"),
    "AtelierAestheticLoader": (0, "aesthetic"),
    "AtelierStyleAdapterLoader": (0, "style_adapters"),
}
MODEL_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".onnx", ".gguf",
                  ".ttf", ".otf", ".ttc", ".otc")
TEXT_NODES = ("Note", "MarkdownNote")  # free text: may name files to add by hand


def pack_provided() -> dict[str, set[str]]:
    """Selector values that need no file: the pack's own choices."""
    from comfyui_atelier.core.matting import CLASSICAL_NAME

    return {"AtelierOptionalLora": {"none"}, "AtelierStyleAdapterLoader": {"none"},
            "AtelierSaliencyLoader": {CLASSICAL_NAME}}


def unavailable_files(workflow: dict, name: str, manifest: mf.Manifest) -> list[str]:
    """Widget values that name a model file neither models_manifest.json nor the pack provides.

    A loader's selector must be a manifest file of that folder (or a pack choice such as the optional
    LoRA's and the style adapter's 'none'); any other widget string that looks like a model file must be
    a manifest file too. Notes are text and are not checked.
    """
    problems: list[str] = []
    provided = pack_provided()
    for node in workflow.get("nodes", []):
        ntype = node.get("type")
        if ntype in TEXT_NODES or node.get("mode") in (2, 4):  # muted / bypassed nodes never run
            continue
        widgets = node.get("widgets_values")
        if not isinstance(widgets, list):
            continue
        where = f"{name}: node {node.get('id')} ({ntype})"
        selector = LOADER_WIDGETS.get(ntype)
        for i, value in enumerate(widgets):
            if not isinstance(value, str):
                continue
            is_selector = selector is not None and i == selector[0]
            if not is_selector and not value.lower().endswith(MODEL_SUFFIXES):
                continue
            if is_selector and value in provided.get(ntype, set()):
                continue
            entry = manifest.find(value, selector[1] if is_selector else None)
            if entry is None or entry.filename != value or (is_selector and entry.save_path != selector[1]):
                folder = f"models/{selector[1]}" if is_selector else "a model folder"
                choices = sorted(provided.get(ntype, set()))
                problems.append(f"{where}: '{value}' in {folder} is neither in models_manifest.json nor provided by "
                                f"the pack" + (f" (use {choices} or a manifest file)" if choices else ""))
    return problems


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_shipped_workflow_names_only_files_someone_has(path: Path):
    data = json.loads(path.read_text(encoding="utf-8"))
    problems = unavailable_files(data, path.stem, mf.load_manifest())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_optional_lora_and_adapter_ship_as_none(path: Path):
    """LoRA / style adapter: the user's own file is optional, so the shipped value is 'none' (or a manifest file)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    for node in data["nodes"]:
        assert node["type"] != "LoraLoader", f"{path.stem}: node {node['id']} is ComfyUI's LoraLoader, which has no " \
                                             f"'none'; use Atelier LoRA (optional)"
        if node["type"] in ("AtelierOptionalLora", "AtelierStyleAdapterLoader"):
            assert node["widgets_values"][0] == "none", (path.stem, node["id"])


def test_files_checker_reports_files_nobody_has():
    m = mf.load_manifest()
    ckpt = m.by_id("sd15-base").filename
    wf = {"nodes": [
        _loader(1, "CheckpointLoaderSimple", ckpt),
        {"id": 2, "type": "LoraLoader", "widgets_values": ["product_lora.safetensors", 0.8, 0.8]},
        {"id": 3, "type": "AtelierOptionalLora", "widgets_values": ["none", 1.0, 1.0]},
        {"id": 4, "type": "AtelierOptionalLora", "widgets_values": ["story_style_lora.safetensors", 1.0, 1.0]},
        {"id": 5, "type": "AtelierStyleAdapterLoader", "widgets_values": ["style07_adapter.safetensors"]},
        {"id": 6, "type": "AtelierStyleAdapterLoader", "widgets_values": ["none"]},
        {"id": 7, "type": "LoraLoader", "widgets_values": ["none", 1.0, 1.0]},  # ComfyUI's loader has no 'none'
        {"id": 8, "type": "ControlNetLoader", "widgets_values": [ckpt]},  # a manifest file of another folder
        {"id": 9, "type": "SomePackNode", "widgets_values": ["weights/mystery.safetensors", 3]},
        {"id": 10, "type": "Note", "widgets_values": ["put style07_lora.safetensors in models/loras"]},
        {"id": 11, "type": "LoraLoader", "mode": 4, "widgets_values": ["bypassed.safetensors", 1.0, 1.0]},
        {"id": 12, "type": "KSampler", "widgets_values": [1, "fixed", 20, 7.0, "euler", "normal", 1.0]},
    ]}
    problems = unavailable_files(wf, "mystery", m)
    flagged = sorted(int(p.split("node ")[1].split(" ")[0]) for p in problems)
    assert flagged == [2, 4, 5, 7, 8, 9], problems
    assert any("['none']" in p for p in problems if "node 4 " in p)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_every_load_image_has_a_shipped_example_input(path: Path):
    """The pack copies example_inputs/*.png (top level) into ComfyUI's input folder; every Load Image names one."""
    data = json.loads(path.read_text(encoding="utf-8"))
    examples = mf.DEFAULT_MANIFEST.parent / "example_inputs"
    for node in data["nodes"]:
        if node["type"] == "LoadImage" and node.get("mode", 0) == 0:
            image = node["widgets_values"][0]
            assert "/" not in image and (examples / image).is_file(), \
                f"{path.stem}: node {node['id']} loads '{image}', which example_inputs/ does not ship"
