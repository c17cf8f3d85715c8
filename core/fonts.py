"""Fonts for the glyph family: discovery, resolution, loading and glyph coverage.

Fonts are looked up in a list of folders the caller passes (the pack's `fonts` model folder) plus the
system font folders, with the one bounded folder walker (core/folders.py: links followed once, depth and
entry caps). An explicit path must resolve inside one of those folders; arbitrary paths are refused.
A font file that cannot be opened (corrupt, not a font, a face index the collection does not have)
is an AtelierError naming the file and the fix, never a bare OSError.

Pure core: PIL only; no ComfyUI.
"""
from __future__ import annotations

import functools
import os
import sys
import time
import unicodedata
from pathlib import Path
from typing import Iterable, Sequence

from PIL import ImageFont

from .confine import candidate, not_in_folder
from .errors import AtelierError
from .folders import walk

FONT_EXTS = (".ttf", ".otf", ".ttc", ".otc")

# Preference order for font="auto" (substring match on the file name, case-insensitive).
_CJK_PREFS = ("notosanscjk", "notosanssc", "notosanstc", "notosansjp", "sourcehansans", "wqy-zenhei",
              "wqy-microhei", "droidsansfallback", "msyh", "simhei", "simsun", "pingfang", "hiragino",
              "notoserifcjk", "arialuni")
_LATIN_PREFS = ("dejavusans.ttf", "arial.ttf", "helvetica", "liberationsans-regular", "notosans-regular",
                "roboto-regular", "segoeui.ttf", "sfns")


# ----------------------------------------------------------------------------------------------
# font discovery

def system_font_dirs() -> list[Path]:
    """The usual system font folders for this OS that exist on this machine."""
    home = Path.home()
    if sys.platform.startswith("win"):
        windir = os.environ.get("WINDIR", r"C:\Windows")
        cands = [Path(windir) / "Fonts"]
        if os.environ.get("LOCALAPPDATA"):
            cands.append(Path(os.environ["LOCALAPPDATA"]) / "Microsoft" / "Windows" / "Fonts")
    elif sys.platform == "darwin":
        cands = [Path("/System/Library/Fonts"), Path("/Library/Fonts"), home / "Library" / "Fonts"]
    else:
        cands = [Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), home / ".fonts",
                 home / ".local" / "share" / "fonts"]
    return [p for p in cands if p.is_dir()]


def font_dirs(extra_dirs: Iterable[str | os.PathLike] | None = None, *, system: bool = True) -> list[Path]:
    """Allowed font folders: `extra_dirs` (the pack's fonts model folder) first, then the system ones."""
    dirs: list[Path] = []
    for d in list(extra_dirs or []) + (system_font_dirs() if system else []):
        p = Path(d)
        if p.is_dir() and p not in dirs:
            dirs.append(p)
    return dirs


@functools.lru_cache(maxsize=32)
def _scan(dirs: tuple[str, ...], stamp: tuple[float, ...]) -> dict[str, str]:
    found: dict[str, str] = {}
    for d in dirs:
        for rel, full in walk(d):  # bounded, each real folder once (a link loop ends), hidden skipped
            if rel.lower().endswith(FONT_EXTS):
                found.setdefault(rel, full)
                found.setdefault(rel.rpartition("/")[2], full)
    return found


def _font_table(dirs: Sequence[str | os.PathLike]) -> dict[str, str]:
    """The cached scan behind list_fonts (shared: do not modify)."""
    dirs_t = tuple(str(Path(d)) for d in dirs)
    # folder mtimes catch files added at the top level; the 30 s bucket catches ones added in subfolders
    stamp = tuple(os.stat(d).st_mtime if os.path.isdir(d) else 0.0 for d in dirs_t) + (time.monotonic() // 30,)
    return _scan(dirs_t, stamp)


def list_fonts(dirs: Sequence[str | os.PathLike]) -> dict[str, str]:
    """Map of font names (file name and path relative to its folder) to absolute paths."""
    return dict(_font_table(dirs))


def font_names(dirs: Sequence[str | os.PathLike]) -> list[str]:
    """Font file names for a dropdown (one entry per file, by file name)."""
    return sorted({Path(p).name for p in list_fonts(dirs).values()}, key=str.lower)


def resolve_font(name: str, dirs: Sequence[str | os.PathLike], *, node: str | None = None,
                 input: str | None = "font") -> tuple[str, int]:
    """Resolve a font name to (absolute path, face index).

    `name` is a file name ("DejaVuSans.ttf"), a stem ("DejaVuSans"), a path relative to a font
    folder, or an absolute path that must resolve inside one of `dirs`; a suffix "#n" picks face n
    of a .ttc collection.
    """
    raw = (name or "").strip()
    index = 0
    if "#" in raw:
        raw, _, idx = raw.rpartition("#")
        if not idx.isdigit():
            raise AtelierError(f"font '{name}' has a bad face index '#{idx}'", node=node, input=input,
                               expected="'file.ttc#2' with a number after '#'", fix="write the face number, e.g. '#0'.")
        index = int(idx)
    if not raw:
        raise AtelierError("no font name given", node=node, input=input, expected="a font file name or 'auto'",
                           fix="pick a font from the list or use 'auto'.")
    folders = [Path(d).resolve() for d in dirs]
    p = Path(raw)
    if p.is_absolute() or "/" in raw or "\\" in raw:
        # a path: relative to a font folder, or absolute inside one; confined by the pack's one helper
        # (no '..', symlinks may not lead out), with its uniform message whether or not the file exists
        for f in folders:
            rel = os.path.relpath(p, f) if p.is_absolute() else raw
            path = candidate(rel, f)
            if path is not None and os.path.isfile(path) and Path(path).suffix.lower() in FONT_EXTS:
                return str(Path(path).resolve()), index
        raise not_in_folder(raw, what="font file", node=node, input=input, folders=folders,
                            fix="copy the font into ComfyUI/models/fonts/ and select it by file name.")
    table = list_fonts(dirs)
    if raw in table:
        return table[raw], index
    low = raw.lower()
    for key, path in table.items():
        base = Path(key).name.lower()
        if base == low or Path(base).stem == low:
            return path, index
    avail = font_names(dirs)
    shown = ", ".join(avail[:12]) + (f", ... ({len(avail)} in all)" if len(avail) > 12 else "")
    raise AtelierError(f"unknown font '{name}'", node=node, input=input,
                       expected=f"one of the installed fonts ({shown or 'none found'}) or 'auto'",
                       fix="put the font file in ComfyUI/models/fonts/, or pick 'auto'.")


@functools.lru_cache(maxsize=256)
def _font(path: str, mtime: float, index: int, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size=size, index=index)


def face_count(path: str) -> int | None:
    """Faces in a font file: the count in a .ttc/.otc collection header, 1 for a single font, None if unreadable."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return None
    if head[:4] == b"ttcf" and len(head) == 12:
        return int.from_bytes(head[8:12], "big")
    return 1 if len(head) >= 4 else None


def bad_font_error(path: str, index: int, exc: Exception, *, node: str | None = None,
                   input: str | None = "font") -> AtelierError:
    """The AtelierError for a font that PIL/FreeType cannot open: a face the file lacks, or a damaged file."""
    name, n = os.path.basename(path), face_count(path)
    if n is not None and n >= 1 and not 0 <= int(index) < n:
        problem = (f"font file '{name}' ({path}) has {n} face{'s' if n > 1 else ''} (numbered 0..{n - 1}); "
                   f"face #{index} does not exist")
        fix = (f"write '{name}#0'" + (f" .. '{name}#{n - 1}'" if n > 1 else "") +
               ", or leave '#n' off to use the first face.")
    else:
        problem = (f"font file '{name}' ({path}) cannot be opened as a font ({type(exc).__name__}: {exc}): it is "
                   "damaged, truncated or not a TrueType/OpenType font")
        fix = ("replace it with a good copy (re-download or re-install the font), remove it from the fonts folder, "
               "or pick another font.")
    return AtelierError(problem, node=node, input=input,
                        expected="a readable .ttf/.otf/.ttc font (for a collection, a face number it has)", fix=fix)


def load_font(path: str, index: int, size: int, *, node: str | None = None,
              input: str | None = "font") -> ImageFont.FreeTypeFont:
    """A PIL font, cached by (path, mtime, face, size); a file that cannot be opened is an AtelierError
    naming the file (see :func:`bad_font_error`), never a bare OSError."""
    try:
        return _font(path, os.path.getmtime(path), int(index), max(1, int(size)))
    except (OSError, ValueError) as exc:
        raise bad_font_error(path, index, exc, node=node, input=input) from exc


# ----------------------------------------------------------------------------------------------
# glyph coverage (PIL only: a character the font lacks renders as the .notdef glyph)

_PROBES = ("\u0378", "\U0010FFFF")  # unassigned / noncharacter: never in a cmap, so .notdef
_PROBE_SIZE = 32


def _needs_glyph(ch: str) -> bool:
    return not (ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp", "Mn", "Me"))


def _mask_sig(font: ImageFont.FreeTypeFont, ch: str) -> tuple:
    m = font.getmask(ch)
    return (m.size, bytes(m))


@functools.lru_cache(maxsize=64)
def _notdef_sigs(path: str, mtime: float, index: int) -> tuple:
    f = _font(path, mtime, index, _PROBE_SIZE)
    return tuple({_mask_sig(f, p) for p in _PROBES})


@functools.lru_cache(maxsize=65536)
def _has_glyph(path: str, mtime: float, index: int, ch: str) -> bool:
    f = _font(path, mtime, index, _PROBE_SIZE)
    sig = _mask_sig(f, ch)
    if sig in _notdef_sigs(path, mtime, index):
        return False
    m = f.getmask(ch)
    return m.getbbox() is not None  # a visible character that renders nothing cannot be drawn either


def missing_glyphs(path: str, index: int, text: str, *, node: str | None = None,
                   input: str | None = "font") -> list[str]:
    """Characters of `text` (whitespace and format marks aside) that the font cannot draw. A font that
    cannot be opened raises the AtelierError of :func:`load_font`."""
    load_font(path, index, _PROBE_SIZE, node=node, input=input)
    mtime = os.path.getmtime(path)
    out: list[str] = []
    for ch in dict.fromkeys(text):
        if _needs_glyph(ch) and not _has_glyph(path, mtime, index, ch):
            out.append(ch)
    return out


def _fmt_chars(chars: Sequence[str]) -> str:
    return ", ".join(f"'{c}' (U+{ord(c):04X})" for c in chars[:8]) + (" ..." if len(chars) > 8 else "")


def _is_cjkish(text: str) -> bool:
    return any(ord(c) > 0x2E7F for c in text)


@functools.lru_cache(maxsize=64)
def _ranked_fonts(paths: tuple[str, ...], cjk: bool) -> tuple[str, ...]:
    def rank(prefs):
        def key(p):
            n = os.path.basename(p).lower()
            for i, s in enumerate(prefs):
                if s in n:
                    return (i, "bold" in n or "italic" in n or "oblique" in n, n)
            return (len(prefs), True, n)
        return key
    prefs = _CJK_PREFS + _LATIN_PREFS if cjk else _LATIN_PREFS + _CJK_PREFS
    return tuple(sorted(paths, key=rank(prefs)))


def auto_font_candidates(dirs: Sequence[str | os.PathLike], text: str) -> list[str]:
    """Font paths in the order 'auto' tries them for `text` (the ranking is cached per font set)."""
    paths = tuple(dict.fromkeys(_font_table(dirs).values()))
    return list(_ranked_fonts(paths, _is_cjkish(text)))


def choose_font(name: str | None, text: str, dirs: Sequence[str | os.PathLike], *, node: str | None = None,
                input: str | None = "font", max_auto: int = 60) -> tuple[str, int]:
    """Font (path, face) for `text`: the named one (checked for every glyph) or, for 'auto'/None, the
    first preferred font that covers the text. Raises AtelierError naming the missing characters."""
    if name and name.strip().lower() != "auto":
        path, index = resolve_font(name, dirs, node=node, input=input)
        miss = missing_glyphs(path, index, text, node=node, input=input)
        if miss:
            alt = ""
            try:
                ap, _ = choose_font("auto", text, dirs, max_auto=max_auto)
                alt = f" '{Path(ap).name}' has them;"
            except AtelierError:
                pass
            raise AtelierError(f"font '{Path(path).name}' has no glyph for {_fmt_chars(miss)} in text '{text}'",
                               node=node, input=input, expected="a font that covers every character of the text",
                               fix=f"choose a font that has these characters (for Chinese/Japanese/Korean a CJK font such as "
                                   f"NotoSansCJK-Regular.ttc);{alt} or set font to 'auto'.")
        return path, index
    cands = auto_font_candidates(dirs, text)
    for path in cands[:max_auto]:
        try:
            if not missing_glyphs(path, 0, text):
                return path, 0
        except (OSError, AtelierError):
            continue
    need = [c for c in dict.fromkeys(text) if _needs_glyph(c)]
    raise AtelierError(f"no installed font covers all characters of '{text}' ({_fmt_chars(need)})", node=node,
                       input=input, expected="a font with these glyphs in ComfyUI/models/fonts/ or a system font folder",
                       fix="install a CJK-capable font (Debian/Ubuntu: apt-get install fonts-noto-cjk; or copy "
                           "NotoSansCJK-Regular.ttc into ComfyUI/models/fonts/).")


def clear_font_rankings() -> None:
    """Forget the cached 'auto' rankings (font files and glyph checks stay cached)."""
    _ranked_fonts.cache_clear()
