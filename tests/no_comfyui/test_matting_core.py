"""PoolNet network, loading and matting core (no ComfyUI)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from comfyui_atelier.core import matting as M
from comfyui_atelier.core import poolnet as P
from comfyui_atelier.core.errors import AtelierError

from tests.fixtures import poolnet_models as PM


@pytest.fixture(scope="session")
def poolnet_files(tmp_path_factory):
    return PM.build_poolnet_files(str(tmp_path_factory.getbasetemp() / "poolnet_models"))


@pytest.fixture(scope="module")
def net(poolnet_files):
    return P.load_poolnet(poolnet_files["official"])


def product_shot(h=160, w=200, seed=0):
    """Near-white studio background (slight vignette) with a shaded red box and a blue disc."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    img = (0.985 - 0.02 * (xx ** 2 + yy ** 2))[..., None].expand(h, w, 3).clone()
    truth = torch.zeros(h, w)
    box = (slice(h // 4, 3 * h // 4), slice(w // 5, w // 2))
    img[box] = torch.tensor([0.75, 0.15, 0.1]) * (0.8 + 0.2 * (yy[box] + 1)[..., None] / 2)
    truth[box] = 1
    disc = ((xx - 0.45) ** 2 + (yy * h / w) ** 2) < 0.09
    img[disc] = torch.tensor([0.1, 0.2, 0.7])
    truth[disc] = 1
    img = (img + torch.randn(h, w, 3, generator=g) * 0.004).clamp(0, 1)
    return img[None], truth[None]


# ----------------------------------------------------------------------------- layout and loading

def test_module_tree_has_exactly_the_official_keys_and_shapes():
    own = P.PoolNet().state_dict()
    official = PM.official_layout()
    assert list(own) == list(official)
    assert {k: tuple(v.shape) for k, v in own.items()} == dict(official)
    assert not any(k.endswith("num_batches_tracked") for k in own)
    # no weights on the avg-pools; the ResNet-50 has 53 BN layers, 4 tensors each
    assert not any(".pools." in k for k in own)
    assert sum(k.endswith("running_var") for k in own) == 53
    assert sum(v.numel() for v in own.values()) == sum(math.prod(s) for s in official.values())


@pytest.mark.parametrize("variant", ["official", "official_nbt"])
def test_official_layout_file_loads_strictly(poolnet_files, variant):
    sd = torch.load(poolnet_files[variant], map_location="cpu", weights_only=True)
    model = P.load_poolnet(poolnet_files[variant], fold=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    # folded (the default): still every official key, the BN statistics as loaded, plus one conv bias per BN
    folded = P.load_poolnet(poolnet_files[variant]).state_dict()
    bn_prefixes = [k.removesuffix("running_var") for k in PM.official_layout() if k.endswith("running_var")]
    conv_biases = {p.replace(".bn", ".conv").replace("downsample.1.", "downsample.0.") + "bias" for p in bn_prefixes}
    assert len(conv_biases) == 53 and set(folded) - set(PM.official_layout()) == conv_biases
    assert set(folded) >= set(PM.official_layout())
    for k in PM.official_layout():
        if ".bn" in k or "downsample.1" in k:
            assert torch.equal(folded[k], sd[k]), k
    # the same dict through torch's own strict loader (after the num_batches_tracked drop)
    P.PoolNet().load_state_dict(dict(sd), strict=True)


def test_dataparallel_prefix_and_legacy_format_are_accepted(tmp_path):
    sd = PM.random_state_dict(3, num_batches_tracked=True)
    path = PM.save_pth({"module." + k: v for k, v in sd.items()}, str(tmp_path / "dp.pth"), legacy=True)
    model = P.load_poolnet(path, fold=False)
    assert torch.equal(model.base.resnet.conv1.weight, sd["base.resnet.conv1.weight"])
    assert torch.equal(P.load_poolnet(path).base.resnet.bn1.running_var, sd["base.resnet.bn1.running_var"])


def test_edge_model_gives_a_clear_error(tmp_path):
    sd = PM.random_state_dict(1)
    sd["edgeinfo.trans.0.weight"] = torch.zeros(128, 128, 3, 3)
    sd["fuse.fuse.weight"] = torch.zeros(1, 3, 1, 1)
    path = PM.save_pth(sd, str(tmp_path / "edge.pth"))
    with pytest.raises(AtelierError, match="joint edge model"):
        P.load_poolnet(path)


def test_wrong_architecture_lists_missing_and_shape_errors(tmp_path):
    sd = PM.random_state_dict(1)
    sd["score.score.weight"] = torch.zeros(1, 128, 3, 3)  # the edge model's 3x3 score head
    del sd["deep_pool.4.conv_sum.weight"]
    path = PM.save_pth(sd, str(tmp_path / "wrong.pth"))
    with pytest.raises(AtelierError) as e:
        P.load_poolnet(path)
    msg = str(e.value)
    assert "1 missing keys" in msg and "deep_pool.4.conv_sum.weight" in msg
    assert "shape mismatches" in msg and "score.score.weight" in msg
    assert "Fix:" in msg and "saliency" in msg


def test_unrelated_state_dict_is_named_not_poolnet(tmp_path):
    path = PM.save_pth({"conv.weight": torch.zeros(3, 3)}, str(tmp_path / "other.pth"))
    with pytest.raises(AtelierError, match="not look like a PoolNet file"):
        P.load_poolnet(path)


def test_truncated_file_gives_a_clear_error(poolnet_files, tmp_path):
    data = open(poolnet_files["official"], "rb").read()
    path = tmp_path / "final.pth"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(AtelierError, match="truncated"):
        P.load_poolnet(str(path))
    st = tmp_path / "final.safetensors"
    P.convert_pth_to_safetensors(poolnet_files["official"], str(st))
    st.write_bytes(st.read_bytes()[:1000])
    with pytest.raises(AtelierError, match="truncated"):
        P.load_poolnet(str(st))


def test_missing_file_error():
    with pytest.raises(AtelierError, match="does not exist"):
        P.load_poolnet("/nonexistent/final.pth")


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))  # unpickling would create the file


def test_code_executing_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"base.resnet.conv1.weight": torch.zeros(1), "x": _Payload(str(marker))}, str(path))
    with pytest.raises(AtelierError, match="refused"):
        P.load_poolnet(str(path))
    assert not marker.exists()
    # the fixture's os.system payload too
    PM.save_malicious_pth(str(tmp_path / "evil2.pth"))
    with pytest.raises(AtelierError, match="could execute code"):
        P.load_poolnet(str(tmp_path / "evil2.pth"))


def test_safetensors_conversion_roundtrip(poolnet_files, tmp_path, net):
    dst = tmp_path / "poolnet.safetensors"
    info = P.convert_pth_to_safetensors(poolnet_files["official_nbt"], str(dst))
    assert info["tensors"] == len(PM.official_layout()) and dst.stat().st_size == info["bytes"]
    assert not (tmp_path / "poolnet.safetensors.tmp").exists()
    m2 = P.load_poolnet(str(dst))
    for k, v in net.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
    with pytest.raises(AtelierError):  # conversion validates the architecture first
        P.convert_pth_to_safetensors(PM.save_pth({"a": torch.zeros(1)}, str(tmp_path / "a.pth")),
                                     str(tmp_path / "a.safetensors"))
    assert not (tmp_path / "a.safetensors").exists()


# ----------------------------------------------------------------------------- numerics

def test_preprocessing_constants():
    img = torch.tensor([[[[1.0, 0.0, 0.5], [0.2, 0.4, 0.6]]]])  # one row, two RGB pixels
    x = P.preprocess(img)
    assert x.shape == (1, 3, 1, 2)
    # channel 0 is blue, 1 green, 2 red; 0..255 scale minus the reference means; no std division
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([127.5 - 104.00699, 0 - 116.66877, 255 - 122.67892]))
    assert torch.allclose(x[0, :, 0, 1], torch.tensor([153 - 104.00699, 102 - 116.66877, 51 - 122.67892]), atol=1e-4)
    assert P.BGR_MEANS == (104.00699, 116.66877, 122.67892)


def _out(n, k, s, p, ceil=False):
    v = (n + 2 * p - k) / s
    return (math.ceil(v) if ceil else math.floor(v)) + 1


def test_stage_shapes_for_odd_size(net):
    h, w = 317, 211
    h1, w1 = _out(h, 7, 2, 3), _out(w, 7, 2, 3)                 # 159, 106
    h2, w2 = _out(h1, 3, 2, 1, True), _out(w1, 3, 2, 1, True)   # 80, 54
    h3, w3 = _out(h2, 1, 2, 0), _out(w2, 1, 2, 0)               # 40, 27
    h4, w4 = _out(h3, 1, 2, 0), _out(w3, 1, 2, 0)               # 20, 14
    assert (h1, w1, h2, w2, h3, w3, h4, w4) == (159, 106, 80, 54, 40, 27, 20, 14)
    shapes = net.stage_shapes(P.preprocess(torch.rand(1, h, w, 3)))
    assert shapes == {
        "backbone0": (1, 64, h1, w1), "backbone1": (1, 256, h2, w2), "backbone2": (1, 512, h3, w3),
        "backbone3": (1, 1024, h4, w4), "backbone4": (1, 2048, h4, w4),
        "info0": (1, 512, h4, w4), "info1": (1, 256, h3, w3), "info2": (1, 256, h2, w2), "info3": (1, 128, h1, w1),
        "fam0": (1, 512, h4, w4), "fam1": (1, 256, h3, w3), "fam2": (1, 256, h2, w2), "fam3": (1, 128, h1, w1),
        "fam4": (1, 128, h1, w1), "logits": (1, 1, h, w)}


def test_minimum_side(net):
    assert P.MIN_SIDE == P.min_side_for_fam_pool() == 111
    x = P.preprocess(torch.rand(1, 111, 130, 3))
    assert net(x).shape == (1, 1, 111, 130)
    with pytest.raises(AtelierError, match="minimum side"):
        net(P.preprocess(torch.rand(1, 110, 130, 3)))


def test_output_is_sigmoid_of_align_corners_resized_logits(net):
    img = torch.rand(1, 112, 128, 3, generator=torch.Generator().manual_seed(2))
    sal = P.predict_saliency(net, img)
    with torch.no_grad():
        x = P.preprocess(img)
        feats, infos = net.base(x)
        skips = net.convert(feats)[::-1]
        m = net.deep_pool[0](skips[0], skips[1], infos[0])
        for k in range(1, 4):
            m = net.deep_pool[k](m, skips[k + 1], infos[k])
        low = net.score.score(net.deep_pool[4](m))  # logits at 1/2 resolution
        ref = torch.sigmoid(F.interpolate(low, size=(112, 128), mode="bilinear", align_corners=True))[:, 0]
    assert sal.shape == (1, 112, 128)
    assert torch.allclose(sal, ref, atol=1e-6)
    assert 0.0 < sal.min() and sal.max() < 1.0 and sal.std() > 1e-3  # non-trivial map


def test_batch_of_four_equals_four_singles(net):
    imgs = torch.rand(4, 112, 120, 3, generator=torch.Generator().manual_seed(5))
    batch = P.predict_saliency(net, imgs, batch_size=4)
    singles = torch.cat([P.predict_saliency(net, imgs[i:i + 1]) for i in range(4)])
    assert torch.allclose(batch, singles, atol=1e-5)
    assert not torch.allclose(batch[0], batch[1], atol=1e-3)


def _nontrivial_bn_state_dict(seed: int = 3):
    """The fixture weights with BatchNorm statistics far from identity (scales 0.5..1.5, shifts,
    means and variances that a fold must really fold), still finite through 53 BN layers."""
    g = torch.Generator().manual_seed(seed)
    sd = PM.random_state_dict(seed)
    for k, v in sd.items():
        n = v.numel()
        if k.endswith("running_mean"):
            sd[k] = torch.randn(n, generator=g) * 0.3
        elif k.endswith("running_var"):
            sd[k] = 0.5 + torch.rand(n, generator=g) * 1.5
        elif v.ndim == 1 and k.endswith(".weight") and "resnet" in k:
            sd[k] = v * (0.5 + torch.rand(n, generator=g))
        elif v.ndim == 1 and k.endswith(".bias") and "resnet" in k:
            sd[k] = torch.randn(n, generator=g) * 0.2
    return sd


def test_batchnorm_folding_gives_the_unfolded_forward(tmp_path):
    sd = _nontrivial_bn_state_dict()
    plain = P.PoolNet()
    P.load_state_dict_strict(plain, sd)
    path = PM.save_pth(sd, str(tmp_path / "bn.pth"))
    folded = P.load_poolnet(path)  # strict load of the official keys, then folded, channels-last
    assert folded.folded and not plain.folded
    assert [m.folded for m in folded.modules() if isinstance(m, P.FrozenBatchNorm2d)] == [True] * 53
    assert not any(m.folded for m in plain.modules() if isinstance(m, P.FrozenBatchNorm2d))
    with pytest.raises(AtelierError, match="already folded"):
        P.load_state_dict_strict(folded, sd)
    assert folded.base.resnet.conv1.bias is not None and folded.base.resnet.layer4[0].downsample[0].bias is not None
    # the statistics are non-trivial: dropping them would change the output a lot
    unfolded_keys = P.load_poolnet(path, fold=False).state_dict()
    assert list(unfolded_keys) == list(PM.official_layout())
    imgs = torch.rand(2, 128, 144, 3, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref_logits = plain(P.preprocess(imgs))
    ours = P.predict_saliency(folded, imgs, batch_size=2)
    ref = torch.sigmoid(ref_logits)[:, 0]
    assert ref_logits.std() > 0.1 and ref.std() > 1e-3
    assert (ours - ref).abs().max().item() <= 1e-5
    # unfolded, predict_saliency runs channels-last with fused conv+ReLU: another summation order, so the
    # same 1e-5 bar (1.2e-6 measured on a Zen 5 EPYC, under 1e-6 on a Xeon)
    assert P.predict_saliency(plain, imgs).sub(ref).abs().max().item() <= 1e-5
    folded.fold_batchnorm()  # folding twice is a no-op
    assert (P.predict_saliency(folded, imgs) - ref).abs().max().item() <= 1e-5
    # a BN that is not identity changes the result: the comparison can fail
    sd2 = dict(sd)
    sd2["base.resnet.bn1.running_mean"] = sd["base.resnet.bn1.running_mean"] + 1.0
    other = P.PoolNet()
    P.load_state_dict_strict(other, sd2)
    assert (P.predict_saliency(other, imgs) - ref).abs().max().item() > 1e-4


def test_loaded_model_runs_channels_last_in_inference_mode(net):
    conv = net.base.resnet.layer1[0].conv2.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    seen = []
    hook = net.score.score.register_forward_hook(
        lambda m, i, o: seen.append((torch.is_inference_mode_enabled(), o.is_contiguous(memory_format=torch.channels_last))))
    try:
        P.predict_saliency(net, torch.rand(1, 112, 112, 3))
    finally:
        hook.remove()
    assert seen == [(True, True)]


def test_frozen_bn_matches_torch_batchnorm_eval():
    bn = torch.nn.BatchNorm2d(8).eval()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2), bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    fb = P.FrozenBatchNorm2d(8)
    fb.load_state_dict(bn.state_dict(), strict=True)  # num_batches_tracked accepted and dropped
    x = torch.randn(2, 8, 5, 5)
    assert torch.allclose(fb(x), bn(x), atol=1e-6)
    assert not fb.train().training or True
    assert not P.PoolNet().train().training


# ----------------------------------------------------------------------------- matting ops

def test_composite_white_stays_white_and_product_unchanged():
    img, truth = product_shot()
    img[0, :10] = 1.0  # a pure white band
    alpha = torch.rand(1, *truth.shape[1:], generator=torch.Generator().manual_seed(0))
    alpha[truth > 0] = 1.0
    out = M.composite(img, alpha, (1.0, 1.0, 1.0))
    assert torch.equal(out[0, :10], torch.ones_like(out[0, :10]))      # white stays white, any alpha
    assert torch.equal(out[truth > 0], img[truth > 0])                 # alpha 1: pixels unchanged
    out0 = M.composite(img, torch.zeros_like(alpha), (0.2, 0.4, 0.6))
    assert torch.equal(out0[0, 5, 5], torch.tensor([0.2, 0.4, 0.6]))   # alpha 0: exactly the colour
    half = M.composite(img, torch.full_like(alpha, 0.5), (0.0, 0.0, 0.0))
    assert torch.allclose(half, img * 0.5, atol=1e-6)
    rgba = M.rgba_cutout(img, alpha)
    assert rgba.shape == (1, *img.shape[1:3], 4) and torch.equal(rgba[..., 3], alpha)


def test_alpha_ops():
    a = torch.zeros(1, 41, 41)
    a[0, 15:26, 15:26] = 1
    assert M.grow_shrink(a, 3).sum() > a.sum() > M.grow_shrink(a, -3).sum() > 0
    assert M.grow_shrink(a, 3)[0, 12, 20] == 1 and M.grow_shrink(a, -3)[0, 17, 20] == 0
    f = M.feather(a, 4)
    assert abs(f.sum().item() - a.sum().item()) < 1.0 and 0 < f[0, 15, 20] < 1
    assert torch.equal(M.threshold_alpha(torch.tensor([[[0.2, 0.5, 0.9]]])), torch.tensor([[[0.0, 1.0, 1.0]]]))
    s = M.snap_alpha(torch.tensor([[[0.001, 0.3, 0.999]]]))
    assert torch.equal(s, torch.tensor([[[0.0, 0.3, 1.0]]]))


def test_guided_filter_moves_an_upsampled_mask_edge_onto_the_image_edge():
    img, truth = product_shot()
    low = F.interpolate(truth[:, None], scale_factor=0.25, mode="area")
    up = F.interpolate(low, size=truth.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    refined = M.guided_filter(img, up, radius=4, eps=1e-3)
    assert refined.shape == truth.shape
    assert M.alpha_iou(up, truth) < 0.997 < M.alpha_iou(refined, truth)
    const = M.guided_filter(img, torch.full_like(truth, 0.7), 4)
    assert torch.allclose(const, torch.full_like(truth, 0.7), atol=1e-4)


def test_to_rgb_handles_rgba_gray_and_parse_color():
    rgba = torch.zeros(1, 4, 4, 4)
    rgba[..., 0] = 1.0
    rgba[0, :2, :, 3] = 1.0  # top half opaque red, bottom transparent
    rgb = M.to_rgb(rgba)
    assert rgb.shape == (1, 4, 4, 3)
    assert torch.equal(rgb[0, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(rgb[0, 3, 0], torch.tensor([1.0, 1.0, 1.0]))
    assert M.to_rgb(torch.full((2, 3, 3, 1), 0.5)).shape == (2, 3, 3, 3)
    assert M.parse_color("#FFFFFF") == (1.0, 1.0, 1.0) and M.parse_color("0,0,255") == (0.0, 0.0, 1.0)
    with pytest.raises(AtelierError, match="#RRGGBB"):
        M.parse_color("not a colour")


def test_match_mask_batches():
    m = torch.rand(1, 8, 8)
    assert M.match_mask(m, 3, 16, 16).shape == (3, 16, 16)
    assert M.match_mask(torch.rand(3, 16, 16), 3, 16, 16).shape == (3, 16, 16)
    with pytest.raises(AtelierError, match="2 masks but the image batch has 3"):
        M.match_mask(torch.rand(2, 16, 16), 3, 16, 16, node="Atelier Remove Background")


@pytest.mark.parametrize("small_input", ["pad", "upscale"])
def test_tiny_inputs_run_through_poolnet(net, small_input):
    for h, w in [(1, 1), (5, 40), (64, 64)]:
        img = torch.rand(1 if h > 1 else 2, h, w, 3)
        out = M.run_at_working_size(img, lambda x: P.predict_saliency(net, x), 0, P.MIN_SIDE, small_input)
        assert out.shape == (img.shape[0], h, w) and torch.isfinite(out).all()


def test_working_size_rules():
    assert M.working_size(2048, 2048, 512, 111) == (512, 512, 0, 0)
    assert M.working_size(300, 200, 512, 111) == (300, 200, 0, 0)
    assert M.working_size(64, 80, 0, 111, "upscale") == (111, 139, 0, 0)
    assert M.working_size(64, 80, 0, 111, "pad") == (64, 80, 47, 31)
    assert M.working_size(200, 4000, 512, 111)[0] >= 111


def test_centre_prior_fixture_gives_a_white_border(poolnet_files):
    model = P.load_poolnet(poolnet_files["centre"])
    img, _ = product_shot(160, 200)
    img = torch.rand_like(img)  # content does not matter to this model
    sal = P.predict_saliency(model, img)
    alpha = M.refine_alpha(img, sal, refine="none")
    out = M.composite(img, alpha)
    frame = torch.cat([out[0, :3].reshape(-1, 3), out[0, -3:].reshape(-1, 3),
                       out[0, :, :3].reshape(-1, 3), out[0, :, -3:].reshape(-1, 3)])
    assert torch.equal(frame, torch.ones_like(frame))
    assert torch.equal(out[0, 40:120, 40:160], img[0, 40:120, 40:160])


def test_classical_backend_on_near_white_product_shot():
    img, truth = product_shot(240, 320)
    alpha = M.classical_alpha(img)
    assert alpha.shape == truth.shape
    assert M.alpha_iou(alpha, truth) > 0.95
    out = M.composite(img, M.refine_alpha(img, alpha, refine="none"))
    assert torch.equal(out[0, :5], torch.ones_like(out[0, :5]))
    # degenerate inputs do not crash
    assert M.classical_alpha(torch.ones(1, 1, 1, 3)).shape == (1, 1, 1)
    assert M.classical_alpha(torch.ones(1, 20, 20, 3)).sum() == 0


@pytest.mark.parametrize("fixed", [True, False])
def test_onnx_backend_selected_by_file(tmp_path, fixed):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    path = PM.save_tiny_onnx_saliency(str(tmp_path / "tiny_birefnet.onnx"), fixed=fixed)
    model = M.load_saliency_model(path)
    assert model.kind == "onnx" and model.min_side == 32
    img, truth = product_shot(120, 150)
    img = torch.cat([img, img.flip(2)])  # a batch of 2 (the fixed export takes one at a time)
    truth = torch.cat([truth, truth.flip(2)])
    out, alpha, rgba, sal = M.remove_background(model, img, max_side=0, refine="guided_filter")
    assert sal.shape == alpha.shape == (2, 120, 150)
    assert M.alpha_iou(alpha, truth) > 0.95
    assert torch.equal(out[:, :3], torch.ones_like(out[:, :3]))


def test_onnx_backend_without_onnxruntime_names_the_extra(tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_ort(name, *a, **k):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_ort)
    (tmp_path / "m.onnx").write_bytes(b"not really onnx")
    with pytest.raises(AtelierError, match="pip install onnxruntime"):
        M.load_saliency_model(str(tmp_path / "m.onnx"))
