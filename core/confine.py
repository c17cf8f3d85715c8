"""The one confinement helper for user-supplied file names (stdlib only).

A node input that names a file (a style file, a model, a font) is text a prompt sender chose, and
a prompt arrives over HTTP. Such a name must resolve inside the folders the node lists:

- lexically: a relative name, no ``..`` component, no absolute path, drive or UNC prefix, no NUL;
- physically (``strict=True``, the default): the resolved path (symlinks followed) lies inside the
  resolved folder, so a symlink in the folder cannot point out of it. A symlinked *folder* root is
  fine (the root is resolved too). ``strict=False`` keeps only the lexical rule, for ComfyUI model
  folders, where ComfyUI's own loaders follow file symlinks placed by the admin.

Every refusal, and "not found", raises one uniform :class:`NotInFolderError` whose text does not
depend on whether a file exists anywhere, so the message reveals nothing about the disk outside.
"""
from __future__ import annotations

import os
import re
from typing import Iterable, Sequence

from .errors import AtelierError

KINDS = ("file", "dir", "any")
_DRIVE = re.compile(r"^[A-Za-z]:")


class NotInFolderError(AtelierError):
    """A user-supplied name that does not name a file inside the node's folders (or is not there)."""


def name_is_safe(name: object) -> bool:
    """True for a relative name without '..' (either separator), drive, UNC or NUL: the lexical rule."""
    if not isinstance(name, str):
        return False
    s = name.strip()
    if not s or "\x00" in s or s.startswith(("/", "\\")) or _DRIVE.match(s) or os.path.isabs(s):
        return False
    parts = re.split(r"[\\/]+", s)
    return ".." not in parts


def _inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives
        return False


def _kind_ok(path: str, kind: str) -> bool:
    if kind == "file":
        return os.path.isfile(path)
    if kind == "dir":
        return os.path.isdir(path)
    return os.path.exists(path)


def candidate(name: str, root: str | os.PathLike, *, strict: bool = True) -> str | None:
    """`root/name` when `name` passes the lexical rule and (strict) its real path stays inside
    root's real path; None otherwise. Does not check that it exists."""
    if not name_is_safe(name):
        return None
    root = os.fspath(root)
    path = os.path.join(root, *re.split(r"[\\/]+", name.strip()))
    if strict:
        real_root = os.path.realpath(root)
        if not _inside(os.path.realpath(path), real_root):
            return None
    return path


def not_in_folder(name: object, *, what: str = "file", node: str | None = None, input: str | None = None,
                  folders: Sequence[str | os.PathLike] = (), fix: str | None = None) -> NotInFolderError:
    """The uniform error: the same text whether `name` exists outside, does not exist, or escapes."""
    where = ", ".join(os.fspath(f) for f in folders) or "(no folder configured)"
    return NotInFolderError(f"{what} {str(name)!r} was not found inside the folders this node lists", node=node,
                            input=input, expected=f"a name from the list, i.e. a {what} inside: {where}",
                            fix=fix or "pick an entry from the list (press R to refresh after adding files); "
                                       "names are relative to those folders, without '..' or absolute paths, "
                                       "and a symlink may not point outside them.")


def confine(name: object, folders: Iterable[str | os.PathLike], *, kind: str = "file", strict: bool = True,
            what: str = "file", node: str | None = None, input: str | None = None,
            fix: str | None = None) -> str:
    """Full path of the first folder's `name` that is confined (see module doc) and is a `kind`;
    otherwise the uniform NotInFolderError."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    folders = [f for f in folders]
    if isinstance(name, str):
        for root in folders:
            path = candidate(name, root, strict=strict)
            if path is not None and _kind_ok(path, kind):
                return path
    raise not_in_folder(name, what=what, node=node, input=input, folders=folders, fix=fix)


def check_name(name: object, folders: Iterable[str | os.PathLike], *, strict: bool = True,
               what: str = "file", node: str | None = None, input: str | None = None) -> bool | str:
    """For VALIDATE_INPUTS: True when `name` could name a file inside `folders` (it passes the
    lexical rule and, where it exists, does not escape); else the uniform message. A confined name
    that does not exist yet passes (a file written earlier in the same queue)."""
    folders = [f for f in folders]
    if isinstance(name, str) and name_is_safe(name):
        ok = True
        for root in folders:
            plain = os.path.join(os.fspath(root), *re.split(r"[\\/]+", name.strip()))
            if os.path.lexists(plain) and candidate(name, root, strict=strict) is None:
                ok = False  # exists there but resolves outside
                break
        if ok:
            return True
    return str(not_in_folder(name, what=what, node=node, input=input, folders=folders))
