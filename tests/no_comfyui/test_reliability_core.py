"""Hardening (core tier): downloaded file modes, bounded preset files, caption trimming cost,
and the batch client under a full disk."""
from __future__ import annotations

import os
import stat

import pytest

from comfyui_atelier.client import download as dl
from comfyui_atelier.core import manifest as mf
from tests.fixtures import http_models as HM


@pytest.fixture(scope="module")
def server():
    with HM.serve() as url:
        yield url


# ----------------------------------------------------------------------------- 2. download file modes

@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_downloaded_file_gets_normal_permissions(server, tmp_path, umask):
    old = os.umask(umask)
    try:
        assert dl.current_umask() == umask
        m = mf.parse({"models": [HM.entry("good", server + "/good.safetensors")]})
        dl.download_entry(m.by_id("good"), tmp_path)
    finally:
        os.umask(old)
    target = tmp_path / "saliency" / "good.safetensors"
    assert target.read_bytes() == HM.PAYLOAD
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_directory_entry_files_get_normal_permissions(server, tmp_path):
    old = os.umask(0o022)
    try:
        dl.download_entry(mf.parse({"models": [HM.directory_entry("hfdir", server)]}).by_id("hfdir"), tmp_path)
    finally:
        os.umask(old)
    got = sorted((p.name, stat.S_IMODE(p.stat().st_mode)) for p in (tmp_path / "saliency").rglob("*") if p.is_file())
    assert got == [("config.json", 0o644), ("model.safetensors", 0o644)]


# ----------------------------------------------------------------------------- 3. bounded preset files

from comfyui_atelier.core import prompt as P  # noqa: E402


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def test_deep_and_huge_preset_files_are_named_and_skipped(tmp_path):
    d = tmp_path / "presets"
    d.mkdir()
    (d / "deep.json").write_text(_deep(5000), encoding="utf-8")
    (d / "deepobj.json").write_text('{"a":' * 3000 + "1" + "}" * 3000, encoding="utf-8")
    (d / "huge.json").write_text('{"name": "huge", "positive": "' + "x" * (P.MAX_PRESET_FILE_BYTES + 10) + '"}',
                                 encoding="utf-8")
    (d / "ok.json").write_text('{"name": "fine", "positive": "studio light"}', encoding="utf-8")
    load = P.load_presets([P.SHIPPED_PRESET_DIR, d])
    assert "fine" in load.names and "huge" not in load.names
    shipped = P.load_presets([P.SHIPPED_PRESET_DIR])
    assert not shipped.errors and set(shipped.names) <= set(load.names)
    errs = " | ".join(load.errors)
    assert len(load.errors) == 3, load.errors
    assert str(d / "deep.json") in errs and str(d / "deepobj.json") in errs and str(d / "huge.json") in errs
    assert "nested more than" in errs and "larger than" in errs


def test_depth_scan_ignores_brackets_in_strings():
    text = '{"name": "x", "positive": "' + "[{" * 500 + '\\" [[[ ", "description": "\\\\"}'
    assert P.json_depth_problem(text) is None
    assert P.json_depth_problem(_deep(P.MAX_PRESET_DEPTH)) is None
    assert "line 2" in P.json_depth_problem("\n" + _deep(P.MAX_PRESET_DEPTH + 1))


def test_shipped_presets_are_within_the_bounds():
    files = sorted(P.SHIPPED_PRESET_DIR.glob("*.json"))
    assert files
    for f in files:
        assert f.stat().st_size < P.MAX_PRESET_FILE_BYTES and P.json_depth_problem(f.read_text("utf-8")) is None
        assert P.load_preset_file(f)


# ----------------------------------------------------------------------------- 4. caption trimming cost

import random  # noqa: E402

import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from comfyui_atelier.core import grid as GR  # noqa: E402


def _reference_trim(draw, text, font, width):
    """The trimming the grid did before: drop one character at a time (O(n^2), the result to keep)."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…" if text else ""


def _captions(n, length, seed=0):
    rnd = random.Random(seed)
    words = ["red", "mug", "studio", "white", "background", "soft", "light", "ceramic", "handle", "W", "i", "."]
    out = []
    for _ in range(n):
        s = ""
        while len(s) < length:
            s += rnd.choice(words) + " "
        out.append(s[:length])
    return out


@pytest.mark.parametrize("width", [1, 6, 40, 123, 300])
def test_fit_text_matches_the_old_trimming(width):
    font = GR.caption_font(["abc"], 14)
    draw = ImageDraw.Draw(Image.new("RGB", (8, 8)))
    caps = _captions(30, 60, seed=width) + ["", "a", "short", "exactly", "…", "ab…cd"]
    for text in caps:
        assert GR._fit_text(draw, text, font, width) == _reference_trim(draw, text, font, width), text


def test_eight_long_captions_take_few_measurements(monkeypatch):
    caps = _captions(8, 5000, seed=1)
    font = GR.caption_font(caps, 18)
    draw = ImageDraw.Draw(Image.new("RGB", (8, 8)))
    w = 120
    # the old way, on a 300-character head of each caption: the trimmed text is far shorter, so the old
    # loop (longest fitting prefix) gives the same answer on the head as on all 5000 characters
    expected = [_reference_trim(draw, c.strip()[:300], font, w - 4) for c in caps]
    calls = {"n": 0, "chars": 0}
    real = ImageDraw.ImageDraw.textlength

    def counting(self, text, *a, **k):
        calls["n"] += 1
        calls["chars"] += len(text)
        return real(self, text, *a, **k)

    monkeypatch.setattr(ImageDraw.ImageDraw, "textlength", counting)
    got = [GR._fit_text(draw, c.strip(), font, w - 4) for c in caps]
    assert got == expected
    assert all(g.endswith("…") and len(g) < 60 for g in got)
    per_caption = calls["n"] / len(caps)
    assert per_caption <= 2 + 5000 .bit_length() + 1, calls  # ~15 measurements, the old way ~4990
    assert calls["chars"] < 8 * 5000 * 16, calls  # O(n log n) characters measured, not O(n^2)
    calls.update(n=0, chars=0)
    g = GR.make_grid(torch.rand(8, w, w, 3), captions=caps, font_size=18, gap=4)
    assert g.shape[0] == 1 and g.shape[-1] == 3
    assert calls["n"] <= 8 * (3 + 5000 .bit_length() + 1), calls  # the grid's own measurements included
