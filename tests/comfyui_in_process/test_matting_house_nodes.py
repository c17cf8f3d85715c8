"""Matting nodes inside a real (in-process) ComfyUI: the classical backend's stable id and its legacy
value, display names from the classes, the size budget before allocating."""
from __future__ import annotations

import pytest
import torch

LEGACY = "classical (no weights: border flood fill + GrabCut)"


@pytest.fixture(scope="module")
def N(comfy):
    from comfyui_atelier.nodes import matting
    return matting


def _run(N, model, image, **kw):
    args = dict(background="#FFFFFF", alpha_mode="soft", threshold=0.5, grow_shrink=0, feather=0.0,
                refine_edges="guided_filter", refine_radius=0, max_side=1024, small_input="upscale")
    args.update(kw)
    return N.AtelierRemoveBackground().remove(model, image, **args)


def test_selector_stores_a_stable_id_and_explains_it(N):
    choices, opts = N.AtelierSaliencyLoader.INPUT_TYPES()["required"]["model_name"]
    assert choices[-1] == "classical" and LEGACY not in choices
    assert "'classical'" in opts["tooltip"] and "older long name" in opts["tooltip"]


@pytest.mark.parametrize("value", ["classical", LEGACY])
def test_new_and_legacy_classical_values_validate_load_and_run(N, value):
    assert N.AtelierSaliencyLoader.VALIDATE_INPUTS(value) is True
    assert N.AtelierSaliencyLoader.IS_CHANGED(value) == "classical"  # the same model: no needless re-run
    (model,) = N.AtelierSaliencyLoader().load(value)
    assert model.kind == "classical"
    img = torch.full((1, 120, 160, 3), 0.98)
    img[0, 30:90, 40:120] = torch.tensor([0.7, 0.2, 0.1])
    out, alpha, _, _ = _run(N, model, img)
    assert torch.equal(out[0, :10], torch.ones_like(out[0, :10])) and alpha[0, 60, 80] == 1


def test_display_names_come_from_the_classes(N):
    assert N.NODE_DISPLAY_NAME_MAPPINGS == {cid: cls.DISPLAY for cid, cls in N.NODE_CLASS_MAPPINGS.items()}
    assert N.AtelierRemoveBackground.DISPLAY == "Atelier Remove Background"


def test_thin_image_is_refused_before_the_model_is_loaded_or_run(N, monkeypatch):
    """1 x 20000 would run PoolNet on 111 x 2,220,000 px: refused by the budget, before model management
    is asked for memory (which would unload every other model) and before any allocation."""
    from comfyui_atelier.core import matting as core
    from comfyui_atelier.core.errors import AtelierError
    calls = []
    monkeypatch.setattr(N, "load_to_device", lambda *a, **k: calls.append(a))
    model = core.SaliencyModel("poolnet", "not loaded")  # never used: the check comes first
    with pytest.raises(AtelierError) as e:
        _run(N, model, torch.rand(1, 1, 20000, 3))
    msg = str(e.value)
    assert msg.startswith("[Atelier Remove Background] input 'small_input':")
    assert "2,220,000 x 111 px" in msg and "'pad'" in msg and calls == []
