"""Clean cut-outs (core.matting): foreground colour decontamination at the matte edge and the contact shadow.

The halo measure: a synthetic product (an orange disc with a 6 px anti-aliased rim and hair-like strands
thinner than a pixel) composited on a saturated background B (pure green, pure magenta), matted, placed on
white W. Over the edge pixels (0.05 < alpha < 0.95) a pixel's lean toward the old background is the
component of (pixel - ideal) along the unit vector (B - W), where ideal = alpha * F + (1 - alpha) * W is the
product placed on white with its true alpha and colour. Measured here (known alpha, 320 x 320):

    background   plain composite: max / mean lean   decontaminated: max / mean lean
    green            0.177 / 0.132                       <= 0.01 / 0.001
    magenta          0.125 / 0.093                       <= 0.01 / 0.001

Bound asserted: max lean <= 0.02 with decontamination (vs > 0.1 without). With the classical matte (border
flood fill + GrabCut + guided filter), whose alpha is too wide at soft edges, decontamination removes the
colour part of the halo: what is left is exactly the matte's own alpha error, (alpha_est - alpha) * |B - W|.
"""
from __future__ import annotations

import pytest
import torch

from comfyui_atelier.core import matting as M
from comfyui_atelier.core.errors import AtelierError

WHITE = torch.ones(3)
ORANGE = (1.0, 0.5, 0.0)
GREEN, MAGENTA = (0.0, 1.0, 0.0), (1.0, 0.0, 1.0)
BOUND = 0.02


def product(h=320, w=320, fg=ORANGE, bg=GREEN):
    """(image [1,H,W,3] on ``bg``, true alpha [1,H,W], true colour [3]): a disc with a soft rim + fine strands."""
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    r = torch.sqrt((yy - h / 2) ** 2 + (xx - w / 2) ** 2)
    a = ((0.3 * h - r + 3) / 6).clamp(0, 1)
    for k in range(12):  # strands ~1 px wide, never fully opaque: hair
        x0 = w * 0.2 + k * w * 0.05
        strand = (0.6 - ((xx - x0 - 0.1 * (yy - h * 0.2)).abs() / 1.2)).clamp(0, 1)
        a = torch.maximum(a, strand * ((yy > h * 0.05) & (yy < h * 0.35)).float())
    f, b = torch.tensor(fg), torch.tensor(bg)
    img = a[..., None] * f + (1 - a[..., None]) * b
    return img[None], a[None], f


def lean(out, alpha, f, bg):
    """Per-pixel component of (out - ideal on white) along the unit vector (bg - white)."""
    d = torch.tensor(bg) - WHITE
    ideal = alpha[..., None] * f + (1 - alpha[..., None]) * WHITE
    return ((out - ideal) * (d / d.norm())).sum(-1)


@pytest.mark.parametrize("bg", [GREEN, MAGENTA], ids=["green", "magenta"])
def test_no_halo_with_the_known_alpha(bg):
    img, a, f = product(bg=bg)
    alpha = M.snap_alpha(a)
    edge = (a > 0.05) & (a < 0.95)
    before, _ = M.clean_composite(img, alpha)
    after, fg = M.clean_composite(img, alpha, decontaminate_edges=True)
    lb, la = lean(before, a, f, bg)[edge], lean(after, a, f, bg)[edge]
    assert lb.max() > 0.1 and lb.mean() > 0.08  # the halo is there without decontamination
    assert la.max() <= BOUND and la.mean() <= BOUND / 4, (lb.max().item(), la.max().item())
    if bg == GREEN:  # the same in plain terms: green excess G - (R + B) / 2 over the ideal's
        excess = lambda x: x[..., 1] - (x[..., 0] + x[..., 2]) / 2  # noqa: E731
        ideal = a[..., None] * f + (1 - a[..., None]) * WHITE
        assert (excess(after) - excess(ideal))[edge].max() <= BOUND
        assert (excess(before) - excess(ideal))[edge].max() > 0.1
    # the recovered foreground colour is the product's own wherever the edge carries enough of it
    assert (fg[0][a[0] > 0.2] - f).abs().max() <= 0.05
    assert torch.isfinite(fg).all() and fg.min() >= 0 and fg.max() <= 1


@pytest.mark.parametrize("bg", [GREEN, MAGENTA], ids=["green", "magenta"])
def test_classical_matte_left_with_its_own_alpha_error_only(bg):
    img, a, f = product(bg=bg)
    model = M.SaliencyModel("classical", M.CLASSICAL_NAME)
    out0, est, rgba0, _ = M.remove_background(model, img)  # GrabCut's k-means is seeded by OpenCV: one matte
    out1, fg = M.clean_composite(img, est, decontaminate_edges=True)
    assert torch.equal(rgba0[..., :3], img) and not torch.equal(fg, img)  # the plain cut-out is today's
    edge = (a > 0.05) & (a < 0.95)
    l0, l1 = lean(out0, a, f, bg), lean(out1, a, f, bg)
    assert (l1 - l0).max() <= 1e-6               # never leans more toward the old background
    frac = edge & (est > 0.05) & (est < 0.95)  # where the matte itself is soft, the colour part is removed
    assert frac.sum() > 500 and l1[frac].mean() < l0[frac].mean() - 0.02
    norm = (torch.tensor(bg) - WHITE).norm()
    alpha_error = ((est - a) * norm)
    assert (l1 - alpha_error)[frac].abs().max() <= BOUND  # what remains is the matte's alpha error


def test_decontaminate_leaves_solid_pixels_and_is_finite_everywhere():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 37, 53, 3, generator=g)
    alpha = torch.rand(3, 37, 53, generator=g)
    alpha[0] = 0.0   # nothing: F defined (the image) and finite
    alpha[1] = 1.0   # everything solid: untouched
    alpha[2, :, :10] = 0.0
    alpha[2, :, -10:] = 1.0
    fg = M.decontaminate(img, alpha)
    assert fg.shape == img.shape and fg.dtype == torch.float32 and torch.isfinite(fg).all()
    assert fg.min() >= 0 and fg.max() <= 1
    keep = alpha >= M.DECONTAM_KEEP
    assert torch.equal(fg[keep], img[keep])
    assert torch.equal(fg[0], img[0]) and torch.equal(fg[1], img[1])
    singles = torch.cat([M.decontaminate(img[i:i + 1], alpha[i:i + 1]) for i in range(3)])
    assert torch.allclose(fg, singles, atol=1e-6)
    for h, w in ((1, 1), (1, 7), (2, 3), (129, 1)):  # any size
        x, al = torch.rand(1, h, w, 3), torch.rand(1, h, w)
        assert torch.isfinite(M.decontaminate(x, al)).all()


def test_decontaminate_where_alpha_is_zero_gives_the_nearest_solid_colour():
    img = torch.zeros(1, 20, 40, 3)
    img[..., :20, :] = torch.tensor([0.2, 0.4, 0.9])
    alpha = torch.zeros(1, 20, 40)
    alpha[:, :, :20] = 1.0
    fg = M.decontaminate(img, alpha)
    assert torch.allclose(fg[0, :, 30], torch.tensor([0.2, 0.4, 0.9]).expand(20, 3), atol=1e-4)


def test_push_pull_fills_from_the_weighted_pixels_only():
    x = torch.zeros(1, 3, 17, 23)
    x[..., :5] = torch.tensor([0.1, 0.7, 0.3]).view(1, 3, 1, 1)
    x[..., 5:] = 1.0  # unweighted: must not leak into the fill
    w = torch.zeros(1, 1, 17, 23)
    w[..., :5] = 1.0
    y = M.push_pull(x, w)
    assert torch.allclose(y, torch.tensor([0.1, 0.7, 0.3]).view(1, 3, 1, 1).expand_as(y), atol=1e-6)
    assert torch.equal(M.push_pull(x, torch.zeros_like(w)), x)  # no weight at all: the fallback


def _disc_alpha(h=200, w=160, cy=90, cx=80, r=40):
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).float()[None]


def test_shadow_off_is_todays_composite():
    g = torch.Generator().manual_seed(1)
    img, alpha = torch.rand(2, 30, 40, 3, generator=g), torch.rand(2, 30, 40, generator=g)
    out, fg = M.clean_composite(img, alpha, (0.2, 0.5, 1.0))
    assert fg is img and torch.equal(out, M.composite(img, alpha, (0.2, 0.5, 1.0)))


def test_contact_shadow_is_under_the_product_on_the_background_only():
    alpha = _disc_alpha()
    img = torch.full((1, 200, 160, 3), 0.3)
    plain, _ = M.clean_composite(img, alpha)
    out, _ = M.clean_composite(img, alpha, shadow_strength=0.5, shadow_softness=3.0, shadow_offset=0.5)
    solid = alpha[0] >= 1
    assert torch.equal(out[0][solid], plain[0][solid])          # never over the product
    assert (out <= plain + 1e-7).all()                           # only darkens
    diff = (plain - out)[0, ..., 0]
    assert diff.max() > 0.2 and diff.max() <= 0.5 + 1e-6         # strength bounds the darkest point
    rows = diff.amax(1)
    assert rows[:90].max() < 1e-3                                # nothing above the product's middle
    assert rows[131:140].max() > 0.1                             # just below the base (row 130)
    assert rows[175:].max() < 1e-3                               # and fades out
    cols = diff[131:140].amax(0)
    assert cols[:30].max() < 0.02 and cols[-30:].max() < 0.02    # about as wide as the product's base


def test_contact_shadow_parameters():
    alpha = _disc_alpha()
    s = M.contact_shadow(alpha, 3.0, 0.5)[0]
    lower = M.contact_shadow(alpha, 3.0, 10.0)[0]
    softer = M.contact_shadow(alpha, 12.0, 0.5)[0]
    centroid = lambda m: (m.sum(1) * torch.arange(m.shape[0])).sum() / m.sum()  # noqa: E731
    assert centroid(lower) > centroid(s) + 6                     # offset 10 % of an 81 px product: ~8 px lower
    assert softer.max() < s.max() and (softer > 0.01).sum() > (s > 0.01).sum()
    assert M.contact_shadow(torch.zeros(2, 50, 60), 3.0, 0.5).abs().max() == 0   # no product, no shadow
    two = torch.cat([alpha, torch.zeros_like(alpha)])
    both = M.contact_shadow(two, 3.0, 0.5)
    assert torch.equal(both[0], s) and both[1].abs().max() == 0  # per image in a batch
    hard = M.contact_shadow(alpha, 0.0, 0.0)[0]  # no blur, no offset: the squashed footprint itself
    rows = torch.nonzero(hard.amax(1) > 0).flatten().tolist()
    assert rows == [129, 130, 131, 132]  # base row 130; a 20-row footprint squashed to 4 rows, centred on it


def test_remove_background_defaults_are_todays_output():
    img, a, _ = product(160, 160)
    mask = a.clone()
    model = M.SaliencyModel("classical", M.CLASSICAL_NAME)
    out, alpha, rgba, _ = M.remove_background(model, img, mask=mask, refine="none")
    bg = torch.ones(3)
    want = torch.where(alpha[..., None] >= 1, img, bg + alpha[..., None] * (img - bg)).clamp(0, 1)
    assert torch.equal(out, want) and torch.equal(rgba[..., :3], img)
    out2, _, rgba2, _ = M.remove_background(model, img, mask=mask, refine="none", decontaminate_edges=True,
                                            shadow_strength=0.4)
    assert not torch.equal(out2, out) and not torch.equal(rgba2[..., :3], img)
    assert torch.equal(rgba2[..., 3], alpha)


def test_budget_is_checked_before_the_buffers(monkeypatch):
    monkeypatch.setenv("ATELIER_MAX_GIB", "0.0001")
    with pytest.raises(AtelierError) as e:
        M.decontaminate(torch.rand(1, 64, 64, 3), torch.rand(1, 64, 64), node="Atelier Remove Background")
    assert "decontamination" in str(e.value) and "decontaminate off" in str(e.value)
    with pytest.raises(AtelierError) as e:
        M.contact_shadow(torch.rand(1, 128, 128), node="Atelier Remove Background")
    assert "shadow_strength" in str(e.value)


def test_contact_shadow_never_reaches_the_frame():
    """A product standing on the image's bottom edge: the outer 4 px stay exactly the background colour
    (Save Image truncates: any shadow there would turn 255 into 254)."""
    alpha = _disc_alpha(h=120, w=160, cy=80, cx=80, r=38)  # base at row 118 of 120
    img = torch.full((1, 120, 160, 3), 0.3)
    out, _ = M.clean_composite(img, alpha, shadow_strength=0.6, shadow_softness=8.0)
    frame = torch.cat([out[0, :4].reshape(-1), out[0, -4:].reshape(-1), out[0, :, :4].reshape(-1),
                       out[0, :, -4:].reshape(-1)])
    background = alpha[0] == 0
    assert torch.equal(frame[frame != 0.3], torch.ones_like(frame[frame != 0.3]))  # white wherever not product
    assert (out[0][background] < 1).any()  # but there is a shadow inside the frame
