"""Progress bar with rate and ETA, and the final summary table (stdlib only)."""
from __future__ import annotations

import sys
import threading
import time
from collections import Counter


def _fmt_secs(s: float) -> str:
    if s != s or s == float("inf"):
        return "--:--"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


class ProgressBar:
    """``[#####-----] 12/30 40% 2.31 job/s ETA 00:08 | done 10 failed 1 retry 1``.

    Redraws in place on a terminal; on a pipe/log it prints one line every ``log_every`` s.
    Thread-safe.
    """

    def __init__(self, total: int, *, stream=None, width: int = 28, enabled: bool = True, log_every: float = 10.0):
        self.total = max(0, total)
        self.stream = stream or sys.stderr
        self.width = width
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.log_every = log_every
        self.counts: Counter = Counter()
        self.start = time.monotonic()
        self._last_draw = 0.0
        self._lock = threading.Lock()
        self.note = ""

    @property
    def finished(self) -> int:
        return self.counts["done"] + self.counts["failed"]

    def update(self, status: str, n: int = 1, note: str | None = None) -> None:
        with self._lock:
            self.counts[status] += n
            if note is not None:
                self.note = note
            self._draw()

    def set_note(self, note: str) -> None:
        with self._lock:
            self.note = note
            self._draw()

    def line(self) -> str:
        el = time.monotonic() - self.start
        fin = self.finished
        rate = fin / el if el > 0 else 0.0
        left = self.total - fin
        eta = left / rate if rate > 0 else float("inf")
        frac = fin / self.total if self.total else 1.0
        fill = int(round(frac * self.width))
        bar = "#" * fill + "-" * (self.width - fill)
        extra = " ".join(f"{k} {v}" for k, v in sorted(self.counts.items()) if k not in ("done",) and v)
        s = (f"[{bar}] {fin}/{self.total} {frac * 100:3.0f}% {rate:.2f} job/s ETA {_fmt_secs(eta)} "
             f"elapsed {_fmt_secs(el)} | done {self.counts['done']}" + (f" {extra}" if extra else ""))
        if self.note:
            s += f" | {self.note}"
        return s

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            if force or now - self._last_draw > 0.1:
                self.stream.write("\r\x1b[2K" + self.line()[:200])
                self.stream.flush()
                self._last_draw = now
        elif force or now - self._last_draw > self.log_every:
            text = self.line()
            if text.split(" elapsed")[0] != getattr(self, "_last_text", None):  # no repeated identical lines
                self.stream.write(text + "\n")
                self.stream.flush()
                self._last_text = text.split(" elapsed")[0]
            self._last_draw = now

    def message(self, text: str) -> None:
        """Print a line above the bar."""
        with self._lock:
            if not self.enabled:
                return
            if self.tty:
                self.stream.write("\r\x1b[2K")
            self.stream.write(text + "\n")
            self._draw(force=True)

    def close(self) -> None:
        with self._lock:
            if self.enabled:
                self._draw(force=True)
                if self.tty:
                    self.stream.write("\n")
                self.stream.flush()


def summary_table(results: dict[str, dict], *, max_ids: int = 10) -> str:
    """Final table: counts per status, reasons for failed/skipped with the ids, per-server counts."""
    by_status: Counter = Counter(r["status"] for r in results.values())
    lines = ["", "status        count", "------------  -----"]
    for st in ("done", "already done", "skipped", "failed", "pending"):
        if by_status.get(st) or st in ("done", "failed"):
            lines.append(f"{st:<12}  {by_status.get(st, 0):>5}")
    for st in sorted(set(by_status) - {"done", "already done", "skipped", "failed", "pending"}):
        lines.append(f"{st:<12}  {by_status[st]:>5}")
    for st in ("skipped", "failed", "pending"):
        reasons: dict[str, list[str]] = {}
        for rid, r in results.items():
            if r["status"] == st:
                reasons.setdefault(r.get("error") or r.get("reason") or "-", []).append(rid)
        if reasons:
            lines.append("")
            lines.append(f"{st}:")
            for reason, ids in sorted(reasons.items(), key=lambda kv: -len(kv[1])):
                shown = ", ".join(ids[:max_ids]) + (f" ... (+{len(ids) - max_ids})" if len(ids) > max_ids else "")
                lines.append(f"  {len(ids):>4} x {reason[:160]}")
                lines.append(f"         ids: {shown}")
    servers: Counter = Counter(r.get("server") for r in results.values() if r["status"] == "done" and r.get("server"))
    if servers:
        lines.append("")
        lines.append("done per server:")
        for s, n in sorted(servers.items()):
            secs = [r.get("seconds") or 0 for r in results.values() if r.get("server") == s and r["status"] == "done"]
            lines.append(f"  {s:<32} {n:>5}  median {sorted(secs)[len(secs) // 2]:.2f} s/job")
    return "\n".join(lines)
