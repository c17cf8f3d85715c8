"""Reading weight files safely: tensors only, never code.

`read_weights(path) -> (state_dict, metadata)` is the reader the core loaders (PoolNet, aesthetic
heads and predictor folders, style adapters, saved styles) use outside ComfyUI (CLI, bench, core
tests): ``.safetensors`` through safetensors (metadata from the file header, ``{}`` when it has
none), anything else through ``torch.load(weights_only=True)``, which refuses a pickle that would
run code (metadata None).

Inside ComfyUI the nodes pass their own reader with the same signature, built on
``comfy.utils.load_torch_file`` (nodes/_managed.py), so the file is read by ComfyUI's loader and
by whatever policy that loader enforces. The loaders turn a reader's exceptions into errors a user
can act on and let an AtelierError from the reader through unchanged.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

#: path -> (state dict, safetensors metadata or None)
Reader = Callable[[str], "tuple[dict, Optional[dict]]"]

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")


def is_safetensors(path: str) -> bool:
    return str(path).lower().endswith(SAFETENSORS_SUFFIXES)


def read_weights(path: str) -> tuple[dict, Optional[dict]]:
    """The tensors of ``path`` (on the CPU) and its safetensors metadata (None for other formats)."""
    path = str(path)
    if is_safetensors(path):
        from safetensors import safe_open
        with safe_open(path, framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    return torch.load(path, map_location="cpu", weights_only=True), None
