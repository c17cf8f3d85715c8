"""The pack's models, read and placed the way ComfyUI's own are.

- `read_weights(path)`: every weight file a node loads (PoolNet, aesthetic heads and predictor
  folders, style adapters, saved styles) is read by ComfyUI's ``comfy.utils.load_torch_file(path,
  safe_load=True)``: ``torch.load(weights_only=True)`` for pickles, safetensors otherwise, and
  whatever policy that loader enforces (ComfyUI's governed builds allow model files by digest in
  load_torch_file; a node that read files itself would not be gated). Same signature as
  core.weights.read_weights, so the core loaders take it as their ``read=`` argument.
- `managed(owner, *modules)` + `load_to_device(patcher)`: every torch model the pack runs on a device
  is wrapped once in a ``comfy.model_patcher.ModelPatcher`` and loaded with
  ``comfy.model_management.load_models_gpu`` before each run, so it appears in
  ``current_loaded_models`` and ``/free``, ``unload_all_models``, ``--lowvram`` and memory pressure
  unload it like ComfyUI's own models. The patcher is kept on the cached object that owns the
  module (the loader's path+mtime cache keeps it alive), so a repeated run finds it loaded.
  ComfyUI objects that come with their own patcher (a VAE, a CLIP_VISION) pass that to
  `load_to_device` directly.

Checked against the pinned 2024 runtime, ComfyUI 0.3.64 and the newest ComfyUI (0.38.x):
ModelPatcher(model, load_device, offload_device) and load_models_gpu(models, memory_required)
exist in all; force_full_load only since mid-2024, return_metadata only since 2025.
"""
from __future__ import annotations

import inspect
import os

import torch

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils

from ..core.errors import AtelierError
from ..core.weights import is_safetensors

_PATCHER = "_atelier_patcher"


# ----------------------------------------------------------------------------- weight files

def _accepts(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _pickles_load_safely() -> bool:
    """Whether load_torch_file(path, safe_load=True) loads a pickle with torch.load(weights_only=True).

    The 2024 ComfyUI (the pinned runtime) uses weights_only only when 'weights_only' is in
    torch.load.__code__.co_varnames and otherwise falls back to an unrestricted pickle load; newer
    ComfyUI (load_torch_file with return_metadata) always passes weights_only=True."""
    code = getattr(torch.load, "__code__", None)
    if code is not None and "weights_only" in code.co_varnames:
        return True
    return _accepts(comfy.utils.load_torch_file, "return_metadata") and _accepts(torch.load, "weights_only")


def _policy_refusal(exc: BaseException) -> bool:
    """True when ComfyUI's model policy (app/governance.py, newest ComfyUI only) refused the file."""
    try:
        from app.governance import ModelNotPermittedError
    except Exception:  # older ComfyUI: no model policy
        return False
    return isinstance(exc, ModelNotPermittedError)


def read_weights(path: str) -> tuple[dict, dict | None]:
    """(state dict, safetensors metadata or None) of ``path``, read by ComfyUI's load_torch_file.

    Raises AtelierError when ComfyUI's model policy refuses the file, or when this PyTorch cannot
    load a pickle safely; other read errors propagate for the core loader to explain.
    """
    path = str(path)
    if not is_safetensors(path) and not _pickles_load_safely():
        raise AtelierError(f"this PyTorch cannot load '{os.path.basename(path)}' safely (torch.load has no "
                           "weights_only)", expected="PyTorch 1.13 or newer, or a .safetensors file",
                           fix="upgrade torch in ComfyUI's Python, or convert the file to .safetensors")
    try:
        if not is_safetensors(path):
            return comfy.utils.load_torch_file(path, safe_load=True), None
        if _accepts(comfy.utils.load_torch_file, "return_metadata"):  # ComfyUI 2025 and newer
            sd, meta = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
            return sd, dict(meta or {})
        # Older ComfyUI (the pinned 2024 runtime) cannot return the metadata: the tensors are still read
        # by its loader, only the header's metadata (the style/adapter config) is read here.
        sd = comfy.utils.load_torch_file(path, safe_load=True)
        from safetensors import safe_open
        with safe_open(path, framework="pt", device="cpu") as f:
            return sd, dict(f.metadata() or {})
    except Exception as exc:
        if _policy_refusal(exc):
            raise AtelierError(str(exc), expected="a model file your organization's ComfyUI policy allows",
                               fix="ask your ComfyUI administrator to allow this file (by its digest), or pick "
                                   "one that is allowed") from exc
        raise


# ----------------------------------------------------------------------------- devices

class _Together(torch.nn.ModuleList):
    """Modules that run together (a CLIP tower and its head), managed as one model."""


def managed(owner, *modules: torch.nn.Module, offload_device: torch.device | None = None):
    """The ModelPatcher that puts ``modules`` (one, or several run together) on ComfyUI's torch device;
    made on first use and kept on ``owner`` (the cached object that holds them), so a model has one
    patcher for as long as it is cached."""
    patcher = getattr(owner, _PATCHER, None)
    held = getattr(patcher, "model", None)
    members = list(held) if isinstance(held, _Together) else [held]
    if len(members) != len(modules) or any(a is not b for a, b in zip(members, modules)):
        module = modules[0] if len(modules) == 1 else _Together(modules)
        patcher = comfy.model_patcher.ModelPatcher(
            module, load_device=mm.get_torch_device(),
            offload_device=offload_device if offload_device is not None else mm.unet_offload_device())
        setattr(owner, _PATCHER, patcher)
    return patcher


def load_to_device(patcher, memory_required: int = 0, full_load: bool = True) -> torch.device:
    """Load ``patcher`` with comfy.model_management.load_models_gpu (unloading other models when
    ``memory_required`` bytes of working memory are needed) and return the device to run on.

    full_load: plain torch modules (ours) cannot be partially offloaded, so they load completely
    where ComfyUI supports the choice; ComfyUI's own models pass what ComfyUI uses for them."""
    kwargs = {"memory_required": int(memory_required)}
    if _accepts(mm.load_models_gpu, "force_full_load"):
        kwargs["force_full_load"] = bool(full_load)
    mm.load_models_gpu([patcher], **kwargs)
    return patcher.load_device
