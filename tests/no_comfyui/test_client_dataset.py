"""Keyed datasets: ids from the table and the file names, never from positions."""
import os
import subprocess
import sys

import pytest

from comfyui_atelier.client.dataset import image_problem, load_dataset
from comfyui_atelier.core.errors import AtelierError
from tests.fixtures import client_data as CD


def test_rows_match_images_by_id(tmp_path):
    ids = [str(i) for i in (24805, 24806, 24807, 24808)]
    cap = CD.make_dataset(tmp_path, ids, extra_cols={"24806": {"seed": "7", "negative": "blurry"}})
    ds = load_dataset(str(tmp_path), str(cap))
    assert ds.ids == ids and not ds.problems
    for r in ds.rows:
        assert os.path.basename(r.image) == f"{r.id}.png" and r.prompt.endswith(r.id)
    assert ds.rows[1].overrides == {"seed": 7, "negative": "blurry"}


def test_missing_image_in_the_middle_shifts_nothing(tmp_path):
    ids = [str(i) for i in range(24800, 24810)]
    cap = CD.make_dataset(tmp_path, ids, missing_images={"24807"}, extra_images=["99999"])
    ds = load_dataset(str(tmp_path), str(cap))
    assert [p.id for p in ds.problems] == ["24807", "99999"]
    assert "no image file for id 24807" in ds.problems[0].reason
    assert "has no row" in ds.problems[1].reason
    assert ds.ids == [i for i in ids if i != "24807"]
    assert all(os.path.basename(r.image) == f"{r.id}.png" and r.prompt.endswith(r.id) for r in ds.rows)
    with pytest.raises(AtelierError, match="24807"):
        load_dataset(str(tmp_path), str(cap), on_problem="fail")


def test_leading_zero_hint(tmp_path):
    cap = CD.make_dataset(tmp_path, ["7"], missing_images={"7"}, extra_images=["0007"])
    ds = load_dataset(str(tmp_path), str(cap))
    assert "0007.png" in ds.problems[0].reason and "leading zeros" in ds.problems[0].reason


def test_jsonl_and_default_captions(tmp_path):
    CD.make_dataset(tmp_path, ["a", "b"], fmt="jsonl", extra_cols={"a": {"seed": 3}})
    ds = load_dataset(str(tmp_path))  # finds captions.jsonl
    assert ds.ids == ["a", "b"] and ds.rows[0].overrides == {"seed": 3}


def test_duplicate_ids_are_fatal(tmp_path):
    cap = CD.make_dataset(tmp_path, ["a", "b"])
    cap.write_text(cap.read_text() + "a,again\n")
    with pytest.raises(AtelierError, match=r"duplicate ids .*id a on lines 2, 4"):
        load_dataset(str(tmp_path), str(cap))


def test_missing_captions_file(tmp_path):
    with pytest.raises(AtelierError, match="does not exist"):
        load_dataset(str(tmp_path), str(tmp_path / "captions.csv"))
    with pytest.raises(AtelierError, match="no captions file found"):
        load_dataset(str(tmp_path))


def test_missing_id_column_and_bad_id(tmp_path):
    (tmp_path / "c.csv").write_text("name,prompt\nx,y\n")
    with pytest.raises(AtelierError, match="no 'id' column"):
        load_dataset(str(tmp_path), str(tmp_path / "c.csv"))
    (tmp_path / "d.csv").write_text("id,prompt\n../x,y\n")
    with pytest.raises(AtelierError, match="cannot be used as a file name"):
        load_dataset(str(tmp_path), str(tmp_path / "d.csv"))


def test_unreadable_and_truncated_images(tmp_path):
    cap = CD.make_dataset(tmp_path, ["ok", "trunc", "junk", "empty"])
    data = (tmp_path / "trunc.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.png").write_bytes(b"hello, not an image at all")
    (tmp_path / "empty.png").write_bytes(b"")
    ds = load_dataset(str(tmp_path), str(cap))
    reasons = {p.id: p.reason for p in ds.problems}
    assert ds.ids == ["ok"]
    assert "truncated PNG" in reasons["trunc"] and "unrecognised header" in reasons["junk"]
    assert "empty" in reasons["empty"]
    if os.name == "posix" and os.geteuid() != 0:
        os.chmod(tmp_path / "ok.png", 0)
        assert "cannot read" in image_problem(str(tmp_path / "ok.png"))


def test_two_files_same_id(tmp_path):
    cap = CD.make_dataset(tmp_path, ["a"])
    CD.write_png(tmp_path / "a.jpg", [[0]])
    with pytest.raises(AtelierError, match="share an id"):
        load_dataset(str(tmp_path), str(cap))


def test_client_imports_without_torch():
    code = ("import sys\n"
            "class _Poison:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'numpy', 'PIL', 'cv2', 'websocket'):\n"
            "            raise ImportError('blocked ' + name)\n"
            "sys.meta_path.insert(0, _Poison())\n"
            "sys.modules['torch'] = None\n"
            "import comfyui_atelier.client.convert, comfyui_atelier.client.dataset, comfyui_atelier.client.server_api\n"
            "import comfyui_atelier.client.batch, comfyui_atelier.client.progress\n"
            "p = comfyui_atelier.client.batch\n"
            "import argparse; ap = argparse.ArgumentParser(); p.add_parser(ap.add_subparsers())\n"
            "assert comfyui_atelier.client.server_api.ComfyServer('http://h:1').follower() is None\n"
            "print('ok', 'torch' in sys.modules and sys.modules['torch'] is not None)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok False"
