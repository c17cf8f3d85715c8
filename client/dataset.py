"""Datasets keyed by id: a folder of images plus a captions table (CSV/TSV, JSONL or JSON).

The id of a row comes from the table's id column and the id of an image from its file name
(stem), never from a position: a missing image or an extra image is reported and skipped (or
fails the run with ``on_problem="fail"``) and every other id keeps its own image and caption.
"""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import AtelierError
from ..core.files import images_by_id
_ID_BAD = re.compile(r"[\\/\x00-\x1f<>:\"|?*]")


@dataclass(slots=True)
class Row:
    """One job: ``id``, the image (absolute path or None), the prompt and per-row overrides."""
    id: str
    image: str | None
    prompt: str | None
    overrides: dict = field(default_factory=dict)
    line: int | None = None  # line/record number in the captions file, for messages


@dataclass
class Problem:
    id: str
    reason: str
    fatal: bool = False


@dataclass
class Dataset:
    rows: list[Row]
    problems: list[Problem]
    captions_path: str | None = None
    images_dir: str | None = None

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.rows]


def check_id(raw: Any, where: str) -> str:
    """Normalise an id (strip spaces) and make sure it is usable as a file name."""
    if raw is None:
        raise AtelierError(f"{where}: the id is empty", expected="a non-empty id on every row",
                           fix="fill in the id column")
    s = str(raw).strip()
    if isinstance(raw, float) and raw.is_integer():
        s = str(int(raw))
    if not s:
        raise AtelierError(f"{where}: the id is empty", expected="a non-empty id on every row",
                           fix="fill in the id column")
    if _ID_BAD.search(s) or s in (".", "..") or s.startswith("."):
        raise AtelierError(f"{where}: id {s!r} cannot be used as a file name",
                           expected="ids made of letters, digits, '-', '_', '.', spaces (no slashes, not starting with '.')",
                           fix="rename the id (outputs are written as <id>.png)")
    return s


def image_problem(path: str) -> str | None:
    """Why an image file cannot be used (None when it looks fine). Header + trailer check, stdlib only."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(32)
            f.seek(max(0, size - 32))
            tail = f.read(32)
    except OSError as e:
        return f"cannot read image {path}: {e.strerror or e}"
    if size == 0:
        return f"image {path} is empty (0 bytes)"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        if b"IEND" not in tail:
            return f"image {path} is a truncated PNG (no IEND chunk)"
        return None
    if head.startswith(b"\xff\xd8"):
        if b"\xff\xd9" not in tail:
            return f"image {path} is a truncated JPEG (no end marker)"
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        if int.from_bytes(head[4:8], "little") + 8 > size:
            return f"image {path} is a truncated WEBP"
        return None
    if head[:2] == b"BM" or head[:4] in (b"II*\x00", b"MM\x00*") or head[:6] in (b"GIF87a", b"GIF89a"):
        return None
    return f"image {path} is not a PNG/JPEG/WEBP/BMP/TIFF/GIF file (unrecognised header)"


def _read_table(path: str) -> list[tuple[int, dict]]:
    """[(line_number, record)] from CSV/TSV, JSONL or a JSON list."""
    if not os.path.exists(path):
        raise AtelierError(f"captions file '{path}' does not exist",
                           expected="a CSV (id,prompt,...) or JSONL ({\"id\":..., \"prompt\":...}) file",
                           fix="pass --captions PATH (default: captions.csv / captions.jsonl in the dataset folder)")
    ext = os.path.splitext(path)[1].lower()
    try:
        with open(path, "r", encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise AtelierError(f"captions file '{path}' cannot be read: {e}", fix="save it as UTF-8 text") from None
    records: list[tuple[int, dict]] = []
    if ext in (".jsonl", ".ndjson"):
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise AtelierError(f"{path} line {i} is not valid JSON ({e.msg})", fix="one JSON object per line") from None
            if not isinstance(rec, dict):
                raise AtelierError(f"{path} line {i} is not a JSON object", fix="one JSON object per line")
            records.append((i, rec))
    elif ext == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise AtelierError(f"{path} is not valid JSON ({e.msg})") from None
        if isinstance(data, dict):  # {"id": {"prompt": ...}} or {"id": "prompt"}
            data = [dict(v, id=k) if isinstance(v, dict) else {"id": k, "prompt": v} for k, v in data.items()]
        if not isinstance(data, list):
            raise AtelierError(f"{path} must hold a list of objects or an id->caption object")
        records = [(i, r) for i, r in enumerate(data, 1) if isinstance(r, dict)]
    else:
        delim = "\t" if ext == ".tsv" else ","
        if ext not in (".tsv", ".csv"):
            try:
                delim = csv.Sniffer().sniff(text[:4096], delimiters=",\t;").delimiter
            except csv.Error:
                delim = ","
        reader = csv.DictReader(text.splitlines(), delimiter=delim)
        if not reader.fieldnames:
            raise AtelierError(f"captions file '{path}' is empty", expected="a header line such as id,prompt")
        for rec in reader:
            records.append((reader.line_num, {k.strip() if k else k: v for k, v in rec.items() if k is not None}))
    return records


def _coerce(v: Any) -> Any:
    """CSV cells are text: turn '123' into 123 and '1.5' into 1.5 for numeric overrides."""
    if not isinstance(v, str):
        return v
    s = v.strip()
    if re.fullmatch(r"[-+]?\d+", s):
        return int(s)
    if re.fullmatch(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?", s):
        return float(s)
    return v


def find_captions(folder: str) -> str | None:
    for name in ("captions.csv", "captions.jsonl", "captions.tsv", "captions.json", "metadata.jsonl", "metadata.csv"):
        p = os.path.join(folder, name)
        if os.path.exists(p):
            return p
    return None


def _captions_records(images_dir: str | None, captions: str | None, id_column: str) -> tuple[str, list]:
    """(captions path, [(line, record)]) with the id column present; bad input raises."""
    if images_dir is not None and not os.path.isdir(images_dir):
        raise AtelierError(f"image folder '{images_dir}' does not exist", fix="pass --images DIR")
    if captions is None and images_dir is not None:
        captions = find_captions(images_dir)
        if captions is None:
            raise AtelierError(f"no captions file found in '{images_dir}'",
                               expected="captions.csv or captions.jsonl with columns id,prompt",
                               fix="pass --captions PATH")
    if captions is None:
        raise AtelierError("no captions file given", fix="pass --captions PATH")
    records = _read_table(captions)
    if not records:
        raise AtelierError(f"captions file '{captions}' has no rows", expected="one row per id")
    cols = set().union(*(r.keys() for _, r in records))
    if id_column not in cols:
        raise AtelierError(f"captions file '{captions}' has no '{id_column}' column (columns: {sorted(cols)})",
                           expected=f"an id column named '{id_column}'", fix="add it, or pass --id-column NAME")
    return captions, records


def _row_image(rid: str, rec: dict, line: int, *, images: dict, images_dir: str | None, captions: str,
               image_column: str, require_images: bool, check_images: bool) -> tuple[str | None, str | None]:
    """(image path or None, problem or None) of one captions row."""
    img = None
    if rec.get(image_column):
        img = os.path.join(images_dir or os.path.dirname(captions), str(rec[image_column]))
        if not os.path.exists(img):
            return None, f"image '{rec[image_column]}' named on line {line} does not exist"
    elif images_dir is not None:
        img = images.get(rid)
    if img is None and require_images:
        hint = ""
        near = [k for k in images if k.lstrip("0") == rid.lstrip("0") and k != rid]
        if near:
            hint = f" (found {os.path.basename(images[near[0]])}: ids must match exactly, leading zeros included)"
        return None, f"no image file for id {rid} in {images_dir}{hint}"
    if img is not None and check_images:
        why = image_problem(img)
        if why:
            return None, why
    return img, None


def load_dataset(images_dir: str | None, captions: str | None = None, *, id_column: str = "id",
                 prompt_column: str = "prompt", image_column: str = "image", on_problem: str = "skip",
                 require_images: bool | None = None, check_images: bool = True) -> Dataset:
    """Match captions rows and image files by id.

    ``on_problem``: "skip" reports a row without image / image without row / unreadable image and
    leaves it out; "fail" raises AtelierError listing all of them. Duplicate ids, an empty id or
    a missing captions file always raise.
    """
    if require_images is None:  # a captions-only dataset (text to image) needs no images
        require_images = images_dir is not None
    if on_problem not in ("skip", "fail"):
        raise ValueError("on_problem must be 'skip' or 'fail'")
    captions, records = _captions_records(images_dir, captions, id_column)
    images = images_by_id(images_dir) if images_dir is not None else {}
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    dups: dict[str, list[int]] = {}
    rows: list[Row] = []
    records.reverse()  # consumed from the end: each caption record is freed once its row exists
    while records:
        line, rec = records.pop()
        rid = check_id(rec.get(id_column), f"{os.path.basename(captions)} line {line}")
        if rid in seen:
            dups.setdefault(rid, [seen[rid]]).append(line)
            continue
        seen[rid] = line
        overrides = {k: _coerce(v) for k, v in rec.items()
                     if k not in (id_column, prompt_column, image_column) and v not in (None, "")}
        img, why = _row_image(rid, rec, line, images=images, images_dir=images_dir, captions=captions,
                              image_column=image_column, require_images=require_images, check_images=check_images)
        if why:
            problems.append(Problem(rid, why))
            continue
        rows.append(Row(rid, os.path.abspath(img) if img else None, rec.get(prompt_column), overrides, line))
    if dups:
        lines = "; ".join(f"id {k} on lines {', '.join(map(str, v))}" for k, v in sorted(dups.items()))
        raise AtelierError(f"duplicate ids in '{captions}': {lines}", expected="each id exactly once",
                           fix="remove or renumber the duplicate rows")
    used = {r.id for r in rows} | {p.id for p in problems}
    for key, path in sorted(images.items()):
        if key not in used and key not in seen:
            problems.append(Problem(key, f"image {os.path.basename(path)} has no row in {os.path.basename(captions)}"))
    if problems and on_problem == "fail":
        raise AtelierError(f"{len(problems)} dataset problem(s): " + "; ".join(f"{p.id}: {p.reason}" for p in problems),
                           fix="fix them, or run with --on-missing skip to skip those ids")
    return Dataset(rows, problems, captions, images_dir)
