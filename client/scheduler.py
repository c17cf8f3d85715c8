"""The batch scheduler: worker threads per server pull jobs, run them, retry, move them between servers.

A job that fails on a server is retried elsewhere first (with a doubling backoff); a server that stops
answering is marked down, its jobs move to the others, and it is probed until it is back.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .bindings import Bindings, patch_prompt
from .dataset import Row
from .progress import ProgressBar
from .results_log import LocalWriteError, ResultsLog, write_atomic
from .server_api import (ComfyServer, ExecutionFailed, PromptRejected, ServerUnavailable, history_error,
                         output_files)


@dataclass(slots=True)
class Job:
    """One row's way through the run. Slotted, and its server sets start as the shared empty frozenset (a new
    set replaces it when a server is added): a queue of 10^4 jobs costs ~1 MB, not ~7 MB."""
    row: Row
    attempts: int = 0
    moves: int = 0
    not_before: float = 0.0
    avoid: frozenset | set = frozenset()  # servers this job failed on (prefer others)
    last_error: str | None = None
    moved_from: frozenset | set = frozenset()  # servers that went down while holding it
    settled: bool = True  # False while a worker holds it and has not yet finished or requeued it


@dataclass
class BatchConfig:
    workflow: str | dict
    servers: list[str]
    out_dir: str
    images: str | None = None
    captions: str | None = None
    manifest: str | None = None
    binds: list[str] = field(default_factory=list)
    inflight: int = 2
    retries: int = 2
    backoff: float = 2.0
    job_timeout: float = 600.0
    server_wait: float = 300.0
    on_missing: str = "skip"
    seed_mode: str = "workflow"
    seed_base: int = 0
    server_prefix: str = "atelier_batch"
    upload_subfolder: str | None = None
    id_column: str = "id"
    prompt_column: str = "prompt"
    use_ws: bool = True
    poll: float = 0.5
    verify_hash: bool = False
    fsync: bool = False
    dry_run: bool = False
    progress: bool = True
    stream: Any = None
    limit: int | None = None


class ServerState:
    def __init__(self, server: ComfyServer):
        self.server = server
        self.up = False
        self.lock = threading.Lock()
        self.prompt_ids: set[str] = set()
        self.next_probe = 0.0
        self.probe_backoff = 0.5
        self.object_info: dict | None = None


class Runner:
    def __init__(self, cfg: BatchConfig, rows: list[Row], prompt: dict, bindings: Bindings, servers: list[ServerState],
                 manifest: ResultsLog, bar: ProgressBar, results: dict, object_info: dict, log: Callable[[str], None],
                 fingerprints: dict[str, str] | None = None, *,
                 fingerprint: Callable[[Row, bytes | None], str | None] | None = None):
        """``results``: a dict, or a :class:`~.results_log.RunResults` (records that reach the manifest are then
        kept as offsets, not dicts). ``fingerprint(row, image_data)``: the row's fingerprint, computed when its
        job starts, from the input image's bytes as uploaded (``fingerprints``, a dict by id computed up front,
        is still accepted)."""
        self.cfg, self.prompt, self.bindings = cfg, prompt, bindings
        self.fingerprints = fingerprints or {}
        self._fingerprint = fingerprint or (lambda row, image_data=None: self.fingerprints.get(row.id))
        self.servers, self.manifest, self.bar, self.results = servers, manifest, bar, results
        self.object_info, self.log = object_info, log
        self.cond = threading.Condition()
        self.queue: list[Job] = [Job(r) for r in rows]
        self.active = 0
        self.stop = threading.Event()
        self.fatal: str | None = None  # why the run stopped early (a local write error, a worker crash)
        self.last_server_up = time.monotonic()
        subfolder = cfg.upload_subfolder
        if subfolder is None:
            tag = hashlib.sha1(os.path.abspath(cfg.out_dir).encode()).hexdigest()[:8]
            subfolder = f"atelier_batch/{tag}"
        self.subfolder = subfolder

    # ---------------------------------------------------------------- queue
    def _finished(self) -> bool:
        return not self.queue and self.active == 0

    def next_job(self, st: ServerState) -> Job | None:
        with self.cond:
            while True:
                if self.stop.is_set() or self._finished():
                    return None
                now = time.monotonic()
                url = st.server.url
                # prefer a job that has not failed here; take one that failed everywhere that is up.
                # Lazy scans from the head of the queue: the first ready job is usually the pick, so a
                # pick costs O(1) however long the queue is (a full scan per job made a run quadratic).
                pick = next((j for j in self.queue if j.not_before <= now and url not in j.avoid), None)
                if pick is None:
                    up_urls = {s.server.url for s in self.servers if s.up} | {url}
                    pick = next((j for j in self.queue if j.not_before <= now and up_urls <= j.avoid), None)
                if pick is not None:
                    self._take(pick)
                    self.active += 1
                    pick.settled = False
                    return pick
                waits = [j.not_before - now for j in self.queue if j.not_before > now]
                self.cond.wait(min(waits + [0.5]))

    def _take(self, job: Job) -> None:
        """Remove ``job`` (by identity, not by field equality) from the queue; the head without a scan."""
        q = self.queue
        if q and q[0] is job:
            del q[0]
            return
        for k, j in enumerate(q):
            if j is job:
                del q[k]
                return

    def _settle(self, job: Job) -> None:
        """The job leaves the worker: `active` drops once, whatever happened (caller holds cond).

        It wakes the waiters only when the run is finished (run() and the workers); requeue() wakes them for
        the job it put back. Waking run() after every job cost each job two thread switches more than a
        one-thread loop (7.0 vs 4.1 voluntary, 2.1 vs 0.5 involuntary per job) and ~6 % of its client time
        at 10^3 instant jobs."""
        if not job.settled:
            job.settled = True
            self.active -= 1
            if self._finished():
                self.cond.notify_all()

    def requeue(self, job: Job, delay: float = 0.0):
        with self.cond:
            job.not_before = time.monotonic() + delay
            self.queue.append(job)
            self._settle(job)
            self.cond.notify_all()  # idle workers: a job to take

    def finish(self, job: Job, rec: dict):
        rid = job.row.id
        try:
            offset = self.manifest.write(rec)  # streamed to the log: not kept here (flat memory at 10^4 jobs)
            logged = getattr(self.results, "logged", None)
            if offset is not None and logged is not None:
                logged(rid, rec["status"], offset)
            else:
                self.results[rid] = rec
        except BaseException:
            self.results[rid] = rec  # not in the manifest: the caller still sees what happened
            raise
        finally:  # recorded or not, the job is over: the run never waits on it
            with self.cond:
                self._settle(job)
            self.bar.update(rec["status"])
            if rec["status"] == "failed":
                self.bar.message(f"failed {job.row.id}: {rec.get('error')}")

    def abort(self, why: str) -> None:
        """Stop the whole run (first reason wins): no new job starts, run() returns."""
        with self.cond:
            if self.fatal is None:
                self.fatal = why
            self.stop.set()
            self.cond.notify_all()

    # ---------------------------------------------------------------- servers
    def ensure_up(self, st: ServerState) -> bool:
        """Probe a down server (with backoff); True when it answers."""
        with st.lock:
            if st.up:
                return True
            now = time.monotonic()
            if now < st.next_probe:
                return False
            try:
                st.server.ping(timeout=3)
                st.up = True
                st.probe_backoff = 0.5
                self.bar.message(f"server {st.server.url} is up")
                with self.cond:
                    self.last_server_up = time.monotonic()
                    self.cond.notify_all()
                return True
            except ServerUnavailable:
                st.next_probe = now + st.probe_backoff
                st.probe_backoff = min(st.probe_backoff * 2, 5.0)
                return False

    def mark_down(self, st: ServerState, why: str):
        with st.lock:
            if st.up:
                st.up = False
                st.next_probe = time.monotonic() + 0.5
                self.bar.message(f"server {st.server.url} is down ({why}); moving its jobs to other servers")
        with self.cond:
            self.last_server_up = time.monotonic()
            self.cond.notify_all()

    def worker(self, st: ServerState):
        try:
            self._work(st)
        except BaseException as e:  # outside a job (probing, scheduling): still never a silent death
            self.abort(f"internal error in worker {threading.current_thread().name}: {type(e).__name__}: {e}")
            if not isinstance(e, Exception):
                raise

    def _work(self, st: ServerState):
        while not self.stop.is_set():
            if not st.up and not self.ensure_up(st):
                with self.cond:
                    if self._finished():
                        return
                    self.cond.wait(0.5)
                continue
            job = self.next_job(st)
            if job is None:
                return
            try:
                self.run_job(st, job)
            except LocalWriteError as e:  # the manifest line of a finished job could not be written
                self._job_lost(job, str(e))
            except BaseException as e:  # never a silent thread death: the run stops and says why
                self._job_lost(job, f"internal error in worker {threading.current_thread().name}: "
                                    f"{type(e).__name__}: {e}")
                if not isinstance(e, Exception):
                    raise

    def _job_lost(self, job: Job, why: str) -> None:
        self.results.setdefault(job.row.id, {"id": job.row.id, "status": "failed", "error": why, "outputs": []})
        if self.results[job.row.id].get("status") == "done" and self.results[job.row.id].get("error") is None:
            self.results[job.row.id] = dict(self.results[job.row.id], status="failed",
                                            error=f"outputs written but not recorded: {why}")
        with self.cond:
            self._settle(job)
        self.abort(why)

    # ---------------------------------------------------------------- one job
    def run_job(self, st: ServerState, job: Job):
        row, srv, cfg = job.row, st.server, self.cfg
        t0 = time.monotonic()
        job.attempts += 1
        prompt_id = None
        try:
            image_data = None
            if row.image and self.bindings.get("image"):
                with open(row.image, "rb") as f:  # read once: hashed into the fingerprint and uploaded
                    image_data = f.read()
            fingerprint = self._fingerprint(row, image_data)  # what this attempt sends
            image_name = None
            if image_data is not None:
                ext = os.path.splitext(row.image)[1].lower()
                up = srv.upload_image(row.image, f"{row.id}{ext}", subfolder=self.subfolder, overwrite=True,
                                      data=image_data)
                image_name = f"{up['subfolder']}/{up['name']}" if up.get("subfolder") else up["name"]
            p, applied = patch_prompt(self.prompt, self.bindings, row, image_name=image_name, seed_mode=cfg.seed_mode,
                                      seed_base=cfg.seed_base, server_prefix=cfg.server_prefix,
                                      object_info=self.object_info)
            if self.stop.is_set():
                raise _Stopped()
            prompt_id = srv.queue_prompt(p, extra_data={"atelier": {"id": row.id}})
            st.prompt_ids.add(prompt_id)
            entry = srv.wait(prompt_id, timeout=cfg.job_timeout, poll=cfg.poll, use_ws=cfg.use_ws,
                             on_progress=lambda v, m: self.bar.set_note(f"{row.id} step {v}/{m}"))
            err = history_error(entry)
            if err:
                raise ExecutionFailed(err)
            outs = self.download(srv, entry, row, applied)
            rec = {"id": row.id, "status": "done", "server": srv.url, "prompt_id": prompt_id, "outputs": outs,
                   "seconds": round(time.monotonic() - t0, 3), "error": None, "attempt": job.attempts,
                   "seed": applied.get("seed"), "moved_from": sorted(job.moved_from),
                   "fingerprint": fingerprint,
                   "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            self.finish(job, rec)
        except _Stopped:
            with self.cond:
                self._settle(job)
        except LocalWriteError as e:  # an output could not be written here: every other row would fail too
            self.fail(job, srv, prompt_id, t0, str(e), record=False)
            self.abort(str(e))
        except ServerUnavailable as e:
            job.attempts -= 1  # not the row's fault
            job.moves += 1
            job.avoid = job.avoid | {srv.url}
            job.moved_from = job.moved_from | {srv.url}
            self.mark_down(st, str(e)[:120])
            if job.moves > 50:
                self.fail(job, srv, prompt_id, t0, f"gave up after {job.moves} server failures: {e}")
            else:
                self.requeue(job)
        except (PromptRejected, ExecutionFailed, TimeoutError, OutputMismatch, OSError) as e:
            if isinstance(e, TimeoutError) and prompt_id:
                srv.cancel([prompt_id])
            job.last_error = f"{type(e).__name__}: {e}"
            job.avoid = job.avoid | {srv.url}
            if job.attempts <= cfg.retries and not self.stop.is_set():
                delay = min(cfg.backoff * 2 ** (job.attempts - 1), 60.0)
                self.bar.message(f"retry {row.id} in {delay:.1f}s (attempt {job.attempts} failed on {srv.url}: {e})")
                self.bar.update("retry")
                self.requeue(job, delay)
            else:
                self.fail(job, srv, prompt_id, t0, job.last_error)
        finally:
            if prompt_id:
                st.prompt_ids.discard(prompt_id)

    def fail(self, job: Job, srv: ComfyServer, prompt_id, t0, error: str, record: bool = True):
        rec = {"id": job.row.id, "status": "failed", "server": srv.url, "prompt_id": prompt_id,
               "outputs": [], "seconds": round(time.monotonic() - t0, 3), "error": error,
               "attempt": job.attempts, "seed": None, "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            self.finish(job, rec)
        except LocalWriteError:
            if record:
                raise
            # the disk refused the output and then the manifest line: the run stops on the first error


    def download(self, srv: ComfyServer, entry: dict, row: Row, applied: dict) -> list[dict]:
        files = output_files(entry)
        saved = [f for f in files if f["type"] == "output"] or files
        if not saved:
            raise ExecutionFailed("the prompt finished without output files (no SaveImage-like node produced any)")
        prefix = applied.get("filename_prefix")
        if prefix:
            stem = prefix.rsplit("/", 1)[-1]
            for f in saved:
                if f["type"] == "output" and not f["filename"].startswith(stem + "_") and f["filename"] != stem:
                    raise OutputMismatch(f"server returned {f['filename']} for id {row.id}; refusing to store it "
                                         f"under a different id")
        outs = []
        for k, f in enumerate(saved):
            ext = os.path.splitext(f["filename"])[1] or ".png"
            name = f"{row.id}{ext}" if len(saved) == 1 else f"{row.id}_{k}{ext}"
            data = srv.view(f["filename"], f["subfolder"], f["type"])
            if not data:
                raise ServerUnavailable(f"empty download of {f['filename']}")
            dest = os.path.join(self.cfg.out_dir, name)
            try:
                write_atomic(dest, data, fsync=self.cfg.fsync)
            except OSError as exc:
                raise LocalWriteError("output", dest, exc) from exc
            outs.append({"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                         "server_file": f"{f['subfolder']}/{f['filename']}".lstrip("/")})
        return outs

    # ---------------------------------------------------------------- main loop
    def run(self) -> None:
        threads = []
        for st in self.servers:
            for k in range(max(1, self.cfg.inflight)):
                t = threading.Thread(target=self.worker, args=(st,), daemon=True,
                                     name=f"job-{st.server.port}-{k}")
                t.start()
                threads.append(t)
        while True:
            with self.cond:
                if self._finished() or self.fatal is not None:
                    break
                if not any(s.up for s in self.servers) and \
                        time.monotonic() - self.last_server_up > self.cfg.server_wait:
                    stranded, self.queue = list(self.queue), []
                    self.active += len(stranded)
                    for job in stranded:  # the condition's lock is re-entrant: finish() may take it
                        job.settled = False  # counted in `active` above; finish() settles it
                        try:
                            self.fail(job, self.servers[0].server, None, time.monotonic(),
                                      f"no server reachable for {self.cfg.server_wait:.0f}s"
                                      + (f" (last error: {job.last_error})" if job.last_error else ""))
                        except LocalWriteError as e:
                            self.abort(str(e))
                    if self.active == 0:
                        break
                self.cond.wait(0.5)
        self.stop.set()
        with self.cond:
            self.cond.notify_all()
        if self.fatal is not None:
            try:
                self.cancel_pending()
            except Exception:
                pass
        for t in threads:
            t.join(timeout=5)

    def cancel_pending(self):
        for st in self.servers:
            ids = list(st.prompt_ids)
            if ids:
                st.server.cancel(ids)


class _Stopped(Exception):
    pass


class OutputMismatch(RuntimeError):
    pass
