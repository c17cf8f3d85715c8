"""core.parallel: row bands cover an image exactly once, errors come back, and the banded conversion gives
the bytes of the one-band one. (The nodes' banded outputs and NaN refusal: comfyui_in_process/
test_conditioners_nodes.py; nothing here imports comfyui_atelier.nodes, whose families need ComfyUI.)"""
from __future__ import annotations

import threading
import time

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


# ---------------------------------------------------------------------------------------------------------
# for_items: one image per CPU at a time (the conditioners' batches)
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 2, 3, 17])
def test_items_each_run_once_and_are_reported_in_the_caller(monkeypatch, n):
    monkeypatch.setattr(P, "cpus", lambda: 2)
    ran, reported, lock = [], [], threading.Lock()
    caller = threading.get_ident()

    def fn(i):
        with lock:
            ran.append((i, threading.get_ident()))

    P.for_items(fn, n, on_done=lambda i: reported.append((i, threading.get_ident())))
    assert sorted(i for i, _ in ran) == list(range(n))
    assert sorted(i for i, _ in reported) == list(range(n))
    assert all(t == caller for _, t in reported)  # the progress bar is only touched by the calling thread


def test_the_caller_is_a_lane_and_a_busy_pool_never_stalls_a_batch(monkeypatch):
    """With every pool thread held elsewhere, the calling thread runs the whole batch itself and returns: the
    pool lanes that never started are cancelled, not waited for."""
    monkeypatch.setattr(P, "cpus", lambda: 2)
    release = threading.Event()
    held = [P.pool().submit(release.wait, 20) for _ in range(P.pool()._max_workers)]
    try:
        ran, reported = [], []
        t = threading.Thread(target=P.for_items, args=(lambda i: ran.append(threading.get_ident()), 4),
                             kwargs={"on_done": reported.append})
        t.start()
        t.join(timeout=10)
        assert not t.is_alive(), "for_items waited for a pool lane that could not start"
        assert ran == [t.ident] * 4 and reported == [0, 1, 2, 3]
    finally:
        release.set()
        for f in held:
            f.result(timeout=20)


def test_items_run_side_by_side(monkeypatch):
    """Two lanes really overlap: each item waits until the other lane has started one."""
    monkeypatch.setattr(P, "cpus", lambda: 2)
    both = threading.Barrier(2, timeout=20)
    P.for_items(lambda i: both.wait(), 2)  # a sequential run would time out on the barrier


def test_an_item_error_stops_new_items_and_is_raised_after_the_running_ones(monkeypatch):
    monkeypatch.setattr(P, "cpus", lambda: 2)
    started, finished, lock = [], [], threading.Lock()
    gate = threading.Event()

    def fn(i):
        with lock:
            started.append(i)
        if i == 0:
            gate.wait(timeout=20)  # still running when item 1 fails
            with lock:
                finished.append(i)
            return
        gate.set()
        raise ValueError(f"item {i}")

    with pytest.raises(ValueError, match="item 1"):
        P.for_items(fn, 50)
    assert finished == [0]  # the running item was waited for
    assert len(started) < 50  # and no new item started after the error (at most one per lane raced it)


def test_an_on_done_error_stops_the_lanes(monkeypatch):
    """ComfyUI's interrupt is raised by the progress bar's update: nothing more runs, and nothing is left
    running when the call returns."""
    monkeypatch.setattr(P, "cpus", lambda: 2)
    running = []

    class Interrupted(Exception):
        pass

    def fn(i):
        running.append(i)
        time.sleep(0.002)  # 1000 items would take a second: the interrupt comes long before

    def on_done(i):
        raise Interrupted()

    with pytest.raises(Interrupted):
        P.for_items(fn, 1000, on_done=on_done)
    count = len(running)
    assert count < 100
    time.sleep(0.05)
    assert len(running) == count  # no lane went on after the call returned


def test_items_inside_a_pool_thread_or_on_one_cpu_run_in_order_in_that_thread(monkeypatch):
    monkeypatch.setattr(P, "cpus", lambda: 2)

    def task():
        seen = []
        P.for_items(lambda i: seen.append((i, threading.get_ident())), 5, on_done=lambda i: seen.append(-1))
        return seen, threading.get_ident()

    seen, ident = P.pool().submit(task).result(timeout=30)
    assert seen == [x for i in range(5) for x in ((i, ident), -1)]
    monkeypatch.setattr(P, "cpus", lambda: 1)
    seen = []
    P.for_items(lambda i: seen.append(threading.get_ident()), 3)
    assert seen == [threading.get_ident()] * 3


@pytest.fixture
def opencv_threads():
    """OpenCV at a thread count no default has (3), put back to what it was after the test."""
    import cv2
    before = cv2.getNumThreads()
    cv2.setNumThreads(3)
    yield cv2
    cv2.setNumThreads(before)


def test_lanes_run_opencv_on_one_thread_and_put_its_count_back(monkeypatch, opencv_threads):
    cv2 = opencv_threads
    monkeypatch.setattr(P, "cpus", lambda: 2)
    seen = []
    P.for_items(lambda i: seen.append(cv2.getNumThreads()), 6)
    assert seen == [1] * 6 and cv2.getNumThreads() == 3
    with pytest.raises(ValueError):  # an error in a lane, or an interrupt, puts it back too
        P.for_items(lambda i: (_ for _ in ()).throw(ValueError("x")), 6)
    assert cv2.getNumThreads() == 3
    with pytest.raises(KeyboardInterrupt):
        P.for_items(lambda i: None, 6, on_done=lambda i: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert cv2.getNumThreads() == 3
    seen = []
    P.for_items(lambda i: seen.append(cv2.getNumThreads()), 1)  # one item: no lanes, nothing changed
    assert seen == [3]


def test_overlapping_batches_in_two_threads_restore_opencv_once(monkeypatch, opencv_threads):
    """Two callers whose lanes overlap share one save: the count comes back when the last one ends, and it
    is the count from before the first (not the 1 the first had set)."""
    cv2 = opencv_threads
    monkeypatch.setattr(P, "cpus", lambda: 2)
    first_in, second_done = threading.Event(), threading.Event()

    def slow(i):  # item 0 holds one pool thread until the second batch is done; item 1 leaves the other free
        if i == 0:
            first_in.set()
            second_done.wait(timeout=20)

    t = threading.Thread(target=P.for_items, args=(slow, 2))
    t.start()
    assert first_in.wait(timeout=20)
    inside = []
    P.for_items(lambda i: inside.append(cv2.getNumThreads()), 2)
    assert inside == [1, 1] and cv2.getNumThreads() == 1  # the first batch still runs
    second_done.set()
    t.join(timeout=20)
    assert cv2.getNumThreads() == 3
