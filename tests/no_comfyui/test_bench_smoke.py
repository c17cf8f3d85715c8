"""Benchmarks that cannot rot: every bench/*.py runs in its --quick mode and prints its table.

Smoke only: a bench's exit status and the shape of what it printed (a header line with a target column,
then at least one row carrying a verdict: "met", "missed" or "—"). Timings are never asserted here; the
targets live in the benches as ratios against each row's peer, measured in the same run.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHES = sorted(p.name for p in (ROOT / "bench").glob("*.py") if not p.name.startswith("_"))
VERDICTS = ("met", "missed", "—")


def table_rows(stdout: str) -> tuple[list[str], list[str]]:
    """(header lines, row lines after the first header) of a bench's output.

    A header names a ``target`` column; a row is a later line that ends with, or has a cell of, a verdict.
    """
    lines = stdout.splitlines()
    heads = [i for i, line in enumerate(lines) if "target" in line.lower() and not line.startswith("#")]
    if not heads:
        return [], []
    rows = [line for line in lines[heads[0] + 1:]
            if any(f" {v}" in line and (line.rstrip(" |").endswith(v) or f" {v} |" in line or f" {v};" in line
                                        or f" {v})" in line) for v in VERDICTS)]
    return [lines[i] for i in heads], rows


def test_table_rows_parser():
    """The parser itself can fail: no header, or a header without verdict rows, gives no rows."""
    assert table_rows("case  ms\nfoo  1.0\n") == ([], [])
    assert table_rows("case  ms  target\nfoo  1.0  ok\n")[1] == []
    heads, rows = table_rows("x\ncase  ms  target\nfoo  1.0  <= 1.1 met\nbar  2.0  —\n| a | <= 1 missed |\n")
    assert heads == ["case  ms  target"] and len(rows) == 3


def test_every_bench_is_covered():
    assert {"conditioners.py", "matting.py", "client.py"} <= set(BENCHES), BENCHES


@pytest.mark.parametrize("bench", BENCHES)
def test_bench_quick(bench, tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONUNBUFFERED="1")
    r = subprocess.run([sys.executable, str(ROOT / "bench" / bench), "--quick"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"bench/{bench} --quick exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    heads, rows = table_rows(r.stdout)
    assert heads, f"bench/{bench} --quick printed no table header with a target column:\n{r.stdout[-2000:]}"
    assert rows, f"bench/{bench} --quick printed a header but no row with a verdict:\n{r.stdout[-2000:]}"
