"""Export to the trainers' layouts, keyed by id: ControlNet train.jsonl and LoRA images + .txt + metadata.jsonl;
a missing caption / control image drops only its id; re-runs skip unchanged ids; a failure leaves no half file."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from comfyui_atelier.core import dataset_prep as dp
from comfyui_atelier.core.errors import AtelierError


def pixels(value: int, h: int = 24, w: int = 32) -> np.ndarray:
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = value
    a[h // 2:, :, 1] = 255 - value
    return a


def jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_controlnet_layout_keyed_by_id_with_drops(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(pixels(10)).save(src / "b.jpg", quality=95)
    items = [dp.Item("c", pixels(30), "third", pixels(33)),
             dp.Item("a", pixels(20), "first", pixels(22)),
             dp.Item("b", str(src / "b.jpg"), "second", pixels(11)),
             dp.Item("d", pixels(40), None, pixels(44)),     # no caption
             dp.Item("e", pixels(50), "fifth", None)]         # no control image
    out = tmp_path / "cn"
    rep = dp.export_dataset(items, str(out), "controlnet")
    rows = jsonl(out / "train.jsonl")
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    assert rows[0] == {"id": "a", "text": "first", "image": "images/a.png", "conditioning_image": "conditioning/a.png"}
    for r in rows:  # each id carries its own pixels, never a neighbour's
        img = np.asarray(Image.open(out / r["image"]))
        cond = np.asarray(Image.open(out / r["conditioning_image"]))
        want = {"a": (20, 22), "b": (10, 11), "c": (30, 33)}[r["id"]]
        assert abs(int(img[0, 0, 0]) - want[0]) <= 3 and int(cond[0, 0, 0]) == want[1]
        assert img.shape == (24, 32, 3)
    assert {d.id: d.step for d in rep.dropped} == {"d": "no caption", "e": "no conditioning image"}
    assert sorted(os.listdir(out / "images")) == ["a.png", "b.png", "c.png"]  # the jpg became a PNG
    assert not [f for f in os.listdir(out) if ".tmp" in f]


def test_lora_layout_copies_files_and_writes_side_cars_and_metadata(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(pixels(10)).save(src / "x1.jpg")
    Image.fromarray(pixels(20)).save(src / "x2.webp")
    items = [dp.Item("x2", str(src / "x2.webp"), "a cat, iflyskin"), dp.Item("x1", str(src / "x1.jpg"), "a dog"),
             dp.Item("x3", pixels(5), "   ")]
    out = tmp_path / "lora"
    rep = dp.export_dataset(items, str(out), "lora")
    assert (out / "images" / "x1.jpg").read_bytes() == (src / "x1.jpg").read_bytes()  # copied as-is
    assert (out / "images" / "x2.webp").read_bytes() == (src / "x2.webp").read_bytes()
    assert (out / "images" / "x2.txt").read_text(encoding="utf-8") == "a cat, iflyskin"
    assert jsonl(out / "images" / "metadata.jsonl") == [{"file_name": "x1.jpg", "text": "a dog"},
                                                       {"file_name": "x2.webp", "text": "a cat, iflyskin"}]
    assert [d.id for d in rep.dropped] == ["x3"] and not (out / "images" / "x3.png").exists()
    assert rep.index == str(out / "images" / "metadata.jsonl")


def test_rerun_skips_unchanged_ids_rewrites_changed_and_removes_stale(tmp_path):
    out = str(tmp_path / "cn")
    items = [dp.Item(i, pixels(v), f"cap {i}", pixels(v + 1)) for i, v in (("a", 1), ("b", 2), ("c", 3))]
    first = dp.export_dataset(items, out, "controlnet")
    assert first.written == ["a", "b", "c"] and first.unchanged == []
    mtime = os.stat(os.path.join(out, "images", "a.png")).st_mtime_ns
    again = dp.export_dataset(items, out, "controlnet")
    assert again.written == [] and again.unchanged == ["a", "b", "c"]
    assert os.stat(os.path.join(out, "images", "a.png")).st_mtime_ns == mtime
    changed = [dp.Item("a", pixels(1), "new caption", pixels(2)), dp.Item("b", pixels(99), "cap b", pixels(3))]
    third = dp.export_dataset(changed, out, "controlnet")  # c left the set
    assert third.written == ["a", "b"] and third.unchanged == []
    assert [r["text"] for r in jsonl(os.path.join(out, "train.jsonl"))] == ["new caption", "cap b"]
    assert not os.path.exists(os.path.join(out, "images", "c.png"))
    assert not os.path.exists(os.path.join(out, "conditioning", "c.png"))
    # a file removed by hand is written again
    os.unlink(os.path.join(out, "conditioning", "b.png"))
    assert dp.export_dataset(changed, out, "controlnet").written == ["b"]
    with pytest.raises(AtelierError, match="already holds a controlnet export"):
        dp.export_dataset(changed, out, "lora")


def test_failure_mid_export_leaves_the_previous_index_and_no_partial_files(tmp_path, monkeypatch):
    out = str(tmp_path / "cn")
    items = [dp.Item(i, pixels(v), f"cap {i}", pixels(v)) for i, v in (("a", 1), ("b", 2))]
    dp.export_dataset(items, out, "controlnet")
    before = open(os.path.join(out, "train.jsonl")).read()
    real = dp.save_png
    calls = []

    def flaky(a, dest):
        calls.append(dest)
        if len(calls) == 3:  # the third PNG: image of 'c'... fails half-way
            with dp.atomic_path(dest, suffix=".tmp.png") as tmp:
                open(tmp, "wb").write(b"\x89PNG half")
                raise OSError(28, "No space left on device")
        real(a, dest)

    monkeypatch.setattr(dp, "save_png", flaky)
    more = items + [dp.Item(i, pixels(v), f"cap {i}", pixels(v)) for i, v in (("c", 3), ("d", 4))]
    more[0] = dp.Item("a", pixels(7), "changed a", pixels(7))
    with pytest.raises(OSError):
        dp.export_dataset(more, out, "controlnet")
    assert open(os.path.join(out, "train.jsonl")).read() == before
    leftovers = [f for d, _, fs in os.walk(out) for f in fs if ".tmp" in f]
    assert leftovers == []
    assert not os.path.exists(os.path.join(out, "images", "c.png"))
    monkeypatch.setattr(dp, "save_png", real)
    rep = dp.export_dataset(more, out, "controlnet")  # resume: 'a' (done before the failure) is not redone
    assert rep.unchanged == ["a", "b"] and rep.written == ["c", "d"]
    assert [r["id"] for r in jsonl(os.path.join(out, "train.jsonl"))] == ["a", "b", "c", "d"]


def test_bad_ids_and_layouts_are_refused(tmp_path):
    for bad in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(AtelierError, match="cannot be used as a file name"):
            dp.export_dataset([dp.Item(bad, pixels(1), "c")], str(tmp_path / "o"), "lora")
    with pytest.raises(AtelierError, match="appears twice"):
        dp.export_dataset([dp.Item("a", pixels(1), "c"), dp.Item("a", pixels(2), "d")], str(tmp_path / "o"), "lora")
    with pytest.raises(AtelierError, match="layout 'kohya' is not known"):
        dp.export_dataset([], str(tmp_path / "o"), "kohya")


def test_control_image_uses_the_pack_conditioners_at_the_source_size():
    img = np.full((40, 60, 3), 255, np.uint8)
    img[10:30, 20:40] = 0
    edges = dp.control_image(img, "canny", low=100, high=200)
    assert edges.shape == (40, 60, 3) and edges.dtype == np.uint8
    assert edges[12:28, 18:22].max() == 255 and edges[0, 0].max() == 0 and edges[15:25, 25:35].max() == 0 and (edges[..., 0] == edges[..., 2]).all()
    lines = dp.control_image(img, "lineart")
    assert lines.shape == (40, 60, 3) and lines.max() == 255 and lines[0, 0].max() == 0
    with pytest.raises(AtelierError, match="hed"):
        dp.control_image(img, "hed")


@pytest.mark.parametrize("template, trigger, want", [
    ("{caption}", "", "a red cat"),
    ("{caption}, iflyskin", "", "a red cat, iflyskin"),
    ("{trigger}, {caption}", "sks", "sks, a red cat"),
    ("{caption}, {trigger}", "", "a red cat"),
    ("photo {id}: {caption}", "", "photo 007: a red cat"),
])
def test_templates_and_trigger_words(template, trigger, want):
    assert dp.apply_template(" a red cat ", template, id="007", trigger=trigger) == want


def test_bad_templates_say_how_to_fix():
    with pytest.raises(AtelierError, match="no {caption} field"):
        dp.apply_template("x", "iflyskin")
    with pytest.raises(AtelierError, match="only the fields"):
        dp.apply_template("x", "{caption} {style}")
