"""Writing files so that a reader never sees half of one (stdlib only)."""
from __future__ import annotations

import contextlib
import os
import uuid
from typing import Iterator


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
