"""The batch results log (``<out>/manifest.jsonl``) and the atomic writes of outputs.

One JSON line per finished attempt (id, status, server, prompt_id, outputs [{path, size, sha256}],
seconds, error, attempt, seed, fingerprint, ts); the last line of an id wins. The file name and line
format are those of every earlier version, so existing output folders resume.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading

from ..core.files import atomic_path
from .dataset import image_problem

TMP_SUFFIX = ".atelier-tmp"


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


class ResultsLog:
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
    with atomic_path(path, suffix=TMP_SUFFIX) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def clean_tmp(out_dir: str) -> None:
    """Remove temp files a killed run left in ``out_dir`` (never a finished output)."""
    for name in os.listdir(out_dir):
        if name.endswith(TMP_SUFFIX):
            try:
                os.unlink(os.path.join(out_dir, name))
            except OSError:
                pass
