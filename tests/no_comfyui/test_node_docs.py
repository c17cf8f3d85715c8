"""Per-node help docs (js/docs/<NodeClassId>.md, shown by the current ComfyUI frontend's node help panel):
one doc for every node class the pack registers, naming every input and output of the class, none for a
class that does not exist; the generated reference block names the inputs the class has, and no others.

Read from the source without ComfyUI: the class ids from each node module's NODE_CLASS_MAPPINGS literal,
the outputs from RETURN_NAMES (or RETURN_TYPES), the inputs from the keys that INPUT_TYPES (and the module
helpers it calls) map to an input spec tuple. tests/comfyui_in_process/test_node_docs_nodes.py checks the
same docs against the live classes on both runtimes.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NODES = ROOT / "nodes"
DOCS = ROOT / "js" / "docs"
START = "<!-- atelier:reference"
END = "<!-- /atelier:reference -->"


def _strings(node) -> list[str] | None:
    if isinstance(node, (ast.Tuple, ast.List)) and all(isinstance(e, ast.Constant) and isinstance(e.value, str)
                                                        for e in node.elts):
        return [e.value for e in node.elts]
    return None


def _class_attr(cls: ast.ClassDef, name: str):
    for stmt in cls.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets):
            return stmt.value
    return None


def _input_names(func: ast.FunctionDef, helpers: dict[str, ast.FunctionDef], seen=None) -> list[str]:
    """Keys mapped to a tuple (an input spec) in dict literals or item assignments of INPUT_TYPES and of
    the module's helper functions it calls."""
    seen = set() if seen is None else seen
    names: list[str] = []
    for node in ast.walk(func):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and isinstance(k.value, str) and isinstance(v, ast.Tuple):
                    names.append(k.value)
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple):  # req["name"] = (TYPE, {...})
            names += [t.slice.value for t in node.targets if isinstance(t, ast.Subscript)
                      and isinstance(t.slice, ast.Constant) and isinstance(t.slice.value, str)]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in helpers \
                and node.func.id not in seen:
            seen.add(node.func.id)
            names += _input_names(helpers[node.func.id], helpers, seen)
    return names


def node_index() -> dict[str, dict]:
    """class id -> {"module", "inputs", "outputs"} for every class in the node modules' NODE_CLASS_MAPPINGS."""
    index = {}
    for path in sorted(NODES.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
        helpers = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        for stmt in tree.body:
            if not (isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Dict)
                    and any(isinstance(t, ast.Name) and t.id == "NODE_CLASS_MAPPINGS" for t in stmt.targets)):
                continue
            for k, v in zip(stmt.value.keys, stmt.value.values):
                assert isinstance(k, ast.Constant) and isinstance(v, ast.Name), f"{path.name}: NODE_CLASS_MAPPINGS entry"
                cls = classes[v.id]
                it = next(f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "INPUT_TYPES")
                outputs = _strings(_class_attr(cls, "RETURN_NAMES")) or _strings(_class_attr(cls, "RETURN_TYPES"))
                assert outputs is not None, f"{k.value}: RETURN_NAMES / RETURN_TYPES is not a literal tuple of strings"
                index[k.value] = {"module": path.name, "inputs": _input_names(it, helpers), "outputs": outputs}
    return index


INDEX = node_index()


def doc(class_id: str) -> str:
    return (DOCS / f"{class_id}.md").read_text(encoding="utf-8")


def reference_inputs(text: str) -> list[str]:
    """The input names of the generated reference block's inputs table."""
    block = text.split(START, 1)[1].split(END, 1)[0]
    table = block.split("### Inputs", 1)[1].split("###", 1)[0]
    return re.findall(r"^\| `([^`]+)`", table, flags=re.M)


def test_the_reader_finds_the_pack_s_nodes():
    assert len(INDEX) >= 30, sorted(INDEX)
    assert all(cid.startswith("Atelier") for cid in INDEX)
    # a few known shapes, so a reader that finds nothing cannot pass
    assert INDEX["AtelierRemoveBackground"]["outputs"] == ["image", "mask", "rgba", "saliency"]
    assert {"saliency_model", "image", "max_side", "mask"} <= set(INDEX["AtelierRemoveBackground"]["inputs"])
    assert {"prompt", "preset", "style_id"} <= set(INDEX["AtelierSystemPrompt"]["inputs"])  # via helpers
    assert all(v["inputs"] for v in INDEX.values()), [k for k, v in INDEX.items() if not v["inputs"]]


def test_every_registered_node_class_has_a_doc_and_no_doc_is_orphaned():
    docs = {p.stem for p in DOCS.glob("*.md")}
    assert sorted(set(INDEX) - docs) == [], "node classes without js/docs/<id>.md (python scripts/node_docs.py writes a stub)"
    assert sorted(docs - set(INDEX)) == [], "docs for node classes the pack does not register"
    # the frontend's other layout, docs/<id>/<locale>.md, must be for real classes too
    assert sorted(p.name for p in DOCS.iterdir() if p.is_dir() and p.name not in INDEX) == []
    # every *.js under the web directory is loaded as an extension by ComfyUI: none may sit among the docs
    assert list(DOCS.rglob("*.js")) == []


@pytest.mark.parametrize("class_id", sorted(INDEX))
def test_doc_names_every_input_and_output(class_id):
    text = doc(class_id)
    missing = [n for n in INDEX[class_id]["inputs"] + INDEX[class_id]["outputs"] if f"`{n}`" not in text]
    assert missing == [], f"js/docs/{class_id}.md does not name {missing} (python scripts/node_docs.py)"


@pytest.mark.parametrize("class_id", sorted(INDEX))
def test_doc_is_written_prose_plus_a_current_reference(class_id):
    text = doc(class_id)
    assert text.startswith("# "), "a doc opens with the node's display name as its title"
    assert START in text and END in text, "the generated reference block is missing (python scripts/node_docs.py)"
    prose = text.split(START, 1)[0]
    assert "(to write)" not in prose, "the stub's prose is not written yet"
    assert "## How to use it" in prose and "## Pitfalls and errors" in prose
    assert len(prose.split()) >= 80, "the prose explains the node's use, not only its name"
    stale = sorted(set(reference_inputs(text)) - set(INDEX[class_id]["inputs"]))
    assert stale == [], f"the reference lists inputs the class no longer has: {stale} (python scripts/node_docs.py)"


def test_docs_name_the_shipped_workflows_that_use_them():
    uses: dict[str, set[str]] = {}
    for wf in sorted((ROOT / "workflows").glob("*.json")):
        for node in json.loads(wf.read_text(encoding="utf-8"))["nodes"]:
            uses.setdefault(node["type"], set()).add(wf.name)
    assert any(t in INDEX for t in uses), "no shipped workflow uses an Atelier node: the scan is broken"
    for class_id in INDEX:
        block = doc(class_id).split(START, 1)[1]
        named = set(re.findall(r"`workflows/([^`]+\.json)`", block))
        assert named == uses.get(class_id, set()), f"{class_id}: the doc names {sorted(named)}"


def test_the_wheel_ships_the_docs_and_not_the_contributor_guide(tmp_path):
    """A pip-installed pack (comfy-cli, the Registry) carries js/docs/*.md; CONTRIBUTING.md stays in the repo.
    Built from a copy of the tree, offline (no build isolation), so the checkout gets no build/ folder."""
    import shutil
    import subprocess
    import sys
    import zipfile

    skip = {".git", ".venv", ".cache", ".pytest_cache", "build", "tests"}
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=lambda d, names: [
        n for n in names if (Path(d) == ROOT and n in skip) or n.endswith(".egg-info") or n == "__pycache__"])
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    docs = {f"comfyui_atelier/js/docs/{p.name}" for p in DOCS.glob("*.md")}
    assert docs and docs <= names, sorted(docs - names)
    assert "comfyui_atelier/js/atelier.js" in names
    assert not [n for n in names if n.endswith("CONTRIBUTING.md")]
