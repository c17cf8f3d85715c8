"""The node help panel of the current ComfyUI frontend fetches and shows the pack's own doc (js/docs/<id>.md).

In real headless Chromium against a real server (as test_editor_browser.py): load remove_background.json,
select Atelier Remove Background, press the selection toolbox's Node Info button (what a user clicks), and
check that the frontend fetched /extensions/<pack folder>/docs/AtelierRemoveBackground.md and renders it in
the panel (title, prose, the inputs table). Where that panel exists the pack adds no "Atelier help" popup
of its own (js/atelier.js); the popup is for the legacy web UI, tested in test_editor_browser.py.

The panel arrived with comfyui-frontend-package 1.22: ComfyUI 0.3.64's 1.27.10 has it, the pinned runtime's
legacy web UI (early 2024) does not, and there this test is not collected (the `current_frontend` marker,
tests/conftest.py); a current frontend older than 1.22 (a COMFYUI_PATH of mid-2024 to mid-2025) skips it
with that reason.
"""
from __future__ import annotations

import json
import re

import pytest

from comfyui_atelier.client import runtime
from tests.comfyui_server.test_editor_browser import Editor, _models_and_inputs, browser  # noqa: F401  (fixture)

PACK = runtime.PACK_DIR
NODE = "AtelierRemoveBackground"
DOC = PACK / "js" / "docs" / f"{NODE}.md"
PANEL_SINCE = (1, 22)  # comfyui-frontend-package release that added the node help panel (as js/atelier.js)

pytestmark = pytest.mark.current_frontend


@pytest.fixture(scope="module")
def docs_server(comfy_server_factory):
    server = comfy_server_factory()
    _models_and_inputs(server.root, {})  # the workflows' models and inputs by name, a used install's user folder
    return server


def _doc_phrases() -> tuple[str, str]:
    """(title, the first sentence of the prose) of the shipped doc, as a reader sees them."""
    text = DOC.read_text(encoding="utf-8")
    title = text.splitlines()[0].removeprefix("# ").strip()
    para = text.split("\n\n", 2)[1]
    first = " ".join(para.split()).split(":")[0].split(".")[0]
    return title, re.sub(r"[`*]", "", first)


def test_the_help_panel_fetches_and_shows_our_doc(browser, docs_server):  # noqa: F811
    ed = Editor(browser, docs_server.url)
    responses: list[tuple[str, int]] = []
    ed.page.on("response", lambda r: "/docs/" in r.url and responses.append((r.url, r.status)))
    probe_console: list[str] = []  # the browser's own console line for the locale probe's 404
    ed.page.on("console", lambda m: m.type == "error" and f"/docs/{NODE}/" in str((m.location or {}).get("url", ""))
               and probe_console.append(f"console: {m.text}"))
    try:
        version = ed.js("() => window.__COMFYUI_FRONTEND_VERSION__ ?? null")
        m = re.match(r"(\d+)\.(\d+)", str(version or ""))
        if not m or (int(m[1]), int(m[2])) < PANEL_SINCE:
            pytest.skip(f"this ComfyUI's frontend ({version or 'the legacy web UI'}) has no node help panel "
                        "(it gets the 'Atelier help' popup instead); the panel runs on ComfyUI 0.3.64 "
                        "(comfyui-frontend-package 1.27.10)")
        ed.load(json.loads((PACK / "workflows" / "remove_background.json").read_text(encoding="utf-8")))
        # the pack's own popup stays out where the frontend has its panel
        offered = ed.js("""(type) => {
            const node = (app.graph.nodes ?? app.graph._nodes).find((n) => n.type === type);
            const options = [];
            node.getExtraMenuOptions?.(app.canvas, options);
            return options.some((o) => o && o.content === 'Atelier help');
        }""", NODE)
        assert offered is False, f"frontend {version} has a help panel, yet the pack still adds its popup"
        # click the node's title, as a user selects it; the selection toolbox then shows its Node Info button
        ed.fit()
        x, y = ed.js("""(type) => {
            const node = (app.graph.nodes ?? app.graph._nodes).find((n) => n.type === type);
            const [cx, cy] = app.canvas.ds.convertOffsetToCanvas([node.pos[0] + node.size[0] / 2, node.pos[1] - 10]);
            const r = app.canvas.canvas.getBoundingClientRect();
            return [r.left + cx, r.top + cy];
        }""", NODE)
        ed.page.mouse.click(x, y)
        info = ed.page.locator("[data-testid=info-button]")
        info.wait_for(state="visible", timeout=20_000)
        info.click()
        panel = ed.page.locator(".node-help-content")
        title, sentence = _doc_phrases()
        panel.filter(has_text=sentence).wait_for(state="visible", timeout=20_000)
        shown = panel.inner_text()
        headings = ed.js("() => Array.from(document.querySelectorAll('.node-help-content h1, .node-help-content h2'))"
                         ".map((h) => h.innerText.trim())")
        table = ed.js("() => Array.from(document.querySelectorAll('.node-help-content table td code'))"
                      ".map((c) => c.innerText)")
    finally:
        ed.close()
    base = f"{docs_server.url}/extensions/{PACK.name}/docs/{NODE}"
    assert (f"{base}.md", 200) in responses, responses  # our file, served from the pack's web directory
    # the frontend asks for <id>/<locale>.md first; the pack ships the flat file every locale falls back to
    assert [u for u, s in responses if s == 200] == [f"{base}.md"], responses
    assert title in headings and "How to use it" in headings and "Pitfalls and errors" in headings, headings
    assert sentence in shown
    assert {"saliency_model", "max_side", "rgba"} <= set(table), table  # the reference block's tables rendered
    # the locale probe's 404 (and the browser's console line about it) is the frontend's documented order
    unrelated = [e for e in ed.errors if f"/docs/{NODE}/" not in e]
    for line in probe_console:
        if line in unrelated:
            unrelated.remove(line)
    assert unrelated == [], "\n".join(unrelated)
