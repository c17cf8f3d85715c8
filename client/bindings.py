"""Which node inputs receive a dataset row's fields, and the per-row API prompt.

``--bind name=NODE.input`` (NODE: id, unique title or unique class type), bindings declared in the
workflow's ``extra.atelier.bindings``, and guesses from the graph (the one image loader, the prompt
text upstream of a sampler's positive/negative, seed inputs). ``patch_prompt`` applies a row;
``row_fingerprint`` is what produced a row's outputs (a resume re-runs an id whose fingerprint changed).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import zlib
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import AtelierError
from ..core.manifest import sha256_file
from . import convert as _convert
from .dataset import Row

PREFIX_INPUTS = ("filename_prefix",)


@dataclass
class Bindings:
    """Which node inputs receive the row's data. Each name maps to [(node_id, input_name)]."""
    targets: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def get(self, name: str) -> list[tuple[str, str]]:
        return self.targets.get(name, [])

    def describe(self) -> str:
        return ", ".join(f"{k} -> " + " + ".join(f"{n}.{i}" for n, i in v) for k, v in sorted(self.targets.items()) if v)


def _titles(prompt: dict, ui_workflow: dict | None) -> dict[str, str]:
    titles = {nid: (n.get("_meta") or {}).get("title") for nid, n in prompt.items()}
    if ui_workflow and isinstance(ui_workflow.get("nodes"), list):
        for n in ui_workflow["nodes"]:
            if n.get("title"):
                titles[str(n["id"])] = n["title"]
    return {k: v for k, v in titles.items() if v}


def parse_bind(spec: str, prompt: dict, titles: dict[str, str]) -> tuple[str, list[tuple[str, str]]]:
    """``name=NODE.input[,NODE.input]``; NODE is a node id, a node title or a class type (if unique)."""
    if "=" not in spec:
        raise AtelierError(f"--bind {spec!r} has no '='", expected="NAME=NODE.INPUT, e.g. prompt=6.text",
                           fix="write --bind prompt=6.text (node id or title, then the input name)")
    name, rhs = spec.split("=", 1)
    out = []
    for part in rhs.split(","):
        if "." not in part:
            raise AtelierError(f"--bind {spec!r}: '{part}' has no '.INPUT'", expected="NODE.INPUT, e.g. 6.text")
        node, inp = part.rsplit(".", 1)
        node = node.strip()
        cand = [node] if node in prompt else [k for k, t in titles.items() if t == node]
        if not cand:
            cand = [k for k, n in prompt.items() if n.get("class_type") == node]
        if len(cand) != 1:
            raise AtelierError(f"--bind {spec!r}: node '{node}' " + ("is ambiguous" if cand else "is not in the workflow"),
                               expected="a node id, a unique node title or a unique class type",
                               fix="use the node id (shown in the API-format workflow)")
        out.append((cand[0], inp.strip()))
    return name.strip(), out


def _upstream_text(prompt: dict, object_info: dict, start: list, depth: int = 8,
                   key: str | None = None) -> tuple[str, str] | None:
    """Follow a CONDITIONING link upstream to the first literal prompt text input.

    Through nodes that carry both conditionings (ControlNetApplyAdvanced...), only the input
    named like the sampler's (``key`` = positive/negative) is followed.
    """
    frontier, seen = [start], set()
    for _ in range(depth):
        nxt = []
        for ref in frontier:
            nid = ref[0]
            if nid in seen or nid not in prompt:
                continue
            seen.add(nid)
            node = prompt[nid]
            specs = _convert.node_inputs(object_info.get(node.get("class_type"), {}))
            for name, val in node.get("inputs", {}).items():
                t, opts = _convert._input_spec(specs.get(name))
                if t == "STRING" and (name in ("text", "prompt", "positive", "text_g") or opts.get("multiline")):
                    if isinstance(val, str):
                        return nid, name
                    if isinstance(val, list):  # text comes from another node (e.g. a string primitive)
                        src = prompt.get(val[0], {})
                        for n2, v2 in src.get("inputs", {}).items():
                            if isinstance(v2, str):
                                return val[0], n2
            ins = node.get("inputs", {})
            if key and isinstance(ins.get(key), list):
                nxt.append(ins[key])
                continue
            for val in ins.values():
                if isinstance(val, list) and len(val) == 2 and isinstance(val[0], str):
                    nxt.append(val)
        frontier = nxt
    return None


def auto_bindings(prompt: dict, object_info: dict) -> Bindings:
    """Guess image / prompt / negative / seed bindings from the graph (explicit --bind wins)."""
    b = Bindings()
    uploads = []
    for nid, n in prompt.items():
        specs = _convert.node_inputs(object_info.get(n.get("class_type"), {}))
        for name, spec in specs.items():
            _, opts = _convert._input_spec(spec)
            if opts.get("image_upload") and not isinstance(n.get("inputs", {}).get(name), list):
                uploads.append((nid, name))
    if len(uploads) == 1:
        b.targets["image"] = uploads
    elif len(uploads) > 1:
        b.notes.append(f"several image loaders ({', '.join(f'{n}.{i}' for n, i in uploads)}): "
                       f"say which one gets the dataset image with --bind image=NODE.image")
    pos, neg = [], []
    for nid, n in prompt.items():
        ins = n.get("inputs", {})
        for key, acc in (("positive", pos), ("negative", neg)):
            ref = ins.get(key)
            if isinstance(ref, list) and len(ref) == 2:
                hit = _upstream_text(prompt, object_info, ref, key=key)
                if hit and hit not in acc:
                    acc.append(hit)
    if pos:
        b.targets["prompt"] = pos[:1] if len(pos) > 1 and len(set(pos)) > 1 else pos
    if neg and neg != pos:
        b.targets["negative"] = [t for t in neg if t not in pos]
    seeds = [(nid, k) for nid, n in prompt.items() for k, v in n.get("inputs", {}).items()
             if k in ("seed", "noise_seed") and isinstance(v, int)]
    if seeds:
        b.targets["seed"] = seeds
    return b


def resolve_bindings(prompt: dict, object_info: dict, specs: list[str], ui_workflow: dict | None = None) -> Bindings:
    b = auto_bindings(prompt, object_info)
    titles = _titles(prompt, ui_workflow)
    for spec in specs or []:
        name, targets = parse_bind(spec, prompt, titles)
        if name == "negative_prompt":
            name = "negative"
        b.targets[name] = targets
    for name, targets in b.targets.items():
        for nid, inp in targets:
            info = object_info.get(prompt[nid]["class_type"], {})
            if inp not in _convert.node_inputs(info) and inp not in prompt[nid].get("inputs", {}):
                raise AtelierError(f"binding '{name}': node {nid} ({prompt[nid]['class_type']}) has no input '{inp}'",
                                   expected=f"one of {sorted(_convert.node_inputs(info))}",
                                   fix="fix the --bind option")
    return b


def seed_for(row_id: str, base: int) -> int:
    """Stable per-id seed (same id -> same seed on every run and server)."""
    return (base + zlib.crc32(row_id.encode("utf-8"))) % (2 ** 32)


def patch_prompt(prompt: dict, bindings: Bindings, row: Row, *, image_name: str | None, seed_mode: str,
                 seed_base: int, server_prefix: str, object_info: dict) -> tuple[dict, dict]:
    """Per-row API prompt. Returns (prompt, applied) where applied records what was set.

    Only the nodes and their ``inputs`` dicts are copied (that is all a row sets); the values in them are
    shared with ``prompt``, which is never changed (a deep copy cost ~45 us a call, twice a job)."""
    p = {nid: {**n, "inputs": dict(n["inputs"])} if isinstance(n, dict) and isinstance(n.get("inputs"), dict)
         else copy.deepcopy(n) for nid, n in prompt.items()}
    applied: dict[str, Any] = {}

    def put(name, value):
        for nid, inp in bindings.get(name):
            p[nid]["inputs"][inp] = value
        applied[name] = value

    if image_name is not None and bindings.get("image"):
        put("image", image_name)
    if row.prompt is not None and bindings.get("prompt"):
        put("prompt", str(row.prompt))
    ov = dict(row.overrides)
    neg = ov.pop("negative", ov.pop("negative_prompt", None))
    if neg is not None and bindings.get("negative"):
        put("negative", str(neg))
    seed = ov.pop("seed", None)
    if seed is None and seed_mode == "id":
        seed = seed_for(row.id, seed_base)
    if seed is not None and bindings.get("seed"):
        put("seed", int(seed))
    for key, value in ov.items():
        if key in bindings.targets:
            put(key, value)
        elif "." in key and key.rsplit(".", 1)[0] in p:  # column "6.text" / "3.steps"
            nid, inp = key.rsplit(".", 1)
            p[nid]["inputs"][inp] = value
            applied[key] = value
    if server_prefix:
        for nid, n in p.items():
            info = object_info.get(n.get("class_type"), {})
            if info.get("output_node"):
                for k in PREFIX_INPUTS:
                    if isinstance(n["inputs"].get(k), str):
                        n["inputs"][k] = f"{server_prefix}/{row.id}"
                        applied["filename_prefix"] = n["inputs"][k]
    return p, applied


def node_column_problems(prompt: dict, bindings: Bindings, rows: list[Row], object_info: dict) -> list[str]:
    """Columns named NODE.INPUT whose node (in the workflow) has no such input: one line each, with
    the node's id, class type and the inputs it does have (per the API prompt and /object_info)."""
    problems = []
    for col in sorted({k for r in rows for k in r.overrides}):
        if col in bindings.targets or "." not in col:
            continue
        nid, inp = col.rsplit(".", 1)
        if nid not in prompt:
            continue
        node = prompt[nid]
        ctype = node.get("class_type")
        have = list(_convert.node_inputs(object_info.get(ctype, {})))
        have += [k for k in node.get("inputs", {}) if k not in have]
        if inp not in have:
            problems.append(f"column '{col}': node {nid} ({ctype}) has no input '{inp}'; its inputs are "
                            + (", ".join(have) or "(none)"))
    return problems


def row_fingerprint(prompt: dict, bindings: Bindings, row: Row, *, seed_mode: str, seed_base: int,
                    server_prefix: str, object_info: dict, image_data: bytes | None = None) -> str:
    """What produced a row's outputs: sha256 of the canonical API prompt as patched for that row
    (node titles left out) plus the sha256 of its input image (``image_data``: its bytes, already read
    for the upload; otherwise the file is read). A resume re-runs an id whose recorded fingerprint differs
    from this."""
    image_name, image_sha = None, None
    if row.image and bindings.get("image"):
        image_name = f"{row.id}{os.path.splitext(row.image)[1].lower()}"  # the upload folder is per --out
        if image_data is not None:
            image_sha = hashlib.sha256(image_data).hexdigest()
        else:
            try:
                image_sha = sha256_file(row.image)
            except OSError:
                image_sha = "unreadable"
    p, _ = patch_prompt(prompt, bindings, row, image_name=image_name, seed_mode=seed_mode, seed_base=seed_base,
                        server_prefix=server_prefix, object_info=object_info)
    for n in p.values():
        if isinstance(n, dict):
            n.pop("_meta", None)
    blob = json.dumps({"prompt": p, "image_sha256": image_sha}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(blob.encode("utf-8")).hexdigest()
