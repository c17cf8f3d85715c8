"""The one folder walker behind every model/font/style selector (stdlib only).

Selectors are listed on every ``/object_info``, so the walk must be cheap, bounded and safe:
symlinked folders are followed (users link model folders) but each real folder is visited once
(a link loop ends), depth and entry counts are capped, hidden entries are skipped, nothing is
created, and the result is cached until a folder's mtime changes (a 30 s time bucket also catches
files added deep inside, whose parent mtimes ComfyUI's folders do not reflect).
"""
from __future__ import annotations

import functools
import os
import time
from typing import Callable, Iterable, Iterator, Sequence

MAX_DEPTH = 8
MAX_ENTRIES = 50_000


def walk(root: str | os.PathLike, *, max_depth: int = MAX_DEPTH, max_entries: int = MAX_ENTRIES,
         stop: Callable[[str], bool] | None = None) -> Iterator[tuple[str, str]]:
    """Yield ``(relative posix path, full path)`` of every non-hidden file under ``root``, sorted.

    ``stop(dirpath)`` true: the folder itself is yielded as one entry (relative path of the folder)
    and not descended into -- for models that are folders (a predictor directory).
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        return
    seen: set[str] = set()
    budget = [max_entries]

    def visit(d: str, rel: str, depth: int) -> Iterator[tuple[str, str]]:
        real = os.path.realpath(d)
        if real in seen or budget[0] <= 0:
            return
        seen.add(real)
        try:
            with os.scandir(d) as it:
                entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError:
            return
        budget[0] -= len(entries)
        for e in entries:
            r = f"{rel}/{e.name}" if rel else e.name
            try:
                is_dir = e.is_dir()  # follows symlinks
            except OSError:
                continue
            if is_dir:
                if stop is not None and stop(e.path):
                    yield r, e.path
                elif depth < max_depth:
                    yield from visit(e.path, r, depth + 1)
            else:
                yield r, e.path

    yield from visit(root, "", 0)


def _stamp(roots: Sequence[str]) -> tuple:
    out = []
    for d in roots:
        try:
            out.append(os.stat(d).st_mtime_ns)
        except OSError:
            out.append(0)
    return (*out, int(time.monotonic() // 30))


@functools.lru_cache(maxsize=64)
def _listing(roots: tuple[str, ...], exts: tuple[str, ...], stop, stamp: tuple) -> tuple[tuple[str, str], ...]:
    found: dict[str, str] = {}
    for d in roots:
        for rel, full in walk(d, stop=stop):
            if rel.lower().endswith(exts) or (stop is not None and os.path.isdir(full)):
                found.setdefault(rel, full)
    return tuple(sorted(found.items(), key=lambda kv: kv[0].lower()))


def list_files(roots: Iterable[str | os.PathLike], exts: Iterable[str],
               stop: Callable[[str], bool] | None = None) -> list[tuple[str, str]]:
    """``(name relative to its folder, full path)`` for files ending in one of ``exts`` under the
    folders (the first folder wins a name), cached as the module says. Missing folders are skipped.
    ``stop`` as in :func:`walk`: such folders are listed as one entry each (a model that is a folder)."""
    roots_t = tuple(os.fspath(r) for r in roots)
    exts_t = tuple(e.lower() for e in exts)
    return list(_listing(roots_t, exts_t, stop, _stamp(roots_t)))
