"""The model manifest (models_manifest.json): load, validate, look up, and check what is on disk.

Standard library only (the torch-free client imports it). No ComfyUI, no folder_paths, no network:
the downloader that fetches entries is client/download.py.

The manifest is a JSON object ``{"version": 1, "models": [entry, ...]}``; ComfyUI-Manager reads the
same ``models`` list (its model-list.json has the same shape), so every entry carries Manager's fields
``name, type, base, save_path, description, reference, filename, url, size`` plus ours:

- ``id``: stable short id used by the CLI (``atelier models download ID``) and by error messages.
- ``folder``: the ComfyUI model folder name (``folder_paths`` key); ``save_path`` equals it, so
  Manager and the pack put the file in the same place (``ComfyUI/models/<save_path>/<filename>``).
- ``sha256``: 64 lowercase hex, or ``null`` plus ``sha256_note`` saying why it is not verified.
- ``size``: bytes (int; Manager accepts numbers), or ``null`` plus ``size_note``.
- ``license``, ``used_by`` (``{"nodes": [...], "workflows": [...]}``).
- ``kind``: ``"file"`` (default) or ``"directory"``; a directory entry is a folder named
  ``filename`` holding ``files`` (each ``{"path", "url", "sha256", "size"}``, same null rules).

`manual_step(entry)` is the exact manual download for an entry (file name, URL, destination folder);
`check_entry` says whether an entry's files are present with the right size (and sha256).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import AtelierError
from .jsontext import depth_problem as json_depth_problem

# ----------------------------------------------------------------------------- constants

MODEL_EXTENSIONS = frozenset({".safetensors", ".pth", ".pt", ".bin", ".ckpt"})
FONT_EXTENSIONS = frozenset({".ttf", ".otf", ".ttc", ".otc"})

#: Folders this pack registers with ComfyUI (nodes/models.py), with the file extensions listed in them.
PACK_FOLDERS: dict[str, frozenset] = {
    "saliency": MODEL_EXTENSIONS | {".onnx"},  # ONNX salient-object models (BiRefNet)
    "aesthetic": MODEL_EXTENSIONS,
    "style_adapters": MODEL_EXTENSIONS,
    "fonts": FONT_EXTENSIONS,
    "captioners": MODEL_EXTENSIONS,  # BLIP captioning folders (nodes/dataset.py)
}

#: ComfyUI's own model folders an entry may target.
COMFY_FOLDERS = frozenset({"checkpoints", "controlnet", "clip_vision", "vae", "loras", "clip",
                           "unet", "diffusion_models", "text_encoders", "upscale_models", "embeddings"})

KNOWN_FOLDERS = frozenset(PACK_FOLDERS) | COMFY_FOLDERS

REQUIRED_FIELDS = ("id", "name", "type", "base", "save_path", "folder", "filename", "url", "sha256",
                   "size", "license", "used_by", "description", "reference")

KINDS = ("file", "directory")

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")

DEFAULT_MANIFEST = Path(__file__).resolve().parent.parent / "models_manifest.json"

ProgressFn = Callable[[int, "int | None"], None]


# ----------------------------------------------------------------------------- data

@dataclass(frozen=True)
class FileSpec:
    """One downloadable file: where from, where to (relative to the entry's folder), expected bytes."""
    relpath: str                 # relative to models/<folder>/ ("x.safetensors" or "dir/config.json")
    url: str
    sha256: str | None
    size: int | None


@dataclass
class ModelEntry:
    id: str
    name: str
    type: str
    base: str
    folder: str
    save_path: str
    filename: str
    url: str
    sha256: str | None
    size: int | None
    license: str
    used_by: dict
    description: str = ""
    reference: str = ""
    kind: str = "file"
    files: list = field(default_factory=list)
    sha256_note: str | None = None
    size_note: str | None = None
    manual_only: bool = False
    manual_note: str | None = None
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def workflows(self) -> list[str]:
        return list(self.used_by.get("workflows", []))

    @property
    def nodes(self) -> list[str]:
        return list(self.used_by.get("nodes", []))

    @property
    def verified(self) -> bool:
        """True when every file has both a sha256 and a size to check against."""
        return all(f.sha256 and f.size is not None for f in self.file_specs())

    def file_specs(self) -> list[FileSpec]:
        if self.kind == "directory":
            return [FileSpec(f"{self.filename}/{f['path']}", f["url"], f.get("sha256"), f.get("size"))
                    for f in self.files]
        return [FileSpec(self.filename, self.url, self.sha256, self.size)]

    def target(self, models_dir: str | os.PathLike) -> Path:
        """Where the file (or directory) goes under a ComfyUI models dir."""
        return Path(models_dir) / self.save_path / self.filename

    def manual_step(self, models_dir: str | os.PathLike | None = None) -> str:
        return manual_step(self, models_dir)


class Manifest:
    """The parsed, validated manifest, with lookups."""

    def __init__(self, entries: list[ModelEntry], path: Path | None = None):
        self.entries = entries
        self.path = path
        self._by_id = {e.id: e for e in entries}

    def __iter__(self):
        return iter(self.entries)

    def __len__(self):
        return len(self.entries)

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.entries]

    def get(self, model_id: str) -> ModelEntry | None:
        return self._by_id.get(model_id)

    def by_id(self, model_id: str) -> ModelEntry:
        entry = self._by_id.get(model_id)
        if entry is None:
            close = [i for i in self.ids if model_id.lower() in i or i in model_id.lower()]
            raise AtelierError(f"unknown model id '{model_id}'",
                               expected="one of: " + ", ".join(self.ids),
                               fix=("did you mean " + " or ".join(close) + "? " if close else "")
                               + "run `atelier models list` to see every id.")
        return entry

    def find(self, filename: str, folder: str | None = None) -> ModelEntry | None:
        """The entry whose file name (or, for directories, folder name) matches, in `folder` if given.

        Matches on the base name too, so "SD1.5/x.safetensors" finds the entry for "x.safetensors".
        """
        name = filename.replace("\\", "/")
        base = name.rsplit("/", 1)[-1]
        for cand in (name, base):
            for e in self.entries:
                if e.filename == cand and (folder is None or e.folder == folder):
                    return e
        return None

    def resolve(self, name_or_id: str, folder: str | None = None) -> ModelEntry | None:
        """Lookup by manifest id first, then by file name."""
        e = self._by_id.get(name_or_id)
        if e is not None and (folder is None or e.folder == folder):
            return e
        return self.find(name_or_id, folder)

    def for_workflow(self, workflow: str) -> list[ModelEntry]:
        return [e for e in self.entries if workflow in e.workflows]

    @property
    def workflows(self) -> list[str]:
        seen: dict[str, None] = {}
        for e in self.entries:
            for w in e.workflows:
                seen.setdefault(w, None)
        return list(seen)

    def to_manager_list(self, entries: list[ModelEntry] | None = None) -> dict:
        """The entries ComfyUI-Manager can install (single files with a direct URL), in its
        model-list.json shape."""
        keys = ("name", "type", "base", "save_path", "description", "reference", "filename", "url", "size")
        chosen = self.entries if entries is None else entries
        return {"models": [{k: e.raw.get(k) for k in keys} for e in chosen
                           if e.kind == "file" and not e.manual_only]}


# ----------------------------------------------------------------------------- validation

def _check_hash_and_size(where: str, obj: dict, problems: list[str]) -> None:
    sha = obj.get("sha256")
    if sha is None:
        if not str(obj.get("sha256_note") or "").strip():
            problems.append(f"{where}: sha256 is null but there is no 'sha256_note' saying why")
    elif not (isinstance(sha, str) and _SHA_RE.match(sha)):
        problems.append(f"{where}: sha256 must be 64 lowercase hex characters or null, got {sha!r}")
    size = obj.get("size")
    if size is None:
        if not str(obj.get("size_note") or "").strip():
            problems.append(f"{where}: size is null but there is no 'size_note' saying why")
    elif isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        problems.append(f"{where}: size must be a positive number of bytes or null, got {size!r}")


def _check_relpath(where: str, value, problems: list[str], *, allow_subdirs: bool = False) -> None:
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}: must be a non-empty string")
        return
    parts = value.split("/")
    if "\\" in value or value.startswith("/") or ".." in parts or (not allow_subdirs and len(parts) > 1) \
            or any(p in ("", ".") for p in parts) or re.match(r"^[A-Za-z]:", value):
        problems.append(f"{where}: {value!r} must be a plain file name "
                        f"({'relative path ' if allow_subdirs else ''}no '/', '\\', '..' or drive)")


def _check_url(where: str, url, problems: list[str]) -> None:
    if not isinstance(url, str) or not re.match(r"^https?://[^\s]+$", url):
        problems.append(f"{where}: url must be an http(s) URL, got {url!r}")


def validate(data) -> list[str]:
    """Every problem in a manifest document, as readable lines (empty list: valid)."""
    problems: list[str] = []
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        return ["the manifest must be a JSON object with a 'models' list"]
    seen_ids: set[str] = set()
    seen_files: set[tuple[str, str]] = set()
    for i, e in enumerate(data["models"]):
        where = f"models[{i}]"
        if not isinstance(e, dict):
            problems.append(f"{where}: must be an object")
            continue
        if isinstance(e.get("id"), str):
            where = f"models[{i}] ('{e['id']}')"
        missing = [k for k in REQUIRED_FIELDS if k not in e]
        if missing:
            problems.append(f"{where}: missing field(s) {', '.join(missing)}")
            continue
        mid = e["id"]
        if not isinstance(mid, str) or not _ID_RE.match(mid):
            problems.append(f"{where}: id must be lowercase letters, digits, '.', '_' or '-'")
        elif mid in seen_ids:
            problems.append(f"{where}: duplicate id '{mid}'")
        seen_ids.add(mid)
        for k in ("name", "type", "base", "license", "description", "reference"):
            if not isinstance(e[k], str) or not e[k].strip():
                problems.append(f"{where}: '{k}' must be a non-empty string")
        if e["folder"] not in KNOWN_FOLDERS:
            problems.append(f"{where}: folder {e['folder']!r} is not one of {sorted(KNOWN_FOLDERS)}")
        if e["save_path"] != e["folder"]:
            problems.append(f"{where}: save_path {e['save_path']!r} must equal folder {e['folder']!r}")
        _check_relpath(f"{where} filename", e["filename"], problems)
        key = (e["folder"], e["filename"])
        if key in seen_files:
            problems.append(f"{where}: another entry already uses {e['folder']}/{e['filename']}")
        seen_files.add(key)
        kind = e.get("kind", "file")
        if kind not in KINDS:
            problems.append(f"{where}: kind must be one of {KINDS}, got {kind!r}")
        if kind == "file":
            _check_url(f"{where}", e["url"], problems)
            folder_exts = PACK_FOLDERS.get(e["folder"], MODEL_EXTENSIONS)
            ext = os.path.splitext(str(e["filename"]))[1].lower()
            if ext not in folder_exts:
                problems.append(f"{where}: filename extension {ext!r} is not listed in folder "
                                f"'{e['folder']}' (expected one of {sorted(folder_exts)})")
            _check_hash_and_size(where, e, problems)
        elif kind == "directory":
            if not isinstance(e["url"], str) or not e["url"].startswith("https://"):
                problems.append(f"{where}: url must be the https page of the model repository")
            files = e.get("files")
            if not isinstance(files, list) or not files:
                problems.append(f"{where}: a directory entry needs a non-empty 'files' list")
            else:
                for j, f in enumerate(files):
                    fw = f"{where} files[{j}]"
                    if not isinstance(f, dict) or not {"path", "url", "sha256", "size"} <= set(f):
                        problems.append(f"{fw}: needs path, url, sha256, size")
                        continue
                    _check_relpath(f"{fw} path", f["path"], problems, allow_subdirs=True)
                    _check_url(fw, f["url"], problems)
                    _check_hash_and_size(fw, f, problems)
        if not isinstance(e.get("manual_only", False), bool):
            problems.append(f"{where}: manual_only must be true or false")
        if e.get("manual_only") and not str(e.get("manual_note") or "").strip():
            problems.append(f"{where}: a manual_only entry needs a 'manual_note' with the steps")
        ub = e["used_by"]
        if not isinstance(ub, dict) or not set(ub) <= {"nodes", "workflows"} or \
                not all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in ub.values()):
            problems.append(f"{where}: used_by must be {{'nodes': [...], 'workflows': [...]}} of strings")
    return problems


def parse(data, path: Path | None = None) -> Manifest:
    problems = validate(data)
    if problems:
        raise AtelierError(f"the model manifest{f' {path}' if path else ''} is invalid: " + "; ".join(problems),
                           fix="correct the listed entries (see core/manifest.py for the fields).")
    entries = []
    for e in data["models"]:
        entries.append(ModelEntry(
            id=e["id"], name=e["name"], type=e["type"], base=e["base"], folder=e["folder"],
            save_path=e["save_path"], filename=e["filename"], url=e["url"], sha256=e["sha256"],
            size=e["size"], license=e["license"], used_by=e["used_by"], description=e["description"],
            reference=e["reference"], kind=e.get("kind", "file"), files=list(e.get("files", [])),
            sha256_note=e.get("sha256_note"), size_note=e.get("size_note"),
            manual_only=bool(e.get("manual_only", False)), manual_note=e.get("manual_note"), raw=e))
    return Manifest(entries, path)


_CACHE: dict[str, tuple[float, Manifest]] = {}


def load_manifest(path: str | os.PathLike | None = None) -> Manifest:
    """Load and validate the manifest (the pack's own by default); cached by path and mtime."""
    p = Path(path) if path is not None else DEFAULT_MANIFEST
    fix = "reinstall the pack, or pass the path of a valid models_manifest.json."
    try:
        mtime = p.stat().st_mtime
        key = str(p.resolve())
        hit = _CACHE.get(key)
        if hit and hit[0] == mtime:
            return hit[1]
        text = p.read_text(encoding="utf-8")
    except OSError as exc:  # missing, a folder, no permission
        raise AtelierError(f"cannot read the model manifest {p}: {exc.strerror or exc}", fix=fix) from exc
    except UnicodeDecodeError as exc:
        raise AtelierError(f"the model manifest {p} is not UTF-8 text ({exc.reason} at byte {exc.start}).",
                           expected="a JSON file", fix=fix) from exc
    too_deep = json_depth_problem(text)  # before json.loads, whose recursion would raise RecursionError
    if too_deep:
        raise AtelierError(f"the model manifest {p} is {too_deep}.",
                           expected="{\"models\": [entry, ...]} (a few levels deep)",
                           fix="use the pack's models_manifest.json or one of the same shape.")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AtelierError(f"the model manifest {p} is not valid JSON (line {exc.lineno}: {exc.msg})",
                           fix="fix the JSON syntax.") from exc
    manifest = parse(data, p)
    _CACHE[key] = (mtime, manifest)
    return manifest


# ----------------------------------------------------------------------------- manual step

def manual_step(entry: ModelEntry, models_dir: str | os.PathLike | None = None) -> str:
    """The exact manual download instructions for an entry: URL(s), file name(s), destination folder."""
    dest = Path(models_dir) / entry.save_path if models_dir is not None else Path("ComfyUI/models") / entry.save_path
    lines = [f"Manual download for '{entry.id}' ({entry.name}):"]
    for spec in entry.file_specs():
        target = dest / spec.relpath
        lines.append(f"  - download {spec.url}")
        lines.append(f"    save it as {target}")
        lines.append(f"    (file name '{Path(spec.relpath).name}', destination folder {target.parent})")
        if spec.sha256:
            lines.append(f"    expected sha256 {spec.sha256}" + (f", {spec.size} bytes" if spec.size else ""))
    if entry.manual_note:
        lines.append(f"  Note: {entry.manual_note}")
    if entry.license:
        lines.append(f"  License: {entry.license}; see {entry.reference}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- hashing / verifying

def sha256_file(path: str | os.PathLike, progress: ProgressFn | None = None, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    total = os.path.getsize(path)
    done = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
            done += len(b)
            if progress:
                progress(done, total)
    return h.hexdigest()


@dataclass
class Status:
    """State of one entry on disk."""
    entry: ModelEntry
    path: Path
    present: bool
    problems: list[str]

    @property
    def ok(self) -> bool:
        return self.present and not self.problems


def check_entry(entry: ModelEntry, models_dir: str | os.PathLike, *, hash_files: bool = False,
                progress: ProgressFn | None = None) -> Status:
    """Is the entry's file (or every file of a directory entry) present with the right size (and hash)?"""
    base = Path(models_dir) / entry.save_path
    problems: list[str] = []
    present = True
    for spec in entry.file_specs():
        p = base / spec.relpath
        if not p.is_file():
            present = False
            problems.append(f"missing {p}")
            continue
        size = p.stat().st_size
        if spec.size is not None and size != spec.size:
            problems.append(f"{p} has {size} bytes, expected {spec.size}")
        elif hash_files and spec.sha256:
            got = sha256_file(p, progress)
            if got != spec.sha256:
                problems.append(f"{p} sha256 is {got}, expected {spec.sha256}")
    return Status(entry, entry.target(models_dir), present, problems)


# ----------------------------------------------------------------------------- workflows

def workflow_models(workflow: dict) -> list[dict]:
    """All ``properties.models`` items of a UI-format workflow, each with the node id/type added."""
    found = []
    for node in workflow.get("nodes", []) if isinstance(workflow, dict) else []:
        props = node.get("properties") or {}
        for m in props.get("models") or []:
            if isinstance(m, dict):
                found.append({**m, "_node_id": node.get("id"), "_node_type": node.get("type"),
                              "_widgets": node.get("widgets_values")})
    return found


def entries_for_workflow_file(manifest: Manifest, workflow_path: str | os.PathLike) -> tuple[list[ModelEntry], list[dict]]:
    """(entries referenced by the workflow's properties.models, items that match no entry)."""
    data = json.loads(Path(workflow_path).read_text(encoding="utf-8"))
    entries, unknown = [], []
    for m in workflow_models(data):
        e = manifest.find(str(m.get("name", "")), m.get("directory"))
        if e is None:
            unknown.append(m)
        elif e not in entries:
            entries.append(e)
    return entries, unknown


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n}"

