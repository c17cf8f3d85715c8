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

Real training needs a GPU; the tests run a few CPU steps on tiny models.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from .errors import AtelierError

# Kept equal to core.style's constants; repeated so that importing this module (for the CLI's
# add_parser) does not import torch. A test checks they agree.
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
def load_dataset(folder, style_token: str = "") -> list[tuple[torch.Tensor, str]]:
    """[(image [H,W,3] float 0..1, caption)] for every image in `folder`, sorted by name."""
    import torch
    from . import style as S

    from PIL import Image
    import numpy as np
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
        items.append((S.to_rgb(torch.from_numpy(arr))[0], caption))
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
# training
# ----------------------------------------------------------------------------------------
def _device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train_style(cfg: TrainConfig, components: dict | None = None,
                on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train; returns {"adapter", "lora", "style", "losses", "step", "checkpoints"}.

    components: optional dict (unet, vae, text_encoder, tokenizer, scheduler) already built;
    otherwise they are loaded from cfg.model."""
    import torch
    import torch.nn.functional as F
    from . import style as S

    _require_train_extra()
    if components is None:
        if not cfg.model:
            raise AtelierError("no base model given", input="model", expected="a diffusers model folder")
        components = load_components(cfg.model)
    unet, vae, te = components["unet"], components["vae"], components["text_encoder"]
    tok, sched = components["tokenizer"], components["scheduler"]
    if getattr(unet.config, "addition_embed_type", None) or components.get("text_encoder_2") is not None:
        raise AtelierError("this trainer handles SD1.x/SD2.x-style models (one text encoder, no added "
                           "time/text embeddings); the base model looks like SDXL", input="model",
                           expected="a diffusers SD1.5 / SD2.x model folder",
                           fix="train on SD1.5 or SD2.x; the nodes accept SDXL adapters (width 2048) from other trainers")
    device = _device(cfg.device)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    for m in (unet, vae, te):
        m.requires_grad_(False)
        m.to(device)
    vae.eval()
    data = load_dataset(cfg.images, cfg.style_token)

    # style statistics of the training images, with the model's own VAE
    style = S.encode_style([im for im, _ in data], vae, resolution=cfg.style_resolution, crop=cfg.crop,
                           name=cfg.name, device=device, dtype=torch.float32)
    style.meta = {"style_token": cfg.style_token, "source": "style_train"}
    S.save_style(style, out / f"{cfg.name}.style.safetensors")
    feature = style.feature().to(device)

    # training latents: the VAE distribution of every image, sampled each step
    moments = S.moments_fn_from_autoencoder(vae)
    scaling = float(getattr(vae.config, "scaling_factor", 0.18215))
    means, logvars = [], []
    with torch.no_grad():
        for im, _ in data:
            m, lv = moments(S.prepare_image(im, cfg.resolution, "center").to(device))
            means.append(m)
            logvars.append(lv)
    means, logvars = torch.cat(means), torch.cat(logvars)
    captions = [c for _, c in data]
    ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids.to(device)

    ctx = int(unet.config.cross_attention_dim)
    adapter = S.StyleAdapter(S.AdapterConfig(context_dim=ctx, latent_channels=style.latent_channels,
                                             feature_size=int(feature.shape[-1]))).to(device)
    adapter.train()
    if cfg.lora:
        add_lora(unet, UNET_LORA_TARGETS, cfg.lora_rank, cfg.lora_alpha)
        if cfg.lora_text_encoder:
            add_lora(te, TE_LORA_TARGETS, cfg.lora_rank, cfg.lora_alpha)
        unet.to(device)
        te.to(device)
    train_te = cfg.lora and cfg.lora_text_encoder
    parts = {"adapter": adapter, "unet": unet if cfg.lora else None, "text_encoder": te if train_te else None}
    lora_params = [p for n, p in _trainables(parts).items() if not n.startswith("adapter.")]
    groups = [{"params": list(adapter.parameters()), "lr": cfg.adapter_lr}]
    if lora_params:
        groups.append({"params": lora_params, "lr": cfg.lr})
    opt = torch.optim.AdamW(groups, weight_decay=1e-2)

    start = 0
    ck = find_checkpoint(out, cfg.resume)
    if ck is not None:
        start = load_checkpoint(ck, parts, opt)

    cached_text = None
    if not train_te:
        with torch.no_grad():
            cached_text = te(ids)[0]
    te.train(train_te)
    unet.train(cfg.lora)

    n_train = int(sched.config.num_train_timesteps)
    pred_type = getattr(sched.config, "prediction_type", "epsilon")
    amp = cfg.precision != "fp32" and device.type == "cuda"
    amp_dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
    losses: list[float] = []
    ckpts: list[str] = []
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.steps, initial=start, desc=f"train-style {cfg.name}", unit="step")
    for step in range(start, cfg.steps):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # resumable: depends on step only
        idx = torch.randint(0, len(data), (cfg.batch_size,), generator=g)
        mu, lv = means[idx.to(device)], logvars[idx.to(device)]
        eps_lat = torch.randn(mu.shape, generator=g).to(device)
        latents = (mu + torch.exp(0.5 * lv) * eps_lat) * scaling
        noise = torch.randn(latents.shape, generator=g).to(device)
        t = torch.randint(0, n_train, (cfg.batch_size,), generator=g).to(device)
        noisy = sched.add_noise(latents, noise, t)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            text = te(ids[idx.to(device)])[0] if train_te else cached_text[idx.to(device)]
            tokens = adapter(feature)
            cond = S.blend_tokens(text, tokens, cfg.strength)
            pred = unet(noisy, t, encoder_hidden_states=cond).sample
        target = sched.get_velocity(latents, noise, t) if pred_type == "v_prediction" else noise
        loss = F.mse_loss(pred.float(), target.float())
        if not torch.isfinite(loss):
            raise AtelierError(f"the loss became {loss.item()} at step {step + 1}",
                               fix="lower the learning rate or use --precision fp32")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.item()))
        if on_step:
            on_step(step + 1, losses[-1])
        if bar:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            ckpts.append(str(save_checkpoint(out / "checkpoints", step + 1, parts, opt, cfg)))
    if bar:
        bar.close()
    end = max(start, cfg.steps)
    ckpts.append(str(save_checkpoint(out / "checkpoints", end, parts, opt, cfg)))

    adapter.eval()
    adapter_path = out / f"{cfg.name}_adapter.safetensors"
    S.save_adapter(adapter, adapter_path, {"style_token": cfg.style_token, "steps": str(end),
                                           "strength": str(cfg.strength)})
    lora_path = None
    if cfg.lora:
        from safetensors.torch import save_file
        lora_path = out / f"{cfg.name}_lora.safetensors"
        save_file(kohya_state_dict(unet, te if train_te else None), str(lora_path),
                  metadata={"ss_network_dim": str(cfg.lora_rank), "ss_network_alpha": str(cfg.lora_alpha),
                            "atelier_style_token": cfg.style_token, "atelier_steps": str(end)})
    return {"adapter": adapter_path, "lora": lora_path, "style": out / f"{cfg.name}.style.safetensors",
            "losses": losses, "step": end, "checkpoints": ckpts}


# ----------------------------------------------------------------------------------------
# CLI (wired into client/cli.py as the `train-style` sub-command; torch imported lazily)
# ----------------------------------------------------------------------------------------
def add_parser(subparsers):
    p = subparsers.add_parser("train-style", help="train a style adapter (+ optional LoRA) on a folder of style images",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("images", help="folder of style images; captions in <image>.txt (optional)")
    p.add_argument("--model", required=True, help="diffusers model folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/)")
    p.add_argument("--output", "-o", required=True, help="output folder")
    p.add_argument("--name", default="style", help="file name stem of the outputs")
    p.add_argument("--style-token", default="", help="style token appended to captions, e.g. style07")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4, help="LoRA learning rate")
    p.add_argument("--adapter-lr", type=float, default=1e-4)
    p.add_argument("--resolution", type=int, default=512, help="training image size")
    p.add_argument("--style-resolution", type=int, default=DEFAULT_RESOLUTION)
    p.add_argument("--crop", choices=CROP_MODES, default="center")
    p.add_argument("--strength", type=float, default=DEFAULT_STRENGTH)
    p.add_argument("--no-lora", action="store_true", help="train the adapter only")
    p.add_argument("--no-lora-text-encoder", action="store_true")
    p.add_argument("--lora-rank", type=int, default=4)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--resume", default=None, help="'latest' or a checkpoints/step-NNNNNN folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.set_defaults(func=_cli_train)
    return p


def _cli_train(args) -> int:
    cfg = TrainConfig(images=args.images, output=args.output, model=args.model, name=args.name,
                      style_token=args.style_token, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      adapter_lr=args.adapter_lr, resolution=args.resolution, style_resolution=args.style_resolution,
                      crop=args.crop, strength=args.strength, lora=not args.no_lora,
                      lora_rank=args.lora_rank, lora_alpha=float(args.lora_rank),
                      lora_text_encoder=not args.no_lora_text_encoder, checkpoint_every=args.checkpoint_every,
                      resume=args.resume, seed=args.seed, device=args.device, precision=args.precision)
    res = train_style(cfg)
    print(f"adapter: {res['adapter']}")
    if res["lora"]:
        print(f"lora:    {res['lora']}")
    print(f"style:   {res['style']}")
    if res["losses"]:
        print(f"final loss: {res['losses'][-1]:.5f} (step {res['step']})")
    return 0
