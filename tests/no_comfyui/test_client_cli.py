"""`atelier batch` bad-input handling that needs no server: clear message, non-zero exit."""
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from comfyui_atelier.client import batch
from comfyui_atelier.client.batch import ResultsLog as Manifest, output_valid, patch_prompt, resolve_bindings, seed_for, write_atomic
from comfyui_atelier.client.dataset import Row
from tests.fixtures import client_data as CD

DATA = Path(__file__).resolve().parents[1] / "data"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args, timeout=60):
    code = "import sys; from comfyui_atelier.client.batch import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def dead_server():
    return f"http://127.0.0.1:{_free_port()}"


def test_missing_captions_file(tmp_path, dead_server):
    (tmp_path / "imgs").mkdir()
    r = _cli("batch", DATA / "client_invert.json", "--server", dead_server, "--images", tmp_path / "imgs",
             "--captions", tmp_path / "nope.csv", "--out", tmp_path / "out")
    assert r.returncode == 2 and "captions file" in r.stderr and "does not exist" in r.stderr


def test_duplicate_ids(tmp_path, dead_server):
    cap = CD.make_dataset(tmp_path / "d", ["1", "2"])
    cap.write_text(cap.read_text() + "2,dup\n")
    r = _cli("batch", DATA / "client_invert.json", "--server", dead_server, "--images", tmp_path / "d",
             "--out", tmp_path / "out")
    assert r.returncode == 2 and "duplicate ids" in r.stderr and "id 2 on lines 3, 4" in r.stderr


def test_missing_image_with_fail_policy(tmp_path, dead_server):
    CD.make_dataset(tmp_path / "d", ["1", "2", "3"], missing_images={"2"})
    r = _cli("batch", DATA / "client_invert.json", "--server", dead_server, "--images", tmp_path / "d",
             "--out", tmp_path / "out", "--on-missing", "fail")
    assert r.returncode == 2 and "no image file for id 2" in r.stderr


def test_server_unreachable(tmp_path, dead_server):
    CD.make_dataset(tmp_path / "d", ["1"])
    r = _cli("batch", DATA / "client_invert.json", "--server", dead_server, "--images", tmp_path / "d",
             "--out", tmp_path / "out")
    assert r.returncode == 3 and "cannot reach any ComfyUI server" in r.stderr and dead_server in r.stderr


def test_bad_workflow_file(tmp_path, dead_server):
    CD.make_dataset(tmp_path / "d", ["1"])
    r = _cli("batch", tmp_path / "nope.json", "--server", dead_server, "--images", tmp_path / "d",
             "--out", tmp_path / "out")
    assert r.returncode in (2, 3)  # the server check may come first; either way a clear message
    assert "error:" in r.stderr


def test_convert_offline(tmp_path):
    r = _cli("convert", DATA / "client_invert.json", "--object-info", DATA / "object_info_pinned.json",
             "-o", tmp_path / "api.json")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "api.json").read_text()) == json.loads((DATA / "client_invert_api.json").read_text())


# ----------------------------------------------------------------- scheduler building blocks

INFO = json.loads((DATA / "object_info_pinned.json").read_text())
DEFAULT_GRAPH = json.loads((DATA / "client_default_graph.json").read_text())


def test_auto_bindings_follow_sampler_links():
    from comfyui_atelier.client.convert import ui_to_api
    api = ui_to_api(DEFAULT_GRAPH, INFO)
    b = resolve_bindings(api, INFO, [])
    assert b.get("prompt") == [("6", "text")] and b.get("negative") == [("7", "text")]
    assert b.get("seed") == [("3", "seed")] and not b.get("image")
    b2 = resolve_bindings(api, INFO, ["prompt=7.text", "steps=KSampler.steps"])
    assert b2.get("prompt") == [("7", "text")] and b2.get("steps") == [("3", "steps")]
    with pytest.raises(batch.AtelierError, match="has no input 'nope'"):
        resolve_bindings(api, INFO, ["prompt=6.nope"])
    with pytest.raises(batch.AtelierError, match="not in the workflow"):
        resolve_bindings(api, INFO, ["prompt=99.text"])


def test_patch_prompt_per_row():
    from comfyui_atelier.client.convert import ui_to_api
    api = ui_to_api(DEFAULT_GRAPH, INFO)
    b = resolve_bindings(api, INFO, [])
    row = Row("24807", None, "a red mug", {"seed": 5, "negative": "blurry", "3.steps": 4})
    template = json.loads(json.dumps(api))
    p, applied = patch_prompt(api, b, row, image_name=None, seed_mode="workflow", seed_base=0,
                              server_prefix="atelier_batch", object_info=INFO)
    assert api == template  # only copies were written to, at every level
    assert all(p[nid] is not api[nid] and p[nid]["inputs"] is not api[nid]["inputs"] for nid in api)
    assert p["6"]["inputs"]["text"] == "a red mug" and p["7"]["inputs"]["text"] == "blurry"
    assert p["3"]["inputs"]["seed"] == 5 and p["3"]["inputs"]["steps"] == 4
    assert p["9"]["inputs"]["filename_prefix"] == "atelier_batch/24807"
    assert api["6"]["inputs"]["text"] != "a red mug"  # the template is untouched
    p2, _ = patch_prompt(api, b, Row("24808", None, "x"), image_name=None, seed_mode="id", seed_base=0,
                         server_prefix="", object_info=INFO)
    assert p2["3"]["inputs"]["seed"] == seed_for("24808", 0) != seed_for("24807", 0)


def test_manifest_ignores_torn_line_and_last_line_wins(tmp_path):
    path = tmp_path / "m.jsonl"
    write_atomic(str(tmp_path / "a.png"), (DATA.parent.parent / "example_inputs/line2product_dataset/mug_001.png").read_bytes()
                 if (DATA.parent.parent / "example_inputs/line2product_dataset/mug_001.png").exists() else b"\x89PNG\r\n\x1a\nIEND")
    size = (tmp_path / "a.png").stat().st_size
    path.write_text(json.dumps({"id": "a", "status": "failed"}) + "\n"
                    + json.dumps({"id": "a", "status": "done", "outputs": [{"path": "a.png", "size": size}]}) + "\n"
                    + '{"id": "b", "stat')
    m = Manifest(str(path))
    assert m.bad_lines == 1 and set(m.records) == {"a"} and m.records["a"]["status"] == "done"
    assert output_valid(m.records["a"], str(tmp_path))
    m.write({"id": "b", "status": "failed"})
    m.close()
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1]) == {"id": "b", "status": "failed"}  # starts on a fresh line
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # damaged output -> not done any more
    assert not output_valid(m.records["a"], str(tmp_path))
    assert not list(tmp_path.glob("*.atelier-tmp"))


def test_scheduler_hands_out_a_job_that_failed_everywhere():
    from comfyui_atelier.client.batch import Bindings, Runner, ServerState as _ServerState
    from comfyui_atelier.client.server_api import ComfyServer
    from comfyui_atelier.client.progress import ProgressBar
    a, b = _ServerState(ComfyServer("http://127.0.0.1:1")), _ServerState(ComfyServer("http://127.0.0.1:2"))
    a.up = b.up = True
    cfg = batch.BatchConfig(workflow={}, servers=[], out_dir=".")
    r = Runner(cfg, [Row("x", None, None), Row("y", None, None)], {}, Bindings(), [a, b], None,
               ProgressBar(2, enabled=False), {}, {}, print)
    r.queue[0].avoid = {a.server.url, b.server.url}
    r.queue[1].avoid = {a.server.url}
    assert r.next_job(a).row.id == "x"  # y prefers b; x failed on every server that is up
    assert r.next_job(b).row.id == "y"


def test_text_only_dataset(tmp_path):
    from comfyui_atelier.client.dataset import load_dataset
    (tmp_path / "c.jsonl").write_text('{"id": "1", "prompt": "a"}\n{"id": "2", "prompt": "b"}\n')
    ds = load_dataset(None, str(tmp_path / "c.jsonl"))
    assert ds.ids == ["1", "2"] and all(r.image is None for r in ds.rows) and not ds.problems


def test_unreadable_image_reported_and_fatal_with_fail_policy(tmp_path, dead_server):
    CD.make_dataset(tmp_path / "d", ["1", "2"])
    (tmp_path / "d" / "2.png").write_bytes(b"GIF? no, just text")
    r = _cli("batch", DATA / "client_invert.json", "--server", dead_server, "--images", tmp_path / "d",
             "--out", tmp_path / "out", "--on-missing", "fail")
    assert r.returncode == 2 and "2: image" in r.stderr and "unrecognised header" in r.stderr


def _atelier(*args, env=None, cwd=None):
    code = "import sys; from comfyui_atelier.client.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=60, env=env, cwd=cwd)


def test_version_is_the_pyproject_version():
    import re
    declared = re.search(r'^version = "([^"]+)"', (DATA.parents[1] / "pyproject.toml").read_text(), re.M).group(1)
    r = _atelier("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"atelier {declared}"


def test_demo_without_a_comfyui_says_so_without_a_traceback(tmp_path):
    import os
    env = dict(os.environ, COMFYUI_PATH=str(tmp_path / "no-comfyui-here"))
    r = _atelier("demo", "--offline", env=env)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "is not a ComfyUI checkout" in r.stderr and "no-comfyui-here" in r.stderr


def test_models_and_demo_default_to_the_same_models_dir(tmp_path, monkeypatch):
    import argparse
    from comfyui_atelier.client import demo, models_cli

    for env in (str(tmp_path / "ComfyUI"), None):
        if env:
            monkeypatch.setenv("COMFYUI_PATH", env)
        else:
            monkeypatch.delenv("COMFYUI_PATH", raising=False)
        monkeypatch.chdir(tmp_path)  # the default must not depend on the current directory
        expected = models_cli.default_models_dir()[0].resolve()
        assert demo._models_dir(argparse.Namespace(models_dir=None, comfyui=None)) == expected
    assert expected == (models_cli.PACK_ROOT / "models").resolve()


_BLOCK_TORCH = ("import sys\n"
                "class _Poison:\n"
                "    def find_spec(self, name, path=None, target=None):\n"
                "        if name.split('.')[0] in ('torch', 'numpy', 'PIL', 'cv2', 'safetensors'):\n"
                "            raise ImportError('blocked ' + name)\n"
                "sys.meta_path.insert(0, _Poison())\n")


def test_atelier_parser_demo_and_downloader_import_with_torch_blocked(tmp_path):
    """Every sub-command registers and the demo prepares its prompt (PoolNet missing: the classical
    backend) with torch, numpy, PIL, cv2 and safetensors unimportable; the tiny-model key layouts too."""
    code = _BLOCK_TORCH + (
        "import json, pathlib\n"
        "from comfyui_atelier.client import cli, demo, demo_models, download, models_cli, train_cli\n"
        "p = cli.build_parser()\n"
        "cmds = p._subparsers._group_actions[0].choices\n"
        "prompt = demo.prepare_prompt(json.loads(demo.WORKFLOW_API.read_text()), image_name='x.png', caption='c',\n"
        "                             seed=1, steps=2, model_files=None, models_dir=pathlib.Path(sys.argv[1]))\n"
        "sal = [n['inputs']['model_name'] for n in prompt.values() if n['class_type'] == 'AtelierSaliencyLoader']\n"
        "print(sorted(cmds), sal, len(demo_models.unet_spec()) > 0)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'PIL', 'cv2')))\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "unavailable" not in r.stderr
    assert r.stdout.strip().splitlines()[-2:] == [
        "['batch', 'convert', 'dataset', 'demo', 'models', 'train-controlnet', 'train-lora', 'train-style'] ['classical'] True", "[]"]
    assert "uses the classical backend" in r.stdout


def test_demo_classical_name_is_the_matting_backends():
    from comfyui_atelier.client import demo
    from comfyui_atelier.core import matting
    assert demo.CLASSICAL_MATTING == matting.CLASSICAL_NAME


def test_demo_fetches_missing_models_verified_with_progress(tmp_path, monkeypatch, capsys):
    """`atelier demo`'s model step through the client downloader: the workflow's models from a local host
    (the manifest's entries pointed there), verified, with a progress line; the optional PoolNet is left out."""
    from comfyui_atelier.client import demo
    from comfyui_atelier.core import manifest as mf
    from tests.fixtures import http_models as HM

    real = mf.load_manifest()
    with HM.serve() as url:
        doc = {"models": [dict(e.raw, url=url + "/good.safetensors", sha256=HM.SHA, size=len(HM.PAYLOAD))
                          if e.kind == "file" and not e.manual_only else e.raw for e in real]}
        monkeypatch.setattr(mf, "load_manifest", lambda: mf.parse(doc))
        assert demo.ensure_models(tmp_path, offline=False) == []
    out, err = capsys.readouterr()
    assert HM.leftovers(tmp_path) == ["checkpoints/v1-5-pruned-emaonly.safetensors",
                                      "controlnet/control_v11p_sd15_lineart_fp16.safetensors"]
    assert "fetch   sd15-base" in out and "absent  poolnet-resnet50" in out
    assert "v1-5-pruned-emaonly.safetensors 100.0%" in err
    assert demo.ensure_models(tmp_path, offline=True) == []  # now present: nothing to fetch
    assert "ok      sd15-base" in capsys.readouterr()[0]
