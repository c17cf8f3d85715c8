"""The shipped workflows' example images reach ComfyUI's input folder when ComfyUI loads the pack.

Why: ComfyUI's Load Image node offers only the files at the top level of ComfyUI's input directory
(`folder_paths.get_input_directory()`, which `--input-directory` moves). The shipped workflows load
example images (keyboard_skin_reference.png, style07_ref_1.png, ...) that live in the pack's
`example_inputs/`; without a copy in the input folder a user opening a workflow from the Templates
browser would see a red "image not found" and have to hunt for the file and upload it by hand.

Rules: a file already there under the same name is never replaced (it may be the user's own image);
nothing is copied when everything is present (one stat per file, so loading stays cheap); each copy
is written to a temporary name and renamed (never a half-written PNG in the folder); an error never
stops the pack from loading (one log line says what to copy by hand). Set ATELIER_NO_EXAMPLE_INPUTS=1
to skip the copy altogether.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ..core.files import atomic_path

log = logging.getLogger("atelier")

EXAMPLE_INPUTS_DIR = Path(__file__).resolve().parent.parent / "example_inputs"
OPT_OUT_ENV = "ATELIER_NO_EXAMPLE_INPUTS"


class _AppearedMeanwhile(Exception):
    """A file of that name turned up while we were copying: theirs wins."""


def comfy_input_directory() -> str | None:
    """ComfyUI's input folder, or None outside ComfyUI.

    ComfyUI from early 2024 applies --input-directory to folder_paths only after it has loaded the custom
    nodes, so the command-line value is taken first (it is what folder_paths will hold a moment later);
    current ComfyUI has applied it already, and both give the same folder."""
    try:
        import folder_paths
    except ImportError:
        return None
    try:
        from comfy.cli_args import args

        if getattr(args, "input_directory", None):
            return os.path.abspath(args.input_directory)
    except Exception:  # an odd ComfyUI without cli_args: folder_paths alone decides
        pass
    return folder_paths.get_input_directory()


def copy_example_inputs(input_dir: str | os.PathLike | None = None,
                        source_dir: str | os.PathLike = EXAMPLE_INPUTS_DIR) -> list[str]:
    """Copy each `source_dir/*.png` (top level only) into ComfyUI's input folder unless that name exists.

    input_dir: the folder to fill (default: ComfyUI's input directory; nothing happens outside ComfyUI).
    Returns the names copied (empty when all were there). Never raises: a failure is logged once.
    """
    if os.environ.get(OPT_OUT_ENV, "").strip().lower() in ("1", "true", "yes"):
        return []
    copied: list[str] = []
    target = None
    try:
        target = os.fspath(input_dir) if input_dir is not None else comfy_input_directory()
        if not target:
            return []
        with os.scandir(source_dir) as entries:
            names = sorted(e.name for e in entries if e.name.lower().endswith(".png") and e.is_file())
        missing = [n for n in names if not os.path.lexists(os.path.join(target, n))]
        if not missing:
            return []
        os.makedirs(target, exist_ok=True)
        for name in missing:
            dest = os.path.join(target, name)
            try:
                with atomic_path(dest) as tmp:
                    shutil.copyfile(os.path.join(source_dir, name), tmp)
                    if os.path.lexists(dest):
                        raise _AppearedMeanwhile
            except _AppearedMeanwhile:
                continue
            copied.append(name)
    except Exception as exc:  # never take the pack down over example images
        log.warning("[Atelier] could not copy the example inputs into ComfyUI's input folder %s (%s: %s); "
                    "copy the pack's example_inputs/*.png there by hand for the shipped workflows' Load Image nodes",
                    target or "(unknown)", type(exc).__name__, exc)
        return copied
    if copied:
        log.info("[Atelier] copied example inputs for the shipped workflows into %s: %s", target, ", ".join(copied))
    return copied
