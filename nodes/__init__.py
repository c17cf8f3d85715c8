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
}

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
FAILED_FAMILIES: dict = {}

for _name, _what in FAMILIES.items():
    try:
        _mod = importlib.import_module(f".{_name}", __name__)
    except Exception as exc:  # one broken family must not take the pack down
        FAILED_FAMILIES[_name] = exc
        log.warning("[Atelier] %s nodes disabled: %s: %s", _what, type(exc).__name__, exc)
        continue
    NODE_CLASS_MAPPINGS.update(_mod.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_mod.NODE_DISPLAY_NAME_MAPPINGS)
