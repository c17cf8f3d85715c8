"""ControlNet key layouts: diffusers' `ControlNetModel` <-> the ldm/ControlNet-v1 single file ComfyUI loads.

Pure key mapping (no torch at import; values pass through untouched), written from the public layer
structure of the two layouts:

  ldm (lllyasviel ControlNet, `control_model.` prefix or bare)   diffusers ControlNetModel
  time_embed.0 / .2                                               time_embedding.linear_1 / linear_2
  label_emb.0.0 / .2 (SDXL: pooled text + size/crop ids)          add_embedding.linear_1 / linear_2
  input_blocks.0.0                                                conv_in
  input_blocks.N.0 (res block) / N.1 (transformer)                down_blocks.B.resnets.J / attentions.J
  input_blocks.N.0.op (downsample conv)                           down_blocks.B.downsamplers.0.conv
  middle_block.0 / .1 / .2                                        mid_block.resnets.0 / attentions.0 / resnets.1
  zero_convs.I.0                                                  controlnet_down_blocks.I
  middle_block_out.0                                              controlnet_mid_block
  input_hint_block.0 / .2K / last                                 controlnet_cond_embedding.conv_in / blocks.K-1 / conv_out

inside a res block: in_layers.0 = norm1, in_layers.2 = conv1, emb_layers.1 = time_emb_proj,
out_layers.0 = norm2, out_layers.3 = conv2, skip_connection = conv_shortcut; a transformer's inner
names are the same in both. N runs over the levels' res blocks and downsamplers in order (N = 1 ..),
so the numbering is read from the keys (downsamplers and per-level block counts), never assumed.

ComfyUI's ControlNetLoader reads the ldm layout by detecting the config from the keys and, when no
known model matches, falls back to a config built from the keys alone (both runtimes), so a file
of any size in this layout loads.
"""
from __future__ import annotations

import re

from .errors import AtelierError

LDM_PREFIX = "control_model."

_RES_LDM_TO_DIFF = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                    "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_RES_DIFF_TO_LDM = {v: k for k, v in _RES_LDM_TO_DIFF.items()}
_FIXED_LDM_TO_DIFF = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
                      "label_emb.0.0": "add_embedding.linear_1", "label_emb.0.2": "add_embedding.linear_2",
                      "input_blocks.0.0": "conv_in", "middle_block_out.0": "controlnet_mid_block"}
_FIXED_DIFF_TO_LDM = {v: k for k, v in _FIXED_LDM_TO_DIFF.items()}


def _bad_key(key: str, layout: str) -> AtelierError:
    return AtelierError(f"ControlNet weight '{key}' is not part of the {layout} ControlNet layout", input="controlnet",
                        expected="a ControlNet: a diffusers ControlNetModel, or a single-file ldm ControlNet "
                                 "(control_model.* keys, as control_v11p_sd15_canny)",
                        fix="pass a ControlNet file (not a checkpoint, LoRA or T2I adapter), or --from-unet")


def _res_inner(rest: str, table: dict, key: str, layout: str) -> str:
    for a, b in table.items():
        if rest == a or rest.startswith(a + "."):
            return b + rest[len(a):]
    raise _bad_key(key, layout)


def strip_prefix(sd: dict) -> dict:
    """The state dict without the `control_model.` prefix (bare keys stay as they are)."""
    if any(k.startswith(LDM_PREFIX) for k in sd):
        return {k[len(LDM_PREFIX):]: v for k, v in sd.items() if k.startswith(LDM_PREFIX)}
    return dict(sd)


def is_diffusers_layout(sd: dict) -> bool:
    return any(k.startswith("controlnet_cond_embedding.") for k in sd)


def is_ldm_layout(sd: dict) -> bool:
    return any(k.startswith(("zero_convs.", LDM_PREFIX + "zero_convs.")) for k in sd)


def _input_block_plan(keys) -> dict[int, tuple[int, str, int]]:
    """ldm input block N -> (level B, 'block' or 'down', index J within the level), from the keys."""
    ns = sorted({int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.", k)) and m.group(1) != "0"})
    downs = {int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.", k))}
    plan, level, j = {}, 0, 0
    for n in ns:
        if n in downs:
            plan[n] = (level, "down", 0)
            level, j = level + 1, 0
        else:
            plan[n] = (level, "block", j)
            j += 1
    return plan


def _renamed(sd: dict, rules, layout: str, prefix: str = "") -> dict:
    """Every key through the first (pattern, new name) rule that matches it; an unmatched key is refused."""
    out = {}
    for key, v in sd.items():
        for pattern, name in rules:
            m = re.match(pattern, key)
            if m:
                out[prefix + name(m)] = v
                break
        else:
            raise _bad_key(key, layout)
    return out


def _fixed_rule(table: dict):
    alt = "|".join(re.escape(k) for k in table)
    return rf"({alt})\.(.+)$", lambda m: f"{table[m.group(1)]}.{m.group(2)}"


def ldm_to_diffusers(sd: dict) -> dict:
    """ldm ControlNet state dict (prefixed or bare) -> diffusers ControlNetModel names."""
    sd = strip_prefix(sd)
    plan = _input_block_plan(sd)
    hint_ids = sorted({int(m.group(1)) for k in sd if (m := re.match(r"input_hint_block\.(\d+)\.", k))})
    mid_attn = any(k.startswith("middle_block.2.") for k in sd)  # res, transformer, res (else two res)

    def input_block(m):
        n, sub, rest = int(m.group(1)), m.group(2), m.group(3)
        level, kind, j = plan[n]
        if kind == "down" and sub == "0" and rest.startswith("op."):
            return f"down_blocks.{level}.downsamplers.0.conv.{rest[3:]}"
        if kind == "block" and sub == "0":
            return f"down_blocks.{level}.resnets.{j}.{_res_inner(rest, _RES_LDM_TO_DIFF, m.group(0), 'ldm')}"
        if kind == "block" and sub == "1":
            return f"down_blocks.{level}.attentions.{j}.{rest}"
        raise _bad_key(m.group(0), "ldm")

    def middle(m):
        i, rest = int(m.group(1)), m.group(2)
        if mid_attn and i == 1:
            return f"mid_block.attentions.0.{rest}"
        return f"mid_block.resnets.{i // 2 if mid_attn else i}.{_res_inner(rest, _RES_LDM_TO_DIFF, m.group(0), 'ldm')}"

    def hint(m):
        pos = hint_ids.index(int(m.group(1)))
        name = "conv_in" if pos == 0 else "conv_out" if pos == len(hint_ids) - 1 else f"blocks.{pos - 1}"
        return f"controlnet_cond_embedding.{name}.{m.group(2)}"

    return _renamed(sd, [_fixed_rule(_FIXED_LDM_TO_DIFF),
                         (r"input_blocks\.([1-9]\d*)\.(\d+)\.(.+)$", input_block),
                         (r"middle_block\.(\d+)\.(.+)$", middle),
                         (r"zero_convs\.(\d+)\.0\.(.+)$", lambda m: f"controlnet_down_blocks.{m.group(1)}.{m.group(2)}"),
                         (r"input_hint_block\.(\d+)\.(.+)$", hint)], "ldm")


def diffusers_to_ldm(sd: dict, prefix: str = LDM_PREFIX) -> dict:
    """diffusers ControlNetModel state dict -> the ldm single-file layout (keys under `prefix`)."""
    keys = list(sd)
    levels = sorted({int(m.group(1)) for k in keys if (m := re.match(r"down_blocks\.(\d+)\.", k))})
    numbering, n = {}, 1
    for b in levels:
        blocks = {int(m.group(1)) for k in keys if (m := re.match(rf"down_blocks\.{b}\.(?:resnets|attentions)\.(\d+)\.", k))}
        for j in range(1 + max(blocks, default=-1)):
            numbering[(b, j)] = n
            n += 1
        if any(k.startswith(f"down_blocks.{b}.downsamplers.") for k in keys):
            numbering[(b, "down")] = n
            n += 1
    n_hint = len({m.group(1) for k in keys if (m := re.match(r"controlnet_cond_embedding\.blocks\.(\d+)\.", k))})
    mid_attn = any(k.startswith("mid_block.attentions.") for k in keys)

    def down_block(m):
        nn = numbering[(int(m.group(1)), int(m.group(3)))]
        if m.group(2) == "attentions":
            return f"input_blocks.{nn}.1.{m.group(4)}"
        return f"input_blocks.{nn}.0.{_res_inner(m.group(4), _RES_DIFF_TO_LDM, m.group(0), 'diffusers')}"

    def middle(m):
        if m.group(1) == "attentions":
            return f"middle_block.1.{m.group(3)}"
        slot = 2 * int(m.group(2)) if mid_attn else int(m.group(2))
        return f"middle_block.{slot}.{_res_inner(m.group(3), _RES_DIFF_TO_LDM, m.group(0), 'diffusers')}"

    def hint(m):
        pos = 0 if m.group(1) == "conv_in" else n_hint + 1 if m.group(1) == "conv_out" else int(m.group(2)) + 1
        return f"input_hint_block.{2 * pos}.{m.group(3)}"

    return _renamed(sd, [_fixed_rule(_FIXED_DIFF_TO_LDM),
                         (r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", down_block),
                         (r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$",
                          lambda m: f"input_blocks.{numbering[(int(m.group(1)), 'down')]}.0.op.{m.group(2)}"),
                         (r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)$", middle),
                         (r"controlnet_down_blocks\.(\d+)\.(.+)$", lambda m: f"zero_convs.{m.group(1)}.0.{m.group(2)}"),
                         (r"controlnet_cond_embedding\.(conv_in|conv_out|blocks\.(\d+))\.(.+)$", hint)],
                    "diffusers", prefix)


def to_diffusers(sd: dict) -> dict:
    """Either layout -> diffusers names (a diffusers state dict passes through)."""
    if is_diffusers_layout(sd):
        return dict(sd)
    if is_ldm_layout(sd):
        return ldm_to_diffusers(sd)
    raise AtelierError("this file is not a ControlNet (no zero_convs / controlnet_cond_embedding weights)",
                       input="controlnet", expected="a ControlNet in the ldm (control_model.*) or diffusers layout",
                       fix="pass a ControlNet file, a diffusers ControlNet folder, or --from-unet")
