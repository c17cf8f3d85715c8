"""The batch client at scale: per-job costs that do not grow with the number of jobs.

Counted, never timed: how many queued jobs the scheduler looks at per pick, and how many bytes of the
manifest an append reads or writes.
"""
from __future__ import annotations

import json
import os

from comfyui_atelier.client import results_log
from comfyui_atelier.client.batch import BatchConfig, Bindings, ResultsLog, Runner, ServerState
from comfyui_atelier.client.dataset import Row
from comfyui_atelier.client.progress import ProgressBar
from comfyui_atelier.client.server_api import ComfyServer


class CountingList(list):
    """A list that counts the items Python-level iteration hands out."""
    seen = 0

    def __iter__(self):
        for item in list.__iter__(self):
            self.seen += 1
            yield item


def _runner(n: int, servers: int = 1) -> tuple[Runner, list[ServerState]]:
    states = [ServerState(ComfyServer(f"http://127.0.0.1:{k + 1}")) for k in range(servers)]
    for st in states:
        st.up = True
    cfg = BatchConfig(workflow={}, servers=[], out_dir=".")
    r = Runner(cfg, [Row(f"j{k:05d}", None, None) for k in range(n)], {}, Bindings(), states, None,
               ProgressBar(n, enabled=False), {}, {}, print)
    return r, states


def test_next_job_does_not_scan_the_whole_queue():
    """Picking the next job looks at the head of the queue, not at all 10,000 jobs (a run stays linear)."""
    r, (st,) = _runner(10_000)
    r.queue = CountingList(r.queue)
    got = [r.next_job(st).row.id for _ in range(200)]
    assert got == [f"j{k:05d}" for k in range(200)]  # in order, each once
    assert len(r.queue) == 10_000 - 200 and r.active == 200
    assert r.queue.seen <= 2 * 200, f"{r.queue.seen} queue items examined for 200 picks"


def test_next_job_keeps_its_preferences_on_a_long_queue():
    """Same choices as before: a job not ready yet or one that failed here is passed over for a later one;
    a job that failed on every server that is up is still handed out; removal is by identity."""
    r2, (a2, b2) = _runner(1_000, servers=2)
    r2.queue[0].not_before = 1e18
    r2.queue[1].avoid = {a2.server.url}
    assert r2.next_job(a2).row.id == "j00002"
    assert r2.next_job(b2).row.id == "j00001"
    assert r2.queue[0].row.id == "j00000" and r2.queue[1].row.id == "j00003"
    # only jobs a has failed are left ready: the one failed everywhere up is handed out, the other is not
    r3, (a3, b3) = _runner(3, servers=2)
    r3.queue[0].avoid = {a3.server.url}
    r3.queue[1].avoid = {a3.server.url, b3.server.url}
    r3.queue[2].not_before = 1e18
    assert r3.next_job(a3).row.id == "j00001"
    assert [j.row.id for j in r3.queue] == ["j00000", "j00002"]


def test_manifest_append_neither_reads_nor_rewrites_the_log(tmp_path, monkeypatch):
    """Appending line N+1 to a manifest of N lines writes one line and reads nothing back."""
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(json.dumps({"id": f"old{k}", "status": "done", "outputs": []}) + "\n"
                            for k in range(20_000)))
    log = ResultsLog(str(path))
    assert len(log.records) == 20_000
    writes, reads = [], []
    monkeypatch.setattr(results_log.ResultsLog, "_raw_write", staticmethod(lambda fd, d: writes.append(d)
                                                                             or os.write(fd, d)))
    real_read, real_open = os.read, open
    monkeypatch.setattr(os, "read", lambda fd, n: reads.append(n) or real_read(fd, n))
    monkeypatch.setattr("builtins.open", lambda *a, **k: reads.append(a) or real_open(*a, **k))
    size0 = path.stat().st_size
    for k in range(50):
        log.write({"id": f"new{k}", "status": "done", "outputs": []})
    log.close()
    monkeypatch.undo()
    assert reads == []
    assert len(writes) == 50 and all(w.count(b"\n") == 1 for w in writes)
    assert path.stat().st_size == size0 + sum(len(w) for w in writes)
    lines = path.read_text().splitlines()
    assert len(lines) == 20_050 and json.loads(lines[-1])["id"] == "new49"
    assert json.loads(lines[0])["id"] == "old0"


# ---------------------------------------------------------------------------------------------------------
# per-id results streamed to the manifest, not held in memory
# ---------------------------------------------------------------------------------------------------------

def _instant_batch(tmp_path, monkeypatch, n: int, name: str, **kw):
    """run_batch over ``n`` text-only rows against the in-process instant server (no ComfyUI)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.fixtures import instant_server as IS
    from comfyui_atelier.client import batch
    monkeypatch.setattr(batch, "ComfyServer", IS.InstantServer)
    monkeypatch.setattr(IS.InstantServer, "gate", None)
    monkeypatch.setattr(IS.InstantServer, "queued", kw.pop("queued", []))
    caps = tmp_path / f"{name}.jsonl"
    caps.write_text("".join(json.dumps({"id": f"{name}{k:05d}", "prompt": f"p{k}"}) + "\n" for k in range(n)))
    cfg = dict(workflow=IS.empty_image_prompt(), servers=["http://fake:1"], out_dir=str(tmp_path / f"out_{name}"),
               captions=str(caps), inflight=1, retries=0, backoff=0.01, progress=False, use_ws=False,
               stream=open(os.devnull, "w"))
    cfg.update(kw)
    return batch.run_batch(BatchConfig(**cfg))


def test_run_results_are_read_back_from_the_manifest_not_kept(tmp_path, monkeypatch):
    """run_batch keeps one packed int per finished id: every record is the manifest's line for it (same fields
    as a dict of records gave), counts come from counters, and nothing per id is a dict in memory."""
    from comfyui_atelier.client.progress import summary_table
    res = _instant_batch(tmp_path, monkeypatch, 300, "a")
    r = res.results
    assert isinstance(r, results_log.RunResults) and len(r) == 300 and res.count("done") == 300
    assert r._mem == {} and all(type(v) is int for v in r._ids.values())  # noqa: SLF001 - the compact state
    lines = [json.loads(x) for x in (tmp_path / "out_a" / "manifest.jsonl").read_text().splitlines()]
    assert [rec["id"] for rec in lines] == list(r) and [r[rec["id"]] for rec in lines] == lines
    assert dict(r.items()) == {rec["id"]: rec for rec in lines} and list(r.values()) == lines
    assert r["a00007"]["status"] == "done" and r["a00007"]["outputs"][0]["path"] == "a00007.png"
    assert "a00007" in r and "zzz" not in r and r.get("zzz") is None
    assert "done" in summary_table(r) and "  300" in summary_table(r)
    # resume: every id already done (the record as the manifest has it), still no copy per id
    res2 = _instant_batch(tmp_path, monkeypatch, 300, "a")
    assert res2.count("already done") == 300 and res2.count("done") == 0
    assert res2.results["a00007"] == dict(lines[7], status="already done")
    # a dict assigned (e.g. an id that never ran) is kept as given, and counted
    r["x"] = {"id": "x", "status": "pending", "error": "not run"}
    assert r.count("pending") == 1 and r["x"]["error"] == "not run" and len(r) == 301
    r["a00001"] = {"id": "a00001", "status": "failed", "error": "e"}
    assert r.count("done") == 299 and r.count("failed") == 1 and list(r)[1] == "a00001"  # keeps its place


class _Counted:
    """InstantServer.queued that counts the prompts instead of keeping them."""
    n = 0

    def append(self, _item):
        self.n += 1


def test_run_batch_memory_per_job_is_small_and_flat(tmp_path, monkeypatch):
    """Python memory still held after a run (result, manifest state) grows by under 500 bytes per job from
    500 to 2,500 jobs, dataset rows included (it was ~2 KB per job when every record stayed a dict)."""
    import gc
    import tracemalloc

    def held(n: int, name: str) -> int:
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        res = _instant_batch(tmp_path, monkeypatch, n, name, queued=_Counted())  # the fake keeps nothing
        gc.collect()
        now = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert res.count("done") == n
        return now - base

    small, large = held(500, "s"), held(2500, "l")
    per_job = (large - small) / 2000
    assert per_job < 500, f"{per_job:.0f} bytes held per job"


def test_a_finished_job_wakes_nobody_until_the_run_is_done(tmp_path, monkeypatch):
    """run() and idle workers are woken when a job goes back to the queue or the run finishes, not after every
    job: 300 jobs cost a handful of wake-ups of the runner's condition (one per job made each job two thread
    switches dearer than a one-thread loop)."""
    import threading
    import types
    from comfyui_atelier.client import scheduler

    conds = []

    class CountingCondition(threading.Condition):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.wakes = 0
            conds.append(self)

        def notify_all(self):
            self.wakes += 1
            super().notify_all()

    # only the scheduler's own conditions are counted (threading.Event builds its own Condition)
    monkeypatch.setattr(scheduler, "threading", types.SimpleNamespace(**{**vars(threading), "Condition": CountingCondition}))
    res = _instant_batch(tmp_path, monkeypatch, 300, "w")
    assert res.count("done") == 300
    (cond,) = conds
    assert cond.wakes <= 3, f"{cond.wakes} wake-ups for 300 jobs"

    # a job put back in the queue does wake the idle workers; the last job's end wakes run()
    conds.clear()
    r, (st,) = _runner(2)
    a, b = r.next_job(st), r.next_job(st)
    r.requeue(a)
    assert conds[0].wakes == 1 and r.queue[0] is a
    assert r.next_job(st) is a
    with r.cond:
        r._settle(a)  # noqa: SLF001 - one job still active: nobody to wake
    assert conds[0].wakes == 1
    with r.cond:
        r._settle(b)  # noqa: SLF001 - the last one: run() and the workers see the run finished
    assert conds[0].wakes == 2 and r._finished()  # noqa: SLF001
