"""Keyed batch runs over one or more ComfyUI servers, with a JSONL manifest and resume.

Every job carries its dataset id from start to end: the input is uploaded as ``<id>.<ext>``,
the save node's prefix becomes ``atelier_batch/<id>``, the server's output file name is checked
to start with the id, and the local output is written as ``<out>/<id>.<ext>`` (temp + rename).
Nothing is ever matched by position, so a missing image cannot shift later ids.

Manifest: ``<out>/manifest.jsonl``, one JSON line per finished attempt
(id, status, server, prompt_id, outputs [{path, size, sha256}], seconds, error, attempt, seed, ts).
The last line of an id wins. A re-run skips ids whose last line is ``done`` and whose output
files are present and valid, and retries the others. Each ``done`` line also records a
``fingerprint`` (sha256 of the API prompt as patched for that row, plus the input image's sha256):
an id whose fingerprint differs from what would be sent now (the workflow or its inputs changed) is
run again, and the run says how many.

One run per ``--out`` folder: the run holds an exclusive flock on ``<out>/.atelier-batch.lock``; a
second run on the same folder stops at once (exit 2) naming the PID and host holding it. The kernel
drops the lock when the holder exits or is killed, so a crashed run never blocks the next one.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import socket
import sys
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

from ..core.errors import AtelierError
from . import convert as _convert
from .server_api import (ComfyServer, ExecutionFailed, PromptRejected, ServerUnavailable, history_error,
                        output_files)
from .dataset import Dataset, Row, image_problem, load_dataset
from .progress import ProgressBar, summary_table

EXIT_OK, EXIT_FAILED_ROWS, EXIT_BAD_INPUT, EXIT_NO_SERVER, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
# the run stopped before the end: an output or the manifest could not be written here (disk full,
# read-only, quota), or (rarely) an internal error in a worker; the message printed says which
EXIT_WRITE_FAILED = 4
TMP_SUFFIX = ".atelier-tmp"
PREFIX_INPUTS = ("filename_prefix",)


# ============================================================================ bindings

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
    """Per-row API prompt. Returns (prompt, applied) where applied records what was set."""
    p = copy.deepcopy(prompt)
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


# ============================================================================ manifest

class LocalWriteError(Exception):
    """A file of this run (an output or the manifest) could not be written on this machine: the
    run stops (exit EXIT_WRITE_FAILED) rather than fail every remaining row the same way."""

    def __init__(self, what: str, path: str, exc: OSError):
        self.path, self.exc = path, exc
        why = exc.strerror or str(exc)
        hint = ("the disk is full: free space there" if getattr(exc, "errno", None) in _DISK_FULL
                else "check that the folder is writable")
        super().__init__(f"cannot write {what} {path}: {why} (errno {exc.errno}); {hint}, then run the same "
                         "command again to resume (finished ids are kept)")


_DISK_FULL = {28, 122}  # ENOSPC, EDQUOT (Linux numbering; errno names below when the OS has them)
try:
    import errno as _errno
    _DISK_FULL = {getattr(_errno, n) for n in ("ENOSPC", "EDQUOT") if hasattr(_errno, n)} or _DISK_FULL
except ImportError:  # pragma: no cover
    pass


class Manifest:
    """Append-only JSONL, one complete line per write: the whole line goes to the OS in one
    os.write on an O_APPEND descriptor (under a lock; fsynced with fsync=True). A write that fails
    or comes back short (disk full) is cut back to the last whole line and raises LocalWriteError,
    so the file never holds a torn line."""

    def __init__(self, path: str, fsync: bool = False):
        self.path = path
        self.fsync = fsync
        self.lock = threading.Lock()
        self.closed = False
        self.records: dict[str, dict] = {}
        self.bad_lines = 0
        needs_nl = False
        if os.path.exists(path):
            with open(path, "rb") as f:
                data = f.read()
            needs_nl = bool(data) and not data.endswith(b"\n")
            for line in data.splitlines():
                try:
                    rec = json.loads(line)
                    if isinstance(rec, dict) and "id" in rec:
                        self.records[str(rec["id"])] = rec
                except (json.JSONDecodeError, UnicodeDecodeError):
                    self.bad_lines += 1  # a torn last line from a hard kill: ignored
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
        if needs_nl:
            with self.lock:
                self._append(b"\n")

    @staticmethod
    def _raw_write(fd: int, data: bytes) -> int:
        return os.write(fd, data)

    def _append(self, data: bytes) -> None:
        """`data` at the end of the file, all of it or none of it (caller holds the lock)."""
        start = os.fstat(self._fd).st_size
        try:
            n = self._raw_write(self._fd, data)
            if n != len(data):
                raise OSError(28, f"short write ({n} of {len(data)} bytes): No space left on device")
            if self.fsync:
                os.fsync(self._fd)
        except OSError as exc:
            try:  # cut the torn tail back to the last whole line
                os.ftruncate(self._fd, start)
            except OSError:
                pass
            raise LocalWriteError("the manifest", self.path, exc) from exc

    def write(self, rec: dict) -> None:
        line = (json.dumps(rec, ensure_ascii=False, sort_keys=False) + "\n").encode("utf-8")
        with self.lock:
            if self.closed:
                return
            self._append(line)
            self.records[str(rec["id"])] = rec

    def close(self) -> None:
        """Idempotent and never raises (it runs in the interrupt and disk-full paths)."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            try:
                os.close(self._fd)
            except OSError:
                pass


def output_valid(rec: dict, out_dir: str, *, verify_hash: bool = False) -> bool:
    """A manifest 'done' record whose files are all present, the right size and readable."""
    outs = rec.get("outputs") or []
    if rec.get("status") != "done" or not outs:
        return False
    for o in outs:
        path = os.path.join(out_dir, o["path"])
        try:
            if os.path.getsize(path) != o.get("size"):
                return False
        except OSError:
            return False
        if os.path.splitext(path)[1].lower() in (".png", ".jpg", ".jpeg", ".webp") and image_problem(path):
            return False
        if verify_hash and o.get("sha256"):
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            if h.hexdigest() != o["sha256"]:
                return False
    return True


def write_atomic(path: str, data: bytes, fsync: bool = False) -> None:
    """Temp file + rename: readers (and a re-run) see the old file or the whole new one.

    Without fsync a power cut can still leave a short file; resume re-validates every output
    (size from the manifest + image header/trailer), so such a file is redone, not trusted.
    """
    tmp = f"{path}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ============================================================================ output folder, lock, fingerprints

LOCK_NAME = ".atelier-batch.lock"

try:
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - Windows
    _fcntl = None


def _errno_text(exc: OSError) -> str:
    return f"{exc.strerror or exc} (errno {exc.errno})" if getattr(exc, "errno", None) else str(exc)


def check_out_path(out_dir: str) -> None:
    """--out (or a folder above it) being an existing file is bad input; nothing is created here."""
    d = os.path.abspath(out_dir)
    while True:
        if os.path.exists(d):
            if not os.path.isdir(d):
                what = "is an existing file" if d == os.path.abspath(out_dir) else f"is inside {d}, which is a file"
                raise AtelierError(f"--out {out_dir} {what}, not a folder",
                                   expected="a folder for the outputs and the manifest (created when missing)",
                                   fix="pass a folder path to --out, or move the file away")
            return
        parent = os.path.dirname(d)
        if parent == d:
            return
        d = parent


def prepare_out_dir(out_dir: str) -> None:
    """Create --out if needed; a file in its place, or a folder that cannot be created, is bad input.

    Folders this call created are removed again when it fails (nothing half-made is left)."""
    check_out_path(out_dir)
    absdir = os.path.abspath(out_dir)
    created, d = [], absdir
    while not os.path.exists(d) and os.path.dirname(d) != d:
        created.append(d)
        d = os.path.dirname(d)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        for c in created:  # innermost first
            try:
                os.rmdir(c)
            except OSError:
                pass
        blocker = d if os.path.exists(d) and not os.path.isdir(d) else None
        raise AtelierError(f"cannot create the output folder {out_dir}: {_errno_text(exc)}"
                           + (f"; {blocker} is a file" if blocker else ""),
                           expected="a folder path this user can create and write",
                           fix="choose another --out, or fix the permissions / free space there") from exc


class OutputFolderBusy(AtelierError):
    """Another `atelier batch` run holds the lock on this --out folder."""


class OutputLock:
    """Exclusive, non-blocking lock on ``<out>/.atelier-batch.lock`` for the whole run.

    fcntl.flock: the kernel drops it when the holding process exits or is killed, so a crashed run
    never blocks the next one (the file itself may stay; it is only a lock and a note of who holds it)."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, LOCK_NAME)
        self.fd: int | None = None

    def acquire(self, log: Callable[[str], None] | None = None) -> "OutputLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
        except OSError as exc:
            raise AtelierError(f"cannot write in the output folder {self.out_dir} (lock file {self.path}): "
                               f"{_errno_text(exc)}", expected="a writable --out folder",
                               fix="choose another --out, or make that folder writable / free space there") from exc
        try:
            self._lock(fd)
        except OSError as exc:
            holder = self._holder(fd)
            os.close(fd)
            if exc.errno not in (getattr(_errno, "EAGAIN", 11), getattr(_errno, "EWOULDBLOCK", 11),
                                 getattr(_errno, "EACCES", 13)):
                # the file system has no locks (some network mounts): run, but say the folder is unguarded
                (log or (lambda m: print(m, file=sys.stderr)))(
                    f"warning: cannot lock the output folder {self.out_dir} ({_errno_text(exc)}): nothing stops "
                    "a second run on it from rendering the same ids; use a local folder for --out to be safe")
                return self
            raise OutputFolderBusy(
                f"the output folder {os.path.abspath(self.out_dir)} is in use by another `atelier batch` run "
                f"({holder})", expected="one run at a time per --out folder",
                fix="wait for that run to finish (or stop it), or pass another --out; a run that crashed or was "
                    "killed releases the folder by itself") from None
        self.fd = fd
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n"
        try:  # who holds it, for the message another run prints; the lock works without it
            os.ftruncate(fd, 0)
            os.pwrite(fd, info.encode(), 0) if hasattr(os, "pwrite") else os.write(fd, info.encode())
        except OSError:
            pass
        return self

    @staticmethod
    def _lock(fd: int) -> None:
        if _fcntl is not None:
            _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
        else:  # pragma: no cover - Windows: a byte-range lock far past the holder note
            import msvcrt
            os.lseek(fd, 1 << 20, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            os.lseek(fd, 0, os.SEEK_SET)

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            info = json.loads(os.read(fd, 4096).decode("utf-8", "replace").splitlines()[0])
            return f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started')}"
        except (OSError, ValueError, IndexError, AttributeError):
            return "holder unknown"

    def release(self) -> None:
        """Idempotent, never raises (closing the descriptor drops the lock)."""
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            if _fcntl is not None:
                _fcntl.flock(fd, _fcntl.LOCK_UN)
        except OSError:
            pass
        try:
            os.close(fd)
        except OSError:
            pass


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
                    server_prefix: str, object_info: dict) -> str:
    """What produced a row's outputs: sha256 of the canonical API prompt as patched for that row
    (node titles left out) plus the sha256 of its input image. A resume re-runs an id whose
    recorded fingerprint differs from this."""
    image_name, image_sha = None, None
    if row.image and bindings.get("image"):
        image_name = f"{row.id}{os.path.splitext(row.image)[1].lower()}"  # the upload folder is per --out
        h = hashlib.sha256()
        try:
            with open(row.image, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            image_sha = h.hexdigest()
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


# ============================================================================ scheduler

@dataclass
class Job:
    row: Row
    attempts: int = 0
    moves: int = 0
    not_before: float = 0.0
    avoid: set = field(default_factory=set)
    last_error: str | None = None
    moved_from: set = field(default_factory=set)
    settled: bool = True  # False while a worker holds it and has not yet finished or requeued it


@dataclass
class BatchConfig:
    workflow: str | dict
    servers: list[str]
    out_dir: str
    images: str | None = None
    captions: str | None = None
    manifest: str | None = None
    binds: list[str] = field(default_factory=list)
    inflight: int = 2
    retries: int = 2
    backoff: float = 2.0
    job_timeout: float = 600.0
    server_wait: float = 300.0
    on_missing: str = "skip"
    seed_mode: str = "workflow"
    seed_base: int = 0
    server_prefix: str = "atelier_batch"
    upload_subfolder: str | None = None
    id_column: str = "id"
    prompt_column: str = "prompt"
    use_ws: bool = True
    poll: float = 0.5
    verify_hash: bool = False
    fsync: bool = False
    dry_run: bool = False
    progress: bool = True
    stream: Any = None
    limit: int | None = None


@dataclass
class BatchResult:
    exit_code: int
    results: dict[str, dict]
    dataset: Dataset | None = None
    prompt: dict | None = None
    bindings: Bindings | None = None
    problems: list[str] = field(default_factory=list)
    rerun: list[str] = field(default_factory=list)  # done ids run again: workflow or inputs changed

    def count(self, status: str) -> int:
        return sum(1 for r in self.results.values() if r["status"] == status)


class _ServerState:
    def __init__(self, server: ComfyServer):
        self.server = server
        self.up = False
        self.lock = threading.Lock()
        self.prompt_ids: set[str] = set()
        self.next_probe = 0.0
        self.probe_backoff = 0.5
        self.object_info: dict | None = None


class Runner:
    def __init__(self, cfg: BatchConfig, rows: list[Row], prompt: dict, bindings: Bindings, servers: list[_ServerState],
                 manifest: Manifest, bar: ProgressBar, results: dict, object_info: dict, log: Callable[[str], None],
                 fingerprints: dict[str, str] | None = None):
        self.cfg, self.prompt, self.bindings = cfg, prompt, bindings
        self.fingerprints = fingerprints or {}
        self.servers, self.manifest, self.bar, self.results = servers, manifest, bar, results
        self.object_info, self.log = object_info, log
        self.cond = threading.Condition()
        self.queue: list[Job] = [Job(r) for r in rows]
        self.active = 0
        self.stop = threading.Event()
        self.fatal: str | None = None  # why the run stopped early (a local write error, a worker crash)
        self.last_server_up = time.monotonic()
        subfolder = cfg.upload_subfolder
        if subfolder is None:
            tag = hashlib.sha1(os.path.abspath(cfg.out_dir).encode()).hexdigest()[:8]
            subfolder = f"atelier_batch/{tag}"
        self.subfolder = subfolder

    # ---------------------------------------------------------------- queue
    def _finished(self) -> bool:
        return not self.queue and self.active == 0

    def next_job(self, st: _ServerState) -> Job | None:
        with self.cond:
            while True:
                if self.stop.is_set() or self._finished():
                    return None
                now = time.monotonic()
                ready = [j for j in self.queue if j.not_before <= now]
                up_urls = {s.server.url for s in self.servers if s.up} | {st.server.url}
                # prefer a job that has not failed here; take one that failed everywhere that is up
                pick = next((j for j in ready if st.server.url not in j.avoid), None) or \
                    next((j for j in ready if up_urls <= j.avoid), None)
                if pick is not None:
                    self.queue.remove(pick)
                    self.active += 1
                    pick.settled = False
                    return pick
                waits = [j.not_before - now for j in self.queue if j.not_before > now]
                self.cond.wait(min(waits + [0.5]))

    def _settle(self, job: Job) -> None:
        """The job leaves the worker: `active` drops once, whatever happened (caller holds cond)."""
        if not job.settled:
            job.settled = True
            self.active -= 1
            self.cond.notify_all()

    def requeue(self, job: Job, delay: float = 0.0):
        with self.cond:
            job.not_before = time.monotonic() + delay
            self.queue.append(job)
            self._settle(job)

    def finish(self, job: Job, rec: dict):
        self.results[job.row.id] = rec
        try:
            self.manifest.write(rec)
        finally:  # recorded or not, the job is over: the run never waits on it
            with self.cond:
                self._settle(job)
            self.bar.update(rec["status"])
            if rec["status"] == "failed":
                self.bar.message(f"failed {job.row.id}: {rec.get('error')}")

    def abort(self, why: str) -> None:
        """Stop the whole run (first reason wins): no new job starts, run() returns."""
        with self.cond:
            if self.fatal is None:
                self.fatal = why
            self.stop.set()
            self.cond.notify_all()

    # ---------------------------------------------------------------- servers
    def ensure_up(self, st: _ServerState) -> bool:
        """Probe a down server (with backoff); True when it answers."""
        with st.lock:
            if st.up:
                return True
            now = time.monotonic()
            if now < st.next_probe:
                return False
            try:
                st.server.ping(timeout=3)
                st.up = True
                st.probe_backoff = 0.5
                self.bar.message(f"server {st.server.url} is up")
                with self.cond:
                    self.last_server_up = time.monotonic()
                    self.cond.notify_all()
                return True
            except ServerUnavailable:
                st.next_probe = now + st.probe_backoff
                st.probe_backoff = min(st.probe_backoff * 2, 5.0)
                return False

    def mark_down(self, st: _ServerState, why: str):
        with st.lock:
            if st.up:
                st.up = False
                st.next_probe = time.monotonic() + 0.5
                self.bar.message(f"server {st.server.url} is down ({why}); moving its jobs to other servers")
        with self.cond:
            self.last_server_up = time.monotonic()
            self.cond.notify_all()

    def worker(self, st: _ServerState):
        try:
            self._work(st)
        except BaseException as e:  # outside a job (probing, scheduling): still never a silent death
            self.abort(f"internal error in worker {threading.current_thread().name}: {type(e).__name__}: {e}")
            if not isinstance(e, Exception):
                raise

    def _work(self, st: _ServerState):
        while not self.stop.is_set():
            if not st.up and not self.ensure_up(st):
                with self.cond:
                    if self._finished():
                        return
                    self.cond.wait(0.5)
                continue
            job = self.next_job(st)
            if job is None:
                return
            try:
                self.run_job(st, job)
            except LocalWriteError as e:  # the manifest line of a finished job could not be written
                self._job_lost(job, str(e))
            except BaseException as e:  # never a silent thread death: the run stops and says why
                self._job_lost(job, f"internal error in worker {threading.current_thread().name}: "
                                    f"{type(e).__name__}: {e}")
                if not isinstance(e, Exception):
                    raise

    def _job_lost(self, job: Job, why: str) -> None:
        self.results.setdefault(job.row.id, {"id": job.row.id, "status": "failed", "error": why, "outputs": []})
        if self.results[job.row.id].get("status") == "done" and self.results[job.row.id].get("error") is None:
            self.results[job.row.id] = dict(self.results[job.row.id], status="failed",
                                            error=f"outputs written but not recorded: {why}")
        with self.cond:
            self._settle(job)
        self.abort(why)

    # ---------------------------------------------------------------- one job
    def run_job(self, st: _ServerState, job: Job):
        row, srv, cfg = job.row, st.server, self.cfg
        t0 = time.monotonic()
        job.attempts += 1
        prompt_id = None
        try:
            image_name = None
            if row.image and self.bindings.get("image"):
                ext = os.path.splitext(row.image)[1].lower()
                up = srv.upload_image(row.image, f"{row.id}{ext}", subfolder=self.subfolder, overwrite=True)
                image_name = f"{up['subfolder']}/{up['name']}" if up.get("subfolder") else up["name"]
            p, applied = patch_prompt(self.prompt, self.bindings, row, image_name=image_name, seed_mode=cfg.seed_mode,
                                      seed_base=cfg.seed_base, server_prefix=cfg.server_prefix,
                                      object_info=self.object_info)
            if self.stop.is_set():
                raise _Stopped()
            prompt_id = srv.queue_prompt(p, extra_data={"atelier": {"id": row.id}})
            st.prompt_ids.add(prompt_id)
            entry = srv.wait(prompt_id, timeout=cfg.job_timeout, poll=cfg.poll, use_ws=cfg.use_ws,
                             on_progress=lambda v, m: self.bar.set_note(f"{row.id} step {v}/{m}"))
            err = history_error(entry)
            if err:
                raise ExecutionFailed(err)
            outs = self.download(srv, entry, row, applied)
            rec = {"id": row.id, "status": "done", "server": srv.url, "prompt_id": prompt_id, "outputs": outs,
                   "seconds": round(time.monotonic() - t0, 3), "error": None, "attempt": job.attempts,
                   "seed": applied.get("seed"), "moved_from": sorted(job.moved_from),
                   "fingerprint": self.fingerprints.get(row.id),
                   "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            self.finish(job, rec)
        except _Stopped:
            with self.cond:
                self._settle(job)
        except LocalWriteError as e:  # an output could not be written here: every other row would fail too
            self.fail(job, srv, prompt_id, t0, str(e), record=False)
            self.abort(str(e))
        except ServerUnavailable as e:
            job.attempts -= 1  # not the row's fault
            job.moves += 1
            job.avoid.add(srv.url)
            job.moved_from.add(srv.url)
            self.mark_down(st, str(e)[:120])
            if job.moves > 50:
                self.fail(job, srv, prompt_id, t0, f"gave up after {job.moves} server failures: {e}")
            else:
                self.requeue(job)
        except (PromptRejected, ExecutionFailed, TimeoutError, OutputMismatch, OSError) as e:
            if isinstance(e, TimeoutError) and prompt_id:
                srv.cancel([prompt_id])
            job.last_error = f"{type(e).__name__}: {e}"
            job.avoid.add(srv.url)
            if job.attempts <= cfg.retries and not self.stop.is_set():
                delay = min(cfg.backoff * 2 ** (job.attempts - 1), 60.0)
                self.bar.message(f"retry {row.id} in {delay:.1f}s (attempt {job.attempts} failed on {srv.url}: {e})")
                self.bar.update("retry")
                self.requeue(job, delay)
            else:
                self.fail(job, srv, prompt_id, t0, job.last_error)
        finally:
            if prompt_id:
                st.prompt_ids.discard(prompt_id)

    def fail(self, job: Job, srv: ComfyServer, prompt_id, t0, error: str, record: bool = True):
        rec = {"id": job.row.id, "status": "failed", "server": srv.url, "prompt_id": prompt_id,
               "outputs": [], "seconds": round(time.monotonic() - t0, 3), "error": error,
               "attempt": job.attempts, "seed": None, "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            self.finish(job, rec)
        except LocalWriteError:
            if record:
                raise
            # the disk refused the output and then the manifest line: the run stops on the first error


    def download(self, srv: ComfyServer, entry: dict, row: Row, applied: dict) -> list[dict]:
        files = output_files(entry)
        saved = [f for f in files if f["type"] == "output"] or files
        if not saved:
            raise ExecutionFailed("the prompt finished without output files (no SaveImage-like node produced any)")
        prefix = applied.get("filename_prefix")
        if prefix:
            stem = prefix.rsplit("/", 1)[-1]
            for f in saved:
                if f["type"] == "output" and not f["filename"].startswith(stem + "_") and f["filename"] != stem:
                    raise OutputMismatch(f"server returned {f['filename']} for id {row.id}; refusing to store it "
                                         f"under a different id")
        outs = []
        for k, f in enumerate(saved):
            ext = os.path.splitext(f["filename"])[1] or ".png"
            name = f"{row.id}{ext}" if len(saved) == 1 else f"{row.id}_{k}{ext}"
            data = srv.view(f["filename"], f["subfolder"], f["type"])
            if not data:
                raise ServerUnavailable(f"empty download of {f['filename']}")
            dest = os.path.join(self.cfg.out_dir, name)
            try:
                write_atomic(dest, data, fsync=self.cfg.fsync)
            except OSError as exc:
                raise LocalWriteError("output", dest, exc) from exc
            outs.append({"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                         "server_file": f"{f['subfolder']}/{f['filename']}".lstrip("/")})
        return outs

    # ---------------------------------------------------------------- main loop
    def run(self) -> None:
        threads = []
        for st in self.servers:
            for k in range(max(1, self.cfg.inflight)):
                t = threading.Thread(target=self.worker, args=(st,), daemon=True,
                                     name=f"job-{st.server.port}-{k}")
                t.start()
                threads.append(t)
        while True:
            with self.cond:
                if self._finished() or self.fatal is not None:
                    break
                if not any(s.up for s in self.servers) and \
                        time.monotonic() - self.last_server_up > self.cfg.server_wait:
                    stranded, self.queue = list(self.queue), []
                    self.active += len(stranded)
                    for job in stranded:  # the condition's lock is re-entrant: finish() may take it
                        job.settled = False  # counted in `active` above; finish() settles it
                        try:
                            self.fail(job, self.servers[0].server, None, time.monotonic(),
                                      f"no server reachable for {self.cfg.server_wait:.0f}s"
                                      + (f" (last error: {job.last_error})" if job.last_error else ""))
                        except LocalWriteError as e:
                            self.abort(str(e))
                    if self.active == 0:
                        break
                self.cond.wait(0.5)
        self.stop.set()
        with self.cond:
            self.cond.notify_all()
        if self.fatal is not None:
            try:
                self.cancel_pending()
            except Exception:
                pass
        for t in threads:
            t.join(timeout=5)

    def cancel_pending(self):
        for st in self.servers:
            ids = list(st.prompt_ids)
            if ids:
                st.server.cancel(ids)


class _Stopped(Exception):
    pass


class OutputMismatch(RuntimeError):
    pass


# ============================================================================ entry points

def _load_workflow(cfg: BatchConfig, object_info: dict) -> tuple[dict, dict | None]:
    wf = _convert.load_json(cfg.workflow) if isinstance(cfg.workflow, (str, os.PathLike)) else cfg.workflow
    ui = wf if _convert.is_ui_format(wf) else None
    return _convert.to_api(wf, object_info), ui


def _clean_tmp(out_dir: str):
    for name in os.listdir(out_dir):
        if name.endswith(TMP_SUFFIX):
            try:
                os.unlink(os.path.join(out_dir, name))
            except OSError:
                pass


def run_batch(cfg: BatchConfig) -> BatchResult:
    """Run (or dry-run) a batch. Raises AtelierError for bad input; returns a BatchResult."""
    stream = cfg.stream or sys.stderr

    def log(msg: str):
        print(msg, file=stream, flush=True)

    if not cfg.servers:
        raise AtelierError("no server given", fix="pass --server http://HOST:PORT (repeatable)")
    check_out_path(cfg.out_dir)  # a file in its place is bad input, before anything else
    servers = [ComfyServer(u) for u in dict.fromkeys(cfg.servers)]
    ds = load_dataset(cfg.images, cfg.captions, id_column=cfg.id_column, prompt_column=cfg.prompt_column,
                      on_problem="fail" if cfg.on_missing == "fail" else "skip")
    states = [_ServerState(s) for s in servers]
    errors = {}
    for st in states:
        try:
            st.server.ping(timeout=5)
            st.object_info = st.server.object_info()
            st.up = True
        except ServerUnavailable as e:
            errors[st.server.url] = str(e)
    up = [st for st in states if st.up]
    if not up:
        raise ServerUnreachable("cannot reach any ComfyUI server: " + "; ".join(f"{u}: {e}" for u, e in errors.items()))
    for u, e in errors.items():
        log(f"warning: {u} is not reachable now ({e}); it will be used when it comes up")
    object_info = up[0].object_info
    prompt, ui = _load_workflow(cfg, object_info)
    declared = ((ui or {}).get("extra") or {}).get("atelier", {}).get("bindings") or {}
    if not isinstance(declared, dict):
        raise AtelierError("workflow extra.atelier.bindings must be an object like {\"prompt\": \"5.prompt\"}")
    binds = [f"{k}={v if isinstance(v, str) else ','.join(v)}" for k, v in declared.items()] + list(cfg.binds)
    bindings = resolve_bindings(prompt, object_info, binds, ui)
    bound = {t for targets in bindings.targets.values() for t in targets}
    problems = _convert.validate_api(prompt, object_info, check_combos=True, skip=bound)
    for st in up[1:]:
        missing = sorted({n["class_type"] for n in prompt.values() if n["class_type"] not in st.object_info})
        if missing:
            problems.append(f"server {st.server.url} lacks node types {missing}")
    problems += [f"binding: {n}" for n in bindings.notes]
    if any(r.image for r in ds.rows) and not bindings.get("image"):
        problems.append("the dataset has images but no node receives them: add --bind image=NODE.image "
                        "(the workflow needs a LoadImage node)")
    if any(r.prompt for r in ds.rows) and not bindings.get("prompt"):
        log("note: the captions' prompt column is not used (no prompt text input found; use --bind prompt=NODE.text)")
    if problems:
        raise AtelierError("the workflow cannot run on the server(s): " + " | ".join(problems),
                           fix="install the missing nodes/models on the server or fix the workflow and bindings")
    bad_columns = node_column_problems(prompt, bindings, ds.rows, object_info)
    if bad_columns:
        raise AtelierError("the captions name node inputs the workflow does not have: " + " | ".join(bad_columns),
                           expected="columns named NODE.INPUT with an input that node has (or bound with --bind)",
                           fix="rename the column to one of the node's inputs, or point it elsewhere with "
                               "--bind COLUMN=NODE.INPUT")

    rows = ds.rows[: cfg.limit] if cfg.limit else ds.rows
    results: dict[str, dict] = {}
    for p in ds.problems:
        results[p.id] = {"id": p.id, "status": "skipped", "error": p.reason}
    prepare_out_dir(cfg.out_dir)
    manifest_path = cfg.manifest or os.path.join(cfg.out_dir, "manifest.jsonl")

    if cfg.dry_run:
        log(f"dry run: {len(rows)} row(s) ready, {len(ds.problems)} skipped, servers up: "
            f"{', '.join(s.server.url for s in up)}")
        log(f"bindings: {bindings.describe() or '(none)'}")
        for p in ds.problems:
            log(f"  skip {p.id}: {p.reason}")
        known = set(bindings.targets) | ({"negative_prompt"} if bindings.get("negative") else set())
        for col in sorted({k for r in rows for k in r.overrides}):
            if col not in known and not ("." in col and col.rsplit(".", 1)[0] in prompt):
                log(f"  note: column '{col}' is not bound to any node input (ignored); "
                    f"use --bind {col}=NODE.INPUT or name the column NODE.INPUT")
        if rows:
            sample, _ = patch_prompt(prompt, bindings, rows[0], image_name="x.png" if rows[0].image else None,
                                     seed_mode=cfg.seed_mode, seed_base=cfg.seed_base, server_prefix=cfg.server_prefix,
                                     object_info=object_info)
            more = [q for q in _convert.validate_api(sample, object_info, check_combos=False)]
            if more:
                raise AtelierError("the patched prompt is invalid: " + " | ".join(more), fix="check the bindings")
        return BatchResult(EXIT_OK, results, ds, prompt, bindings)

    lock = OutputLock(cfg.out_dir).acquire(log)  # before touching the folder: one run per --out
    try:
        return _run_locked(cfg, ds, rows, results, prompt, bindings, states, servers, object_info,
                           manifest_path, log, stream)
    finally:
        lock.release()


def _run_locked(cfg, ds, rows, results, prompt, bindings, states, servers, object_info, manifest_path, log,
                stream) -> BatchResult:
    _clean_tmp(cfg.out_dir)
    try:
        manifest = Manifest(manifest_path, fsync=cfg.fsync)
    except OSError as exc:
        raise AtelierError(f"cannot open the manifest {manifest_path}: {_errno_text(exc)}",
                           expected="a writable file path (default OUT/manifest.jsonl)",
                           fix="pass another --manifest (or --out), or fix the permissions there") from exc
    fps = {r.id: row_fingerprint(prompt, bindings, r, seed_mode=cfg.seed_mode, seed_base=cfg.seed_base,
                                 server_prefix=cfg.server_prefix, object_info=object_info) for r in rows}
    todo, rerun, unrecorded = [], [], 0
    for r in rows:
        prev = manifest.records.get(r.id)
        if prev is not None and output_valid(prev, cfg.out_dir, verify_hash=cfg.verify_hash):
            old = prev.get("fingerprint")
            if old is not None and old != fps[r.id]:
                rerun.append(r.id)
                todo.append(r)
                continue
            unrecorded += old is None
            results[r.id] = dict(prev, status="already done")
        else:
            todo.append(r)
    if rerun:
        log(f"{len(rerun)} id(s) re-run: the workflow or their inputs changed since their outputs were made "
            f"({', '.join(rerun[:8])}{', ...' if len(rerun) > 8 else ''})")
    if unrecorded:
        log(f"note: {unrecorded} done id(s) have no recorded fingerprint (manifest from an older version): kept "
            "as they are; delete their manifest lines to run them again")
    # skipped rows are recorded once (not on every re-run)
    for p in ds.problems:
        prev = manifest.records.get(p.id)
        if not (prev and prev.get("status") == "skipped" and prev.get("error") == p.reason):
            manifest.write({"id": p.id, "status": "skipped", "server": None, "prompt_id": None, "outputs": [],
                            "seconds": 0, "error": p.reason, "attempt": 0, "seed": None,
                            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    bar = ProgressBar(len(todo), stream=stream, enabled=cfg.progress and bool(todo))
    if len(todo) < len(rows):
        log(f"{len(rows) - len(todo)} id(s) already done (manifest {manifest_path}); {len(todo)} to run")
    runner = Runner(cfg, todo, prompt, bindings, states, manifest, bar, results, object_info, log, fps)
    interrupted = False
    try:
        if todo:
            runner.run()
    except KeyboardInterrupt:
        interrupted = True
        runner.stop.set()
        runner.cancel_pending()
        bar.message("interrupted: pending prompts cancelled; the manifest holds every finished id. "
                    "Run the same command again to resume.")
    finally:
        manifest.close()  # waits for a line being written; later writes are dropped; never raises
        for closer in [bar.close] + [s.close for s in servers]:
            try:
                closer()
            except Exception:
                pass
    if runner.fatal is not None and not interrupted:
        log(f"error: the run stopped: {runner.fatal}")
    for r in todo:
        results.setdefault(r.id, {"id": r.id, "status": "pending", "error": "not run (interrupted)" if interrupted
                                  else f"not run (the run stopped: {runner.fatal})"})
    if interrupted:
        code = EXIT_INTERRUPTED
    elif runner.fatal is not None:
        code = EXIT_WRITE_FAILED
    else:
        code = EXIT_FAILED_ROWS if any(v["status"] == "failed" for v in results.values()) else EXIT_OK
    res = BatchResult(code, results, ds, prompt, bindings, rerun=rerun)
    if runner.fatal is not None:
        res.problems.append(runner.fatal)
    return res


class ServerUnreachable(AtelierError):
    def __init__(self, msg: str):
        super().__init__(msg, fix="start ComfyUI (python main.py --listen 127.0.0.1 --port 8188) or fix --server")


# ============================================================================ CLI

def add_parser(subparsers) -> None:
    """Register `batch` and `convert` sub-commands on an argparse subparsers object."""
    p = subparsers.add_parser(
        "batch", help="run a workflow over a dataset keyed by id on one or more ComfyUI servers",
        description="Run a workflow over a dataset keyed by id (images + captions), across servers, with resume.")
    p.add_argument("workflow", help="workflow .json (UI format or API format)")
    p.add_argument("--server", action="append", default=[], metavar="URL",
                   help="ComfyUI server URL (repeatable), e.g. http://127.0.0.1:8188")
    p.add_argument("--images", metavar="DIR", help="folder of input images named <id>.<ext>")
    p.add_argument("--captions", metavar="FILE", help="CSV/TSV/JSONL/JSON with id, prompt and optional override "
                   "columns (seed, negative, NODE.INPUT); default: captions.csv in --images")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (files named <id>.<ext>)")
    p.add_argument("--manifest", metavar="FILE", help="results manifest (default OUT/manifest.jsonl)")
    p.add_argument("--bind", action="append", default=[], metavar="NAME=NODE.INPUT",
                   help="which node input gets a row field: image, prompt, negative, seed or any extra column "
                        "(node id, title or class type); auto-detected when omitted")
    p.add_argument("--inflight", type=int, default=2, help="max prompts queued per server (default 2)")
    p.add_argument("--retries", type=int, default=2, help="retries per failed row (default 2)")
    p.add_argument("--backoff", type=float, default=2.0, help="first retry delay in s, doubling (default 2)")
    p.add_argument("--timeout", type=float, default=600.0, help="per-job timeout in s (default 600)")
    p.add_argument("--server-wait", type=float, default=300.0,
                   help="give up when no server answers for this long (s, default 300)")
    p.add_argument("--on-missing", choices=("skip", "fail"), default="skip",
                   help="row without image / image without row / unreadable image: skip it (default) or stop")
    p.add_argument("--seed-mode", choices=("workflow", "id"), default="workflow",
                   help="seed when the row has no seed column: keep the workflow's, or derive one from the id")
    p.add_argument("--seed-base", type=int, default=0, help="added to id-derived seeds")
    p.add_argument("--id-column", default="id")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--limit", type=int, help="only the first N rows")
    p.add_argument("--no-ws", action="store_true", help="poll /history instead of following /ws")
    p.add_argument("--verify-hash", action="store_true", help="on resume, check outputs' sha256, not just size")
    p.add_argument("--fsync", action="store_true",
                   help="fsync every output and manifest line (survives power cuts; slower on slow disks)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate dataset, workflow and bindings against the server's /object_info; run nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=main_batch)

    c = subparsers.add_parser("convert", help="convert a UI-format workflow to API format using a server's /object_info")
    c.add_argument("workflow")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--server", metavar="URL")
    src.add_argument("--object-info", metavar="FILE", help="saved /object_info JSON (offline)")
    c.add_argument("-o", "--output", metavar="FILE")
    c.set_defaults(func=lambda a: _guard(_convert.main_convert, a))


def _guard(fn, args) -> int:
    try:
        return fn(args)
    except ServerUnreachable as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NO_SERVER
    except LocalWriteError as e:  # e.g. the manifest, before any job ran
        print(f"error: {e}", file=sys.stderr)
        return EXIT_WRITE_FAILED
    except (AtelierError, ServerUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def main_batch(args) -> int:
    cfg = BatchConfig(workflow=args.workflow, servers=args.server, out_dir=args.out, images=args.images,
                      captions=args.captions, manifest=args.manifest, binds=args.bind, inflight=args.inflight,
                      retries=args.retries, backoff=args.backoff, job_timeout=args.timeout,
                      server_wait=args.server_wait, on_missing=args.on_missing, seed_mode=args.seed_mode,
                      seed_base=args.seed_base, id_column=args.id_column, prompt_column=args.prompt_column,
                      use_ws=not args.no_ws, verify_hash=args.verify_hash, fsync=args.fsync, dry_run=args.dry_run,
                      progress=not args.quiet, limit=args.limit)

    def go(_):
        res = run_batch(cfg)
        if not cfg.dry_run:
            print(summary_table(res.results), file=sys.stderr)
            if res.rerun:
                print(f"{len(res.rerun)} ids re-run: the workflow or their inputs changed", file=sys.stderr)
            print(f"\noutputs: {os.path.abspath(cfg.out_dir)}  manifest: "
                  f"{os.path.abspath(cfg.manifest or os.path.join(cfg.out_dir, 'manifest.jsonl'))}", file=sys.stderr)
            if res.exit_code != EXIT_OK:
                print("run the same command again to retry failed/pending ids (done ids are skipped)", file=sys.stderr)
        else:
            print("dry run OK", file=sys.stderr)
        return res.exit_code

    return _guard(go, args)


def main(argv=None) -> int:
    """Stand-alone entry (python -m comfyui_atelier.client.batch ...)."""
    ap = argparse.ArgumentParser(prog="atelier")
    sub = ap.add_subparsers(dest="cmd", required=True)
    add_parser(sub)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:  # Ctrl-C outside the run loop (start-up, summary): still 130
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
