"""`atelier models ...`: list, check and download the models in models_manifest.json.

    atelier models list [--workflow NAME] [--json | --manager]
    atelier models check [--workflow NAME] [--models-dir DIR] [--verify]
    atelier models download ID... | --workflow NAME | --missing  [--models-dir DIR] [--allow-unverified]
    atelier models convert ID|PATH [--out FILE]       (PoolNet .pth -> .safetensors; needs torch)

The models dir defaults to $COMFYUI_PATH/models, else the ComfyUI this pack sits in
(custom_nodes/<pack>), else the pack's own models/; the command always prints which one it uses.
Downloads are verified (size and sha256) before they are renamed into place; a failure leaves
nothing behind, prints the manual step and exits 1; a models folder this machine cannot write
(read-only, full, no permission, a file in the way) stops the downloads with that reason, exit 1.
Standard library only (no torch), except
`convert`, which loads the PoolNet converter on demand.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ..core.errors import AtelierError
from ..core.manifest import (Manifest, ModelEntry, check_entry, entries_for_workflow_file, human_size,
                             load_manifest, manual_step)
from .download import DownloadError, download_entry

PACK_ROOT = Path(__file__).absolute().parent.parent
WORKFLOWS_DIR = PACK_ROOT / "workflows"


# ----------------------------------------------------------------------------- helpers

def default_models_dir(comfyui: str | os.PathLike | None = None) -> tuple[Path, str]:
    """(models dir, why it was chosen): the one default of `atelier models` and `atelier demo`.

    An explicit ComfyUI folder, else $COMFYUI_PATH, else the ComfyUI this pack is installed in,
    else the ComfyUI in the current directory, else the pack's own `models/` (never the current
    directory, so the answer does not depend on where the command runs).
    """
    if comfyui:
        return Path(comfyui).expanduser() / "models", "from --comfyui"
    env = os.environ.get("COMFYUI_PATH")
    if env:
        return Path(env).expanduser() / "models", "from $COMFYUI_PATH"
    for pack in (PACK_ROOT, PACK_ROOT.resolve()):
        if pack.parent.name == "custom_nodes" and (pack.parent.parent / "models").is_dir():
            return pack.parent.parent / "models", "the ComfyUI this pack is installed in"
    cwd = Path.cwd()
    if (cwd / "main.py").is_file() and (cwd / "models").is_dir():
        return cwd / "models", "the ComfyUI in the current directory"
    return PACK_ROOT / "models", "the pack's own models/ folder (set COMFYUI_PATH or pass --models-dir to change it)"


def _models_dir(args) -> Path:
    if getattr(args, "models_dir", None):
        d, why = Path(args.models_dir).expanduser(), "from --models-dir"
    else:
        d, why = default_models_dir()
    print(f"models dir: {d.absolute()} ({why})")
    return d


class ProgressBar:
    """Text progress for one file: a redrawn bar on a terminal, a line every 10 % otherwise."""

    def __init__(self, label: str, stream=None, min_interval: float = 0.2):
        self.label, self.stream = label, stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.min_interval = min_interval
        self.t0 = time.monotonic()
        self.last = 0.0
        self.last_decile = -1
        self.finished = False

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        complete = total is not None and done >= total
        rate = done / max(now - self.t0, 1e-6)
        pct = f"{100 * done / total:5.1f}%" if total else "  ?  "
        text = f"{self.label} {pct} {human_size(done)}/{human_size(total)} {human_size(int(rate))}/s"
        if self.tty:
            if complete or now - self.last >= self.min_interval:
                width = 24
                fill = int(width * done / total) if total else 0
                self.stream.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {text}   ")
                self.stream.flush()
                self.last = now
            if complete and not self.finished:
                self.stream.write("\n")
                self.finished = True
        else:
            decile = int(10 * done / total) if total else -1
            if (decile > self.last_decile and done > 0) or (complete and not self.finished):
                self.stream.write(text + "\n")
                self.stream.flush()
                self.last_decile = decile
                self.finished = complete


def _workflow_entries(manifest: Manifest, name: str) -> list[ModelEntry]:
    """Entries a workflow needs: its used_by tag in the manifest plus its file's properties.models."""
    entries = list(manifest.for_workflow(name))
    path = Path(name)
    if path.suffix != ".json":
        path = WORKFLOWS_DIR / f"{name}.json"
    if path.is_file():
        found, unknown = entries_for_workflow_file(manifest, path)
        for e in found:
            if e not in entries:
                entries.append(e)
        for m in unknown:
            print(f"warning: {path.name} node {m.get('_node_id')} ({m.get('_node_type')}) lists model "
                  f"'{m.get('name')}' in '{m.get('directory')}', which is not in the manifest", file=sys.stderr)
    elif not entries:
        known = sorted(set(manifest.workflows) | {p.stem for p in WORKFLOWS_DIR.glob("*.json")})
        raise AtelierError(f"unknown workflow '{name}'", expected="one of: " + (", ".join(known) or "(none)"),
                           fix="run `atelier models list` to see which workflows use which model.")
    return entries


def _select(manifest: Manifest, args) -> list[ModelEntry]:
    chosen: list[ModelEntry] = []
    for mid in getattr(args, "ids", None) or []:
        e = manifest.by_id(mid)
        if e not in chosen:
            chosen.append(e)
    if getattr(args, "workflow", None):
        for e in _workflow_entries(manifest, args.workflow):
            if e not in chosen:
                chosen.append(e)
    return chosen


# ----------------------------------------------------------------------------- commands

def cmd_list(manifest: Manifest, args) -> int:
    entries = _workflow_entries(manifest, args.workflow) if args.workflow else list(manifest)
    if args.manager:
        print(json.dumps(manifest.to_manager_list(entries), indent=2, ensure_ascii=False))
        return 0
    if args.json:
        print(json.dumps([e.raw for e in entries], indent=2, ensure_ascii=False))
        return 0
    rows = [("ID", "FOLDER/FILE", "SIZE", "CHECK", "LICENSE")]
    for e in entries:
        check = "manual" if e.manual_only else ("sha256" if e.verified else "unverified")
        rows.append((e.id, f"{e.save_path}/{e.filename}{'/' if e.kind == 'directory' else ''}",
                     human_size(e.size) if e.kind == "file" else f"{len(e.files)} files", check, e.license))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    if not args.workflow and manifest.workflows:
        print("\nworkflows: " + ", ".join(manifest.workflows))
    return 0


def cmd_check(manifest: Manifest, args) -> int:
    models_dir = _models_dir(args)
    entries = _select(manifest, args) if (args.workflow or args.ids) else list(manifest)
    missing: list[ModelEntry] = []
    for e in entries:
        prog = ProgressBar(f"  hashing {e.id}") if args.verify else None
        st = check_entry(e, models_dir, hash_files=args.verify, progress=prog)
        if st.ok:
            print(f"OK       {e.id:28s} {st.path}")
        else:
            print(f"{'MISSING' if not st.present else 'BAD':8s} {e.id:28s} {st.path}")
            for p in st.problems:
                if p != f"missing {st.path}":  # the path is on the line above already
                    print(f"           {p}")
            missing.append(e)
    print(f"\n{len(entries) - len(missing)} of {len(entries)} model(s) present"
          + (f" in {models_dir}" if entries else ""))
    if missing:
        auto = [e.id for e in missing if not e.manual_only]
        if auto:
            print(f"fetch them with: atelier models download {' '.join(auto)}"
                  + (f" --models-dir {models_dir}" if getattr(args, "models_dir", None) else ""))
        for e in missing:
            print("\n" + manual_step(e, models_dir))
        return 1
    return 0


def cmd_download(manifest: Manifest, args) -> int:
    if not (args.ids or args.workflow or args.missing):
        print("error: name model ids, or use --workflow NAME or --missing "
              "(see `atelier models list`)", file=sys.stderr)
        return 2
    models_dir = _models_dir(args)
    entries = _select(manifest, args)
    if args.missing:
        entries += [e for e in manifest if e not in entries and not check_entry(e, models_dir).present]
    failed: list[str] = []
    for k, e in enumerate(entries):
        print(f"{e.id}: {e.name} -> {e.target(models_dir)}")
        try:
            result = download_entry(e, models_dir, timeout=args.timeout, force=args.force,
                                    allow_unverified=args.allow_unverified,
                                    progress_factory=lambda spec: ProgressBar(f"  {Path(spec.relpath).name}"))
        except DownloadError as exc:
            failed.append(e.id)
            print(f"FAILED {e.id}: {exc.detail}", file=sys.stderr)
            if exc.reason == "destination":  # every other file would fail the same way here
                rest = [x.id for x in entries[k + 1:]]
                if rest:
                    print(f"not tried (the models folder cannot be written): {', '.join(rest)}", file=sys.stderr)
                break
            print(manual_step(e, models_dir), file=sys.stderr)
            continue
        for rel, digest in result.items():
            if digest == "present":
                print(f"  {rel}: already present and verified")
            else:
                spec_sha = next(s.sha256 for s in e.file_specs() if s.relpath == rel)
                print(f"  {rel}: saved, sha256 {digest}" + ("" if spec_sha else " (not in the manifest: "
                                                              "compare it with the publisher's before trusting it)"))
    if failed:
        print(f"\n{len(failed)} download(s) failed: {', '.join(failed)} (nothing partial was kept)", file=sys.stderr)
        return 1
    print(f"\nall {len(entries)} model(s) in place under {models_dir}")
    return 0


def cmd_convert(manifest: Manifest, args) -> int:
    """PoolNet .pth -> .safetensors, delegated to core/poolnet.py (which needs torch)."""
    target = args.source
    entry = manifest.get(target)
    if entry is not None:
        src = entry.target(_models_dir(args))
    else:
        src = Path(target).expanduser()
    if not src.is_file():
        print(f"error: {src} does not exist" + (f"\n{manual_step(entry, src.parent.parent)}" if entry else ""),
              file=sys.stderr)
        return 1
    try:
        from ..core import poolnet  # torch; only this sub-command needs it
        convert = poolnet.convert_pth_to_safetensors
    except (ImportError, AttributeError) as exc:
        print("error: `models convert` needs the PoolNet converter "
              "(core/poolnet.py: convert_pth_to_safetensors(src, dst)) and torch + safetensors; "
              f"not available here: {exc}", file=sys.stderr)
        return 2
    dst = Path(args.out).expanduser() if args.out else src.with_suffix(".safetensors")
    try:
        info = convert(str(src), str(dst))
    except AtelierError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the destination: read-only, full, not writable
        print(f"error: cannot write {dst}: {exc.strerror or exc} (errno {exc.errno}); choose another --out "
              "or fix that folder", file=sys.stderr)
        return 1
    extra = ", ".join(f"{k} {v}" for k, v in info.items()) if isinstance(info, dict) else ""
    print(f"wrote {dst}" + (f" ({extra})" if extra else ""))
    return 0


COMMANDS = {"list": cmd_list, "check": cmd_check, "download": cmd_download, "convert": cmd_convert}


def run(args) -> int:
    """Handler for the parsed `models` arguments; returns the exit status."""
    cmd = getattr(args, "models_cmd", None)
    if cmd is None:
        args._models_parser.print_help()
        return 2
    try:
        manifest = load_manifest(args.manifest) if args.manifest else load_manifest()
        return COMMANDS[cmd](manifest, args)
    except AtelierError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


# ----------------------------------------------------------------------------- parser

def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--manifest", help="models_manifest.json to use (default: the pack's own)")
    sub = parser.add_subparsers(dest="models_cmd", metavar="{list,check,download,convert}")

    def models_dir_arg(p):
        p.add_argument("--models-dir", help="ComfyUI models dir (default: $COMFYUI_PATH/models, the ComfyUI "
                                            "this pack is installed in, or the pack's models/)")

    p = sub.add_parser("list", help="list the manifest's models")
    p.add_argument("--workflow", help="only the models this workflow needs")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help="print the entries as JSON")
    g.add_argument("--manager", action="store_true", help="print a ComfyUI-Manager model-list.json")

    p = sub.add_parser("check", help="which models are present / missing (exit 1 if any is missing)")
    p.add_argument("ids", nargs="*", metavar="ID", help="only these ids")
    p.add_argument("--workflow", help="only the models this workflow needs (name or path of a .json)")
    p.add_argument("--verify", action="store_true", help="also hash every file (slow for checkpoints)")
    models_dir_arg(p)

    p = sub.add_parser("download", help="download models, verified by size and sha256")
    p.add_argument("ids", nargs="*", metavar="ID", help="manifest ids (see `atelier models list`)")
    p.add_argument("--workflow", help="every model this workflow needs")
    p.add_argument("--missing", action="store_true", help="every model not present yet")
    p.add_argument("--force", action="store_true", help="download again even if present")
    p.add_argument("--allow-unverified", action="store_true",
                   help="also fetch files whose sha256/size the manifest does not know (prints the hash)")
    p.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds (default 30)")
    models_dir_arg(p)

    p = sub.add_parser("convert", help="convert the PoolNet .pth to .safetensors (needs torch)")
    p.add_argument("source", help="manifest id (e.g. poolnet-resnet50) or path of a .pth")
    p.add_argument("--out", help="output .safetensors (default: beside the source)")
    models_dir_arg(p)

    parser.set_defaults(func=run, _models_parser=parser)
    return parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `models` on the top-level `atelier` sub-parsers; its handler is set via set_defaults(func=run)."""
    p = subparsers.add_parser("models", help="list, check and download the models the pack needs",
                              description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    return configure(p)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="atelier models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except BrokenPipeError:  # `atelier models list | head`
        sys.stdout = open(os.devnull, "w")
        return 0


if __name__ == "__main__":  # python -m comfyui_atelier.client.models_cli
    sys.exit(main())
