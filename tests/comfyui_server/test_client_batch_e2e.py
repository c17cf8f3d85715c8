"""Batch client against real ComfyUI servers on 127.0.0.1 (pinned runtime, CPU).

Every input image encodes its id as a grey level; the trivial workflow inverts it, so each
output file can be checked to hold *its own* id's image.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from comfyui_atelier.client.batch import BatchConfig, run_batch
from comfyui_atelier.client.server_api import ComfyServer as ApiServer
from comfyui_atelier.core.errors import AtelierError
from tests.fixtures import client_data as CD

DATA = Path(__file__).resolve().parents[1] / "data"
INVERT = str(DATA / "client_invert.json")  # UI format: converted with the server's /object_info
SLOW = str(DATA / "client_slow_api.json")


def _manifest(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "manifest.jsonl").read_text().splitlines() if l.strip()]


def _check_outputs(out: Path, ids: list[str]):
    files = sorted(p.name for p in out.iterdir() if p.suffix == ".png")
    assert files == sorted(f"{i}.png" for i in ids)  # no id lost, none extra, no temp files
    for i in ids:
        assert abs(CD.read_grey(out / f"{i}.png") - (255 - CD.id_value(i))) <= 1, f"output of {i} is not its own image"


def _history_count(url: str) -> int:
    return len(ApiServer(url).get_json("/history"))


@pytest.fixture(scope="module")
def two_servers(comfy_server_factory):
    return comfy_server_factory(), comfy_server_factory()


def test_32_rows_two_servers_missing_image_in_the_middle(two_servers, tmp_path):
    ids = [str(24790 + k) for k in range(33)]  # 24807 is in the middle
    CD.make_dataset(tmp_path / "ds", ids, missing_images={"24807"}, extra_images=["77777"])
    out = tmp_path / "out"
    cfg = BatchConfig(workflow=INVERT, servers=[s.url for s in two_servers], out_dir=str(out),
                      images=str(tmp_path / "ds"), inflight=2, progress=False)
    res = run_batch(cfg)
    done = [i for i in ids if i != "24807"]
    assert res.exit_code == 0
    assert sorted(k for k, v in res.results.items() if v["status"] == "done") == sorted(done)
    assert res.results["24807"]["status"] == "skipped" and "no image file" in res.results["24807"]["error"]
    assert res.results["77777"]["status"] == "skipped" and "has no row" in res.results["77777"]["error"]
    _check_outputs(out, done)
    man = _manifest(out)
    assert Counter(r["id"] for r in man if r["status"] == "done") == Counter(done)
    assert {r["server"] for r in man if r["status"] == "done"} == {s.url for s in two_servers}  # both used
    for r in man:
        if r["status"] == "done":
            assert r["outputs"][0]["server_file"].startswith(f"atelier_batch/{r['id']}_")

    # a second invocation does nothing: no prompt reaches any server, the manifest is unchanged
    before = [_history_count(s.url) for s in two_servers]
    size = (out / "manifest.jsonl").stat().st_size
    res2 = run_batch(cfg)
    assert res2.exit_code == 0 and res2.count("already done") == len(done) and res2.count("done") == 0
    assert [_history_count(s.url) for s in two_servers] == before
    assert (out / "manifest.jsonl").stat().st_size == size

    # a damaged output is redone on the next run, and only that one
    (out / f"{done[3]}.png").write_bytes(b"broken")
    res3 = run_batch(cfg)
    assert res3.count("done") == 1 and res3.results[done[3]]["status"] == "done"
    _check_outputs(out, done)


def test_unknown_node_and_dry_run(two_servers, tmp_path):
    CD.make_dataset(tmp_path / "ds", ["a", "b"])
    wf = json.loads(Path(INVERT).read_text())
    wf["nodes"].append({"id": 9, "type": "NotARealNode", "mode": 0, "inputs": [], "widgets_values": []})
    (tmp_path / "wf.json").write_text(json.dumps(wf))
    cfg = BatchConfig(workflow=str(tmp_path / "wf.json"), servers=[two_servers[0].url], out_dir=str(tmp_path / "o"),
                      images=str(tmp_path / "ds"), progress=False)
    with pytest.raises(AtelierError, match="NotARealNode"):
        run_batch(cfg)
    code = "import sys; from comfyui_atelier.client.batch import main; sys.exit(main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", code, "batch", str(tmp_path / "wf.json"), "--server", two_servers[0].url,
                        "--images", str(tmp_path / "ds"), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "#9 'NotARealNode'" in r.stderr and "install" in r.stderr
    # dry run on a good workflow: validates, runs nothing
    before = _history_count(two_servers[0].url)
    res = run_batch(BatchConfig(workflow=INVERT, servers=[two_servers[0].url], out_dir=str(tmp_path / "o2"),
                                images=str(tmp_path / "ds"), dry_run=True, progress=False))
    assert res.exit_code == 0 and res.bindings.get("image") == [("1", "image")]
    assert _history_count(two_servers[0].url) == before and not (tmp_path / "o2" / "manifest.jsonl").exists()


def test_polling_fallback_and_declared_bindings(two_servers, tmp_path):
    ids = ["w1", "w2", "w3"]
    CD.make_dataset(tmp_path / "ds", ids)
    wf = json.loads(Path(INVERT).read_text())
    wf["extra"] = {"atelier": {"bindings": {"image": "1.image"}}}  # bindings declared by the workflow
    (tmp_path / "wf.json").write_text(json.dumps(wf))
    res = run_batch(BatchConfig(workflow=str(tmp_path / "wf.json"), servers=[two_servers[0].url],
                                out_dir=str(tmp_path / "out"), images=str(tmp_path / "ds"), use_ws=False, poll=0.05,
                                progress=False))
    assert res.exit_code == 0 and res.bindings.get("image") == [("1", "image")]
    _check_outputs(tmp_path / "out", ids)


def test_execution_error_is_retried_then_reported(two_servers, tmp_path):
    ids = ["e1", "e2", "e3", "e4"]
    CD.make_dataset(tmp_path / "ds", ids)
    png = (tmp_path / "ds" / "e3.png").read_bytes()
    # PNG signature and IEND intact (passes the client's header check) but the pixel data is garbage:
    # the server's LoadImage fails while executing
    (tmp_path / "ds" / "e3.png").write_bytes(png[:16] + b"\x00" * 40 + png[-12:])
    out = tmp_path / "out"
    cfg = BatchConfig(workflow=INVERT, servers=[s.url for s in two_servers], out_dir=str(out),
                      images=str(tmp_path / "ds"), retries=2, backoff=0.1, progress=False)
    res = run_batch(cfg)
    assert res.exit_code == 1
    bad = res.results["e3"]
    assert bad["status"] == "failed" and bad["attempt"] == 3 and "LoadImage" in bad["error"]
    _check_outputs(out, ["e1", "e2", "e4"])
    before = _manifest(out)
    res2 = run_batch(cfg)  # only the failed id is tried again
    assert res2.count("already done") == 3 and res2.results["e3"]["status"] == "failed"
    assert [r["id"] for r in _manifest(out)[len(before):]] == ["e3"]


def test_ctrl_c_leaves_consistent_manifest_then_resume(two_servers, tmp_path):
    ids = [f"p{k:03d}" for k in range(16)]
    CD.make_dataset(tmp_path / "ds", ids)
    out = tmp_path / "out"
    args = [sys.executable, "-c", "import sys; from comfyui_atelier.client.batch import main; sys.exit(main(sys.argv[1:]))",
            "batch", SLOW, "--server", two_servers[0].url, "--images", str(tmp_path / "ds"), "--out", str(out),
            "--inflight", "1", "--quiet"]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (out / "manifest.jsonl").exists() and len(_manifest(out)) >= 2:
            break
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    man = _manifest(out)  # every line parses
    done = [r["id"] for r in man if r["status"] == "done"]
    assert 2 <= len(done) < len(ids)
    for i in done:
        assert (out / f"{i}.png").exists()
    assert not list(out.glob("*.atelier-tmp"))
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    man2 = _manifest(out)
    assert Counter(x["id"] for x in man2 if x["status"] == "done") == Counter(ids)  # each id done exactly once
    files = sorted(x.name for x in out.iterdir() if x.suffix == ".png")
    assert files == sorted(f"{i}.png" for i in ids)


def test_kill_one_server_mid_run_and_restart(two_servers, tmp_path):
    a, b = two_servers
    ids = [f"k{k:03d}" for k in range(24)]
    CD.make_dataset(tmp_path / "ds", ids)
    out = tmp_path / "out"
    cfg = BatchConfig(workflow=SLOW, servers=[a.url, b.url], out_dir=str(out), images=str(tmp_path / "ds"),
                      inflight=2, progress=False, backoff=0.2)
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("res", run_batch(cfg)))
    t.start()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not ((out / "manifest.jsonl").exists() and len(_manifest(out)) >= 4):
        time.sleep(0.05)
    b.kill()
    time.sleep(1.0)
    b.start()
    t.join(timeout=600)
    assert not t.is_alive()
    res = box["res"]
    assert res.exit_code == 0, {k: v for k, v in res.results.items() if v["status"] != "done"}
    man = _manifest(out)
    assert Counter(r["id"] for r in man if r["status"] == "done") == Counter(ids)  # none lost, none twice
    files = sorted(x.name for x in out.iterdir() if x.suffix == ".png")
    assert files == sorted(f"{i}.png" for i in ids)
    _check_outputs(out, ids)
    moved = [r for r in man if b.url in (r.get("moved_from") or [])]
    assert moved and all(r["server"] == a.url or r["server"] == b.url for r in moved)  # b's jobs were moved
    # a second invocation does nothing
    before = [_history_count(s.url) for s in (a, b)]
    res2 = run_batch(cfg)
    assert res2.count("already done") == len(ids) and [_history_count(s.url) for s in (a, b)] == before


def test_progress_and_finish_arrive_over_ws(two_servers):
    """websocket-client follows a real server's /ws: the node's per-image progress reaches the callback and
    the server's finish message arrives on the socket (polling alone would give neither)."""
    pytest.importorskip("websocket")
    from comfyui_atelier.client import convert

    srv = ApiServer(two_servers[0].url)
    info = srv.object_info()
    canny = {name: convert.widget_default(spec) for name, spec in convert.node_inputs(info["AtelierCanny"]).items()
             if convert._is_widget(convert._input_spec(spec)[0])}
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 3, "color": 0}},
              "2": {"class_type": "AtelierCanny", "inputs": {**canny, "image": ["1", 0]}},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "ws_progress"}}}
    steps = []
    try:
        ws = srv.follower()
        for _ in range(250):
            if ws.connected:
                break
            time.sleep(0.02)
        assert ws.connected, "the /ws follower did not connect"
        pid = srv.queue_prompt(prompt)
        entry = srv.wait(pid, poll=120, timeout=110, on_progress=lambda v, m: steps.append((v, m)))
        for _ in range(250):  # ComfyUI stores /history a moment before it sends the finish message
            if pid in ws._recent:
                break
            time.sleep(0.02)
        finished_on_ws = pid in ws._recent
    finally:
        srv.close()
    assert entry["outputs"], entry
    assert (3, 3) in steps and all(m == 3 for _, m in steps), steps
    assert finished_on_ws, "the server's finish message never arrived over /ws"
