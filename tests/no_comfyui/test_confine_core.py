"""core/confine.py: user-supplied file names stay inside their folders, with one uniform message."""
from __future__ import annotations

import os

import pytest

from comfyui_atelier.core import confine as C


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.bin").write_bytes(b"a")
    (root / "sub" / "b.bin").write_bytes(b"b")
    outside = tmp_path / "x"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(b"s")
    os.symlink(outside / "secret.bin", root / "link.bin")
    os.symlink(outside, root / "linkdir")
    return root, outside


@pytest.mark.parametrize("name", ["", " ", "..", "../a.bin", "sub/../../x", "sub\\..\\..\\x", "/etc/passwd",
                                  "\\\\server\\share", "C:evil", "a\x00.bin", None, 3])
def test_unsafe_names(name):
    assert not C.name_is_safe(name)


@pytest.mark.parametrize("name", ["a.bin", "sub/b.bin", "sub\\b.bin", "x..y.bin", "..hidden"])
def test_safe_names(name):
    assert C.name_is_safe(name)


def test_confine_resolves_inside(tree):
    root, _ = tree
    assert C.confine("a.bin", [root]) == os.path.join(str(root), "a.bin")
    assert C.confine("sub/b.bin", [root]).endswith(os.path.join("sub", "b.bin"))
    assert C.confine("sub", [root], kind="dir").endswith("sub")
    with pytest.raises(C.NotInFolderError):
        C.confine("sub", [root])  # a folder is not a file


def test_uniform_message_for_every_escape(tree):
    root, outside = tree
    depth = len(root.parts) - 1
    up = "/".join([".."] * depth)
    cases = {  # name -> exists outside?
        f"{up}{outside}/secret.bin": True,
        f"{up}{outside}/nope.bin": False,
        str(outside / "secret.bin"): True,
        str(outside / "nope.bin"): False,
        "link.bin": True,  # symlink escaping the folder
        "linkdir/secret.bin": True,
        "missing.bin": False,
    }
    assert os.path.isfile(os.path.join(str(root), f"{up}{outside}/secret.bin"))  # the traversal does reach it
    msgs = set()
    for name in cases:
        with pytest.raises(C.NotInFolderError) as ei:
            C.confine(name, [root], node="N", input="f")
        msgs.add(str(ei.value).replace(repr(name), "<NAME>"))
    assert len(msgs) == 1, msgs
    msg = msgs.pop()
    assert "[N] input 'f'" in msg and str(root) in msg and "secret" not in msg


def test_lexical_mode_follows_links_inside_names(tree):
    root, _ = tree
    assert C.confine("link.bin", [root], strict=False).endswith("link.bin")
    with pytest.raises(C.NotInFolderError):
        C.confine("../x/secret.bin", [root], strict=False)


def test_symlinked_root_is_fine(tree, tmp_path):
    root, _ = tree
    alias = tmp_path / "alias"
    os.symlink(root, alias)
    assert C.confine("a.bin", [alias]).endswith("a.bin")


def test_check_name_for_validate_inputs(tree):
    root, outside = tree
    assert C.check_name("a.bin", [root]) is True
    assert C.check_name("not-yet-written.bin", [root]) is True  # confined; may be written earlier in the queue
    bad = [C.check_name(n, [root]) for n in ("link.bin", str(outside / "secret.bin"), "../x/secret.bin",
                                             str(outside / "nope.bin"))]
    assert all(isinstance(b, str) for b in bad)
    assert len({b.split("'", 2)[0] + b.split("was not found", 1)[1] for b in bad}) == 1
