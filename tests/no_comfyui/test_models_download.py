"""The verified downloader and the `atelier models` CLI against a local HTTP server (no hubs).

The server and the entries pointing at it are tests/fixtures/http_models.py: a small generated file
under several paths (intact, truncated, corrupted, oversized, 404); "offline" is a port on 127.0.0.1
that nothing listens on.
"""
from __future__ import annotations

import json
import os

import pytest

from comfyui_atelier.client import download as dl
from comfyui_atelier.client import models_cli
from comfyui_atelier.core import manifest as mf
from tests.fixtures import http_models as HM

PAYLOAD, SHA = HM.PAYLOAD, HM.SHA


@pytest.fixture(scope="module")
def server():
    with HM.serve() as url:
        yield url


# ----------------------------------------------------------------------------- downloader (client/download.py)

def test_download_success_verifies_and_renames(server, tmp_path):
    m = mf.parse({"models": [HM.entry("good", server + "/good.safetensors")]})
    seen = []
    out = dl.download_entry(m.by_id("good"), tmp_path, progress_factory=lambda spec: (lambda d, t: seen.append((d, t))))
    target = tmp_path / "saliency" / "good.safetensors"
    assert target.read_bytes() == PAYLOAD
    assert out == {"good.safetensors": SHA}
    assert HM.leftovers(tmp_path) == ["saliency/good.safetensors"]  # no temp file left
    assert seen[0] == (0, len(PAYLOAD)) and seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    # second call: already present and verified, no new request
    n = HM.request_count()
    assert dl.download_entry(m.by_id("good"), tmp_path) == {"good.safetensors": "present"}
    assert HM.request_count() == n


@pytest.mark.parametrize("path, reason", [
    ("/corrupt.safetensors", "sha256"),
    ("/short.safetensors", "size"),
    ("/long.safetensors", "size"),
])
def test_mismatch_leaves_nothing_behind(server, tmp_path, path, reason):
    m = mf.parse({"models": [HM.entry("bad", server + path)]})
    with pytest.raises(dl.DownloadError) as ei:
        dl.download_entry(m.by_id("bad"), tmp_path)
    assert ei.value.reason == reason
    assert HM.leftovers(tmp_path) == []
    assert not (tmp_path / "saliency").exists()  # the folder it created is gone too
    msg = str(ei.value)
    assert server + path in msg and "bad.safetensors" in msg and str(tmp_path / "saliency") in msg


def test_mismatch_keeps_existing_folder_and_other_files(server, tmp_path):
    (tmp_path / "saliency").mkdir()
    (tmp_path / "saliency" / "mine.pth").write_bytes(b"user file")
    m = mf.parse({"models": [HM.entry("bad", server + "/corrupt.safetensors")]})
    with pytest.raises(dl.DownloadError):
        dl.download_entry(m.by_id("bad"), tmp_path)
    assert HM.leftovers(tmp_path) == ["saliency/mine.pth"]


def test_corrupt_existing_file_is_replaced_only_by_a_verified_one(server, tmp_path):
    (tmp_path / "saliency").mkdir()
    target = tmp_path / "saliency" / "good.safetensors"
    target.write_bytes(HM.CORRUPT)  # right size, wrong bytes
    m = mf.parse({"models": [HM.entry("good", server + "/good.safetensors")]})
    assert dl.download_entry(m.by_id("good"), tmp_path) == {"good.safetensors": SHA}
    assert target.read_bytes() == PAYLOAD


def test_offline_names_manual_step(tmp_path):
    dead_url = HM.dead_url()
    m = mf.parse({"models": [HM.entry("off", dead_url)]})
    with pytest.raises(dl.DownloadError) as ei:
        dl.download_entry(m.by_id("off"), tmp_path, timeout=5)
    assert ei.value.reason == "offline"
    assert dead_url in str(ei.value) and "off.safetensors" in str(ei.value)
    assert HM.leftovers(tmp_path) == []


def test_http_error(server, tmp_path):
    m = mf.parse({"models": [HM.entry("gone", server + "/missing.safetensors")]})
    with pytest.raises(dl.DownloadError) as ei:
        dl.download_entry(m.by_id("gone"), tmp_path)
    assert ei.value.reason == "http" and "404" in str(ei.value)
    assert HM.leftovers(tmp_path) == []


def test_unverified_entry_needs_opt_in(server, tmp_path):
    m = mf.parse({"models": [HM.entry("nohash", server + "/good.safetensors", sha=None, size=None)]})
    with pytest.raises(dl.DownloadError) as ei:
        dl.download_entry(m.by_id("nohash"), tmp_path)
    assert ei.value.reason == "unverified" and "--allow-unverified" in str(ei.value)
    assert HM.leftovers(tmp_path) == []
    out = dl.download_entry(m.by_id("nohash"), tmp_path, allow_unverified=True)
    assert out == {"nohash.safetensors": SHA}


def test_manual_only_entry_is_never_fetched(server, tmp_path):
    m = mf.parse({"models": [HM.entry("drive", server + "/good.safetensors", sha=None, size=None,
                                    manual_only=True, manual_note="open it in a browser")]})
    n = HM.request_count()
    with pytest.raises(dl.DownloadError) as ei:
        dl.download_entry(m.by_id("drive"), tmp_path, allow_unverified=True)
    assert ei.value.reason == "manual" and "open it in a browser" in str(ei.value)
    assert HM.request_count() == n


def test_directory_entry(server, tmp_path):
    m = mf.parse({"models": [HM.directory_entry("hfdir", server)]})
    dl.download_entry(m.by_id("hfdir"), tmp_path)
    assert HM.leftovers(tmp_path) == ["saliency/predictor/config.json", "saliency/predictor/model.safetensors"]
    assert mf.check_entry(m.by_id("hfdir"), tmp_path, hash_files=True).ok


# ----------------------------------------------------------------------------- CLI

def test_cli_download_success_prints_where(server, tmp_path, capsys):
    man = HM.write_manifest(tmp_path, [HM.entry("good", server + "/good.safetensors")])
    models = tmp_path / "models"
    rc = models_cli.main(["--manifest", str(man), "download", "good", "--models-dir", str(models)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert f"models dir: {models.absolute()}" in out and SHA in out
    assert (models / "saliency" / "good.safetensors").read_bytes() == PAYLOAD
    assert "100.0%" in err  # progress reached the end (not a tty: one line per 10 %)


def test_cli_sha_mismatch_exits_nonzero_and_leaves_nothing(server, tmp_path, capsys):
    man = HM.write_manifest(tmp_path, [HM.entry("bad", server + "/corrupt.safetensors")])
    models = tmp_path / "models"
    rc = models_cli.main(["--manifest", str(man), "download", "bad", "--models-dir", str(models)])
    out, err = capsys.readouterr()
    assert rc == 1
    assert not models.exists() or HM.leftovers(models) == []
    assert "sha256 of the download is" in err
    assert server + "/corrupt.safetensors" in err and "bad.safetensors" in err and str(models / "saliency") in err


def test_cli_offline_prints_manual_step(tmp_path, capsys):
    dead_url = HM.dead_url()
    man = HM.write_manifest(tmp_path, [HM.entry("off", dead_url)])
    rc = models_cli.main(["--manifest", str(man), "download", "off", "--models-dir", str(tmp_path / "m"),
                          "--timeout", "5"])
    _, err = capsys.readouterr()
    assert rc == 1
    assert "Manual download for 'off'" in err and dead_url in err
    assert f"save it as {tmp_path / 'm' / 'saliency' / 'off.safetensors'}" in err


def test_cli_check_and_workflow(server, tmp_path, capsys):
    man = HM.write_manifest(tmp_path, [HM.entry("good", server + "/good.safetensors"),
                                       HM.entry("other", server + "/good.safetensors",
                                                used_by={"nodes": [], "workflows": ["wf_other"]})])
    models = tmp_path / "models"
    args = ["--manifest", str(man)]
    assert models_cli.main(args + ["check", "--workflow", "wf_test", "--models-dir", str(models)]) == 1
    out, _ = capsys.readouterr()
    assert "MISSING  good" in out and "other" not in out and "atelier models download good" in out
    assert models_cli.main(args + ["download", "--workflow", "wf_test", "--models-dir", str(models)]) == 0
    capsys.readouterr()
    assert models_cli.main(args + ["check", "--workflow", "wf_test", "--models-dir", str(models), "--verify"]) == 0
    out, _ = capsys.readouterr()
    assert "OK       good" in out and "1 of 1 model(s) present" in out
    assert models_cli.main(args + ["check", "--workflow", "nope", "--models-dir", str(models)]) == 2
    _, err = capsys.readouterr()
    assert "unknown workflow 'nope'" in err and "wf_test" in err


def test_cli_models_dir_default_from_comfyui_path(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path / "ComfyUI"))
    man = HM.write_manifest(tmp_path, [HM.entry("good", server + "/good.safetensors")])
    assert models_cli.main(["--manifest", str(man), "download", "good"]) == 0
    out, _ = capsys.readouterr()
    assert "from $COMFYUI_PATH" in out
    assert (tmp_path / "ComfyUI" / "models" / "saliency" / "good.safetensors").is_file()


def test_cli_list_and_unknown_id(capsys):
    assert models_cli.main(["list"]) == 0
    out, _ = capsys.readouterr()
    assert "sd15-base" in out and "poolnet-resnet50" in out and "manual" in out
    assert models_cli.main(["list", "--manager"]) == 0
    doc = json.loads(capsys.readouterr()[0])
    assert {m["filename"] for m in doc["models"]} >= {"v1-5-pruned-emaonly.safetensors", "sd_xl_base_1.0.safetensors"}
    assert models_cli.main(["download", "sd-1.5", "--models-dir", os.devnull]) == 2
    assert "unknown model id 'sd-1.5'" in capsys.readouterr()[1]


def test_add_parser_registers_models_with_handler(tmp_path, capsys):
    import argparse
    top = argparse.ArgumentParser(prog="atelier")
    subs = top.add_subparsers(dest="command")
    models_cli.add_parser(subs)
    args = top.parse_args(["models", "check", "sd15-base", "--models-dir", str(tmp_path)])
    assert args.func is models_cli.run
    assert args.func(args) == 1
    assert "MISSING  sd15-base" in capsys.readouterr()[0]
    args = top.parse_args(["models"])
    assert args.func(args) == 2  # no sub-command: help, usage error


def test_cli_convert_hook_reports_missing_source(tmp_path, capsys):
    rc = models_cli.main(["convert", "poolnet-resnet50", "--models-dir", str(tmp_path)])
    assert rc == 1
    err = capsys.readouterr()[1]
    assert "poolnet_resnet50_final.pth" in err and "drive.google.com" in err


@pytest.mark.slow
def test_cli_convert_poolnet_pth_to_safetensors(tmp_path, capsys):
    """`models convert ID` hands the manifest's PoolNet file to core/poolnet.py (torch, lazily)."""
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    from tests.fixtures import poolnet_models as PM
    src = tmp_path / "saliency" / "poolnet_resnet50_final.pth"
    sd = PM.random_state_dict(0, num_batches_tracked=True)
    PM.save_pth(sd, str(src))
    rc = models_cli.main(["convert", "poolnet-resnet50", "--models-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    dst = src.with_suffix(".safetensors")
    assert f"wrote {dst}" in out
    loaded = load_file(str(dst))
    assert set(loaded) == {k for k in sd if not k.endswith("num_batches_tracked")}
    k = "base.resnet.conv1.weight"
    assert (loaded[k] == sd[k]).all()
    assert sorted(p.name for p in dst.parent.iterdir()) == [src.name, dst.name]  # no temp left
