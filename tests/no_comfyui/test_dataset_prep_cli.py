"""`atelier dataset filter|caption|control|export` end to end in subprocesses (as a user runs them):
ids from file stems, the report of what was dropped and why, resume, exit 2 with a clear message,
(the parser importing with torch blocked: test_client_cli.py)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.fixtures import blip_models as BM

SIZES = {"ok1": (64, 64), "ok2": (96, 64), "small": (32, 64), "wide": (200, 64), "tall": (64, 200)}


def atelier_cmd(*args, timeout=180):
    code = "import sys; from comfyui_atelier.client.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


class Result:
    def __init__(self, returncode, out, err):
        self.returncode, self.stdout, self.stderr = returncode, out, err


@pytest.fixture()
def atelier_here(capsys):
    """The same command in this process (torch and transformers imported once for the whole file)."""
    from comfyui_atelier.client.cli import main

    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return Result(code, out, err)
    return run


def jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


@pytest.fixture()
def photos(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    for i, (sid, (w, h)) in enumerate(sorted(SIZES.items())):
        a = np.full((h, w, 3), 255, np.uint8)
        a[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = (40 * i, 0, 0)  # a dark box: Canny finds its border
        Image.fromarray(a).save(d / f"{sid}.png")
    return d


def test_filter_control_export_pipeline_with_resume(tmp_path, photos, atelier_here):
    """The first stage runs as a user runs it (a subprocess); the others in this process."""
    report = tmp_path / "kept.json"
    r = atelier_cmd("dataset", "filter", photos, "--min-width", 64, "--min-height", 64, "-o", report)
    assert r.returncode == 0, r.stderr
    rep = json.loads(report.read_text())
    assert rep["kept"] == ["ok1", "ok2"]
    why = {d["id"]: d for d in rep["dropped"]}
    assert why["small"]["step"] == "image_shape_filter" and why["small"]["details"][0]["bound"] == "min_width 64"
    assert why["wide"]["step"] == "image_aspect_ratio_filter" and "3.125" in why["wide"]["details"][0]["measured"]
    assert why["tall"]["details"][0]["bound"] == "min_ratio 0.5"
    assert "kept 2 of 5; dropped 3" in r.stdout
    atelier = atelier_here

    cond = tmp_path / "cond"
    r = atelier("dataset", "control", photos, "--ids", report, "-o", cond, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in cond.glob("*.png")) == ["ok1.png", "ok2.png"]
    edges = np.asarray(Image.open(cond / "ok2.png"))
    assert edges.shape == (64, 96, 3) and edges.max() == 255 and edges[0, 0].max() == 0
    again = atelier("dataset", "control", photos, "--ids", report, "-o", cond)
    assert "2 unchanged, 0 to make" in again.stdout

    # captions: side-cars for one id only, so ok2 is dropped by the export (and named with the reason)
    (photos / "ok1.txt").write_text("a red box, iflyskin\n", encoding="utf-8")
    out = tmp_path / "cn"
    r = atelier("dataset", "export", photos, "--layout", "controlnet", "--ids", report, "--conditioning", cond, "-o", out)
    assert r.returncode == 0, r.stderr
    assert jsonl(out / "train.jsonl") == [{"id": "ok1", "text": "a red box, iflyskin", "image": "images/ok1.png",
                                           "conditioning_image": "conditioning/ok1.png"}]
    assert "ok2: no caption" in r.stdout
    assert (out / "conditioning" / "ok1.png").read_bytes() == (cond / "ok1.png").read_bytes()

    # a captions table keyed by id (any row order) replaces the side-cars
    table = tmp_path / "caps.csv"
    table.write_text("id,text\nok2,second box\nok1,first box\n", encoding="utf-8")
    r = atelier("dataset", "export", photos, "--layout", "lora", "--ids", report, "--captions", table, "-o", tmp_path / "lora")
    assert r.returncode == 0, r.stderr
    assert jsonl(tmp_path / "lora" / "images" / "metadata.jsonl") == [
        {"file_name": "ok1.png", "text": "first box"}, {"file_name": "ok2.png", "text": "second box"}]
    assert (tmp_path / "lora" / "images" / "ok2.txt").read_text() == "second box"
    r = atelier("dataset", "export", photos, "--layout", "lora", "--ids", report, "--captions", table, "-o", tmp_path / "lora")
    assert "(0 written, 2 unchanged)" in r.stdout


def test_caption_stage_with_template_and_resume(tmp_path, photos, atelier_here):
    atelier = atelier_here
    model = BM.build_blip(tmp_path / "captioners" / "tiny-blip")
    caps = tmp_path / "captions.jsonl"
    args = ("dataset", "caption", photos, "--model", model, "--prompt", "a keyboard skin of",
            "--template", "{caption}, iflyskin", "--batch-size", 2, "--max-new-tokens", 4, "--device", "cpu", "-o", caps)
    r = atelier(*args)
    assert r.returncode == 0, r.stderr
    rows = jsonl(caps)
    assert [x["id"] for x in rows] == sorted(SIZES)
    for x in rows:
        assert x["caption"].startswith("a keyboard skin of")
        assert x["text"] == x["caption"] + ", iflyskin"
    r2 = atelier(*args)
    assert "5 already captioned, 0 to caption" in r2.stdout and jsonl(caps) == rows
    r3 = atelier(*args[:-2], "--trigger", "x", "--template", "{trigger} {caption}", "-o", caps)  # new settings: redone
    assert "0 already captioned, 5 to caption" in r3.stdout
    assert all(x["text"] == "x " + x["caption"] for x in jsonl(caps))
    # and the export reads them by id
    r = atelier("dataset", "export", photos, "--layout", "lora", "--captions", caps, "-o", tmp_path / "lora")
    assert r.returncode == 0, r.stderr
    meta = jsonl(tmp_path / "lora" / "images" / "metadata.jsonl")
    assert meta == [{"file_name": f"{x['id']}.png", "text": x["text"]} for x in jsonl(caps)]


@pytest.mark.parametrize("args, message", [
    (("filter", "{photos}", "--min-width", "100", "--max-width", "50", "-o", "{tmp}/r.json"),
     "min_width 100 is larger than max_width 50"),
    (("export", "{photos}", "--layout", "controlnet", "-o", "{tmp}/o"), "needs control images"),
    (("export", "{tmp}/nowhere", "--layout", "lora", "-o", "{tmp}/o"), "does not exist"),
    (("caption", "{photos}", "--model", "{tmp}", "-o", "{tmp}/c.jsonl"), "is not a BLIP model folder"),
    (("caption", "{photos}", "--model", "{tmp}", "--template", "no field", "-o", "{tmp}/c.jsonl"), "no {caption} field"),
    (("filter", "{photos}", "--ids", "{tmp}/missing.json", "-o", "{tmp}/r.json"), "cannot be read"),
])
def test_errors_exit_2_with_a_message_and_no_traceback(tmp_path, photos, args, message):
    r = atelier_cmd("dataset", *[a.format(photos=photos, tmp=tmp_path) for a in args])
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.startswith("atelier dataset:")


# The parser (with `dataset`) importing with torch/numpy/PIL/cv2 blocked is checked by
# test_client_cli.py::test_atelier_parser_demo_and_downloader_import_with_torch_blocked.
