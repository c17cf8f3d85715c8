"""The Kolors text encoder as a real ``comfy.sd.CLIP`` (part of the `kolors` family, nodes/kolors.py):
the pack's plain-torch ChatGLM3 (core/kolors.py, published weight names) under ComfyUI's casting ops,
its tokenizer in ComfyUI's token format, and the folder loader (shard by shard)."""
from __future__ import annotations

from types import SimpleNamespace

import torch

import comfy.model_management as mm
import comfy.ops
import comfy.sd

from ..core import kolors as K
from ._managed import read_weights


def _ops():
    mc = comfy.ops.manual_cast
    return SimpleNamespace(Linear=mc.Linear, Embedding=getattr(mc, "Embedding", torch.nn.Embedding))


class KolorsTextModel(torch.nn.Module):
    """cond_stage_model for comfy.sd.CLIP: ChatGLM3 under ``transformer.`` (published names)."""

    def __init__(self, device=None, dtype=None, model_options=None, config=None, force_dtype=None, **kwargs):
        super().__init__()
        dtype = force_dtype or dtype or torch.float32
        self.transformer = K.ChatGLMEncoder(config, ops=_ops(), device=device, dtype=dtype)
        self.dtypes = {dtype}
        self.dtype = dtype
        self.execution_device = None

    def reset_clip_options(self):
        self.execution_device = None

    def set_clip_options(self, options):
        self.execution_device = options.get("execution_device", self.execution_device)

    def load_sd(self, sd):
        return self.transformer.load_state_dict(K.encoder_state_dict(sd), strict=False)

    def encode_token_weights(self, tokens):
        rows = tokens["kolors"]
        ids = torch.tensor([[t[0] for t in row] for row in rows], dtype=torch.long)
        mask = torch.tensor(tokens["kolors_mask"], dtype=torch.long)
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        dev = self.execution_device or getattr(self, "load_device", None) or self.transformer.embedding.word_embeddings.weight.device
        with torch.no_grad():
            ctx, pooled = self.transformer(ids.to(dev), mask.to(dev), pos.to(dev), dtype=self.dtype)
        inter = mm.intermediate_device() if hasattr(mm, "intermediate_device") else torch.device("cpu")
        return ctx.to(inter, torch.float32), pooled.to(inter, torch.float32)


class KolorsTokenizer:
    """tokenizer for comfy.sd.CLIP: ``{"kolors": [[(id, 1.0, word)...]], "kolors_mask": [[0/1...]]}``,
    256 ids as KolorsPipeline makes them (word 0 = padding or the [gMASK] sop prefix)."""

    def __init__(self, embedding_directory=None, tokenizer_data=None, model_file=None, **kwargs):
        self.tok = K.ChatGLMTokenizer(model_file)

    def tokenize_with_weights(self, text, return_word_ids=False, **kwargs):
        t = self.tok([text])
        ids, mask = t["input_ids"][0].tolist(), t["attention_mask"][0].tolist()
        pad = mask.index(1) if 1 in mask else len(mask)
        words = [0] * (pad + 2) + list(range(1, len(ids) - pad - 1))
        row = [(i, 1.0, w) if return_word_ids else (i, 1.0) for i, w in zip(ids, words)]
        return {"kolors": [row], "kolors_mask": [mask]}

    def untokenize(self, token_weight_pair):
        return [(p, self.tok.sp.id_to_piece(p[0]) if p[0] < self.tok.sp.vocab_size() else "") for p in token_weight_pair]

    def state_dict(self):
        return {}


def load_kolors_text_encoder(folder: str, dtype: torch.dtype | None = None, device: str = "default",
                             node: str = K.NODE_TE):
    """A published text_encoder/ folder -> comfy.sd.CLIP (weights read with ComfyUI's load_torch_file)."""
    import inspect
    import json
    files = K.text_encoder_files(folder)
    with open(files["config"], encoding="utf-8") as f:
        config = K.ChatGLMConfig.from_dict(json.load(f))
    K.ChatGLMTokenizer(files["tokenizer"])   # fail early (sentencepiece, a broken tokenizer.model)

    def tokenizer(embedding_directory=None, tokenizer_data=None, **kw):
        return KolorsTokenizer(model_file=files["tokenizer"])

    target = SimpleNamespace(clip=KolorsTextModel, tokenizer=tokenizer,
                             params={"config": config, "force_dtype": dtype})
    kwargs = {}
    if device == "cpu" and "model_options" in inspect.signature(comfy.sd.CLIP.__init__).parameters:
        kwargs["model_options"] = {"load_device": torch.device("cpu"), "offload_device": torch.device("cpu")}
    clip = comfy.sd.CLIP(target=target, **kwargs)
    if device == "cpu":
        clip.patcher.load_device = torch.device("cpu")
    clip.cond_stage_model.load_device = clip.patcher.load_device
    K.load_shards(clip.cond_stage_model, files["weights"], config, read_weights, prefix="transformer.", node=node)
    return clip
