"""Core tests of the aesthetic predictor (no ComfyUI; the grid's are in test_grid_core.py).

Parity reference: simple-aesthetics-predictor's AestheticsPredictorV2Linear / V2ReLU / V1 loaded from the
same on-disk directory, fed with pixel values from transformers' classic (PIL) CLIP image processor.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_atelier.core import aesthetic as A
from comfyui_atelier.core.errors import AtelierError


from tests.fixtures import aesthetic_models as FX  # noqa: E402


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("aesthetic-core")
    return {layout: FX.build_hf_predictor(str(root / f"tiny-{layout}"), layout=layout, seed=3)
            for layout in ("linear", "relu", "v1")}


def _clip_processor():
    try:  # transformers >= 5: the classic PIL processor has its own class
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as P
    except ImportError:  # transformers 4.x: CLIPImageProcessor is the PIL one
        from transformers import CLIPImageProcessor as P
    return P()


def _reference(layout: str, path: str):
    ap = pytest.importorskip("aesthetics_predictor")
    cls = {"linear": ap.AestheticsPredictorV2Linear, "relu": ap.AestheticsPredictorV2ReLU,
           "v1": ap.AestheticsPredictorV1}[layout]
    return cls.from_pretrained(path).eval()


def _mixed_images():
    """A batch of 8 plus odd sizes (portrait, landscape, exactly 224, small, gray, RGBA)."""
    batch = FX.sample_images(8, 96, 128, seed=1)
    others = [FX.sample_images(1, h, w, seed=10 + i)[0] for i, (h, w) in
              enumerate([(300, 201), (224, 224), (61, 250), (517, 333)])]
    return batch, others


def _ref_scores(ref, pil_images):
    pv = _clip_processor()(images=pil_images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return ref(pixel_values=pv, return_dict=True).logits[:, 0].float()


@pytest.mark.parametrize("layout", ["linear", "relu", "v1"])
def test_scores_match_simple_aesthetics_predictor(dirs, layout):
    ref = _reference(layout, dirs[layout])
    ours = A.load_hf_predictor(dirs[layout])
    assert ours.head.layout == {"linear": "v2_linear", "relu": "v2_relu", "v1": "v1_linear"}[layout]
    batch, others = _mixed_images()
    got = ours.score(batch)
    want = _ref_scores(ref, [Image.fromarray(a) for a in A.to_uint8_rgb(batch)])
    assert got.shape == (8,)
    assert (got - want).abs().max().item() <= 1e-4
    assert got.std() > 0.05  # distinct images give distinct scores (the check above is not vacuous)
    for im in others:  # mixed sizes, as a list
        g = ours.score([im])
        w = _ref_scores(ref, [Image.fromarray(A.to_uint8_rgb(im)[0])])
        assert abs(g.item() - w.item()) <= 1e-4


@pytest.mark.parametrize("hw", [(96, 128), (300, 201), (224, 224), (61, 250), (517, 333), (225, 224)])
def test_pixel_values_identical_to_clip_processor(hw):
    img = FX.sample_images(1, *hw, seed=hw[0])
    u8 = A.to_uint8_rgb(img)[0]
    want = _clip_processor()(images=[Image.fromarray(u8)], return_tensors="pt")["pixel_values"]
    got = A.clip_pixel_values(img)
    assert got.shape == want.shape == (1, 3, 224, 224)
    assert (got - want).abs().max().item() < 1e-5


def test_uint8_conversion_matches_comfy_saveimage():
    img = torch.tensor([[[[0.0, 0.5, 1.0], [0.999, 0.0039, 1.2]]]])
    # SaveImage: np.clip(255 * x, 0, 255).astype(uint8) (truncation)
    want = np.clip(255.0 * img.numpy(), 0, 255).astype(np.uint8)
    assert np.array_equal(A.to_uint8_rgb(img), want)


def test_batch_of_8_equals_8_singles(dirs):
    m = A.load_hf_predictor(dirs["linear"])
    batch = FX.sample_images(8, 80, 120, seed=5)
    together = m.score(batch, batch_size=8)
    singles = torch.cat([m.score(batch[i:i + 1]) for i in range(8)])
    chunked = m.score(batch, batch_size=3)
    assert torch.allclose(together, singles, atol=1e-5)
    assert torch.allclose(together, chunked, atol=1e-5)


def test_rgba_and_grayscale_are_converted(dirs):
    m = A.load_hf_predictor(dirs["linear"])
    rgb = FX.sample_images(2, 64, 64, seed=7)
    rgba = torch.cat([rgb, torch.ones_like(rgb[..., :1])], dim=-1)
    assert torch.allclose(m.score(rgba), m.score(rgb), atol=1e-6)
    gray = rgb[..., :1]
    assert torch.allclose(m.score(gray), m.score(gray.repeat(1, 1, 1, 3)), atol=1e-6)
    # fully transparent -> white, like transformers' convert_to_rgb
    clear = torch.cat([rgb, torch.zeros_like(rgb[..., :1])], dim=-1)
    assert torch.allclose(m.score(clear), m.score(torch.ones_like(rgb)), atol=1e-6)


# --------------------------------------------------------------------------- head files (path b)
def _direct(sd: dict, emb: torch.Tensor, layout: str) -> np.ndarray:
    """The head computed by hand in float64 numpy."""
    x = emb.double().numpy()
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    if layout == "v1":
        return (x @ sd["weight"].double().numpy().T + sd["bias"].double().numpy())[:, 0]
    idx = FX.V2_INDEX[layout]
    for n, i in enumerate(idx):
        x = x @ sd[f"layers.{i}.weight"].double().numpy().T + sd[f"layers.{i}.bias"].double().numpy()
        if layout == "relu" and n < len(idx) - 1:
            x = np.maximum(x, 0)
    return x[:, 0]


@pytest.mark.parametrize("layout", ["linear", "relu", "v1"])
@pytest.mark.parametrize("ext", [".pth", ".safetensors"])
def test_head_files_in_published_layouts(tmp_path, layout, ext):
    path = FX.save_head(str(tmp_path / f"head-{layout}{ext}"), layout, in_dim=768, seed=11)
    model = A.load_aesthetic_model(path)
    assert not model.has_clip and model.head.in_dim == 768
    sd = FX.head_state_dict(layout, 768, seed=11)
    emb = torch.randn(8, 768, generator=torch.Generator().manual_seed(4)) * 3
    got = model.scores_from_embeddings(emb).numpy()
    assert np.abs(got - _direct(sd, emb, layout)).max() <= 1e-4
    # round trip in the published key layout
    assert set(model.head.state_dict_published()) == set(sd)


def test_head_inside_full_predictor_checkpoint_and_prefixes(tmp_path):
    sd = FX.head_state_dict("linear", 32, seed=1)
    full = {"vision_model.x": torch.zeros(2), **sd}
    assert A.head_from_state_dict(full).layout == "v2_linear"
    wrapped = {f"model.{k}": v for k, v in sd.items()}
    assert A.head_from_state_dict(wrapped).layout == "v2_linear"
    torch.save({"state_dict": OrderedDict(sd)}, tmp_path / "wrapped.pth")
    assert A.load_head_file(str(tmp_path / "wrapped.pth")).layout == "v2_linear"


def test_head_with_wrong_shapes_is_refused(tmp_path):
    sd = FX.head_state_dict("linear", 768, seed=0)
    sd["layers.2.weight"] = torch.randn(100, 1024)
    torch.save(OrderedDict(sd), tmp_path / "bad.pth")
    with pytest.raises(AtelierError) as e:
        A.load_head_file(str(tmp_path / "bad.pth"), node="Atelier Aesthetic Loader", input="model_name")
    msg = str(e.value)
    assert "bad.pth" in msg and "(100, 1024)" in msg and "Expected" in msg and "Fix" in msg
    assert "[Atelier Aesthetic Loader]" in msg
    sd = FX.head_state_dict("v1", 768)
    sd["bias"] = torch.zeros(2)
    with pytest.raises(AtelierError, match="bias"):
        A.head_from_state_dict(sd)


def test_head_with_wrong_keys_is_refused(tmp_path):
    from safetensors.torch import save_file
    save_file({"fc1.weight": torch.zeros(4, 768), "fc1.bias": torch.zeros(4)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(AtelierError) as e:
        A.load_head_file(str(tmp_path / "x.safetensors"))
    assert "fc1.weight" in str(e.value) and "layers.{0,2,4,6,7}" in str(e.value)
    sd = FX.head_state_dict("linear", 768)
    del sd["layers.7.bias"]
    with pytest.raises(AtelierError, match="no known aesthetic head layout"):
        A.head_from_state_dict(sd)


def test_unreadable_or_pickled_head_is_refused(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a zip file at all")
    with pytest.raises(AtelierError, match="could not read head file 'junk.pth'"):
        A.load_head_file(str(tmp_path / "junk.pth"))
    torch.save(torch.nn.Linear(768, 1), tmp_path / "module.pth")  # a pickled module: refused by weights_only
    with pytest.raises(AtelierError, match="could not read head file"):
        A.load_head_file(str(tmp_path / "module.pth"))
    torch.save([torch.zeros(3)], tmp_path / "list.pth")
    with pytest.raises(AtelierError, match="does not contain a state dict"):
        A.load_head_file(str(tmp_path / "list.pth"))


def test_embedding_size_mismatch_is_explained(tmp_path):
    m = A.load_aesthetic_model(FX.save_head(str(tmp_path / "h.pth"), "linear", in_dim=768))
    with pytest.raises(AtelierError, match="expects 768") as e:
        m.scores_from_embeddings(torch.randn(2, 1024))
    assert "ViT-L/14" in str(e.value)
    with pytest.raises(AtelierError, match="head only"):
        m.score(FX.sample_images(1, 32, 32))


def test_external_embedder_path_matches_bundled_clip(dirs):
    """Path (b) plumbing: an embed_fn given the uint8 crops gives the same scores as the bundled CLIP."""
    m = A.load_hf_predictor(dirs["relu"])
    imgs = FX.sample_images(4, 100, 90, seed=9)
    head_only = A.AestheticModel(head=m.head, clip=None, name="head")
    got = head_only.score(imgs, embed_fn=lambda crops: m.embed(A.normalize_crops(crops)))
    assert torch.allclose(got, m.score(imgs), atol=1e-6)


def test_hf_dir_mismatching_config_is_refused(tmp_path, dirs):
    import json
    import shutil
    d = tmp_path / "broken"
    shutil.copytree(dirs["linear"], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(AtelierError, match="does not match its config.json"):
        A.load_hf_predictor(str(d))
    with pytest.raises(AtelierError, match="not a Hugging Face model directory"):
        A.load_hf_predictor(str(tmp_path))


# --------------------------------------------------------------------------- set logic
def test_keep_or_best_is_the_filter_rule_of_both_families():
    from comfyui_atelier.core.selection import keep_or_best
    s = [0.5, 0.9, 0.95, 0.7]
    assert keep_or_best(s, mode="threshold", threshold=0.9, top_k=1, if_none="keep best", metric="accuracy") == \
        ([1, 2], 2, "kept 2 of 4 (accuracy >= 0.9): #1 0.900, #2 0.950")
    keep, passed, report = keep_or_best(s, mode="top_k", threshold=0.0, top_k=1, if_none="keep best")
    assert (keep, passed) == ([2], 1) and report.startswith("kept 1 of 4 (top 1)")
    keep, passed, report = keep_or_best(s, mode="threshold", threshold=0.99, top_k=1, if_none="keep best",
                                        metric="accuracy")
    assert (keep, passed) == ([2], 0)  # the best one passed on, but 0 passed
    assert report.startswith("NOTHING PASSED: no image passed (accuracy >= 0.99); the best was #2 with accuracy 0.95 <")
    with pytest.raises(AtelierError, match="no image passed") as e:
        keep_or_best(s, mode="threshold", threshold=0.99, top_k=1, if_none="stop with error", node="N")
    assert e.value.node == "N" and e.value.input == "threshold"


def test_select_gate_and_report():
    s = [5.0, 6.5, 6.0, 7.25, 3.0]
    assert A.order_by_score(s) == [3, 1, 2, 0, 4]
    assert A.select(s, mode="threshold", threshold=6.0) == [1, 2, 3]
    assert A.select(s, mode="top_k", top_k=2) == [1, 3]
    assert A.select(s, mode="threshold", threshold=9) == []
    assert A.gate(s, 6.0) == (False, pytest.approx(5.55))
    assert A.gate([6.0, 6.0], 6.0) == (True, 6.0)
    rep = A.format_report(s, 6.0)
    assert "#3:  7.250  (rank 1)  pass" in rep and "FAIL" in rep and "mean 5.550" in rep
    with pytest.raises(AtelierError):
        A.select(s, mode="best")


# --------------------------------------------------------------------------- saved PNG parity, size budget
@pytest.mark.parametrize("channels", [2, 4])
def test_transparent_image_scores_like_its_saved_png(dirs, channels, tmp_path):
    """An RGBA / gray+alpha IMAGE gives the pixel values (and the score) that simple-aesthetics-predictor's
    processor gives for the PNG Save Image writes of it: Save Image's truncation, then the processor's 8-bit
    alpha composite on white (convert_to_rgb)."""
    from comfyui_atelier.core.images import to_uint8
    g = torch.Generator().manual_seed(channels)
    img = torch.rand(1, 90, 130, channels, generator=g)
    img[..., -1] = torch.linspace(0, 1, 130)  # every alpha level, fully transparent to opaque
    saved = to_uint8(img)[0]
    mode = "RGBA" if channels == 4 else "LA"
    Image.fromarray(saved, mode).save(tmp_path / "saved.png")
    png = Image.open(tmp_path / "saved.png")
    want = _clip_processor()(images=[png], return_tensors="pt")["pixel_values"]
    got = A.clip_pixel_values(img)
    assert (got - want).abs().max().item() < 1e-5
    ref = _reference("linear", dirs["linear"])
    score = A.load_hf_predictor(dirs["linear"]).score(img)
    assert abs(score.item() - _ref_scores(ref, [png]).item()) <= 1e-4


def test_extreme_aspect_ratio_is_refused_before_the_clip_resize():
    m_size = A.crop_resize_size(300, 400)
    assert m_size == (224, 298)
    with pytest.raises(AtelierError) as e:
        A.clip_crops(torch.rand(3, 1, 20000, 3), node="Atelier Aesthetic Scorer", first=5)
    msg = str(e.value)
    assert msg.startswith("[Atelier Aesthetic Scorer] input 'images': image 5 (20,000 x 1)")
    assert "4,480,000 x 224 px" in msg and "aspect ratio" in msg


def test_normalize_tables_give_the_elementwise_values():
    """normalize_crops' per-channel tables hold, bit for bit, what CLIPProcessor's rescale then normalize
    (x * (1/255), - mean, / std, float32 elementwise) gives, for every 8-bit value in every channel."""
    crops = torch.arange(256, dtype=torch.uint8).repeat_interleave(3).reshape(1, 16, 16, 3)
    crops = torch.cat([crops, crops.flip(1)])  # two images, so the threaded path runs too
    x = crops.permute(0, 3, 1, 2).to(torch.float32).mul_(np.float32(1.0 / 255.0).item())
    x.sub_(torch.tensor(A.CLIP_MEAN, dtype=torch.float32)[:, None, None])
    x.div_(torch.tensor(A.CLIP_STD, dtype=torch.float32)[:, None, None])
    got = A.normalize_crops(crops)
    assert got.dtype == torch.float32 and got.shape == (2, 3, 16, 16)
    assert torch.equal(got, x)
    assert torch.equal(A.normalize_crops(crops, dtype=torch.float16), x.to(torch.float16))
    with pytest.raises(AtelierError):
        A.normalize_crops(crops.float())
