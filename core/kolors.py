"""Kolors (Kwai-Kolors/Kolors): the pure parts of loading it (no ComfyUI import here).

Kolors is an SDXL-architecture UNet conditioned on ChatGLM3-6B. What the published files say
(Kwai-Kolors/Kolors on Hugging Face; the diffusers layout, read through diffusers 0.42.1's Kolors
pipeline and the published copies of its configs; the model page itself could not be reached
from this machine, so the sizes below are computed from the shapes, not read from the page):

- ``unet/config.json`` (UNet2DConditionModel): SDXL's trunk (block_out_channels 320/640/1280,
  2 res blocks per level, transformer depths 0/2/10, head width 64, linear proj_in/out) plus
  ``encoder_hid_dim`` 4096 with ``encoder_hid_dim_type`` "text_proj": a Linear 4096 -> 2048
  (``encoder_hid_proj``) applied to the text hidden states before every cross-attention
  (``cross_attention_dim`` 2048); ``addition_embed_type`` "text_time" with
  ``addition_time_embed_dim`` 256 and ``projection_class_embeddings_input_dim`` 5632 =
  4096 (pooled ChatGLM state) + 6 x 256 (sinusoidal embeddings of original size h, w, crop top,
  left, target size h, w: the same six time ids as SDXL). 2.58 B parameters: 5.16 GB in fp16.
- ``scheduler/scheduler_config.json`` (EulerDiscreteScheduler): ``num_train_timesteps`` 1100 (not
  1000), ``beta_schedule`` "scaled_linear" from ``beta_start`` 0.00085 to ``beta_end`` 0.014 (SDXL:
  0.012), epsilon prediction, "leading" spacing, steps_offset 1. "scaled_linear" is
  linspace(sqrt(start), sqrt(end), 1100) ** 2, which is what ComfyUI calls "linear".
- ``text_encoder/config.json`` (ChatGLMModel, ChatGLM3-6B): 28 layers, hidden 4096, ffn 13696
  (SwiGLU), 32 query heads of 128 with multi-query attention over 2 key/value groups, qkv bias,
  no other biases, RMSNorm eps 1e-5, rotary embedding on the first half of each head (pairs
  interleaved), padded vocabulary 65024; weights in 7 ``pytorch_model-0000N-of-00007.bin`` shards
  (keys ``transformer.*``) plus ``tokenizer.model`` (sentencepiece) and ``tokenizer_config.json``.
  6.24 B parameters: 12.5 GB in fp16; the encoder here loads 5.98 B (11.95 GB in fp16): the LM head
  ``output_layer`` (0.27 B) and the final norm are not part of Kolors' conditioning.
- Prompt encoding as ``KolorsPipeline.encode_prompt`` does it: ids ``[gMASK] sop`` + the
  sentencepiece ids, truncated to 256 and padded *on the left* with the unk id up to 256 (mask 0
  and position 0 on the padding); context = ``hidden_states[-2]`` (the input of the last layer)
  over all 256 positions, pooled = ``hidden_states[-1]`` (the last layer's output before the final
  norm) at the last position, which with left padding is the prompt's last token.

Layout of this module (LoRA formats: core/kolors_lora.py): the schedule and time-id helpers, the diffusers-UNet layout reader (turns
a diffusers Kolors state dict into the ComfyUI UNet config the nodes build), and ChatGLM (config,
tokenizer, encoder, folder loader) in plain torch with the published key names.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .errors import AtelierError
from .weights import read_weights

# --------------------------------------------------------------------------- published facts

MAX_TOKENS = 256                 # KolorsPipeline max_sequence_length
TIME_EMBED_DIM = 256             # unet addition_time_embed_dim
TEXT_HIDDEN = 4096               # ChatGLM3 hidden size = unet encoder_hid_dim
CONTEXT_DIM = 2048               # unet cross_attention_dim (after encoder_hid_proj)
ADM_IN = TEXT_HIDDEN + 6 * TIME_EMBED_DIM   # 5632: projection_class_embeddings_input_dim
SCHEDULE = {"num_train_timesteps": 1100, "beta_start": 0.00085, "beta_end": 0.014,
            "beta_schedule": "scaled_linear", "prediction_type": "epsilon"}
UNET_PARAMS = 2.58e9
TEXT_ENCODER_PARAMS = 6.24e9
MEMORY_NOTE = ("Memory (full-size Kolors, fp16/bf16): UNet 2.58 B parameters = 5.2 GB; ChatGLM3-6B text encoder "
               "6.24 B in the files (12.5 GB), of which the 5.98 B the conditioning needs are loaded = 12.0 GB "
               "(24 GB in fp32). ComfyUI loads each when it runs and offloads the other under memory pressure.")


def kolors_betas(timesteps: int = SCHEDULE["num_train_timesteps"], beta_start: float = SCHEDULE["beta_start"],
                 beta_end: float = SCHEDULE["beta_end"]) -> torch.Tensor:
    """Kolors' training betas (float64, [timesteps]): "scaled_linear" = linspace of the square roots, squared."""
    return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, timesteps, dtype=torch.float64) ** 2


def timestep_embedding(values: torch.Tensor, dim: int = TIME_EMBED_DIM, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [..., dim] of ``values`` [...]: cos first, then sin (diffusers'
    Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0), ComfyUI's Timestep)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=values.device) / half)
    args = values.float()[..., None] * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def time_ids_embedding(time_ids: torch.Tensor, dim: int = TIME_EMBED_DIM) -> torch.Tensor:
    """[B, 6] time ids (orig h, orig w, crop top, crop left, target h, target w) -> [B, 6 * dim]."""
    return timestep_embedding(time_ids, dim).flatten(1)


# --------------------------------------------------------------------------- UNet layout

NODE_UNET = "Atelier Kolors UNet Loader"


@dataclass
class UNetLayout:
    """What a diffusers-layout Kolors UNet state dict holds, as ComfyUI's UNetModel wants it."""
    unet_config: dict           # kwargs for comfy's UNetModel (plus ComfyUI's config keys)
    text_dim: int               # encoder_hid_proj input width (ChatGLM hidden, 4096)
    context_dim: int            # cross-attention width (2048)
    adm_in: int                 # add_embedding input width (5632)
    time_embed_dim: int         # per time id (256)
    parameters: int = 0
    extra: dict = field(default_factory=dict)


def _count(sd: dict, fmt: str) -> int:
    n = 0
    while any(k.startswith(fmt.format(n) + ".") for k in sd):
        n += 1
    return n


def _not_kolors(problem: str) -> AtelierError:
    return AtelierError(problem, node=NODE_UNET, input="unet_name",
                        expected="a Kolors UNet in the published diffusers layout (Kwai-Kolors/Kolors "
                                 "unet/diffusion_pytorch_model*.safetensors: keys conv_in.*, down_blocks.*, "
                                 "encoder_hid_proj.* 4096->2048, add_embedding.linear_1 with 5632 inputs)",
                        fix="pick the Kolors UNet file; load SD1.5/SDXL UNets with ComfyUI's own "
                            "UNETLoader and whole checkpoints with Load Checkpoint")


def strip_unet_prefix(sd: dict) -> dict:
    """Accept ``unet.`` / ``model.diffusion_model.``-less diffusers keys; returns the bare-key dict."""
    for p in ("unet.",):
        if any(k.startswith(p + "conv_in.") for k in sd):
            return {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
    return sd


def unet_layout(sd: dict, head_channels: int = 64) -> UNetLayout:
    """Read a diffusers-layout Kolors UNet state dict (keys as in unet/diffusion_pytorch_model.safetensors).

    Raises an AtelierError naming what is missing when the file is not a Kolors UNet (an ldm or
    ComfyUI checkpoint, an SDXL UNet without encoder_hid_proj, ...). ``head_channels``: Kolors' (and
    SDXL's) attention head width, which a state dict cannot tell."""
    if "input_blocks.0.0.weight" in sd or any(k.startswith("model.diffusion_model.") for k in sd):
        raise _not_kolors("this is an ldm/ComfyUI-layout UNet or checkpoint, not the diffusers layout Kolors publishes")
    if "conv_in.weight" not in sd:
        raise _not_kolors("no conv_in.weight: this is not a diffusers UNet")
    if "encoder_hid_proj.weight" not in sd:
        raise _not_kolors("no encoder_hid_proj (the 4096->2048 text projection): an SDXL/SD UNet, not Kolors")
    if "add_embedding.linear_1.weight" not in sd:
        raise _not_kolors("no add_embedding (pooled text + time ids): not an SDXL-class UNet")
    proj = sd["encoder_hid_proj.weight"]
    context_dim, text_dim = int(proj.shape[0]), int(proj.shape[1])
    adm_in = int(sd["add_embedding.linear_1.weight"].shape[1])
    if (adm_in - text_dim) <= 0 or (adm_in - text_dim) % 6:
        raise _not_kolors(f"add_embedding takes {adm_in} inputs, not the pooled text width {text_dim} + 6 time ids")
    conv_in = sd["conv_in.weight"]
    model_channels, in_channels = int(conv_in.shape[0]), int(conv_in.shape[1])
    out_channels = int(sd["conv_out.weight"].shape[0]) if "conv_out.weight" in sd else 4

    levels = _count(sd, "down_blocks.{}")
    num_res_blocks, transformer_depth, channel_mult = [], [], []
    for i in range(levels):
        res = _count(sd, f"down_blocks.{i}.resnets.{{}}")
        num_res_blocks.append(res)
        ch = int(sd[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0])
        channel_mult.append(ch // model_channels)
        for r in range(res):
            transformer_depth.append(_count(sd, f"down_blocks.{i}.attentions.{r}.transformer_blocks.{{}}"))
    transformer_depth_output = []
    for i in range(_count(sd, "up_blocks.{}")):
        for r in range(_count(sd, f"up_blocks.{i}.resnets.{{}}")):
            transformer_depth_output.append(_count(sd, f"up_blocks.{i}.attentions.{r}.transformer_blocks.{{}}"))
    mid = _count(sd, "mid_block.attentions.0.transformer_blocks.{}")
    # up blocks are stored deepest level first; ComfyUI counts output blocks from the deepest level too,
    # but unet_to_diffusers pops transformer_depth_output from the end: keep the shallow-level-last order reversed
    transformer_depth_output = list(reversed(transformer_depth_output))
    cfg = {
        "use_checkpoint": False, "image_size": 32, "out_channels": out_channels, "use_spatial_transformer": True,
        "legacy": False, "num_classes": "sequential", "adm_in_channels": adm_in, "in_channels": in_channels,
        "model_channels": model_channels, "num_res_blocks": num_res_blocks, "transformer_depth": transformer_depth,
        "channel_mult": channel_mult, "transformer_depth_middle": mid, "use_linear_in_transformer": True,
        "context_dim": context_dim, "num_head_channels": head_channels,
        "transformer_depth_output": transformer_depth_output,
        "use_temporal_attention": False, "use_temporal_resblock": False,
    }
    params = sum(int(v.numel()) for v in sd.values() if hasattr(v, "numel"))
    return UNetLayout(cfg, text_dim, context_dim, adm_in, (adm_in - text_dim) // 6, params)


# --------------------------------------------------------------------------- ChatGLM text encoder

NODE_TE = "Atelier Kolors Text Encoder Loader"


@dataclass
class ChatGLMConfig:
    """The fields of ChatGLM3's config.json the encoder uses (published defaults = ChatGLM3-6B)."""
    num_layers: int = 28
    padded_vocab_size: int = 65024
    hidden_size: int = 4096
    ffn_hidden_size: int = 13696
    kv_channels: int = 128
    num_attention_heads: int = 32
    multi_query_attention: bool = True
    multi_query_group_num: int = 2
    add_qkv_bias: bool = True
    add_bias_linear: bool = False
    layernorm_epsilon: float = 1e-5
    rmsnorm: bool = True
    apply_residual_connection_post_layernorm: bool = False
    post_layer_norm: bool = True
    seq_length: int = 32768

    @classmethod
    def from_dict(cls, d: dict) -> "ChatGLMConfig":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        cfg = cls(**known)
        if not cfg.rmsnorm or cfg.apply_residual_connection_post_layernorm:
            raise AtelierError("this ChatGLM config uses LayerNorm or post-norm residuals, which Kolors' ChatGLM3 does not",
                               node=NODE_TE, input="text_encoder",
                               expected="ChatGLM3 (rmsnorm true, apply_residual_connection_post_layernorm false)",
                               fix="pick the Kolors text_encoder folder")
        return cfg

    @property
    def kv_groups(self) -> int:
        return self.multi_query_group_num if self.multi_query_attention else self.num_attention_heads


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        y = x.float() * torch.rsqrt(var + self.eps)
        return (self.weight.to(device=x.device, dtype=torch.float32) * y).to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on the first 2*len(freqs) channels of each head, pairs (2i, 2i+1) interleaved.
    x [B, heads, S, D]; cos/sin [B, 1, S, R/2]."""
    r = cos.shape[-1] * 2
    xr, xp = x[..., :r], x[..., r:]
    a, b = xr[..., 0::2], xr[..., 1::2]
    out = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
    return torch.cat([out, xp], dim=-1)


class _GLMBlock(nn.Module):
    def __init__(self, c: ChatGLMConfig, ops, device=None, dtype=None):
        super().__init__()
        self.c = c
        proj = c.kv_channels * c.num_attention_heads
        qkv = proj + 2 * c.kv_channels * c.kv_groups
        self.input_layernorm = RMSNorm(c.hidden_size, c.layernorm_epsilon, device, dtype)
        self.self_attention = nn.Module()
        self.self_attention.query_key_value = ops.Linear(c.hidden_size, qkv, bias=c.add_bias_linear or c.add_qkv_bias,
                                                         device=device, dtype=dtype)
        self.self_attention.dense = ops.Linear(proj, c.hidden_size, bias=c.add_bias_linear, device=device, dtype=dtype)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.layernorm_epsilon, device, dtype)
        self.mlp = nn.Module()
        self.mlp.dense_h_to_4h = ops.Linear(c.hidden_size, 2 * c.ffn_hidden_size, bias=c.add_bias_linear, device=device, dtype=dtype)
        self.mlp.dense_4h_to_h = ops.Linear(c.ffn_hidden_size, c.hidden_size, bias=c.add_bias_linear, device=device, dtype=dtype)

    def forward(self, x, mask, cos, sin):
        c = self.c
        B, S, _ = x.shape
        h = self.input_layernorm(x)
        qkv = self.self_attention.query_key_value(h)
        hq, hk = c.num_attention_heads * c.kv_channels, c.kv_groups * c.kv_channels
        q, k, v = qkv.split([hq, hk, hk], dim=-1)
        q = q.view(B, S, c.num_attention_heads, c.kv_channels).transpose(1, 2)
        k = k.view(B, S, c.kv_groups, c.kv_channels).transpose(1, 2)
        v = v.view(B, S, c.kv_groups, c.kv_channels).transpose(1, 2)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        rep = c.num_attention_heads // c.kv_groups
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        a = a.transpose(1, 2).reshape(B, S, hq)
        x = x + self.self_attention.dense(a)
        h = self.post_attention_layernorm(x)
        g, u = self.mlp.dense_h_to_4h(h).chunk(2, dim=-1)
        return x + self.mlp.dense_4h_to_h(F.silu(g) * u)


class ChatGLMEncoder(nn.Module):
    """ChatGLM3's transformer as Kolors uses it, with the published parameter names (under
    ``transformer.``): embedding.word_embeddings, encoder.layers.N.{input_layernorm,
    self_attention.query_key_value, self_attention.dense, post_attention_layernorm,
    mlp.dense_h_to_4h, mlp.dense_4h_to_h}, encoder.final_layernorm. The LM head (output_layer) and
    the final norm are not needed for Kolors' conditioning and are not built.

    ``ops``: a namespace with Linear and Embedding classes (torch.nn by default; the nodes pass
    ComfyUI's casting ops so lowvram/partial loading works)."""

    def __init__(self, config: ChatGLMConfig, ops=None, device=None, dtype=None):
        super().__init__()
        ops = ops or nn
        self.config = config
        self.embedding = nn.Module()
        self.embedding.word_embeddings = ops.Embedding(config.padded_vocab_size, config.hidden_size, device=device, dtype=dtype)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(_GLMBlock(config, ops, device, dtype) for _ in range(config.num_layers))

    def _rotary(self, position_ids: torch.Tensor):
        n = self.config.kv_channels // 2          # rotary dim: half of each head
        theta = 1.0 / (10000 ** (torch.arange(0, n, 2, dtype=torch.float32, device=position_ids.device) / n))
        ang = position_ids.float()[..., None] * theta        # [B, S, n/2]
        return torch.cos(ang)[:, None], torch.sin(ang)[:, None]

    @staticmethod
    def attention_mask(mask: torch.Tensor) -> Optional[torch.Tensor]:
        """[B, S] 1 = token, 0 = padding -> boolean [B, 1, S, S] (True = may attend), as ChatGLM's
        get_masks builds it: causal over real tokens; a padding row attends to every position."""
        if bool(mask.all()):
            S = mask.shape[1]
            return torch.ones(S, S, dtype=torch.bool, device=mask.device).tril()[None, None]
        m = mask.float()
        S = m.shape[1]
        full = torch.ones(S, S, device=mask.device).tril()[None] * m[:, None, :]
        full = full - (m[:, :, None] - 1)
        return (full >= 0.5)[:, None]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                dtype: Optional[torch.dtype] = None):
        """-> (context [B, S, H]: hidden_states[-2], pooled [B, H]: hidden_states[-1] at the last position)."""
        x = self.embedding.word_embeddings(input_ids)
        if dtype is not None:
            x = x.to(dtype)
        cos, sin = self._rotary(position_ids)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        mask = self.attention_mask(attention_mask)
        penultimate = x
        layers = self.encoder.layers
        for i, layer in enumerate(layers):
            if i == len(layers) - 1:
                penultimate = x
            x = layer(x, mask, cos, sin)
        return penultimate, x[:, -1]


def published_key(k: str) -> str:
    """Our parameter name -> the name in the published shards (``transformer.`` prefix)."""
    return "transformer." + k


def encoder_state_dict(sd: dict) -> dict:
    """Published (``transformer.*``) or prefix-less ChatGLM keys -> our module's keys; drops what
    Kolors does not use (output_layer, final_layernorm, rotary inv_freq)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("transformer."):
            k = k[len("transformer."):]
        if k.startswith(("output_layer.", "rotary_pos_emb.", "encoder.final_layernorm.", "prefix_encoder.")):
            continue
        out[k] = v
    return out


class ChatGLMTokenizer:
    """Kolors' tokenization: sentencepiece ids with ``[gMASK] sop`` in front, at most ``max_length``
    ids, left-padded with the unk id (mask 0, position 0) to ``max_length``. Needs ``sentencepiece``."""

    SPECIAL = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]

    def __init__(self, model_file: str, max_length: int = MAX_TOKENS):
        try:
            from sentencepiece import SentencePieceProcessor
        except ImportError as e:
            raise AtelierError("the Kolors text encoder needs the sentencepiece package", node=NODE_TE,
                               fix="install the pack's kolors extra: pip install 'comfyui-atelier[kolors]' "
                                   "(or pip install sentencepiece) and restart ComfyUI") from e
        self.sp = SentencePieceProcessor(model_file=str(model_file))
        n = self.sp.vocab_size()
        self.special = {t: n + i for i, t in enumerate(self.SPECIAL)}
        self.pad_id = self.sp.unk_id()
        self.max_length = max_length

    def ids(self, text: str) -> list[int]:
        """Token ids of ``text`` with the prefix, truncated to max_length (no padding)."""
        return ([self.special["[gMASK]"], self.special["sop"]] + list(self.sp.encode(text)))[:self.max_length]

    def count(self, text: str) -> int:
        """Tokens ``text`` takes of the 256-token window (prefix included)."""
        return 2 + len(self.sp.encode(text))

    def __call__(self, texts: list[str]) -> dict:
        """-> {"input_ids", "attention_mask", "position_ids"}: int64 tensors [len(texts), max_length]."""
        L = self.max_length
        ids, mask, pos = [], [], []
        for t in texts:
            seq = self.ids(t)
            pad = L - len(seq)
            ids.append([self.pad_id] * pad + seq)
            mask.append([0] * pad + [1] * len(seq))
            pos.append([0] * pad + list(range(len(seq))))
        return {k: torch.tensor(v, dtype=torch.long) for k, v in
                (("input_ids", ids), ("attention_mask", mask), ("position_ids", pos))}


TOKENIZER_FILE = "tokenizer.model"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def text_encoder_files(folder: str) -> dict:
    """The files of a published ``text_encoder/`` folder: {"config", "tokenizer", "weights": [...]}.
    Shards are taken from the index json when there is one, else every weight file in the folder."""
    def missing(what: str, fix: str) -> AtelierError:
        return AtelierError(f"{what} in {folder!r}", node=NODE_TE, input="text_encoder",
                            expected="the Kolors text_encoder folder: config.json, tokenizer.model and the "
                                     "weight shards (pytorch_model-0000N-of-00007.bin or *.safetensors)",
                            fix=fix)
    if not os.path.isdir(folder):
        raise missing("not a folder", "put the whole text_encoder folder of Kwai-Kolors/Kolors under models/text_encoders/ (or models/clip/)")
    cfg = os.path.join(folder, "config.json")
    if not os.path.isfile(cfg):
        raise missing("no config.json", "copy config.json of Kwai-Kolors/Kolors text_encoder/ into the folder")
    tok = os.path.join(folder, TOKENIZER_FILE)
    if not os.path.isfile(tok):
        raise missing("no tokenizer.model", "copy tokenizer.model of Kwai-Kolors/Kolors text_encoder/ into the folder")
    names = sorted(os.listdir(folder))
    weights = []
    for idx in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        p = os.path.join(folder, idx)
        if os.path.isfile(p):
            with open(p, encoding="utf-8") as f:
                shards = sorted(set(json.load(f).get("weight_map", {}).values()))
            absent = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
            if absent:
                raise missing(f"{len(absent)} of {len(shards)} weight shards listed in {idx} are absent ({absent[0]}, ...)",
                              "download the missing shards into the folder")
            weights = [os.path.join(folder, s) for s in shards]
            break
    if not weights:
        st = [n for n in names if n.endswith(".safetensors")]
        pick = st or [n for n in names if n.endswith(WEIGHT_SUFFIXES)]
        weights = [os.path.join(folder, n) for n in pick]
    if not weights:
        raise missing("no weight files", "download the text encoder weights (the .bin or .safetensors shards) into the folder")
    return {"config": cfg, "tokenizer": tok, "weights": weights}


def load_text_encoder(folder: str, *, ops=None, device=None, dtype=torch.float32,
                      reader: Callable = read_weights):
    """(ChatGLMEncoder with the folder's weights, ChatGLMTokenizer, ChatGLMConfig). ``reader`` reads
    one weight file (safetensors, or .bin through ``torch.load(weights_only=True)``)."""
    files = text_encoder_files(folder)
    with open(files["config"], encoding="utf-8") as f:
        config = ChatGLMConfig.from_dict(json.load(f))
    tokenizer = ChatGLMTokenizer(files["tokenizer"])
    model = ChatGLMEncoder(config, ops=ops, device=device, dtype=dtype)
    load_shards(model, files["weights"], config, reader)
    return model, tokenizer, config


def load_shards(model: nn.Module, weights: list[str], config: ChatGLMConfig, reader: Callable, *,
                prefix: str = "", node: str = NODE_TE) -> None:
    """Load the encoder's weight files into ``model`` (its keys: ``prefix`` + the encoder's) shard by
    shard, so peak RAM is the model + one shard; a tensor no shard holds is an AtelierError."""
    wanted, loaded = set(model.state_dict()), set()
    for w in weights:
        part, _ = reader(w)
        part = {prefix + k: v for k, v in encoder_state_dict(part).items()}
        model.load_state_dict(part, strict=False)
        loaded |= set(part) & wanted
        del part
    missing = sorted(wanted - loaded)
    if missing:
        raise AtelierError(f"the weights lack {len(missing)} tensors the config needs (first: {missing[0]})",
                           node=node, input="text_encoder",
                           expected=f"ChatGLM weights for {config.num_layers} layers of width {config.hidden_size}",
                           fix="check that every shard is downloaded and that config.json belongs to these weights")


def encode(model: ChatGLMEncoder, tokenizer: ChatGLMTokenizer, texts: list[str], device=None,
           dtype: Optional[torch.dtype] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(context [B, 256, H], pooled [B, H]) for ``texts``, as KolorsPipeline.encode_prompt makes them."""
    t = tokenizer(texts)
    dev = device or next(model.parameters()).device
    with torch.no_grad():
        return model(t["input_ids"].to(dev), t["attention_mask"].to(dev), t["position_ids"].to(dev), dtype=dtype)
