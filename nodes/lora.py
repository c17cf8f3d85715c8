"""Optional LoRA (family `lora`): a LoRA slot that a shipped workflow can leave empty.

ComfyUI's own LoraLoader has no "no LoRA" choice: a workflow that ships with one names a file the
user may not have, and validation fails on it before any strength is read. `Atelier LoRA
(optional)` lists ``none`` first and then the files of ComfyUI/models/loras/:

- ``none`` passes MODEL and CLIP through unchanged (so a shipped workflow runs as shipped);
- a file is applied exactly as ComfyUI's LoraLoader applies it (``comfy.utils.load_torch_file``
  with ``safe_load=True`` and ``comfy.sd.load_lora_for_models``), the loaded weights cached by
  path and mtime (a retrained file under the same name is reloaded).
"""
from __future__ import annotations

import logging
import os

import folder_paths

from ..core import confine as _confine
from ..core.cache import FileCache
from ..core.errors import AtelierError
from ..core.finite import check_finite_float
from ._managed import read_weights

log = logging.getLogger("atelier")

NONE = "none"
FOLDER = "loras"
_CACHE: FileCache[dict] = FileCache(max_items=2)  # LoRA files can be hundreds of MB: keep the last two only


def lora_choices() -> list[str]:
    try:
        files = list(folder_paths.get_filename_list(FOLDER))
    except KeyError:
        files = []
    return [NONE] + [f for f in files if f != NONE]


def _lora_dirs() -> list[str]:
    try:
        return list(folder_paths.get_folder_paths(FOLDER))
    except KeyError:
        return []


def _full_path(lora_name: str) -> str | None:
    try:
        return folder_paths.get_full_path(FOLDER, lora_name)
    except KeyError:
        return None


def _missing(lora_name: str) -> AtelierError:
    try:
        where = ", ".join(folder_paths.get_folder_paths(FOLDER)) or f"ComfyUI/models/{FOLDER}"
    except KeyError:
        where = f"ComfyUI/models/{FOLDER}"
    return AtelierError(f"LoRA file '{lora_name}' was not found", node=AtelierOptionalLora.DISPLAY,
                        input="lora_name", expected=f"'{NONE}' or a LoRA file in {where}",
                        fix=f"put your LoRA in ComfyUI/models/{FOLDER}/ and press R (refresh), then pick it; "
                            f"or pick '{NONE}' to run without a LoRA.")


def _read_lora(path: str) -> dict:
    try:
        sd, _meta = read_weights(path)  # ComfyUI's loader, so a model policy gates it like core's LoRAs
    except AtelierError as exc:  # a policy refusal or an unsafe-pickle PyTorch: say so, not "re-download"
        raise exc.at(AtelierOptionalLora.DISPLAY, "lora_name") from exc
    except Exception as exc:
        raise AtelierError(f"cannot read LoRA file '{os.path.basename(path)}': {type(exc).__name__}: {exc}",
                           node=AtelierOptionalLora.DISPLAY, input="lora_name",
                           expected="a LoRA in .safetensors (or a weights-only .pt)",
                           fix="re-download or re-export the LoRA, or pick 'none'.") from exc
    return sd


def load_lora_cached(path: str) -> dict:
    """The LoRA's state dict, as ComfyUI's LoraLoader reads it; cached by path and mtime."""
    return _CACHE.get(path, _read_lora)


class AtelierOptionalLora:
    DISPLAY = "Atelier LoRA (optional)"

    @classmethod
    def INPUT_TYPES(cls):
        strength = {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}
        return {"required": {
            "model": ("MODEL", {"tooltip": "The diffusion model the LoRA patches (from the checkpoint loader)."}),
            "clip": ("CLIP", {"tooltip": "The text encoder the LoRA patches (from the checkpoint loader)."}),
            "lora_name": (lora_choices(), {"default": NONE, "tooltip":
                          f"'{NONE}': no LoRA, model and clip pass through unchanged. Otherwise a LoRA file from "
                          f"ComfyUI/models/{FOLDER}/ (your own: trained for this checkpoint's family), applied "
                          "like ComfyUI's Load LoRA. Put a file there and press R to list it."}),
            "strength_model": ("FLOAT", {**strength, "tooltip": "How strongly the LoRA changes the diffusion "
                                                                "model (0 = not at all; ignored for 'none')."}),
            "strength_clip": ("FLOAT", {**strength, "tooltip": "How strongly the LoRA changes the text encoder "
                                                               "(0 = not at all; ignored for 'none')."}),
        }}

    RETURN_TYPES = ("MODEL", "CLIP")
    RETURN_NAMES = ("MODEL", "CLIP")
    OUTPUT_TOOLTIPS = ("The model with the LoRA applied (unchanged for 'none').",
                       "The text encoder with the LoRA applied (unchanged for 'none').")
    FUNCTION = "apply"
    CATEGORY = "atelier/models"
    DESCRIPTION = (f"A LoRA slot you may leave empty: '{NONE}' (the default) passes model and clip through; a file "
                   f"from models/{FOLDER}/ is applied like ComfyUI's Load LoRA. Shipped Atelier workflows use it "
                   "so they run without a LoRA nobody has.")

    @classmethod
    def VALIDATE_INPUTS(cls, lora_name):
        # Replaces ComfyUI's "value not in list" with a message that says what to do.
        if lora_name != NONE and not _confine.name_is_safe(lora_name):  # '..' or absolute: the uniform message
            return str(_confine.not_in_folder(lora_name, what="LoRA", node=cls.DISPLAY, input="lora_name",
                                              folders=_lora_dirs()))
        if lora_name == NONE or _full_path(lora_name) is not None:
            return True
        return str(_missing(lora_name))

    @classmethod
    def IS_CHANGED(cls, lora_name=NONE, **_inputs):  # ComfyUI passes every input (links too)
        if lora_name == NONE:
            return NONE
        path = _full_path(lora_name)
        return os.path.getmtime(path) if path else float("nan")

    def apply(self, model, clip, lora_name, strength_model=1.0, strength_clip=1.0):
        # NaN passes ComfyUI's min/max check and would patch every weight to NaN (a black image)
        strength_model = check_finite_float(strength_model, node=self.DISPLAY, input="strength_model")
        strength_clip = check_finite_float(strength_clip, node=self.DISPLAY, input="strength_clip")
        if lora_name == NONE:
            log.info("[Atelier] %s: 'none' selected, model and clip pass through without a LoRA", self.DISPLAY)
            return (model, clip)
        path = _full_path(lora_name)
        if path is None:
            raise _missing(lora_name)
        if strength_model == 0 and strength_clip == 0:
            return (model, clip)
        import comfy.sd

        lora = load_lora_cached(path)
        model_lora, clip_lora = comfy.sd.load_lora_for_models(model, clip, lora, strength_model, strength_clip)
        return (model_lora, clip_lora)


NODE_CLASS_MAPPINGS = {"AtelierOptionalLora": AtelierOptionalLora}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY for k, v in NODE_CLASS_MAPPINGS.items()}
