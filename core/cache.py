"""The one path+mtime cache for things loaded from files (models, adapters, LoRAs, fonts).

A file replaced under the same name (a retrained adapter, a re-downloaded model) has a new
mtime or size, so it is loaded again; the old entry is dropped. Thread-safe: ComfyUI may run
``/object_info`` and a prompt at the same time, and two loads of one file share one result.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

T = TypeVar("T")


def file_stamp(path: str | os.PathLike) -> tuple[str, int, int]:
    """(real path, mtime_ns, size): what changes when the file is replaced. For a folder (a
    predictor directory), the newest mtime and total size of the files directly inside it."""
    real = os.path.realpath(path)
    st = os.stat(real)
    if not os.path.isdir(real):
        return real, st.st_mtime_ns, st.st_size
    mtime, size = st.st_mtime_ns, 0
    with os.scandir(real) as it:
        for e in it:
            if e.is_file():
                s = e.stat()
                mtime, size = max(mtime, s.st_mtime_ns), size + s.st_size
    return real, mtime, size


class FileCache(Generic[T]):
    """``cache.get(path, load)`` returns ``load(path)``, reusing it while the file is unchanged.

    ``extra`` keys let one file give several cached values (e.g. a device or a dtype). At most
    ``max_items`` values are kept (least recently used dropped first).
    """

    def __init__(self, max_items: int = 4):
        self.max_items = max_items
        self._items: OrderedDict[Hashable, tuple[tuple, T]] = OrderedDict()
        self._lock = threading.RLock()

    def get(self, path: str | os.PathLike, load: Callable[[str], T], *extra: Hashable) -> T:
        stamp = file_stamp(path)
        key = (stamp[0], *extra)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None and hit[0] == stamp[1:]:
                self._items.move_to_end(key)
                return hit[1]
            value = load(os.fspath(path))
            self._items[key] = (stamp[1:], value)
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
            return value

    def peek(self, path: str | os.PathLike, *extra: Hashable) -> T | None:
        """The cached value if the file is unchanged since it was loaded, else None (never loads)."""
        try:
            stamp = file_stamp(path)
        except OSError:
            return None
        with self._lock:
            hit = self._items.get((stamp[0], *extra))
            return hit[1] if hit is not None and hit[0] == stamp[1:] else None

    def values(self) -> list[T]:
        with self._lock:
            return [v for _, v in self._items.values()]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
