"""The batch results log (``<out>/manifest.jsonl``) and the atomic writes of outputs.

One JSON line per finished attempt (id, status, server, prompt_id, outputs [{path, size, sha256}],
seconds, error, attempt, seed, fingerprint, ts); the last line of an id wins. The file name and line
format are those of every earlier version, so existing output folders resume.

A run's per-id results (:class:`RunResults`) are not held in memory: each finished job's record is streamed
to the log and only its status and the line's offset are kept (one small int per id), so the client's memory
stays flat at 10^4 jobs and more; a record is read back from the log when someone asks for it.
"""
from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Iterator, MutableMapping

from ..core.files import atomic_path
from ..core.manifest import sha256_file
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
    so the file never holds a torn line.

    ``records``: the last record of each id in the file as it was opened (what resume looks at). Lines
    written afterwards are not kept in memory (:meth:`write` returns the line's offset; :meth:`read_at`
    reads it back), so appending costs the same at the 10,000th line as at the first."""

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

    def _append(self, data: bytes) -> int:
        """`data` at the end of the file, all of it or none of it (caller holds the lock); returns the offset
        it was written at."""
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
        return start

    def write(self, rec: dict) -> int | None:
        """Append ``rec`` as one line; returns the line's byte offset (None once closed: the line is dropped)."""
        line = (json.dumps(rec, ensure_ascii=False, sort_keys=False) + "\n").encode("utf-8")
        with self.lock:
            if self.closed:
                return None
            return self._append(line)

    def read_at(self, offset: int) -> dict:
        """The record of the line written at ``offset`` (see :meth:`write`)."""
        return read_record(self.path, offset)

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
        if verify_hash and o.get("sha256") and sha256_file(path) != o["sha256"]:
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


def read_record(path: str, offset: int) -> dict:
    """The JSON record of the manifest line that starts at byte ``offset`` of ``path``."""
    with open(path, "rb") as f:
        f.seek(offset)
        return json.loads(f.readline())


class RunResults(MutableMapping):
    """A run's results by id (``{id: record}``), as compact as the run allows.

    A record that went to the manifest is kept as its status and the offset of its line (one int per id, packed
    as ``offset * 8 + status``) and read back from the manifest on access; only records the manifest does not
    hold (skipped rows of this run, ids that never ran, a record whose line could not be written) are dicts in
    memory. Counts per status are kept as the results come in (:meth:`count` costs nothing). Everything a dict
    of records offered still works: ``results[id]``, ``in``, ``len``, iteration, ``items()``, ``values()``,
    ``setdefault``; assigning a dict keeps that dict. Iterating ``values()`` reads the manifest one line at a
    time (in id order of first result) and holds none of them.
    """

    STATUSES = ("done", "failed", "already done", "skipped", "pending")
    _CODE = {s: k for k, s in enumerate(STATUSES)}
    # packed values of an entry whose record is in self._mem: status codes are 0..4, so no offset * 8 + code
    # is ever 6 or 7 modulo 8
    _IN_MEMORY, _ALREADY = 7, 6

    def __init__(self, manifest_path: str | None = None):
        self.manifest_path = manifest_path
        self._ids: dict[str, int] = {}
        self._mem: dict[str, dict] = {}
        self._counts: Counter = Counter()
        self._lock = threading.Lock()

    # --------------------------------------------------------------- writing
    def logged(self, rid: str, status: str, offset: int) -> None:
        """The record of ``rid`` (status ``status``) is the manifest line at ``offset``."""
        code = self._CODE.get(status)
        if code is None or self.manifest_path is None:  # (never expected) an unknown status: keep the record
            self[rid] = read_record(self.manifest_path, offset) if self.manifest_path else {"id": rid, "status": status}
            return
        with self._lock:
            self._uncount(rid)
            self._ids[rid] = offset * 8 + code
            self._counts[status] += 1

    def already_done(self, rid: str, prev: dict) -> None:
        """``rid`` was done by an earlier run: its record is ``prev`` (from the manifest as opened, already in
        memory) with status "already done"; no copy is kept."""
        with self._lock:
            self._uncount(rid)
            self._ids[rid] = self._ALREADY
            self._mem[rid] = prev
            self._counts["already done"] += 1

    def __setitem__(self, rid: str, rec: dict) -> None:
        with self._lock:
            self._uncount(rid)
            self._ids[rid] = self._IN_MEMORY
            self._mem[rid] = rec
            self._counts[rec.get("status")] += 1

    def _uncount(self, rid: str) -> None:
        """Drop what ``rid`` held (caller holds the lock; an existing key keeps its place, as in a dict)."""
        old = self._ids.get(rid)
        if old is None:
            return
        self._counts[self._status(rid, old)] -= 1
        self._mem.pop(rid, None)

    def __delitem__(self, rid: str) -> None:
        with self._lock:
            if rid not in self._ids:
                raise KeyError(rid)
            self._uncount(rid)
            del self._ids[rid]

    # --------------------------------------------------------------- reading
    def _status(self, rid: str, v: int) -> str:
        if v == self._IN_MEMORY:
            return self._mem[rid].get("status")
        return "already done" if v == self._ALREADY else self.STATUSES[v & 7]

    def status(self, rid: str) -> str:
        """The status of ``rid`` without reading its record."""
        return self._status(rid, self._ids[rid])

    def _decode(self, rid: str, v: int, f=None) -> dict:
        if v == self._IN_MEMORY:
            return self._mem[rid]
        if v == self._ALREADY:
            return dict(self._mem[rid], status="already done")
        if f is None:
            rec = read_record(self.manifest_path, v >> 3)
        else:
            f.seek(v >> 3)
            rec = json.loads(f.readline())
        status = self.STATUSES[v & 7]
        return rec if rec.get("status") == status else dict(rec, status=status)

    def __getitem__(self, rid: str) -> dict:
        return self._decode(rid, self._ids[rid])

    def __contains__(self, rid: object) -> bool:
        return rid in self._ids

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._ids))

    def __len__(self) -> int:
        return len(self._ids)

    def values(self):
        return _Values(self)

    def items(self):
        return _Items(self)

    def _records(self) -> Iterator[tuple[str, dict]]:
        """(id, record) for every id, reading the manifest through one handle, one line at a time."""
        f = open(self.manifest_path, "rb") if self.manifest_path and os.path.exists(self.manifest_path) else None
        try:
            for rid, v in list(self._ids.items()):
                yield rid, self._decode(rid, v, f)
        finally:
            if f is not None:
                f.close()

    def count(self, status: str) -> int:
        """How many ids have ``status`` (kept as results come in: no record is read)."""
        return self._counts.get(status, 0)

    def counts(self) -> dict[str, int]:
        return {s: n for s, n in self._counts.items() if n}

    def __repr__(self) -> str:
        return f"RunResults({len(self)} ids: {self.counts()})"


class _Values:
    def __init__(self, res: RunResults):
        self._res = res

    def __iter__(self):
        return (rec for _, rec in self._res._records())

    def __len__(self):
        return len(self._res)


class _Items(_Values):
    def __iter__(self):
        return self._res._records()
