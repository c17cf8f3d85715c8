"""The per-node help docs against the live node classes, as ComfyUI registers them (both runtimes).

tests/no_comfyui/test_node_docs.py reads the classes from the source without ComfyUI; here the registered
classes themselves answer: every class id has js/docs/<id>.md, every input (required and optional) and
every output name of INPUT_TYPES() / RETURN_NAMES appears in it, no doc is for a class that does not exist,
and the reference block's input table lists exactly the class's inputs, in order.
"""
from __future__ import annotations

import re

import pytest

from comfyui_atelier.client.runtime import PACK_DIR

DOCS = PACK_DIR / "js" / "docs"


@pytest.fixture(scope="module")
def classes(comfy):
    from comfyui_atelier import nodes as families

    assert not families.FAILED_FAMILIES, families.FAILED_FAMILIES
    return families.NODE_CLASS_MAPPINGS


def _inputs(cls) -> list[str]:
    types = cls.INPUT_TYPES()
    return [n for section in ("required", "optional") for n in (types.get(section) or {})]


def _outputs(cls) -> list[str]:
    return list(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES)


def test_a_doc_for_every_registered_class_and_none_for_others(classes):
    docs = {p.stem for p in DOCS.glob("*.md")}
    assert len(classes) >= 25
    assert sorted(set(classes) - docs) == [] and sorted(docs - set(classes)) == []


def test_every_input_and_output_is_in_its_doc_and_the_table_is_current(classes):
    bad = {}
    for class_id, cls in sorted(classes.items()):
        text = (DOCS / f"{class_id}.md").read_text(encoding="utf-8")
        missing = [n for n in _inputs(cls) + _outputs(cls) if f"`{n}`" not in text]
        table = text.split("### Inputs", 1)[1].split("###", 1)[0]
        listed = re.findall(r"^\| `([^`]+)`", table, flags=re.M)
        if missing or listed != _inputs(cls):
            bad[class_id] = {"missing": missing, "table": listed, "class": _inputs(cls)}
    assert bad == {}, f"stale docs (python scripts/node_docs.py): {bad}"
