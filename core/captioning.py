"""BLIP image captioning through transformers (BlipForConditionalGeneration + BlipProcessor).

A captioner is a Hugging Face model folder (config.json, preprocessor/tokenizer files and
model.safetensors), e.g. Salesforce/blip-image-captioning-large (manifest id
``blip-image-captioning-large``, ComfyUI/models/captioners/). transformers is imported when a
model is loaded, never when this module is imported.

Captions are deterministic: greedy decoding (no sampling, one beam), ``max_new_tokens`` new tokens.
With a conditional ``prompt`` ("a keyboard skin of", as the keyboard-skin pipeline used) BLIP
continues the prompt and the caption starts with it (transformers' behaviour); ``strip_prompt``
removes it. Templates and trigger words are applied afterwards (core.dataset_prep.apply_template).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .errors import AtelierError
from .weights import Reader, read_weights

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
DEFAULT_MAX_NEW_TOKENS = 30
DEFAULT_BATCH_SIZE = 8
MODEL_ID = "blip-image-captioning-large"


def _err(problem: str, *, node=None, input=None, expected=None, fix=None) -> AtelierError:
    return AtelierError(problem, node=node, input=input, expected=expected, fix=fix)


def is_captioner_dir(path: str) -> bool:
    """A folder with config.json and a weights file (what the loader's selector lists as one entry)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")) and any(
        os.path.isfile(os.path.join(path, f)) for f in WEIGHT_FILES)


@dataclass
class Captioner:
    """A loaded BLIP model and its processor (what Atelier Captioner Loader outputs)."""
    model: object  # transformers BlipForConditionalGeneration (a torch.nn.Module)
    processor: object  # transformers BlipProcessor
    name: str = ""
    source: str = ""

    def caption(self, images: Sequence[np.ndarray], *, prompt: str = "", max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                batch_size: int = DEFAULT_BATCH_SIZE, strip_prompt: bool = False, device=None,
                progress: Callable[[int, int], None] | None = None, node: str | None = None) -> list[str]:
        """uint8 RGB images ``[H,W,3]`` -> one caption each, in order (greedy, deterministic)."""
        import torch
        from PIL import Image

        if max_new_tokens < 1:
            raise _err(f"max_new_tokens is {max_new_tokens}", node=node, input="max_new_tokens",
                       expected="at least 1", fix="e.g. 30.")
        batch_size = max(1, int(batch_size))
        model = self.model
        device = torch.device(device) if device is not None else next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        prompt = (prompt or "").strip()
        out: list[str] = []
        n = len(images)
        for s in range(0, n, batch_size):
            chunk = [Image.fromarray(np.ascontiguousarray(a, dtype=np.uint8)).convert("RGB")
                     for a in images[s:s + batch_size]]
            kwargs = {"images": chunk, "return_tensors": "pt"}
            if prompt:
                kwargs["text"] = [prompt] * len(chunk)
            inputs = self.processor(**kwargs)
            inputs = {k: (v.to(device, dtype) if k == "pixel_values" else v.to(device)) for k, v in inputs.items()}
            with torch.inference_mode():
                ids = model.generate(**inputs, max_new_tokens=int(max_new_tokens), do_sample=False, num_beams=1)
            for text in self.processor.batch_decode(ids, skip_special_tokens=True):
                text = " ".join(text.split())
                if strip_prompt and prompt and text.lower().startswith(prompt.lower()):
                    text = text[len(prompt):].strip()
                out.append(text)
            if progress is not None:
                progress(min(s + batch_size, n), n)
        return out


def _weights_file(path: str) -> str:
    for f in WEIGHT_FILES:
        if os.path.isfile(os.path.join(path, f)):
            return os.path.join(path, f)
    raise FileNotFoundError(path)


def load_captioner(path: str, *, read: Reader | None = None, node: str | None = None,
                   input: str | None = "model_name") -> Captioner:
    """Load a BLIP captioning folder; the weights are read by ``read`` (default core.weights.read_weights;
    the node passes ComfyUI's loader), the config, processor and tokenizer by transformers (local files only)."""
    name = os.path.basename(os.path.normpath(path))
    fix = (f"download the whole Salesforce/{MODEL_ID} folder (`atelier models download {MODEL_ID}`) into "
           "ComfyUI/models/captioners/.")
    if not is_captioner_dir(path):
        raise _err(f"'{path}' is not a Hugging Face model folder.", node=node, input=input,
                   expected="a folder with config.json and model.safetensors (a BLIP captioning model)", fix=fix)
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _err(f"could not read config.json in '{name}': {type(exc).__name__}", node=node, input=input,
                   expected="a JSON BlipConfig", fix=fix) from exc
    if not isinstance(raw, dict) or raw.get("model_type") != "blip":
        kind = raw.get("model_type") if isinstance(raw, dict) else type(raw).__name__
        raise _err(f"'{name}' is a {kind!r} model, not BLIP.", node=node, input=input,
                   expected="model_type 'blip' (BlipForConditionalGeneration)", fix=fix)
    import transformers
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor

    prev = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        try:
            config = BlipConfig.from_pretrained(path, local_files_only=True)
            processor = BlipProcessor.from_pretrained(path, local_files_only=True)
        except Exception as exc:
            raise _err(f"the config or processor/tokenizer files of '{name}' cannot be loaded: "
                       f"{type(exc).__name__}: {str(exc)[:200]}", node=node, input=input,
                       expected="config.json, preprocessor_config.json and the tokenizer files", fix=fix) from exc
        model = BlipForConditionalGeneration(config)
    finally:
        transformers.logging.set_verbosity(prev)
    weights = _weights_file(path)
    try:
        sd, _ = (read or read_weights)(weights)
    except AtelierError:
        raise
    except Exception as exc:
        raise _err(f"could not read '{os.path.basename(weights)}' in '{name}': {type(exc).__name__}: "
                   f"{str(exc)[:200]}", node=node, input=input, expected="a complete model.safetensors",
                   fix=fix) from exc
    missing, unexpected = model.load_state_dict(sd, strict=False)
    model.tie_weights()
    loaded = {p.data_ptr() for k, p in model.state_dict().items() if k in sd}
    state = model.state_dict()
    missing = [k for k in missing if not k.endswith("position_ids") and state[k].data_ptr() not in loaded]
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    if missing or unexpected:
        raise _err(f"the weights of '{name}' do not match its config.json: missing {missing[:4]}, unexpected "
                   f"{unexpected[:4]}.", node=node, input=input,
                   expected="the weights of the BLIP model config.json describes", fix=fix)
    model = model.float().eval().requires_grad_(False)
    return Captioner(model=model, processor=processor, name=name, source=path)
