// comfyui-atelier editor extensions. Each registers once and touches only Atelier nodes:
//   Atelier.SystemPrompt     the prompt report (token counts, over-77-token WARNING) on the prompt nodes after a run
//   Atelier.AestheticScores  the aesthetic score(s) / gate verdict on the scorer, filter and gate after a run,
//                            and the key-label read-back accuracies / verdict on the read-back nodes
//   Atelier.Help             "Atelier help" in an Atelier node's context menu: a popup from its description,
//                            only where the frontend has no node help panel of its own (the legacy web UI);
//                            the current frontend's panel shows the pack's docs, js/docs/<NodeClassId>.md
// Image previews (glyph layouts, mattes) need no code here: those nodes return ui.images, which every
// ComfyUI frontend draws on the node. Works on the legacy web UI (early 2024) and comfyui-frontend-package;
// if the frontend API differs, each feature quietly does nothing (a console.warn at most, never an error).
import { app } from "../../scripts/app.js";

const PROMPT_NODES = new Set(["AtelierSystemPrompt", "AtelierSystemPromptEncode"]);
const SCORE_NODES = new Set(["AtelierAestheticScorer", "AtelierAestheticFilter", "AtelierAestheticSetGate",
  "AtelierSetCoherence"]);
// the same on-node text, labelled as character accuracy of the labels read back (not LAION scores)
const READBACK_NODES = new Set(["AtelierTextReadback", "AtelierTextReadbackFilter", "AtelierTextReadbackGate"]);
const WARN = "#e8a33d";
const PASS = "#5cb85c";
const FAIL = "#e05d5d";

// ---------------------------------------------------------------- shared: a read-only text box on a node

function showText(node, name, text, color) {
  if (typeof node.addDOMWidget !== "function") return false;
  let widget = node.widgets?.find((w) => w.name === name);
  if (!widget) {
    const el = document.createElement("textarea");
    el.readOnly = true;
    el.rows = 4;
    el.className = "atelier-report";
    el.style.cssText = "width:100%;font-size:11px;opacity:0.9;resize:vertical;";
    widget = node.addDOMWidget(name, "atelier_report", el, {
      serialize: false, // not sent in the API prompt
      getValue: () => "", // nothing stored in the saved workflow
      setValue: () => {},
    });
    widget.serialize = false;
  }
  const el = widget.element ?? widget.inputEl;
  if (el) {
    el.value = text;
    el.style.color = color || "";
    el.title = text;
  }
  node.setDirtyCanvas?.(true, true);
  return true;
}

function hookExecuted(nodeType, handler, what) {
  const onExecuted = nodeType.prototype.onExecuted;
  nodeType.prototype.onExecuted = function (message) {
    const r = onExecuted?.apply(this, arguments);
    try {
      if (message) handler(this, message);
    } catch (err) {
      console.warn(`[Atelier] could not show the ${what}`, err);
    }
    return r;
  };
}

// ---------------------------------------------------------------- Atelier.SystemPrompt

app.registerExtension({
  name: "Atelier.SystemPrompt",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!PROMPT_NODES.has(nodeData?.name)) return;
    hookExecuted(nodeType, (node, message) => {
      if (!message.text) return;
      const lines = (Array.isArray(message.text) ? message.text : [message.text]).filter((t) => t != null);
      const text = lines.join("\n---\n");
      showText(node, "atelier_report", text, text.includes("WARNING") ? WARN : "");
    }, "prompt report");
  },
});

// ---------------------------------------------------------------- Atelier.AestheticScores

function fmt(x) {
  const v = Number(x);
  return Number.isFinite(v) ? v.toFixed(3) : String(x);
}

export function scoreText(message, kind = "aesthetic") {
  const out = [];
  let color = "";
  const readback = kind === "readback";
  const scores = Array.isArray(message.atelier_scores) ? message.atelier_scores.flat().map(Number) : [];
  if (scores.length) {
    const label = readback ? `read-back accurac${scores.length > 1 ? "ies" : "y"}` : `aesthetic score${scores.length > 1 ? "s" : ""} (LAION)`;
    out.push(`${label}: ` + scores.map((s, i) => `#${i} ${fmt(s)}`).join("  "));
    if (scores.length > 1) {
      const mean = scores.reduce((a, b) => a + b, 0) / scores.length;
      out.push(`mean ${fmt(mean)}  min ${fmt(Math.min(...scores))}  max ${fmt(Math.max(...scores))}`);
    }
  }
  const gate = Array.isArray(message.atelier_gate) ? message.atelier_gate[0] : null;
  if (gate && typeof gate === "object") {
    const what = readback ? "read-back gate" : "set gate";
    const value = readback ? "accuracy" : "mean";
    out.push(`${what}: ${gate.passed ? "PASS" : "FAIL"} (${value} ${fmt(gate.mean)} ${Number(gate.mean) >= Number(gate.threshold) ? ">=" : "<"} ${gate.threshold})`);
    if ("coherence" in gate) {
      const on = Number(gate.min_coherence) > 0;
      out.push(`set coherence ${fmt(gate.coherence)}` + (on ? ` (min ${gate.min_coherence})` : " (check off)"));
    }
    color = gate.passed ? PASS : FAIL;
  }
  const reports = Array.isArray(message.atelier_report) ? message.atelier_report : [];
  for (const r of reports) {
    out.push(String(r));
    if (String(r).startsWith("NOTHING PASSED")) color = WARN;
  }
  return { text: out.join("\n"), color };
}

app.registerExtension({
  name: "Atelier.AestheticScores",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const kind = READBACK_NODES.has(nodeData?.name) ? "readback" : SCORE_NODES.has(nodeData?.name) ? "aesthetic" : null;
    if (!kind) return;
    hookExecuted(nodeType, (node, message) => {
      const { text, color } = scoreText(message, kind);
      if (text) showText(node, "atelier_scores", text, color);
    }, "aesthetic scores");
  },
});

// ---------------------------------------------------------------- Atelier.Help

function helpOf(nodeData) {
  const inputs = [];
  for (const section of ["required", "optional"]) {
    for (const [name, spec] of Object.entries(nodeData?.input?.[section] ?? {})) {
      const opts = Array.isArray(spec) ? spec[1] : null;
      const type = Array.isArray(spec) ? (Array.isArray(spec[0]) ? "choice" : String(spec[0])) : "";
      inputs.push({ name, type, tip: opts?.tooltip ?? "", optional: section === "optional" });
    }
  }
  const names = nodeData?.output_name ?? nodeData?.output ?? [];
  const types = nodeData?.output ?? [];
  const tips = nodeData?.output_tooltips ?? [];
  const outputs = names.map((name, i) => ({ name, type: String(types[i] ?? ""), tip: tips[i] ?? "" }));
  return {
    title: nodeData?.display_name || nodeData?.name || "Atelier node",
    id: nodeData?.name ?? "",
    category: nodeData?.category ?? "",
    description: nodeData?.description || "(no description)",
    inputs,
    outputs,
  };
}

function el(tag, style, text) {
  const e = document.createElement(tag);
  if (style) e.style.cssText = style;
  if (text != null) e.textContent = text;
  return e;
}

function closeHelp() {
  document.querySelectorAll(".atelier-help").forEach((e) => e.remove());
}

export function showHelp(help) {
  closeHelp();
  const box = el("div", "position:fixed;left:50%;top:12%;transform:translateX(-50%);z-index:10000;max-width:560px;" +
    "max-height:70vh;overflow:auto;background:#222;color:#ddd;border:1px solid #666;border-radius:8px;padding:14px 18px;" +
    "font:13px/1.45 sans-serif;box-shadow:0 6px 24px rgba(0,0,0,.6);");
  box.className = "atelier-help";
  box.setAttribute("role", "dialog");
  const close = el("button", "float:right;background:#444;color:#eee;border:0;border-radius:4px;cursor:pointer;padding:2px 8px;", "×");
  close.title = "Close (Esc)";
  close.className = "atelier-help-close";
  close.onclick = closeHelp;
  box.append(close, el("h3", "margin:0 0 4px;font-size:15px;", help.title));
  box.append(el("div", "opacity:.6;font-size:11px;margin-bottom:8px;", `${help.id} · ${help.category}`));
  const desc = el("p", "margin:0 0 10px;", help.description);
  desc.className = "atelier-help-description";
  box.append(desc);
  for (const [label, rows] of [["Inputs", help.inputs], ["Outputs", help.outputs]]) {
    if (!rows.length) continue;
    box.append(el("div", "font-weight:bold;margin:8px 0 2px;", label));
    const list = el("ul", "margin:0;padding-left:18px;");
    for (const r of rows) {
      const li = el("li", "margin:2px 0;");
      li.append(el("b", "", r.name), el("span", "opacity:.6;", ` (${r.type}${r.optional ? ", optional" : ""})`));
      if (r.tip) li.append(document.createTextNode(`: ${r.tip}`));
      list.append(li);
    }
    box.append(list);
  }
  const onKey = (e) => {
    if (e.key === "Escape") {
      closeHelp();
      document.removeEventListener("keydown", onKey);
    }
  };
  document.addEventListener("keydown", onKey);
  document.body.append(box);
  return box;
}

// The node help panel ("Node Info" in the selection toolbox and the node library) arrived with
// comfyui-frontend-package 1.22 (ComfyUI_frontend PR #3922, June 2025). It fetches
// /extensions/<pack folder>/docs/<NodeClassId>/<locale>.md, then docs/<NodeClassId>.md, from this web
// directory and renders it; that frontend also sets window.__COMFYUI_FRONTEND_VERSION__, the legacy UI does not.
export const HELP_PANEL_SINCE = [1, 22];

export function hasNodeHelpPanel(version = globalThis.__COMFYUI_FRONTEND_VERSION__) {
  const m = /^(\d+)\.(\d+)/.exec(String(version ?? ""));
  if (!m) return false;
  const [major, minor] = [Number(m[1]), Number(m[2])];
  return major > HELP_PANEL_SINCE[0] || (major === HELP_PANEL_SINCE[0] && minor >= HELP_PANEL_SINCE[1]);
}

app.registerExtension({
  name: "Atelier.Help",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!String(nodeData?.name ?? "").startsWith("Atelier")) return;
    if (hasNodeHelpPanel()) return; // the frontend's own panel shows js/docs/<NodeClassId>.md: no second popup
    const help = helpOf(nodeData);
    nodeType.prototype.atelierHelp = help;
    const getExtraMenuOptions = nodeType.prototype.getExtraMenuOptions;
    nodeType.prototype.getExtraMenuOptions = function (canvas, options) {
      const r = getExtraMenuOptions?.apply(this, arguments);
      try {
        if (Array.isArray(options)) {
          options.unshift({ content: "Atelier help", callback: () => showHelp(help) }, null);
        }
      } catch (err) {
        console.warn("[Atelier] could not add the help menu entry", err);
      }
      return r;
    };
  },
});
