"""Style statistics, adapter, blend and latent match (pure core, no ComfyUI)."""
import pytest
import torch

from comfyui_atelier.core import style as S
from comfyui_atelier.core.errors import AtelierError
from tests.fixtures import style_models as SM

RES = 64


@pytest.fixture(scope="module")
def vae():
    return SM.TinyKLVAE()


@pytest.fixture(scope="module")
def images():
    return [SM.style_image(i) for i in range(4)]


# ---------------------------------------------------------------- statistics
def test_moments_are_the_encoder_distribution_not_a_sample(vae, images):
    style = S.encode_style(images[:1], vae, resolution=RES)
    px = S.prepare_image(images[0], RES)
    with torch.no_grad():
        moments = vae.quant_conv(vae.encoder(px))
    mean, logvar = moments[:, :4], moments[:, 4:].clamp(-30, 20)
    assert torch.allclose(style.mu, mean[0], atol=1e-6)
    assert torch.allclose(style.sigma, torch.exp(0.5 * logvar[0]), atol=1e-6)
    # deterministic: a second run gives the same numbers (a sample would not)
    again = S.encode_style(images[:1], vae, resolution=RES)
    assert torch.equal(style.mu, again.mu) and torch.equal(style.sigma, again.sigma)


def test_moments_match_diffusers_latent_dist(images):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                                  up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=8).eval()
    style = S.encode_style(images[:1], vae, resolution=RES)
    with torch.no_grad():
        dist = vae.encode(S.prepare_image(images[0], RES)).latent_dist
    assert torch.allclose(style.mu, dist.mean[0], atol=1e-5)
    assert torch.allclose(style.sigma, dist.std[0], atol=1e-5)


def test_set_average_and_channel_stats(vae, images):
    style = S.encode_style(images, vae, resolution=RES, batch_size=3)
    fn = S.moments_fn_from_autoencoder(vae)
    means, logvars = zip(*[fn(S.prepare_image(im, RES)) for im in images])
    means, logvars = torch.cat(means).double(), torch.cat(logvars).double()
    assert style.count == 4
    assert torch.allclose(style.mu.double(), means.mean(0), atol=1e-6)
    assert torch.allclose(style.sigma.double(), torch.exp(0.5 * logvars).mean(0), atol=1e-6)
    # channel statistics = mean/std of samples of the whole set's latent distribution
    cm = means.mean(dim=(0, 2, 3))
    var = (means ** 2 + logvars.exp()).mean(dim=(0, 2, 3)) - cm ** 2
    assert torch.allclose(style.channel_mean.double(), cm, atol=1e-6)
    assert torch.allclose(style.channel_std.double(), var.sqrt(), atol=1e-6)
    assert style.feature().shape == (1, 8, RES // 8, RES // 8)
    assert torch.equal(style.feature()[0, :4], style.sigma)  # sigma first, as the seed


def test_average_is_order_independent(vae, images):
    a = S.encode_style(images, vae, resolution=RES, batch_size=1)
    b = S.encode_style(images[::-1], vae, resolution=RES, batch_size=3)
    for k in ("mu", "sigma", "channel_mean", "channel_std"):
        assert torch.allclose(getattr(a, k), getattr(b, k), atol=1e-6, rtol=0), k


def test_batch_tensor_equals_list(vae, images):
    batch = torch.stack(images)
    a = S.encode_style(batch, vae, resolution=RES)
    b = S.encode_style(images, vae, resolution=RES)
    assert torch.allclose(a.mu, b.mu, atol=1e-6)


def test_save_load_bit_exact(tmp_path, vae, images):
    style = S.encode_style(images, vae, resolution=RES, name="s07")
    style.meta = {"token": "style07"}
    S.save_style(style, tmp_path / "s.safetensors")
    back = S.load_style(tmp_path / "s.safetensors")
    for k in ("mu", "sigma", "channel_mean", "channel_std"):
        assert torch.equal(getattr(style, k), getattr(back, k)), k
    assert (back.count, back.resolution, back.crop, back.name, back.meta) == (4, RES, "center", "s07", {"token": "style07"})


def test_load_rejects_other_safetensors(tmp_path):
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, str(tmp_path / "lora.safetensors"))
    with pytest.raises(AtelierError, match="not an Atelier style file"):
        S.load_style(tmp_path / "lora.safetensors")


@pytest.mark.parametrize("crop", S.CROP_MODES)
def test_crop_modes_give_working_square(crop):
    im = SM.style_image(3, 40, 90)
    x = S.prepare_image(im, 64, crop)
    assert x.shape == (1, 3, 64, 64) and x.min() >= -1 and x.max() <= 1


def test_center_crop_keeps_middle():
    im = torch.zeros(64, 192, 3)
    im[:, 64:128] = 1.0  # white centre third
    x = S.prepare_image(im, 64, "center")
    assert x.min() > 0.99  # only the white centre remains
    pad = S.prepare_image(torch.zeros(32, 64, 3), 64, "pad")
    assert pad[..., 0, :].min() == 1.0 and pad[..., 32, :].max() < -0.99  # white bars, black content


def test_gray_and_rgba_inputs(vae):
    gray = SM.style_image(1, 32, 32, channels=1)
    rgba = SM.style_image(1, 32, 32, channels=4)
    rgba[..., 3] = 0.0  # fully transparent -> white
    assert S.encode_style([gray], vae, resolution=RES).count == 1
    white = S.encode_style([torch.ones(32, 32, 3)], vae, resolution=RES)
    transparent = S.encode_style([rgba], vae, resolution=RES)
    assert torch.allclose(white.mu, transparent.mu, atol=1e-6)


def test_mixed_sizes_are_brought_to_the_working_resolution(vae):
    ims = [SM.style_image(0, 40, 40), SM.style_image(1, 96, 64), SM.style_image(2, 30, 120)]
    mixed = S.encode_style(ims, vae, resolution=RES, batch_size=4)
    one_by_one = [S.encode_style([im], vae, resolution=RES) for im in ims]
    assert mixed.count == 3
    assert torch.allclose(mixed.mu, sum(s.mu for s in one_by_one) / 3, atol=1e-6)


def test_zero_images_error(vae):
    with pytest.raises(AtelierError, match="no style images"):
        S.encode_style([], vae, resolution=RES)
    with pytest.raises(AtelierError, match="no style images"):
        S.encode_style(torch.zeros(0, 32, 32, 3), vae, resolution=RES)


def test_vae_channel_count_check():
    vae16 = SM.TinyKLVAE(latent_channels=16)
    with pytest.raises(AtelierError, match="16 latent channels, 4 were expected"):
        S.encode_style([SM.style_image(0)], vae16, resolution=RES, expected_channels=4)
    style16 = S.encode_style([SM.style_image(0)], vae16, resolution=RES)
    adapter = S.StyleAdapter(context_dim=768, feature_size=RES // 8)
    with pytest.raises(AtelierError, match="16 latent channels but the adapter was built for 4"):
        adapter(style16.feature())
    with pytest.raises(AtelierError, match="16 latent channels but the latent has 4"):
        S.match_latent_stats(torch.randn(1, 4, 8, 8), style16.channel_mean, style16.channel_std)


def test_non_kl_vae_rejected():
    with pytest.raises(AtelierError, match="no KL encoder"):
        S.moments_fn_from_autoencoder(torch.nn.Linear(2, 2))
    with pytest.raises(AtelierError, match="2\\*latent_channels"):
        S.split_moments(torch.zeros(1, 3, 4, 4))


# ---------------------------------------------------------------- adapter
@pytest.mark.parametrize("ctx,head", [(768, "linear"), (1024, "reshape"), (2048, "linear")])
def test_adapter_shapes(ctx, head):
    a = S.StyleAdapter(context_dim=ctx)  # seed geometry: 8x64x64 feature (512 px)
    assert a.config.head == head
    torch.nn.init.normal_(a.conv_in.weight, std=0.1)
    out = a(torch.randn(2, 8, 64, 64))
    assert out.shape == (2, 77, ctx)
    assert out.abs().sum() > 0


def test_zero_initialised_adapter_leaves_conditioning_unchanged(vae, images):
    style = S.encode_style(images, vae, resolution=RES)
    a = S.StyleAdapter(context_dim=768, feature_size=RES // 8)
    assert torch.count_nonzero(a.conv_in.weight) == 0
    tokens = S.style_tokens(a, style)
    assert torch.count_nonzero(tokens) == 0
    cond = torch.randn(1, 77, 768)
    assert torch.equal(S.blend_tokens(cond, tokens, 1.0), cond)


def _trained_adapter(ctx=768, fs=RES // 8, seed=0):
    torch.manual_seed(seed)
    a = S.StyleAdapter(context_dim=ctx, feature_size=fs)
    for p in a.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return a


def test_strength_zero_is_identity_and_blend_adds(vae, images):
    style = S.encode_style(images, vae, resolution=RES)
    a = _trained_adapter()
    tokens = S.style_tokens(a, style)
    cond = torch.randn(2, 154, 768)  # a long prompt: two 77-token chunks
    assert torch.equal(S.blend_tokens(cond, tokens, 0.0), cond)
    out = S.blend_tokens(cond, tokens, 0.5)
    assert torch.allclose(out[:, :77] - cond[:, :77], 0.5 * tokens.expand(2, -1, -1), atol=1e-6)
    assert torch.allclose(out[:, 77:] - cond[:, 77:], 0.5 * tokens.expand(2, -1, -1), atol=1e-6)


def test_blend_conditioning_keeps_other_keys():
    tokens = torch.randn(1, 77, 768)
    pooled = torch.randn(1, 768)
    extra = {"pooled_output": pooled, "area": (8, 8, 0, 0), "strength": 0.7, "custom": [1, 2]}
    conds = [[torch.randn(1, 77, 768), extra], [torch.randn(1, 77, 768), {"pooled_output": pooled}]]
    out = S.blend_conditioning(conds, tokens, 0.01)
    assert len(out) == 2
    for (t0, d0), (t1, d1) in zip(conds, out):
        assert d1 == d0 and d1 is not d0 and d1["pooled_output"] is d0["pooled_output"]
        assert not torch.equal(t0, t1)
    assert out[0][1]["area"] == (8, 8, 0, 0)


def test_adapter_for_other_width_is_rejected():
    with pytest.raises(AtelierError, match="context width of 1024 but this conditioning has width 768"):
        S.blend_tokens(torch.randn(1, 77, 768), torch.randn(1, 77, 1024), 0.01)


def test_adapter_save_load_roundtrip(tmp_path):
    a = _trained_adapter(ctx=2048)
    S.save_adapter(a, tmp_path / "a.safetensors", {"style_token": "style07"})
    b = S.load_adapter(tmp_path / "a.safetensors")
    assert b.config == a.config
    x = torch.randn(1, 8, RES // 8, RES // 8)
    assert torch.equal(a.eval()(x), b(x))
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(AtelierError, match="not an Atelier style adapter"):
        S.load_adapter(tmp_path / "x.safetensors")


def test_style_at_other_resolution_is_resampled(vae, images):
    a = _trained_adapter(fs=8)
    style = S.encode_style(images[:1], vae, resolution=128)  # 16x16 feature
    assert S.style_tokens(a, style).shape == (1, 77, 768)


def test_train_module_constants_agree():
    from comfyui_atelier.core import style_train
    assert style_train.DEFAULT_RESOLUTION == S.DEFAULT_RESOLUTION
    assert style_train.DEFAULT_STRENGTH == S.DEFAULT_STRENGTH
    assert style_train.CROP_MODES == S.CROP_MODES


# ---------------------------------------------------------------- latent match
def test_latent_match_exact_at_strength_one():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 16, 24) * 3 + 1
    tm, ts = torch.tensor([0.5, -1.0, 2.0, 0.0]), torch.tensor([1.2, 0.3, 2.5, 0.9])
    out = S.match_latent_stats(x, tm, ts, 1.0)
    m = out.mean(dim=(2, 3))
    s = out.std(dim=(2, 3), unbiased=False)
    assert torch.allclose(m, tm.expand(3, -1), atol=1e-4)
    assert torch.allclose(s, ts.expand(3, -1), atol=1e-4)


def test_latent_match_strength_zero_and_half():
    x = torch.randn(1, 4, 8, 8)
    tm, ts = torch.ones(4), torch.full((4,), 2.0)
    assert torch.equal(S.match_latent_stats(x, tm, ts, 0.0), x)
    full = S.match_latent_stats(x, tm, ts, 1.0)
    half = S.match_latent_stats(x, tm, ts, 0.5)
    assert torch.allclose(half, (x + full) / 2, atol=1e-6)


def test_latent_match_empty_latent_and_video_shape():
    tm, ts = torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.ones(4)
    out = S.match_latent_stats(torch.zeros(1, 4, 8, 8), tm, ts, 1.0)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.mean(dim=(2, 3))[0], tm)
    vid = S.match_latent_stats(torch.randn(1, 4, 3, 8, 8), tm, ts, 1.0)
    assert torch.allclose(vid.mean(dim=(2, 3, 4))[0], tm, atol=1e-4)


def test_affine_stats_through_latent_scale():
    m, s = S.affine_stats(torch.tensor([1.0, 2.0]), torch.tensor([0.5, 1.0]), lambda x: (x - 0.1) * 2)
    assert torch.allclose(m, torch.tensor([1.8, 3.8])) and torch.allclose(s, torch.tensor([1.0, 2.0]))
