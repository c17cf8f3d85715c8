"""The conditioners through a real ComfyUI server: registration, the ATELIER_PAD link type, crop back, errors."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from comfyui_atelier.client.runtime import PromptFailed

H, W = 90, 200


@pytest.fixture(scope="module")
def drawing_png(comfy_server) -> str:
    img = Image.new("RGB", (W, H), "white")
    from PIL import ImageDraw

    d = ImageDraw.Draw(img)
    d.rectangle((20, 15, 170, 70), outline="black", width=2)
    d.ellipse((80, 25, 120, 60), outline="black", width=2)
    name = "atelier_conditioners_drawing.png"
    img.save(comfy_server.input_dir / name)
    return name


def test_nodes_registered_with_tooltips(comfy_server):
    info = comfy_server.object_info()
    for cid in ("AtelierCanny", "AtelierLineart", "AtelierCropBack"):
        assert cid in info, f"{cid} missing from /object_info"
        node = info[cid]
        assert node["category"] == "atelier/conditioning" and node["display_name"].startswith("Atelier ")
        for name, spec in node["input"]["required"].items():
            assert spec[1].get("tooltip"), f"{cid}.{name} has no tooltip"
    assert info["AtelierCanny"]["output"] == ["IMAGE", "MASK", "ATELIER_PAD"]
    assert info["AtelierCropBack"]["input"]["required"]["pad_info"][0] == "ATELIER_PAD"


def test_lineart_pad_and_crop_back_in_a_graph(comfy_server, drawing_png):
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": drawing_png}},
        "2": {"class_type": "AtelierLineart", "inputs": {"image": ["1", 0], "polarity": "auto", "binarize": True,
                                                         "threshold": 0.0, "min_speck_area": 4, "thickness": 0,
                                                         "resolution": 128}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "atelier_cond_lines"}},
        "4": {"class_type": "AtelierCropBack", "inputs": {"image": ["2", 0], "pad_info": ["2", 2],
                                                          "restore_size": True}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "atelier_cond_back"}},
    }
    entry = comfy_server.run(prompt)
    (lines_png,) = comfy_server.output_files(entry, "3")
    (back_png,) = comfy_server.output_files(entry, "5")
    lines = np.asarray(Image.open(lines_png).convert("L"))
    assert lines.shape == (128, 320)  # short side 128, 284 wide padded to 320
    assert lines[:, :18].max() == 0 and lines[:, -18:].max() == 0  # black padding
    assert lines.max() == 255 and (lines > 0).mean() < 0.2  # white lines on black
    back = np.asarray(Image.open(back_png).convert("L"))
    assert back.shape == (H, W)
    assert back[40, 21] > 100 and back[5, 5] == 0  # the rectangle's left edge is back where it was


def test_canny_threshold_error_reaches_the_user(comfy_server, drawing_png):
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": drawing_png}},
        "2": {"class_type": "AtelierCanny", "inputs": {"image": ["1", 0], "low_threshold": 120, "high_threshold": 80,
                                                       "threshold_mode": "manual", "auto_sigma": 0.33,
                                                       "blur_sigma": 0.0, "l2_gradient": False, "resolution": 0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "atelier_cond_err"}},
    }
    with pytest.raises(PromptFailed) as e:
        comfy_server.run(prompt)
    assert "[Atelier Canny]" in str(e.value) and "low_threshold (120) is above high_threshold (80)" in str(e.value)
