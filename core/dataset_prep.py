"""Dataset preparation for the trainers: data-juicer-style filters, control images, export by id.

Everything here is keyed by id (an image's file stem, see client/dataset.py), never by position:
a missing caption or control image for one id drops that id (the report says why) and never shifts
another id's data.

Filters (data-juicer's ``image_shape_filter`` and ``image_aspect_ratio_filter``, same semantics):

- a sample is one id with one or more images (the training image, plus e.g. its conditioning image);
- an image passes ``image_shape_filter`` when ``min_width <= width <= max_width`` and
  ``min_height <= height <= max_height`` (bounds inclusive; defaults 1 .. sys.maxsize), and
  ``image_aspect_ratio_filter`` when ``min_ratio <= width / height <= max_ratio`` (inclusive;
  data-juicer's defaults are 0.333 .. 3.0, ours 0.5 .. 2.0 as in the story pipeline);
- ``any_or_all="any"`` keeps a sample when at least one of its images passes, ``"all"`` only when
  every image passes; a sample without images is kept (data-juicer does the same);
- sizes are PIL's ``width``/``height`` read from the file header (no decode, no EXIF rotation --
  as data-juicer's ``load_image`` measures them). Filters run in order; the first that drops a
  sample is the one reported, with the measured values and the bound.

Export layouts (agreed with the ControlNet and LoRA trainers):

- ``controlnet`` (diffusers train_controlnet): ``<out>/train.jsonl``, one line per id, sorted by id:
  ``{"id", "text", "image": "images/<id>.png", "conditioning_image": "conditioning/<id>.png"}``
  (paths relative to the jsonl's folder);
- ``lora``: ``<out>/images/<id>.<ext>`` + ``<out>/images/<id>.txt`` (kohya side-car captions) and
  ``<out>/images/metadata.jsonl`` with ``{"file_name": "<id>.<ext>", "text"}`` (diffusers imagefolder).

Every file is written to a temporary name and renamed (core.files.atomic_path); the index files
(train.jsonl / metadata.jsonl) are written last, so a reader never sees half an export. A re-run
skips the ids whose inputs (source file stamp or pixel hash, caption, layout) did not change, and
removes the files of ids it exported before that are no longer in the set (only files it wrote).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Mapping, Sequence, Union

import numpy as np

from .errors import AtelierError
from .files import atomic_path

ANY_OR_ALL = ("any", "all")
LAYOUTS = ("controlnet", "lora")
CONTROL_METHODS = ("canny", "lineart")
MAXSIZE = sys.maxsize
DEFAULT_MIN_RATIO, DEFAULT_MAX_RATIO = 0.5, 2.0
STATE_FILE = ".atelier_dataset_state.jsonl"
FORMAT_VERSION = 1

Size = tuple[int, int]  # (width, height)
Progress = Callable[[int, int], None]  # (done, total)
ImageSource = Union[str, np.ndarray]  # a file path, or uint8 pixels [H,W] / [H,W,C]


# ----------------------------------------------------------------------------- filters

@dataclass(frozen=True)
class ShapeRule:
    """data-juicer ``image_shape_filter``: inclusive width/height bounds."""
    min_width: int = 1
    max_width: int = MAXSIZE
    min_height: int = 1
    max_height: int = MAXSIZE
    any_or_all: str = "any"
    name = "image_shape_filter"

    def failure(self, size: Size) -> tuple[str, str] | None:
        """(measured, bound) of the first bound `size` breaks, or None when it passes."""
        w, h = size
        for ok, bound in ((self.min_width <= w, f"min_width {self.min_width}"),
                          (w <= self.max_width, f"max_width {self.max_width}"),
                          (self.min_height <= h, f"min_height {self.min_height}"),
                          (h <= self.max_height, f"max_height {self.max_height}")):
            if not ok:
                return f"{w}x{h}", bound
        return None


@dataclass(frozen=True)
class RatioRule:
    """data-juicer ``image_aspect_ratio_filter``: ``min_ratio <= width/height <= max_ratio``."""
    min_ratio: float = DEFAULT_MIN_RATIO
    max_ratio: float = DEFAULT_MAX_RATIO
    any_or_all: str = "any"
    name = "image_aspect_ratio_filter"

    def failure(self, size: Size) -> tuple[str, str] | None:
        w, h = size
        r = w / h
        if r < self.min_ratio:
            return f"ratio {r:.4g} ({w}x{h})", f"min_ratio {self.min_ratio:g}"
        if r > self.max_ratio:
            return f"ratio {r:.4g} ({w}x{h})", f"max_ratio {self.max_ratio:g}"
        return None


Rule = Union[ShapeRule, RatioRule]


def check_rules(rules: Sequence[Rule], *, node: str | None = None) -> None:
    """Bounds that can never pass, or an unknown strategy, raise (a typo should not empty a dataset)."""
    for r in rules:
        if r.any_or_all not in ANY_OR_ALL:
            raise AtelierError(f"any_or_all {r.any_or_all!r} is not supported", node=node, input="any_or_all",
                               expected="'any' or 'all'", fix="pick any (keep when one image passes) or all.")
        if isinstance(r, ShapeRule):
            for lo, hi, what in ((r.min_width, r.max_width, "width"), (r.min_height, r.max_height, "height")):
                if lo > hi:
                    raise AtelierError(f"min_{what} {lo} is larger than max_{what} {hi}", node=node,
                                       input=f"min_{what}", expected=f"min_{what} <= max_{what}",
                                       fix=f"lower min_{what} or raise max_{what}.")
        else:
            if not (r.min_ratio > 0 and r.max_ratio > 0) or r.min_ratio > r.max_ratio:
                raise AtelierError(f"aspect ratio range {r.min_ratio:g}..{r.max_ratio:g} is empty", node=node,
                                   input="min_ratio", expected="0 < min_ratio <= max_ratio (ratio = width/height)",
                                   fix="e.g. min_ratio 0.5 and max_ratio 2.0.")


def rule_keeps(rule: Rule, sizes: Sequence[Size]) -> tuple[bool, list[tuple[int, str, str]]]:
    """(kept, [(image index, measured, bound) of each failing image]) for one sample's image sizes."""
    fails = []
    for i, s in enumerate(sizes):
        f = rule.failure(s)
        if f is not None:
            fails.append((i, *f))
    if not sizes:
        return True, fails
    passed = len(sizes) - len(fails)
    return (passed > 0 if rule.any_or_all == "any" else passed == len(sizes)), fails


@dataclass
class Drop:
    """Why an id left the dataset: which step (a filter, 'unreadable', 'no caption', ...) and what was measured."""
    id: str
    step: str
    reason: str
    details: list = field(default_factory=list)


@dataclass
class FilterReport:
    kept: list[str]
    dropped: list[Drop]
    rules: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"kept": list(self.kept), "dropped": [asdict(d) for d in self.dropped], "rules": self.rules}

    def text(self, max_lines: int = 50) -> str:
        return format_report(len(self.kept), self.dropped, "kept", max_lines=max_lines)


def format_report(kept: int, dropped: Sequence[Drop], verb: str = "kept", *, max_lines: int = 50) -> str:
    """'kept 3 of 5; dropped 2: ...' with one line per dropped id (capped)."""
    total = kept + len(dropped)
    lines = [f"{verb} {kept} of {total}; dropped {len(dropped)}"]
    for d in list(dropped)[:max_lines]:
        lines.append(f"  {d.id}: {d.step}: {d.reason}")
    if len(dropped) > max_lines:
        lines.append(f"  ... and {len(dropped) - max_lines} more")
    return "\n".join(lines)


def _name(names: Sequence[str] | None, i: int) -> str:
    return names[i] if names and i < len(names) else f"image {i}"


def filter_sizes(samples: Mapping[str, Sequence[Size | None]], rules: Sequence[Rule], *,
                 names: Mapping[str, Sequence[str]] | None = None, node: str | None = None) -> FilterReport:
    """Apply `rules` in order to {id: [(w, h) per image]} (None: unreadable image, which drops the id).

    Kept ids come out sorted; `names` (id -> image labels) make the reasons readable."""
    check_rules(rules, node=node)
    kept, dropped = [], []
    for sid in sorted(samples):
        sizes = list(samples[sid])
        labels = (names or {}).get(sid)
        bad = [i for i, s in enumerate(sizes) if s is None or s[0] < 1 or s[1] < 1]
        if bad:
            dropped.append(Drop(sid, "unreadable", f"cannot read the size of {_name(labels, bad[0])}",
                                [{"image": _name(labels, i)} for i in bad]))
            continue
        for rule in rules:
            ok, fails = rule_keeps(rule, sizes)
            if not ok:
                how = "no image passed" if rule.any_or_all == "any" else "not all images passed"
                first = fails[0]
                dropped.append(Drop(sid, rule.name,
                                    f"{_name(labels, first[0])} {first[1]} is outside {first[2]} "
                                    f"({rule.any_or_all}: {how})",
                                    [{"image": _name(labels, i), "measured": m, "bound": b} for i, m, b in fails]))
                break
        else:
            kept.append(sid)
    return FilterReport(kept, dropped, [dict(filter=r.name, **asdict(r)) for r in rules])


def read_size(path: str) -> Size | None:
    """(width, height) from the image file's header (PIL opens lazily: no pixel decode); None if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # a large image is only measured here, never decoded
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return int(im.width), int(im.height)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None


def filter_files(samples: Mapping[str, Sequence[str]], rules: Sequence[Rule], *,
                 progress: Progress | None = None, node: str | None = None) -> FilterReport:
    """:func:`filter_sizes` over image files: {id: [path, ...]}; sizes read from the headers."""
    check_rules(rules, node=node)
    sizes: dict[str, list[Size | None]] = {}
    total = len(samples)
    for n, (sid, paths) in enumerate(sorted(samples.items()), 1):
        sizes[sid] = [read_size(p) for p in paths]
        if progress is not None:
            progress(n, total)
    names = {sid: [os.path.basename(p) for p in paths] for sid, paths in samples.items()}
    return filter_sizes(sizes, rules, names=names, node=node)


# ----------------------------------------------------------------------------- control images

def load_rgb(path: str) -> np.ndarray:
    """uint8 RGB ``[H,W,3]`` of an image file (alpha laid on white, as core.images.to_rgb does)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return np.array(Image.alpha_composite(bg, rgba).convert("RGB"))
            return np.array(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise AtelierError(f"cannot read image '{path}': {type(exc).__name__}: {exc}", input="image",
                           expected="a readable PNG/JPEG/WEBP image", fix="replace or remove the file.") from exc


def control_image(rgb: np.ndarray, method: str = "canny", *, low: float = 100, high: float = 200,
                  node: str | None = None) -> np.ndarray:
    """uint8 RGB ``[H,W,3]`` -> the pack's conditioner output (white lines on black), uint8 ``[H,W,3]``, same size.

    canny: core.edges.canny_image with thresholds low/high (100/200: the keyboard pipeline's
    cv2.Canny values); lineart: core.edges.lineart_image (auto polarity)."""
    from . import edges

    if method not in CONTROL_METHODS:
        raise AtelierError(f"control method {method!r} is not supported", node=node, input="method",
                           expected=f"one of {', '.join(CONTROL_METHODS)}", fix="pick canny or lineart.")
    img = np.ascontiguousarray(rgb, dtype=np.uint8).astype(np.float32) / 255.0
    if method == "canny":
        lines, _, _ = edges.canny_image(img, low=low, high=high, resolution=0, node=node)
    else:
        lines, _, _ = edges.lineart_image(img, resolution=0, node=node)
    return np.repeat(np.asarray(lines, dtype=np.uint8)[..., None], 3, axis=2)


# ----------------------------------------------------------------------------- resume logs

def read_jsonl_records(path: str, key: str = "id") -> dict[str, dict]:
    """{record[key]: record} of a JSON-lines file; the last record of an id wins, a torn (unparsable)
    line -- an interrupted append -- is ignored. A missing file is empty."""
    out: dict[str, dict] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and isinstance(rec.get(key), str):
                    out[rec[key]] = rec
    except FileNotFoundError:
        pass
    return out


def write_jsonl(path: str, records: Iterable[dict]) -> None:
    """Write JSON lines through a temporary file and a rename (never half a file)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")


class ResumeLog:
    """An append-only JSON-lines log of finished ids ({"id", "sig", ...}): append after each id, read on
    the next run; compacted (one line per id, sorted) by :meth:`compact`."""

    def __init__(self, path: str):
        self.path = path
        self.records = read_jsonl_records(path)
        self._f = None

    def done(self, sid: str, sig: str) -> bool:
        rec = self.records.get(sid)
        return rec is not None and rec.get("sig") == sig

    def add(self, rec: dict) -> None:
        if self._f is None:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self._f = open(self.path, "a", encoding="utf-8", newline="\n")
        self._f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._f.flush()
        self.records[rec["id"]] = rec

    def compact(self, keep: Iterable[str] | None = None) -> None:
        self.close()
        ids = sorted(self.records if keep is None else set(keep) & set(self.records))
        write_jsonl(self.path, (self.records[i] for i in ids))

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def source_sig(src: ImageSource | None) -> str | None:
    """What identifies an input: a file's real path + size + mtime, or a hash of the pixels."""
    if src is None:
        return None
    if isinstance(src, str):
        st = os.stat(src)
        return f"file:{os.path.realpath(src)}:{st.st_size}:{st.st_mtime_ns}"
    a = np.ascontiguousarray(src)
    return f"pixels:{a.dtype}:{a.shape}:{hashlib.sha1(a.tobytes()).hexdigest()}"


def signature(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


# ----------------------------------------------------------------------------- export

@dataclass
class Item:
    """One id to export: the image (file path or uint8 pixels), its caption and (ControlNet) its control image."""
    id: str
    image: ImageSource
    caption: str | None = None
    conditioning: ImageSource | None = None


@dataclass
class ExportReport:
    out: str
    layout: str
    written: list[str]
    unchanged: list[str]
    dropped: list[Drop]
    index: str = ""

    @property
    def exported(self) -> list[str]:
        return sorted(self.written + self.unchanged)

    def to_dict(self) -> dict:
        return {"out": self.out, "layout": self.layout, "index": self.index, "written": self.written,
                "unchanged": self.unchanged, "dropped": [asdict(d) for d in self.dropped]}

    def text(self, max_lines: int = 50) -> str:
        head = (f"{self.layout} dataset in {self.out}: {len(self.exported)} ids "
                f"({len(self.written)} written, {len(self.unchanged)} unchanged)\n")
        return head + format_report(len(self.exported), self.dropped, "exported", max_lines=max_lines)


def save_png(pixels: np.ndarray, dest: str) -> None:
    """uint8 ``[H,W]`` / ``[H,W,1|3|4]`` -> PNG at `dest`, through a temporary file."""
    from PIL import Image

    a = np.ascontiguousarray(pixels)
    if a.dtype != np.uint8:
        raise AtelierError(f"pixels of dtype {a.dtype} cannot be saved as PNG here", expected="uint8 pixels")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    with atomic_path(dest, suffix=".tmp.png") as tmp:
        Image.fromarray(a).save(tmp, format="PNG")


def _put_image(src: ImageSource, dest_stem: str, *, png_only: bool) -> str:
    """Write `src` to `dest_stem` + extension; returns the file name. A file keeps its bytes (copied)
    when its format may stay (any for LoRA, PNG for ControlNet), else it is converted to RGB PNG."""
    if isinstance(src, str):
        ext = os.path.splitext(src)[1].lower()
        if not png_only or ext == ".png":
            dest = dest_stem + (".jpg" if ext == ".jpeg" else ext)
            with atomic_path(dest, suffix=".tmp" + ext) as tmp:
                shutil.copyfile(src, tmp)
            return os.path.basename(dest)
        src = load_rgb(src)
    save_png(src, dest_stem + ".png")
    return os.path.basename(dest_stem) + ".png"


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def export_dataset(items: Iterable[Item], out: str, layout: str, *, progress: Progress | None = None,
                   node: str | None = None) -> ExportReport:
    """Write `items` in `layout` under `out` (see the module doc); resumable and id-keyed."""
    from .confine import name_is_safe

    if layout not in LAYOUTS:
        raise AtelierError(f"layout {layout!r} is not known", node=node, input="layout",
                           expected=f"one of {', '.join(LAYOUTS)}", fix="pick controlnet or lora.")
    items = list(items)
    seen: set[str] = set()
    for it in items:
        if not isinstance(it.id, str) or not name_is_safe(it.id) or "/" in it.id or "\\" in it.id \
                or it.id.startswith("."):
            raise AtelierError(f"id {it.id!r} cannot be used as a file name", node=node, input="ids",
                               expected="ids made of letters, digits, '-', '_', '.', spaces (no slashes)",
                               fix="rename the image files (the id is the file stem).")
        if it.id in seen:
            raise AtelierError(f"id {it.id!r} appears twice", node=node, input="ids", expected="each id once",
                               fix="give every image its own file name.")
        seen.add(it.id)
    os.makedirs(out, exist_ok=True)
    images_dir = os.path.join(out, "images")
    cond_dir = os.path.join(out, "conditioning")
    os.makedirs(images_dir, exist_ok=True)
    if layout == "controlnet":
        os.makedirs(cond_dir, exist_ok=True)
    log = ResumeLog(os.path.join(out, STATE_FILE))
    other = {r.get("layout") for r in log.records.values()} - {layout}
    if other:
        log.close()
        raise AtelierError(f"'{out}' already holds a {sorted(other)[0]} export", node=node, input="layout",
                           expected="one layout per output folder", fix="export to another folder.")
    written, unchanged, dropped = [], [], []
    total = len(items)
    try:
        for n, it in enumerate(sorted(items, key=lambda i: i.id), 1):
            caption = it.caption.strip() if isinstance(it.caption, str) else None
            if not caption:
                dropped.append(Drop(it.id, "no caption", "the id has no caption (or an empty one)"))
            elif layout == "controlnet" and it.conditioning is None:
                dropped.append(Drop(it.id, "no conditioning image", "the id has no control image"))
            else:
                sig = signature(FORMAT_VERSION, layout, caption, source_sig(it.image),
                                source_sig(it.conditioning) if layout == "controlnet" else None)
                old = log.records.get(it.id)
                if log.done(it.id, sig) and all(os.path.exists(os.path.join(out, p)) for p in old.get("files", [])):
                    unchanged.append(it.id)
                else:
                    log.add(_export_one(it, caption, out, layout, sig, old))
                    written.append(it.id)
            if progress is not None:
                progress(n, total)
        exported = sorted(written + unchanged)
        recs = log.records
        if layout == "controlnet":
            index = os.path.join(out, "train.jsonl")
            write_jsonl(index, ({"id": i, "text": recs[i]["text"], "image": recs[i]["files"][0],
                                 "conditioning_image": recs[i]["files"][1]} for i in exported))
        else:
            index = os.path.join(images_dir, "metadata.jsonl")
            write_jsonl(index, ({"file_name": os.path.basename(recs[i]["files"][0]), "text": recs[i]["text"]}
                                for i in exported))
        # ids exported earlier but not in this set: their files go (only files this exporter wrote)
        for sid in sorted(set(recs) - set(exported)):
            for rel in recs[sid].get("files", []):
                _remove_quietly(os.path.join(out, rel))
        log.compact(keep=exported)
    finally:
        log.close()
    return ExportReport(out, layout, written, unchanged, dropped, index)


def _export_one(it: Item, caption: str, out: str, layout: str, sig: str, old: dict | None) -> dict:
    images_dir = os.path.join(out, "images")
    if layout == "controlnet":
        img = "images/" + _put_image(it.image, os.path.join(images_dir, it.id), png_only=True)
        cond = "conditioning/" + _put_image(it.conditioning, os.path.join(out, "conditioning", it.id), png_only=True)
        files = [img, cond]
    else:
        img = "images/" + _put_image(it.image, os.path.join(images_dir, it.id), png_only=False)
        txt = f"images/{it.id}.txt"
        with atomic_path(os.path.join(out, txt)) as tmp:
            with open(tmp, "w", encoding="utf-8", newline="\n") as f:
                f.write(caption)
        files = [img, txt]
    for rel in (old or {}).get("files", []):  # e.g. <id>.jpg replaced by <id>.png
        if rel not in files:
            _remove_quietly(os.path.join(out, rel))
    return {"id": it.id, "sig": sig, "layout": layout, "text": caption, "files": files}


# ----------------------------------------------------------------------------- captions

def apply_template(caption: str, template: str = "{caption}", *, id: str = "", trigger: str = "",
                   node: str | None = None) -> str:
    """`template` with {caption}, {trigger} and {id} filled in, e.g. "{caption}, iflyskin" or
    "{trigger}, {caption}"; blank runs of ", " left by an empty field are tidied."""
    if "{caption}" not in template:
        raise AtelierError(f"caption template {template!r} has no {{caption}} field", node=node, input="template",
                           expected="a template such as '{caption}, iflyskin'",
                           fix="put {caption} where the generated caption goes.")
    try:
        text = template.format(caption=caption.strip(), trigger=trigger.strip(), id=id)
    except (KeyError, IndexError, ValueError) as exc:
        raise AtelierError(f"caption template {template!r} cannot be filled: {exc}", node=node, input="template",
                           expected="only the fields {caption}, {trigger} and {id} (write {{ and }} for braces)",
                           fix="remove the other {...} fields.") from None
    if not trigger.strip():  # "{caption}, {trigger}" without a trigger: no dangling comma
        text = re.sub(r",(\s*,)+", ",", text)
    return text.strip().strip(",").strip()
