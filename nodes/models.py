"""Model folders and manifest checks (family `models`).

On import this module registers the pack's model folders with ComfyUI, once:
``saliency``, ``aesthetic``, ``style_adapters`` (model files) and ``fonts`` (.ttf/.otf/.ttc/.otc),
each at ``ComfyUI/models/<name>``. Paths a user already set for these names (extra_model_paths.yaml)
are kept, in front of ours, with their extensions; ours are added.

Other families call :func:`resolve_model` to turn a selector value (file name or manifest id)
into a full path, or get a :class:`MissingModelError` naming the manifest entry and the folder.

Node: ``AtelierModelCheck`` lists which manifest models a workflow needs and whether ComfyUI
can see them (an output node; its STRING report can also be wired into a text display).
"""
from __future__ import annotations

import logging
import os

import folder_paths

from ..core import confine as _confine
from ..core import manifest as mf
from ..core.errors import AtelierError, MissingModelError

log = logging.getLogger("atelier")

ALL_MODELS = "all models"


# ----------------------------------------------------------------------------- folders

def register_model_folders(fp=None, models_dir: str | None = None) -> dict[str, list[str]]:
    """Register PACK_FOLDERS with ComfyUI's folder_paths; idempotent. Returns folder -> search paths.

    - a folder ComfyUI does not know yet: added through ``add_model_folder_path`` at
      ``<models_dir>/<name>`` with the pack's extensions (old ComfyUI would leave the set empty,
      which lists every file, .txt notes included);
    - a folder that exists already (extra_model_paths.yaml, another pack): its paths and
      extensions are kept, ours are appended, without mutating a set shared with other folders.
    """
    fp = fp or folder_paths
    base = models_dir or fp.models_dir
    table = fp.folder_names_and_paths
    out: dict[str, list[str]] = {}
    for name, exts in mf.PACK_FOLDERS.items():
        ours = os.path.join(base, name)
        entry = table.get(name)
        known = [os.path.normcase(os.path.abspath(p)) for p in (entry[0] if entry else [])]
        if os.path.normcase(os.path.abspath(ours)) not in known:
            fp.add_model_folder_path(name, ours)
        paths, cur_exts = table[name][0], table[name][1]
        merged = set(cur_exts or ()) | set(exts)
        if not isinstance(cur_exts, set) or merged != cur_exts:
            table[name] = (paths, merged)  # same paths list object, new extension set
        cache = getattr(fp, "filename_list_cache", None)
        if isinstance(cache, dict):
            cache.pop(name, None)
        out[name] = list(paths)
    return out


# ----------------------------------------------------------------------------- resolving

def _manifest() -> mf.Manifest | None:
    try:
        return mf.load_manifest()
    except AtelierError as exc:  # a broken manifest must not break model loading
        log.warning("[Atelier] models_manifest.json unusable: %s", exc)
        return None


def _find_dir(folder: str, name: str) -> str | None:
    try:
        paths = folder_paths.get_folder_paths(folder)
    except KeyError:
        return None
    for p in paths:
        full = os.path.join(p, name)
        if os.path.isdir(full):
            return full
    return None


def resolve_model(folder: str, name: str, *, node: str | None = None, input: str | None = None) -> str:
    """Full path of a model file (or model directory) in a ComfyUI model folder.

    `name` is what a selector returned (a file name, possibly with a subfolder) or a manifest id.
    Raises MissingModelError (manifest id, folder, URL) when the manifest knows the model, and
    AtelierError otherwise.
    """
    if not isinstance(name, str) or not name.strip() or name.strip() in ("none", "None"):
        raise AtelierError("no model selected", node=node, input=input,
                           expected=f"a file from ComfyUI/models/{folder}/",
                           fix=f"put a model in ComfyUI/models/{folder}/ and press R (refresh) in ComfyUI.")
    name = name.strip()
    if not _confine.name_is_safe(name):  # '..', absolute paths: one message, whether or not such a file exists
        try:
            searched = folder_paths.get_folder_paths(folder)
        except KeyError:
            searched = []
        raise _confine.not_in_folder(name, what="model", node=node, input=input, folders=searched)
    manifest = _manifest()
    entry = manifest.resolve(name, folder) if manifest else None
    filename = entry.filename if entry is not None and name == entry.id else name
    if entry is not None and entry.kind == "directory":
        found = _find_dir(folder, filename)
    else:
        found = folder_paths.get_full_path(folder, filename) if folder in folder_paths.folder_names_and_paths else None
        if found is None:
            found = _find_dir(folder, filename)  # a model directory picked by name (HF layout)
    if found:
        return found
    if entry is not None:
        raise MissingModelError(entry.id, entry.filename, entry.save_path, node=node, input=input,
                                url=None if entry.manual_only else entry.url)
    try:
        searched = folder_paths.get_folder_paths(folder)
    except KeyError:
        searched = []
    raise AtelierError(f"model '{name}' was not found in the '{folder}' model folder",
                       node=node, input=input,
                       expected="a file in one of: " + (", ".join(searched) or f"ComfyUI/models/{folder}"),
                       fix=f"put it in ComfyUI/models/{folder}/ (or a path set in extra_model_paths.yaml), "
                           "then refresh; `atelier models list` shows the models the pack knows.")


def entry_status(entry: mf.ModelEntry) -> tuple[bool, str]:
    """(present, where) for a manifest entry, as ComfyUI sees its folders."""
    try:
        path = resolve_model(entry.folder, entry.filename)
        return True, path
    except AtelierError:
        return False, f"ComfyUI/models/{entry.save_path}/{entry.filename}"


def check_report(workflow: str = ALL_MODELS) -> tuple[str, int]:
    """A readable present/missing report for a workflow's models; returns (text, missing count)."""
    manifest = _manifest()
    if manifest is None:
        return "models_manifest.json could not be read; see the ComfyUI log.", 0
    entries = list(manifest) if workflow == ALL_MODELS else _workflow_entries(manifest, workflow)
    lines, missing = [f"Atelier models for {workflow}:"], 0
    for e in entries:
        ok, where = entry_status(e)
        if ok:
            lines.append(f"  OK       {e.id}: {where}")
        else:
            missing += 1
            how = ("download it by hand (see `atelier models check`)" if e.manual_only
                   else f"`atelier models download {e.id}` or {e.url}")
            lines.append(f"  MISSING  {e.id}: put {e.filename} in {where.rsplit('/', 1)[0]}/ ({how})")
    lines.append(f"{len(entries) - missing} of {len(entries)} present" +
                 ("" if not missing else f"; {missing} missing"))
    return "\n".join(lines), missing


# ----------------------------------------------------------------------------- node

WORKFLOWS_DIR = mf.DEFAULT_MANIFEST.parent / "workflows"


def _workflow_entries(manifest: mf.Manifest, workflow: str) -> list[mf.ModelEntry]:
    """The manifest's entries tagged with the workflow, plus those its shipped file lists."""
    entries = manifest.for_workflow(workflow)
    path = WORKFLOWS_DIR / f"{workflow}.json"
    if path.is_file():
        try:
            found, _unknown = mf.entries_for_workflow_file(manifest, path)
        except (OSError, ValueError) as exc:
            log.warning("[Atelier] cannot read %s: %s", path, exc)
            found = []
        entries += [e for e in found if e not in entries]
    return entries


def _workflow_choices() -> list[str]:
    m = _manifest()
    names = list(m.workflows) if m else []
    names += sorted(p.stem for p in WORKFLOWS_DIR.glob("*.json") if p.stem not in names)
    return [ALL_MODELS] + names


class AtelierModelCheck:
    """Which models a shipped workflow needs, and which ComfyUI can see."""

    DISPLAY = "Atelier Model Check"

    DESCRIPTION = ("Lists the models from the pack's models_manifest.json that the chosen workflow needs, "
                   "and whether ComfyUI finds each one (with the download command or URL for the missing).")
    CATEGORY = "atelier/models"
    FUNCTION = "check"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("report",)
    OUTPUT_TOOLTIPS = ("One line per model: OK with its path, or MISSING with where to put it and how to get it.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"workflow": (_workflow_choices(), {
            "default": ALL_MODELS,
            "tooltip": "A shipped workflow (its models per models_manifest.json) or every model the pack knows."})}}

    @classmethod
    def IS_CHANGED(cls, workflow):
        return check_report(workflow)[0]  # re-run when a model file appears or disappears

    def check(self, workflow):
        if workflow != ALL_MODELS and workflow not in _workflow_choices():
            raise AtelierError(f"unknown workflow '{workflow}'", node=self.DISPLAY, input="workflow",
                               expected="one of: " + ", ".join(_workflow_choices()),
                               fix="pick a workflow from the list.")
        text, _ = check_report(workflow)
        return {"ui": {"text": [text]}, "result": (text,)}


NODE_CLASS_MAPPINGS = {"AtelierModelCheck": AtelierModelCheck}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY for k, v in NODE_CLASS_MAPPINGS.items()}

try:
    REGISTERED_FOLDERS = register_model_folders()
except Exception as exc:  # never take the pack down over folder registration
    REGISTERED_FOLDERS = {}
    log.warning("[Atelier] could not register model folders: %s: %s", type(exc).__name__, exc)
