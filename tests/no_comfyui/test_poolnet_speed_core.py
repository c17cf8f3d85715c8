"""PoolNet's fast paths give the reference forward's output (no ComfyUI).

The reference is tests.fixtures.poolnet_models.reference_forward: the authors' forward written
functionally over the state dict (eval BatchNorm, NCHW, upsample-then-conv), independent of core/poolnet.py.
"""
from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from comfyui_atelier.core import poolnet as P
from comfyui_atelier.core.errors import AtelierError
from tests.fixtures import poolnet_models as PM

TOL = 1e-5


@pytest.fixture(scope="module")
def weights():
    sd = PM.random_state_dict(7)
    g = torch.Generator().manual_seed(8)
    for k, v in sd.items():  # BatchNorm statistics far from identity: folding must really fold them
        if k.endswith("running_mean"):
            sd[k] = torch.randn(v.numel(), generator=g) * 0.2
        elif k.endswith("running_var"):
            sd[k] = 0.6 + torch.rand(v.numel(), generator=g)
    net = P.PoolNet()
    P.load_state_dict_strict(net, sd)
    return sd, P.prepare_inference(net)


def _reference(sd, imgs):
    with torch.no_grad():
        return torch.sigmoid(PM.reference_forward(sd, P.preprocess(imgs)))[:, 0]


@pytest.mark.parametrize("shape", [(1, 111, 130), (2, 160, 144), (1, 129, 257), (3, 117, 123)])
def test_forward_matches_the_reference_forward(weights, shape):
    sd, net = weights
    imgs = torch.rand(*shape, 3, generator=torch.Generator().manual_seed(sum(shape)))
    ref = _reference(sd, imgs)
    ours = P.predict_saliency(net, imgs, batch_size=shape[0])
    assert ref.std() > 1e-2  # a non-trivial map: the comparison can fail
    assert (ours - ref).abs().max().item() <= TOL


def _count_resizes(monkeypatch) -> list:
    """Records, per _resize_conv call, whether it convolved (True) or only resized (False)."""
    calls = []
    real = P._resize_conv
    monkeypatch.setattr(P, "_resize_conv", lambda *a, **k: calls.append(len(a) > 2 and a[2] is not None) or real(*a, **k))
    return calls


def test_large_input_paths_match_the_reference(weights, monkeypatch):
    """The paths taken at large sizes (many bands of rows), forced at a small size, give the same output;
    on the CPU every conv_sum runs per tap, without its upsampled input, at any size."""
    sd, net = weights
    imgs = torch.rand(2, 143, 161, 3, generator=torch.Generator().manual_seed(11))
    ref = _reference(sd, imgs)
    calls = _count_resizes(monkeypatch)
    monkeypatch.setattr(P, "BAND_BYTES", 1)  # 1-row bands (the minimum)
    ours = P.predict_saliency(net, imgs, batch_size=2)
    # per image: 3 pyramid-pooled parts of ppm_cat, 3 upsampled guidance maps and 3 conv_sums convolved
    # without their upsampled input, and the 2 x 3 pooled branches of the /2 levels resized into their
    # level's buffer
    assert calls.count(True) == 2 * 9 and calls.count(False) == 2 * 6
    assert (ours - ref).abs().max().item() <= TOL


def test_direct_conv_sum_of_a_gpu_matches_the_reference(weights, monkeypatch):
    """Off the CPU a small conv_sum convolves the upsampled map itself (one cuDNN call); that path,
    run here on the CPU, gives the same output and leaves only the guidance maps to the per-tap path."""
    sd, net = weights
    imgs = torch.rand(1, 150, 133, 3, generator=torch.Generator().manual_seed(12))
    calls = _count_resizes(monkeypatch)
    monkeypatch.setattr(P.FeatureAggregation, "PER_TAP_DEVICES", ())
    ours = P.predict_saliency(net, imgs, batch_size=1)
    assert calls.count(True) == 3 + 3  # ppm_cat's pooled parts and the guidance maps
    assert (ours - _reference(sd, imgs)).abs().max().item() <= TOL
    monkeypatch.setattr(P.FeatureAggregation, "UPSAMPLED_BYTES", 0)  # large maps: per tap there too
    calls.clear()
    P.predict_saliency(net, imgs, batch_size=1)
    assert calls.count(True) == 3 + 3 + 3


@pytest.mark.parametrize("cin,cout,h,w,H,W", [(5, 4, 7, 9, 13, 29), (8, 3, 16, 16, 128, 128),
                                              (6, 6, 9, 5, 9, 11), (4, 2, 2, 3, 17, 8)])
@pytest.mark.parametrize("band_bytes", [1, 1 << 30])
def test_conv_of_upsampled_is_upsample_then_conv(cin, cout, h, w, H, W, band_bytes, monkeypatch):
    g = torch.Generator().manual_seed(cin * h + W)
    conv = torch.nn.Conv2d(cin, cout, 3, padding=1, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        conv.bias.copy_(torch.randn(cout, generator=g))
    x = torch.randn(2, cin, h, w, generator=g)
    with torch.no_grad():
        ref = conv(F.interpolate(x, (H, W), mode="bilinear", align_corners=True))
    monkeypatch.setattr(P, "BAND_BYTES", band_bytes)
    monkeypatch.setattr(F, "interpolate", None)  # the upsampled map is never built
    out = P._conv3x3_of_upsampled(conv, x, (H, W))
    relu = P._conv3x3_of_upsampled(conv, x.contiguous(memory_format=torch.channels_last), (H, W), relu=True)
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    scale = ref.abs().max().item()
    assert (out - ref).abs().max().item() <= 1e-5 * scale
    assert (relu - ref.clamp(min=0)).abs().max().item() <= 1e-5 * scale
    assert (out - ref).abs().max().item() < 1e-3 * ref.std().item()
    # zero padding at every border: a shifted tap would show at the edges
    assert (out[..., 0, :] - ref[..., 0, :]).abs().max() <= 1e-5 * scale
    assert (out[..., :, -1] - ref[..., :, -1]).abs().max() <= 1e-5 * scale


def test_resize_matrices_are_built_once_per_shape_and_reused_in_and_out_of_inference_mode(weights, monkeypatch):
    _, net = weights
    x = P.preprocess(torch.rand(1, 121, 133, 3, generator=torch.Generator().manual_seed(3)))
    P._resize_plan.cache_clear()
    with torch.inference_mode():
        first = net(x)
    built = []
    real = P._resize_matrix
    monkeypatch.setattr(P, "_resize_matrix", lambda *a, **k: built.append(a[:2]) or real(*a, **k))
    with torch.inference_mode():
        again = net(x)
    assert built == [] and P._resize_plan.cache_info().hits > 0
    assert torch.equal(first, again)
    with torch.no_grad():  # the plan cached in inference mode also serves calls outside it
        assert torch.equal(net(x), first)
    assert built == []
    with torch.inference_mode():
        bands, cols = P._resize_plan(9, 9, 17, 17, (-1, 0, 1), 4, torch.float32, torch.device("cpu"))
    assert len(bands) == 5 and not any(m[-1].is_inference() for m in bands + cols)  # plain tensors


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "tap_mix", "input_slice"])
def test_tap_mix_is_a_view_where_the_layout_allows_and_gives_the_same_conv(layout):
    """Every weight layout the network holds gives upsample-then-conv; the channels-last one (and a slice of
    its input channels, as ppm_cat's parts) and the tap-mix one are read without a copy."""
    g = torch.Generator().manual_seed(5)
    full = torch.randn(6, 10, 3, 3, generator=g)
    w = {"nchw": full, "channels_last": full.contiguous(memory_format=torch.channels_last),
         "tap_mix": P._tap_mix_layout(full),
         "input_slice": full.contiguous(memory_format=torch.channels_last)[:, 3:8]}[layout]
    mix, tap_major = P._tap_mix(w)
    assert mix.shape == (w.shape[1], 9 * w.shape[0]) and tap_major == (layout in ("nchw", "tap_mix"))
    assert (mix.data_ptr() == w.data_ptr()) == (layout != "nchw")  # a view of the weight's storage
    x = torch.randn(2, w.shape[1], 5, 7, generator=g)
    ref = F.conv2d(F.interpolate(x, (11, 15), mode="bilinear", align_corners=True), w, None, 1, 1)
    out = P._conv3x3_of_upsampled(P._Taps(w, None), x, (11, 15))
    assert (out - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


def test_prepared_network_mixes_its_per_tap_convs_without_copies(weights):
    _, net = weights
    convs = net.per_tap_convs()
    assert len(convs) == 6
    assert all(P._tap_mix(c.weight)[1] and c.weight.permute(1, 2, 3, 0).is_contiguous() for c in convs)
    ppm = net.base.ppm_cat[0].weight  # convolved directly too: channels-last, its parts mixed out-major
    assert ppm.is_contiguous(memory_format=torch.channels_last) and not P._tap_mix(ppm[:, 512:1024])[1]


def test_cpu_batch_runs_images_side_by_side_and_equals_singles(weights):
    sd, net = weights
    imgs = torch.rand(3, 120, 136, 3, generator=torch.Generator().manual_seed(3))
    seen = []
    hook = net.score.score.register_forward_hook(
        lambda m, i, o: seen.append((threading.current_thread().name, torch.get_num_threads(),
                                     torch.is_inference_mode_enabled(), o.shape[0])))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        batch = P.predict_saliency(net, imgs, batch_size=3)
        assert torch.get_num_threads() == 2  # restored
        singles = torch.cat([P.predict_saliency(net, imgs[i:i + 1], batch_size=1) for i in range(3)])
    finally:
        hook.remove()
        torch.set_num_threads(before)
    assert len(seen) == 6  # one band per image at this size
    streams = {name for name, *_ in seen[:3]}
    assert len(streams) == 2 and all(n.startswith("atelier-poolnet") for n in streams)
    assert all(t == 1 and inf and b == 1 for _, t, inf, b in seen[:3])  # one image, one thread each
    assert all(inf for *_, inf, _ in seen[3:])
    assert (batch - singles).abs().max().item() <= TOL  # 1 thread per image vs 2: float rounding only
    assert (batch - _reference(sd, imgs)).abs().max().item() <= TOL
    assert not torch.allclose(batch[0], batch[1], atol=1e-3)


def test_error_in_a_stream_reaches_the_caller_and_restores_threads(weights):
    _, net = weights
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(AtelierError, match="minimum side"):
            P.predict_saliency(net, torch.rand(2, 100, 140, 3), batch_size=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_progress_counts_every_image_once(weights):
    _, net = weights
    done = []
    P.predict_saliency(net, torch.rand(5, 112, 112, 3), batch_size=2, progress=done.append)
    assert done == [2, 2, 1]


@pytest.mark.parametrize("kernel,stride,dilation", [(1, 1, 1), (1, 2, 1), (3, 1, 2), (7, 2, 1)])
def test_fused_conv_act_equals_conv_add_relu(kernel, stride, dilation):
    g = torch.Generator().manual_seed(kernel * 10 + stride)
    conv = torch.nn.Conv2d(6, 5, kernel, stride=stride, padding=dilation * (kernel // 2), dilation=dilation)
    conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(2, 6, 19, 23, generator=g).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = conv(x)
        other = torch.randn(y.shape, generator=g).contiguous(memory_format=torch.channels_last)
        for relu in (True, False):
            for add in (None, other):
                want = y + (0 if add is None else add)
                want = want.clamp(min=0) if relu else want
                got = P.conv_act(conv, x, add, relu=relu)
                assert got.shape == want.shape and (got - want).abs().max().item() <= 1e-6
    # with autograd on (a caller training it, say) the plain path runs and gradients flow
    out = P.conv_act(conv, x, relu=True)
    out.sum().backward()
    assert conv.weight.grad is not None and (out - y.clamp(min=0)).abs().max().item() <= 1e-6
