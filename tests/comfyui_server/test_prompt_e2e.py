"""The prompt nodes in a real ComfyUI server: list batching into a sampler, and rejection texts."""
import pytest

from comfyui_atelier.client.runtime import PromptRejected


def _graph(ckpt, prompt_node):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": prompt_node,
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["2", 1],
                                                    "latent_image": ["3", 0], "seed": 1, "steps": 1, "cfg": 5.0,
                                                    "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "atelier_prompt"}},
    }


def test_object_info_lists_presets(comfy_server):
    info = comfy_server.object_info()
    for cls in ("AtelierSystemPrompt", "AtelierSystemPromptEncode", "AtelierPromptLines"):
        assert cls in info, f"{cls} not registered: {comfy_server.log_tail()}"
    presets = info["AtelierSystemPrompt"]["input"]["required"]["preset"][0]
    assert {"e-commerce white background", "style token", "keyboard skin", "general negative"} <= set(presets)


def test_prompt_lines_batch_through_encode_and_sampler(comfy_server, tiny_sd15):
    g = _graph(tiny_sd15["checkpoints"].name, {
        "class_type": "AtelierSystemPromptEncode",
        "inputs": {"clip": ["1", 1], "prompt": ["7", 0], "preset": "style token", "position": "preset default",
                   "extra_negative": "", "style_id": "style02"}})
    g["7"] = {"class_type": "AtelierPromptLines",
              "inputs": {"text": "a fox in the snow\n# skipped\na fox asleep", "skip_comments": True}}
    entry = comfy_server.run(g)
    files = comfy_server.output_files(entry, "6")
    assert len(files) == 2  # one image per line
    reports = entry["outputs"]["2"]["text"]
    assert len(reports) == 2 and all("style: style02" in r for r in reports)


def test_unknown_preset_rejected_with_list(comfy_server, tiny_sd15):
    g = _graph(tiny_sd15["checkpoints"].name, {
        "class_type": "AtelierSystemPromptEncode",
        "inputs": {"clip": ["1", 1], "prompt": "a mug", "preset": "no such preset", "position": "preset default",
                   "extra_negative": ""}})
    with pytest.raises(PromptRejected) as ei:
        comfy_server.queue(g)
    text = str(ei.value)
    assert "unknown preset 'no such preset'" in text and "keyboard skin" in text
