"""Keyed batch runs over one or more ComfyUI servers, with a JSONL manifest and resume.

Every job carries its dataset id from start to end: the input is uploaded as ``<id>.<ext>``,
the save node's prefix becomes ``atelier_batch/<id>``, the server's output file name is checked
to start with the id, and the local output is written as ``<out>/<id>.<ext>`` (temp + rename).
Nothing is ever matched by position, so a missing image cannot shift later ids.

Results log (client/results_log.py): ``<out>/manifest.jsonl``, one JSON line per finished attempt
(id, status, server, prompt_id, outputs [{path, size, sha256}], seconds, error, attempt, seed, ts).
The last line of an id wins. A re-run skips ids whose last line is ``done`` and whose output
files are present and valid, and retries the others. Each ``done`` line also records a
``fingerprint`` (sha256 of the API prompt as patched for that row, plus the input image's sha256):
an id whose fingerprint differs from what would be sent now (the workflow or its inputs changed) is
run again, and the run says how many.

One run per ``--out`` folder: the run holds an exclusive flock on ``<out>/.atelier-batch.lock``; a
second run on the same folder stops at once (exit 2) naming the PID and host holding it. The kernel
drops the lock when the holder exits or is killed, so a crashed run never blocks the next one.

This module is the entry point (``run_batch``, the ``atelier batch`` / ``convert`` CLI); the parts live in
client/bindings.py (row -> node inputs), client/results_log.py (the JSONL log, atomic outputs),
client/outdir.py (the --out folder and its lock) and client/scheduler.py (workers, retries, servers).
Their public names are importable from here as before.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..core.errors import AtelierError
from . import convert as _convert
from .bindings import (PREFIX_INPUTS, Bindings, auto_bindings, node_column_problems, parse_bind,  # noqa: F401
                       patch_prompt, resolve_bindings, row_fingerprint, seed_for)
from .dataset import Dataset, Row, load_dataset  # noqa: F401  (Row: for callers of this module)
from .outdir import LOCK_NAME, OutputFolderBusy, OutputLock, check_out_path, prepare_out_dir  # noqa: F401
from .outdir import _errno_text
from .progress import ProgressBar, summary_table
from .results_log import (TMP_SUFFIX, LocalWriteError, ResultsLog, RunResults, clean_tmp, output_valid,  # noqa: F401
                          write_atomic)
from .scheduler import BatchConfig, Job, OutputMismatch, Runner, ServerState  # noqa: F401
from .server_api import ComfyServer, ServerUnavailable

EXIT_OK, EXIT_FAILED_ROWS, EXIT_BAD_INPUT, EXIT_NO_SERVER, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
# the run stopped before the end: an output or the manifest could not be written here (disk full,
# read-only, quota), or (rarely) an internal error in a worker; the message printed says which
EXIT_WRITE_FAILED = 4


@dataclass
class BatchResult:
    """``results``: ``{id: record}`` for every id (a :class:`RunResults`: the records of finished jobs are read
    back from the manifest when asked for, not held in memory)."""
    exit_code: int
    results: Mapping[str, dict]
    dataset: Dataset | None = None
    prompt: dict | None = None
    bindings: Bindings | None = None
    problems: list[str] = field(default_factory=list)
    rerun: list[str] = field(default_factory=list)  # done ids run again: workflow or inputs changed

    def count(self, status: str) -> int:
        if isinstance(self.results, RunResults):
            return self.results.count(status)  # kept as the results came in: reads nothing
        return sum(1 for r in self.results.values() if r["status"] == status)


def _load_workflow(cfg: BatchConfig, object_info: dict) -> tuple[dict, dict | None]:
    wf = _convert.load_json(cfg.workflow) if isinstance(cfg.workflow, (str, os.PathLike)) else cfg.workflow
    ui = wf if _convert.is_ui_format(wf) else None
    return _convert.to_api(wf, object_info), ui


def _connect(servers: list[ComfyServer], log) -> tuple[list[ServerState], list[ServerState]]:
    """(all server states, those up now); none up is ServerUnreachable."""
    states = [ServerState(s) for s in servers]
    errors = {}
    for st in states:
        try:
            st.server.ping(timeout=5)
            st.object_info = st.server.object_info()
            st.up = True
        except ServerUnavailable as e:
            errors[st.server.url] = str(e)
    up = [st for st in states if st.up]
    if not up:
        raise ServerUnreachable("cannot reach any ComfyUI server: " + "; ".join(f"{u}: {e}" for u, e in errors.items()))
    for u, e in errors.items():
        log(f"warning: {u} is not reachable now ({e}); it will be used when it comes up")
    return states, up


def _bind(cfg: BatchConfig, prompt: dict, ui: dict | None, object_info: dict) -> Bindings:
    declared = ((ui or {}).get("extra") or {}).get("atelier", {}).get("bindings") or {}
    if not isinstance(declared, dict):
        raise AtelierError("workflow extra.atelier.bindings must be an object like {\"prompt\": \"5.prompt\"}")
    binds = [f"{k}={v if isinstance(v, str) else ','.join(v)}" for k, v in declared.items()] + list(cfg.binds)
    return resolve_bindings(prompt, object_info, binds, ui)


def _check_runnable(prompt: dict, bindings: Bindings, ds: Dataset, up: list[ServerState], object_info: dict,
                    log) -> None:
    """Everything that would make every row fail, as one bad-input error (before anything runs)."""
    bound = {t for targets in bindings.targets.values() for t in targets}
    problems = _convert.validate_api(prompt, object_info, check_combos=True, skip=bound)
    for st in up[1:]:
        missing = sorted({n["class_type"] for n in prompt.values() if n["class_type"] not in st.object_info})
        if missing:
            problems.append(f"server {st.server.url} lacks node types {missing}")
    problems += [f"binding: {n}" for n in bindings.notes]
    if any(r.image for r in ds.rows) and not bindings.get("image"):
        problems.append("the dataset has images but no node receives them: add --bind image=NODE.image "
                        "(the workflow needs a LoadImage node)")
    if any(r.prompt for r in ds.rows) and not bindings.get("prompt"):
        log("note: the captions' prompt column is not used (no prompt text input found; use --bind prompt=NODE.text)")
    if problems:
        raise AtelierError("the workflow cannot run on the server(s): " + " | ".join(problems),
                           fix="install the missing nodes/models on the server or fix the workflow and bindings")
    bad_columns = node_column_problems(prompt, bindings, ds.rows, object_info)
    if bad_columns:
        raise AtelierError("the captions name node inputs the workflow does not have: " + " | ".join(bad_columns),
                           expected="columns named NODE.INPUT with an input that node has (or bound with --bind)",
                           fix="rename the column to one of the node's inputs, or point it elsewhere with "
                               "--bind COLUMN=NODE.INPUT")


def _dry_run(cfg: BatchConfig, ds: Dataset, rows: list[Row], prompt: dict, bindings: Bindings,
             up: list[ServerState], object_info: dict, log) -> None:
    log(f"dry run: {len(rows)} row(s) ready, {len(ds.problems)} skipped, servers up: "
        f"{', '.join(s.server.url for s in up)}")
    log(f"bindings: {bindings.describe() or '(none)'}")
    for p in ds.problems:
        log(f"  skip {p.id}: {p.reason}")
    known = set(bindings.targets) | ({"negative_prompt"} if bindings.get("negative") else set())
    for col in sorted({k for r in rows for k in r.overrides}):
        if col not in known and not ("." in col and col.rsplit(".", 1)[0] in prompt):
            log(f"  note: column '{col}' is not bound to any node input (ignored); "
                f"use --bind {col}=NODE.INPUT or name the column NODE.INPUT")
    if rows:
        sample, _ = patch_prompt(prompt, bindings, rows[0], image_name="x.png" if rows[0].image else None,
                                 seed_mode=cfg.seed_mode, seed_base=cfg.seed_base, server_prefix=cfg.server_prefix,
                                 object_info=object_info)
        more = [q for q in _convert.validate_api(sample, object_info, check_combos=False)]
        if more:
            raise AtelierError("the patched prompt is invalid: " + " | ".join(more), fix="check the bindings")


def run_batch(cfg: BatchConfig) -> BatchResult:
    """Run (or dry-run) a batch. Raises AtelierError for bad input; returns a BatchResult."""
    stream = cfg.stream or sys.stderr

    def log(msg: str):
        print(msg, file=stream, flush=True)

    if not cfg.servers:
        raise AtelierError("no server given", fix="pass --server http://HOST:PORT (repeatable)")
    check_out_path(cfg.out_dir)  # a file in its place is bad input, before anything else
    servers = [ComfyServer(u) for u in dict.fromkeys(cfg.servers)]
    ds = load_dataset(cfg.images, cfg.captions, id_column=cfg.id_column, prompt_column=cfg.prompt_column,
                      on_problem="fail" if cfg.on_missing == "fail" else "skip")
    states, up = _connect(servers, log)
    object_info = up[0].object_info
    prompt, ui = _load_workflow(cfg, object_info)
    bindings = _bind(cfg, prompt, ui, object_info)
    _check_runnable(prompt, bindings, ds, up, object_info, log)

    rows = ds.rows[: cfg.limit] if cfg.limit else ds.rows
    manifest_path = cfg.manifest or os.path.join(cfg.out_dir, "manifest.jsonl")
    results = RunResults(manifest_path)  # finished jobs: their status and manifest offset only
    for p in ds.problems:
        results[p.id] = {"id": p.id, "status": "skipped", "error": p.reason}
    prepare_out_dir(cfg.out_dir)

    if cfg.dry_run:
        _dry_run(cfg, ds, rows, prompt, bindings, up, object_info, log)
        return BatchResult(EXIT_OK, results, ds, prompt, bindings)

    lock = OutputLock(cfg.out_dir).acquire(log)  # before touching the folder: one run per --out
    try:
        return _run_locked(cfg, ds, rows, results, prompt, bindings, states, servers, object_info,
                           manifest_path, log, stream)
    finally:
        lock.release()


def _run_locked(cfg, ds, rows, results, prompt, bindings, states, servers, object_info, manifest_path, log,
                stream) -> BatchResult:
    clean_tmp(cfg.out_dir)
    try:
        manifest = ResultsLog(manifest_path, fsync=cfg.fsync)
    except OSError as exc:
        raise AtelierError(f"cannot open the manifest {manifest_path}: {_errno_text(exc)}",
                           expected="a writable file path (default OUT/manifest.jsonl)",
                           fix="pass another --manifest (or --out), or fix the permissions there") from exc
    def fingerprint(r: Row, image_data: bytes | None = None) -> str:  # when needed, never kept for all rows
        return row_fingerprint(prompt, bindings, r, seed_mode=cfg.seed_mode, seed_base=cfg.seed_base,
                               server_prefix=cfg.server_prefix, object_info=object_info, image_data=image_data)

    todo, rerun, unrecorded = [], [], 0
    for r in rows:
        prev = manifest.records.get(r.id)
        if prev is not None and output_valid(prev, cfg.out_dir, verify_hash=cfg.verify_hash):
            old = prev.get("fingerprint")
            if old is not None and old != fingerprint(r):
                rerun.append(r.id)
                todo.append(r)
                continue
            unrecorded += old is None
            results.already_done(r.id, prev)
        else:
            todo.append(r)
    if rerun:
        log(f"{len(rerun)} id(s) re-run: the workflow or their inputs changed since their outputs were made "
            f"({', '.join(rerun[:8])}{', ...' if len(rerun) > 8 else ''})")
    if unrecorded:
        log(f"note: {unrecorded} done id(s) have no recorded fingerprint (manifest from an older version): kept "
            "as they are; delete their manifest lines to run them again")
    # skipped rows are recorded once (not on every re-run)
    for p in ds.problems:
        prev = manifest.records.get(p.id)
        if not (prev and prev.get("status") == "skipped" and prev.get("error") == p.reason):
            manifest.write({"id": p.id, "status": "skipped", "server": None, "prompt_id": None, "outputs": [],
                            "seconds": 0, "error": p.reason, "attempt": 0, "seed": None,
                            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    bar = ProgressBar(len(todo), stream=stream, enabled=cfg.progress and bool(todo))
    if len(todo) < len(rows):
        log(f"{len(rows) - len(todo)} id(s) already done (manifest {manifest_path}); {len(todo)} to run")
    runner = Runner(cfg, todo, prompt, bindings, states, manifest, bar, results, object_info, log,
                    fingerprint=fingerprint)
    interrupted = False
    try:
        if todo:
            runner.run()
    except KeyboardInterrupt:
        interrupted = True
        runner.stop.set()
        runner.cancel_pending()
        bar.message("interrupted: pending prompts cancelled; the manifest holds every finished id. "
                    "Run the same command again to resume.")
    finally:
        manifest.close()  # waits for a line being written; later writes are dropped; never raises
        for closer in [bar.close] + [s.close for s in servers]:
            try:
                closer()
            except Exception:
                pass
    if runner.fatal is not None and not interrupted:
        log(f"error: the run stopped: {runner.fatal}")
    for r in todo:
        if r.id not in results:  # (a membership test: finished ids are not read back from the manifest)
            results[r.id] = {"id": r.id, "status": "pending", "error": "not run (interrupted)" if interrupted
                             else f"not run (the run stopped: {runner.fatal})"}
    if interrupted:
        code = EXIT_INTERRUPTED
    elif runner.fatal is not None:
        code = EXIT_WRITE_FAILED
    else:
        code = EXIT_FAILED_ROWS if results.count("failed") else EXIT_OK
    res = BatchResult(code, results, ds, prompt, bindings, rerun=rerun)
    if runner.fatal is not None:
        res.problems.append(runner.fatal)
    return res


class ServerUnreachable(AtelierError):
    def __init__(self, msg: str):
        super().__init__(msg, fix="start ComfyUI (python main.py --listen 127.0.0.1 --port 8188) or fix --server")


# ============================================================================ CLI

def add_parser(subparsers) -> None:
    """Register `batch` and `convert` sub-commands on an argparse subparsers object."""
    p = subparsers.add_parser(
        "batch", help="run a workflow over a dataset keyed by id on one or more ComfyUI servers",
        description="Run a workflow over a dataset keyed by id (images + captions), across servers, with resume.")
    p.add_argument("workflow", help="workflow .json (UI format or API format)")
    p.add_argument("--server", action="append", default=[], metavar="URL",
                   help="ComfyUI server URL (repeatable), e.g. http://127.0.0.1:8188")
    p.add_argument("--images", metavar="DIR", help="folder of input images named <id>.<ext>")
    p.add_argument("--captions", metavar="FILE", help="CSV/TSV/JSONL/JSON with id, prompt and optional override "
                   "columns (seed, negative, NODE.INPUT); default: captions.csv in --images")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (files named <id>.<ext>)")
    p.add_argument("--manifest", metavar="FILE", help="results manifest (default OUT/manifest.jsonl)")
    p.add_argument("--bind", action="append", default=[], metavar="NAME=NODE.INPUT",
                   help="which node input gets a row field: image, prompt, negative, seed or any extra column "
                        "(node id, title or class type); auto-detected when omitted")
    p.add_argument("--inflight", type=int, default=2, help="max prompts queued per server (default 2)")
    p.add_argument("--retries", type=int, default=2, help="retries per failed row (default 2)")
    p.add_argument("--backoff", type=float, default=2.0, help="first retry delay in s, doubling (default 2)")
    p.add_argument("--timeout", type=float, default=600.0, help="per-job timeout in s (default 600)")
    p.add_argument("--server-wait", type=float, default=300.0,
                   help="give up when no server answers for this long (s, default 300)")
    p.add_argument("--on-missing", choices=("skip", "fail"), default="skip",
                   help="row without image / image without row / unreadable image: skip it (default) or stop")
    p.add_argument("--seed-mode", choices=("workflow", "id"), default="workflow",
                   help="seed when the row has no seed column: keep the workflow's, or derive one from the id")
    p.add_argument("--seed-base", type=int, default=0, help="added to id-derived seeds")
    p.add_argument("--id-column", default="id")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--limit", type=int, help="only the first N rows")
    p.add_argument("--no-ws", action="store_true", help="poll /history instead of following /ws")
    p.add_argument("--verify-hash", action="store_true", help="on resume, check outputs' sha256, not just size")
    p.add_argument("--fsync", action="store_true",
                   help="fsync every output and manifest line (survives power cuts; slower on slow disks)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate dataset, workflow and bindings against the server's /object_info; run nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=main_batch)

    c = subparsers.add_parser("convert", help="convert a UI-format workflow to API format using a server's /object_info")
    c.add_argument("workflow")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--server", metavar="URL")
    src.add_argument("--object-info", metavar="FILE", help="saved /object_info JSON (offline)")
    c.add_argument("-o", "--output", metavar="FILE")
    c.set_defaults(func=lambda a: _guard(_convert.main_convert, a))


def _guard(fn, args) -> int:
    try:
        return fn(args)
    except ServerUnreachable as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NO_SERVER
    except LocalWriteError as e:  # e.g. the manifest, before any job ran
        print(f"error: {e}", file=sys.stderr)
        return EXIT_WRITE_FAILED
    except (AtelierError, ServerUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def main_batch(args) -> int:
    cfg = BatchConfig(workflow=args.workflow, servers=args.server, out_dir=args.out, images=args.images,
                      captions=args.captions, manifest=args.manifest, binds=args.bind, inflight=args.inflight,
                      retries=args.retries, backoff=args.backoff, job_timeout=args.timeout,
                      server_wait=args.server_wait, on_missing=args.on_missing, seed_mode=args.seed_mode,
                      seed_base=args.seed_base, id_column=args.id_column, prompt_column=args.prompt_column,
                      use_ws=not args.no_ws, verify_hash=args.verify_hash, fsync=args.fsync, dry_run=args.dry_run,
                      progress=not args.quiet, limit=args.limit)

    def go(_):
        res = run_batch(cfg)
        if not cfg.dry_run:
            print(summary_table(res.results), file=sys.stderr)
            if res.rerun:
                print(f"{len(res.rerun)} ids re-run: the workflow or their inputs changed", file=sys.stderr)
            print(f"\noutputs: {os.path.abspath(cfg.out_dir)}  manifest: "
                  f"{os.path.abspath(cfg.manifest or os.path.join(cfg.out_dir, 'manifest.jsonl'))}", file=sys.stderr)
            if res.exit_code != EXIT_OK:
                print("run the same command again to retry failed/pending ids (done ids are skipped)", file=sys.stderr)
        else:
            print("dry run OK", file=sys.stderr)
        return res.exit_code

    return _guard(go, args)


def main(argv=None) -> int:
    """Stand-alone entry (python -m comfyui_atelier.client.batch ...)."""
    ap = argparse.ArgumentParser(prog="atelier")
    sub = ap.add_subparsers(dest="cmd", required=True)
    add_parser(sub)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:  # Ctrl-C outside the run loop (start-up, summary): still 130
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
