"""`atelier batch` when this machine cannot write (disk full): the run ends with a clear message and
its own exit code, no worker dies silently, the manifest never holds a torn line, Ctrl-C is 130.

The servers are in-process fakes of the HTTP client (no ComfyUI needed); the disk is a patched
writer raising OSError(ENOSPC)."""
from __future__ import annotations

import errno
import json
import os
import threading
import time

import pytest

from comfyui_atelier.client import batch, scheduler
from tests.fixtures import instant_server as IS

PROMPT = IS.empty_image_prompt()


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    monkeypatch.setattr(batch, "ComfyServer", IS.InstantServer)
    monkeypatch.setattr(IS.InstantServer, "queued", [])  # class-wide record: never the shared default
    caps = tmp_path / "captions.jsonl"
    caps.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"p{i}"}) + "\n" for i in range(6)))
    out = tmp_path / "out"

    def cfg(**kw):
        base = dict(workflow=PROMPT, servers=["http://fake:1"], out_dir=str(out), captions=str(caps), inflight=2,
                    retries=2, backoff=0.01, progress=False, use_ws=False, stream=open(os.devnull, "w"))
        base.update(kw)
        return batch.BatchConfig(**base)
    return cfg, out


def _run_bounded(cfg, seconds=30):
    """run_batch in a thread: a hang fails the test instead of blocking it."""
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("res", batch.run_batch(cfg)), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "the batch run hung"
    return box["res"]


def _manifest_lines(out):
    data = (out / "manifest.jsonl").read_bytes()
    assert not data or data.endswith(b"\n"), data[-80:]
    return [json.loads(line) for line in data.splitlines()]  # every line whole


def _job_threads():
    return [t for t in threading.enumerate() if t.name.startswith("job-") and t.is_alive()]


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_baseline_run_succeeds(setup):
    cfg, out = setup
    res = _run_bounded(cfg())
    assert res.exit_code == batch.EXIT_OK
    assert sorted(r["id"] for r in _manifest_lines(out)) == [f"r{i}" for i in range(6)]
    assert (out / "r0.png").read_bytes() == IS.PNG


def test_output_disk_full_stops_the_run_with_a_clear_message(setup, monkeypatch):
    cfg, out = setup
    monkeypatch.setattr(scheduler, "write_atomic", _enospc)
    t0 = time.monotonic()
    res = _run_bounded(cfg())
    assert time.monotonic() - t0 < 20  # no retries against a full disk, no 300 s server wait
    assert res.exit_code == batch.EXIT_WRITE_FAILED == 4
    assert res.problems and "No space left on device" in res.problems[0] and "disk is full" in res.problems[0]
    failed = [r for r in res.results.values() if r["status"] == "failed"]
    assert failed and all("cannot write output" in r["error"] and "No space left" in r["error"] for r in failed)
    assert all(r["status"] in ("failed", "pending") for r in res.results.values())
    lines = _manifest_lines(out)
    assert lines and all(r["status"] == "failed" for r in lines)
    time.sleep(0.2)
    assert not _job_threads()


def test_manifest_disk_full_never_leaves_a_torn_line(setup, monkeypatch):
    cfg, out = setup
    real = batch.ResultsLog._raw_write
    calls = {"n": 0}

    def half_then_full(fd, data):
        calls["n"] += 1
        if calls["n"] <= 2:
            return real(fd, data)
        os.write(fd, data[: len(data) // 2])  # the disk takes half the line, then is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(batch.ResultsLog, "_raw_write", staticmethod(half_then_full))
    res = _run_bounded(cfg())
    assert res.exit_code == batch.EXIT_WRITE_FAILED
    assert "cannot write the manifest" in res.problems[0] and "No space left" in res.problems[0]
    lines = _manifest_lines(out)  # the half line was cut back: two whole lines, nothing torn
    assert len(lines) == 2 and all(r["status"] == "done" for r in lines)
    time.sleep(0.2)
    assert not _job_threads()
    # the next run (disk freed) resumes: the two recorded ids are kept, the rest run
    monkeypatch.setattr(batch.ResultsLog, "_raw_write", staticmethod(real))
    res2 = _run_bounded(cfg())
    assert res2.exit_code == batch.EXIT_OK
    assert sum(1 for r in res2.results.values() if r["status"] == "already done") == 2
    assert sorted({r["id"] for r in _manifest_lines(out)}) == [f"r{i}" for i in range(6)]


def test_short_write_is_cut_back(tmp_path, monkeypatch):
    m = batch.ResultsLog(str(tmp_path / "m.jsonl"))
    m.write({"id": "a", "status": "done"})
    monkeypatch.setattr(batch.ResultsLog, "_raw_write", staticmethod(lambda fd, data: os.write(fd, data[:5])))
    with pytest.raises(batch.LocalWriteError, match="short write"):
        m.write({"id": "b", "status": "done"})
    m.close()
    m.close()  # idempotent
    assert (tmp_path / "m.jsonl").read_bytes() == b'{"id": "a", "status": "done"}\n'


def test_a_crashing_worker_stops_the_run_and_says_why(setup, monkeypatch):
    cfg, out = setup

    def boom(self, srv, entry, row, applied):
        raise RuntimeError("unexpected bug")

    monkeypatch.setattr(batch.Runner, "download", boom)
    monkeypatch.setattr(batch.ResultsLog, "write", lambda self, rec: (_ for _ in ()).throw(RuntimeError("x")))
    res = _run_bounded(cfg())
    assert res.exit_code == batch.EXIT_WRITE_FAILED
    assert "internal error in worker" in res.problems[0]
    time.sleep(0.2)
    assert not _job_threads()


def test_ctrl_c_while_the_disk_is_full_exits_130(setup, monkeypatch, capsys):
    cfg, out = setup
    monkeypatch.setattr(scheduler, "write_atomic", _enospc)

    def interrupted_run(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(batch.Runner, "run", interrupted_run)
    monkeypatch.setattr(os, "close", _enospc)  # even closing the manifest fails
    try:
        code = batch.main(["batch", "--server", "http://fake:1", "--captions", cfg().captions, "--out", str(out),
                           "--quiet", "--no-ws", _workflow_file(out.parent)])
    finally:
        monkeypatch.undo()
    assert code == batch.EXIT_INTERRUPTED == 130


def _workflow_file(folder):
    p = folder / "wf_api.json"
    p.write_text(json.dumps(PROMPT))
    return str(p)


def test_disk_full_for_outputs_and_manifest_ends_instead_of_hanging(setup, monkeypatch):
    """The reported case: the output write fails, then the failure's own manifest line fails too."""
    cfg, out = setup
    monkeypatch.setattr(scheduler, "write_atomic", _enospc)

    def half(fd, data):
        os.write(fd, data[:7])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(batch.ResultsLog, "_raw_write", staticmethod(half))
    res = _run_bounded(cfg(inflight=3))
    assert res.exit_code == batch.EXIT_WRITE_FAILED
    assert "No space left on device" in res.problems[0]
    assert any(r["status"] == "failed" and "cannot write output" in r["error"] for r in res.results.values())
    assert _manifest_lines(out) == []  # torn tails cut back
    time.sleep(0.2)
    assert not _job_threads()


def test_a_worker_crash_outside_a_job_stops_the_run(setup, monkeypatch):
    cfg, out = setup

    def broken_next_job(self, st):
        raise RuntimeError("scheduler bug")

    monkeypatch.setattr(batch.Runner, "next_job", broken_next_job)
    res = _run_bounded(cfg())
    assert res.exit_code == batch.EXIT_WRITE_FAILED
    assert "scheduler bug" in res.problems[0]
    assert all(r["status"] == "pending" for r in res.results.values())


def test_cli_disk_full_exit_code_and_message(setup, monkeypatch, capsys):
    cfg, out = setup
    monkeypatch.setattr(scheduler, "write_atomic", _enospc)
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("code", batch.main(
        ["batch", "--server", "http://fake:1", "--captions", cfg().captions, "--out", str(out), "--quiet",
         "--no-ws", "--backoff", "0.01", _workflow_file(out.parent)])), daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "the CLI hung"
    assert box["code"] == batch.EXIT_WRITE_FAILED
    err = capsys.readouterr().err
    assert "the run stopped: cannot write output" in err and "No space left on device" in err
    assert "run the same command again" in err
