"""Core tests for the Canny / lineart conditioners (comfyui_atelier.core.edges): no ComfyUI."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from comfyui_atelier.core import edges as E
from comfyui_atelier.core.errors import AtelierError
from comfyui_atelier.core.images import to_uint8


def drawing(h: int = 120, w: int = 180, dark_on_light: bool = True, speck: bool = False) -> np.ndarray:
    """A product-style line drawing: float32 RGB 0..1, 2 px strokes (rectangle, circle, diagonal)."""
    ink, paper = (0.0, 1.0) if dark_on_light else (1.0, 0.0)
    img = np.full((h, w, 3), paper, np.float32)
    cv2.rectangle(img, (20, 20), (w - 40, h - 30), (ink,) * 3, 2)
    cv2.circle(img, (w // 2, h // 2), min(h, w) // 6, (ink,) * 3, 2)
    cv2.line(img, (10, h - 10), (w - 10, 10), (ink,) * 3, 2)
    if speck:
        img[5, w - 5] = ink
    return img


def stroke_mask(h=120, w=180) -> np.ndarray:
    return E.to_gray_u8(drawing(h, w)) < 128


# ---------------------------------------------------------------------------------------------------------
# input conversion
# ---------------------------------------------------------------------------------------------------------

def test_gray_conversion_truncates_like_save_image_and_saturates_without_touching_input():
    img = np.array([[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [-0.5, -0.5, -0.5], [2.0, 2.0, 2.0], [0.5, 0.5, 0.5],
                     [0.999, 0.999, 0.999]]], np.float32)
    before = img.copy()
    g = E.to_gray_u8(img)
    assert g.dtype == np.uint8 and g.shape == (1, 6)
    assert g.tolist() == [[0, 255, 0, 255, 127, 254]]  # 0.5 * 255 = 127.5 -> 127, as Save Image writes it
    np.testing.assert_array_equal(img, before)


def _save_image_png(img: np.ndarray) -> np.ndarray:
    """What ComfyUI's Save Image writes for a float IMAGE item, read back from real PNG bytes."""
    import io

    from PIL import Image

    from comfyui_atelier.core.images import to_uint8
    buf = io.BytesIO()
    Image.fromarray(to_uint8(img)).save(buf, format="PNG")
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())))


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_analysis_of_image_equals_analysis_of_its_saved_png(channels):
    rng = np.random.default_rng(7)
    img = np.clip(cv2.GaussianBlur(rng.random((90, 130, channels), dtype=np.float32), (0, 0), 2) * 1.4 - 0.2, 0, 1)
    img = img.reshape(90, 130, channels)
    png = _save_image_png(img[..., 0] if channels == 1 else img)
    loaded = png.astype(np.float32) / 255  # what Load Image gives back for the saved file
    for src in (png, loaded):
        assert np.array_equal(E.to_gray_u8(src), E.to_gray_u8(img))
        for run in (lambda x: E.canny_image(x, low=10, high=30, resolution=0)[0],
                    lambda x: E.lineart_image(x, min_speck_area=4, resolution=0)[0]):
            assert np.array_equal(run(src), run(img))


def test_gray_of_a_tall_rgb_image_strip_by_strip_equals_converting_it_whole():
    """RGB floats are converted and turned to gray a strip of rows at a time (with or without the NaN pass):
    the same bytes as Save Image's conversion of the whole image followed by one cvtColor."""
    rng = np.random.default_rng(2)
    img = rng.random((613, 97, 3), dtype=np.float32) * 1.2 - 0.1  # out-of-range values too
    want = cv2.cvtColor(to_uint8(img), cv2.COLOR_RGB2GRAY)
    for finite in (False, True):
        np.testing.assert_array_equal(E.to_gray_u8(img, finite=finite), want)
    nan = img.copy()
    nan[300, 5] = np.nan
    assert E.to_gray_u8(nan)[300, 5] == cv2.cvtColor(to_uint8(nan), cv2.COLOR_RGB2GRAY)[300, 5]


def test_gray_uses_luma_weights():
    red = np.zeros((2, 2, 3), np.float32)
    red[..., 0] = 1.0
    assert E.to_gray_u8(red)[0, 0] == round(0.299 * 255)


@pytest.mark.parametrize("shape", [(8, 9), (8, 9, 1), (8, 9, 2), (8, 9, 3), (8, 9, 4)])
def test_every_channel_layout_gives_gray(shape):
    img = np.random.default_rng(0).random(shape, dtype=np.float32)
    g = E.to_gray_u8(img)
    assert g.shape == (8, 9) and g.dtype == np.uint8


def test_rgba_transparent_background_contrasts_with_drawing():
    # dark strokes on a fully transparent canvas -> composited on white
    rgba = np.zeros((40, 40, 4), np.float32)
    rgba[10:12, 5:35, 3] = 1.0  # black opaque stroke
    g = E.to_gray_u8(rgba)
    assert g[0, 0] == 255 and g[10, 10] == 0
    # light strokes on a transparent canvas -> composited on black, so they are not lost on white
    rgba[..., :3] = 1.0
    g = E.to_gray_u8(rgba)
    assert g[0, 0] == 0 and g[10, 10] == 255
    lines, pol = E.lineart(g)
    assert pol == "light_on_dark" and lines[10, 10] == 255 and lines[0, 0] == 0


def test_non_contiguous_input_is_accepted():
    img = np.random.default_rng(1).random((10, 12, 4), dtype=np.float32)[:, ::2, :3]
    assert E.to_gray_u8(img).shape == (10, 6)


@pytest.mark.parametrize("shape", [(0, 5, 3), (5, 0, 3), (4, 4, 7), (2, 2, 2, 2)])
def test_bad_image_shapes_raise_actionable_error(shape):
    with pytest.raises(AtelierError) as e:
        E.to_gray_u8(np.zeros(shape, np.float32), node="Atelier Canny")
    msg = str(e.value)
    assert "[Atelier Canny]" in msg and "'image'" in msg and "Expected:" in msg


def test_median_from_histogram_matches_numpy():
    g = np.random.default_rng(2).integers(0, 256, (31, 17), dtype=np.uint8)
    assert E.median_u8(g) == int(np.sort(g.ravel())[(g.size - 1) // 2])


# ---------------------------------------------------------------------------------------------------------
# Canny
# ---------------------------------------------------------------------------------------------------------

def test_canny_finds_edges_of_a_square_only():
    g = np.zeros((64, 64), np.uint8)
    g[16:48, 16:48] = 200
    e = E.canny(g, 50, 80)
    assert set(np.unique(e)) == {0, 255}
    assert e[:10].max() == 0 and e[28:36, 28:36].max() == 0  # flat areas: no edges
    assert e[16:48, 15:17].any() and e[15:17, 16:48].any()  # borders traced
    np.testing.assert_array_equal(e, cv2.Canny(g, 50, 80))


def test_canny_high_thresholds_suppress_weak_edges():
    g = np.zeros((64, 64), np.uint8)
    g[:, 32:] = 20  # weak step: Sobel L1 response 80
    assert E.canny(g, 50, 70).any()
    assert not E.canny(g, 50, 200).any()


def test_blur_and_l2_change_result_on_noise():
    g = np.random.default_rng(3).integers(0, 256, (64, 64), dtype=np.uint8)
    base = E.canny(g, 50, 80)
    assert E.canny(g, 50, 80, blur_sigma=2.0).sum() < base.sum()
    assert not np.array_equal(E.canny(g, 50, 80, l2_gradient=True), base)


def test_low_above_high_names_inputs_and_fix():
    with pytest.raises(AtelierError) as e:
        E.canny(np.zeros((8, 8), np.uint8), 120, 80, node="Atelier Canny")
    msg = str(e.value)
    assert "[Atelier Canny]" in msg and "low_threshold (120) is above high_threshold (80)" in msg
    assert "Fix:" in msg and "auto_median" in msg
    assert isinstance(e.value, ValueError)


def test_negative_threshold_rejected():
    with pytest.raises(AtelierError, match="high_threshold"):
        E.check_thresholds(0, -1)


def test_auto_thresholds_follow_median():
    g = np.full((10, 10), 100, np.uint8)
    low, high = E.auto_thresholds(g, 0.33)
    assert low == pytest.approx(67) and high == pytest.approx(133)
    lo2, hi2 = E.auto_thresholds(np.full((10, 10), 250, np.uint8), 0.33)
    assert hi2 == 255 and lo2 <= hi2
    lo3, hi3 = E.auto_thresholds(np.zeros((10, 10), np.uint8))
    assert hi3 >= 10 and lo3 <= hi3  # dark image: noise is not traced


def test_canny_image_auto_mode_reports_thresholds():
    img = drawing()
    e, info, (lo, hi) = E.canny_image(img, auto=True)
    assert hi == 255 and lo == pytest.approx(0.67 * 255)
    assert e.shape == img.shape[:2] and e.any()


# ---------------------------------------------------------------------------------------------------------
# Line art
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dark_on_light", [True, False])
def test_lineart_white_lines_on_black_for_both_polarities(dark_on_light):
    g = E.to_gray_u8(drawing(dark_on_light=dark_on_light))
    lines, pol = E.lineart(g)
    assert pol == ("dark_on_light" if dark_on_light else "light_on_dark")
    strokes = stroke_mask()
    assert (lines[strokes] == 255).all()  # every stroke pixel is white
    assert (lines[~strokes] == 0).all()  # background black
    assert strokes.mean() < 0.2  # (sanity: the background really dominates)


def test_polarity_on_mid_gray_ground():
    g = np.full((50, 50), 140, np.uint8)
    g[20:22, :] = 30  # darker lines on a mid-gray ground
    assert E.detect_polarity(g) == "dark_on_light"
    g2 = np.full((50, 50), 100, np.uint8)
    g2[20:22, :] = 220
    assert E.detect_polarity(g2) == "light_on_dark"


def test_polarity_override_and_flat_image():
    g = E.to_gray_u8(drawing())
    lines, pol = E.lineart(g, polarity="light_on_dark")  # wrong on purpose: paper becomes the "line"
    assert pol == "light_on_dark" and lines.mean() > 128
    flat, pol = E.lineart(np.full((16, 16), 255, np.uint8))
    assert not flat.any() and pol == "dark_on_light"
    with pytest.raises(AtelierError, match="polarity"):
        E.lineart(g, polarity="sideways")  # type: ignore[arg-type]


def test_soft_lines_keep_gray_levels():
    g = np.full((20, 20), 255, np.uint8)
    g[5, :] = 0
    g[10, :] = 128  # a half-strength pencil line
    soft, _ = E.lineart(g, binarize_lines=False)
    assert soft[5, 3] == 255 and 120 <= soft[10, 3] <= 135 and soft[0, 0] == 0
    hard, _ = E.lineart(g, threshold=200)
    assert hard[5, 3] == 255 and hard[10, 3] == 0
    hard2, _ = E.lineart(g, threshold=100)
    assert hard2[10, 3] == 255


def test_speck_removal_keeps_lines_drops_dots():
    g = E.to_gray_u8(drawing(speck=True))
    kept, _ = E.lineart(g)
    assert kept[5, 180 - 5] == 255
    clean, _ = E.lineart(g, min_speck_area=5)
    assert clean[5, 180 - 5] == 0
    np.testing.assert_array_equal(clean[stroke_mask()], 255)
    soft, _ = E.lineart(g, binarize_lines=False, min_speck_area=5)
    assert soft[5, 180 - 5] == 0 and soft[stroke_mask()].min() == 255


def test_remove_specks_by_area():
    m = np.zeros((20, 20), np.uint8)
    m[2, 2] = 255
    m[10:13, 10:13] = 255  # 9 px blob
    out = E.remove_specks(m, 9)
    assert out[2, 2] == 0 and out[11, 11] == 255
    assert E.remove_specks(m, 10).max() == 0
    assert E.remove_specks(m, 1) is m


def _remove_specks_by_full_labelling(lines, min_area, support=None):
    """The reference: label the whole support, count every blob's pixels, erase the small blobs (the
    implementation before candidate-only labelling)."""
    if min_area <= 1:
        return lines
    sup = lines if support is None else support
    n, labels = cv2.connectedComponents(sup, connectivity=8, ltype=cv2.CV_32S)
    on = sup > 0
    small = np.bincount(labels[on], minlength=n) < min_area
    small[0] = False
    out = lines.copy()
    out[on & small[labels]] = 0
    return out


def _speck_cases():
    rng = np.random.default_rng(7)
    yield "photo-like noise", (rng.random((97, 131)) < 0.3).astype(np.uint8) * 255
    yield "dense noise", (rng.random((64, 64)) < 0.6).astype(np.uint8) * 255
    yield "sparse dust", (rng.random((150, 90)) < 0.01).astype(np.uint8) * 255
    g = E.to_gray_u8(drawing(speck=True))
    yield "drawing", E.lineart(g)[0]
    d = np.zeros((60, 80), np.uint8)
    cv2.line(d, (0, 0), (79, 59), 255, 1)  # 1 px diagonal: every pixel has < 4 neighbours
    cv2.line(d, (0, 59), (3, 59), 255, 1)  # 4 px run at the bottom border
    d[0, 40] = d[0, 79] = d[59, 79] = d[30, 0] = 255  # single pixels on every border and corner
    d[10:12, 70] = 255  # 2 px speck
    d[20, 5:8] = 255  # 3 px speck
    d[40, 40] = d[41, 41] = d[42, 42] = 255  # 3 px diagonal speck
    d[44, 44] = 255  # a gap of one pixel from it: a separate blob
    yield "thin lines and border specks", d
    yield "1 x N", (rng.random((1, 257)) < 0.5).astype(np.uint8) * 255
    yield "N x 1", (rng.random((203, 1)) < 0.5).astype(np.uint8) * 255
    yield "1 x 1 on", np.full((1, 1), 255, np.uint8)
    yield "1 x 1 off", np.zeros((1, 1), np.uint8)
    yield "all on", np.full((9, 13), 255, np.uint8)
    yield "all off", np.zeros((9, 13), np.uint8)
    yield "checkerboard", ((np.indices((33, 35)).sum(0) % 2) * 255).astype(np.uint8)
    half = (rng.random((80, 70)) < 0.02).astype(np.uint8) * 255
    half[:40] = 255  # a band with no sparse window at all above one of dust
    yield "filled top, dust below", half
    yield "dust top, filled below", half[::-1].copy()
    stripes = np.zeros((40, 40), np.uint8)
    stripes[:, ::2] = 255  # 1 px columns: 40 px blobs with 3-pixel windows
    yield "1 px stripes", stripes


@pytest.mark.parametrize("min_area", [2, 3, 4, 5, 9, 10, 40, 100000])
def test_remove_specks_same_output_as_full_labelling(min_area):
    """Candidate-only labelling erases exactly the blobs full labelling does, bit for bit (binary and soft
    lines, with their binary support), and returns the input itself when there is nothing to erase."""
    rng = np.random.default_rng(min_area)
    for name, mask in _speck_cases():
        want = _remove_specks_by_full_labelling(mask, min_area)
        got = E.remove_specks(mask, min_area)
        assert got.dtype == np.uint8 and got.shape == mask.shape
        np.testing.assert_array_equal(got, want, err_msg=f"{name}, min_area {min_area}")
        np.testing.assert_array_equal(E.remove_specks(mask, min_area, support=mask, binary_support=True), want,
                                      err_msg=f"{name} (binary support), min_area {min_area}")
        if np.array_equal(want, mask):
            assert got is mask, name
        soft = np.where(mask > 0, rng.integers(1, 256, mask.shape), rng.integers(0, 40, mask.shape)).astype(np.uint8)
        np.testing.assert_array_equal(E.remove_specks(soft, min_area, support=mask),
                                      _remove_specks_by_full_labelling(soft, min_area, support=mask),
                                      err_msg=f"{name} (soft), min_area {min_area}")
        assert not np.array_equal(mask, 0) or E.remove_specks(mask, min_area).max() == 0


def test_remove_specks_same_output_on_bench_like_images():
    """A textured photo and a dusty scan through lineart: the same line maps as full labelling."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:300, 0:300].astype(np.float32) / 300
    photo = np.clip(0.8 - 0.2 * yy + 0.04 * np.sin(xx * 60 + yy * 25) + rng.normal(0, 0.05, yy.shape), 0, 1)
    cv2.circle(photo, (150, 150), 60, 0.3, -1)
    scan = np.clip(0.93 + 0.03 * (xx - yy) + rng.normal(0, 0.01, yy.shape), 0, 1).astype(np.float32)
    for _ in range(30):
        p = rng.integers(0, 300, 4)
        cv2.line(scan, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), 0.1, int(rng.integers(1, 4)), cv2.LINE_AA)
    ys, xs = rng.integers(0, 300, (2, 200))
    scan[ys, xs] = 0.2
    for img in (photo.astype(np.float32), scan):
        g = E.to_gray_u8(img)
        for binarize in (True, False):
            ref, _ = E.lineart(g, binarize_lines=binarize)
            support, _ = E.lineart(g)
            for area in (4, 12):
                got, _ = E.lineart(g, binarize_lines=binarize, min_speck_area=area)
                np.testing.assert_array_equal(got, _remove_specks_by_full_labelling(ref, area, support=support))


@pytest.mark.parametrize("min_area", [2, 3, 4])
def test_tiny_speck_rule_same_output_as_full_labelling_on_every_4x4_pattern(min_area):
    """The label-free rule for min_area <= 4: every one of the 65,536 4x4 patterns (in 5x5 cells, so no two
    touch), then the same patterns pressed into the image's corner, and random small maps of every density
    (blobs against all four borders): the same as labelling the whole support."""
    codes = np.arange(1 << 16)
    patterns = ((codes[:, None] >> np.arange(16)) & 1).astype(np.uint8).reshape(-1, 4, 4) * 255
    cells = np.zeros((1 << 16, 5, 5), np.uint8)
    cells[:, :4, :4] = patterns
    tiled = cells.reshape(256, 256, 5, 5).transpose(0, 2, 1, 3).reshape(1280, 1280)
    want = _remove_specks_by_full_labelling(tiled, min_area)
    assert not np.array_equal(want, tiled)  # something is erased: the rule is exercised
    np.testing.assert_array_equal(E.remove_specks(tiled, min_area), want)
    for code in range(0, 1 << 16, 7):
        m = patterns[code]
        np.testing.assert_array_equal(E.remove_specks(m, min_area), _remove_specks_by_full_labelling(m, min_area),
                                      err_msg=str(m))
    rng = np.random.default_rng(min_area)
    for _ in range(2000):
        h, w = rng.integers(1, 9, 2)
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8) * 255
        np.testing.assert_array_equal(E.remove_specks(m, min_area), _remove_specks_by_full_labelling(m, min_area),
                                      err_msg=str(m))


def _remove_specks_before(lines, min_area, support=None, *, binary_support=False):
    """The reference: core.edges.remove_specks as it was before it labelled only the candidates' bounding box
    (whole-image 32-bit labelling of every candidate, one dilation of the core map), kept here verbatim."""
    if min_area <= 1:
        return lines
    sup = lines if support is None else support
    fg = sup if binary_support else cv2.threshold(sup, 0, 255, cv2.THRESH_BINARY)[1]
    mean = cv2.boxFilter(fg, -1, (3, 3), normalize=True, borderType=cv2.BORDER_CONSTANT)
    few = cv2.threshold(mean, int(255 * (min(int(min_area), 10) - 0.5) / 9), 255, cv2.THRESH_BINARY_INV)[1]
    cand = cv2.bitwise_and(few, fg)
    if not cv2.countNonZero(cand):
        return lines
    core = cv2.subtract(fg, few)
    near_core = cv2.dilate(core, np.ones((3, 3), np.uint8))
    n, labels = cv2.connectedComponents(cand, connectivity=8, ltype=cv2.CV_32S)
    pts = cv2.findNonZero(cand).reshape(-1, 2)
    idx = pts[:, 1].astype(np.intp) * cand.shape[1] + pts[:, 0]
    lab = labels.ravel()[idx]
    small = np.bincount(lab, minlength=n) < min_area
    small[lab[near_core.ravel()[idx] != 0]] = False
    small[0] = False
    if not small.any():
        return lines
    out = lines.copy()
    out.ravel()[idx[small[lab]]] = 0
    return out


def _more_speck_cases():
    """Beyond _speck_cases: noise of every density, specks in the corners and along the edges only (a small
    bounding box away from the origin), and maps big enough for both near-core paths and for 32-bit labels."""
    rng = np.random.default_rng(11)
    for density in (0.002, 0.05, 0.15, 0.3, 0.5, 0.8):
        yield f"noise {density}", (rng.random((71, 89)) < density).astype(np.uint8) * 255
    corner = np.zeros((50, 60), np.uint8)
    corner[0, 0] = corner[49, 59] = corner[0, 59] = corner[49, 0] = 255
    corner[48:50, 30] = 255  # 2 px on the bottom edge
    yield "corner and edge specks", corner
    island = np.zeros((80, 90), np.uint8)
    island[50:53, 60:63] = 255  # a 9 px blob (core pixels) ...
    island[53, 63] = 255  # ... with a candidate hanging off its corner: part of the blob
    island[60, 70] = island[61, 71] = 255  # a 2 px speck inside the candidates' box, far from the origin
    yield "box away from the origin", island
    yield "large dust", (rng.random((400, 500)) < 0.004).astype(np.uint8) * 255  # few small blobs: gather path
    yield "large noise", (rng.random((300, 300)) < 0.12).astype(np.uint8) * 255  # many: dilation path
    yield ">65535 candidates", (rng.random((700, 700)) < 0.2).astype(np.uint8) * 255  # 32-bit labels


@pytest.mark.parametrize("min_area", [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 25, 100000])
def test_remove_specks_same_output_as_before(min_area):
    """Bounding-box, 16-bit, erase-only-what-is-small speck removal gives today's maps bit for bit: binary and
    soft lines, implicit and binary support, on every case (and the input itself when nothing is erased)."""
    rng = np.random.default_rng(100 + min_area)
    for name, mask in list(_speck_cases()) + list(_more_speck_cases()):
        want = _remove_specks_before(mask, min_area)
        got = E.remove_specks(mask, min_area)
        np.testing.assert_array_equal(got, want, err_msg=f"{name}, min_area {min_area}")
        if min_area <= 9 or mask.size < 100_000:
            np.testing.assert_array_equal(want, _remove_specks_by_full_labelling(mask, min_area), err_msg=name)
        assert (got is mask) == (want is mask), name
        np.testing.assert_array_equal(E.remove_specks(mask, min_area, support=mask, binary_support=True), want,
                                      err_msg=f"{name} (binary support), min_area {min_area}")
        soft = np.where(mask > 0, rng.integers(1, 256, mask.shape), rng.integers(0, 40, mask.shape)).astype(np.uint8)
        np.testing.assert_array_equal(E.remove_specks(soft, min_area, support=mask),
                                      _remove_specks_before(soft, min_area, support=mask),
                                      err_msg=f"{name} (soft), min_area {min_area}")


@pytest.mark.parametrize("kind", ["photo", "drawing"])
def test_lineart_same_output_as_before_for_every_setting(kind, monkeypatch):
    """lineart() end to end (polarity, binarize, threshold, min_speck_area, thickness as the node exposes them)
    on a bench-like photo and a dusty drawing: the same maps as with today's speck removal."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:256, 0:320].astype(np.float32) / 256
    if kind == "photo":
        img = 0.8 - 0.2 * yy + 0.04 * np.sin(xx * 60 + yy * 25) + rng.normal(0, 0.05, yy.shape)
        cv2.rectangle(img, (40, 30), (200, 120), 0.35, -1)
        cv2.circle(img, (250, 180), 50, 0.6, -1)
    else:
        img = 0.93 + 0.03 * (xx - yy) + rng.normal(0, 0.01, yy.shape)
        for _ in range(25):
            p = rng.integers(0, 256, 4)
            cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), 0.1, int(rng.integers(1, 4)), cv2.LINE_AA)
        ys, xs = rng.integers(0, 256, (2, 300))
        img[ys, xs] = 0.2
        img[0, :: 7] = 0.1  # dust along the top edge
    g = E.to_gray_u8(np.clip(img, 0, 1).astype(np.float32))
    settings = [dict(min_speck_area=a, threshold=t, binarize_lines=b, polarity=p, thickness=k)
                for a in (0, 2, 4, 9, 10, 50) for t in (None, 40, 128) for b in (True, False)
                for p, k in (("auto", 0), ("dark_on_light", 1), ("light_on_dark", -1))]
    got = [E.lineart(g, **s) for s in settings]
    monkeypatch.setattr(E, "remove_specks", _remove_specks_before)
    for s, (lines, pol) in zip(settings, got):
        want, want_pol = E.lineart(g, **s)
        assert pol == want_pol
        np.testing.assert_array_equal(lines, want, err_msg=str(s))


def test_thickness_grows_and_thins_lines():
    m = np.zeros((30, 30), np.uint8)
    m[14:17, :] = 255  # 3 px line
    thick = E.change_thickness(m, 2)
    assert thick[:, 15].sum() // 255 == 7
    thin = E.change_thickness(m, -1)
    assert thin[:, 15].sum() // 255 == 1
    assert E.change_thickness(m, 0) is m
    lines, _ = E.lineart(E.to_gray_u8(drawing()), thickness=1)
    assert (lines > 0).sum() > (stroke_mask()).sum()


# ---------------------------------------------------------------------------------------------------------
# Resolution, padding, crop back
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("h,w,res", [(100, 150, 512), (1080, 1920, 512), (768, 512, 512), (333, 777, 640),
                                     (1, 1, 512), (1, 3000, 512), (513, 64, 64)])
def test_fit_resolution_keeps_aspect_and_pads_to_64(h, w, res):
    (sh, sw), (t, b, l, r) = E.fit_resolution(h, w, res)
    assert (sh + t + b) % 64 == 0 and (sw + l + r) % 64 == 0
    assert min(t, b, l, r) >= 0 and abs(t - b) <= 1 and abs(l - r) <= 1
    assert t + b < 64 and l + r < 64  # no more padding than needed
    if max(h, w) * res / min(h, w) <= E.MAX_SIDE:
        assert min(sh, sw) == res
        assert abs(sw / sh - w / h) <= (w / h) * 2 / min(sh, sw) + 1e-9  # aspect within rounding
    assert max(sh, sw) <= E.MAX_SIDE


def test_fit_resolution_zero_keeps_size_and_extreme_aspect_is_capped():
    assert E.fit_resolution(37, 91, 0) == ((37, 91), (0, 0, 0, 0))
    (sh, sw), _ = E.fit_resolution(1, 100000, 512)
    assert sw == E.MAX_SIDE and sh >= 1
    with pytest.raises(AtelierError, match="resolution"):
        E.fit_resolution(10, 10, -64)


def test_pad_then_crop_back_restores_original():
    img = drawing(97, 203)
    g = E.to_gray_u8(img)
    edges, info, _ = E.canny_image(img, resolution=256)
    assert edges.shape[0] % 64 == 0 and edges.shape[1] % 64 == 0
    assert info["scaled_h"] == 256 and info["orig_h"] == 97 and info["orig_w"] == 203
    json.loads(json.dumps(info))  # serialisable
    # padding is black
    assert not edges[: info["top"]].any() and not edges[edges.shape[0] - info["bottom"]:].any()
    back = E.crop_back(edges, info)
    assert back.shape == (97, 203)
    # a gray image scaled + padded the same way comes back close to the original
    padded = E.pad(E.resize(g, info["scaled_h"], info["scaled_w"]), info, value=0)
    restored = E.crop_back(padded, info)
    assert restored.shape == g.shape and np.abs(restored.astype(int) - g).mean() < 12
    # crop only (no resize) gives the scaled size
    assert E.crop_back(padded, info, restore_size=False).shape == (info["scaled_h"], info["scaled_w"])


def test_crop_back_of_an_upscaled_generation():
    info = E.pad_info(100, 150, 512)  # 512x768, no pad; use a case with padding:
    info = E.pad_info(90, 200, 128)  # 128x284 -> padded 128x320
    assert (info["left"], info["right"]) == (18, 18)
    ph, pw = 128 * 2, 320 * 2  # the generation was upscaled 2x
    gen = np.zeros((ph, pw, 3), np.float32)
    gen[:, 36:pw - 36] = 1.0  # content area white, padding black
    out = E.crop_back(gen, info, restore_size=False)
    assert out.shape[:2] == (256, 568) and out.min() == 1.0
    assert E.crop_back(gen, info).shape == (90, 200, 3)


def test_check_pad_info_rejects_garbage():
    good = E.pad_info(10, 20, 64)
    assert E.check_pad_info(dict(good)) == good
    with pytest.raises(AtelierError) as e:
        E.check_pad_info({"orig_h": 3}, node="Atelier Crop Back")
    assert "[Atelier Crop Back]" in str(e.value) and "pad_info" in str(e.value)
    with pytest.raises(AtelierError):
        E.check_pad_info({**good, "orig_w": 0})


def test_one_pixel_image_end_to_end():
    px = np.full((1, 1, 3), 0.3, np.float32)
    e, info, _ = E.canny_image(px, resolution=0)
    assert e.shape == (1, 1) and e[0, 0] == 0
    e, info, _ = E.canny_image(px, resolution=512)
    assert e.shape == (512, 512) and not e.any()
    l, info, pol = E.lineart_image(px, resolution=64, min_speck_area=4, thickness=2)
    assert l.shape == (64, 64) and not l.any()
    assert E.crop_back(l, info).shape == (1, 1)


def test_otsu_from_histogram_matches_opencv():
    rng = np.random.default_rng(7)
    for _ in range(40):
        parts = [rng.normal(rng.uniform(0, 255), rng.uniform(1, 40), 3000) for _ in range(rng.integers(1, 4))]
        g = np.clip(np.concatenate(parts), 0, 255).astype(np.uint8).reshape(-1, 100)
        t_cv, _ = cv2.threshold(g, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
        assert E.otsu_threshold(E.histogram(g)) == int(t_cv)
    assert E.otsu_threshold(np.zeros(256)) == 0


def test_line_strength_tables_are_shared_and_read_only():
    """The tables are cached per (polarity, ground[, threshold]): the same object each time, which no caller
    can change, with the values of the formula."""
    for pol, ground in (("dark_on_light", 230), ("light_on_dark", 20), ("dark_on_light", 0), ("light_on_dark", 255)):
        lut = E.line_strength_lut(pol, ground)
        assert lut is E.line_strength_lut(pol, ground) and not lut.flags.writeable
        v = np.arange(256, dtype=np.float32)
        s = (ground - v) * (255.0 / max(ground, 1)) if pol == "dark_on_light" else \
            (v - ground) * (255.0 / max(255 - ground, 1))
        np.testing.assert_array_equal(lut, np.clip(np.rint(s), 0, 255).astype(np.uint8))
        ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
        for t in (0, 100, 254):
            assert E._binary_cut(pol, ground, t) is E._binary_cut(pol, ground, t)
            cut, kind = E._binary_cut(pol, ground, t)
            np.testing.assert_array_equal(cv2.threshold(ramp, cut, 255, kind)[1].ravel(),
                                          np.where(lut > t, 255, 0).astype(np.uint8))
        with pytest.raises(ValueError):
            lut[0] = 1


def test_binary_map_by_threshold_is_the_table_for_every_ground_and_threshold():
    """lineart makes its line mask with one cv2.threshold instead of a binary table: the table's map (255
    where the line strength is above the threshold) for every gray level, polarity, ground and threshold
    (the line levels are one run at the dark or light end)."""
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for pol in ("dark_on_light", "light_on_dark"):
        for ground in range(256):
            table = E.line_strength_lut(pol, ground)
            for t in range(256):
                cut, kind = E._binary_cut(pol, ground, t)
                np.testing.assert_array_equal(cv2.threshold(ramp, cut, 255, kind)[1],
                                              np.where(table > t, 255, 0).astype(np.uint8)[ramp],
                                              err_msg=f"{pol} {ground} {t}")
