"""UI-format ComfyUI workflow -> API-format prompt, driven by the server's /object_info.

Follows the rules of the ComfyUI frontend's ``graphToPrompt``:

* subgraphs (``definitions.subgraphs``) are flattened into their inner nodes, ids
  ``<instance id>:<inner id>`` (nested: ``a:b:c``), links wired through the subgraph inputs and
  outputs, promoted widgets taking the instance's value (client/flatten.py);

* frontend-only (virtual) nodes are not serialised: ``Reroute`` passes its input through,
  ``PrimitiveNode`` has already pushed its value into the target widget, ``Note`` is dropped;
* muted nodes (mode 2) are dropped together with every link that points at them; bypassed
  nodes (mode 4) are dropped and a link through them is passed to the bypassed node's first
  input of the same type (trying the input at the output's slot index first);
* ``widgets_values`` map, in order, to the node's widget inputs (required then optional,
  INT/FLOAT/STRING/BOOLEAN/COMBO); the hidden ``control_after_generate`` value after a
  seed-like INT (named ``seed``/``noise_seed`` or flagged ``control_after_generate``), the
  control + filter values after a COMBO with ``control_after_generate``, and the ``upload``
  button value after an ``image_upload`` input are skipped;
* a widget converted to an input takes the link when one is connected and is left out when
  the converted input has no link (old frontends); a link always wins over a widget value;
* dynamic-prompt STRING widgets get comments stripped and ``{a|b}`` choices resolved,
  ``SaveImage.filename_prefix`` gets ``%Node.widget%`` / ``%date:...%`` replaced.

Only the standard library is used (no torch), so this runs on a laptop.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import random
import re
from typing import Any, Iterable

from ..core import jsontext
from ..core.errors import AtelierError
from ..core.files import atomic_path
from .flatten import MODE_BYPASS, MODE_NEVER, FlatGraph

# Frontend-only node types (never sent to the server). Extra ones can be passed in.
VIRTUAL_NODE_TYPES = frozenset({
    "Reroute", "PrimitiveNode", "Note", "MarkdownNote",
    "Reroute (rgthree)", "Note (rgthree)", "Label (rgthree)", "Fast Groups Muter (rgthree)",
    "Fast Groups Bypasser (rgthree)", "Bookmark (rgthree)",
})
#: workflows nest ~8 levels (subgraph definitions included); deeper is refused before json.loads recurses
WORKFLOW_MAX_DEPTH = 64
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize", "increment-wrap"})


# --------------------------------------------------------------------------- loading

def load_json(path: str | os.PathLike) -> Any:
    """Read a JSON file with an error that names the file."""
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise AtelierError(f"workflow file '{p}' does not exist", expected="a ComfyUI workflow .json file",
                           fix="check the path (shipped workflows live in workflows/ and workflows/api/)")
    try:
        with open(p, "r", encoding="utf-8") as f:
            return jsontext.loads(f.read(), limit=WORKFLOW_MAX_DEPTH)
    except UnicodeDecodeError as e:
        raise AtelierError(f"workflow file '{p}' is not UTF-8 text ({e})",
                           fix="re-export it from ComfyUI (Save, or Save (API Format))") from None
    except ValueError as e:  # invalid JSON, or nested too deep for json.loads' recursion
        raise AtelierError(f"workflow file '{p}' is not valid JSON ({e})",
                           fix="re-export it from ComfyUI (Save, or Save (API Format))") from None


def is_api_format(wf: Any) -> bool:
    """API format: {node_id: {"class_type": ..., "inputs": {...}}}."""
    return (isinstance(wf, dict) and bool(wf) and "nodes" not in wf
            and all(isinstance(v, dict) and "class_type" in v for v in wf.values()))


def is_ui_format(wf: Any) -> bool:
    return isinstance(wf, dict) and isinstance(wf.get("nodes"), list)


# --------------------------------------------------------------------------- object_info helpers

def _input_spec(spec: Any) -> tuple[Any, dict]:
    if not isinstance(spec, (list, tuple)) or not spec:
        return spec, {}
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return spec[0], opts


def _is_widget(type_: Any) -> bool:
    return isinstance(type_, (list, tuple)) or (isinstance(type_, str) and type_ in WIDGET_TYPES)


def _is_combo(type_: Any) -> bool:
    return isinstance(type_, (list, tuple)) or type_ == "COMBO"


def combo_options(spec: Any) -> list | None:
    """Allowed values of a COMBO input spec (old list form or new ``["COMBO", {"options": [...]}]``)."""
    type_, opts = _input_spec(spec)
    if isinstance(type_, (list, tuple)):
        return list(type_)
    if type_ == "COMBO" and isinstance(opts.get("options"), list):
        return list(opts["options"])
    return None


def node_inputs(info: dict) -> dict:
    """Required then optional inputs of one /object_info entry, in declaration order."""
    inp = info.get("input") or {}
    out = dict(inp.get("required") or {})
    for k, v in (inp.get("optional") or {}).items():
        out.setdefault(k, v)
    return out


def _widget_layout(info: dict, *, force_input: bool, controls: bool, combo_filter: bool) -> list[tuple[str | None, str]]:
    """Slots of widgets_values for a node: (widget name or None for a hidden value, kind)."""
    slots: list[tuple[str | None, str]] = []
    req = (info.get("input") or {}).get("required") or {}
    opt = (info.get("input") or {}).get("optional") or {}
    upload_after_required = False
    seq = [(k, v, True) for k, v in req.items()] + [(k, v, False) for k, v in opt.items() if k not in req]
    for i, (name, spec, is_req) in enumerate(seq):
        type_, opts = _input_spec(spec)
        if any(opts.get(f) for f in ("image_upload", "video_upload", "audio_upload", "animated_image_upload")):
            upload_after_required = True
        if not _is_widget(type_):
            continue
        if opts.get("forceInput") and not force_input:
            continue
        slots.append((name, "value"))
        if controls:
            if type_ == "INT" and (name in ("seed", "noise_seed") or opts.get("control_after_generate")):
                slots.append((None, "control"))
            elif _is_combo(type_) and opts.get("control_after_generate"):
                slots.append((None, "control"))
                if combo_filter:
                    slots.append((None, "filter"))
        # the upload button is added at the end of the required inputs (before optional ones)
        if upload_after_required and is_req and (i + 1 == len(seq) or not seq[i + 1][2]):
            slots.append((None, "upload"))
            upload_after_required = False
    if upload_after_required:
        slots.append((None, "upload"))
    return slots


def _is_control(v: Any) -> bool:
    # old workflows saved the seed control as a boolean ("randomize" on/off)
    return isinstance(v, bool) or (isinstance(v, str) and v in CONTROL_VALUES)


def _layout_fits(slots, values) -> bool:
    if len(slots) != len(values):
        return False
    return all(_is_control(v) for (name, kind), v in zip(slots, values) if kind == "control")


def widget_default(spec: Any) -> Any:
    """The value a fresh frontend widget starts with (used when widgets_values is absent/short)."""
    type_, opts = _input_spec(spec)
    if _is_combo(type_):
        if "default" in opts:
            return opts["default"]
        options = combo_options(spec) or [None]
        return options[0] if options else None
    if "default" in opts:
        return opts["default"]
    if type_ in ("INT", "FLOAT"):
        return 0
    if type_ == "STRING":
        return ""
    if type_ == "BOOLEAN":
        return False
    return None


def map_widget_values(class_type: str, info: dict, values: Any, *, node_id: Any = None) -> dict[str, Any]:
    """widgets_values (list or dict) -> {widget input name: value}."""
    defaults = {name: widget_default(node_inputs(info)[name])
                for name, kind in _widget_layout(info, force_input=False, controls=False, combo_filter=False)
                if name is not None}
    if values is None:
        return defaults
    if isinstance(values, dict):  # some custom nodes save a name->value dict
        names = {n for n, _ in _widget_layout(info, force_input=True, controls=False, combo_filter=False) if n}
        return {**defaults, **{k: v for k, v in values.items() if k in names}}
    if not isinstance(values, list):
        raise AtelierError(f"widgets_values of node {node_id} ({class_type}) is neither a list nor a dict",
                           node=class_type, fix="re-save the workflow from the ComfyUI editor")
    candidates = []
    for force_input in (True, False):
        for controls in (True, False):
            for combo_filter in (True, False):
                lay = _widget_layout(info, force_input=force_input, controls=controls, combo_filter=combo_filter)
                if lay not in candidates:
                    candidates.append(lay)
    chosen = next((c for c in candidates if _layout_fits(c, values)), None)
    if chosen is None:
        # Fall back to the frontend's own layout; skip control values only where they really are.
        chosen = []
        vals = list(values)
        pos = 0
        for name, kind in candidates[0]:
            if pos >= len(vals):
                break
            if kind == "control" and not _is_control(vals[pos]):
                continue
            if kind == "filter" and not (isinstance(vals[pos], str) and pos > 0 and _is_control(vals[pos - 1])):
                continue
            chosen.append((name, kind))
            pos += 1
    out: dict[str, Any] = dict(defaults)
    for (name, kind), v in zip(chosen, values):
        if name is not None and kind == "value":
            out[name] = v
    return out


# --------------------------------------------------------------------------- text replacements

def strip_comments(text: str) -> str:
    return re.sub(r"/\*[\s\S]*?\*/|//.*", "", text)


def resolve_dynamic_prompt(text: str, rng: random.Random | None = None) -> str:
    """The frontend's dynamic prompts: strip C comments, replace each ``{a|b|c}`` by one option."""
    rng = rng or random.Random(0)
    prompt = strip_comments(text)
    while "{" in prompt.replace("\\{", "") and "}" in prompt.replace("\\}", ""):
        start = prompt.replace("\\{", "00").find("{")
        end = prompt.replace("\\}", "00").find("}")
        if end < start:
            break
        options = prompt[start + 1:end].split("|")
        prompt = prompt[:start] + rng.choice(options) + prompt[end + 1:]
    return prompt


def _format_date(fmt: str, now: _dt.datetime) -> str:
    repl = {"yyyy": f"{now.year:04d}", "yy": f"{now.year % 100:02d}", "MM": f"{now.month:02d}",
            "M": str(now.month), "dd": f"{now.day:02d}", "d": str(now.day), "hh": f"{now.hour:02d}",
            "h": str(now.hour), "mm": f"{now.minute:02d}", "m": str(now.minute), "ss": f"{now.second:02d}",
            "s": str(now.second)}
    return re.sub(r"yyyy|yy|MM|M|dd|d|hh|h|mm|m|ss|s", lambda m: repl[m.group(0)], fmt)


def apply_text_replacements(value: str, nodes: list[dict], widget_map: dict, now: _dt.datetime | None = None) -> str:
    """``%date:FMT%`` and ``%NodeTitleOrS&RName.widget%`` as the frontend's SaveImage does."""
    now = now or _dt.datetime.now()

    def sub(m: re.Match) -> str:
        body = m.group(1)
        if body.startswith("date:"):
            return _format_date(body[5:], now)
        if "." not in body:
            return m.group(0)
        node_name, widget = body.split(".", 1)
        for n in nodes:
            props = n.get("properties") or {}
            if node_name in (props.get("Node name for S&R"), n.get("title")):
                vals = widget_map.get(n.get("id"), {})
                if widget in vals:
                    return str(vals[widget]).replace("/", "_").replace("\\", "_")
        return m.group(0)

    return re.sub(r"%([^%]+)%", sub, value)


# --------------------------------------------------------------------------- conversion

def _frontend_major_minor(wf: dict) -> tuple[int, int] | None:
    v = ((wf.get("extra") or {}).get("frontendVersion"))
    if not isinstance(v, str):
        return None
    m = re.match(r"(\d+)\.(\d+)", v)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _check_node_types(flat: FlatGraph, object_info: dict, group_nodes: dict) -> None:
    """Group nodes and node types the server lacks: one clear message (inner nodes named by their path)."""
    unknown = []
    for p in flat.placed.values():
        n, t = p.node, p.node.get("type")
        if flat.is_instance(n) or flat.is_virtual(n) or t in object_info:
            continue
        if n.get("mode") in (MODE_NEVER, MODE_BYPASS):
            continue  # never sent, so a missing pack does not matter
        if isinstance(t, str) and (t.startswith("workflow/") or t.startswith("workflow>")) or t in group_nodes:
            raise AtelierError(f"node {p.exec_id} is a group node ('{t}'); group nodes are not supported",
                               node=str(t), fix="right-click the group node > Convert to nodes, then save again")
        unknown.append(f"#{p.exec_id} '{t}'")
    if unknown:
        raise AtelierError(f"the workflow uses node types the server does not have: {', '.join(unknown)}",
                           expected="every node type listed in the server's /object_info",
                           fix="install the custom node pack that provides them on the server (ComfyUI-Manager > "
                               "Install Missing Custom Nodes) and restart it, or remove those nodes")


def _widget_inputs(p, vals: dict, info: dict, new_frontend: bool, text_fix) -> dict[str, Any]:
    """The widget part of one node's API inputs (before links are added)."""
    specs = node_inputs(info)
    n = p.node
    converted = {i["widget"]["name"]: i for i in (n.get("inputs") or [])
                 if isinstance(i.get("widget"), dict) and "name" in i["widget"]}
    inputs: dict[str, Any] = {}
    for name, value in vals.items():
        slot = converted.get(name)
        if slot is not None and slot.get("link") is None and not new_frontend and len(converted) < len(vals):
            continue  # converted-to-input widget with nothing connected: the old frontend leaves it out
        inputs[name] = text_fix(n["type"], name, value, specs.get(name))
    return inputs


def ui_to_api(workflow: dict, object_info: dict, *, extra_virtual: Iterable[str] = (),
              dynamic_prompt_seed: int | None = 0, now: _dt.datetime | None = None) -> dict:
    """Convert a UI-format workflow (``{"nodes": [...], "links": [...]}``) to an API prompt.

    ``object_info`` is the server's /object_info. Subgraphs (``definitions.subgraphs``) are flattened
    as the frontend does (inner node ids ``<instance id>:<inner id>``, see client/flatten.py). Raises
    AtelierError naming the node for an unknown node type or a group node (which must be ungrouped).
    """
    if not is_ui_format(workflow):
        raise AtelierError("this is not a UI-format workflow (no 'nodes' list)",
                           expected="a workflow saved with ComfyUI's Save / Export",
                           fix="pass an API-format file as is, or re-export the workflow")
    virtual = set(VIRTUAL_NODE_TYPES) | set(extra_virtual)
    flat = FlatGraph(workflow, lambda n: n.get("type") in virtual and n.get("type") not in object_info)
    _check_node_types(flat, object_info, (workflow.get("extra") or {}).get("groupNodes") or {})
    fe = _frontend_major_minor(workflow)
    new_frontend = flat.definitions != {} or (fe is not None and fe >= (1, 16))
    real = [p for p in flat.real_nodes() if p.node.get("type") in object_info]  # others are muted/bypassed
    widget_vals = {p.exec_id: map_widget_values(p.node["type"], object_info[p.node["type"]],
                                                p.node.get("widgets_values"), node_id=p.exec_id) for p in real}
    flat.widget_values = widget_vals
    root_vals = {p.node["id"]: widget_vals[p.exec_id] for p in real if not p.path}
    rng = random.Random(dynamic_prompt_seed) if dynamic_prompt_seed is not None else random.Random()

    def text_fix(ctype, name, value, spec):
        type_, opts = _input_spec(spec)
        dynamic = (opts.get("multiline") and opts.get("dynamicPrompts") is not False) or opts.get("dynamicPrompts")
        if isinstance(value, str) and type_ == "STRING" and dynamic:
            value = resolve_dynamic_prompt(value, rng)
        if ctype == "SaveImage" and name == "filename_prefix" and isinstance(value, str):
            value = apply_text_replacements(value, workflow["nodes"], root_vals, now)
        return value

    output: dict[str, dict] = {}
    for p in real:
        if p.node.get("mode") in (MODE_NEVER, MODE_BYPASS):
            continue
        info = object_info[p.node["type"]]
        inputs = _widget_inputs(p, widget_vals[p.exec_id], info, new_frontend, text_fix)
        for slot, inp in enumerate(p.node.get("inputs") or []):
            got = flat.resolve_input(p, slot)
            if got is not None:
                name = inp["name"] if "widget" not in inp else inp["widget"].get("name", inp["name"])
                inputs[name] = [got[1], got[2]] if got[0] == "link" else got[1]
        output[p.exec_id] = {"inputs": inputs, "class_type": p.node["type"]}

    # links to nodes that were not serialised (muted, virtual dead ends) are removed
    for node in output.values():
        for k in [k for k, v in node["inputs"].items()
                  if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and v[0] not in output]:
            del node["inputs"][k]
    return output


def to_api(workflow: Any, object_info: dict, **kw) -> dict:
    """API prompt from a UI-format or API-format workflow (dict or path)."""
    if isinstance(workflow, (str, os.PathLike)):
        workflow = load_json(workflow)
    if is_api_format(workflow):
        return json.loads(json.dumps(workflow))
    if isinstance(workflow, dict) and isinstance(workflow.get("prompt"), dict) and is_api_format(workflow["prompt"]):
        return json.loads(json.dumps(workflow["prompt"]))
    return ui_to_api(workflow, object_info, **kw)


# --------------------------------------------------------------------------- validation

def validate_api(prompt: dict, object_info: dict, *, check_combos: bool = True,
                 skip: Iterable[tuple[str, str]] = ()) -> list[str]:
    """Problems that would make the server reject the prompt, as readable lines (empty = OK)."""
    problems: list[str] = []
    skip = set(skip)
    has_output = False
    for nid, node in prompt.items():
        ctype = node.get("class_type")
        info = object_info.get(ctype)
        if info is None:
            problems.append(f"node {nid}: unknown node type '{ctype}' (not in the server's /object_info; install the "
                            f"custom node pack that provides it)")
            continue
        has_output = has_output or bool(info.get("output_node"))
        req = (info.get("input") or {}).get("required") or {}
        specs = node_inputs(info)
        inputs = node.get("inputs") or {}
        for name in req:
            if name not in inputs:
                problems.append(f"node {nid} ({ctype}): required input '{name}' is missing")
        for name, value in inputs.items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                if value[0] not in prompt:
                    problems.append(f"node {nid} ({ctype}): input '{name}' links to node {value[0]}, "
                                    f"which is not in the prompt")
                continue
            if name not in specs:
                continue
            opts = combo_options(specs[name])
            if (nid, name) in skip or _input_spec(specs[name])[1].get("image_upload"):
                continue  # filled per row / uploaded by the client
            if check_combos and opts is not None and value not in opts:
                shown = ", ".join(map(str, opts[:8])) + (" ..." if len(opts) > 8 else "")
                problems.append(f"node {nid} ({ctype}): input '{name}' = {value!r} is not available on the server "
                                f"(choices: {shown})")
    if prompt and not has_output:
        problems.append("the prompt has no output node (e.g. SaveImage), the server would refuse it")
    return problems


def main_convert(args) -> int:
    """`atelier convert WORKFLOW --server URL | --object-info FILE [-o OUT]`."""
    from .server_api import ComfyServer  # local import keeps convert usable alone
    if args.object_info:
        info = load_json(args.object_info)
    else:
        info = ComfyServer(args.server).object_info()
    api = to_api(args.workflow, info)
    text = json.dumps(api, indent=2, ensure_ascii=False) + "\n"
    if args.output:
        with atomic_path(args.output) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        print(text, end="")
    problems = validate_api(api, info, check_combos=not args.object_info)
    for p in problems:
        print(f"warning: {p}", file=__import__("sys").stderr)
    return 0
