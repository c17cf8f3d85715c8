"""The pack's one thread pool, for CPU work that releases the GIL (numpy ufuncs, OpenCV, PIL resizes).

Torch is never called from these threads (its own intra-op threads are left alone), so the pool adds no
OpenMP regions. The one process-wide setting it touches is OpenCV's thread count, set to 1 while a batch's
lanes run (:func:`for_items`) and put back when the last lane ends. Threads start on first use and are
reused; there are at most 8, and never more than the CPUs this process may run on.
"""
from __future__ import annotations

import contextlib
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import cv2

_POOL: ThreadPoolExecutor | None = None
_PREFIX = "atelier-cpu"


def cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(1, min(8, cpus())), thread_name_prefix=_PREFIX)
    return _POOL


_LANE = threading.local()  # .active: the calling thread runs its own lane of for_items


def _in_lane() -> bool:
    """Is the calling thread one of the pool's, or a caller running its own lane of :func:`for_items`? (Its
    work must not wait on tasks queued behind it, nor split itself while the other lanes keep the CPUs busy.)"""
    return threading.current_thread().name.startswith(_PREFIX) or getattr(_LANE, "active", False)


_BAND = threading.local()  # .active: the calling thread runs the first of several row bands


def in_parallel() -> bool:
    """Is the calling thread doing one of several pieces of work that run at the same time (a pool task, the
    caller's lane of :func:`for_items`, or the first band of :func:`for_row_bands`)? Then other threads take
    the GIL between its numpy/OpenCV calls, and fewer, larger calls are faster (core.images.strip_rows)."""
    return _in_lane() or getattr(_BAND, "active", False)


#: below this many pixels a split costs more than it saves: at 512² a hand-off (~20-40 us) and two threads
#: contending with OpenCV's own spinning workers made a 0.5 ms call 10-20 % slower; from 1024² it pays
MIN_SPLIT_PIXELS = 1_000_000


def for_row_bands(fn: Callable[[int, int], None], h: int, w: int) -> None:
    """Call ``fn(r0, r1)`` on bands of rows that cover ``0..h`` exactly once: one band per CPU (at most 8),
    the first in the calling thread, the others in the pool; returns when all are done and re-raises the
    first band's error. One band (a plain call) when the image is small or only one CPU is available, and
    inside a pool thread (a task waiting on tasks queued behind it could wait for ever). ``fn`` must write
    only its own rows."""
    if h * w < MIN_SPLIT_PIXELS:  # checked first: the common small case costs no system call
        fn(0, h)
        return
    n = min(cpus(), 8, h)
    if n < 2 or _in_lane():
        fn(0, h)
        return
    step = -(-h // n)
    bounds = [(r, min(h, r + step)) for r in range(0, h, step)]
    futures = [pool().submit(fn, r0, r1) for r0, r1 in bounds[1:]]
    was, _BAND.active = getattr(_BAND, "active", False), True
    try:
        fn(*bounds[0])
    finally:
        _BAND.active = was
        errors = [f.exception() for f in futures]  # waits for every band, even when ours failed
    for e in errors:
        if e is not None:
            raise e


_CV2_LOCK = threading.Lock()
_cv2_users = 0
_cv2_threads = 0


@contextlib.contextmanager
def one_opencv_thread() -> Iterator[None]:
    """OpenCV's parallel loops off while the block runs, its thread count put back after (nested and
    concurrent blocks share one save and restore). Lanes that already keep every core busy otherwise
    start OpenCV loops of two threads each beside the other lanes: eight 1024² Canny/Lineart images on two
    lanes took 0.86-0.91x the time with one OpenCV thread."""
    global _cv2_users, _cv2_threads
    with _CV2_LOCK:
        if _cv2_users == 0:
            _cv2_threads = cv2.getNumThreads()
            cv2.setNumThreads(1)
        _cv2_users += 1
    try:
        yield
    finally:
        with _CV2_LOCK:
            _cv2_users -= 1
            if _cv2_users == 0:
                cv2.setNumThreads(_cv2_threads)


def for_items(fn: Callable[[int], None], n: int, *, on_done: Callable[[int], None] | None = None) -> None:
    """Call ``fn(i)`` for every ``i`` in ``0..n-1``, one item per CPU at a time (at most 8 lanes, each taking
    the next item as it finishes one), and ``on_done(i)`` in the calling thread for every item that ends.

    For a batch of images this uses the CPUs better than splitting each image: OpenCV's own parallel loops
    and row bands keep two cores only ~85-90 % busy on one image, whole images in parallel keep them full.
    The calling thread is one of the lanes (the others are pool threads), and calls ``on_done`` after each of
    its items for every item ended by then: a caller that only waited while two pool lanes worked added a
    thread and a wake-up per item, and eight 512² Lineart images took 1.10-1.13x the time (medians of 40
    batches, 10.8 vs 9.6-9.9 ms; p90 12.1-13.6 vs 10.1-11.1 ms). Inside a lane, :func:`for_row_bands` and a nested
    ``for_items`` run inline and OpenCV runs on one thread (:func:`one_opencv_thread`), so no core is
    oversubscribed. A pool lane that has not started when the items run out is cancelled, not waited for (a
    pool kept busy elsewhere never stalls a batch: the caller then runs every item). After an error in ``fn``
    or in ``on_done`` (e.g. ComfyUI's interrupt, raised by the progress bar) no new item starts; the call
    returns only when the running ones have ended, and re-raises the first error. Sequential (in the calling
    thread) for one item, one CPU, or inside a lane. ``fn`` must write only its own item's data."""
    lanes = min(cpus(), 8, n) if n > 1 else n  # one item: no system call to count the CPUs
    if lanes < 2 or _in_lane():
        for i in range(n):
            fn(i)
            if on_done is not None:
                on_done(i)
        return
    items = iter(range(n))
    take = threading.Lock()
    stop = threading.Event()
    events: queue.SimpleQueue = queue.SimpleQueue()  # from pool lanes: (i, None) done, (i, error), None: ended

    def next_item() -> int | None:
        with take:
            return None if stop.is_set() else next(items, None)

    def pool_lane() -> None:
        try:
            while (i := next_item()) is not None:
                try:
                    fn(i)
                except BaseException as e:  # handed to the caller, which re-raises it
                    stop.set()
                    events.put((i, e))
                    return
                events.put((i, None))
        finally:
            events.put(None)

    first: BaseException | None = None
    running = lanes - 1  # pool lanes that have not said they ended

    def handle(event) -> None:
        nonlocal first, running
        if event is None:
            running -= 1
        elif event[1] is not None:
            first = first or event[1]
        elif on_done is not None and first is None:
            on_done(event[0])

    with one_opencv_thread():
        futures = [pool().submit(pool_lane) for _ in range(lanes - 1)]
        was, _LANE.active = getattr(_LANE, "active", False), True
        try:
            while (i := next_item()) is not None:  # the caller's own lane
                fn(i)
                handle((i, None))
                with contextlib.suppress(queue.Empty):
                    while True:
                        handle(events.get_nowait())
            _LANE.active = was
            running -= sum(f.cancel() for f in futures)  # never started: there is nothing left for them
            while running:
                handle(events.get())
        except BaseException as e:  # fn or on_done raised (an interrupt): stop the lanes, then re-raise
            first = first or e
        finally:
            _LANE.active = was
            stop.set()
            for f in futures:
                if not f.cancelled():
                    f.result()  # wait: no lane may still write into the caller's buffers after we return
    if first is not None:
        raise first
