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

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .errors import AtelierError

if TYPE_CHECKING:  # annotations only: importing this module must not import torch
    import torch

# Kept equal to core.style's constants; repeated so that importing this module (for the CLI's
# parser in client/train_cli.py) does not import torch. A test checks they agree.
DEFAULT_RESOLUTION = 512
DEFAULT_STRENGTH = 0.01
CROP_MODES = ("center", "stretch", "pad")

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
UNET_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]
TE_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


@dataclass
class TrainConfig:
    images: str
    output: str
    model: str | None = None          # diffusers folder; None when components are passed in
    name: str = "style"
    style_token: str = ""             # e.g. "style07", appended to every caption
    steps: int = 1000
    batch_size: int = 1
    lr: float = 1e-4                  # LoRA learning rate
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
    try:
        import diffusers  # noqa: F401
        import peft  # noqa: F401
    except ImportError as exc:
        raise AtelierError(f"the style trainer needs the optional 'train' extra ({exc.name} is missing)",
                           fix="pip install 'comfyui-atelier[train]'  (diffusers, peft, accelerate)") from exc


# ----------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------
def load_style_images(folder, style_token: str = "") -> list[tuple[torch.Tensor, str]]:
    """The training set: [(image [H,W,3] float 0..1, caption)] for every image in `folder`, sorted by name.

    Captions come from `<image>.txt` beside each image (empty when absent); `style_token` is appended
    to each one that does not end with it. Alpha is composited over white."""
    import numpy as np
    import torch
    from PIL import Image

    from .images import to_rgb

    folder = Path(folder)
    if not folder.is_dir():
        raise AtelierError(f"image folder '{folder}' does not exist", input="images",
                           expected="a folder of style images (with optional .txt captions)")
    items = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in IMAGE_EXTS:
            continue
        with Image.open(p) as im:
            arr = np.asarray(im.convert("RGBA" if "A" in im.getbands() else "RGB"), dtype=np.float32) / 255.0
        cap_file = p.with_suffix(".txt")
        caption = cap_file.read_text(encoding="utf-8").strip() if cap_file.exists() else ""
        if style_token and style_token not in caption.split(", ") and not caption.endswith(style_token):
            caption = f"{caption}, {style_token}" if caption else style_token
        items.append((to_rgb(torch.from_numpy(arr))[0], caption))
    if not items:
        raise AtelierError(f"no images in '{folder}'", input="images",
                           expected=f"image files ({', '.join(IMAGE_EXTS)})")
    return items


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


def add_lora(module, targets, rank: int, alpha: float):
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


def kohya_state_dict(unet=None, text_encoder=None) -> dict:
    """PEFT LoRA layers -> kohya keys that ComfyUI's LoraLoader maps.

    UNet: `lora_unet_<diffusers module name with . -> _>` (ComfyUI converts diffusers UNet
    names to its ldm names via comfy.utils.unet_to_diffusers); text encoder:
    `lora_te_text_model_encoder_layers_<i>_self_attn_<q|k|v|out>_proj`. Each with
    `.lora_down.weight` (A), `.lora_up.weight` (B), `.alpha`."""
    import torch

    out = {}
    for prefix, mod in (("lora_unet_", unet), ("lora_te_", text_encoder)):
        if mod is None:
            continue
        for name, A, B, alpha in lora_layers(mod):
            if prefix == "lora_te_" and name.startswith("encoder."):
                # transformers >= 5 flattens CLIPTextModel (no `text_model.` level); kohya names keep it
                name = "text_model." + name
            key = prefix + name.replace(".", "_")
            out[f"{key}.lora_down.weight"] = A.detach().float().cpu().contiguous()
            out[f"{key}.lora_up.weight"] = B.detach().float().cpu().contiguous()
            out[f"{key}.alpha"] = torch.tensor(alpha)
    return out


# ----------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------
def _trainables(parts: dict) -> dict:
    return {f"{pn}.{n}": p for pn, mod in parts.items() if mod is not None
            for n, p in mod.named_parameters() if p.requires_grad}


def save_checkpoint(folder: Path, step: int, parts: dict, optimizer, cfg: TrainConfig) -> Path:
    import torch

    from safetensors.torch import save_file
    d = Path(folder) / f"step-{step:06d}"
    tmp = d.with_name(d.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in _trainables(parts).items()}, str(tmp / "weights.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "trainer.json").write_text(json.dumps({"step": step, "config": asdict(cfg)}, indent=1))
    if d.exists():
        import shutil
        shutil.rmtree(d)
    tmp.rename(d)
    return d


def find_checkpoint(output: Path, resume: str) -> Path | None:
    if resume in (None, ""):
        return None
    if resume == "latest":
        cks = sorted((Path(output) / "checkpoints").glob("step-[0-9]*[0-9]"))
        return cks[-1] if cks else None
    p = Path(resume)
    if not (p / "trainer.json").exists():
        raise AtelierError(f"'{p}' is not a trainer checkpoint", input="resume",
                           expected="'latest' or a checkpoints/step-NNNNNN folder")
    return p


def load_checkpoint(ck: Path, parts: dict, optimizer) -> int:
    import torch

    from safetensors.torch import load_file
    sd = load_file(str(ck / "weights.safetensors"))
    params = _trainables(parts)
    missing = set(params) - set(sd)
    if missing:
        raise AtelierError(f"checkpoint {ck} does not match this run ({len(missing)} weights missing, e.g. {sorted(missing)[0]})",
                           input="resume", fix="resume with the same LoRA/adapter options it was started with")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(sd[k].to(p))
    optimizer.load_state_dict(torch.load(ck / "optimizer.pt", map_location="cpu", weights_only=True))
    return int(json.loads((ck / "trainer.json").read_text())["step"])


# ----------------------------------------------------------------------------------------
# training: train_style and its steps
# ----------------------------------------------------------------------------------------
def _device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
    import torch
    from . import style as S

    moments = S.moments_fn_from_autoencoder(run.vae)
    means, logvars = [], []
    with torch.no_grad():
        for im, _ in run.data:
            m, lv = moments(S.prepare_image(im, run.cfg.resolution, "center").to(run.device))
            means.append(m)
            logvars.append(lv)
    run.means, run.logvars = torch.cat(means), torch.cat(logvars)
    tok = run.tok
    run.ids = tok([c for _, c in run.data], padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(run.device)


def _trainables_and_optimiser(run: _Run) -> None:
    """The adapter, the LoRA layers (when asked) and one AdamW over both (adapter_lr, lr)."""
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
    lora_params = [p for n, p in _trainables(run.parts).items() if not n.startswith("adapter.")]
    groups = [{"params": list(run.adapter.parameters()), "lr": cfg.adapter_lr}]
    if lora_params:
        groups.append({"params": lora_params, "lr": cfg.lr})
    run.opt = torch.optim.AdamW(groups, weight_decay=1e-2)


def _train_step(run: _Run, step: int, cached_text) -> float:
    """One optimiser step on a batch drawn from a generator seeded by (seed, step): resumable."""
    import torch
    import torch.nn.functional as F
    from . import style as S

    cfg, device, sched = run.cfg, run.device, run.sched
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # depends on the step only
    idx = torch.randint(0, len(run.data), (cfg.batch_size,), generator=g)
    mu, lv = run.means[idx.to(device)], run.logvars[idx.to(device)]
    eps_lat = torch.randn(mu.shape, generator=g).to(device)
    latents = (mu + torch.exp(0.5 * lv) * eps_lat) * float(getattr(run.vae.config, "scaling_factor", 0.18215))
    noise = torch.randn(latents.shape, generator=g).to(device)
    t = torch.randint(0, int(sched.config.num_train_timesteps), (cfg.batch_size,), generator=g).to(device)
    noisy = sched.add_noise(latents, noise, t)
    amp = cfg.precision != "fp32" and device.type == "cuda"
    amp_dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
        text = run.te(run.ids[idx.to(device)])[0] if run.train_te else cached_text[idx.to(device)]
        cond = S.blend_tokens(text, run.adapter(run.feature), cfg.strength)
        pred = run.unet(noisy, t, encoder_hidden_states=cond).sample
    v_pred = getattr(sched.config, "prediction_type", "epsilon") == "v_prediction"
    target = sched.get_velocity(latents, noise, t) if v_pred else noise
    loss = F.mse_loss(pred.float(), target.float())
    if not torch.isfinite(loss):
        raise AtelierError(f"the loss became {loss.item()} at step {step + 1}",
                           fix="lower the learning rate or use --precision fp32")
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    run.opt.step()
    return float(loss.item())


def _train_loop(run: _Run, start: int, on_step) -> tuple[list[float], list[str]]:
    """Steps start..cfg.steps with progress and periodic checkpoints; returns (losses, checkpoint folders)."""
    import torch

    cfg = run.cfg
    cached_text = None
    if not run.train_te:
        with torch.no_grad():
            cached_text = run.te(run.ids)[0]
    run.te.train(run.train_te)
    run.unet.train(cfg.lora)
    losses: list[float] = []
    ckpts: list[str] = []
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.steps, initial=start, desc=f"train-style {cfg.name}", unit="step")
    for step in range(start, cfg.steps):
        losses.append(_train_step(run, step, cached_text))
        if on_step:
            on_step(step + 1, losses[-1])
        if bar:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            ckpts.append(str(save_checkpoint(run.out / "checkpoints", step + 1, run.parts, run.opt, cfg)))
    if bar:
        bar.close()
    return losses, ckpts


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
    from safetensors.torch import save_file
    lora_path = run.out / f"{cfg.name}_lora.safetensors"
    save_file(kohya_state_dict(run.unet, run.te if run.train_te else None), str(lora_path),
              metadata={"ss_network_dim": str(cfg.lora_rank), "ss_network_alpha": str(cfg.lora_alpha),
                        "atelier_style_token": cfg.style_token, "atelier_steps": str(end)})
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
               _device(cfg.device), Path(cfg.output))
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
    losses, ckpts = _train_loop(run, start, on_step)
    end = max(start, cfg.steps)
    ckpts.append(str(save_checkpoint(run.out / "checkpoints", end, run.parts, run.opt, cfg)))
    adapter_path, lora_path = _save_outputs(run, end)
    return {"adapter": adapter_path, "lora": lora_path, "style": run.out / f"{cfg.name}.style.safetensors",
            "losses": losses, "step": end, "checkpoints": ckpts}
