"""line2product and the pack's registration, through a real ComfyUI server on tiny models."""
import json
import subprocess
import sys

import pytest
from PIL import Image

from comfyui_atelier.client import demo, runtime

PACK = runtime.PACK_DIR


def test_every_atelier_node_is_served_with_its_inputs(comfy_server, comfy):
    from comfyui_atelier import nodes as families

    assert not families.FAILED_FAMILIES, f"families failed to import: {families.FAILED_FAMILIES}"
    info = comfy_server.object_info()
    served = {k for k in info if k.startswith("Atelier")}
    assert served == set(families.NODE_CLASS_MAPPINGS)
    for name, cls in families.NODE_CLASS_MAPPINGS.items():
        want = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            assert set(info[name]["input"].get(section, {})) == set(want.get(section, {})), (name, section)
        assert info[name]["display_name"].startswith("Atelier"), name
        assert info[name]["category"].startswith("atelier/"), name


def test_line2product_runs_on_tiny_models(comfy_server, tiny_sd15):
    Image.open(PACK / "example_inputs" / "line_drawing_mug.png").save(comfy_server.input_dir / "mug.png")
    prompt = demo.prepare_prompt(
        json.loads(demo.WORKFLOW_API.read_text()), image_name="mug.png", caption="a mug", seed=3, steps=2,
        model_files={k: v.name for k, v in tiny_sd15.items()}, models_dir=None)
    entry = comfy_server.run(prompt, timeout=600)
    save_id = next(k for k, v in prompt.items() if v["class_type"] == "SaveImage")
    files = comfy_server.output_files(entry, save_id)
    assert len(files) == 1
    img = Image.open(files[0])
    assert img.size == Image.open(PACK / "example_inputs" / "line_drawing_mug.png").size and img.mode == "RGB"


def test_bad_input_is_rejected_with_the_nodes_message(comfy_server):
    prompt = json.loads(demo.WORKFLOW_API.read_text())
    node = next(k for k, v in prompt.items() if v["class_type"] == "AtelierSystemPrompt")
    prompt[node]["inputs"]["preset"] = "no such preset"
    with pytest.raises(runtime.PromptRejected) as err:
        comfy_server.queue(prompt)
    text = str(err.value)
    assert "no such preset" in text and "e-commerce white background" in text


def test_demo_command_offline_runs_the_plumbing_check(tmp_path, tiny_sd15):
    """README command (a) without network: says what is missing, runs on tiny models, writes the image."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "comfyui_atelier.client.cli", "demo", "--offline",
                           "--models-dir", str(tmp_path / "no-models"), "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "PLUMBING CHECK, NOT REAL IMAGES" in proc.stdout
    assert "sd15-base" in proc.stdout
    files = list(out.glob("*_PLUMBING_CHECK.png"))
    assert len(files) == 1 and Image.open(files[0]).size == Image.open(demo.EXAMPLE_IMAGE).size
