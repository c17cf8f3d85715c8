"""PEFT LoRA layers <-> kohya-format files, the format ComfyUI's LoraLoader applies.

Used by both trainers (core/style_train.py, core/lora_train.py). Importing this module imports
neither torch nor peft; the functions import what they need.

Kohya names, as ComfyUI's key maps read them (comfy/lora.py `model_lora_keys_unet`,
`model_lora_keys_clip`, the same on the pinned runtime and on 0.3.64):

- UNet: ``lora_unet_<diffusers module path, '.' -> '_'>`` (ComfyUI converts the diffusers names to
  its own through ``comfy.utils.unet_to_diffusers``), e.g.
  ``lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q``;
- one text encoder (SD1.x/SD2.x): ``lora_te_text_model_encoder_layers_<i>_self_attn_<q|k|v|out>_proj``;
- two (SDXL): ``lora_te1_...`` for CLIP-L and ``lora_te2_...`` for CLIP-G (OpenCLIP bigG);
- Kolors: UNet keys only (``lora_unet_*``), applied by Atelier Kolors LoRA Loader (ComfyUI's own
  LoraLoaderModelOnly reads them too).

Each module has ``.lora_down.weight`` (PEFT's A, [rank, in]), ``.lora_up.weight`` (B, [out, rank])
and ``.alpha`` (the scale is alpha / rank, as in PEFT).
"""
from __future__ import annotations

# The LoRA targets: the attention and feed-forward linears of the UNet's transformer blocks and the
# attention linears of CLIP text encoders (all of them are in ComfyUI's key maps).
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def add_lora(module, targets, rank: int, alpha: float):
    """Inject PEFT LoRA layers (A random, B zero: the model's output is unchanged) into `module`."""
    from peft import LoraConfig, inject_adapter_in_model
    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=True)
    return inject_adapter_in_model(cfg, module)


def lora_layers(module):
    """(module name, A weight [r,in], B weight [out,r], alpha) of every PEFT LoRA layer."""
    for name, m in module.named_modules():
        A, B = getattr(m, "lora_A", None), getattr(m, "lora_B", None)
        if A is None or B is None or not hasattr(A, "keys") or "default" not in A.keys():
            continue
        r = m.r["default"]
        alpha = m.lora_alpha["default"] if hasattr(m, "lora_alpha") else r
        yield name, A["default"].weight, B["default"].weight, float(alpha)


def te_prefixes(count: int) -> list[str]:
    """The kohya prefixes of `count` text encoders: SD1.x/2.x 'lora_te_', SDXL 'lora_te1_', 'lora_te2_'."""
    return ["lora_te_"] if count == 1 else [f"lora_te{i + 1}_" for i in range(count)]


def kohya_state_dict(unet=None, text_encoders=()) -> dict:
    """PEFT LoRA layers of `unet` and the `text_encoders` (None entries: not trained) -> kohya keys.

    The text encoders are given in the model's order (SDXL: CLIP-L, CLIP-G), so the prefixes follow
    te_prefixes(len(text_encoders))."""
    import torch

    out = {}
    encoders = list(text_encoders)
    parts = [("lora_unet_", unet)] + list(zip(te_prefixes(len(encoders)) if encoders else [], encoders))
    for prefix, mod in parts:
        if mod is None:
            continue
        for name, A, B, alpha in lora_layers(mod):
            if prefix != "lora_unet_" and name.startswith("encoder."):
                # transformers >= 5 flattens CLIPTextModel (no `text_model.` level); kohya names keep it
                name = "text_model." + name
            key = prefix + name.replace(".", "_")
            out[f"{key}.lora_down.weight"] = A.detach().float().cpu().contiguous()
            out[f"{key}.lora_up.weight"] = B.detach().float().cpu().contiguous()
            out[f"{key}.alpha"] = torch.tensor(alpha)
    return out


def kohya_modules(sd: dict) -> set[str]:
    """The module names (``lora_unet_...``) of a kohya state dict."""
    return {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in sd}


def save_kohya(path, sd: dict, metadata: dict | None = None):
    """Write a kohya state dict as safetensors (temp file, then rename: never half-written)."""
    from pathlib import Path

    from safetensors.torch import save_file

    from .files import atomic_path
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(sd, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
    return path
