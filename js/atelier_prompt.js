// Atelier.SystemPrompt: shows the report (token counts, warnings) of the Atelier System Prompt nodes
// inside the node after each run. Touches only its own nodes; if the frontend API differs, it does nothing.
import { app } from "../../scripts/app.js";

const NODES = new Set(["AtelierSystemPrompt", "AtelierSystemPromptEncode"]);
const WIDGET = "atelier_report";

function showReport(node, lines) {
  const text = (Array.isArray(lines) ? lines : [lines]).filter((t) => t != null).join("\n---\n");
  let widget = node.widgets?.find((w) => w.name === WIDGET);
  if (!widget) {
    const el = document.createElement("textarea");
    el.readOnly = true;
    el.rows = 4;
    el.style.cssText = "width:100%;font-size:11px;opacity:0.85;resize:vertical;";
    if (typeof node.addDOMWidget !== "function") return;
    widget = node.addDOMWidget(WIDGET, "atelier_report", el, { serialize: false, getValue: () => el.value, setValue: () => {} });
    widget.serialize = false; // not saved into the workflow
    widget.serializeValue = () => undefined; // nor into the API prompt
  }
  const el = widget.element ?? widget.inputEl;
  if (el) {
    el.value = text;
    el.style.color = text.includes("WARNING") ? "#e8a33d" : "";
  }
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "Atelier.SystemPrompt",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODES.has(nodeData?.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      try {
        if (message?.text) showReport(this, message.text);
      } catch (err) {
        console.warn("[Atelier] could not show the prompt report", err);
      }
    };
  },
});
