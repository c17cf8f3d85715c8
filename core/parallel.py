"""The pack's one thread pool, for CPU work that releases the GIL (numpy ufuncs, OpenCV, PIL resizes).

Torch is never called from these threads (its own intra-op threads are left alone), so the pool adds no
OpenMP regions and changes no process-wide setting. Threads start on first use and are reused; there are
at most 8, and never more than the CPUs this process may run on.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

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
    if n < 2 or threading.current_thread().name.startswith(_PREFIX):
        fn(0, h)
        return
    step = -(-h // n)
    bounds = [(r, min(h, r + step)) for r in range(0, h, step)]
    futures = [pool().submit(fn, r0, r1) for r0, r1 in bounds[1:]]
    try:
        fn(*bounds[0])
    finally:
        errors = [f.exception() for f in futures]  # waits for every band, even when ours failed
    for e in errors:
        if e is not None:
            raise e
