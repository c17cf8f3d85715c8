"""The --out folder: checked and created, and locked for one run at a time.

The run holds an exclusive flock on ``<out>/.atelier-batch.lock``; a second run on the same folder
stops at once naming the PID and host holding it. The kernel drops the lock when the holder exits or
is killed, so a crashed run never blocks the next one.
"""
from __future__ import annotations

import errno as _errno
import json
import os
import socket
import sys
import time
from typing import Callable

from ..core.errors import AtelierError

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
