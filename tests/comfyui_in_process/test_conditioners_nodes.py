"""Node tests for the conditioners family: node classes called directly with ComfyUI tensors."""
from __future__ import annotations

import json
import threading
import time

import cv2
import numpy as np
import pytest
import torch

from tests.fixtures import checks as CK


@pytest.fixture(scope="module")
def C(comfy):
    from comfyui_atelier.nodes import conditioners
    return conditioners


def drawing(h=96, w=160, dark_on_light=True, speck=False) -> np.ndarray:
    ink, paper = (0.0, 1.0) if dark_on_light else (1.0, 0.0)
    img = np.full((h, w, 3), paper, np.float32)
    cv2.rectangle(img, (16, 16), (w - 30, h - 24), (ink,) * 3, 2)
    cv2.circle(img, (w // 2, h // 2), min(h, w) // 5, (ink,) * 3, 2)
    if speck:
        img[4, w - 6] = ink
    return img


def batch(*imgs) -> torch.Tensor:
    return torch.from_numpy(np.stack(imgs))


def strokes(h=96, w=160) -> torch.Tensor:
    return torch.from_numpy(drawing(h, w)[..., 0] < 0.5)


def photo(h=80, w=120, seed=0) -> np.ndarray:
    """Smooth shapes + noise: something with edges at several strengths."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx / w, yy / h, 0.5 + 0.5 * np.sin(xx / 9.0)], -1).astype(np.float32)
    cv2.circle(img, (w // 3, h // 2), h // 4, (0.9, 0.2, 0.1), -1)
    cv2.rectangle(img, (w // 2, h // 4), (w - 10, h - 10), (0.1, 0.1, 0.8), -1)
    return np.clip(img + rng.normal(0, 0.03, img.shape).astype(np.float32), 0, 1)


def test_registration_and_tooltips(C):
    assert set(C.NODE_CLASS_MAPPINGS) == {"AtelierCanny", "AtelierLineart", "AtelierCropBack",
                                          "AtelierEmptyLatentLike"}
    for cid, cls in C.NODE_CLASS_MAPPINGS.items():
        assert C.NODE_DISPLAY_NAME_MAPPINGS[cid].startswith("Atelier ")
        assert cls.CATEGORY == "atelier/conditioning"
        spec = cls.INPUT_TYPES()
        for section in spec.values():
            for name, (typ, *opts) in section.items():
                assert opts and opts[0].get("tooltip"), f"{cid}.{name} has no tooltip"
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
    canny = C.AtelierCanny.INPUT_TYPES()["required"]
    assert canny["low_threshold"][1]["default"] == 50 and canny["high_threshold"][1]["default"] == 80
    assert "auto_median" in canny["threshold_mode"][0]
    assert C.AtelierCanny.RETURN_TYPES == ("IMAGE", "MASK", "ATELIER_PAD")


@pytest.mark.parametrize("dark_on_light", [True, False])
def test_lineart_white_lines_on_black(C, dark_on_light):
    img, mask, info = C.AtelierLineart().extract(batch(drawing(dark_on_light=dark_on_light)), resolution=0)
    assert img.shape == (1, 96, 160, 3) and img.dtype == torch.float32 and mask.shape == (1, 96, 160)
    s = strokes()
    assert (img[0][s] == 1.0).all() and (img[0][~s] == 0.0).all()
    assert torch.equal(img[0, ..., 0], mask[0]) and torch.equal(img[0, ..., 0], img[0, ..., 2])


def test_lineart_inverse_gives_same_lines(C):
    a = C.AtelierLineart().extract(batch(drawing()), resolution=256)[0]
    b = C.AtelierLineart().extract(batch(drawing(dark_on_light=False)), resolution=256)[0]
    assert torch.equal(a, b) and a.max() == 1.0


def test_lineart_options(C):
    node = C.AtelierLineart()
    x = batch(drawing(speck=True))
    dusty = node.extract(x, min_speck_area=0, resolution=0)[1]
    clean = node.extract(x, min_speck_area=4, resolution=0)[1]
    assert dusty[0, 4, 160 - 6] == 1.0 and clean[0, 4, 160 - 6] == 0.0
    thick = node.extract(x, thickness=2, resolution=0)[1]
    assert thick.sum() > 2 * clean.sum()
    forced = node.extract(x, polarity="light_on_dark", resolution=0)[1]  # wrong polarity: paper becomes line
    assert forced.mean() > 0.5
    soft = node.extract(torch.full((1, 8, 8, 3), 1.0).index_put_((torch.tensor([0]), torch.tensor([4])),
                                                                 torch.tensor(0.5)),
                        binarize=False, min_speck_area=0, resolution=0)[1]
    assert 0.4 < soft[0, 4, 0] < 0.6 and soft[0, 0, 0] == 0.0


def test_canny_matches_opencv_on_same_pixels(C):
    x = batch(photo())
    img, mask, info = C.AtelierCanny().detect(x, 50, 80, resolution=0)
    from comfyui_atelier.core.images import to_uint8
    u8 = cv2.cvtColor(to_uint8(x[0]), cv2.COLOR_RGB2GRAY)  # the pixels Save Image would write, then gray
    ref = cv2.Canny(u8, 50, 80)
    assert np.array_equal(mask[0].numpy() * 255, ref.astype(np.float32))
    assert info == {"orig_h": 80, "orig_w": 120, "scaled_h": 80, "scaled_w": 120, "top": 0, "bottom": 0,
                    "left": 0, "right": 0}
    assert mask.sum() > 100


def test_canny_and_lineart_of_an_image_equal_those_of_its_saved_png(C, tmp_path, monkeypatch):
    """Save Image's own float->uint8 (truncating) is the conversion: edges of an IMAGE and of the PNG that
    ComfyUI's Save Image writes for it, loaded back with ComfyUI's Load Image, are identical."""
    x = batch(photo(seed=3), photo(seed=4))
    png = CK.saved_png(x, tmp_path, monkeypatch)
    for run in (lambda im: C.AtelierCanny().detect(im, 40, 90, resolution=256),
                lambda im: C.AtelierLineart().extract(im, binarize=False, resolution=0)):
        a, b = run(x), run(png)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]


def test_canny_options_change_output(C):
    x = batch(photo())
    node = C.AtelierCanny()
    base = node.detect(x, 50, 80, resolution=0)[1].sum()
    assert node.detect(x, 50, 80, blur_sigma=2.0, resolution=0)[1].sum() < base
    assert node.detect(x, 200, 400, resolution=0)[1].sum() < base
    auto = node.detect(x, 999, 1, threshold_mode="auto_median", resolution=0)[1]  # thresholds ignored
    assert auto.sum() > 0
    l2 = node.detect(x, 50, 80, l2_gradient=True, resolution=0)[1]
    assert not torch.equal(l2, node.detect(x, 50, 80, resolution=0)[1])


def test_low_above_high_error_names_node_and_inputs(C):
    with pytest.raises(ValueError) as e:
        C.AtelierCanny().detect(batch(photo()), 120, 80)
    msg = str(e.value)
    assert msg.startswith("[Atelier Canny] input 'low_threshold':")
    assert "low_threshold (120) is above high_threshold (80)" in msg and "Fix:" in msg


@pytest.mark.parametrize("node_name", ["canny", "lineart"])
def test_resolution_pads_to_64_keeps_aspect_and_crops_back(C, node_name):
    x = batch(drawing(90, 200))  # 9:20
    if node_name == "canny":
        img, mask, info = C.AtelierCanny().detect(x, resolution=128)
    else:
        img, mask, info = C.AtelierLineart().extract(x, resolution=128)
    assert img.shape[1] % 64 == 0 and img.shape[2] % 64 == 0
    assert (info["scaled_h"], info["scaled_w"]) == (128, 284)  # aspect kept: 200/90 * 128 = 284.4
    assert img.shape[1:3] == (128, 320) and info["left"] + info["right"] == 36
    assert img[0, :, : info["left"]].max() == 0 and img[0, :, 320 - info["right"]:].max() == 0  # black padding
    assert img.max() == 1.0
    json.dumps(info)
    back, back_mask = C.AtelierCropBack().crop(img, info)
    assert back.shape == (1, 90, 200, 3) and back_mask.shape == (1, 90, 200)
    cropped, _ = C.AtelierCropBack().crop(img, info, restore_size=False)
    assert cropped.shape == (1, 128, 284, 3)
    assert torch.equal(cropped, img[:, :, info["left"]: info["left"] + 284])


def test_crop_back_with_mask_and_upscaled_image(C):
    x = batch(drawing(90, 200))
    img, mask, info = C.AtelierLineart().extract(x, resolution=128)
    up = torch.nn.functional.interpolate(img.movedim(-1, 1), scale_factor=2, mode="nearest").movedim(1, -1)
    up_mask = up[..., 0].clone()
    out, m = C.AtelierCropBack().crop(up, info, restore_size=False, mask=up_mask)
    assert out.shape == (1, 256, 568, 3) and m.shape == (1, 256, 568)
    assert torch.equal(m, out[..., 0])
    with pytest.raises(ValueError, match="mask"):
        C.AtelierCropBack().crop(up, info, mask=mask)
    with pytest.raises(ValueError, match=r"\[Atelier Crop Back\] input 'pad_info'"):
        C.AtelierCropBack().crop(up, {"nope": 1})


@pytest.mark.parametrize("cls,kw", [("AtelierCanny", dict(threshold_mode="auto_median")),
                                    ("AtelierCanny", dict(low_threshold=30, high_threshold=90, blur_sigma=1.0)),
                                    ("AtelierLineart", dict(min_speck_area=6, thickness=1))])
def test_batch_equals_per_image(C, cls, kw):
    imgs = [photo(seed=0), drawing(80, 120, speck=True), drawing(80, 120, dark_on_light=False),
            np.full((80, 120, 3), 0.25, np.float32)]
    node = getattr(C, cls)()
    fn = getattr(node, cls.replace("Atelier", "").replace("Canny", "detect").replace("Lineart", "extract"))
    img_b, mask_b, info_b = fn(batch(*imgs), resolution=192, **kw)
    assert img_b.shape[0] == 4
    for i, im in enumerate(imgs):
        img_1, mask_1, info_1 = fn(batch(im), resolution=192, **kw)
        assert torch.equal(img_b[i], img_1[0]) and torch.equal(mask_b[i], mask_1[0]) and info_b == info_1


@pytest.mark.parametrize("cls", ["AtelierCanny", "AtelierLineart"])
def test_rgba_grayscale_and_odd_layouts(C, cls):
    node = getattr(C, cls)()
    fn = node.detect if cls == "AtelierCanny" else node.extract
    rgb = drawing()
    ref = fn(batch(rgb), resolution=0)[1]
    # RGBA, fully opaque: same result as RGB
    rgba = np.concatenate([rgb, np.ones_like(rgb[..., :1])], -1)
    assert torch.equal(fn(batch(rgba), resolution=0)[1], ref)
    # RGBA with transparent background and light strokes: strokes are still found
    trans = np.zeros((96, 160, 4), np.float32)
    trans[..., :3] = 1.0
    trans[..., 3] = drawing()[..., 0] < 0.5
    out = fn(batch(trans), resolution=0)[1]
    assert out.shape == (1, 96, 160) and out.sum() > 0
    # grayscale: [B,H,W,1], [B,H,W] and a single [H,W,3]
    gray = torch.from_numpy(rgb[..., :1][None].copy())
    assert torch.equal(fn(gray, resolution=0)[1], ref)
    assert torch.equal(fn(gray[..., 0], resolution=0)[1], ref)
    assert torch.equal(fn(torch.from_numpy(rgb), resolution=0)[1], ref)
    # half precision input
    assert fn(batch(rgb).half(), resolution=0)[0].dtype == torch.float32
    # output IMAGE is always 3 channels
    assert fn(gray, resolution=0)[0].shape == (1, 96, 160, 3)


@pytest.mark.parametrize("cls", ["AtelierCanny", "AtelierLineart"])
@pytest.mark.parametrize("res", [0, 64, 512])
def test_one_pixel_image(C, cls, res):
    node = getattr(C, cls)()
    fn = node.detect if cls == "AtelierCanny" else node.extract
    img, mask, info = fn(torch.full((2, 1, 1, 3), 0.7), resolution=res)
    side = max(res, 1)
    assert img.shape == (2, side, side, 3) and mask.shape == (2, side, side)
    assert img.max() == 0.0  # nothing to trace
    back, _ = C.AtelierCropBack().crop(img, info)
    assert back.shape == (2, 1, 1, 3)


def test_bad_inputs_are_actionable(C):
    with pytest.raises(ValueError, match=r"\[Atelier Canny\] input 'image'.*Expected"):
        C.AtelierCanny().detect(torch.zeros(1, 4, 4, 7))
    with pytest.raises(ValueError, match=r"\[Atelier Lineart\] input 'image'.*empty"):
        C.AtelierLineart().extract(torch.zeros(0, 4, 4, 3))
    with pytest.raises(ValueError, match=r"\[Atelier Lineart\] input 'resolution'"):
        C.AtelierLineart().extract(torch.zeros(1, 4, 4, 3), resolution=-8)
    with pytest.raises(ValueError, match=r"\[Atelier Lineart\] input 'threshold'"):
        C.AtelierLineart().extract(torch.zeros(1, 4, 4, 3), threshold=2.0)
    with pytest.raises(ValueError, match=r"\[Atelier Canny\] input 'image'"):
        C.AtelierCanny().detect(np.zeros((4, 4, 3), np.float32))


# ------------------------------------------------------------------------------------------ size budget

@pytest.mark.parametrize("cls,name", [("AtelierCanny", "Atelier Canny"), ("AtelierLineart", "Atelier Lineart")])
def test_conditioner_output_size_is_budgeted_before_allocating(C, cls, name, monkeypatch):
    node = getattr(C, cls)()
    fn = node.detect if cls == "AtelierCanny" else node.extract
    x = torch.rand(2, 128, 96, 3)
    monkeypatch.setenv("ATELIER_MAX_MEGAPIXELS", "0.01")  # 10,000 px per image
    CK.refused(lambda: fn(x, resolution=0), name, "image", "96 x 128 px", "megapixels", "ATELIER_MAX_MEGAPIXELS",
             "instead of 0")
    CK.refused(lambda: fn(x, resolution=512), name, "resolution", "512 x 704 px", "lower resolution")
    assert fn(x, resolution=64)[0].shape == (2, 128, 64, 3)  # 64 x 85 -> padded 64 x 128: within the budget
    monkeypatch.delenv("ATELIER_MAX_MEGAPIXELS")
    monkeypatch.setenv("ATELIER_MAX_GIB", "0.0004")  # ~420 KB per batch: one 128 x 96 map + mask is 192 KB
    CK.refused(lambda: fn(torch.rand(3, 128, 96, 3), resolution=0), name, "image", "Split the batch", "ATELIER_MAX_GIB")
    assert fn(x, resolution=0)[1].shape == (2, 128, 96)


def test_crop_back_refuses_a_restore_size_over_the_budget(C):
    img, _, info = C.AtelierLineart().extract(batch(drawing()), resolution=128)
    giant = dict(info, orig_h=200_000, orig_w=150_000)  # hand-made: passes the shape checks, 30 gigapixels
    CK.refused(lambda: C.AtelierCropBack().crop(img, giant), "Atelier Crop Back", "pad_info", "150,000 x 200,000 px",
             "megapixels", "restore_size off")
    out, _ = C.AtelierCropBack().crop(img, giant, restore_size=False)  # only removes the padding: nothing big
    assert out.shape[1:3] == (info["scaled_h"], info["scaled_w"])


def test_empty_latent_like_refuses_a_batch_over_the_budget(C, monkeypatch):
    monkeypatch.setenv("ATELIER_MAX_GIB", "0.001")  # 1 MiB: a 512 x 512 image's latent is 64 KiB
    x = torch.zeros(1, 512, 512, 3)
    CK.refused(lambda: C.AtelierEmptyLatentLike().generate(x, 64), "Atelier Empty Latent Like Image", "batch_size",
             "batch_size 64", "4 MiB", "lower batch_size")
    assert C.AtelierEmptyLatentLike().generate(x, 8)[0]["samples"].shape == (8, 4, 64, 64)


@pytest.mark.parametrize("cls", ["AtelierCanny", "AtelierLineart"])
def test_a_batch_equals_its_images_one_by_one(C, cls, monkeypatch):
    from comfyui_atelier.core import parallel as P
    monkeypatch.setattr(P, "cpus", lambda: 2)  # a batch runs in two lanes (core.parallel.for_items), also on 1 CPU
    node = getattr(C, cls)()
    fn = node.detect if cls == "AtelierCanny" else node.extract
    imgs = [photo(300, 280, seed=s) if s % 2 else drawing(300, 280, dark_on_light=s % 3 == 0) for s in range(6)]
    x = batch(*imgs)
    with torch.inference_mode():  # as ComfyUI runs nodes
        out, mask, info = fn(x, resolution=256)
    for i, im in enumerate(imgs):
        one, one_mask, one_info = fn(batch(im), resolution=256)
        assert torch.equal(out[i], one[0]) and torch.equal(mask[i], one_mask[0]) and info == one_info
    # an error in one image of the batch reaches the caller as it is
    monkeypatch.setattr(C.E, "canny_image" if cls == "AtelierCanny" else "lineart_image",
                        lambda *a, **k: (_ for _ in ()).throw(C.AtelierError("boom", node="N", input="image")))
    with pytest.raises(C.AtelierError, match="boom"):
        fn(x, resolution=256)


@pytest.fixture
def progress_hook():
    """Record ComfyUI's progress bar updates (value, total, thread) through its real global hook."""
    import comfy.utils
    seen = []
    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, *a, **k: seen.append(
        (value, total, threading.get_ident())))
    yield seen
    comfy.utils.set_progress_bar_global_hook(old)


def test_a_batch_in_lanes_reports_progress_from_the_calling_thread(C, monkeypatch, progress_hook):
    from comfyui_atelier.core import parallel as P
    monkeypatch.setattr(P, "cpus", lambda: 2)
    x = batch(*[drawing(200, 180, dark_on_light=True) for _ in range(6)])
    C.AtelierLineart().extract(x, resolution=0)
    assert [(v, t) for v, t, _ in progress_hook] == [(i, 6) for i in range(1, 7)]
    assert {th for _, _, th in progress_hook} == {threading.get_ident()}


def test_an_interrupt_from_the_progress_bar_stops_a_batch(C, monkeypatch, progress_hook):
    """ComfyUI raises its interrupt from the progress hook: the node raises it, and no lane runs on after."""
    import comfy.utils
    from comfyui_atelier.core import parallel as P
    monkeypatch.setattr(P, "cpus", lambda: 2)
    traced = []
    real = C.E.lineart_image
    monkeypatch.setattr(C.E, "lineart_image", lambda *a, **k: (traced.append(1), real(*a, **k))[1])

    class Interrupted(Exception):
        pass

    def hook(value, total, *a, **k):
        raise Interrupted()

    comfy.utils.set_progress_bar_global_hook(hook)
    x = batch(*[drawing(200, 180, dark_on_light=True) for _ in range(40)])
    with pytest.raises(Interrupted):
        C.AtelierLineart().extract(x, resolution=0)
    n = len(traced)
    assert n < 40
    time.sleep(0.05)
    assert len(traced) == n


# --------------------------------------------------------------------------- row bands (core.parallel)
@pytest.fixture
def split_everything(monkeypatch):
    """Bands for any image size, and at least two CPUs (so the banded path runs on a 1-CPU machine too)."""
    from comfyui_atelier.core import parallel as P
    monkeypatch.setattr(P, "MIN_SPLIT_PIXELS", 0)
    monkeypatch.setattr(P, "cpus", lambda: 2)
    return P


@pytest.mark.parametrize("shape", [(1100, 1003, 3), (517, 64, 3), (3, 5, 3)])
def test_banded_outputs_are_the_one_band_bytes(C, split_everything, monkeypatch, shape):
    rng = np.random.default_rng(shape[0])
    lines = (rng.random(shape[:2]) < 0.2).astype(np.uint8) * 255
    m1, i1 = np.empty(shape[:2], np.float32), np.empty(shape, np.float32)
    C._to_float_outputs(lines, m1, i1)
    monkeypatch.setattr(split_everything, "MIN_SPLIT_PIXELS", 10**12)
    m2, i2 = np.empty_like(m1), np.empty_like(i1)
    C._to_float_outputs(lines, m2, i2)
    assert np.array_equal(m1, m2) and np.array_equal(i1, i2)
    assert np.array_equal(i1, np.repeat((lines / np.float32(255))[..., None].astype(np.float32), 3, -1))


def test_nodes_give_the_same_maps_banded_and_not(C, split_everything, monkeypatch):
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.random((2, 300, 260, 3), dtype=np.float32))
    a = C.AtelierLineart().extract(x, resolution=0)
    c = C.AtelierCanny().detect(x, 50, 80, resolution=0)
    monkeypatch.setattr(split_everything, "MIN_SPLIT_PIXELS", 10**12)
    assert torch.equal(a[0], C.AtelierLineart().extract(x, resolution=0)[0])
    assert torch.equal(c[0], C.AtelierCanny().detect(x, 50, 80, resolution=0)[0])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_in_a_worker_band_is_refused_naming_the_images(C, split_everything, bad):
    """Canny / Lineart check pixels as they convert them (no separate pass): a NaN/inf that only the second
    band of the second and third images holds is refused, naming both, with nothing returned."""
    from comfyui_atelier.core.errors import AtelierError
    x = torch.rand(3, 200, 120, 3)
    x[1, 190, 7, 2] = bad
    x[2, 150, 100, 0] = bad
    for call in (lambda: C.AtelierCanny().detect(x, 50, 80, resolution=0),
                 lambda: C.AtelierLineart().extract(x, resolution=64)):
        with pytest.raises(AtelierError) as e:
            call()
        msg = str(e.value)
        assert "2 of 3 images (#1, #2) contain NaN/inf pixels" in msg and "input 'image'" in msg, msg
        assert msg.startswith("[Atelier ")
