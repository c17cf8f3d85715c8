"""Style trainer: fit the style adapter (and optionally a rank-4 LoRA) with the noise-prediction loss.

Optional extra `train` (diffusers, peft, accelerate is not required at run time). Nothing
here is imported by the nodes; importing this module does not import diffusers or peft.

What it does, following the style-transfer seed:
- the style statistics of the training images (core.style.encode_style with the model's own
  VAE, at `style_resolution`) give the feature cat([sigma, mu]);
- the adapter turns it into 77 tokens added to the text conditioning with weight `strength`
  (0.01), for every training caption;
- optionally a LoRA (rank 4) on the UNet's attention and feed-forward linears and the text
  encoder's attention linears;
- loss: MSE of the UNet's prediction against the noise (or v for v-prediction schedulers).

Inputs: a diffusers-format model folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/),
for example a local copy of stabilityai/stable-diffusion-2-1-base, and a folder of style images
with optional captions (same stem, .txt). A caption reads "<description>, styleNN": the style
token is appended when missing.

Outputs (in `output`):
- `<name>_adapter.safetensors`  our adapter format (load it with Atelier Style Adapter Loader,
                                  copy to ComfyUI/models/style_adapters/);
- `<name>_lora.safetensors`     kohya-format LoRA (lora_unet_* / lora_te_* with lora_down,
                                  lora_up, alpha) for ComfyUI's LoraLoader (models/loras/);
- `<name>.style.safetensors`    the style statistics of the training images;
- `checkpoints/step-NNNNNN/`    trainable weights, optimiser state and step, for --resume.

Real training needs a GPU; the tests run a few CPU steps on tiny models. The command line
(`atelier train-style`) is client/train_cli.py.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from . import lora_export
from . import train_loop as tl
from .errors import AtelierError

if TYPE_CHECKING:  # annotations only: importing this module must not import torch
    import torch

# Kept equal to core.style's constants; repeated so that importing this module (for the CLI's
# parser in client/train_cli.py) does not import torch. A test checks they agree.
DEFAULT_RESOLUTION = 512
DEFAULT_STRENGTH = 0.01
CROP_MODES = ("center", "stretch", "pad")

UNET_LORA_TARGETS = lora_export.UNET_TARGETS
TE_LORA_TARGETS = lora_export.TE_TARGETS
# The loop, checkpoints and LoRA export are shared with the LoRA trainer (core/train_loop.py,
# core/lora_export.py); these names stay for callers of this module.
add_lora, lora_layers = lora_export.add_lora, lora_export.lora_layers
save_checkpoint, find_checkpoint, load_checkpoint = tl.save_checkpoint, tl.find_checkpoint, tl.load_checkpoint


def kohya_state_dict(unet=None, text_encoder=None) -> dict:
    """PEFT LoRA layers -> kohya keys (lora_unet_*, lora_te_*) that ComfyUI's LoraLoader maps."""
    return lora_export.kohya_state_dict(unet, [text_encoder])


@dataclass
class TrainConfig:
    images: str
    output: str
    model: str | None = None          # diffusers folder; None when components are passed in
    name: str = "style"
    style_token: str = ""             # e.g. "style07", appended to every caption
    steps: int = 1000
    batch_size: int = 1
    lr: float = 1e-4                  # LoRA learning rate (UNet; the text encoder's too unless text_encoder_lr)
    text_encoder_lr: float | None = None  # the text encoder LoRA's learning rate; None = lr
    adapter_lr: float = 1e-4
    resolution: int = 512             # training image size (square, centre crop)
    style_resolution: int = DEFAULT_RESOLUTION
    crop: str = "center"
    strength: float = DEFAULT_STRENGTH
    lora: bool = True
    lora_rank: int = 4
    lora_alpha: float = 4.0
    lora_text_encoder: bool = True
    checkpoint_every: int = 500
    resume: str | None = None         # "latest" or a checkpoint folder
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"           # fp32 | bf16 | fp16 (autocast on CUDA)
    progress: bool = True


def _require_train_extra():
    tl.require_train_extra("the style trainer")


# ----------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------
def load_style_images(folder, style_token: str = "") -> list[tuple[torch.Tensor, str]]:
    """The training set: [(image [H,W,3] float 0..1, caption)] for every image in `folder`, sorted by name.

    Captions come from `<image>.txt` beside each image (or `metadata.jsonl`; empty when absent);
    `style_token` is appended to each one that does not end with it. Alpha is composited over white."""
    return [(it.image, it.caption) for it in tl.captioned_images(folder, style_token, input="images")]


# ----------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------
def load_components(model_dir) -> dict:
    """unet, vae, text_encoder, tokenizer, scheduler from a local diffusers folder."""
    _require_train_extra()
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer
    d = Path(model_dir)
    if not (d / "unet").is_dir():
        raise AtelierError(f"'{d}' is not a diffusers model folder", input="model",
                           expected="a folder with unet/, vae/, text_encoder/, tokenizer/, scheduler/",
                           fix="use a local diffusers copy of the base model (e.g. stable-diffusion-2-1-base)")
    kw = dict(local_files_only=True)
    return {
        "unet": UNet2DConditionModel.from_pretrained(d, subfolder="unet", **kw),
        "vae": AutoencoderKL.from_pretrained(d, subfolder="vae", **kw),
        "text_encoder": CLIPTextModel.from_pretrained(d, subfolder="text_encoder", **kw),
        "tokenizer": CLIPTokenizer.from_pretrained(d, subfolder="tokenizer", **kw),
        "scheduler": DDPMScheduler.from_pretrained(d, subfolder="scheduler", **kw),
    }


# ----------------------------------------------------------------------------------------
# training: train_style and its steps
# ----------------------------------------------------------------------------------------
def _checked_components(cfg: TrainConfig, components: dict | None) -> dict:
    """The components passed in, else loaded from cfg.model; refuses SDXL-type models."""
    _require_train_extra()
    if components is None:
        if not cfg.model:
            raise AtelierError("no base model given", input="model", expected="a diffusers model folder")
        components = load_components(cfg.model)
    if getattr(components["unet"].config, "addition_embed_type", None) or components.get("text_encoder_2") is not None:
        raise AtelierError("this trainer handles SD1.x/SD2.x-style models (one text encoder, no added "
                           "time/text embeddings); the base model looks like SDXL", input="model",
                           expected="a diffusers SD1.5 / SD2.x model folder",
                           fix="train on SD1.5 or SD2.x; the nodes accept SDXL adapters (width 2048) from other trainers")
    return components


@dataclass
class _Run:
    """Everything one training run works on, built by the steps of train_style in this order."""
    cfg: TrainConfig
    unet: object
    vae: object
    te: object
    tok: object
    sched: object
    device: object
    out: Path
    data: list | None = None  # [(image, caption)] (load_style_images)
    style: object = None     # core.style statistics of the training images
    feature: object = None   # style.feature() on the device: the adapter's input
    means: object = None     # VAE latent distribution of every training image
    logvars: object = None
    ids: object = None       # tokenised captions
    adapter: object = None
    parts: dict | None = None  # {"adapter", "unet", "text_encoder"}: what is trained (None: frozen)
    opt: object = None
    train_te: bool = False


def _style_statistics(run: _Run) -> None:
    """Style statistics of the training images with the model's own VAE, saved beside the outputs."""
    import torch
    from . import style as S

    cfg = run.cfg
    run.style = S.encode_style([im for im, _ in run.data], run.vae, resolution=cfg.style_resolution, crop=cfg.crop,
                               name=cfg.name, device=run.device, dtype=torch.float32)
    run.style.meta = {"style_token": cfg.style_token, "source": "style_train"}
    S.save_style(run.style, run.out / f"{cfg.name}.style.safetensors")
    run.feature = run.style.feature().to(run.device)


def _latents_and_captions(run: _Run) -> None:
    """The VAE distribution (mean, log-variance) of every image, sampled each step, and the caption ids."""
    run.means, run.logvars = tl.vae_moments(run.vae, [im for im, _ in run.data], run.cfg.resolution, run.device)
    tok = run.tok
    run.ids = tok([c for _, c in run.data], padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(run.device)


def _trainables_and_optimiser(run: _Run) -> None:
    """The adapter, the LoRA layers (when asked) and one AdamW over them (adapter_lr; lr for the UNet
    LoRA, text_encoder_lr, default lr, for the text encoder's)."""
    import torch
    from . import style as S

    cfg, unet, te, device = run.cfg, run.unet, run.te, run.device
    ctx = int(unet.config.cross_attention_dim)
    run.adapter = S.StyleAdapter(S.AdapterConfig(context_dim=ctx, latent_channels=run.style.latent_channels,
                                                 feature_size=int(run.feature.shape[-1]))).to(device)
    run.adapter.train()
    if cfg.lora:
        add_lora(unet, UNET_LORA_TARGETS, cfg.lora_rank, cfg.lora_alpha)
        if cfg.lora_text_encoder:
            add_lora(te, TE_LORA_TARGETS, cfg.lora_rank, cfg.lora_alpha)
        unet.to(device)
        te.to(device)
    run.train_te = cfg.lora and cfg.lora_text_encoder
    run.parts = {"adapter": run.adapter, "unet": unet if cfg.lora else None,
                 "text_encoder": te if run.train_te else None}
    groups = [{"params": list(run.adapter.parameters()), "lr": cfg.adapter_lr}]
    te_lr = cfg.lr if cfg.text_encoder_lr is None else cfg.text_encoder_lr
    for part, lr in (("unet", cfg.lr), ("text_encoder", te_lr)):
        params = list(tl.trainables({part: run.parts[part]}).values())
        if params:
            groups.append({"params": params, "lr": lr})
    run.opt = torch.optim.AdamW(groups, weight_decay=1e-2)


def _denoiser(run: _Run) -> tl.Denoiser:
    """The shared step (core/train_loop.py) with the style conditioning: text (cached when the text
    encoder is frozen) + strength x the adapter's tokens."""
    import torch
    from . import style as S

    cfg = run.cfg
    cached_text = None
    if not run.train_te:
        with torch.no_grad():
            cached_text = run.te(run.ids)[0]
    run.te.train(run.train_te)
    run.unet.train(cfg.lora)

    def cond(idx):
        text = run.te(run.ids[idx])[0] if run.train_te else cached_text[idx]
        return S.blend_tokens(text, run.adapter(run.feature), cfg.strength), None

    return tl.Denoiser(run.unet, run.sched, run.opt, run.device, run.means, run.logvars,
                       float(getattr(run.vae.config, "scaling_factor", 0.18215)), cfg.seed, cfg.batch_size,
                       cfg.precision, cond)


def _save_outputs(run: _Run, end: int) -> tuple[Path, Path | None]:
    """The adapter (our format) and, when trained, the kohya LoRA; returns their paths."""
    from . import style as S

    cfg = run.cfg
    run.adapter.eval()
    adapter_path = run.out / f"{cfg.name}_adapter.safetensors"
    S.save_adapter(run.adapter, adapter_path, {"style_token": cfg.style_token, "steps": str(end),
                                               "strength": str(cfg.strength)})
    if not cfg.lora:
        return adapter_path, None
    lora_path = lora_export.save_kohya(
        run.out / f"{cfg.name}_lora.safetensors", kohya_state_dict(run.unet, run.te if run.train_te else None),
        {"ss_network_dim": cfg.lora_rank, "ss_network_alpha": cfg.lora_alpha,
         "atelier_style_token": cfg.style_token, "atelier_steps": end})
    return adapter_path, lora_path


def train_style(cfg: TrainConfig, components: dict | None = None,
                on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train; returns {"adapter", "lora", "style", "losses", "step", "checkpoints"}.

    components: optional dict (unet, vae, text_encoder, tokenizer, scheduler) already built;
    otherwise they are loaded from cfg.model. The same seed gives the same losses and weights
    (the global RNG seeds the adapter and LoRA initialisation, each step's batch and noise come
    from a generator seeded by the step), so a resumed run continues the run it resumes."""
    import torch

    c = _checked_components(cfg, components)
    run = _Run(cfg, c["unet"], c["vae"], c["text_encoder"], c["tokenizer"], c["scheduler"],
               tl.device_of(cfg.device), Path(cfg.output))
    run.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    for m in (run.unet, run.vae, run.te):
        m.requires_grad_(False)
        m.to(run.device)
    run.vae.eval()
    run.data = load_style_images(cfg.images, cfg.style_token)
    _style_statistics(run)
    _latents_and_captions(run)
    _trainables_and_optimiser(run)
    ck = find_checkpoint(run.out, cfg.resume)
    start = load_checkpoint(ck, run.parts, run.opt) if ck is not None else 0
    losses, ckpts = tl.run_steps(_denoiser(run), start, cfg.steps, parts=run.parts, out=run.out, config=asdict(cfg),
                                 checkpoint_every=cfg.checkpoint_every, desc=f"train-style {cfg.name}",
                                 progress=cfg.progress, on_step=on_step)
    end = max(start, cfg.steps)
    ckpts.append(str(save_checkpoint(run.out / "checkpoints", end, run.parts, run.opt, asdict(cfg))))
    adapter_path, lora_path = _save_outputs(run, end)
    return {"adapter": adapter_path, "lora": lora_path, "style": run.out / f"{cfg.name}.style.safetensors",
            "losses": losses, "step": end, "checkpoints": ckpts}
