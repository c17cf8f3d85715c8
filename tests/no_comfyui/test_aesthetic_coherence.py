"""Set coherence (core.coherence) on hand-made embeddings and through the real tiny CLIP fixture."""
from __future__ import annotations

import math

import pytest
import torch

from comfyui_atelier.core import aesthetic as A
from comfyui_atelier.core import coherence as C
from comfyui_atelier.core.errors import AtelierError
from tests.fixtures import aesthetic_models as FX
from tests.fixtures import coherence_sets as CS


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return A.load_hf_predictor(FX.build_hf_predictor(str(tmp_path_factory.mktemp("coh") / "tiny"), seed=3))


def test_coherence_matches_a_hand_computation():
    # three directions in the plane at 0, 90 and 180 degrees, with different lengths (normalised away)
    e = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    c = C.coherence(e)
    # pairs: (0,1) cos 0, (0,2) cos -1, (1,2) cos 0 -> mean -1/3
    assert c.coherence == pytest.approx(-1 / 3)
    assert c.per_image == pytest.approx([-0.5, 0.0, -0.5])
    assert c.outlier == 0  # ties go to the lowest index
    assert c.gap == pytest.approx(-1 / 3 + 0.5)
    sd = math.sqrt(((-0.5 + 1 / 3) ** 2 * 2 + (1 / 3) ** 2) / 3)
    assert c.gap_sd == pytest.approx((1 / 6) / sd)
    # identical directions: coherence 1, no spread
    same = C.coherence(torch.tensor([[1.0, 1.0], [2.0, 2.0], [0.5, 0.5]]))
    assert same.coherence == pytest.approx(1.0) and same.gap == pytest.approx(0.0) and same.gap_sd == 0.0


def test_single_image_and_bad_embeddings():
    one = C.coherence(torch.randn(1, 8))
    assert (one.coherence, one.per_image, one.outlier) == (1.0, [1.0], -1)
    assert "single image" in C.format_report(one)
    with pytest.raises(AtelierError, match=r"image\(s\) \[1\] is zero or not finite"):
        C.coherence(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), node="Atelier Set Coherence", input="images")
    with pytest.raises(AtelierError, match=r"\[0\]"):
        C.coherence(torch.tensor([[float("nan"), 0.0], [1.0, 0.0]]))
    with pytest.raises(AtelierError, match="shape"):
        C.coherence(torch.zeros(0, 4))


def test_gate_rule_and_report():
    assert C.passes(0.1, 0.0) and C.passes(float("nan"), 0.0)  # 0 = off
    assert C.passes(0.8, 0.8) and not C.passes(0.79, 0.8) and not C.passes(float("nan"), 0.5)
    c = C.coherence(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]))
    rep = C.format_report(c, 0.9)
    assert "<- outlier" in rep and "-> FAIL" in rep and f"{c.coherence:.4f}" in rep
    assert "off" in C.format_report(c, 0.0)


def test_coherent_set_scores_higher_than_mixed_sets_through_tiny_clip(model):
    """The figures in the README: coherent > mixed scenes > diverse families (tiny random CLIP: the absolute
    values are meaningless, only the order is)."""
    got = {name: C.coherence(model.image_embeddings(s)) for name, s in
           (("coherent", CS.coherent_set()), ("mixed", CS.mixed_set()), ("diverse", CS.diverse_set()))}
    print({k: round(v.coherence, 4) for k, v in got.items()})
    assert got["coherent"].coherence > got["mixed"].coherence > got["diverse"].coherence
    # the same order with other seeds (not a lucky draw)
    for seed in (1, 2):
        assert C.coherence(model.image_embeddings(CS.coherent_set(seed=seed))).coherence > \
            C.coherence(model.image_embeddings(CS.mixed_set(seed=seed))).coherence


@pytest.mark.parametrize("at", [0, 5])
def test_planted_outlier_is_found(model, at):
    c = C.coherence(model.image_embeddings(CS.planted(at=at)))
    assert c.outlier == at and c.gap > 0 and c.gap_sd > 1.5
    base = C.coherence(model.image_embeddings(CS.coherent_set()))
    assert c.coherence < base.coherence  # the outlier lowers the set's coherence


def test_external_embedder_path_gives_the_same_coherence(model):
    """Path (b) (an embed_fn over the uint8 crops, as the node wires ComfyUI's CLIP_VISION) sees the same crops."""
    imgs = CS.planted()
    direct = C.coherence(model.image_embeddings(imgs))
    calls = []

    def embed_fn(crops_u8):
        calls.append(tuple(crops_u8.shape))
        return model.embed(A.normalize_crops(crops_u8))
    via = C.coherence(model.image_embeddings(imgs, embed_fn=embed_fn, batch_size=3))
    assert calls == [(3, 224, 224, 3), (3, 224, 224, 3), (2, 224, 224, 3)]
    assert via.outlier == direct.outlier and via.coherence == pytest.approx(direct.coherence, abs=1e-6)
