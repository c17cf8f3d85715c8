"""NaN / inf inputs are refused by name (core/finite.py) in the matting, conditioner, crop-back, latent and
LoRA nodes, and Crop Back refuses a pad_info that does not belong to the image; normal inputs are unchanged."""
from __future__ import annotations

import pytest
import torch

from comfyui_atelier.core.errors import AtelierError

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def C(comfy):
    from comfyui_atelier.nodes import conditioners
    return conditioners


@pytest.fixture(scope="module")
def M(comfy):
    from comfyui_atelier.nodes import matting
    return matting


@pytest.fixture(scope="module")
def L(comfy):
    from comfyui_atelier.nodes import lora
    return lora


def drawing(b=1, h=96, w=160) -> torch.Tensor:
    img = torch.ones(b, h, w, 3)
    img[:, 20:70, 30:34] = 0.0
    img[:, 20:24, 30:120] = 0.0
    return img


def poisoned(x: torch.Tensor, items=(0,), value=NAN) -> torch.Tensor:
    y = x.clone()
    for i in items:
        y[i, 3, 5] = value
    return y


def refused(fn, node: str, input: str, *words) -> str:
    with pytest.raises(AtelierError) as e:
        fn()
    msg = str(e.value)
    assert msg.startswith(f"[{node}] input '{input}':"), msg
    assert "Fix:" in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


# ------------------------------------------------------------------------------------------- matting

def product_shot(h=120, w=160):
    img = torch.full((1, h, w, 3), 0.98)
    img[0, h // 4:3 * h // 4, w // 4:3 * w // 4] = torch.tensor([0.8, 0.3, 0.1])
    return img


def test_remove_background_refuses_nonfinite(M):
    model = M.load_cached(None)  # the classical backend: no model file
    node, name = M.AtelierRemoveBackground(), "Atelier Remove Background"
    img = product_shot()
    base = dict(saliency_model=model, refine_edges="none", max_side=0)
    for v in (NAN, INF, -INF):
        refused(lambda: node.remove(image=img, alpha_mode="threshold", threshold=v, **base), name, "threshold",
                "not a usable number")
        refused(lambda: node.remove(image=img, feather=v, **base), name, "feather", "not a usable number")
    two = torch.cat([img, img])
    msg = refused(lambda: node.remove(image=poisoned(two, (1,)), **base), name, "image", "1 of 2 images (#1)",
                  "NaN/inf pixels", "--fp32-vae")
    refused(lambda: node.remove(image=poisoned(img, value=INF), **base), name, "image", "1 of 1 images")
    mask = torch.zeros(1, 120, 160)
    mask[0, 30:90, 40:120] = 1
    bad = mask.clone()
    bad[0, 0, 0] = NAN
    refused(lambda: node.remove(image=img, mask=bad, **base), name, "mask", "1 of 1 masks", "NaN/inf values")
    # finite inputs: the product stays, the background becomes exactly white, as before
    out, alpha, rgba, sal = node.remove(image=img, mask=mask, alpha_mode="threshold", threshold=0.5, feather=0.0,
                                        **base)
    assert torch.isfinite(out).all() and out[0, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert torch.equal(alpha, mask) and torch.allclose(out[0, 60, 80], torch.tensor([0.8, 0.3, 0.1]))
    assert "1 of 2" in msg


# ------------------------------------------------------------------------------------ canny / lineart

@pytest.mark.parametrize("cls,fn,display", [("AtelierCanny", "detect", "Atelier Canny"),
                                            ("AtelierLineart", "extract", "Atelier Lineart")])
def test_conditioners_refuse_nonfinite_images(C, cls, fn, display):
    run = getattr(getattr(C, cls)(), fn)
    x = drawing(3)
    refused(lambda: run(poisoned(x, (0, 2)), resolution=0), display, "image", "2 of 3 images (#0, #2)",
            "NaN/inf pixels")
    refused(lambda: run(poisoned(x, (1,), -INF), resolution=64), display, "image", "1 of 3 images (#1)")
    img, mask, info = run(x, resolution=0)  # finite: traced as before
    assert img.shape == (3, 96, 160, 3) and mask.max() == 1.0 and torch.isfinite(img).all()


def test_canny_refuses_nonfinite_floats(C):
    node, name = C.AtelierCanny(), "Atelier Canny"
    x = drawing()
    for v in (NAN, INF):
        refused(lambda: node.detect(x, threshold_mode="auto_median", auto_sigma=v), name, "auto_sigma")
        refused(lambda: node.detect(x, blur_sigma=v), name, "blur_sigma", "not a usable number")
    ref = node.detect(x, threshold_mode="auto_median", auto_sigma=0.33, blur_sigma=1.0, resolution=0)
    assert torch.equal(ref[1], node.detect(x, threshold_mode="auto_median", auto_sigma=0.33, blur_sigma=1,
                                           resolution=0)[1])
    assert ref[1].max() == 1.0


def test_lineart_refuses_nonfinite_threshold(C):
    node, name = C.AtelierLineart(), "Atelier Lineart"
    x = drawing()
    for v in (NAN, INF, -INF):
        msg = refused(lambda: node.extract(x, threshold=v), name, "threshold", "not a usable number")
        assert "outside 0..1" not in msg  # the finite-values error, not the range one
    with pytest.raises(AtelierError, match="outside 0..1"):
        node.extract(x, threshold=1.5)
    assert node.extract(x, threshold=0.5, resolution=0)[1].max() == 1.0


# ------------------------------------------------------------------------------------------ crop back

def test_crop_back_refuses_nonfinite_image_and_mask(C):
    x = drawing(2, 90, 200)
    img, mask, info = C.AtelierLineart().extract(x, resolution=128)
    node, name = C.AtelierCropBack(), "Atelier Crop Back"
    refused(lambda: node.crop(poisoned(img, (1,)), info), name, "image", "1 of 2 images (#1)")
    bad = mask.clone()
    bad[0, 0, 0] = INF
    refused(lambda: node.crop(img, info, mask=bad), name, "mask", "1 of 2 masks (#0)", "NaN/inf values")
    out, m = node.crop(img, info, True, mask)  # finite: as before
    assert out.shape == (2, 90, 200, 3) and m.shape == (2, 90, 200)


def test_crop_back_refuses_another_images_pad_info(C):
    node, name = C.AtelierCropBack(), "Atelier Crop Back"
    _, _, wide = C.AtelierLineart().extract(drawing(1, 90, 200), resolution=128)  # padded 320x128
    img, _, tall = C.AtelierLineart().extract(drawing(1, 200, 90), resolution=128)  # padded 128x320
    assert img.shape[1:3] == (320, 128)
    msg = refused(lambda: node.crop(img, wide), name, "pad_info", "320x128 padded image", "is 128x320",
                  "not that size at any scale")
    assert "original 200x90" in msg
    # square vs the wide one: refused too; and after a 2x upscale of the wrong image as well
    refused(lambda: node.crop(torch.rand(1, 128, 128, 3), wide), name, "pad_info", "is 128x128")
    up = torch.rand(1, 640, 256, 3)
    refused(lambda: node.crop(up, wide), name, "pad_info", "is 256x640")
    # the matching pad_info at any scale is accepted: itself, 2x, 1.5x, and a latent-rounded generation
    assert node.crop(img, tall)[0].shape == (1, 200, 90, 3)
    assert node.crop(up, tall, restore_size=False)[0].shape[1:3] == (2 * tall["scaled_h"], 2 * tall["scaled_w"])
    assert node.crop(torch.rand(1, 480, 192, 3), tall)[0].shape == (1, 200, 90, 3)
    _, _, keep = C.AtelierLineart().extract(drawing(1, 100, 77), resolution=0)  # 77x100, no padding
    assert node.crop(torch.rand(1, 96, 72, 3), keep)[0].shape == (1, 100, 77, 3)  # latent floors to 72x96
    assert node.crop(torch.rand(1, 192, 144, 3), keep)[0].shape == (1, 100, 77, 3)  # and upscaled 2x


@pytest.mark.parametrize("change,words", [
    (dict(orig_h=None), "missing orig_h"),
    (dict(top=-2), "negative or zero top"),
    (dict(scaled_w=0), "negative or zero scaled_w"),
    (dict(left=3.5), "left is 3.5, not a whole number"),
    (dict(orig_w="90"), "orig_w is '90', not a whole number"),
    (dict(bottom=NAN), "bottom is nan, not a whole number"),
    (dict(right=True), "right is True, not a whole number"),
    (dict(orig_h=10 ** 9), "orig_h above"),
])
def test_crop_back_refuses_malformed_pad_info(C, change, words):
    img, _, info = C.AtelierLineart().extract(drawing(1, 90, 200), resolution=128)
    bad = dict(info)
    for k, v in change.items():
        if v is None:
            del bad[k]
        else:
            bad[k] = v
    refused(lambda: C.AtelierCropBack().crop(img, bad), "Atelier Crop Back", "pad_info", words)
    # a JSON round trip that made the numbers floats (64.0) is still the same pad_info
    as_floats = {k: float(v) for k, v in info.items()}
    assert torch.equal(C.AtelierCropBack().crop(img, as_floats)[0], C.AtelierCropBack().crop(img, info)[0])


# ------------------------------------------------------------------------------------ empty latent like

def test_empty_latent_like_refuses_nonfinite_image(C):
    node, name = C.AtelierEmptyLatentLike(), "Atelier Empty Latent Like Image"
    x = torch.rand(2, 64, 96, 3)
    refused(lambda: node.generate(poisoned(x, (1,)), 1), name, "image", "1 of 2 images (#1)")
    latent, w, h = node.generate(x, 2)
    assert latent["samples"].shape == (4, 4, 8, 12) and (w, h) == (96, 64)


# ------------------------------------------------------------------------------------------------ lora

def test_optional_lora_refuses_nonfinite_strengths(L):
    node, name = L.AtelierOptionalLora(), "Atelier LoRA (optional)"
    model, clip = object(), object()
    for v in (NAN, INF, -INF):
        refused(lambda: node.apply(model, clip, "none", v, 1.0), name, "strength_model", "not a usable number")
        refused(lambda: node.apply(model, clip, "none", 1.0, v), name, "strength_clip", "not a usable number")
        refused(lambda: node.apply(model, clip, "no-such-lora.safetensors", 1.0, v), name, "strength_clip")
    m, c = node.apply(model, clip, "none", 0.8, -0.5)  # finite: passes through as before
    assert m is model and c is clip
