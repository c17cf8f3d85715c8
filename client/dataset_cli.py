"""`atelier dataset filter|caption|control|export`: prepare a folder of images for the trainers.

Four stages over one folder of images (ids = file stems, client/dataset.py's rule), each resumable:

    atelier dataset filter  IMAGES [--conditioning DIR] --min-width 1024 --min-height 1024 -o kept.json
    atelier dataset caption IMAGES --model models/captioners/blip-image-captioning-large \
                            --prompt "a keyboard skin of" --template "{caption}, iflyskin" --ids kept.json -o captions.jsonl
    atelier dataset control IMAGES --method canny --ids kept.json -o conditioning/
    atelier dataset export  IMAGES --layout controlnet --captions captions.jsonl --conditioning conditioning/ \
                            --ids kept.json -o dataset/

The algorithms live in core/dataset_prep.py and core/captioning.py; importing this module (to build
the `atelier` parser) needs no torch, numpy or PIL: they load when a command runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..core import files
from ..core.errors import AtelierError
from . import dataset as ds
from .progress import ProgressBar

DESCRIPTION = ("Prepare training data keyed by id (the image file stem): filter by size and aspect ratio "
               "(data-juicer semantics), caption with BLIP, make Canny/lineart control images, and export the "
               "ControlNet (train.jsonl) or LoRA (images + .txt + metadata.jsonl) layout. Every stage resumes.")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("dataset", help="prepare ControlNet / LoRA training data (filter, caption, control, export)",
                              description=DESCRIPTION)
    sub = p.add_subparsers(dest="stage", metavar="STAGE", required=True)

    def common(sp, out_help: str):
        sp.add_argument("images", help="folder of images; the id of an image is its file stem")
        sp.add_argument("--output", "-o", required=True, help=out_help)
        sp.add_argument("--ids", default=None, help="only these ids: a filter report (.json, its 'kept' list) or a "
                                                     "text file with one id per line")
        sp.add_argument("--no-progress", action="store_true", help="no progress bar")

    f = sub.add_parser("filter", help="keep images by size and aspect ratio (data-juicer image_shape_filter + "
                                      "image_aspect_ratio_filter)")
    common(f, "report file (.json): kept ids, dropped ids with the filter, measured value and bound")
    f.add_argument("--conditioning", default=None, help="folder of control images by id: they are part of each sample")
    f.add_argument("--min-width", type=int, default=1)
    f.add_argument("--max-width", type=int, default=sys.maxsize)
    f.add_argument("--min-height", type=int, default=1)
    f.add_argument("--max-height", type=int, default=sys.maxsize)
    f.add_argument("--min-ratio", type=float, default=0.5, help="min width/height (inclusive; default 0.5)")
    f.add_argument("--max-ratio", type=float, default=2.0, help="max width/height (inclusive; default 2.0)")
    f.add_argument("--any-or-all", choices=("any", "all"), default="any",
                   help="with several images per id: keep when any passes, or only when all pass")
    f.set_defaults(func=run_filter)

    c = sub.add_parser("caption", help="caption images with a BLIP model folder (transformers)")
    common(c, "captions file (.jsonl: {id, text, caption, sig} per line, sorted by id)")
    c.add_argument("--model", required=True, help="BLIP model folder (e.g. ComfyUI/models/captioners/"
                                                   "blip-image-captioning-large)")
    c.add_argument("--prompt", default="", help="conditional prompt, e.g. 'a keyboard skin of'")
    c.add_argument("--strip-prompt", action="store_true", help="remove the prompt from the start of each caption")
    c.add_argument("--template", default="{caption}", help="caption template with {caption}, {trigger}, {id}, "
                                                            "e.g. '{caption}, iflyskin'")
    c.add_argument("--trigger", default="", help="trigger word for {trigger}")
    c.add_argument("--batch-size", type=int, default=8)
    c.add_argument("--max-new-tokens", type=int, default=30)
    c.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    c.set_defaults(func=run_caption)

    k = sub.add_parser("control", help="write control images (the pack's Canny / lineart conditioners)")
    common(k, "folder for <id>.png control images")
    k.add_argument("--method", choices=("canny", "lineart"), default="canny")
    k.add_argument("--low", type=float, default=100, help="Canny low threshold")
    k.add_argument("--high", type=float, default=200, help="Canny high threshold")
    k.set_defaults(func=run_control)

    e = sub.add_parser("export", help="write the ControlNet or LoRA training layout")
    common(e, "dataset folder")
    e.add_argument("--layout", choices=("controlnet", "lora"), required=True)
    e.add_argument("--captions", default=None, help="captions by id: .jsonl/.csv/.json (default: <image>.txt "
                                                     "beside each image)")
    e.add_argument("--caption-column", default=None, help="caption column (default: text, else prompt)")
    e.add_argument("--conditioning", default=None, help="folder of control images by id (ControlNet layout)")
    e.set_defaults(func=run_export)
    return p


# ----------------------------------------------------------------------------- helpers

def images_by_id(folder: str, what: str = "image folder") -> dict[str, str]:
    """{id: path} of the images in `folder` (file stems, one image per id: client/dataset.py's rule)."""
    if not os.path.isdir(folder):
        raise AtelierError(f"{what} '{folder}' does not exist", expected="a folder of images",
                           fix="check the path.")
    found = files.images_by_id(folder)
    for sid in found:
        ds.check_id(sid, f"{what} '{folder}'")
    return found


def read_ids(path: str | None) -> set[str] | None:
    """Ids from a filter report (.json with 'kept') or a text file (one id per line); None without a file."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise AtelierError(f"ids file '{path}' cannot be read: {exc.strerror or exc}",
                           fix="pass the report written by `atelier dataset filter`.") from None
    if path.lower().endswith(".json"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise AtelierError(f"ids file '{path}' is not valid JSON ({exc})",
                               fix="pass the report written by `atelier dataset filter`.") from None
        kept = data.get("kept") if isinstance(data, dict) else data
        if not isinstance(kept, list) or not all(isinstance(i, str) for i in kept):
            raise AtelierError(f"ids file '{path}' has no list of ids", expected="a filter report with a 'kept' list",
                               fix="pass the report written by `atelier dataset filter`.")
        return set(kept)
    return {line.strip() for line in text.splitlines() if line.strip()}


def select(found: dict[str, str], ids: set[str] | None) -> tuple[dict[str, str], list[str]]:
    """(the images of `ids`, ids named but without an image)."""
    if ids is None:
        return dict(found), []
    return {i: p for i, p in found.items() if i in ids}, sorted(ids - set(found))


class Bar:
    """client.progress.ProgressBar driven by core's (done, total) callbacks."""

    def __init__(self, total: int, enabled: bool):
        self.bar = ProgressBar(total, enabled=enabled and total > 0)
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        if done > self.done:
            self.bar.update("done", done - self.done)
            self.done = done

    def close(self) -> None:
        self.bar.close()


def _write_json(path: str, data: dict) -> None:
    from ..core.files import atomic_path

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, ensure_ascii=False)


def _missing_note(missing: list[str]) -> None:
    if missing:
        shown = ", ".join(missing[:10]) + (f" ... (+{len(missing) - 10})" if len(missing) > 10 else "")
        print(f"{len(missing)} id(s) from --ids have no image: {shown}", file=sys.stderr)


# ----------------------------------------------------------------------------- stages

def run_filter(args) -> int:
    from ..core import dataset_prep as dp

    found, missing = select(images_by_id(args.images), read_ids(args.ids))
    cond = images_by_id(args.conditioning, "conditioning folder") if args.conditioning else {}
    samples = {i: [p] + ([cond[i]] if i in cond else []) for i, p in found.items()}
    rules = [dp.ShapeRule(args.min_width, args.max_width, args.min_height, args.max_height, args.any_or_all),
             dp.RatioRule(args.min_ratio, args.max_ratio, args.any_or_all)]
    dp.check_rules(rules)
    bar = Bar(len(samples), not args.no_progress)
    try:
        report = dp.filter_files(samples, rules, progress=bar)
    finally:
        bar.close()
    _write_json(args.output, {"images": os.path.abspath(args.images), **report.to_dict()})
    print(report.text())
    _missing_note(missing)
    print(f"report: {args.output}")
    return 0


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise AtelierError(f"device {name!r} is not valid: {exc}", input="--device",
                           expected="auto, cpu, cuda or cuda:N", fix="pass --device auto.") from None


def run_caption(args) -> int:
    from ..core import captioning, dataset_prep as dp

    dp.apply_template("x", args.template)  # a bad template fails before the model loads
    found, missing = select(images_by_id(args.images), read_ids(args.ids))
    model_dir = os.path.abspath(args.model)
    if not captioning.is_captioner_dir(model_dir):
        raise AtelierError(f"'{args.model}' is not a BLIP model folder", input="--model",
                           expected="a folder with config.json, model.safetensors, preprocessor and tokenizer files",
                           fix=f"`atelier models download {captioning.MODEL_ID}` and pass its folder.")
    weights = captioning._weights_file(model_dir)
    settings = (dp.source_sig(weights), args.prompt, args.strip_prompt, args.template, args.trigger,
                args.max_new_tokens)
    log = dp.ResumeLog(args.output)
    sigs = {i: dp.signature(dp.source_sig(p), *settings) for i, p in found.items()}
    todo = sorted(i for i in found if not log.done(i, sigs[i]))
    print(f"{len(found)} images, {len(found) - len(todo)} already captioned, {len(todo)} to caption")
    if todo:
        device = _device(args.device)
        cap = captioning.load_captioner(model_dir, input="--model")
        cap.model.to(device)
        bar = Bar(len(todo), not args.no_progress)
        step = max(1, args.batch_size)
        try:
            for s in range(0, len(todo), step):
                chunk = todo[s:s + step]
                pixels = [dp.load_rgb(found[i]) for i in chunk]
                raw = cap.caption(pixels, prompt=args.prompt, max_new_tokens=args.max_new_tokens, batch_size=step,
                                  strip_prompt=args.strip_prompt, device=device)
                for i, text in zip(chunk, raw):
                    log.add({"id": i, "text": dp.apply_template(text, args.template, id=i, trigger=args.trigger)
                             if text else "", "caption": text, "sig": sigs[i]})
                bar(s + len(chunk), len(todo))
        finally:
            bar.close()
            log.close()
    log.compact()
    empty = sorted(i for i in found if not log.records.get(i, {}).get("text"))
    if empty:
        print(f"{len(empty)} image(s) got an empty caption (export drops them): {', '.join(empty[:10])}")
    _missing_note(missing)
    print(f"captions: {args.output}")
    return 0


def run_control(args) -> int:
    from ..core import dataset_prep as dp

    found, missing = select(images_by_id(args.images), read_ids(args.ids))
    os.makedirs(args.output, exist_ok=True)
    log = dp.ResumeLog(os.path.join(args.output, dp.STATE_FILE))
    params = (args.method, args.low, args.high) if args.method == "canny" else (args.method,)
    sigs = {i: dp.signature(dp.source_sig(p), *params) for i, p in found.items()}
    todo = sorted(i for i in found if not (log.done(i, sigs[i]) and os.path.exists(os.path.join(args.output, f"{i}.png"))))
    print(f"{len(found)} images, {len(found) - len(todo)} unchanged, {len(todo)} to make ({args.method})")
    bar = Bar(len(todo), not args.no_progress)
    try:
        for n, i in enumerate(todo, 1):
            lines = dp.control_image(dp.load_rgb(found[i]), args.method, low=args.low, high=args.high)
            dp.save_png(lines, os.path.join(args.output, f"{i}.png"))
            log.add({"id": i, "sig": sigs[i]})
            bar(n, len(todo))
    finally:
        bar.close()
        log.close()
    log.compact()
    _missing_note(missing)
    print(f"control images: {args.output}")
    return 0


def read_captions(path: str | None, found: dict[str, str], column: str | None) -> dict[str, str]:
    """{id: caption}: from a captions table (client/dataset.py's reader, ids from its 'id' column) or,
    without one, from the <stem>.txt side-car beside each image."""
    if path is None:
        out = {}
        for i, img in found.items():
            txt = os.path.splitext(img)[0] + ".txt"
            if os.path.isfile(txt):
                with open(txt, encoding="utf-8-sig") as f:
                    out[i] = f.read().strip()
        return out
    records = ds._read_table(path)
    cols = set().union(*(r.keys() for _, r in records)) if records else set()
    col = column or ("text" if "text" in cols else "prompt")
    if records and (col not in cols or "id" not in cols):
        raise AtelierError(f"captions file '{path}' has no 'id' and '{col}' columns (columns: {sorted(cols)})",
                           expected="an id column and a caption column", fix="pass --caption-column NAME.")
    out = {}
    for line, rec in records:
        sid = ds.check_id(rec.get("id"), f"{os.path.basename(path)} line {line}")
        if sid in out:
            raise AtelierError(f"captions file '{path}': id {sid} appears twice", expected="each id once",
                               fix="remove the duplicate rows.")
        if rec.get(col) is not None:
            out[sid] = str(rec[col])
    return out


def run_export(args) -> int:
    from ..core import dataset_prep as dp

    found, missing = select(images_by_id(args.images), read_ids(args.ids))
    captions = read_captions(args.captions, found, args.caption_column)
    cond = {}
    if args.layout == "controlnet":
        if not args.conditioning:
            raise AtelierError("the controlnet layout needs control images", input="--conditioning",
                               expected="a folder of <id>.png control images",
                               fix="run `atelier dataset control` and pass its folder as --conditioning.")
        cond = images_by_id(args.conditioning, "conditioning folder")
    items = [dp.Item(i, p, captions.get(i), cond.get(i)) for i, p in sorted(found.items())]
    bar = Bar(len(items), not args.no_progress)
    try:
        report = dp.export_dataset(items, args.output, args.layout, progress=bar)
    finally:
        bar.close()
    _write_json(os.path.join(args.output, "export_report.json"), report.to_dict())
    print(report.text())
    _missing_note(missing)
    print(f"index: {report.index}")
    return 0
