"""Matting core: an IMAGE and its saved PNG give the same matte, the classical backend's stable id,
and the size budget checked before anything is allocated (no ComfyUI)."""
from __future__ import annotations

import pytest
import torch

from comfyui_atelier.core import matting as M
from comfyui_atelier.core import poolnet as P
from comfyui_atelier.core.errors import AtelierError
from comfyui_atelier.core.images import from_uint8, to_uint8

from tests.fixtures import poolnet_models as PM


@pytest.fixture(scope="module")
def random_poolnet():
    net = P.PoolNet()
    P.load_state_dict_strict(net, PM.random_state_dict(seed=4))
    return M.SaliencyModel("poolnet", "random", None, P.prepare_inference(net.eval()))


def _off_grid_image(h=120, w=150, seed=0):
    """A product shot whose float values lie between the 8-bit levels (as VAE Decode gives them)."""
    g = torch.Generator().manual_seed(seed)
    img = torch.full((1, h, w, 3), 0.97) + torch.rand(1, h, w, 3, generator=g) * 0.02
    img[0, h // 4:3 * h // 4, w // 4:3 * w // 4] = torch.rand(3, generator=g) * 0.6 + 0.1
    img += torch.rand(1, h, w, 3, generator=g) * (0.9 / 255)
    return img.clamp(0, 1)


@pytest.mark.parametrize("backend", ["poolnet", "classical"])
def test_an_image_and_its_saved_png_give_the_same_matte(random_poolnet, backend):
    model = random_poolnet if backend == "poolnet" else M.load_saliency_model(None)
    img = _off_grid_image()
    png = from_uint8(to_uint8(img))  # what Save Image writes and Load Image reads back
    assert not torch.equal(img, png)  # the test is not vacuous: the float image is off the 8-bit grid
    for kw in ({"refine": "guided_filter", "max_side": 0}, {"refine": "guided_filter", "max_side": 64},
               {"refine": "none", "max_side": 0}):
        a = M.remove_background(model, img, **kw)
        b = M.remove_background(model, png, **kw)
        assert torch.equal(a[1], b[1]) and torch.equal(a[3], b[3]), kw  # alpha and saliency
        assert torch.equal(a[0], M.composite(img, a[1]))  # the composite keeps the float pixels
    # the classical backend converts to 8 bit itself, with Save Image's truncation (it rounded before)
    assert torch.equal(M.classical_alpha(img), M.classical_alpha(png))


def test_classical_backend_value_is_a_stable_id_and_the_old_prose_is_kept():
    assert M.CLASSICAL_NAME == "classical"
    assert "classical (no weights: border flood fill + GrabCut)" in M.LEGACY_CLASSICAL_NAMES
    assert M.load_saliency_model(None).name == M.CLASSICAL_NAME


def _no_allocation(monkeypatch):
    """Fail the test if remove_background gets past its size checks (to_rgb is its first allocation)."""
    def boom(*a, **k):
        raise AssertionError("allocated before the size check")
    monkeypatch.setattr(M, "to_rgb", boom)


def test_a_thin_image_upscaled_for_poolnet_is_refused_before_allocating(monkeypatch):
    model = M.SaliencyModel("poolnet", "not loaded")  # the check needs no weights: it runs first
    assert M.working_size(1, 20000, 1024, P.MIN_SIDE, "upscale") == (111, 2220000, 0, 0)
    _no_allocation(monkeypatch)
    with pytest.raises(AtelierError) as e:
        M.remove_background(model, torch.rand(1, 1, 20000, 3), node="Atelier Remove Background")
    msg = str(e.value)
    assert msg.startswith("[Atelier Remove Background] input 'small_input':")
    assert "2,220,000 x 111 px" in msg and "246.4 megapixels" in msg and "'pad'" in msg
    assert "ATELIER_MAX_MEGAPIXELS" in msg
    # 'pad' keeps the pixels: 111 x 20000 fits, and the check returns the padded working size
    assert M.check_budget(model, (1, 1, 20000, 3), 1024, "pad") == (1, 20000, 110, 0)


def test_an_output_batch_over_budget_names_the_image_input(monkeypatch):
    model = M.SaliencyModel("poolnet", "not loaded")
    img = torch.zeros(1, 200, 200, 3)
    assert M.check_budget(model, img.shape, 0, "upscale") == (200, 200, 0, 0)
    monkeypatch.setenv("ATELIER_MAX_GIB", "0.005")  # about 5 MiB: 8 x 200 x 200 x 4 floats (4.9 MiB) fit
    assert M.check_budget(model, (8, 200, 200, 3), 0, "upscale") == (200, 200, 0, 0)
    _no_allocation(monkeypatch)
    with pytest.raises(AtelierError, match=r"input 'image':.*RGBA cut-out.*split the batch"):
        M.remove_background(model, img.expand(9, -1, -1, -1), mask=torch.ones(1, 200, 200))
    monkeypatch.setenv("ATELIER_MAX_MEGAPIXELS", "0.03")  # 30,000 px per image
    with pytest.raises(AtelierError, match=r"input 'image':.*200 x 200 px"):
        M.remove_background(model, img, max_side=0)
