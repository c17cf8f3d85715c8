"""Nothing in the tree names the checkout's own location: a clone anywhere else must work the same.

The last CI passed only because it ran next to the original checkout (a test hard-coded an
absolute path into it). This guards every file git would ship, as it is in the working tree.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

from comfyui_atelier.client.runtime import PACK_DIR

# Absolute paths of machines we have worked on; none belongs in a file anyone else clones.
MACHINE_PATHS = re.compile(rb"(?<![\w.])/(?:work|root|home/[\w.-]+|Users/[\w.-]+)/[\w.-]+")


def shipped_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=PACK_DIR, capture_output=True, check=True).stdout
    return [PACK_DIR / p for p in out.decode().split("\0") if p and (PACK_DIR / p).is_file()]


def offending_lines(files: list[Path], needles: list[bytes]) -> list[str]:
    found = []
    for f in files:
        data = f.read_bytes()
        if b"\0" in data[:8192]:  # binary (images): no text paths to leak
            continue
        for n, line in enumerate(data.splitlines(), 1):
            if any(needle in line for needle in needles) or MACHINE_PATHS.search(line):
                name = f.relative_to(PACK_DIR) if f.is_relative_to(PACK_DIR) else f
                found.append(f"{name}:{n}: {line.decode(errors='replace').strip()[:160]}")
    return found


def test_no_file_names_the_checkout_or_a_machine_path():
    files = shipped_files()
    assert len(files) > 50, "git ls-files found too few files: is this a git checkout?"
    needles = [str(PACK_DIR).encode(), str(PACK_DIR.parent).encode() + b"/shared"]
    assert offending_lines(files, needles) == []


def test_the_guard_sees_a_planted_path(tmp_path):
    planted = tmp_path / "leak.py"
    home = "/" + "root"  # split so this file does not trip its own guard
    planted.write_text(f'TOKENIZER = "{PACK_DIR}/.venv/lib/tokenizer"\nOTHER = "{home}/cache/x"\nOK = "./models"\n')
    lines = offending_lines([planted], [str(PACK_DIR).encode()])
    assert len(lines) == 2
