"""DreamBooth-style LoRA training (`atelier train-lora`) for SD1.5/SD2.x, SDXL and Kolors, with diffusers + peft.

Optional extra `train`. Importing this module imports neither torch nor diffusers (the CLI parser
imports its constants); the loop, checkpoints and the kohya writer are the ones the style trainer
uses (core/train_loop.py, core/lora_export.py).

What it trains, per model family (found from the diffusers folder, or `family=`):
- "sd" (SD1.x/SD2.x): one CLIP text encoder; context = its last hidden state.
- "sdxl": CLIP-L + CLIP-G; context = both penultimate hidden states concatenated, plus SDXL's added
  conditioning: CLIP-G's pooled (projected) embedding and the six time ids (original h, w, crop top,
  left, target h, w) of each image.
- "kolors": the Kolors UNet in diffusers form (its `encoder_hid_proj` takes ChatGLM's 4096-wide
  states); the ChatGLM3 text encoder is frozen: each distinct caption is encoded once before the
  first step (core/kolors.py, as KolorsPipeline.encode_prompt does it) and the encoder is freed.
  Kolors LoRAs are UNet-only.

Trainables: a LoRA (rank/alpha; default rank 16, alpha 4 as the story pipeline trained Kolors) on the
UNet's attention and feed-forward linears and, optionally (`train_text_encoder`; not Kolors), on the
CLIP encoders' attention linears; one AdamW with a learning rate for the UNet and another for the
text encoder(s) (the style pipeline's finding: the text encoder wants a lower one). Loss: MSE of the
UNet's prediction against the noise (or v). Constant learning rate, no warm-up.

Data: `<data>/images/<id>.<ext>` (or `<data>/<id>.<ext>`) with captions in `<id>.txt` or
`images/metadata.jsonl` ({"file_name", "text"}); an optional trigger word is appended to each.

Outputs (in `output`): `<name>.safetensors`, a kohya-format LoRA (ComfyUI's LoraLoader for SD/SDXL;
Atelier Kolors LoRA Loader or LoraLoaderModelOnly for Kolors), and `checkpoints/step-NNNNNN/` for
`resume`. The command line is client/train_cli.py.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from . import lora_export as LE
from . import train_loop as tl
from .errors import AtelierError

FAMILIES = ("auto", "sd", "sdxl", "kolors")
DEFAULT_RESOLUTION = {"sd": 512, "sdxl": 1024, "kolors": 1024}
BASE_MODEL_VERSION = {"sd": "sd_v1", "sdxl": "sdxl_base_v1-0", "kolors": "kolors"}  # ss_base_model_version
PRECISIONS = tl.PRECISIONS
KOLORS_TE_NOTE = "Kolors LoRAs are UNet-only here: the ChatGLM3 text encoder stays frozen"


@dataclass
class LoraTrainConfig:
    data: str                         # dataset folder (images/ + captions)
    output: str
    model: str | None = None          # diffusers folder; None when components are passed in
    family: str = "auto"              # auto | sd | sdxl | kolors
    name: str = "lora"
    trigger: str = ""                 # appended to every caption that lacks it
    steps: int = 1000
    batch_size: int = 1
    unet_lr: float = 1e-4
    text_encoder_lr: float = 5e-5
    train_text_encoder: bool = False  # LoRA on the CLIP encoder(s) too (SD, SDXL)
    rank: int = 16
    alpha: float = 4.0
    resolution: int = 0               # 0: the family's (512 SD, 1024 SDXL/Kolors)
    precision: str = "fp32"           # fp32 | bf16 | fp16: on CUDA the frozen weights in that dtype + autocast
    gradient_checkpointing: bool = False
    checkpoint_every: int = 500
    resume: str | None = None         # "latest" or a checkpoint folder
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    fixed_batch: bool = False         # set-up check: every step on step 0's batch, noise and timesteps (the loss must fall)


# ----------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------
def detect_family(components: dict) -> str:
    cfg = components["unet"].config
    if getattr(cfg, "encoder_hid_dim_type", None) == "text_proj":
        return "kolors"
    if getattr(cfg, "addition_embed_type", None) == "text_time" or components.get("text_encoder_2") is not None:
        return "sdxl"
    return "sd"


def load_components(model_dir, family: str = "auto", device=None, text_dtype=None) -> dict:
    """The parts of a local diffusers folder: unet/ vae/ scheduler/ and text_encoder/ tokenizer/
    (SDXL: + text_encoder_2/ tokenizer_2/; Kolors: text_encoder/ is ChatGLM3 with its tokenizer.model,
    loaded straight onto `device` in `text_dtype`: 12 GB in fp16, twice that in fp32)."""
    tl.require_train_extra("the LoRA trainer")
    import json

    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    d = Path(model_dir)
    if not (d / "unet" / "config.json").is_file():
        raise AtelierError(f"'{d}' is not a diffusers model folder", input="model",
                           expected="a folder with unet/, vae/, text_encoder/, tokenizer/, scheduler/ "
                                    "(SDXL: + text_encoder_2/, tokenizer_2/)",
                           fix="use a local diffusers copy of the base model (e.g. stable-diffusion-v1-5, "
                               "stable-diffusion-xl-base-1.0, Kwai-Kolors/Kolors-diffusers)")
    ucfg = json.loads((d / "unet" / "config.json").read_text(encoding="utf-8"))
    if family == "auto":
        family = ("kolors" if ucfg.get("encoder_hid_dim_type") == "text_proj" else
                  "sdxl" if (d / "text_encoder_2").is_dir() else "sd")
    kw = dict(local_files_only=True)
    out = {"unet": UNet2DConditionModel.from_pretrained(d, subfolder="unet", **kw),
           "vae": AutoencoderKL.from_pretrained(d, subfolder="vae", **kw),
           "scheduler": DDPMScheduler.from_pretrained(d, subfolder="scheduler", **kw)}
    if family == "kolors":
        from . import kolors as K
        import torch
        model, tok, _ = K.load_text_encoder(str(d / "text_encoder"), device=device, dtype=text_dtype or torch.float32)
        out.update(text_encoder=model, tokenizer=tok)
        return out
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
    out.update(text_encoder=CLIPTextModel.from_pretrained(d, subfolder="text_encoder", **kw),
               tokenizer=CLIPTokenizer.from_pretrained(d, subfolder="tokenizer", **kw))
    if family == "sdxl":
        out.update(text_encoder_2=CLIPTextModelWithProjection.from_pretrained(d, subfolder="text_encoder_2", **kw),
                   tokenizer_2=CLIPTokenizer.from_pretrained(d, subfolder="tokenizer_2", **kw))
    return out


# ----------------------------------------------------------------------------------------
# text conditioning: cond(idx) -> (encoder_hidden_states, added_cond_kwargs | None)
# ----------------------------------------------------------------------------------------
def _ids(tok, captions, device):
    return tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids.to(device)


def _time_ids(sizes, resolution: int, device):
    """SDXL/Kolors added time ids per image: original (h, w), the centre crop's (top, left) in the
    resized image (short side = resolution), target (resolution, resolution)."""
    import torch

    rows = []
    for h, w in sizes:
        s = resolution / min(h, w)
        rows.append([h, w, max(0, round((h * s - resolution) / 2)), max(0, round((w * s - resolution) / 2)),
                     resolution, resolution])
    return torch.tensor(rows, dtype=torch.float32, device=device)


def _clip_text(run: "_LoraRun", uniq: list[str]) -> Callable:
    """text(u) -> (context, pooled | None) for distinct-caption indices u. SD: CLIP's last hidden state;
    SDXL: CLIP-L's and CLIP-G's penultimate hidden states concatenated, CLIP-G's projected pooled state."""
    import torch

    te, te2 = run.c["text_encoder"], run.c.get("text_encoder_2")
    ids = _ids(run.c["tokenizer"], uniq, run.device)
    if run.family == "sd":
        return lambda u: (te(ids[u])[0], None)
    ids2 = _ids(run.c["tokenizer_2"], uniq, run.device)

    def sdxl(u):
        o1 = te(ids[u], output_hidden_states=True)
        o2 = te2(ids2[u], output_hidden_states=True)
        return torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], dim=-1), o2.text_embeds
    return sdxl


def _kolors_text(run: "_LoraRun", uniq: list[str]) -> Callable:
    """ChatGLM3's (context [256, 4096], pooled) of every distinct caption, computed here once; the
    encoder is dropped afterwards (it is never trained)."""
    import torch

    from . import kolors as K

    model, tok = run.c.pop("text_encoder"), run.c.pop("tokenizer")
    model.to(run.device)
    ctx, pooled = [], []
    for i in range(0, len(uniq), 4):
        c, p = K.encode(model, tok, uniq[i:i + 4], device=run.device)
        ctx.append(c.to(run.cache_dtype))
        pooled.append(p.to(run.cache_dtype))
    del model
    ctx, pooled = torch.cat(ctx), torch.cat(pooled)
    return lambda u: (ctx[u], pooled[u])


def _conditioning(run: "_LoraRun") -> Callable:
    """cond(idx) -> (encoder_hidden_states, added_cond_kwargs | None) for item indices `idx`. Frozen
    text encoders run once per distinct caption before the first step; trained ones at every step."""
    import torch

    uniq = sorted(set(run.captions))
    pos = {c: i for i, c in enumerate(uniq)}
    where = torch.tensor([pos[c] for c in run.captions], device=run.device)
    text = _kolors_text(run, uniq) if run.family == "kolors" else _clip_text(run, uniq)
    if not any(run.text_encoders or ()):
        hidden, pooled = [], []
        with torch.no_grad():
            for i in range(0, len(uniq), 16):
                h, p = text(torch.arange(i, min(i + 16, len(uniq)), device=run.device))
                hidden.append(h.to(run.cache_dtype))
                pooled.append(p.to(run.cache_dtype) if p is not None else None)
        hidden = torch.cat(hidden)
        pooled = torch.cat(pooled) if pooled[0] is not None else None
        run.text_cache_bytes = hidden.element_size() * (hidden.numel() + (pooled.numel() if pooled is not None else 0))
        text = lambda u: (hidden[u], pooled[u] if pooled is not None else None)  # noqa: E731
        for k in ("text_encoder", "text_encoder_2"):   # frozen and cached: off the accelerator
            if k in run.c:
                run.c[k].to("cpu")
    time_ids = _time_ids(run.sizes, run.resolution, run.device) if run.family != "sd" else None

    def cond(idx):
        h, p = text(where[idx])
        return h, (None if time_ids is None else {"text_embeds": p, "time_ids": time_ids[idx]})
    return cond


# ----------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------
@dataclass
class _LoraRun:
    cfg: LoraTrainConfig
    c: dict                  # the model parts (load_components)
    family: str
    device: object
    out: Path
    resolution: int
    cache_dtype: object      # of the frozen text encoders' cached outputs
    captions: list | None = None
    ids: list | None = None
    sizes: list | None = None   # (h, w) of each image before the crop
    means: object = None
    logvars: object = None
    text_encoders: list | None = None   # the CLIP encoders in the model's order, None = no LoRA on it
    parts: dict | None = None
    opt: object = None
    scaler: object = None
    text_cache_bytes: int = 0


def _check(cfg: LoraTrainConfig, components: dict | None) -> tuple[dict, str]:
    tl.require_train_extra("the LoRA trainer")
    if cfg.family not in FAMILIES:
        raise AtelierError(f"unknown model family '{cfg.family}'", input="family", expected=" / ".join(FAMILIES))
    if cfg.precision not in PRECISIONS:
        raise AtelierError(f"unknown precision '{cfg.precision}'", input="precision", expected=" / ".join(PRECISIONS))
    if cfg.rank < 1 or cfg.alpha <= 0:
        raise AtelierError(f"LoRA rank {cfg.rank} / alpha {cfg.alpha} is not usable", input="rank",
                           expected="rank >= 1 and alpha > 0 (the scale is alpha / rank)")
    if components is None:
        if not cfg.model:
            raise AtelierError("no base model given", input="model", expected="a diffusers model folder")
        device = tl.device_of(cfg.device)
        components = load_components(cfg.model, cfg.family, device=device, text_dtype=_half(cfg.precision, device))
    found = detect_family(components)
    family = found if cfg.family == "auto" else cfg.family
    if family != found:
        raise AtelierError(f"the model looks like '{found}', not '{family}'", input="family",
                           expected=f"--family {found} (or auto) for this model folder")
    if family == "kolors" and cfg.train_text_encoder:
        raise AtelierError(KOLORS_TE_NOTE, input="train_text_encoder", fix="leave --train-text-encoder off for Kolors")
    return components, family


def _latents(run: _LoraRun) -> None:
    """Read the dataset one image at a time, keeping only its VAE moments, caption and size."""
    def images():
        for it in tl.captioned_images(run.cfg.data, run.cfg.trigger, input="data"):
            run.ids.append(it.id)
            run.captions.append(it.caption)
            run.sizes.append(tuple(it.image.shape[:2]))
            yield it.image
    run.ids, run.captions, run.sizes = [], [], []
    run.means, run.logvars = tl.vae_moments(run.c["vae"], images(), run.resolution, run.device)


def _lora_and_optimiser(run: _LoraRun) -> None:
    """LoRA layers on the UNet (and the CLIP encoders when asked), one AdamW with the two learning rates."""
    import torch

    cfg, c = run.cfg, run.c
    LE.add_lora(c["unet"], LE.UNET_TARGETS, cfg.rank, cfg.alpha)
    clips = {"sd": ["text_encoder"], "sdxl": ["text_encoder", "text_encoder_2"], "kolors": []}[run.family]
    run.text_encoders = []
    for te in (c[k] for k in clips):
        if cfg.train_text_encoder:
            LE.add_lora(te, LE.TE_TARGETS, cfg.rank, cfg.alpha)
        run.text_encoders.append(te if cfg.train_text_encoder else None)
    run.parts = {"unet": c["unet"], **{f"text_encoder{'_2' if i else ''}": te for i, te in enumerate(run.text_encoders)}}
    for p in tl.trainables(run.parts).values():
        p.data = p.data.float()   # LoRA weights train in fp32 over frozen half-precision weights
    groups = [{"params": list(tl.trainables({"unet": c["unet"]}).values()), "lr": cfg.unet_lr}]
    te_params = [p for k, p in tl.trainables(run.parts).items() if not k.startswith("unet.")]
    if te_params:
        groups.append({"params": te_params, "lr": cfg.text_encoder_lr})
    run.opt = torch.optim.AdamW(groups, weight_decay=1e-2)
    run.scaler = tl.grad_scaler(cfg.precision, run.device)


def _half(precision: str, device):
    """The dtype of the frozen weights: bf16/fp16 on CUDA when asked, else None (fp32)."""
    import torch
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision) if device.type == "cuda" else None


def _prepare_models(run: _LoraRun) -> None:
    """Frozen, on the device; the UNet and CLIP encoders in half precision for bf16/fp16 on CUDA (the
    VAE stays fp32: it encodes once, and SDXL's VAE overflows in fp16); gradient checkpointing."""
    import torch

    half = _half(run.cfg.precision, run.device)
    for k in ("unet", "vae", "text_encoder", "text_encoder_2"):
        m = run.c.get(k)
        if m is None or not hasattr(m, "requires_grad_"):
            continue
        m.requires_grad_(False)
        m.to(run.device)
        if half is not None and k != "vae":
            m.to(half)
        m.eval()
    run.cache_dtype = half or torch.float32


def _train_mode(run: _LoraRun) -> None:
    run.c["unet"].train()
    if run.cfg.gradient_checkpointing:
        run.c["unet"].enable_gradient_checkpointing()
    for te in run.text_encoders:
        if te is not None:
            te.train()
            if run.cfg.gradient_checkpointing:
                (getattr(te, "activation_checkpointing_enable", None) or te.gradient_checkpointing_enable)()


def _save(run: _LoraRun, end: int) -> Path:
    cfg = run.cfg
    sd = LE.kohya_state_dict(run.c["unet"], run.text_encoders)
    return LE.save_kohya(run.out / f"{cfg.name}.safetensors", sd, {
        "ss_network_module": "networks.lora", "ss_network_dim": cfg.rank, "ss_network_alpha": cfg.alpha,
        "ss_base_model_version": BASE_MODEL_VERSION[run.family], "ss_steps": end, "ss_resolution": run.resolution,
        "ss_unet_lr": cfg.unet_lr, "ss_text_encoder_lr": cfg.text_encoder_lr if cfg.train_text_encoder else 0,
        "atelier_family": run.family, "atelier_trigger": cfg.trigger})


def train_lora(cfg: LoraTrainConfig, components: dict | None = None,
               on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train; returns {"lora", "family", "losses", "step", "checkpoints", "ids", "seconds_per_step",
    "text_cache_bytes", "precision"} (precision: the one used; bf16/fp16 apply on CUDA only, else fp32).

    components: optional dict of parts already built (see load_components), else loaded from cfg.model.
    The same seed gives the same losses and weights; a run resumed from a checkpoint continues the
    run it resumes (see core/train_loop.py)."""
    import time

    import torch

    c, family = _check(cfg, components)
    run = _LoraRun(cfg, dict(c), family, tl.device_of(cfg.device), Path(cfg.output),
                   cfg.resolution or DEFAULT_RESOLUTION[family], torch.float32)
    run.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    _prepare_models(run)
    _latents(run)
    _lora_and_optimiser(run)
    cond = _conditioning(run)
    _train_mode(run)
    ck = tl.find_checkpoint(run.out, cfg.resume)
    start = tl.load_checkpoint(ck, run.parts, run.opt, run.scaler) if ck is not None else 0
    vae = c["vae"]
    den = tl.Denoiser(c["unet"], c["scheduler"], run.opt, run.device, run.means, run.logvars,
                      float(getattr(vae.config, "scaling_factor", 0.18215)), cfg.seed, cfg.batch_size,
                      cfg.precision, cond, run.scaler, cfg.fixed_batch)
    t0 = time.perf_counter()
    losses, ckpts = tl.run_steps(den, start, cfg.steps, parts=run.parts, out=run.out, config=asdict(cfg),
                                 checkpoint_every=cfg.checkpoint_every, desc=f"train-lora {cfg.name} ({family})",
                                 progress=cfg.progress, on_step=on_step)
    per_step = (time.perf_counter() - t0) / len(losses) if losses else 0.0
    end = max(start, cfg.steps)
    ckpts.append(str(tl.save_checkpoint(run.out / "checkpoints", end, run.parts, run.opt, asdict(cfg), run.scaler)))
    return {"lora": _save(run, end), "family": family, "losses": losses, "step": end, "checkpoints": ckpts,
            "ids": list(run.ids), "seconds_per_step": per_step, "text_cache_bytes": run.text_cache_bytes,
            "precision": cfg.precision if _half(cfg.precision, run.device) is not None else "fp32"}
