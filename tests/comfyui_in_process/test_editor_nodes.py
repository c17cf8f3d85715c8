"""Node previews for the editor: the glyph, layout and matting nodes return a small preview in their ui
output (PNG files in ComfyUI's temp folder, like PreviewImage), beside their unchanged results."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image


def _call(cls, **kwargs):
    """Call a node the way ComfyUI does: through its FUNCTION, with keyword inputs."""
    obj = cls()
    return getattr(obj, cls.FUNCTION)(**kwargs)


def _check_preview(out: dict, n_results: int, want_mode: str, max_side: int = 384) -> list[Image.Image]:
    import folder_paths

    assert set(out) == {"ui", "result"} and len(out["result"]) == n_results
    items = out["ui"]["images"]
    assert items, "no preview written"
    imgs = []
    for it in items:
        assert it["type"] == "temp" and it["subfolder"] == ""
        path = Path(folder_paths.get_temp_directory()) / it["filename"]
        img = Image.open(path)
        img.load()
        assert img.mode == want_mode and max(img.size) <= max_side
        imgs.append(img)
    return imgs


def test_remove_background_previews_the_rgba_matte(comfy):
    from comfyui_atelier.core.matting import CLASSICAL_NAME
    from comfyui_atelier.nodes import matting as N

    (model,) = N.AtelierSaliencyLoader().load(CLASSICAL_NAME)
    img = torch.full((2, 200, 600, 3), 0.98)
    img[:, 50:150, 200:400] = torch.tensor([0.8, 0.3, 0.1])
    out = _call(N.AtelierRemoveBackground, saliency_model=model, image=img, background="#FFFFFF",
                alpha_mode="soft", threshold=0.5, grow_shrink=0, feather=0.0, refine_edges="none",
                refine_radius=0, max_side=1024, small_input="upscale")
    direct = N.AtelierRemoveBackground().remove(model, img, refine_edges="none")
    for a, b in zip(out["result"], direct):
        assert torch.equal(a, b)  # the preview does not change the results
    previews = _check_preview(out, 4, "RGBA")
    assert len(previews) == 2 and previews[0].size == (384, 128)  # thumbnail keeps the aspect ratio
    alpha = previews[0].getchannel("A")
    assert alpha.getpixel((192, 64)) > 200 and alpha.getpixel((5, 5)) < 50  # product opaque, background clear


def test_glyph_render_and_layout_previews(comfy):
    from comfyui_atelier.nodes import glyph as N

    (glyphs,) = N.AtelierTextBoxes().build("Atelier | 10,10,200,60", 256, 128)
    out = _call(N.AtelierGlyphRender, glyphs=glyphs, width=0, height=0, font="auto", fit="contain",
                direction="from boxes", padding=0.08, polarity="white_on_black")
    (prev,) = _check_preview(out, 3, "RGB")
    assert prev.size == (256, 128)
    assert prev.getextrema()[0][1] > 200  # white text drawn on black
    lay = _call(N.AtelierLayoutCompose, layout="qwerty_26", width=640, height=320)
    (lprev,) = _check_preview(lay, 3, "RGB")
    assert lprev.size == (384, 192)

