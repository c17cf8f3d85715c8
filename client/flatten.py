"""A UI-format workflow's graph flattened as the ComfyUI frontend flattens it for ``graphToPrompt``.

Subgraph instances (nodes whose ``type`` is the id of an entry in ``definitions.subgraphs``) are
replaced by their inner nodes, recursively; an inner node's id is the path of instance ids above it
and its own id joined by ``:`` (``"12:5"``, ``"12:7:3"``). Links are followed through:

* a subgraph input (the inner link starts at the input node, id -10) continues at the instance's
  input in the graph around it; when that input has no link, the instance's promoted widget value
  is used (the value the user set on the subgraph node);
* a subgraph instance's output continues at the inner link into the output node (id -20);
* bypassed nodes (mode 4) pass a link to an input of a compatible type (the same slot first);
* frontend-only nodes (Reroute, PrimitiveNode, Note...) pass their same-slot input through.

Only the standard library is used.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from ..core.errors import AtelierError

SUBGRAPH_INPUT_ID, SUBGRAPH_OUTPUT_ID = -10, -20
MODE_NEVER, MODE_BYPASS = 2, 4
MAX_DEPTH = 32  # nested subgraphs deeper than this are refused (the frontend would recurse forever)
_NO_VALUE = object()


def links_by_id(links: Iterable) -> dict[int, dict]:
    """Links of one graph keyed by id, from the old array form or the newer object form."""
    out: dict[int, dict] = {}
    for l in links or []:
        if isinstance(l, dict):
            d = {"id": l["id"], "origin_id": l["origin_id"], "origin_slot": l["origin_slot"],
                 "target_id": l["target_id"], "target_slot": l["target_slot"], "type": l.get("type")}
        else:
            d = {"id": l[0], "origin_id": l[1], "origin_slot": l[2], "target_id": l[3], "target_slot": l[4],
                 "type": l[5] if len(l) > 5 else None}
        out[d["id"]] = d
    return out


@dataclass
class Scope:
    """One graph: the workflow's root graph or a subgraph definition."""
    nodes: dict[Any, dict]
    links: dict[int, dict]
    definition: dict | None = None  # the entry of definitions.subgraphs (None at the root)


@dataclass
class Placed:
    """A node at its place in the flattened graph."""
    node: dict
    scope: Scope
    path: tuple  # ids of the subgraph instances above it, outermost first
    instance: "Placed | None"  # the subgraph instance whose definition holds it

    @property
    def exec_id(self) -> str:
        return ":".join(str(p) for p in self.path + (self.node["id"],))


def _types_fit(a: Any, b: Any) -> bool:
    """LiteGraph's isValidConnection: equal, a wildcard, or comma-separated lists that share a type."""
    if a in ("*", "", None, 0) or b in ("*", "", None, 0) or a == b:
        return True
    sa = {t.strip().upper() for t in str(a).split(",")}
    sb = {t.strip().upper() for t in str(b).split(",")}
    return bool(sa & sb)


class FlatGraph:
    """Every node of a workflow, subgraph instances expanded, and the frontend's link resolution."""

    def __init__(self, workflow: dict, is_virtual):
        self.is_virtual = is_virtual
        defs = ((workflow.get("definitions") or {}).get("subgraphs")) or []
        self.definitions = {d.get("id"): d for d in defs if isinstance(d, dict) and d.get("id")}
        self.scopes = {k: Scope({n["id"]: n for n in d.get("nodes") or []}, links_by_id(d.get("links")), d)
                       for k, d in self.definitions.items()}
        self.root = Scope({n["id"]: n for n in workflow["nodes"]}, links_by_id(workflow.get("links")))
        self.placed: dict[str, Placed] = {}
        self._place(self.root, (), None, ())

    def is_instance(self, node: dict) -> bool:
        return node.get("type") in self.definitions

    def _place(self, scope: Scope, path: tuple, instance: Placed | None, open_defs: tuple) -> None:
        for node in scope.nodes.values():
            p = Placed(node, scope, path, instance)
            self.placed[p.exec_id] = p
            if not self.is_instance(node):
                continue
            name = self.definitions[node["type"]].get("name") or node["type"]
            if node["type"] in open_defs or len(path) >= MAX_DEPTH:
                raise AtelierError(f"subgraph '{name}' (node {p.exec_id}) contains itself",
                                   node=str(name), fix="re-save the workflow from the ComfyUI editor")
            self._place(self.scopes[node["type"]], path + (node["id"],), p, open_defs + (node["type"],))

    def real_nodes(self) -> list[Placed]:
        """The nodes that would be sent (not virtual, not an instance), in order, muted/bypassed included."""
        return [p for p in self.placed.values() if not self.is_instance(p.node) and not self.is_virtual(p.node)]

    def _at(self, path: tuple, node_id: Any) -> Placed | None:
        return self.placed.get(":".join(str(x) for x in path + (node_id,)))

    # ------------------------------------------------------------------ link resolution
    def resolve_input(self, p: Placed, slot: int, seen: set | None = None) -> tuple | None:
        """Where input ``slot`` of ``p`` comes from: ("link", exec id, output slot), ("value", v) or None."""
        seen = set() if seen is None else seen
        key = (p.exec_id, "in", slot)
        if key in seen:  # a cycle (the frontend raises); nothing is connected
            return None
        seen.add(key)
        ins = p.node.get("inputs") or []
        if slot >= len(ins) or not isinstance(ins[slot], dict) or ins[slot].get("link") is None:
            return None
        link = p.scope.links.get(ins[slot]["link"])
        if link is None:
            return None
        if p.instance is not None and link["origin_id"] == SUBGRAPH_INPUT_ID:
            inst, inst_slot = p.instance, link["origin_slot"]
            inst_ins = inst.node.get("inputs") or []
            if inst_slot >= len(inst_ins):
                return None
            if inst_ins[inst_slot].get("link") is None:
                value = self.promoted_value(inst, inst_slot)
                return None if value is _NO_VALUE else ("value", value)
            return self.resolve_input(inst, inst_slot, seen)
        origin = self._at(p.path, link["origin_id"])
        if origin is None:
            return None
        return self.resolve_output(origin, link["origin_slot"], ins[slot].get("type"), seen)

    def resolve_output(self, p: Placed, slot: int, want: Any, seen: set) -> tuple | None:
        key = (p.exec_id, "out", slot)
        if key in seen:
            return None
        seen.add(key)
        node = p.node
        if node.get("mode") == MODE_BYPASS:
            idx = self._bypass_slot(node, slot, want)
            return None if idx is None else self.resolve_input(p, idx, seen)
        if self.is_instance(node):
            inner = next((l for l in self.scopes[node["type"]].links.values()
                          if l["target_id"] == SUBGRAPH_OUTPUT_ID and l["target_slot"] == slot), None)
            origin = None if inner is None else self._at(p.path + (node["id"],), inner["origin_id"])
            return None if origin is None else self.resolve_output(origin, inner["origin_slot"], want, seen)
        if self.is_virtual(node):
            return self.resolve_input(p, slot, seen) if slot < len(node.get("inputs") or []) else None
        return ("link", p.exec_id, int(slot))

    @staticmethod
    def _bypass_slot(node: dict, slot: int, want: Any) -> int | None:
        """The input a bypassed node passes output ``slot`` on to (the frontend's choice)."""
        ins = node.get("inputs") or []
        outs = node.get("outputs") or []
        out_type = outs[slot].get("type") if slot < len(outs) and isinstance(outs[slot], dict) else None
        if want in ("*", "") and ins:
            return slot if slot < len(ins) else 0
        if slot < len(ins) and _types_fit(ins[slot].get("type"), out_type) and _types_fit(ins[slot].get("type"), want):
            return slot
        exact = next((i for i, inp in enumerate(ins) if inp.get("type") == want), None)
        if exact is not None:
            return exact
        return next((i for i, inp in enumerate(ins)
                     if _types_fit(inp.get("type"), out_type) and _types_fit(inp.get("type"), want)), None)

    # ------------------------------------------------------------------ promoted widgets
    def promoted_value(self, inst: Placed, slot: int, widget_values=None) -> Any:
        """Value of the widget a subgraph instance shows for its input ``slot`` (no link into it).

        The instance's ``widgets_values`` hold its promoted widgets in the order of its inputs that
        have a ``widget``; when absent, the inner widget the subgraph input feeds keeps its value.
        """
        widget_values = widget_values if widget_values is not None else self.widget_values
        ins = inst.node.get("inputs") or []
        if not isinstance(ins[slot].get("widget"), dict):
            return _NO_VALUE
        k = sum(1 for i in ins[:slot] if isinstance(i.get("widget"), dict))
        saved = inst.node.get("widgets_values")
        if isinstance(saved, list) and k < len(saved):
            return saved[k]
        scope = self.scopes[inst.node["type"]]
        path = inst.path + (inst.node["id"],)
        for link in sorted(scope.links.values(), key=lambda l: l["id"]):
            if link["origin_id"] != SUBGRAPH_INPUT_ID or link["origin_slot"] != slot:
                continue
            target = self._at(path, link["target_id"])
            if target is None:
                continue
            t_ins = target.node.get("inputs") or []
            t_in = t_ins[link["target_slot"]] if link["target_slot"] < len(t_ins) else {}
            if self.is_instance(target.node):
                value = self.promoted_value(target, link["target_slot"], widget_values)
            elif isinstance(t_in.get("widget"), dict):
                value = (widget_values.get(target.exec_id) or {}).get(t_in["widget"].get("name"), _NO_VALUE)
            else:
                continue
            if value is not _NO_VALUE:
                return value
        return _NO_VALUE

    widget_values: dict = {}  # exec id -> {widget name: value}, set by the converter
