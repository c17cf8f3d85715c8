"""The verified model downloader behind `atelier models download` and `atelier demo`.

Standard library only (the client imports without torch). The manifest format itself (entries,
validation, look-ups, what is on disk) is core/manifest.py; this module does the network and the
disk: it streams a file to a temporary file beside the target, checks its size and sha256, gives
it normal permissions and renames it into place only when both match. On any failure nothing is
left behind (no `.part` file, no folder it made) and the error names the exact manual step (file
name, URL, destination folder).
"""
from __future__ import annotations

import errno
import hashlib
import os
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ..core.errors import AtelierError
from ..core.manifest import FileSpec, ModelEntry, ProgressFn, check_entry, manual_step, sha256_file

USER_AGENT = "comfyui-atelier-model-downloader/1"
CHUNK = 1 << 20


class DownloadError(AtelierError):
    """A download failed (offline, HTTP error, size or sha256 mismatch); nothing was left behind.

    `reason` is one of: "offline", "http", "size", "sha256", "unverified", "manual", "destination"
    (this machine cannot write the models folder: read-only, full, no permission, a file in the way).
    """

    def __init__(self, entry: ModelEntry, reason: str, detail: str, models_dir=None):
        self.entry, self.reason, self.detail = entry, reason, detail
        super().__init__(f"could not download '{entry.id}': {detail}",
                         fix="\n" + manual_step(entry, models_dir))


# ----------------------------------------------------------------------------- permissions

def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc), else by the
    usual set-and-restore."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a downloaded model file: what open() would give a new file, 0666 & ~umask."""
    return 0o666 & ~current_umask()


# ----------------------------------------------------------------------------- one file

_WRITE_HINTS = {errno.ENOSPC: "the disk is full: free space there", errno.EROFS: "the file system is read-only",
                errno.EACCES: "this user may not write there", errno.EPERM: "this user may not write there",
                errno.ENOTDIR: "a file stands where a folder is needed",
                errno.EEXIST: "a file stands where a folder is needed",
                errno.EISDIR: "a folder stands where the model file goes"}
if hasattr(errno, "EDQUOT"):
    _WRITE_HINTS[errno.EDQUOT] = "the disk quota is used up: free space there"


class _Job:
    """One file's download: the entry and spec it serves, its target, and what it made on disk."""

    def __init__(self, entry: ModelEntry, spec: FileSpec, dest: Path, models_dir, timeout: float,
                 progress: ProgressFn | None):
        self.entry, self.spec, self.dest, self.models_dir = entry, spec, dest, models_dir
        self.timeout, self.progress = timeout, progress
        self.created: list[Path] = []   # folders this attempt made, innermost first
        self.tmp: Path | None = None

    def fail(self, reason: str, detail: str) -> DownloadError:
        return DownloadError(self.entry, reason, detail, self.models_dir)

    def write_error(self, path, exc: OSError) -> DownloadError:
        """A local write failure naming the path, the OS reason and what to do."""
        code = getattr(exc, "errno", None)
        hint = _WRITE_HINTS.get(code, "check that the folder is writable")
        return self.fail("destination", f"cannot write {path}: {exc.strerror or exc} (errno {code}); {hint}. "
                         "Choose another --models-dir or fix that folder, then run the same command again")

    def check_verifiable(self, allow_unverified: bool) -> None:
        spec, e = self.spec, self.entry
        if allow_unverified or (spec.sha256 is not None and spec.size is not None):
            return
        raise self.fail("unverified", f"the manifest has no {'sha256' if spec.sha256 is None else 'size'} for "
                        f"{spec.relpath} ({e.sha256_note or e.size_note or 'not verified'}), "
                        "so it cannot be checked; pass --allow-unverified to download it anyway "
                        "(the computed sha256 is printed so the manifest can be completed)")

    def open_temp(self) -> int:
        """Make the target's folder and a temp file in it; returns the temp file's descriptor."""
        parents = (self.dest.parent, *self.dest.parent.parents)
        self.created = [d for d in parents if not d.exists()]
        existing = next((d for d in parents if d.exists()), None)
        if existing is not None and not existing.is_dir():
            raise self.write_error(existing, OSError(errno.ENOTDIR, "Not a directory (a file, not a folder)"))
        if self.dest.is_dir():
            raise self.write_error(self.dest, OSError(errno.EISDIR, "Is a directory"))
        try:
            self.dest.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{self.dest.name}.", suffix=".part", dir=self.dest.parent)
        except OSError as exc:
            self.remove_created()
            raise self.write_error(self.dest.parent, exc) from exc
        self.tmp = Path(name)
        return fd

    def remove_created(self) -> None:
        for d in self.created:  # only while empty: never a folder that holds anything else
            try:
                d.rmdir()
            except OSError:
                break

    def connect(self):
        url = self.spec.url
        req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise self.fail("http", f"{url} answered HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as exc:
            why = getattr(exc, "reason", exc)
            raise self.fail("offline", f"cannot reach {url} ({why}); are you offline?") from exc

    def announced_total(self, resp) -> int | None:
        """The length the server announces (refused when it contradicts the manifest), else the manifest's."""
        length, size = resp.headers.get("Content-Length"), self.spec.size
        if not (length and length.isdigit()):
            return size
        if size is not None and int(length) != size:
            raise self.fail("size", f"{self.spec.url} announces {length} bytes, the manifest expects {size}; "
                            "the file upstream may have changed")
        return int(length)

    def stream(self, resp, out) -> str:
        """Copy the response into `out`, hashing and size-checking as it goes; returns the sha256."""
        h, done, size = hashlib.sha256(), 0, self.spec.size
        total = self.announced_total(resp)
        if self.progress:
            self.progress(0, total)
        while True:
            try:
                b = resp.read(CHUNK)
            except (socket.timeout, TimeoutError, ConnectionError, OSError) as exc:
                raise self.fail("offline", f"connection lost after {done} bytes ({exc})") from exc
            if not b:
                break
            try:
                out.write(b)
            except OSError as exc:
                raise self.write_error(self.tmp, exc) from exc
            h.update(b)
            done += len(b)
            if size is not None and done > size:
                raise self.fail("size", f"received more than the expected {size} bytes")
            if self.progress:
                self.progress(done, total)
        try:
            out.flush()
        except OSError as exc:
            raise self.write_error(self.tmp, exc) from exc
        if size is not None and done != size:
            raise self.fail("size", f"received {done} bytes, expected {size}")
        return h.hexdigest()

    def install(self, digest: str) -> None:
        """Check the hash, then give the temp file normal permissions and rename it into place."""
        if self.spec.sha256 is not None and digest != self.spec.sha256:
            raise self.fail("sha256", f"sha256 of the download is {digest}, expected {self.spec.sha256}")
        try:
            os.chmod(self.tmp, file_mode())  # mkstemp made it 0600: a ComfyUI running as another user must read it
            os.replace(self.tmp, self.dest)
        except OSError as exc:
            raise self.write_error(self.dest, exc) from exc


def _download_one(entry: ModelEntry, spec: FileSpec, dest: Path, *, progress: ProgressFn | None,
                  timeout: float, models_dir, allow_unverified: bool) -> str:
    """Stream spec.url to a temp file in dest's folder, verify, rename. Returns the sha256."""
    job = _Job(entry, spec, dest, models_dir, timeout, progress)
    job.check_verifiable(allow_unverified)
    fd = job.open_temp()
    try:
        resp = job.connect()
        with resp, os.fdopen(fd, "wb") as out:
            fd = -1
            digest = job.stream(resp, out)
        job.install(digest)
        return digest
    except BaseException as exc:
        if fd >= 0:
            os.close(fd)
        try:
            job.tmp.unlink(missing_ok=True)
        except OSError:
            pass
        job.remove_created()
        if isinstance(exc, OSError):  # closing the temp file (its last buffer) failed: a local write error
            raise job.write_error(job.tmp, exc) from exc
        raise


# ----------------------------------------------------------------------------- entries

def download_entry(entry: ModelEntry, models_dir: str | os.PathLike, *, progress_factory=None,
                   timeout: float = 30.0, force: bool = False, allow_unverified: bool = False) -> dict:
    """Download every file of an entry into models_dir/<save_path>/, verified.

    progress_factory(spec) -> ProgressFn (or None) is called once per file.
    Returns {relpath: sha256 or "present"}. Files already there with the expected size (and hash,
    when known) are kept. Raises DownloadError (nothing half-written is left behind).
    """
    base = Path(models_dir) / entry.save_path
    result: dict[str, str] = {}
    if entry.manual_only and not check_entry(entry, models_dir).present:
        raise DownloadError(entry, "manual", "this model cannot be fetched automatically "
                            "(its host needs a browser)", models_dir)
    for spec in entry.file_specs():
        dest = base / spec.relpath
        if dest.is_file() and not force:
            size_ok = spec.size is None or dest.stat().st_size == spec.size
            if size_ok and (spec.sha256 is None or sha256_file(dest) == spec.sha256):
                result[spec.relpath] = "present"
                continue
        prog = progress_factory(spec) if progress_factory else None
        result[spec.relpath] = _download_one(entry, spec, dest, progress=prog, timeout=timeout,
                                             models_dir=models_dir, allow_unverified=allow_unverified)
    return result
