"""Preset files of the prompt family: schema checks, bounded loading, folder signatures, look-up.

Pure Python (no torch, no ComfyUI). A preset is a JSON object (or a list of them) in a preset folder;
the schema is in ``presets/README.md``. Bad files never stop the others: each is named in
``PresetLoad.errors``. Files are bounded before parsing (size, nesting depth).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .errors import AtelierError
from .jsontext import depth_problem as json_depth_problem  # noqa: F401  (named so by the manifest and tests)

POSITIONS = ("prefix", "suffix")
PRESET_KEYS = {"name", "description", "positive", "position", "negative", "categories", "template", "style",
               "match"}
#: how category keywords are found: anywhere as a whole word, or only as the head noun of a phrase
MATCH_MODES = ("word", "head")
CATEGORY_KEYS = {"keywords", "negative"}
TEMPLATE_FIELDS = {"prompt", "style"}

#: the pack's own presets (repo root / presets)
SHIPPED_PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"


# --------------------------------------------------------------------------- presets

@dataclass(frozen=True)
class Category:
    """Negative text added when any keyword appears in the prompt (whole words, any case)."""
    name: str
    keywords: tuple[str, ...]
    negative: str


@dataclass(frozen=True)
class Preset:
    name: str
    positive: str = ""
    position: str = "prefix"
    negative: str = ""
    categories: tuple[Category, ...] = ()
    template: str | None = None
    style: str = ""
    description: str = ""
    source: str = ""  # file it came from
    match: str = "word"  # MATCH_MODES: how category keywords are found in the prompt

    @property
    def needs_style(self) -> bool:
        return self.template is not None and "{style}" in self.template


@dataclass
class PresetLoad:
    """Result of loading preset folders: good presets by name, and one message per bad file."""
    presets: dict[str, Preset] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    overridden: list[str] = field(default_factory=list)  # "name: a.json replaced by b.json"

    @property
    def names(self) -> list[str]:
        return list(self.presets)


def _check_str(data: dict, key: str, where: str, default: str = "") -> str:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ValueError(f"{where}'{key}' must be a string, got {type(value).__name__}")
    return value


def parse_preset(data: object, source: str = "") -> Preset:
    """Validate one preset object (already parsed from JSON). Raises ValueError with the reason."""
    if not isinstance(data, dict):
        raise ValueError(f"a preset must be a JSON object, got {type(data).__name__}")
    unknown = sorted(k for k in data if k not in PRESET_KEYS and not k.startswith(("_", "$")))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; allowed keys are {sorted(PRESET_KEYS)} "
                         "(keys starting with '_' or '$' are ignored, use them for comments)")
    name = _check_str(data, "name", "")
    if not name.strip():
        raise ValueError("'name' is missing or empty")
    name = name.strip()
    where = f"preset '{name}': "
    position = _check_str(data, "position", where, "prefix").strip().lower() or "prefix"
    if position not in POSITIONS:
        raise ValueError(f"{where}'position' must be 'prefix' or 'suffix', got {position!r}")
    template = data.get("template")
    if template is not None:
        if not isinstance(template, str):
            raise ValueError(f"{where}'template' must be a string")
        fields = set(re.findall(r"\{(\w*)\}", template))
        bad = sorted(fields - TEMPLATE_FIELDS)
        if bad:
            raise ValueError(f"{where}'template' has unknown placeholder(s) {bad}; use {{prompt}} and {{style}}")
        if "{prompt}" not in template:
            raise ValueError(f"{where}'template' must contain {{prompt}}")
    match = _check_str(data, "match", where, "word").strip().lower() or "word"
    if match not in MATCH_MODES:
        raise ValueError(f"{where}'match' must be 'word' (a keyword anywhere, as a whole word) or 'head' "
                         f"(only the head noun of a phrase: 'bottle holder' is a holder), got {match!r}")
    style = _check_str(data, "style", where).strip()
    if style:
        style = normalise_style_id(style, node="preset file", input=f"{name}.style")
    cats_raw = data.get("categories") or {}
    if not isinstance(cats_raw, dict):
        raise ValueError(f"{where}'categories' must be an object {{category: {{keywords: [...], negative: '...'}}}}")
    categories = []
    for cname, cat in cats_raw.items():
        cw = f"{where}category '{cname}': "
        if not isinstance(cat, dict):
            raise ValueError(f"{cw}must be an object with 'keywords' and 'negative'")
        extra = sorted(k for k in cat if k not in CATEGORY_KEYS and not k.startswith(("_", "$")))
        if extra:
            raise ValueError(f"{cw}unknown key(s) {extra}; allowed keys are ['keywords', 'negative']")
        kws = cat.get("keywords")
        if isinstance(kws, str):
            kws = [kws]
        if not isinstance(kws, list) or not kws or not all(isinstance(k, str) and k.strip() for k in kws):
            raise ValueError(f"{cw}'keywords' must be a non-empty list of strings")
        categories.append(Category(str(cname), tuple(k.strip() for k in kws), _check_str(cat, "negative", cw)))
    return Preset(name=name, positive=_check_str(data, "positive", where), position=position,
                  negative=_check_str(data, "negative", where), categories=tuple(categories),
                  template=template, style=style, description=_check_str(data, "description", where),
                  source=source, match=match)


MAX_PRESET_FILE_BYTES = 1 << 20  # a preset file is a few KB; 1 MiB is far beyond any real one
MAX_PRESET_DEPTH = 32  # a preset is 4 levels deep ([ {categories: {name: {keywords: [...]}}} ])


def load_preset_file(path: str | os.PathLike) -> list[Preset]:
    """Presets in one JSON file: a single preset object or a list of them. Raises ValueError.

    Bounded: a file over MAX_PRESET_FILE_BYTES or nested deeper than MAX_PRESET_DEPTH is refused
    before it is parsed (so it cannot exhaust memory or the recursion limit)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_PRESET_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read file: {exc}") from exc
    if len(raw) > MAX_PRESET_FILE_BYTES:
        raise ValueError(f"file is larger than {MAX_PRESET_FILE_BYTES // 1024} KiB; a preset file is a few KB "
                         "(split it or remove what is not a preset)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"cannot read file: {exc}") from exc
    deep = json_depth_problem(text, MAX_PRESET_DEPTH)
    if deep:
        raise ValueError(f"JSON is {deep}; a preset needs at most 4")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    except RecursionError as exc:  # belt and braces: the scan above should have caught it
        raise ValueError("JSON is nested too deeply") from exc
    items = data if isinstance(data, list) else [data]
    return [parse_preset(item, str(path)) for item in items]


def load_presets(dirs: Iterable[str | os.PathLike]) -> PresetLoad:
    """Load every ``*.json`` in the folders, in order; a later folder's preset replaces an earlier
    one of the same name (so a user folder listed last can override a shipped preset).

    A bad file never stops the others: its message (naming the file) goes to ``errors``.
    Missing folders are skipped silently.
    """
    out = PresetLoad()
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            continue
        for path in sorted(d.glob("*.json")):
            try:
                found = load_preset_file(path)
            except (ValueError, RecursionError, MemoryError) as exc:
                out.errors.append(f"preset file {path}: {exc or type(exc).__name__}")
                continue
            for preset in found:
                old = out.presets.get(preset.name)
                if old is not None:
                    out.overridden.append(f"{preset.name}: {old.source} replaced by {preset.source}")
                out.presets[preset.name] = preset
    return out


def presets_signature(dirs: Iterable[str | os.PathLike]) -> tuple:
    """Cheap cache key: (path, mtime_ns, size) of every preset file in the folders."""
    sig = []
    for d in dirs:
        d = Path(d)
        if d.is_dir():
            for p in sorted(d.glob("*.json")):
                try:
                    st = p.stat()
                except OSError:
                    continue
                sig.append((str(p), st.st_mtime_ns, st.st_size))
    return tuple(sig)


def get_preset(load: PresetLoad, name: str, *, node: str | None = None, input: str = "preset") -> Preset:
    """The named preset, or an AtelierError listing the available ones (and load errors)."""
    if name in load.presets:
        return load.presets[name]
    available = ", ".join(sorted(load.presets)) or "none"
    problem = f"unknown preset {name!r}."
    if load.errors:
        problem += " Some preset files failed to load: " + " | ".join(load.errors)
    raise AtelierError(problem, node=node, input=input, expected=f"one of: {available}",
                       fix="pick a preset from the list (refresh the page after adding preset files), "
                           "or fix the preset file named above.")


# --------------------------------------------------------------------------- style ids

def normalise_style_id(value: str | int, *, node: str | None = None, input: str | None = "style_id") -> str:
    """'7', 7, 'style7', 'Style07' -> 'style07' (at least two digits). Empty -> ''."""
    s = str(value).strip()
    if not s:
        return ""
    m = re.fullmatch(r"(?:style)?\s*(\d{1,4})", s, re.IGNORECASE)
    if not m:
        raise AtelierError(f"{s!r} is not a style id", node=node, input=input,
                           expected="a style id like style03 (or just the number 3)",
                           fix="write the id as styleNN, or leave it empty to read styleNN from the prompt.")
    return f"style{int(m.group(1)):02d}"
