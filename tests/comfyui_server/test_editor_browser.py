"""The shipped workflows in the real ComfyUI editor, in real headless Chromium (Debian's chromium,
driven by Playwright with executable_path: no browser download).

Against a ComfyUI server of its own (tiny models placed under the names the workflows select, the
input images they name), for every workflow in workflows/*.json:
- load it through the editor's own load path (app.loadGraphData, what Load / drag-and-drop call);
- assert every node type is registered, no missing-nodes (or any other) dialog is open, and the
  console has no error (failed requests included);
- save a screenshot of the whole graph (docs/screenshots/<name>.png when ATELIER_UPDATE_SCREENSHOTS=1,
  else the test's tmp folder).
Then queue line2product from the editor on the tiny models and wait for the image on Save Image and the
matte preview on Atelier Remove Background, with the prompt report shown by the Atelier JS extension.

Runs on whichever ComfyUI the session uses: the pinned runtime's legacy web UI, or a current one
(COMFYUI_PATH) with comfyui-frontend-package.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image

from comfyui_atelier.client import runtime

PACK = runtime.PACK_DIR
WORKFLOWS = sorted((PACK / "workflows").glob("*.json"))
SCREENSHOT_DIR = PACK / "docs" / "screenshots"
CHROMIUM = os.environ.get("ATELIER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# LiteGraph draws no text below zoom 0.6: the editor gets a large window so that whole graphs fit at a
# readable zoom, and the screenshot is scaled down to SHOT_SIZE.
VIEWPORT = {"width": 2400, "height": 1500}
SHOT_SIZE = (1600, 1000)
EXTENSIONS = {"Atelier.SystemPrompt", "Atelier.AestheticScores", "Atelier.Help"}


# ------------------------------------------------------------------------------------------ server

def _models_and_inputs(root: Path, tiny: dict[str, Path]) -> None:
    """Make every model a shipped workflow selects, and every input image it names, exist in `root`.

    Checkpoints, ControlNets and LoRAs are the tiny SD1.5 files under the workflow's names (so the
    editor shows no missing-models dialog and line2product can run); other model files are
    placeholders, never loaded here.
    """
    models = root / "models"
    sample = PACK / "example_inputs" / "line_drawing_mug.png"
    for wf in WORKFLOWS:
        for node in json.loads(wf.read_text(encoding="utf-8"))["nodes"]:
            items = list((node.get("properties") or {}).get("models") or [])
            if node["type"] == "LoraLoader":
                items.append({"name": node["widgets_values"][0], "directory": "loras"})
            for m in items:
                dst = models / m["directory"] / m["name"]
                if dst.exists() or dst.is_symlink():
                    continue
                dst.parent.mkdir(parents=True, exist_ok=True)
                src = tiny.get(m["directory"])
                if src is not None:
                    dst.symlink_to(src)
                else:
                    dst.write_bytes(b"placeholder for the editor test; not a model\n")
            if node["type"] == "LoadImage":
                dst = root / "input" / node["widgets_values"][0]
                if not dst.exists():
                    shutil.copy(sample, dst)
    # A user folder as after a first session, so that ComfyUI's own start-up probes of a fresh install do not
    # fill the console with 404s unrelated to this pack: the legacy UI's node templates, the current
    # frontend's user.css and workflow / subgraph listings. The settings skip the first-run tour, and set the
    # two canvas settings that comfyui-frontend-package 1.27's navigation-mode migration would otherwise
    # write before they are registered (an uncaught TypeError on a fresh settings file).
    user = root / "user" / "default"
    for sub in ("workflows", "subgraphs"):
        (user / sub).mkdir(parents=True, exist_ok=True)
    (user / "comfy.templates.json").write_text("[]")
    (user / "user.css").write_text("")
    (user / "comfy.settings.json").write_text(json.dumps({
        "Comfy.TutorialCompleted": True, "Comfy.Validation.Workflows": True,
        "Comfy.Canvas.LeftMouseClickBehavior": "panning", "Comfy.Canvas.MouseWheelScroll": "zoom"}))


@pytest.fixture(scope="module")
def editor_server(comfy_server_factory, tiny_sd15):
    server = comfy_server_factory()  # an own workspace (own models / input / user folders)
    _models_and_inputs(server.root, {k: Path(v) for k, v in tiny_sd15.items()})
    return server


@pytest.fixture(scope="module")
def browser():
    # Skips here are per test (setup), so CI=true turns them into failures (see conftest).
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the Python driver only; "
                                                                 "never `playwright install`)")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set ATELIER_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def _stock_noise(url: str) -> bool:
    """Failed requests that are ComfyUI's or the browser's, never this pack's (everything else counts):
    - /favicon.ico: Chromium asks for it by itself; the legacy page names none;
    - /user.css: the optional user stylesheet the current frontend links; its package ships none;
    - any host but the test server: this machine is offline (the current frontend asks api.comfy.org
      for release notes). The pack's JS never leaves the ComfyUI server."""
    u = urlsplit(url)
    if not u.scheme.startswith("http"):
        return False
    return u.path in ("/favicon.ico", "/user.css") or u.hostname not in ("127.0.0.1", "localhost")


class Editor:
    """One editor tab with its console errors and failed requests recorded."""

    def __init__(self, browser, url: str):
        self.page = browser.new_page(viewport=VIEWPORT)
        self.errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.page.on("requestfailed", lambda r: _stock_noise(r.url)
                     or self.errors.append(f"request failed: {r.url} {r.failure}"))
        self.page.on("response", lambda r: r.status >= 400 and not _stock_noise(r.url)
                     and self.errors.append(f"HTTP {r.status}: {r.url}"))
        self.page.goto(url)
        self.page.wait_for_function(
            "() => window.app && app.graph && app.canvas && window.LiteGraph"
            " && Object.keys(LiteGraph.registered_node_types).some((t) => t.startsWith('Atelier'))",
            timeout=120_000)
        self.page.wait_for_timeout(500)

    def _console(self, msg) -> None:
        if msg.type == "error" and not _stock_noise(str((msg.location or {}).get("url", ""))):
            self.errors.append(f"console: {msg.text}")

    def js(self, expr: str, arg=None):
        return self.page.evaluate(expr, arg)

    def load(self, workflow: dict) -> None:
        self.js("async (g) => { await app.loadGraphData(g); }", workflow)
        self.page.wait_for_timeout(800)

    def open_dialogs(self) -> list[str]:
        """Visible dialogs and alerts: the legacy UI's modal, the current frontend's dialogs and toasts
        (its workflow schema check reports through an alert toast, not the console)."""
        return self.js("""() => Array.from(document.querySelectorAll(
                '.comfy-modal, .p-dialog, [role=dialog], .comfy-missing-nodes, .p-toast-message'))
            .filter((e) => e.offsetParent !== null || getComputedStyle(e).position === 'fixed'
                           && getComputedStyle(e).display !== 'none' && e.getClientRects().length)
            .map((e) => e.innerText.trim().slice(0, 400))""")

    def nodes(self) -> list[dict]:
        return self.js("""() => (app.graph.nodes ?? app.graph._nodes).map((n) => ({
            id: n.id, type: n.type, registered: !!LiteGraph.registered_node_types[n.type],
            errors: !!n.has_errors}))""")

    def fit(self) -> None:
        """Fit the whole graph into the window (the legacy UI loads a node's images only once drawn)."""
        self.js("""() => {
            const nodes = app.graph.nodes ?? app.graph._nodes;
            const th = LiteGraph.NODE_TITLE_HEIGHT || 30;
            let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
            for (const n of nodes) {
                x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - th);
                x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
            }
            document.querySelectorAll('.comfy-menu').forEach((m) => { m.style.display = 'none'; });
            app.canvas.show_info = false;
            const el = app.canvas.canvas, W = el.clientWidth, H = el.clientHeight;
            const left = 60, top = 60, m = 20;
            const s = Math.min(1, (W - left - m) / (x1 - x0), (H - top - m) / (y1 - y0));
            const ds = app.canvas.ds;
            ds.scale = s;
            ds.offset[0] = (left + (W - left - m - (x1 - x0) * s) / 2) / s - x0;
            ds.offset[1] = (top + (H - top - m - (y1 - y0) * s) / 2) / s - y0;
            app.canvas.setDirty(true, true);
            app.graph.setDirtyCanvas?.(true, true);
        }""")
        self.page.wait_for_timeout(600)

    def screenshot(self, path: Path) -> None:
        """Fit the whole graph into the window and save an optimised PNG."""
        self.fit()
        path.parent.mkdir(parents=True, exist_ok=True)
        raw = path.with_suffix(".raw.png")
        self.page.screenshot(path=str(raw))
        img = Image.open(raw).convert("RGB").resize(SHOT_SIZE, Image.Resampling.LANCZOS)
        img.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        raw.unlink()

    def close(self) -> None:
        self.page.close()


@pytest.fixture
def editor(browser, editor_server):
    ed = Editor(browser, editor_server.url)
    yield ed
    ed.close()


def _screenshot_path(tmp_path: Path, name: str) -> Path:
    if os.environ.get("ATELIER_UPDATE_SCREENSHOTS") == "1":
        return SCREENSHOT_DIR / f"{name}.png"
    return tmp_path / f"{name}.png"


# ------------------------------------------------------------------------------------------ tests

def test_atelier_extensions_register_once(editor):
    names = editor.js("() => (app.extensions ?? []).map((e) => e.name)")
    atelier = [n for n in names if n.startswith("Atelier")]
    assert sorted(atelier) == sorted(EXTENSIONS), atelier  # each exactly once, all Atelier.*
    assert editor.errors == [], "\n".join(editor.errors)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_loads_cleanly_in_the_editor(editor, path, tmp_path):
    workflow = json.loads(path.read_text(encoding="utf-8"))
    editor.load(workflow)
    nodes = editor.nodes()
    assert len(nodes) == len(workflow["nodes"])
    assert [n["type"] for n in nodes if not n["registered"]] == [], "missing node types"
    assert [n for n in nodes if n["errors"]] == []
    assert editor.open_dialogs() == []
    assert any(n["type"] in ("Note", "MarkdownNote") for n in nodes), "every workflow explains its models in a Note"
    shot = _screenshot_path(tmp_path, path.stem)
    editor.screenshot(shot)
    with Image.open(shot) as im:
        assert im.size == SHOT_SIZE
        assert len(im.getcolors(256) or []) > 8  # a drawn graph, not a blank page
    assert editor.errors == [], "\n".join(editor.errors)


def test_missing_node_types_are_detected(editor):
    """The check above would see a missing node: a workflow with an unknown type shows the dialog."""
    workflow = json.loads((PACK / "workflows" / "remove_background.json").read_text(encoding="utf-8"))
    workflow["nodes"][0]["type"] = "AtelierNoSuchNodeForTheTest"
    editor.load(workflow)
    unregistered = [n["type"] for n in editor.nodes() if not n["registered"]]
    assert unregistered == ["AtelierNoSuchNodeForTheTest"]
    dialogs = editor.open_dialogs()
    assert any("AtelierNoSuchNodeForTheTest" in d for d in dialogs), dialogs


def test_help_popup_and_score_display(editor, editor_server):
    info = editor_server.object_info()
    editor.load(json.loads((PACK / "workflows" / "story_set.json").read_text(encoding="utf-8")))
    # Help: the context-menu entry opens a popup with the node's description and input tooltips.
    got = editor.js("""() => {
        const node = (app.graph.nodes ?? app.graph._nodes).find((n) => n.type === 'AtelierAestheticSetGate');
        const options = [];
        node.getExtraMenuOptions(app.canvas, options);
        const entry = options.find((o) => o && o.content === 'Atelier help');
        if (!entry) return {entry: false, panel: !!window.__COMFYUI_FRONTEND_VERSION__};
        entry.callback();
        const box = document.querySelector('.atelier-help');
        return {entry: true, text: box.innerText, visible: box.getClientRects().length > 0};
    }""")
    # Only the legacy UI gets the popup; the current frontend's own help panel shows js/docs/<id>.md instead
    # (test_node_docs_browser.py).
    assert got["entry"] or got["panel"], got
    if got["entry"]:
        assert got["visible"]
        assert info["AtelierAestheticSetGate"]["description"] in got["text"]
        assert "threshold" in got["text"] and "stop workflow" in got["text"]  # an input's tooltip
        editor.page.keyboard.press("Escape")
        assert editor.js("() => document.querySelectorAll('.atelier-help').length") == 0
    # Non-Atelier nodes are left alone.
    assert editor.js("""() => {
        const node = (app.graph.nodes ?? app.graph._nodes).find((n) => n.type === 'KSampler');
        const options = [];
        node.getExtraMenuOptions?.(app.canvas, options);
        return options.some((o) => o && o.content === 'Atelier help');
    }""") is False
    # Scores: the gate's ui message (as the server sends it) is shown on the node, verdict coloured.
    shown = editor.js("""() => {
        const node = (app.graph.nodes ?? app.graph._nodes).find((n) => n.type === 'AtelierAestheticSetGate');
        node.onExecuted({atelier_scores: [6.5, 5.25], atelier_gate: [{passed: false, mean: 5.875, threshold: 6.0}]});
        const w = node.widgets.find((w) => w.name === 'atelier_scores');
        const el = w.element ?? w.inputEl;
        return {text: el.value, color: el.style.color};
    }""")
    assert "#0 6.500" in shown["text"] and "#1 5.250" in shown["text"]
    assert "FAIL (mean 5.875 < 6)" in shown["text"] and shown["color"]
    assert editor.errors == [], "\n".join(editor.errors)


def test_readback_accuracy_display(editor):
    # keyboard_skin's Text Read-back node: its ui message is shown as read-back accuracy, not as LAION scores.
    editor.load(json.loads((PACK / "workflows" / "keyboard_skin.json").read_text(encoding="utf-8")))
    shown = editor.js("""() => {
        const node = (app.graph.nodes ?? app.graph._nodes).find((n) => n.type === 'AtelierTextReadback');
        node.onExecuted({atelier_scores: [0.8], atelier_report: ['box 0: Shift -> Shlft 0.800']});
        const w = node.widgets.find((w) => w.name === 'atelier_scores');
        const el = w.element ?? w.inputEl;
        return el.value;
    }""")
    assert "read-back accuracy: #0 0.800" in shown and "LAION" not in shown, shown
    assert "Shift -> Shlft" in shown
    assert editor.errors == [], "\n".join(editor.errors)


def test_line2product_queued_from_the_editor_shows_the_image(editor, editor_server, tiny_sd15, tmp_path):
    from comfyui_atelier.core.matting import CLASSICAL_NAME

    editor.load(json.loads((PACK / "workflows" / "line2product.json").read_text(encoding="utf-8")))
    # Quick settings for tiny random models (the model files already carry the workflow's names).
    # A caption over CLIP's token window (75 + start/end): the prompt node's report must warn, shown in colour.
    caption = ", ".join(f"detail number {i} of the white ceramic mug" for i in range(14))
    editor.js("""([classical, caption]) => {
        const set = {EmptyLatentImage: {width: 64, height: 64}, AtelierLineart: {resolution: 64},
                     KSampler: {steps: 2}, AtelierSaliencyLoader: {model_name: classical},
                     AtelierSystemPrompt: {prompt: caption}};
        for (const n of app.graph.nodes ?? app.graph._nodes)
            for (const [name, value] of Object.entries(set[n.type] ?? {}))
                n.widgets.find((w) => w.name === name).value = value;
    }""", [CLASSICAL_NAME, caption])
    editor.fit()
    editor.js("async () => { await app.queuePrompt(0, 1); }")
    deadline = time.monotonic() + 240
    while not editor.js("""() => {
        const nodes = app.graph.nodes ?? app.graph._nodes;
        const loaded = (t) => { const n = nodes.find((n) => n.type === t);
            return n && n.imgs && n.imgs.length > 0 && n.imgs[0].complete && n.imgs[0].naturalWidth > 0; };
        return loaded('SaveImage') && loaded('AtelierRemoveBackground');
    }"""):
        assert editor.open_dialogs() == [] and editor.errors == [], (editor.open_dialogs(), editor.errors)
        assert time.monotonic() < deadline, "no image on Save Image / Atelier Remove Background within 240 s"
        editor.page.wait_for_timeout(500)
    result = editor.js("""() => {
        const nodes = app.graph.nodes ?? app.graph._nodes;
        const find = (t) => nodes.find((n) => n.type === t);
        const w = find('AtelierSystemPrompt').widgets.find((w) => w.name === 'atelier_report');
        return {save: find('SaveImage').imgs[0].src, matte: find('AtelierRemoveBackground').imgs[0].src,
                size: [find('SaveImage').imgs[0].naturalWidth, find('SaveImage').imgs[0].naturalHeight],
                report: w ? (w.element ?? w.inputEl).value : null,
                color: w ? (w.element ?? w.inputEl).style.color : null};
    }""")
    assert "type=output" in result["save"] and "line2product" in result["save"]
    assert "type=temp" in result["matte"] and "atelier_matte" in result["matte"]
    drawing = Image.open(PACK / "example_inputs" / "line_drawing_mug.png").size  # Crop Back restores its size
    assert result["size"] == list(drawing)
    assert result["report"] and "WARNING: positive prompt is" in result["report"]
    assert "-token window" in result["report"] and "tokens: positive" in result["report"]
    assert result["color"] == "rgb(232, 163, 61)"
    saved = list(editor_server.output_dir.glob("line2product*.png"))
    assert saved and Image.open(saved[0]).size == drawing
    editor.screenshot(tmp_path / "line2product-run.png")
    assert editor.errors == [], "\n".join(editor.errors)
