"""core.parallel: row bands cover an image exactly once, errors come back, and the banded conversion gives
the bytes of the one-band one. (The nodes' banded outputs and NaN refusal: comfyui_in_process/
test_conditioners_nodes.py; nothing here imports comfyui_atelier.nodes, whose families need ComfyUI.)"""
from __future__ import annotations

import threading

import numpy as np
import pytest

from comfyui_atelier.core import edges as E
from comfyui_atelier.core import parallel as P


@pytest.fixture
def split_everything(monkeypatch):
    """Bands for any image size, and at least two CPUs (so the banded path runs on a 1-CPU machine too)."""
    monkeypatch.setattr(P, "MIN_SPLIT_PIXELS", 0)
    monkeypatch.setattr(P, "cpus", lambda: 2)


@pytest.mark.parametrize("h", [1, 2, 7, 13, 100, 1000])
def test_bands_cover_every_row_once(split_everything, h):
    seen, threads, lock = [], set(), threading.Lock()

    def fn(r0, r1):
        with lock:
            seen.append((r0, r1))
            threads.add(threading.get_ident())

    P.for_row_bands(fn, h, 10)
    rows = sorted(r for r0, r1 in seen for r in range(r0, r1))
    assert rows == list(range(h))
    if h >= 2:
        assert len(seen) >= 2 and threading.get_ident() in threads  # the caller takes the first band


def test_small_image_is_one_plain_call(monkeypatch):
    monkeypatch.setattr(P, "cpus", lambda: 4)
    seen = []
    P.for_row_bands(lambda r0, r1: seen.append((r0, r1, threading.get_ident())), 10, 10)
    assert seen == [(0, 10, threading.get_ident())]


def test_a_band_error_is_raised_after_all_bands_ran(split_everything):
    done = []

    def fn(r0, r1):
        if r0 > 0:
            raise ValueError(f"band {r0}")
        done.append(r0)

    with pytest.raises(ValueError, match="band"):
        P.for_row_bands(fn, 100, 10)
    assert done == [0]


def test_bands_inside_a_pool_thread_run_inline(split_everything):
    """A pool task that splits rows again must not queue behind itself: it runs its bands in its own thread."""
    def task():
        seen = []
        P.for_row_bands(lambda r0, r1: seen.append((r0, r1, threading.get_ident())), 100, 10)
        return seen, threading.get_ident()

    results = [f.result(timeout=30) for f in [P.pool().submit(task) for _ in range(8)]]
    for seen, ident in results:
        assert seen == [(0, 100, ident)]


@pytest.mark.parametrize("shape", [(1100, 1003, 3), (517, 64, 3), (3, 5, 3)])
def test_banded_gray_is_the_one_band_bytes(split_everything, monkeypatch, shape):
    rng = np.random.default_rng(shape[0])
    img = rng.random(shape, dtype=np.float32)
    img[0, 0] = 1.0
    banded = E.to_gray_u8(img, finite=True)
    monkeypatch.setattr(P, "MIN_SPLIT_PIXELS", 10**12)
    assert np.array_equal(banded, E.to_gray_u8(img, finite=True))
    # what Save Image writes, truncated, then BT.601 (the contract of to_gray_u8)
    want = (np.clip(img * np.float32(255), 0, 255).astype(np.uint8) @ np.array([0.299, 0.587, 0.114])).round()
    assert np.abs(banded.astype(int) - want).max() <= 1
