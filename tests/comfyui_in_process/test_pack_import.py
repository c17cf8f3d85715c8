"""The pack as ComfyUI loads it: every family registers, under any folder name, cheaply; a broken
family is skipped with a log line while the others load."""
import json
import logging
import subprocess
import sys

from comfyui_atelier.client.runtime import PACK_DIR

# Optional heavy backends that importing the pack must not pull in.
HEAVY = ("diffusers", "peft", "accelerate", "paddleocr", "paddle", "rapidocr_onnxruntime", "onnxruntime", "onnx")

LOAD_AS_COMFYUI_DOES = r"""
import asyncio, inspect, json, os, sys
root, pack, folder = sys.argv[1:4]
sys.path.insert(0, root)
os.chdir(root)
import comfy.cli_args
comfy.cli_args.args.cpu = True
import nodes  # ComfyUI's own module, which loads custom nodes
link = os.path.join(sys.argv[4], folder)
os.symlink(pack, link)
ok = nodes.load_custom_node(link)
if inspect.isawaitable(ok):  # async since mid-2025 (ComfyUI 0.3.4x)
    ok = asyncio.run(ok)
heavy = [m for m in sys.argv[5].split(",") if m in sys.modules]
atelier = sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("Atelier"))
print(json.dumps({"ok": ok, "heavy": heavy, "nodes": atelier, "web": list(nodes.EXTENSION_WEB_DIRS.values())}))
"""


def test_comfyui_loads_the_pack_under_any_folder_name(comfy, tmp_path):
    from comfyui_atelier import nodes as families

    expected = sorted(families.NODE_CLASS_MAPPINGS)
    assert len(expected) >= 25 and not families.FAILED_FAMILIES
    for folder in ("ComfyUI-Atelier", "comfyui atelier"):
        custom = tmp_path / folder.replace(" ", "_")
        custom.mkdir()
        proc = subprocess.run([sys.executable, "-c", LOAD_AS_COMFYUI_DOES, str(comfy.root), str(PACK_DIR), folder,
                               str(custom), ",".join(HEAVY)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["ok"] is True, proc.stderr[-3000:]
        assert out["nodes"] == expected, folder
        assert out["heavy"] == [], f"importing the pack pulled in optional heavy modules: {out['heavy']}"
        assert any(w.endswith("js") for w in out["web"])
        assert "disabled" not in proc.stderr


def test_a_broken_family_is_skipped_with_a_log_line(comfy, caplog):
    from comfyui_atelier import nodes as families

    with caplog.at_level(logging.WARNING, logger="atelier"):
        classes, names, failed = families.load_families(
            {"prompt": "system prompt injector", "no_such_family": "imaginary nodes"})
    assert set(failed) == {"no_such_family"}
    assert "AtelierSystemPrompt" in classes and "AtelierSystemPrompt" in names
    assert any("imaginary nodes nodes disabled" in r.getMessage() for r in caplog.records)
