"""Unpacking the inputs of INPUT_IS_LIST nodes, where every input arrives as a list (one entry per upstream
run) and widgets as one-element lists."""
from __future__ import annotations

import torch


def one(v, default=None):
    """A widget value: the first element of its one-element list (default when empty or None)."""
    if isinstance(v, (list, tuple)):
        return v[0] if v else default
    return default if v is None else v


def floats(values) -> list[float]:
    """A FLOAT list input (numbers, lists of numbers, tensors) -> one flat list of floats, in order."""
    out = []
    for v in values if isinstance(values, (list, tuple)) else [values]:
        if isinstance(v, (list, tuple)):
            out.extend(float(a) for a in v)
        elif isinstance(v, torch.Tensor):
            out.extend(float(a) for a in v.flatten())
        elif v is not None:
            out.append(float(v))
    return out
