"""Shipped UI workflows are well-formed for the graph editor (no ComfyUI needed).

The browser tests (tests/comfyui_server/test_editor_browser.py) load them in the real editor; these checks name the
exact problem without a browser: link slots are indices that agree with both nodes' slot lists (the
current frontend's schema check rejects a slot given by name), every workflow has a Note, and the ids
are consistent.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfyui_atelier.client import runtime

WORKFLOWS = sorted((runtime.PACK_DIR / "workflows").glob("*.json"))


def test_there_are_workflows():
    assert len(WORKFLOWS) >= 5


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_links_and_slots_agree(path: Path):
    w = json.loads(path.read_text(encoding="utf-8"))
    nodes = {n["id"]: n for n in w["nodes"]}
    assert len(nodes) == len(w["nodes"]), "duplicate node ids"
    assert w["last_node_id"] >= max(nodes)
    assert w["last_link_id"] >= max((l[0] for l in w["links"]), default=0)
    for link in w["links"]:
        lid, origin, oslot, target, tslot, typ = link
        for v in (lid, origin, oslot, target, tslot):
            assert isinstance(v, int) and not isinstance(v, bool), f"link {link}: ids and slots must be integers"
        out = nodes[origin]["outputs"][oslot]
        inp = nodes[target]["inputs"][tslot]
        assert lid in (out.get("links") or []), f"link {lid} not in node {origin}'s output {oslot}"
        assert inp.get("link") == lid, f"link {lid} not on node {target}'s input {tslot} ({inp.get('name')})"
        assert typ == out["type"], f"link {lid}: type {typ} but output is {out['type']}"
    for n in w["nodes"]:
        for i, inp in enumerate(n.get("inputs") or []):
            if inp.get("link") is not None:
                assert any(l[0] == inp["link"] and l[3] == n["id"] and l[4] == i for l in w["links"]), \
                    f"node {n['id']} input {inp.get('name')} names link {inp['link']}, which does not end there"


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_every_workflow_has_a_note_about_its_models(path: Path):
    w = json.loads(path.read_text(encoding="utf-8"))
    notes = [n for n in w["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    assert notes, "add a Note node saying which models go where"
    text = "\n".join(str(v) for n in notes for v in n.get("widgets_values") or [])
    assert "ComfyUI/models/" in text or "models/" in text, "the Note should say where the model files go"
    for n in w["nodes"]:
        for m in (n.get("properties") or {}).get("models") or []:
            assert m["name"] in text, f"the Note does not mention {m['name']} (node {n['id']} {n['type']})"


# What a user must be able to see in the editor without reading code: which slots are optional, and how to
# fill them. node type -> (model folder the Note must name, what the node is called in the Note)
OPTIONAL_SLOTS = {"AtelierOptionalLora": ("models/loras", "Atelier LoRA (optional)"),
                  "AtelierStyleAdapterLoader": ("models/style_adapters", "adapter")}


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_optional_slots_are_obvious_in_the_editor(path: Path):
    w = json.loads(path.read_text(encoding="utf-8"))
    text = "\n".join(str(v) for n in w["nodes"] if n["type"] in ("Note", "MarkdownNote")
                     for v in n.get("widgets_values") or [])
    for n in w["nodes"]:
        if n["type"] not in OPTIONAL_SLOTS or (n.get("widgets_values") or [None])[0] != "none":
            continue
        folder, called = OPTIONAL_SLOTS[n["type"]]
        title = n.get("title") or ""
        assert "optional" in title and "'none'" in title, \
            f"node {n['id']} ({n['type']}): its title should say it is optional and what 'none' means"
        assert folder in text and called in text and "press R" in text, \
            f"the Note should say how to add the optional {called} ({folder}, refresh, pick it)"
