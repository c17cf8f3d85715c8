"""What a newcomer and the Comfy Registry see first: licence, icon, version, package data."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_license_file_matches_the_declared_licence():
    declared = PYPROJECT["project"]["license"]["text"]
    assert declared == "GPL-3.0-or-later"
    text = " ".join((ROOT / "LICENSE").read_text().split())
    assert text.startswith("GNU GENERAL PUBLIC LICENSE Version 3, 29 June 2007")
    assert "END OF TERMS AND CONDITIONS" in text  # the whole licence, not an excerpt


def test_registry_icon_is_in_the_repo_where_pyproject_points():
    icon = PYPROJECT["tool"]["comfy"]["Icon"]
    repo = PYPROJECT["project"]["urls"]["Repository"].removeprefix("https://github.com/")
    m = re.fullmatch(rf"https://raw\.githubusercontent\.com/{re.escape(repo)}/main/(.+)", icon)
    assert m, f"Icon {icon} is not a raw file of {repo}"
    with Image.open(ROOT / m.group(1)) as im:
        assert im.format == "PNG" and im.size[0] == im.size[1] <= 400  # the Registry's square, max 400 px


def test_package_data_ships_every_asset_the_nodes_and_workflows_need():
    globs = PYPROJECT["tool"]["setuptools"]["package-data"]["comfyui_atelier"]
    covered = {p for g in globs for p in ROOT.glob(g)}
    for folder, pattern in (("workflows", "*.json"), ("presets", "*.json"), ("layouts", "*.json"),
                            ("js", "*.js"), ("example_inputs", "*.png")):
        files = set((ROOT / folder).glob(pattern))
        assert files and files <= covered, f"{folder}/{pattern} not all in package-data"


def test_demo_models_ship_with_the_client():
    """`atelier demo` builds its tiny plumbing-check models from client/demo_models.py, which an installed
    wheel must carry; the core (the algorithms) holds no test or demo model builders."""
    packages = PYPROJECT["tool"]["setuptools"]["packages"]
    assert PYPROJECT["tool"]["setuptools"]["package-dir"]["comfyui_atelier"] == "."
    assert "comfyui_atelier.client" in packages and (ROOT / "client" / "demo_models.py").is_file()
    demo = (ROOT / "client" / "demo.py").read_text()
    assert "from . import demo_models" in demo
    assert not [m for m in re.findall(r"^\s*(?:from|import) (\S+)", demo, re.M) if m.startswith("tests")]
    assert not (ROOT / "core" / "tiny_models.py").exists()
