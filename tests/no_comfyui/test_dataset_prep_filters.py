"""Dataset filters against hand-made cases: data-juicer's image_shape_filter / image_aspect_ratio_filter
semantics (inclusive bounds, any/all, no image = kept), reports naming filter, measured value and bound."""
from __future__ import annotations

import struct
import time
import zlib

import pytest
from PIL import Image

from comfyui_atelier.core import dataset_prep as dp
from comfyui_atelier.core.errors import AtelierError


def run(samples, *rules):
    return dp.filter_sizes(samples, list(rules))


def test_shape_bounds_are_inclusive_as_in_data_juicer():
    rule = dp.ShapeRule(min_width=1024, min_height=1024, max_width=2048, max_height=2048)
    r = run({"edge_min": [(1024, 1024)], "edge_max": [(2048, 2048)], "narrow": [(1023, 1500)],
             "short": [(1500, 1023)], "wide": [(2049, 1500)], "tall": [(1500, 2049)]}, rule)
    assert r.kept == ["edge_max", "edge_min"]
    why = {d.id: d for d in r.dropped}
    assert set(why) == {"narrow", "short", "wide", "tall"}
    assert why["narrow"].details == [{"image": "image 0", "measured": "1023x1500", "bound": "min_width 1024"}]
    assert why["short"].details[0]["bound"] == "min_height 1024"
    assert why["wide"].details[0]["bound"] == "max_width 2048"
    assert why["tall"].details[0]["bound"] == "max_height 2048"
    assert all(d.step == "image_shape_filter" for d in r.dropped)


def test_aspect_ratio_is_width_over_height_inclusive():
    rule = dp.RatioRule(0.5, 2.0)
    r = run({"r2": [(1000, 500)], "r05": [(500, 1000)], "over": [(1001, 500)], "under": [(499, 1000)],
             "square": [(7, 7)]}, rule)
    assert r.kept == ["r05", "r2", "square"]
    why = {d.id: d for d in r.dropped}
    assert why["over"].details[0]["bound"] == "max_ratio 2" and "2.002" in why["over"].details[0]["measured"]
    assert why["under"].details[0]["bound"] == "min_ratio 0.5" and "0.499" in why["under"].details[0]["measured"]


def test_defaults_match_data_juicer_for_shape_and_the_story_pipeline_for_ratio():
    assert (dp.ShapeRule().min_width, dp.ShapeRule().max_width) == (1, dp.MAXSIZE)
    assert (dp.RatioRule().min_ratio, dp.RatioRule().max_ratio) == (0.5, 2.0)
    assert dp.ShapeRule().any_or_all == dp.RatioRule().any_or_all == "any"
    r = run({"tiny": [(1, 1)], "huge": [(60000, 60000)]}, dp.ShapeRule())
    assert r.kept == ["huge", "tiny"]


@pytest.mark.parametrize("rule_any, rule_all, sizes", [
    (dp.ShapeRule(min_width=1024, min_height=1024), dp.ShapeRule(min_width=1024, min_height=1024, any_or_all="all"),
     [(1024, 1024), (512, 512)]),
    (dp.RatioRule(0.5, 2.0), dp.RatioRule(0.5, 2.0, any_or_all="all"), [(500, 500), (2000, 500)]),
])
def test_any_keeps_a_sample_all_drops_when_one_of_its_images_fails(rule_any, rule_all, sizes):
    kept_any = run({"s": sizes}, rule_any)
    kept_all = run({"s": sizes}, rule_all)
    assert kept_any.kept == ["s"] and not kept_any.dropped
    assert kept_all.kept == [] and kept_all.dropped[0].id == "s"
    assert "all: not all images passed" in kept_all.dropped[0].reason
    assert [d["image"] for d in kept_all.dropped[0].details] == ["image 1"]
    # and both agree when every image fails
    bad = [(10, 10), (10, 10)] if isinstance(rule_any, dp.ShapeRule) else [(40, 10), (10, 40)]
    assert run({"s": bad}, rule_any).kept == run({"s": bad}, rule_all).kept == []
    assert "any: no image passed" in run({"s": bad}, rule_any).dropped[0].reason


def test_a_sample_without_images_is_kept_and_the_first_failing_filter_is_reported():
    r = run({"empty": [], "both_bad": [(100, 1000)]}, dp.ShapeRule(min_width=512), dp.RatioRule(0.5, 2.0))
    assert r.kept == ["empty"]
    assert r.dropped[0].step == "image_shape_filter"  # fails the ratio too; filters run in order
    r2 = run({"both_bad": [(600, 6000)]}, dp.ShapeRule(min_width=512), dp.RatioRule(0.5, 2.0))
    assert r2.dropped[0].step == "image_aspect_ratio_filter"


def test_impossible_bounds_and_unknown_strategy_raise():
    with pytest.raises(AtelierError, match="min_width 10 is larger than max_width 5"):
        run({"a": [(7, 7)]}, dp.ShapeRule(min_width=10, max_width=5))
    with pytest.raises(AtelierError, match="range 3..2 is empty"):
        run({"a": [(7, 7)]}, dp.RatioRule(3.0, 2.0))
    with pytest.raises(AtelierError, match="any_or_all"):
        run({"a": [(7, 7)]}, dp.ShapeRule(any_or_all="most"))


def _png_header_only(path, w, h):
    """A PNG whose IHDR declares w x h but whose pixel data is missing: readable only as a header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_file_sizes_come_from_headers_and_unreadable_files_are_dropped(tmp_path):
    Image.new("RGB", (300, 200)).save(tmp_path / "a.png")
    Image.new("RGB", (90, 200)).save(tmp_path / "b.jpg")
    _png_header_only(tmp_path / "big.png", 12000, 9000)  # 108 MP: decoding it would take seconds and 300 MB
    (tmp_path / "junk.png").write_bytes(b"not an image")
    t = time.perf_counter()
    assert dp.read_size(str(tmp_path / "big.png")) == (12000, 9000)
    assert time.perf_counter() - t < 0.5
    seen = []
    samples = {p.stem: [str(p)] for p in tmp_path.iterdir()}
    r = dp.filter_files(samples, [dp.ShapeRule(min_width=100), dp.RatioRule()], progress=lambda d, n: seen.append((d, n)))
    assert r.kept == ["a", "big"]
    why = {d.id: d for d in r.dropped}
    assert why["b"].step == "image_shape_filter" and "b.jpg 90x200 is outside min_width 100" in why["b"].reason
    assert why["junk"].step == "unreadable" and "junk.png" in why["junk"].reason
    assert seen[-1] == (4, 4)
    d = r.to_dict()
    assert d["kept"] == ["a", "big"] and {x["id"] for x in d["dropped"]} == {"b", "junk"}
    assert [x["filter"] for x in d["rules"]] == ["image_shape_filter", "image_aspect_ratio_filter"]
    assert "kept 2 of 4; dropped 2" in r.text()
