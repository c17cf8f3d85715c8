"""Files (stdlib only): writing them so that a reader never sees half of one, and a folder's images by id.

An image's id is its file name without the extension (surrounding spaces removed), never its position
in a listing: the batch client, the dataset tools and nodes, and the trainers all key images this way.
"""
from __future__ import annotations

import contextlib
import os
import uuid
from typing import Iterator

from .errors import AtelierError

#: what counts as an image file (by extension, any case); hidden files (".name") never do
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temporary path beside `dest` (``<dest>.<8 hex><suffix>``); when the block succeeds it is
    renamed onto `dest`, when it raises (or is interrupted) the temporary file is removed and `dest`
    is untouched."""
    dest = os.fspath(dest)
    tmp = f"{dest}.{uuid.uuid4().hex[:8]}{suffix}"
    try:
        yield tmp
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def images_by_id(folder: str | os.PathLike, *, node: str | None = None, input: str | None = None) -> dict[str, str]:
    """{id: path} of the image files directly in ``folder``, in file-name order. Hidden files (macOS's
    ``._name.png`` companions among them) and folders are skipped; two files with one id (``a.png`` and
    ``a.jpg``) are refused, all such ids named in one error."""
    folder = os.fspath(folder)
    images: dict[str, str] = {}
    dups: dict[str, list[str]] = {}
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        path = os.path.join(folder, name)
        if ext.lower() not in IMAGE_EXTS or name.startswith(".") or not os.path.isfile(path):
            continue
        key = stem.strip()
        if key in images:
            dups.setdefault(key, [os.path.basename(images[key])]).append(name)
        images[key] = path
    if dups:
        lines = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(dups.items()))
        raise AtelierError(f"several image files share an id in '{folder}': {lines}", node=node, input=input,
                           expected="one image per id (the file name without its extension)",
                           fix="remove or rename the extra files")
    return images
