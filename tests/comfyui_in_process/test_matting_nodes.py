"""Matting nodes called with ComfyUI types inside a real (in-process) ComfyUI."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.fixtures import poolnet_models as PM

LEGACY = "classical (no weights: border flood fill + GrabCut)"  # the classical value before the stable id
RANDOM_NAME = "atelier-test-poolnet.pth"
CENTRE_NAME = "atelier-test-poolnet-centre.pth"
ST_NAME = "atelier-test-poolnet.safetensors"


@pytest.fixture(scope="session")
def poolnet_files(tmp_path_factory):
    return PM.build_poolnet_files(str(tmp_path_factory.getbasetemp() / "poolnet_models"))


@pytest.fixture(scope="module")
def env(comfy, poolnet_files):
    import folder_paths
    from comfyui_atelier.core import poolnet as P
    from comfyui_atelier.nodes import matting as N
    folder = Path(folder_paths.get_folder_paths("saliency")[0])
    folder.mkdir(parents=True, exist_ok=True)
    for name, key in ((RANDOM_NAME, "official"), (CENTRE_NAME, "centre")):
        if not (folder / name).exists():
            os.symlink(poolnet_files[key], folder / name)
    if not (folder / ST_NAME).exists():
        P.convert_pth_to_safetensors(poolnet_files["official"], str(folder / ST_NAME))
    cache = getattr(folder_paths, "filename_list_cache", None)
    if isinstance(cache, dict):
        cache.pop("saliency", None)
    yield N
    # the ComfyUI workspace is shared by the whole session: leave the saliency folder as we found it
    for name in (RANDOM_NAME, CENTRE_NAME, ST_NAME):
        if (folder / name).is_symlink() or (folder / name).exists():
            (folder / name).unlink()
    N._CACHE.clear()
    if isinstance(cache, dict):
        cache.pop("saliency", None)


def load(N, name):
    return N.AtelierSaliencyLoader().load(name)[0]


def product_shot(h=160, w=200):
    img = torch.full((1, h, w, 3), 0.98)
    img[0, h // 4:3 * h // 4, w // 4:3 * w // 4] = torch.tensor([0.8, 0.3, 0.1])
    truth = torch.zeros(1, h, w)
    truth[0, h // 4:3 * h // 4, w // 4:3 * w // 4] = 1
    return img, truth


def run(N, model, image, **kw):
    args = dict(background="#FFFFFF", alpha_mode="soft", threshold=0.5, grow_shrink=0, feather=0.0,
                refine_edges="none", refine_radius=0, max_side=1024, small_input="upscale")
    args.update(kw)
    return N.AtelierRemoveBackground().remove(model, image, **args)


def test_node_api_is_complete(env):
    N = env
    for cls in N.NODE_CLASS_MAPPINGS.values():
        spec = cls.INPUT_TYPES()
        for section in spec.values():
            for name, (typ, *opts) in section.items():
                assert opts and opts[0].get("tooltip"), (cls.__name__, name)
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
        assert cls.CATEGORY == "atelier/matting" and cls.DESCRIPTION
    names = N.AtelierSaliencyLoader.INPUT_TYPES()["required"]["model_name"][0]
    assert RANDOM_NAME in names and ST_NAME in names and names[-1].startswith("classical")
    assert all(v.startswith("Atelier ") for v in N.NODE_DISPLAY_NAME_MAPPINGS.values())


def test_loader_loads_strictly_and_caches(env):
    N = env
    m1, m2 = load(N, RANDOM_NAME), load(N, RANDOM_NAME)
    assert m1 is m2 and m1.kind == "poolnet"
    st = load(N, ST_NAME)
    for k, v in m1.net.state_dict().items():
        assert torch.equal(v, st.net.state_dict()[k]), k
    classical = load(N, N.core.CLASSICAL_NAME)
    assert classical.kind == "classical"
    # a replaced file (new mtime) is seen by ComfyUI's change check and reloaded by the cache
    import folder_paths
    path = folder_paths.get_full_path("saliency", ST_NAME)
    before = N.AtelierSaliencyLoader.IS_CHANGED(ST_NAME)
    st_mtime = os.path.getmtime(path)
    os.utime(path, (st_mtime + 10, st_mtime + 10))
    assert N.AtelierSaliencyLoader.IS_CHANGED(ST_NAME) != before
    assert load(N, ST_NAME) is not st


def test_missing_model_names_manifest_id_and_folder(env):
    N = env
    msg = N.AtelierSaliencyLoader.VALIDATE_INPUTS("poolnet_resnet50_final.pth")
    assert isinstance(msg, str) and "poolnet-resnet50" in msg and "'saliency'" in msg
    assert N.AtelierSaliencyLoader.VALIDATE_INPUTS(RANDOM_NAME) is True
    from comfyui_atelier.core.errors import MissingModelError
    with pytest.raises(MissingModelError) as e:
        N.AtelierSaliencyLoader().load("poolnet_resnet50_final.pth")
    assert e.value.model_id == "poolnet-resnet50" and e.value.folder == "saliency"
    assert "Atelier Saliency Loader" in str(e.value)


def test_bad_weights_file_in_folder_gives_clear_error(env, tmp_path):
    import folder_paths
    N = env
    folder = Path(folder_paths.get_folder_paths("saliency")[0])
    bad = folder / "atelier-test-truncated.pth"
    bad.write_bytes(Path(folder / RANDOM_NAME).read_bytes()[:5000])
    try:
        with pytest.raises(N.AtelierError if hasattr(N, "AtelierError") else ValueError) as e:
            load(N, bad.name)
        assert "truncated" in str(e.value) and "Atelier Saliency Loader" in str(e.value)
    finally:
        bad.unlink()


def test_remove_background_outputs_and_white_border(env):
    N = env
    model = load(N, CENTRE_NAME)
    img = torch.rand(2, 160, 200, 3, generator=torch.Generator().manual_seed(0))
    out, alpha, rgba, sal = run(N, model, img)
    assert out.shape == (2, 160, 200, 3) and alpha.shape == sal.shape == (2, 160, 200)
    assert rgba.shape == (2, 160, 200, 4) and torch.equal(rgba[..., 3], alpha)
    frame = torch.cat([out[:, :3].reshape(-1), out[:, -3:].reshape(-1), out[:, :, :3].reshape(-1),
                       out[:, :, -3:].reshape(-1)])
    assert torch.equal(frame, torch.ones_like(frame))              # border forced to pure white
    assert torch.equal(out[:, 40:120, 40:160], img[:, 40:120, 40:160])  # product pixels untouched
    from comfyui_atelier.core.poolnet import predict_saliency
    assert torch.allclose(sal, predict_saliency(model.net, img), atol=1e-6)  # raw model output
    green, _, _, _ = run(N, model, img, background="0,255,0")
    assert torch.equal(green[0, 0, 0], torch.tensor([0.0, 1.0, 0.0]))


def test_batch_equals_singles_through_the_node(env):
    N = env
    model = load(N, RANDOM_NAME)
    imgs = torch.rand(3, 112, 120, 3, generator=torch.Generator().manual_seed(1))
    batch = run(N, model, imgs, refine_edges="guided_filter")
    singles = [run(N, model, imgs[i:i + 1], refine_edges="guided_filter") for i in range(3)]
    for k in range(4):
        assert torch.allclose(batch[k], torch.cat([s[k] for s in singles]), atol=1e-5)


def test_bad_and_odd_inputs(env):
    N = env
    model = load(N, RANDOM_NAME)
    # 1x1 image: upscaled (or padded) to the network's minimum, mask back at 1x1
    for mode in ("upscale", "pad"):
        out, alpha, rgba, sal = run(N, model, torch.rand(1, 1, 1, 3), small_input=mode)
        assert out.shape == (1, 1, 1, 3) and alpha.shape == (1, 1, 1) and torch.isfinite(out).all()
    # RGBA: transparent pixels are background, the input's alpha is kept in the cut-out
    rgba_in = torch.rand(1, 120, 120, 4)
    rgba_in[..., 3] = 0.0
    out, alpha, rgba, _ = run(N, model, rgba_in)
    assert torch.equal(alpha, torch.zeros_like(alpha)) and torch.equal(out, torch.ones_like(out))
    # grayscale
    assert run(N, model, torch.rand(1, 120, 130, 1))[0].shape == (1, 120, 130, 3)
    # external mask: batch 1 broadcasts, a mismatched batch is a clear error
    img = torch.rand(3, 120, 120, 3)
    out, alpha, _, sal = run(N, model, img, mask=torch.ones(1, 60, 60))
    assert torch.equal(out, img) and torch.equal(sal, torch.ones(3, 120, 120))
    with pytest.raises(ValueError) as e:
        run(N, model, img, mask=torch.ones(2, 120, 120))
    msg = str(e.value)
    assert "[Atelier Remove Background]" in msg and "'mask'" in msg and "2 masks" in msg
    with pytest.raises(ValueError, match="#RRGGBB"):
        run(N, model, img, background="whiteish")
    with pytest.raises(ValueError, match="ATELIER_SALIENCY"):
        run(N, "not a model", img)


def test_alpha_options(env):
    N = env
    model = load(N, CENTRE_NAME)
    img = torch.rand(1, 160, 200, 3, generator=torch.Generator().manual_seed(2))
    _, soft, _, sal = run(N, model, img)
    _, hard, _, _ = run(N, model, img, alpha_mode="threshold", threshold=0.5)
    assert set(torch.unique(hard).tolist()) <= {0.0, 1.0}
    assert torch.equal(hard, (sal >= 0.5).float())
    # the same saliency fed back as an external mask: only the alpha options differ
    _, again, _, _ = run(N, model, img, alpha_mode="threshold", mask=sal)
    assert torch.equal(again, hard)
    _, grown, _, _ = run(N, model, img, alpha_mode="threshold", grow_shrink=4, mask=sal)
    _, shrunk, _, _ = run(N, model, img, alpha_mode="threshold", grow_shrink=-4, mask=sal)
    assert grown.sum() > hard.sum() > shrunk.sum()
    _, feathered, _, _ = run(N, model, img, alpha_mode="threshold", feather=6.0, mask=sal)
    assert ((feathered > 0) & (feathered < 1)).sum() > ((hard > 0) & (hard < 1)).sum()


def test_max_side_matches_full_resolution(env):
    # the classical backend is scale-stable, so it isolates the resize + guided-upsampling path
    N = env
    model = load(N, N.core.CLASSICAL_NAME)
    img, truth = product_shot(480, 640)
    full = run(N, model, img, max_side=0, refine_edges="guided_filter")
    small = run(N, model, img, max_side=160, refine_edges="guided_filter")
    plain = run(N, model, img, max_side=160, refine_edges="none")
    assert small[1].shape == full[1].shape == plain[1].shape == (1, 480, 640)
    assert small[3].shape == (1, 480, 640)
    from comfyui_atelier.core.matting import alpha_iou
    assert alpha_iou(small[1], full[1]) > 0.99
    # guided upsampling puts the edge back on the image edge better than bilinear resizing
    err = lambda a: (a - truth).abs().mean().item()  # noqa: E731
    assert err(small[1]) < err(plain[1])


def test_classical_backend_through_the_node(env):
    N = env
    model = load(N, N.core.CLASSICAL_NAME)
    img, truth = product_shot(160, 200)
    out, alpha, _, _ = run(N, model, img, refine_edges="guided_filter")
    from comfyui_atelier.core.matting import alpha_iou
    assert alpha_iou(alpha, truth) > 0.97
    assert torch.equal(out[0, :5], torch.ones_like(out[0, :5]))
    assert torch.equal(out[0, 50:110, 60:140], img[0, 50:110, 60:140])


def test_onnx_model_file_is_listed_and_loaded(env):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import folder_paths
    N = env
    folder = Path(folder_paths.get_folder_paths("saliency")[0])
    name = "atelier-test-birefnet-tiny.onnx"
    PM.save_tiny_onnx_saliency(str(folder / name))
    try:
        cache = getattr(folder_paths, "filename_list_cache", None)
        if isinstance(cache, dict):
            cache.pop("saliency", None)
        assert name in N.AtelierSaliencyLoader.INPUT_TYPES()["required"]["model_name"][0]
        model = load(N, name)
        assert model.kind == "onnx"
        img, truth = product_shot(120, 160)
        out, alpha, _, _ = run(N, model, img, refine_edges="guided_filter")
        from comfyui_atelier.core.matting import alpha_iou
        assert alpha_iou(alpha, truth) > 0.95 and torch.equal(out[0, :3], torch.ones_like(out[0, :3]))
    finally:
        (folder / name).unlink()


def test_selector_stores_a_stable_id_and_explains_it(env):
    N = env
    choices, opts = N.AtelierSaliencyLoader.INPUT_TYPES()["required"]["model_name"]
    assert choices[-1] == "classical" and LEGACY not in choices
    assert "'classical'" in opts["tooltip"] and "older long name" in opts["tooltip"]


@pytest.mark.parametrize("value", ["classical", LEGACY])
def test_new_and_legacy_classical_values_validate_load_and_run(env, value):
    N = env
    assert N.AtelierSaliencyLoader.VALIDATE_INPUTS(value) is True
    assert N.AtelierSaliencyLoader.IS_CHANGED(value) == "classical"  # the same model: no needless re-run
    (model,) = N.AtelierSaliencyLoader().load(value)
    assert model.kind == "classical"
    img = torch.full((1, 120, 160, 3), 0.98)
    img[0, 30:90, 40:120] = torch.tensor([0.7, 0.2, 0.1])
    out, alpha, _, _ = run(N, model, img, refine_edges="guided_filter")
    assert torch.equal(out[0, :10], torch.ones_like(out[0, :10])) and alpha[0, 60, 80] == 1


def test_thin_image_is_refused_before_the_model_is_loaded_or_run(env, monkeypatch):
    """1 x 20000 would run PoolNet on 111 x 2,220,000 px: refused by the budget, before model management
    is asked for memory (which would unload every other model) and before any allocation."""
    N = env
    from comfyui_atelier.core import matting as core
    from comfyui_atelier.core.errors import AtelierError
    calls = []
    monkeypatch.setattr(N, "load_to_device", lambda *a, **k: calls.append(a))
    model = core.SaliencyModel("poolnet", "not loaded")  # never used: the check comes first
    with pytest.raises(AtelierError) as e:
        run(N, model, torch.rand(1, 1, 20000, 3))
    msg = str(e.value)
    assert msg.startswith("[Atelier Remove Background] input 'small_input':")
    assert "2,220,000 x 111 px" in msg and "'pad'" in msg and calls == []


CUTOUT_INPUTS = ["decontaminate", "shadow_strength", "shadow_softness", "shadow_offset"]


def green_screen_product(h=120, w=160):
    """(image on pure green, true alpha, true colour): an orange rectangle with 8-px linear soft edges."""
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    dist = torch.minimum(torch.minimum(yy - 30, 90 - yy), torch.minimum(xx - 40, 120 - xx))
    a = ((dist + 4) / 8).clamp(0, 1)[None]
    f = torch.tensor([1.0, 0.5, 0.0])
    return a[..., None] * f + (1 - a[..., None]) * torch.tensor([0.0, 1.0, 0.0]), a, f


def test_clean_cutout_inputs_come_after_the_original_widgets(env):
    """Saved workflows store widget values by position: the new inputs are the last ones, off by default."""
    N = env
    spec = N.AtelierRemoveBackground.INPUT_TYPES()
    order = list(spec["required"]) + list(spec["optional"])
    assert order[-len(CUTOUT_INPUTS):] == CUTOUT_INPUTS
    assert order[:-len(CUTOUT_INPUTS)][-1] == "mask" and order.index("small_input") == len(spec["required"]) - 1
    opts = {k: spec["optional"][k][1] for k in CUTOUT_INPUTS}
    assert opts["decontaminate"]["default"] is False and opts["shadow_strength"]["default"] == 0.0


def test_left_out_clean_cutout_inputs_give_todays_output(env):
    """An API prompt / workflow saved before has none of the new inputs: the composite is today's formula."""
    N = env
    model = load(N, CENTRE_NAME)
    img, a, _ = green_screen_product()
    for mask in (None, a):
        out, alpha, rgba, _ = run(N, model, img, refine_edges="guided_filter", mask=mask)
        today = torch.where(alpha[..., None] >= 1, img, 1 + alpha[..., None] * (img - 1)).clamp(0, 1)
        assert torch.equal(out, today) and torch.equal(rgba[..., :3], img)
        off = run(N, model, img, refine_edges="guided_filter", mask=mask, decontaminate=False, shadow_strength=0.0)
        assert all(torch.equal(x, y) for x, y in zip(off, (out, alpha, rgba)))


def test_decontaminate_and_shadow_through_the_node(env):
    N = env
    model = load(N, CENTRE_NAME)
    img, a, f = green_screen_product()
    white = torch.ones(3)
    ideal = a[..., None] * f + (1 - a[..., None]) * white
    d = (torch.tensor([0.0, 1.0, 0.0]) - white) / 2 ** 0.5
    edge = (a > 0.05) & (a < 0.95)
    plain = run(N, model, img, mask=a)
    clean = run(N, model, img, mask=a, decontaminate=True)
    lean = lambda out: ((out - ideal) * d).sum(-1)[edge]  # noqa: E731
    assert lean(plain[0]).max() > 0.15 and lean(clean[0]).max() <= 0.02
    assert torch.equal(clean[1], plain[1]) and torch.equal(clean[2][..., 3], plain[1])
    assert (clean[2][..., :3][edge[..., None].expand(-1, -1, -1, 3)].view(-1, 3)[:, 1] < 0.6).all()  # no green
    shaded = run(N, model, img, mask=a, decontaminate=True, shadow_strength=0.5)
    solid = a >= 1
    assert torch.equal(shaded[0][solid], clean[0][solid]) and (shaded[0] <= clean[0] + 1e-7).all()
    below = (clean[0] - shaded[0])[0, 91:96, 40:120]  # just under the base (row 90)
    assert below.max() > 0.1 and (clean[0] - shaded[0])[0, :30].abs().max() == 0
    assert torch.equal(shaded[2], clean[2])  # the cut-out never carries the shadow
    with pytest.raises(ValueError) as e:
        run(N, model, img, mask=a, shadow_strength=float("nan"))
    assert "[Atelier Remove Background]" in str(e.value) and "'shadow_strength'" in str(e.value)
