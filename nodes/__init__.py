"""Node families. Each module is one family and exports NODE_CLASS_MAPPINGS and
NODE_DISPLAY_NAME_MAPPINGS; a family that fails to import (say, an optional dependency
is missing) is skipped with one log line, and the others still load."""
import importlib
import logging

log = logging.getLogger("atelier")

# module name -> what it offers, for the log line when it cannot load
FAMILIES = {
    "prompt": "system prompt injector",
    "conditioners": "Canny / lineart conditioners",
    "models": "model folders and manifest checks",
    "matting": "PoolNet saliency matting",
    "aesthetic": "aesthetic scorer, filter, gate and grid",
    "glyph": "glyph renderer, OCR boxes and layout",
    "style": "VAE style features, adapter and latent match",
    "lora": "optional LoRA",
    "kolors": "Kolors UNet and ChatGLM3 text encoder loaders",
    "dataset": "dataset preparation: filter, BLIP captions, training-layout export",
}


def load_families(families: dict) -> tuple[dict, dict, dict]:
    """Import each family module; returns (class mappings, display names, {family: exception})."""
    classes, names, failed = {}, {}, {}
    for name, what in families.items():
        try:
            mod = importlib.import_module(f".{name}", __name__)
        except Exception as exc:  # one broken family must not take the pack down
            failed[name] = exc
            log.warning("[Atelier] %s nodes disabled: %s: %s", what, type(exc).__name__, exc)
            continue
        classes.update(mod.NODE_CLASS_MAPPINGS)
        names.update(mod.NODE_DISPLAY_NAME_MAPPINGS)
    return classes, names, failed


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, FAILED_FAMILIES = load_families(FAMILIES)

# The shipped workflows' Load Image files into ComfyUI's input folder (never overwrites; see the module).
from ._example_inputs import copy_example_inputs  # noqa: E402

copy_example_inputs()
