"""`atelier models download` on a models folder this machine cannot write: read-only, full, a file
where a folder goes, a folder where the model goes. A clear message naming the path and the
reason, exit 1 (a failed download, as documented), no traceback, nothing half-written left."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from comfyui_atelier.client import download as dl
from comfyui_atelier.client import models_cli
from comfyui_atelier.core import manifest as mf
from tests.fixtures import http_models as HM


@pytest.fixture(scope="module")
def server():
    with HM.serve() as url:
        yield url


def _manifest(tmp_path, url, ids=("one", "two")) -> Path:
    return HM.write_manifest(tmp_path, [HM.entry(mid, f"{url}/good.safetensors") for mid in ids])


def _files(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*")) if d.exists() else []


def _download(tmp_path, server, models, capsys, *ids):
    rc = models_cli.main(["--manifest", str(_manifest(tmp_path, server)), "download", *(ids or ("one", "two")),
                          "--models-dir", str(models)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_read_only_models_dir(server, tmp_path, capsys, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()

    def ro(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(dl.tempfile, "mkstemp", ro)
    rc, out, err = _download(tmp_path, server, models, capsys)
    assert rc == 1 and "Traceback" not in err
    assert f"FAILED one: cannot write {models / 'saliency'}: Read-only file system (errno {errno.EROFS})" in err
    assert "the file system is read-only" in err and "--models-dir" in err
    assert "not tried (the models folder cannot be written): two" in err  # stops: the rest fail alike
    assert _files(models) == []  # the saliency/ folder it made is gone again


def test_disk_full_while_writing(server, tmp_path, capsys, monkeypatch):
    models = tmp_path / "models"
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, b):  # half the chunk fits, then the disk is full
            self.f.write(b[: len(b) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, k):
            return getattr(self.f, k)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr(dl.os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    rc, out, err = _download(tmp_path, server, models, capsys, "one")
    assert rc == 1 and "Traceback" not in err
    assert "FAILED one: cannot write" in err and ".part" in err and "No space left on device" in err
    assert "the disk is full" in err and "nothing partial was kept" in err
    assert _files(models) == []  # no .part file, no empty folders


def test_close_fails_with_disk_full(server, tmp_path, capsys, monkeypatch):
    """The last buffer only reaches the disk at close: that failure is reported the same way."""
    models = tmp_path / "models"
    real_fdopen = os.fdopen

    class FullAtFlush:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            return len(b)

        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr(dl.os, "fdopen", lambda fd, mode: FullAtFlush(real_fdopen(fd, mode)))
    rc, out, err = _download(tmp_path, server, models, capsys, "one")
    assert rc == 1 and "Traceback" not in err and "No space left on device" in err
    assert _files(models) == []


def test_models_dir_is_a_file(server, tmp_path, capsys):
    models = tmp_path / "models"
    models.write_bytes(b"not a folder")
    rc, out, err = _download(tmp_path, server, models, capsys)
    assert rc == 1 and "Traceback" not in err
    assert f"cannot write {models}" in err and "a file stands where a folder is needed" in err
    assert models.read_bytes() == b"not a folder"


def test_a_folder_where_the_model_goes(server, tmp_path, capsys):
    models = tmp_path / "models"
    (models / "saliency" / "one.safetensors").mkdir(parents=True)
    rc, out, err = _download(tmp_path, server, models, capsys, "one")
    assert rc == 1 and "Traceback" not in err
    assert "a folder stands where the model file goes" in err
    assert _files(models) == ["saliency", "saliency/one.safetensors"]  # untouched, no .part beside it


def test_rename_refused(server, tmp_path, capsys, monkeypatch):
    models = tmp_path / "models"

    def denied(*a, **k):
        raise OSError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(dl.os, "replace", denied)
    rc, out, err = _download(tmp_path, server, models, capsys, "one")
    assert rc == 1 and "Traceback" not in err and "this user may not write there" in err
    assert _files(models) == []


def test_download_error_reason_is_destination(server, tmp_path):
    models = tmp_path / "models"
    models.write_bytes(b"x")
    man = mf.load_manifest(_manifest(tmp_path, server))
    with pytest.raises(dl.DownloadError) as ei:
        dl.download_entry(man.by_id("one"), models)
    assert ei.value.reason == "destination"


def test_writable_dir_still_downloads(server, tmp_path, capsys):
    models = tmp_path / "models"
    rc, out, err = _download(tmp_path, server, models, capsys)
    assert rc == 0, err
    assert (models / "saliency" / "one.safetensors").read_bytes() == HM.PAYLOAD
