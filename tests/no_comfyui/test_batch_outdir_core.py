"""`atelier batch` and its output folder: one run per --out (a lock a crash cannot leave stuck),
outputs re-run when the workflow or a row's inputs changed (a fingerprint per manifest line),
NODE.INPUT columns checked against the node's real inputs, and --out / the manifest being
unusable reported as bad input (exit 2, no traceback, nothing half-written).

The servers are in-process fakes of the HTTP client (no ComfyUI needed)."""
from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from comfyui_atelier.client import batch
from tests.fixtures import instant_server as IS
from comfyui_atelier.core.errors import AtelierError


IDS = [f"r{i}" for i in range(6)]


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    monkeypatch.setattr(batch, "ComfyServer", IS.InstantServer)
    monkeypatch.setattr(IS.InstantServer, "gate", None)
    monkeypatch.setattr(IS.InstantServer, "queued", [])
    caps = tmp_path / "captions.jsonl"
    out = tmp_path / "out"

    def write_caps(rows=None):
        rows = rows or [{"id": i, "prompt": f"p{i}"} for i in IDS]
        caps.write_text("".join(json.dumps(r) + "\n" for r in rows))

    write_caps()

    def cfg(**kw):
        base = dict(workflow=IS.empty_image_prompt(), servers=["http://fake:1"], out_dir=str(out), captions=str(caps), inflight=2,
                    retries=0, backoff=0.01, progress=False, use_ws=False, stream=open(os.devnull, "w"))
        base.update(kw)
        return batch.BatchConfig(**base)
    cfg.write_caps = write_caps
    return cfg, out


def _run_bounded(cfg, seconds=30):
    box = {}

    def go():
        try:
            box["res"] = batch.run_batch(cfg)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["exc"] = e
    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "the batch run hung"
    if "exc" in box:
        raise box["exc"]
    return box["res"]


def _cli(cfg, *extra, capsys):
    wf = Path(cfg.captions).parent / "wf_api.json"
    wf.write_text(json.dumps(cfg.workflow))
    code = batch.main(["batch", "--server", "http://fake:1", "--captions", cfg.captions, "--out", cfg.out_dir,
                       "--quiet", "--no-ws", "--retries", "0", *extra, str(wf)])
    return code, capsys.readouterr().err


def _lines(out):
    return [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]


# ============================================================================ 1. one run per --out

def test_second_run_on_the_same_out_is_refused_while_the_first_runs(setup):
    cfg, out = setup
    IS.InstantServer.gate = threading.Event()
    box = {}
    first = threading.Thread(target=lambda: box.setdefault("res", batch.run_batch(cfg())), daemon=True)
    first.start()
    deadline = time.monotonic() + 10
    while not IS.InstantServer.queued and time.monotonic() < deadline:  # the first run is rendering
        time.sleep(0.01)
    assert IS.InstantServer.queued
    with pytest.raises(batch.OutputFolderBusy) as ei:
        batch.run_batch(cfg())
    msg = str(ei.value)
    assert os.path.abspath(cfg().out_dir) in msg and f"pid {os.getpid()}" in msg
    assert socket.gethostname() in msg and "another --out" in msg
    IS.InstantServer.gate.set()
    first.join(20)
    assert box["res"].exit_code == batch.EXIT_OK
    rendered = [rid for rid, _ in IS.InstantServer.queued]
    assert sorted(rendered) == IDS  # every id rendered once: the refused run queued nothing
    # the lock went with the first run: the next one resumes normally
    res = _run_bounded(cfg())
    assert res.exit_code == batch.EXIT_OK and res.count("already done") == 6


def test_cli_busy_folder_exits_2_naming_folder_and_holder(setup, capsys):
    cfg, out = setup
    out.mkdir()
    holder = batch.OutputLock(str(out)).acquire()
    try:
        code, err = _cli(cfg(), capsys=capsys)
    finally:
        holder.release()
    assert code == batch.EXIT_BAD_INPUT == 2
    assert "is in use by another `atelier batch` run" in err and str(out) in err
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in err
    assert "Traceback" not in err
    assert not (out / "manifest.jsonl").exists()  # refused before touching the folder
    assert IS.InstantServer.queued == []


HOLD = ("import sys, time; from comfyui_atelier.client.batch import OutputLock; "
        "OutputLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)")


def test_a_killed_run_does_not_keep_the_folder_locked(setup):
    cfg, out = setup
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(batch.OutputFolderBusy, match=f"pid {proc.pid} "):
            batch.run_batch(cfg())
        os.kill(proc.pid, signal.SIGKILL)  # a crash: no clean-up code runs
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert (out / batch.LOCK_NAME).exists()  # the file stays, the lock does not
    res = _run_bounded(cfg())
    assert res.exit_code == batch.EXIT_OK and sorted(r["id"] for r in _lines(out)) == IDS


def test_dry_run_does_not_need_the_lock(setup):
    cfg, out = setup
    out.mkdir()
    holder = batch.OutputLock(str(out)).acquire()
    try:
        assert batch.run_batch(cfg(dry_run=True)).exit_code == batch.EXIT_OK
    finally:
        holder.release()


# ============================================================================ 2. fingerprints

def test_same_workflow_skips_done_ids(setup, capsys):
    cfg, out = setup
    assert _run_bounded(cfg()).exit_code == batch.EXIT_OK
    fps = {r["id"]: r["fingerprint"] for r in _lines(out)}
    assert all(v.startswith("sha256:") and len(v) == 71 for v in fps.values()) and len(set(fps.values())) == 6
    IS.InstantServer.queued.clear()
    res = _run_bounded(cfg())
    assert res.exit_code == batch.EXIT_OK and res.count("already done") == 6 and res.rerun == []
    assert IS.InstantServer.queued == []
    code, err = _cli(cfg(), capsys=capsys)  # the CLI says nothing about re-runs either
    assert code == 0 and "re-run" not in err


def test_changed_workflow_reruns_every_id_and_says_so(setup, capsys):
    cfg, out = setup
    assert _run_bounded(cfg()).exit_code == batch.EXIT_OK
    old = {r["id"]: r["fingerprint"] for r in _lines(out)}
    IS.InstantServer.queued.clear()
    code, err = _cli(cfg(workflow=IS.empty_image_prompt(color=255)), capsys=capsys)
    assert code == 0, err
    assert "6 ids re-run: the workflow or their inputs changed" in err
    assert sorted(rid for rid, _ in IS.InstantServer.queued) == IDS
    assert all(p["1"]["inputs"]["color"] == 255 for _, p in IS.InstantServer.queued)
    last = {}
    for r in _lines(out):
        last[r["id"]] = r
    assert all(last[i]["status"] == "done" and last[i]["fingerprint"] != old[i] for i in IDS)
    # and now that they match again, nothing runs
    IS.InstantServer.queued.clear()
    res = _run_bounded(cfg(workflow=IS.empty_image_prompt(color=255)))
    assert res.count("already done") == 6 and IS.InstantServer.queued == []


def test_changed_row_input_reruns_only_that_id(setup):
    cfg, out = setup
    rows = [{"id": i, "prompt": f"p{i}", "1.color": 10} for i in IDS]
    cfg.write_caps(rows)
    assert _run_bounded(cfg()).exit_code == batch.EXIT_OK
    rows[2]["1.color"] = 99
    cfg.write_caps(rows)
    IS.InstantServer.queued.clear()
    res = _run_bounded(cfg())
    assert res.rerun == ["r2"] and res.count("already done") == 5
    assert [(rid, p["1"]["inputs"]["color"]) for rid, p in IS.InstantServer.queued] == [("r2", 99)]


def test_changed_input_image_reruns_that_id(setup, tmp_path):
    from tests.fixtures import client_data as CD
    cfg, out = setup
    imgs = tmp_path / "imgs"
    CD.make_dataset(imgs, ["a", "b"])
    info = dict(IS.OBJECT_INFO, LoadImage={"input": {"required": {"image": [["a.png"], {"image_upload": True}]}},
                                        "output": ["IMAGE", "MASK"], "output_name": ["IMAGE", "MASK"],
                                        "output_node": False, "name": "LoadImage"})
    wf = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    IS.InstantServer.upload_image = lambda self, path, name, subfolder=None, overwrite=True, data=None: {"name": name,
                                                                                        "subfolder": subfolder}
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(IS.InstantServer, "object_info", lambda self: info)
            assert _run_bounded(cfg(workflow=wf, images=str(imgs), captions=None)).exit_code == 0
            IS.InstantServer.queued.clear()
            assert _run_bounded(cfg(workflow=wf, images=str(imgs), captions=None)).count("already done") == 2
            CD.write_png(imgs / "b.png", CD.id_image("zz", 16))  # same name, new pixels
            res = _run_bounded(cfg(workflow=wf, images=str(imgs), captions=None))
            assert res.rerun == ["b"] and [rid for rid, _ in IS.InstantServer.queued] == ["b"]
    finally:
        del IS.InstantServer.upload_image


def test_legacy_lines_without_fingerprint_are_kept(setup):
    cfg, out = setup
    assert _run_bounded(cfg()).exit_code == batch.EXIT_OK
    lines = _lines(out)
    for r in lines:
        r.pop("fingerprint")
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    IS.InstantServer.queued.clear()
    res = _run_bounded(cfg(workflow=IS.empty_image_prompt(color=7)))
    assert res.count("already done") == 6 and IS.InstantServer.queued == [] and res.rerun == []


def test_fingerprint_ignores_node_titles_but_not_values():
    b = batch.Bindings()
    row = batch.Row("x", None, None, {}, 1)
    kw = dict(seed_mode="workflow", seed_base=0, server_prefix="atelier_batch", object_info=IS.OBJECT_INFO)
    titled = IS.empty_image_prompt()
    titled["1"]["_meta"] = {"title": "renamed"}
    assert batch.row_fingerprint(IS.empty_image_prompt(), b, row, **kw) == batch.row_fingerprint(titled, b, row, **kw)
    assert titled["1"]["_meta"] == {"title": "renamed"}  # left out of the hash, not out of the template
    assert batch.row_fingerprint(IS.empty_image_prompt(), b, row, **kw) != batch.row_fingerprint(IS.empty_image_prompt(1), b, row, **kw)
    assert batch.row_fingerprint(IS.empty_image_prompt(), b, row, **kw) != batch.row_fingerprint(
        IS.empty_image_prompt(), b, batch.Row("y", None, None, {}, 1), **kw)


def test_fingerprint_of_the_uploaded_bytes_is_the_fingerprint_of_the_file(tmp_path):
    """A job hashes the bytes it read for its upload; a resume hashes the file: the same image, one value."""
    img = tmp_path / "x.png"
    img.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 50)
    prompt = IS.empty_image_prompt()
    b = batch.Bindings(targets={"image": [("1", "width")]})
    row = batch.Row("x", str(img), None, {}, 1)
    kw = dict(seed_mode="workflow", seed_base=0, server_prefix="atelier_batch", object_info=IS.OBJECT_INFO)
    from_file = batch.row_fingerprint(prompt, b, row, **kw)
    assert batch.row_fingerprint(prompt, b, row, image_data=img.read_bytes(), **kw) == from_file
    assert batch.row_fingerprint(prompt, b, row, image_data=img.read_bytes() + b"!", **kw) != from_file


# ============================================================================ 3. NODE.INPUT columns

def test_column_for_an_input_the_node_lacks_is_bad_input(setup, capsys):
    cfg, out = setup
    cfg.write_caps([{"id": i, "prompt": "p", "1.steps": 20} for i in IDS])
    with pytest.raises(AtelierError) as ei:
        batch.run_batch(cfg(dry_run=True))
    msg = str(ei.value)
    assert "column '1.steps'" in msg and "node 1 (EmptyImage) has no input 'steps'" in msg
    assert "width, height, batch_size, color" in msg
    code, err = _cli(cfg(), "--dry-run", capsys=capsys)
    assert code == 2 and "column '1.steps'" in err and "Traceback" not in err
    code, err = _cli(cfg(), capsys=capsys)  # a real run refuses too, before sending anything
    assert code == 2 and IS.InstantServer.queued == []


def test_column_for_an_existing_input_passes(setup, capsys):
    cfg, out = setup
    cfg.write_caps([{"id": i, "prompt": "p", "1.color": 3} for i in IDS])
    code, err = _cli(cfg(), "--dry-run", capsys=capsys)
    assert code == 0, err
    # an input only the API prompt has (not in /object_info) counts as one the node has
    wf = IS.empty_image_prompt()
    wf["1"]["inputs"]["extra_widget"] = 1
    cfg.write_caps([{"id": i, "prompt": "p", "1.extra_widget": 2} for i in IDS])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(batch._convert, "validate_api", lambda *a, **k: [])
        assert batch.run_batch(cfg(workflow=wf, dry_run=True)).exit_code == 0


def test_bad_column_on_the_save_node_lists_its_inputs(setup):
    cfg, out = setup
    cfg.write_caps([{"id": "r0", "2.prefix": "x"}])
    with pytest.raises(AtelierError, match=r"node 2 \(SaveImage\) has no input 'prefix'; its inputs are "
                                           r"images, filename_prefix"):
        batch.run_batch(cfg(dry_run=True))


# ============================================================================ 4. --out / manifest unusable

def test_out_is_an_existing_file(setup, capsys):
    cfg, out = setup
    out.write_bytes(b"keep me")
    code, err = _cli(cfg(), capsys=capsys)
    assert code == 2 and f"--out {out} is an existing file, not a folder" in err and "Traceback" not in err
    assert out.read_bytes() == b"keep me" and IS.InstantServer.queued == []
    code, err = _cli(cfg(), "--dry-run", capsys=capsys)
    assert code == 2 and "is an existing file" in err


def test_out_below_a_file(setup, capsys):
    cfg, out = setup
    out.write_bytes(b"x")
    code, err = _cli(cfg(out_dir=str(out / "sub" / "deeper")), capsys=capsys)
    assert code == 2 and "which is a file" in err and "Traceback" not in err


def test_out_cannot_be_created(setup, capsys, monkeypatch):
    cfg, out = setup
    target = out / "a" / "b"
    real = os.mkdir

    def ro_mkdir(path, *a, **k):
        if os.fspath(path).endswith(os.sep + "b"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(path, *a, **k)
    monkeypatch.setattr(os, "mkdir", ro_mkdir)
    code, err = _cli(cfg(out_dir=str(target)), capsys=capsys)
    monkeypatch.undo()
    assert code == 2 and "cannot create the output folder" in err and "Read-only file system" in err
    assert "Traceback" not in err
    assert not out.exists()  # the folders made on the way were removed again


def test_out_not_writable(setup, capsys, monkeypatch):
    cfg, out = setup
    out.mkdir()
    real = os.open

    def ro_open(path, flags, *a, **k):
        if os.fspath(path).startswith(str(out)) and flags & os.O_CREAT:
            raise OSError(errno.EACCES, "Permission denied")
        return real(path, flags, *a, **k)
    with monkeypatch.context() as mp:  # only os.open: the fixture's patches stay
        mp.setattr(os, "open", ro_open)
        code, err = _cli(cfg(), capsys=capsys)
    assert code == 2 and "cannot write in the output folder" in err and "Permission denied" in err
    assert "Traceback" not in err and os.listdir(out) == [] and IS.InstantServer.queued == []


def test_manifest_path_is_a_folder(setup, capsys, tmp_path):
    cfg, out = setup
    (tmp_path / "m").mkdir()
    code, err = _cli(cfg(), "--manifest", str(tmp_path / "m"), capsys=capsys)
    assert code == 2 and "cannot open the manifest" in err and "Traceback" not in err
    assert IS.InstantServer.queued == []


def test_a_file_system_without_locks_warns_and_runs(setup, monkeypatch):
    cfg, out = setup

    def nolock(fd):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(batch.OutputLock, "_lock", staticmethod(nolock))
    logged = []
    monkeypatch.setattr(batch.OutputLock, "acquire", lambda self, log=None, _a=batch.OutputLock.acquire:
                        _a(self, lambda m: (logged.append(m), log and log(m))))
    res = _run_bounded(cfg())
    assert res.exit_code == batch.EXIT_OK and res.count("done") == 6
    assert any("cannot lock the output folder" in m and "No locks available" in m for m in logged)


# ============================================================================ folders of earlier versions

def test_output_folder_from_before_the_split_resumes(setup, tmp_path):
    """tests/data/batch_manifest_before_split.jsonl was written by client/batch.py before it was split into
    bindings / results_log / outdir / scheduler (commit 5abd68a) for these captions and InstantServer's PNG:
    the new code must take every id as done (same files, same fingerprints) and re-run only a changed row."""
    cfg, out = setup
    rows = [{"id": i, "prompt": f"p{i}", "seed": 100 + k} for k, i in enumerate(IDS)]
    cfg.write_caps(rows)
    out.mkdir()
    (out / "manifest.jsonl").write_bytes((Path(__file__).parents[1] / "data" / "batch_manifest_before_split.jsonl")
                                         .read_bytes())
    for i in IDS:
        (out / f"{i}.png").write_bytes(IS.PNG)
    res = _run_bounded(cfg(verify_hash=True))
    assert res.exit_code == batch.EXIT_OK and res.count("already done") == 6 and res.rerun == []
    assert IS.InstantServer.queued == []
    rows[3]["1.color"] = 7  # that row's prompt changes: its fingerprint differs from the recorded one
    cfg.write_caps(rows)
    res = _run_bounded(cfg())
    assert res.rerun == ["r3"] and [rid for rid, _ in IS.InstantServer.queued] == ["r3"]
