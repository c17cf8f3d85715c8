"""The bad-input suite for the command line: `atelier batch` against a real ComfyUI server and
`atelier models` against a local HTTP server, each run as a real subprocess (exit codes, stderr, what
is left on disk), with the operating system doing the damage: a full disk (a 64 KiB tmpfs when this
runs as root, else `prlimit --fsize`), SIGINT mid-run, two runs on one --out, ids that try to leave
the output folder, names too long for the file system, corrupt inputs and manifests.

After each case: the server still runs a known-good prompt, and neither --out nor the server's
output/ and models/ holds a half-written file.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.fixtures import reliability as RL
from tests.fixtures import client_data as CD
from tests.fixtures import http_models as HM

DATA = Path(__file__).resolve().parents[2] / "data"
INVERT = str(DATA / "client_invert_api.json")
SLOW = str(DATA / "client_slow_api.json")
CLI = [sys.executable, "-c", "import sys; from comfyui_atelier.client.cli import main; sys.exit(main())"]


# ============================================================================================ helpers

@pytest.fixture(scope="module")
def srv(comfy_server):
    good = RL.png(comfy_server.input_dir / "rel_cli_ok.png", 64, 64)
    yield {"server": comfy_server, "good": good, "n": [1000]}
    (comfy_server.input_dir / good).unlink(missing_ok=True)


@pytest.fixture()
def after(srv, tmp_path):
    """Runs the after-case checks on the server and on every folder the case registers."""
    roots: list[Path] = []
    t0 = time.time() - 1
    yield roots
    srv["n"][0] += 1
    RL.after_case(srv["server"], srv["good"], srv["n"][0], t0)
    for r in roots:
        left = RL.partial_files(r, since=t0)
        assert not left, f"half-written files left in {r}: {left}"


def cli(*args, limit_fsize: int | None = None, timeout: float = 240, **kw) -> subprocess.CompletedProcess:
    cmd = [*CLI, *map(str, args)]
    if limit_fsize is not None:
        cmd = ["prlimit", f"--fsize={limit_fsize}", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def batch_args(srv, workflow, ds: Path, out: Path, *extra) -> list:
    return ["batch", workflow, "--server", srv["server"].url, "--images", ds, "--out", out, "--quiet",
            "--no-ws", *extra]


def manifest(out: Path) -> list[dict]:
    data = (out / "manifest.jsonl").read_bytes()
    assert not data or data.endswith(b"\n"), f"torn last line: {data[-120:]!r}"
    return [json.loads(line) for line in data.splitlines() if line.strip()]  # every line whole


def done_ids(out: Path) -> Counter:
    return Counter(r["id"] for r in manifest(out) if r["status"] == "done")


def check_done_outputs(out: Path, ids) -> None:
    """Every done id has its own output image, of the size the manifest recorded."""
    last = {}
    for r in manifest(out):
        last[r["id"]] = r
    for i in ids:
        r = last[i]
        assert r["status"] == "done", r
        f = out / f"{i}.png"
        assert f.is_file(), f
        assert [o["size"] for o in r["outputs"]] == [f.stat().st_size], (r["outputs"], f.stat().st_size)
        assert abs(CD.read_grey(f) - (255 - CD.id_value(i))) <= 2, f"{f} is not the output of {i}"


def no_traceback(p: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout, p.stderr[-3000:]


@pytest.fixture()
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs when this runs as root (a real ENOSPC); None elsewhere or with
    ATELIER_RELIABILITY_FSIZE=1 (the cases then use prlimit --fsize, a real EFBIG from the kernel)."""
    d = tmp_path / "tiny_disk"
    d.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)]
    ok = (os.geteuid() == 0 and not os.environ.get("ATELIER_RELIABILITY_FSIZE")
          and subprocess.run(mount, capture_output=True).returncode == 0)
    yield d if ok else None
    if ok:
        subprocess.run(["umount", str(d)], capture_output=True)


@pytest.fixture()
def read_only_dir(tmp_path):
    """A folder nothing can be written in: a read-only tmpfs when this runs as root (root ignores file
    modes; EROFS from the kernel), a folder with mode 0555 otherwise (EACCES)."""
    d = tmp_path / "read_only"
    d.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=16k", "tmpfs", str(d)],
                                                   capture_output=True).returncode == 0
    if not mounted:
        d.chmod(0o555)
    yield d
    if mounted:
        subprocess.run(["umount", str(d)], capture_output=True)
    else:
        d.chmod(0o755)


# ============================================================================================ batch

def test_batch_out_is_an_existing_file(srv, tmp_path, after):
    CD.make_dataset(tmp_path / "ds", ["a1", "a2"])
    out = tmp_path / "out.png"
    out.write_bytes(b"not a folder")
    p = cli(*batch_args(srv, INVERT, tmp_path / "ds", out))
    assert p.returncode == 2, p.stderr
    no_traceback(p)
    assert str(out) in p.stderr and out.read_bytes() == b"not a folder"


def test_batch_out_below_a_file(srv, tmp_path, after):
    CD.make_dataset(tmp_path / "ds", ["a1"])
    (tmp_path / "file").write_text("x")
    p = cli(*batch_args(srv, INVERT, tmp_path / "ds", tmp_path / "file" / "out"))
    assert p.returncode == 2, p.stderr
    no_traceback(p)


def test_batch_out_on_a_read_only_file_system(srv, tmp_path, read_only_dir, after):
    CD.make_dataset(tmp_path / "ds", ["r1", "r2"])
    for out in (read_only_dir, read_only_dir / "new_out"):  # the folder itself, or one to create there
        p = cli(*batch_args(srv, INVERT, tmp_path / "ds", out))
        assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
        no_traceback(p)
        assert str(read_only_dir) in p.stderr, p.stderr
    assert os.listdir(read_only_dir) == []


def test_batch_disk_full_while_writing_outputs(srv, tmp_path, tiny_disk, after):
    ids = [f"d{k:02d}" for k in range(12)]
    CD.make_dataset(tmp_path / "ds", ids)
    # noise images: each output PNG is ~9 KB, so a 64 KiB disk (or a 6 KB file-size limit) fills up mid-run
    for i in ids:
        noise = os.urandom(96 * 96)
        CD.write_png(tmp_path / "ds" / f"{i}.png", [list(noise[y * 96:(y + 1) * 96]) for y in range(96)])
    out = (tiny_disk or tmp_path) / "out"
    after.append(out.parent)
    p = cli(*batch_args(srv, INVERT, tmp_path / "ds", out, "--inflight", "1"),
            limit_fsize=None if tiny_disk else 6000)
    assert p.returncode == 4, (p.returncode, p.stderr[-2000:])  # EXIT_WRITE_FAILED: stops, does not hang
    no_traceback(p)
    assert "No space left" in p.stderr or "File too large" in p.stderr, p.stderr[-2000:]
    man = manifest(out) if (out / "manifest.jsonl").exists() else []
    assert not list(out.glob("*.atelier-tmp"))
    done = [r["id"] for r in man if r["status"] == "done"]
    assert len(done) < len(ids)
    # the same run on a disk with room resumes: every id done exactly once, each its own image
    out2 = tmp_path / "resumed"
    if tiny_disk:
        shutil.copytree(out, out2)
    else:
        out2 = out
    p2 = cli(*batch_args(srv, INVERT, tmp_path / "ds", out2, "--inflight", "2"))
    assert p2.returncode == 0, p2.stderr[-2000:]
    assert done_ids(out2) == Counter(ids)
    assert sorted(f.name for f in out2.glob("*.png")) == sorted(f"{i}.png" for i in ids)


def test_batch_manifest_cannot_grow(srv, tmp_path, after):
    """The manifest hits the file-size limit: the run stops with exit 4 and never leaves a torn line."""
    ids = [f"m{k:02d}" for k in range(10)]
    CD.make_dataset(tmp_path / "ds", ids)
    out = tmp_path / "out"
    after.append(out)
    p = cli(*batch_args(srv, INVERT, tmp_path / "ds", out, "--inflight", "1"), limit_fsize=1500)
    assert p.returncode == 4, (p.returncode, p.stderr[-2000:])
    no_traceback(p)
    man = manifest(out)  # asserts every line is whole
    assert len(man) < len(ids)
    p2 = cli(*batch_args(srv, INVERT, tmp_path / "ds", out))
    assert p2.returncode == 0, p2.stderr[-2000:]
    check_done_outputs(out, ids)


def _wait_for_lines(out: Path, n: int, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if len([l for l in (out / "manifest.jsonl").read_text().splitlines() if l.strip()]) >= n:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"the run wrote fewer than {n} manifest lines (rc={proc.poll()})")


def test_batch_sigint_mid_run_then_resume(srv, tmp_path, after):
    ids = [f"s{k:02d}" for k in range(14)]
    CD.make_dataset(tmp_path / "ds", ids)
    out = tmp_path / "out"
    after.append(out)
    proc = subprocess.Popen([*CLI, *map(str, batch_args(srv, SLOW, tmp_path / "ds", out, "--inflight", "2"))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_lines(out, 3, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    done = [r["id"] for r in manifest(out) if r["status"] == "done"]
    assert 3 <= len(done) < len(ids)
    check_done_outputs(out, done)  # what is recorded done is whole on disk
    assert not list(out.glob("*.atelier-tmp"))
    p = cli(*batch_args(srv, SLOW, tmp_path / "ds", out, "--inflight", "2"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert done_ids(out) == Counter(ids)  # nothing done twice, nothing lost
    check_done_outputs(out, ids)


def test_batch_two_runs_on_one_out(srv, tmp_path, after):
    ids = [f"c{k:02d}" for k in range(20)]  # the first run is still busy when the second starts
    CD.make_dataset(tmp_path / "ds", ids)
    out = tmp_path / "out"
    after.append(out)
    first = subprocess.Popen([*CLI, *map(str, batch_args(srv, SLOW, tmp_path / "ds", out, "--inflight", "1"))],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_lines(out, 1, first)
    second = cli(*batch_args(srv, SLOW, tmp_path / "ds", out))
    assert second.returncode == 2, second.stderr[-2000:]
    no_traceback(second)
    assert str(first.pid) in second.stderr and str(out) in second.stderr, second.stderr
    _, err = first.communicate(timeout=240)
    assert first.returncode == 0, err[-2000:]
    assert done_ids(out) == Counter(ids)  # each id rendered once, by the first run
    check_done_outputs(out, ids)


def test_batch_rerun_with_another_workflow_reruns_and_says_so(srv, tmp_path, after):
    ids = ["w1", "w2", "w3"]
    CD.make_dataset(tmp_path / "ds", ids)
    out = tmp_path / "out"
    after.append(out)
    assert cli(*batch_args(srv, INVERT, tmp_path / "ds", out)).returncode == 0
    p = cli(*batch_args(srv, SLOW, tmp_path / "ds", out))
    assert p.returncode == 0, p.stderr
    out_text = p.stdout + p.stderr
    assert "3" in out_text and ("changed" in out_text or "fingerprint" in out_text), out_text[-2000:]
    assert done_ids(out) == Counter({i: 2 for i in ids})


def _captions(ds: Path, rows: list[dict], images=()) -> None:
    ds.mkdir(parents=True, exist_ok=True)
    with open(ds / "captions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["id", "prompt"])
        w.writeheader()
        w.writerows(rows)
    for i in images:
        CD.write_png(ds / f"{i}.png", [[CD.id_value(i)] * 16 for _ in range(16)])


@pytest.mark.parametrize("bad_id", ["../escape", "/tmp/abs_escape", "sub/../../escape", ".hidden", "a\x00b"])
def test_batch_ids_that_would_leave_the_output_folder(srv, tmp_path, after, bad_id):
    ds = tmp_path / "ds"
    _captions(ds, [{"id": "ok1", "prompt": "x"}, {"id": bad_id, "prompt": "y"}], images=["ok1"])
    CD.write_png(tmp_path / "escape.png", [[7] * 16 for _ in range(16)])  # what '../escape' would pick up
    out = tmp_path / "out"
    after.append(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    p = cli(*batch_args(srv, INVERT, ds, out))
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    no_traceback(p)
    assert "cannot be used as a file name" in p.stderr or "id" in p.stderr, p.stderr
    assert sorted(x.name for x in tmp_path.iterdir() if x.name != "out") == [b for b in before if b != "out"]
    assert not Path("/tmp/abs_escape.png").exists()


def test_batch_id_of_300_characters(srv, tmp_path, after):
    """No image can be named after it: the row is skipped by id, the others run."""
    long_id = "x" * 300
    ds = tmp_path / "ds"
    _captions(ds, [{"id": "ok1", "prompt": "x"}, {"id": long_id, "prompt": "y"}], images=["ok1"])
    out = tmp_path / "out"
    after.append(out)
    p = cli(*batch_args(srv, INVERT, ds, out))
    no_traceback(p)
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    last = {r["id"]: r for r in manifest(out)}
    assert last[long_id]["status"] == "skipped" and "no image file" in last[long_id]["error"]
    check_done_outputs(out, ["ok1"])


def test_batch_id_of_250_characters(srv, tmp_path, after):
    """Its image name fits (254 bytes) but '<id>.png' plus a temp suffix does not: the output is still
    written whole under its own name, or that row fails with a clear error; nothing half-written."""
    long_id = "y" * 250
    ds = tmp_path / "ds"
    _captions(ds, [{"id": "ok1", "prompt": "x"}, {"id": long_id, "prompt": "y"}], images=["ok1", long_id])
    out = tmp_path / "out"
    after.append(out)
    p = cli(*batch_args(srv, INVERT, ds, out, "--retries", "0"))
    no_traceback(p)
    last = {r["id"]: r for r in manifest(out)}
    if p.returncode == 0:
        check_done_outputs(out, ["ok1", long_id])
    else:
        assert p.returncode in (1, 4), (p.returncode, p.stderr[-2000:])
        assert last[long_id]["status"] == "failed" and last[long_id]["error"], last[long_id]
        assert "File name too long" in last[long_id]["error"] or "name" in last[long_id]["error"]
        check_done_outputs(out, ["ok1"])


def test_batch_captions_not_utf8(srv, tmp_path, after):
    ds = tmp_path / "ds"
    ds.mkdir()
    CD.write_png(ds / "u1.png", [[9] * 16 for _ in range(16)])
    (ds / "captions.csv").write_bytes(b"id,prompt\nu1,a lone surrogate \xed\xa0\x80 here\n")
    p = cli(*batch_args(srv, INVERT, ds, tmp_path / "out"))
    no_traceback(p)
    if p.returncode == 0:  # read with replacement: the row ran
        assert done_ids(tmp_path / "out") == Counter(["u1"])
    else:
        assert p.returncode == 2 and "captions" in p.stderr, p.stderr


def test_batch_workflow_is_not_json(srv, tmp_path, after):
    CD.make_dataset(tmp_path / "ds", ["j1"])
    wf = tmp_path / "wf.json"
    wf.write_text('{"1": {"class_type": "LoadImage", "inputs": {"image": ' + "[" * 100_000)
    p = cli(*batch_args(srv, str(wf), tmp_path / "ds", tmp_path / "out"))
    assert p.returncode == 2, p.stderr[-2000:]
    no_traceback(p)
    assert "wf.json" in p.stderr, p.stderr


def test_batch_workflow_is_truncated_json(srv, tmp_path, after):
    CD.make_dataset(tmp_path / "ds", ["j1"])
    wf = tmp_path / "wf.json"
    wf.write_text('{"1": {"class_type": "LoadImage", "inputs": {"image": ')
    p = cli(*batch_args(srv, str(wf), tmp_path / "ds", tmp_path / "out"))
    assert p.returncode == 2, p.stderr[-2000:]
    no_traceback(p)
    assert "wf.json" in p.stderr, p.stderr


def test_batch_corrupt_image_is_skipped(srv, tmp_path, after):
    ids = ["g1", "g2"]
    CD.make_dataset(tmp_path / "ds", ids)
    (tmp_path / "ds" / "g2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    out = tmp_path / "out"
    after.append(out)
    p = cli(*batch_args(srv, INVERT, tmp_path / "ds", out))
    no_traceback(p)
    assert p.returncode in (0, 1), p.stderr[-2000:]
    assert done_ids(out) == Counter(["g1"])
    last = {r["id"]: r for r in manifest(out)}
    assert last.get("g2", {"status": "skipped"})["status"] in ("skipped", "failed")


def test_batch_no_server_answers(srv, tmp_path, after):
    CD.make_dataset(tmp_path / "ds", ["n1"])
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    t0 = time.monotonic()
    p = cli("batch", INVERT, "--server", f"http://127.0.0.1:{port}", "--images", tmp_path / "ds", "--out",
            tmp_path / "out", "--quiet", "--server-wait", "2")
    assert p.returncode == 3, p.stderr[-2000:]
    assert time.monotonic() - t0 < 60
    no_traceback(p)


# ============================================================================================ models

@pytest.fixture(scope="module")
def http_models():
    with HM.serve() as url:
        yield url


_entry, _manifest_file, PAYLOAD = HM.entry, HM.write_manifest, HM.PAYLOAD


def test_models_download_into_a_full_disk(http_models, tmp_path, tiny_disk, after):
    m = _manifest_file(tmp_path, [_entry("big", http_models + "/good.safetensors")])
    dest = (tiny_disk or tmp_path) / "models"  # the payload is ~300 KB: more than the 64 KiB disk holds
    after.append(dest.parent)
    p = cli("models", "--manifest", m, "download", "big", "--models-dir", dest,
            limit_fsize=None if tiny_disk else 100_000)
    assert p.returncode == 1, (p.returncode, p.stderr[-2000:], p.stdout[-2000:])
    no_traceback(p)
    text = p.stdout + p.stderr
    assert "No space left" in text or "File too large" in text, text[-2000:]
    assert not (dest / "saliency" / "big.safetensors").exists()
    assert not RL.partial_files(dest) and not [f for f in dest.rglob("*") if f.is_file()]


@pytest.mark.parametrize("field,value", [("filename", "../../escape.safetensors"),
                                         ("filename", "/tmp/abs_escape.safetensors"),
                                         ("folder", "../../outside"), ("save_path", "/etc")])
def test_models_manifest_paths_that_escape_are_refused(http_models, tmp_path, after, field, value):
    e = _entry("esc", http_models + "/good.safetensors")
    e[field] = value
    if field == "folder":
        e["save_path"] = value
    m = _manifest_file(tmp_path, [e])
    dest = tmp_path / "models"
    p = cli("models", "--manifest", m, "download", "esc", "--models-dir", dest)
    assert p.returncode != 0, p.stdout
    no_traceback(p)
    assert value in (p.stdout + p.stderr) or "plain" in (p.stdout + p.stderr), p.stderr[-2000:]
    assert not [f for f in tmp_path.rglob("*.safetensors")] and not Path("/tmp/abs_escape.safetensors").exists()


@pytest.mark.parametrize("text", ["{not json", pytest.param("[" * 100_000, id="nested-100000"),
                                  json.dumps({"models": "nope"}), ""])
def test_models_broken_manifest(tmp_path, after, text):
    m = tmp_path / "manifest.json"
    m.write_text(text)
    p = cli("models", "--manifest", m, "list")
    assert p.returncode not in (0, 1) or "manifest" in (p.stdout + p.stderr), p
    assert p.returncode != 0
    no_traceback(p)
    assert "manifest.json" in (p.stdout + p.stderr), p.stderr[-2000:]


def test_models_download_into_a_read_only_folder(http_models, tmp_path, read_only_dir, after):
    m = _manifest_file(tmp_path, [_entry("ro1", http_models + "/good.safetensors")])
    p = cli("models", "--manifest", m, "download", "ro1", "--models-dir", read_only_dir)
    assert p.returncode == 1, (p.returncode, p.stderr[-2000:], p.stdout[-2000:])
    no_traceback(p)
    assert str(read_only_dir) in (p.stdout + p.stderr)
    assert os.listdir(read_only_dir) == []


def test_models_dir_is_a_file(http_models, tmp_path, after):
    m = _manifest_file(tmp_path, [_entry("f1", http_models + "/good.safetensors")])
    dest = tmp_path / "models"
    dest.write_text("a file")
    p = cli("models", "--manifest", m, "download", "f1", "--models-dir", dest)
    assert p.returncode == 1, p.stderr[-2000:]
    no_traceback(p)
    assert str(dest) in (p.stdout + p.stderr) and dest.read_text() == "a file"


def test_models_check_sees_a_truncated_file(http_models, tmp_path, after):
    m = _manifest_file(tmp_path, [_entry("t1", http_models + "/good.safetensors")])
    dest = tmp_path / "models"
    (dest / "saliency").mkdir(parents=True)
    (dest / "saliency" / "t1.safetensors").write_bytes(PAYLOAD[:1000])
    p = cli("models", "--manifest", m, "check", "--models-dir", dest)
    assert p.returncode == 1, p.stdout
    no_traceback(p)
    assert "t1" in p.stdout
