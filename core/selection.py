"""Ranking, selection and verdict text for the families that keep or reject images by a number: the aesthetic
scorer's LAION scores and the text read-back's character accuracies follow the same filter and gate rules."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .errors import AtelierError


def order_by_score(scores: Sequence[float]) -> list[int]:
    """Indices sorted by descending score (stable for ties)."""
    return sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))


def select(scores: Sequence[float], *, mode: str = "threshold", threshold: float = 6.0,
           top_k: int = 4) -> list[int]:
    """Indices of kept images in their original order. mode: 'threshold' (score >= threshold) or 'top_k'."""
    if mode == "threshold":
        return [i for i, s in enumerate(scores) if float(s) >= threshold]
    if mode == "top_k":
        k = max(0, min(int(top_k), len(scores)))
        return sorted(order_by_score(scores)[:k])
    raise AtelierError(f"unknown filter mode '{mode}'.", expected="'threshold' or 'top_k'")


def gate(scores: Sequence[float], threshold: float = 6.0) -> tuple[bool, float]:
    """(mean >= threshold, mean). A NaN/inf score or threshold never passes (the mean is then NaN/inf)."""
    if len(scores) == 0:
        raise AtelierError("no scores to gate.", expected="at least one score")
    vals = [float(s) for s in scores]
    mean = float(np.mean(vals))
    ok = all(math.isfinite(v) for v in vals) and math.isfinite(mean) and math.isfinite(float(threshold))
    return bool(ok and mean >= threshold), mean


def compare_text(value: float, threshold: float, op: str | None = None, names: tuple[str, str] = ("", "")) -> str:
    """'value op threshold' with just enough digits that the printed numbers visibly compare the way the
    real ones do (never '15.555 < 15.5547'), plus the difference when they are close: e.g.
    '15.55468 < 15.5547 (2e-05 below)'. op defaults to '>=' or '<' by the actual comparison; names
    (e.g. ("mean ", "threshold ")) go before each number."""
    v, t = float(value), float(threshold)
    if op is None:
        op = ">=" if v >= t else "<"
    if not (math.isfinite(v) and math.isfinite(t)):
        return f"{names[0]}{v} {op} {names[1]}{t}"
    for p in range(4, 18):
        a, b = f"{v:.{p}g}", f"{t:.{p}g}"
        fa, fb = float(a), float(b)
        if (v == t and a == b) or (v > t and fa > fb) or (v < t and fa < fb):
            break
    text = f"{names[0]}{a} {op} {names[1]}{b}"
    d = v - t
    if d != 0 and abs(d) < 1e-3 * max(1.0, abs(t)):
        text += f" ({abs(d):.2g} {'above' if d > 0 else 'below'})"
    return text


def keep_or_best(values: Sequence[float], *, mode: str, threshold: float, top_k: int, if_none: str,
                 metric: str = "score", node: str | None = None) -> tuple[list[int], int, str]:
    """The Filter nodes' rule: (kept indices in original order, how many passed, report).

    When nothing passes, 'keep best' keeps the single best image (the report starts "NOTHING PASSED") and
    'stop with error' raises, naming the best value against the threshold."""
    vals = [float(v) for v in values]
    keep = select(vals, mode=mode, threshold=threshold, top_k=top_k)
    passed = len(keep)
    rule = f"{metric} >= {threshold:g}" if mode == "threshold" else f"top {top_k}"
    if keep:
        return keep, passed, f"kept {passed} of {len(vals)} ({rule}): " + ", ".join(f"#{i} {vals[i]:.3f}" for i in keep)
    best = order_by_score(vals)[0]
    msg = (f"no image passed ({rule}); the best was #{best} with {metric} "
           f"{compare_text(vals[best], threshold, names=('', 'threshold '))} (mean {sum(vals) / len(vals):.3f}).")
    if if_none == "stop with error":
        raise AtelierError(msg, node=node, input="threshold", expected=f"at least one {metric} >= {threshold:g}",
                           fix="lower the threshold, use mode top_k, or set if_none_pass to 'keep best'.")
    return [best], passed, "NOTHING PASSED: " + msg + " Passing on the best image only."
