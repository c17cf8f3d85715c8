"""Kolors LoRA files in the formats people publish, converted to kohya keys (which ComfyUI's LoRA
loaders apply): kohya itself, diffusers/peft (``<module>.lora_A/B`` or ``lora.down/up``) and
DiffSynth-Studio's (``blocks.N...`` in its SDXLUNet numbering, no alpha stored; the story pipeline
trained rank 16, alpha 4). Pure torch, no ComfyUI import.
"""
from __future__ import annotations

import re
from typing import Optional

import torch

from .errors import AtelierError

LORA_FORMATS = ("kohya", "diffusers", "diffsynth")


def diffsynth_blocks(num_res_blocks: list, transformer_depth: list, transformer_depth_middle: int = 1,
                     transformer_depth_output: Optional[list] = None) -> dict[int, str]:
    """DiffSynth-Studio's SDXLUNet ``blocks.N`` -> the diffusers module prefix it holds.

    DiffSynth flattens the UNet into one list: per down level and res block a ResnetBlock, an
    AttentionBlock when that block has transformers, a PushBlock; a DownSampler + PushBlock between
    levels; the middle ResnetBlock, AttentionBlock, ResnetBlock; per up level (deepest first) and
    res block a PopBlock, ResnetBlock, [AttentionBlock]; an UpSampler between levels (SDXL/Kolors:
    the 49-entry list of diffsynth/models/sdxl_unet.py, attention blocks 7, 10, 15, ... 41)."""
    out, n = {}, 0
    levels = len(num_res_blocks)
    depth = list(transformer_depth)
    for lvl in range(levels):
        for r in range(num_res_blocks[lvl]):
            out[n] = f"down_blocks.{lvl}.resnets.{r}"; n += 1
            if depth.pop(0) > 0:
                out[n] = f"down_blocks.{lvl}.attentions.{r}"; n += 1
            n += 1                                               # PushBlock
        if lvl < levels - 1:
            out[n] = f"down_blocks.{lvl}.downsamplers.0"; n += 2  # DownSampler, PushBlock
    out[n] = "mid_block.resnets.0"; n += 1
    if transformer_depth_middle > 0:
        out[n] = "mid_block.attentions.0"; n += 1
    out[n] = "mid_block.resnets.1"; n += 1
    dout = list(transformer_depth_output) if transformer_depth_output is not None else None
    for u in range(levels):
        lvl = levels - 1 - u
        for r in range(num_res_blocks[lvl] + 1):
            n += 1                                               # PopBlock
            out[n] = f"up_blocks.{u}.resnets.{r}"; n += 1
            has_attn = (dout.pop() > 0) if dout is not None else transformer_depth[sum(num_res_blocks[:lvl])] > 0
            if has_attn:
                out[n] = f"up_blocks.{u}.attentions.{r}"; n += 1
        if u < levels - 1:
            out[n] = f"up_blocks.{u}.upsamplers.0"; n += 1
    return out


_DIFFSYNTH_TOP = {"text_intermediate_proj": "encoder_hid_proj", "conv_in": "conv_in", "conv_out": "conv_out",
                  "conv_norm_out": "conv_norm_out"}


def _diffsynth_module(name: str, blocks: dict[int, str]) -> Optional[str]:
    """DiffSynth module path -> diffusers module path (None when it names nothing we know)."""
    parts = name.split(".")
    if parts[0] in _DIFFSYNTH_TOP:
        return ".".join([_DIFFSYNTH_TOP[parts[0]]] + parts[1:])
    if parts[0] in ("time_embedding", "add_time_embedding") and len(parts) > 1:
        head = "time_embedding" if parts[0] == "time_embedding" else "add_embedding"
        return ".".join([head, {"0": "linear_1", "2": "linear_2"}.get(parts[1], parts[1])] + parts[2:])
    if parts[0] != "blocks" or len(parts) < 3 or not parts[1].isdigit() or int(parts[1]) not in blocks:
        return None
    rest = parts[2:]
    if "act_fn" in rest:
        i = rest.index("act_fn")
        rest = rest[:i] + ["ff", "net", "0"] + rest[i + 1:]
    elif "ff" in rest:
        i = rest.index("ff")
        rest = rest[:i] + ["ff", "net", "2"] + rest[i + 1:]
    if rest and rest[-1] == "to_out":
        rest = rest + ["0"]
    return ".".join([blocks[int(parts[1])]] + rest)


def lora_format(sd: dict) -> str:
    """'kohya' (lora_unet_*.lora_down/up, alpha), 'diffsynth' (blocks.N...lora_A/B, no alpha) or
    'diffusers' (unet.down_blocks...lora_A/B or .lora.down/up, peft or attn-procs)."""
    keys = [k for k in sd if "lora" in k]
    if any(k.startswith("lora_unet_") for k in keys):
        return "kohya"
    if any(k.startswith(("blocks.", "text_intermediate_proj.")) and ("lora_A" in k or "lora_B" in k) for k in keys):
        return "diffsynth"
    if any(("lora_A" in k or "lora_B" in k or ".lora.down" in k or ".lora_down" in k) for k in keys):
        return "diffusers"
    raise AtelierError("this file holds no LoRA keys of a format the Kolors LoRA loader reads",
                       node="Atelier Kolors LoRA Loader", input="lora_name",
                       expected="kohya (lora_unet_*.lora_down.weight), diffusers/peft (unet.*.lora_A.weight) or "
                                "DiffSynth-Studio (blocks.N.*.lora_A.default.weight) keys",
                       fix="pick a Kolors UNet LoRA file")


_PAIR = re.compile(r"^(?P<mod>.+?)\.(?:lora_(?P<ab>[AB])(?:\.default)?|lora\.(?P<ud>down|up)|lora_(?P<ud2>down|up))\.weight$")


def lora_to_kohya(sd: dict, blocks: Optional[dict[int, str]] = None, default_alpha: Optional[float] = None) -> tuple[dict, str, list]:
    """A Kolors UNet LoRA in any of LORA_FORMATS -> kohya keys ComfyUI's LoRA loaders read
    (``lora_unet_<diffusers module with _>.lora_down.weight / .lora_up.weight / .alpha``).

    ``blocks`` (diffsynth_blocks of the model) is needed for DiffSynth files; ``default_alpha`` is
    the alpha of files that store none (DiffSynth-Studio's Kolors LoRAs were trained with rank 16,
    alpha 4: scale 0.25); None = the rank (scale 1). Returns (kohya dict, format, unmapped keys)."""
    fmt = lora_format(sd)
    if fmt == "kohya":
        return dict(sd), fmt, []
    out, unmapped = {}, []
    for k, v in sd.items():
        key = k
        for p in ("base_model.model.", "unet.", "model.diffusion_model."):
            if key.startswith(p):
                key = key[len(p):]
        m = _PAIR.match(key)
        if not m:
            if not k.endswith(".alpha"):
                unmapped.append(k)
            continue
        mod = m.group("mod")
        if fmt == "diffsynth":
            mod = _diffsynth_module(mod, blocks or {})
            if mod is None:
                unmapped.append(k)
                continue
        which = m.group("ab") or m.group("ud") or m.group("ud2")
        down = which in ("A", "down")
        name = "lora_unet_" + mod.replace(".", "_")
        out[f"{name}.lora_{'down' if down else 'up'}.weight"] = v
        if down:
            alpha_key = next((a for a in (f"{k.rsplit('.lora', 1)[0]}.alpha",) if a in sd), None)
            alpha = float(sd[alpha_key]) if alpha_key else (default_alpha if default_alpha else float(v.shape[0]))
            out[f"{name}.alpha"] = torch.tensor(alpha)
    return out, fmt, unmapped
