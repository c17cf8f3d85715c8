"""copy_example_inputs (nodes/_example_inputs.py), inside a real ComfyUI: the shipped example images land in
ComfyUI's input folder, a user's file of the same name is never replaced, a second load copies nothing,
and a failure is one log line, never an exception."""
from __future__ import annotations

import logging
import os
import shutil

import pytest

from comfyui_atelier.client.runtime import PACK_DIR

EXAMPLES = PACK_DIR / "example_inputs"
SHIPPED = sorted(p.name for p in EXAMPLES.glob("*.png"))


@pytest.fixture
def copy_fn(comfy, monkeypatch):
    monkeypatch.delenv("ATELIER_NO_EXAMPLE_INPUTS", raising=False)
    from comfyui_atelier.nodes._example_inputs import copy_example_inputs

    return copy_example_inputs


def test_copies_the_missing_pngs_keeps_a_users_file_and_then_copies_nothing(copy_fn, tmp_path, caplog, monkeypatch):
    assert {"keyboard_skin_reference.png", "style07_ref_1.png", "style07_ref_2.png",
            "product_on_busy_background.png", "line_drawing_mug.png"} <= set(SHIPPED)
    inp = tmp_path / "input"
    inp.mkdir()
    users = inp / "style07_ref_1.png"
    users.write_bytes(b"the user's own picture")
    (inp / "keyboard_skin_reference.png").symlink_to(tmp_path / "nowhere.png")  # even a dangling link is theirs

    with caplog.at_level(logging.INFO, logger="atelier"):
        copied = copy_fn(inp)
    assert copied == [n for n in SHIPPED if n not in ("style07_ref_1.png", "keyboard_skin_reference.png")]
    for name in copied:
        assert (inp / name).read_bytes() == (EXAMPLES / name).read_bytes()
    assert users.read_bytes() == b"the user's own picture"
    assert (inp / "keyboard_skin_reference.png").is_symlink()
    # top level only: not the line2product dataset folder or its files; no temporary files left
    assert sorted(p.name for p in inp.iterdir()) == sorted(set(SHIPPED))
    lines = [r.getMessage() for r in caplog.records if "example inputs" in r.getMessage()]
    assert len(lines) == 1 and str(inp) in lines[0] and "product_on_busy_background.png" in lines[0]

    # already there: nothing is read or written (a copy attempt would raise), nothing logged
    monkeypatch.setattr(shutil, "copyfile", lambda *a, **k: (_ for _ in ()).throw(AssertionError("copied")))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="atelier"):
        assert copy_fn(inp) == []
    assert not caplog.records


def test_default_target_is_comfyuis_input_directory_and_respects_input_directory(copy_fn, tmp_path, monkeypatch):
    import folder_paths
    from comfy.cli_args import args

    default = tmp_path / "default_input"
    monkeypatch.setattr(folder_paths, "get_input_directory", lambda: str(default))
    monkeypatch.setattr(args, "input_directory", None, raising=False)
    assert copy_fn() == SHIPPED
    assert sorted(p.name for p in default.iterdir()) == SHIPPED  # created when missing
    # --input-directory: early-2024 ComfyUI applies it only after loading custom nodes; it wins either way
    custom = tmp_path / "custom_input"
    monkeypatch.setattr(args, "input_directory", str(custom), raising=False)
    assert copy_fn() == SHIPPED
    assert sorted(p.name for p in custom.iterdir()) == SHIPPED


def test_a_failure_is_one_log_line_and_the_opt_out_copies_nothing(copy_fn, tmp_path, caplog, monkeypatch):
    not_a_dir = tmp_path / "input"
    not_a_dir.write_text("a file where the input folder should be")
    with caplog.at_level(logging.INFO, logger="atelier"):
        assert copy_fn(not_a_dir) == []
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "copy the pack's example_inputs/*.png there by hand" in warnings[0].getMessage()

    inp = tmp_path / "opted_out"
    monkeypatch.setenv("ATELIER_NO_EXAMPLE_INPUTS", "1")
    assert copy_fn(inp) == []
    assert not inp.exists()


def test_loading_the_pack_fills_comfyuis_input_folder(comfy):
    """Importing the node families (what ComfyUI's loader does) ran the copy into this ComfyUI's input folder."""
    import folder_paths

    import comfyui_atelier.nodes  # noqa: F401

    inp = folder_paths.get_input_directory()
    assert set(SHIPPED) <= set(os.listdir(inp))
