"""ControlNet fine-tuning with diffusers (`atelier train-controlnet`), exported as a single file ComfyUI loads.

Optional extra `train` (diffusers, accelerate, peft). Importing this module imports neither torch nor
diffusers (the CLI builds its parser from it); they load when training starts.

- Base model: a local diffusers folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/); SDXL-type
  folders add text_encoder_2/ tokenizer_2/ and the UNet's `text_time` added conditioning (pooled
  CLIP-G embeds + size/crop ids). Everything in it is frozen.
- ControlNet init: `controlnet=` a diffusers ControlNet folder, or a single-file ControlNet in the
  ldm layout (`control_model.*` or bare keys: control_v11p_sd15_canny, the fp16 safetensors
  repacks), or a diffusers-layout single file; or `from_unet=True`: a copy of the base UNet's
  encoder with zero convs (ControlNetModel.from_unet), which changes nothing until trained.
- Data: `<data>/train.jsonl`, one JSON object a line: {"id", "text", "image", "conditioning_image"},
  paths relative to the jsonl's folder (the dataset export's layout). Checked before training:
  every problem is named by line and id.
- Loss: MSE of the UNet's prediction (epsilon, or v when the scheduler says v_prediction) with the
  ControlNet's residuals added to the frozen UNet. AdamW on the ControlNet.
- Reproducible and resumable: step k's batch (slices of a permutation per epoch), latent sample,
  noise and timesteps come from generators seeded by (seed, epoch) and (seed, step): the random
  state of step k is a function of (seed, k), nothing carried over. A checkpoint (core.train_loop's:
  ControlNet weights, AdamW state, fp16 grad scaler, step, config) also records the seed, batch size
  and a fingerprint of the dataset (ids, texts, files, in order), and resuming with other data or
  another order is refused; a resumed run gives the losses the uninterrupted run gives.
- Outputs (in `output`): `<name>.safetensors`, the ldm single-file layout (`control_model.*`) that
  ComfyUI's ControlNetLoader loads (models/controlnet/); optionally `<name>_diffusers/`;
  `checkpoints/step-NNNNNN/` for --resume; `<name>_losses.json` (step: loss).

Real training wants a GPU; the tests run a few CPU steps on tiny models.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from .errors import AtelierError
from .train_loop import PRECISIONS  # fp32 | bf16 | fp16, as the other trainers

SAVE_DTYPES = ("fp16", "fp32", "bf16")
FIELDS = ("id", "text", "image", "conditioning_image")


@dataclass
class ControlNetTrainConfig:
    data: str                          # folder with train.jsonl (or the jsonl itself)
    output: str
    model: str | None = None           # diffusers base model folder
    controlnet: str | None = None      # diffusers folder or single file; None with from_unet
    from_unet: bool = False
    name: str = "controlnet"
    steps: int = 1000
    batch_size: int = 1
    lr: float = 1e-5
    weight_decay: float = 1e-2
    resolution: int = 512
    precision: str = "fp32"            # fp32 | bf16 | fp16 (autocast; fp16 on CUDA only)
    gradient_checkpointing: bool = False
    seed: int = 0
    checkpoint_every: int = 500
    resume: str | None = None          # "latest" or a checkpoints/step-NNNNNN folder
    device: str = "auto"
    save_dtype: str = "fp16"
    save_diffusers: bool = False
    fixed_batch: bool = False        # sanity check: the same batch, noise and timesteps every step
    progress: bool = True


@dataclass
class Record:
    id: str
    text: str
    image: Path
    conditioning_image: Path
    line: int


def _require_train_extra():
    from .train_loop import require_train_extra
    require_train_extra("the ControlNet trainer")


# ----------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------
def _data_error(where: str, problem: str, fix: str | None = None) -> AtelierError:
    return AtelierError(f"{where}: {problem}", input="data",
                        expected="train.jsonl lines {\"id\", \"text\", \"image\": \"images/<id>.png\", "
                                 "\"conditioning_image\": \"conditioning/<id>.png\"}, paths relative to its folder",
                        fix=fix or "fix that line (or re-export the dataset with `atelier dataset`)")


def read_dataset(data) -> list[Record]:
    """The records of `<data>/train.jsonl` (or of the .jsonl given), every line checked.

    Blank lines are skipped; each other line must be a JSON object with a unique string id, a text
    and two relative paths inside the jsonl's folder to files that exist. Problems are named by
    line number and id; nothing is matched by position."""
    from . import confine, jsontext

    path = Path(data)
    if path.is_dir():
        path = path / "train.jsonl"
    if not path.is_file():
        raise AtelierError(f"no training data at '{path}'", input="data",
                           expected="a folder with train.jsonl (the dataset export's ControlNet layout)",
                           fix="export the dataset with `atelier dataset ...` or point at the folder that holds train.jsonl")
    root = path.parent
    records, seen, problems = [], {}, []
    for ln, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip():
            continue
        where = f"{path.name} line {ln}"
        try:
            obj = jsontext.loads(raw)
        except ValueError as exc:
            problems.append(_data_error(where, f"not valid JSON ({exc})"))
            continue
        if not isinstance(obj, dict):
            problems.append(_data_error(where, "not a JSON object"))
            continue
        rid = obj.get("id")
        if not isinstance(rid, (str, int)) or isinstance(rid, bool) or str(rid) == "":
            problems.append(_data_error(where, "no 'id' (every line needs its own id)"))
            continue
        rid = str(rid)
        where = f"{where} (id '{rid}')"
        if rid in seen:
            problems.append(_data_error(where, f"id '{rid}' repeats line {seen[rid]}", "give every line its own id"))
            continue
        seen[rid] = ln
        missing = [k for k in FIELDS[1:] if not isinstance(obj.get(k), str)]
        if missing:
            problems.append(_data_error(where, f"missing or not text: {', '.join(missing)}"))
            continue
        files = {}
        for k in ("image", "conditioning_image"):
            p = confine.candidate(obj[k], root)
            if p is None:
                problems.append(_data_error(where, f"{k} '{obj[k]}' is not a relative path inside {root}"))
            elif not os.path.isfile(p):
                problems.append(_data_error(where, f"{k} '{obj[k]}' does not exist (looked for {p})"))
            else:
                files[k] = Path(p)
        if len(files) == 2:
            records.append(Record(rid, obj["text"], files["image"], files["conditioning_image"], ln))
    if problems:
        if len(problems) == 1:
            raise problems[0]
        shown = "; ".join(e.problem for e in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise _data_error(f"{path.name}: {len(problems)} bad lines", shown + more)
    if not records:
        raise _data_error(path.name, "no records (the file is empty)")
    return records


def dataset_fingerprint(records: list[Record]) -> str:
    """sha256 over the ids and texts in order: a resumed run must see the same data in the same order."""
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r.id, r.text, r.image.name, r.conditioning_image.name]).encode())
    return h.hexdigest()[:16]


def _load_pair(rec: Record, resolution: int):
    """(image [3,R,R] in -1..1, conditioning [3,R,R] in 0..1, (orig_h, orig_w, crop_top, crop_left)):
    both resized so the short side is R and centre-cropped the same way."""
    import numpy as np
    import torch
    from PIL import Image

    from .images import to_rgb

    out = []
    size = crop = None
    for p in (rec.image, rec.conditioning_image):
        try:
            with Image.open(p) as im:
                im.load()
                arr = np.asarray(im.convert("RGBA" if "A" in im.getbands() else "RGB"), dtype=np.float32) / 255.0
        except OSError as exc:
            raise _data_error(f"line {rec.line} (id '{rec.id}')", f"cannot read '{p.name}' ({exc})") from exc
        t = to_rgb(torch.from_numpy(arr))[0].permute(2, 0, 1)[None]  # [1,3,H,W]
        h, w = t.shape[-2:]
        s = resolution / min(h, w)
        nh, nw = max(resolution, round(h * s)), max(resolution, round(w * s))
        t = torch.nn.functional.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        top, left = (nh - resolution) // 2, (nw - resolution) // 2
        out.append(t[0, :, top:top + resolution, left:left + resolution].clamp(0, 1))
        if size is None:
            size, crop = (h, w), (top, left)
    return out[0] * 2 - 1, out[1], (size[0], size[1], crop[0], crop[1])


# ----------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------
def load_base(model_dir) -> dict:
    """unet, vae, text encoder(s), tokenizer(s), noise scheduler from a local diffusers folder."""
    _require_train_extra()
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    d = Path(model_dir) if model_dir else None
    need = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    if d is None or not all((d / k).is_dir() for k in need):
        raise AtelierError(f"'{model_dir}' is not a diffusers model folder", input="model",
                           expected=f"a folder with {'/ '.join(need)}/ (SDXL: also text_encoder_2/ tokenizer_2/)",
                           fix="download the base model in diffusers format (e.g. a local copy of "
                               "stable-diffusion-v1-5 or stable-diffusion-xl-base-1.0)")
    kw = {"local_files_only": True}
    c = {"unet": UNet2DConditionModel.from_pretrained(d, subfolder="unet", **kw),
         "vae": AutoencoderKL.from_pretrained(d, subfolder="vae", **kw),
         "text_encoder": CLIPTextModel.from_pretrained(d, subfolder="text_encoder", **kw),
         "tokenizer": CLIPTokenizer.from_pretrained(d, subfolder="tokenizer", **kw),
         "scheduler": DDPMScheduler.from_pretrained(d, subfolder="scheduler", **kw)}
    if (d / "text_encoder_2").is_dir():
        c["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(d, subfolder="text_encoder_2", **kw)
        c["tokenizer_2"] = CLIPTokenizer.from_pretrained(d, subfolder="tokenizer_2", **kw)
    return c


def is_sdxl(unet) -> bool:
    return getattr(unet.config, "addition_embed_type", None) == "text_time"


def _hint_channels(sd: dict) -> tuple[int, ...]:
    """The conditioning embedding's widths of a diffusers-layout state dict (conv_in, then every 2nd block)."""
    widths = [sd["controlnet_cond_embedding.conv_in.weight"].shape[0]]
    i = 1
    while f"controlnet_cond_embedding.blocks.{i}.weight" in sd:
        widths.append(sd[f"controlnet_cond_embedding.blocks.{i}.weight"].shape[0])
        i += 2
    return tuple(int(w) for w in widths)


def load_controlnet(source, unet):
    """A ControlNetModel for `unet`: from a diffusers folder, a single file (ldm or diffusers
    layout), or, with `source=None`, from the UNet itself (zero convs)."""
    _require_train_extra()
    from diffusers import ControlNetModel

    if source is None:
        return ControlNetModel.from_unet(unet)
    p = Path(source)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise AtelierError(f"'{p}' is not a diffusers ControlNet folder (no config.json)", input="controlnet",
                               expected="a diffusers ControlNet folder or a single-file .safetensors ControlNet")
        return ControlNetModel.from_pretrained(p, local_files_only=True)
    if not p.is_file():
        raise AtelierError(f"ControlNet '{p}' does not exist", input="controlnet",
                           expected="a diffusers ControlNet folder or a .safetensors/.pth ControlNet file",
                           fix="check the path, or start from the UNet with --from-unet")
    from . import controlnet_convert as CC
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        sd = load_file(str(p))
    else:
        import torch
        sd = torch.load(p, map_location="cpu", weights_only=True)
        sd = sd.get("state_dict", sd)
    sd = CC.to_diffusers(sd)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=_hint_channels(sd),
                                    load_weights_from_unet=False)
    own = net.state_dict()
    extra, missing = sorted(set(sd) - set(own)), sorted(set(own) - set(sd))
    wrong = sorted(k for k in set(sd) & set(own) if tuple(sd[k].shape) != tuple(own[k].shape))
    if extra or missing or wrong:
        first = (wrong or missing or extra)[0]
        raise AtelierError(f"ControlNet '{p.name}' does not fit this base model ({len(wrong)} weights of another "
                           f"shape, {len(missing)} missing, {len(extra)} extra; e.g. '{first}')", input="controlnet",
                           expected="a ControlNet made for the base model's architecture (SD1.5 canny for an "
                                    "SD1.5 base, an SDXL ControlNet for an SDXL base)",
                           fix="pick the ControlNet that matches --model, or start from the UNet with --from-unet")
    net.load_state_dict({k: v.float() for k, v in sd.items()})
    return net


def export_single_file(controlnet, path, dtype: str = "fp16", metadata: dict | None = None) -> Path:
    """The ControlNet as one ldm-layout .safetensors (`control_model.*`), written atomically."""
    import torch
    from safetensors.torch import save_file

    from . import controlnet_convert as CC
    from .files import atomic_path

    td = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    sd = CC.diffusers_to_ldm({k: v.detach().to("cpu", td).contiguous() for k, v in controlnet.state_dict().items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(sd, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()})
    return path


# ----------------------------------------------------------------------------------------
# checkpoints: core.train_loop's (weights, optimiser, grad scaler, step, config), plus the data check
# ----------------------------------------------------------------------------------------
def _resume(run: "_Run") -> int:
    """The step to start from: 0, or the checkpoint's step after loading its ControlNet and optimiser;
    refuses a checkpoint of other data (its fingerprint) or another seed/batch size (another order)."""
    from . import train_loop as TL

    ck = TL.find_checkpoint(run.out, run.cfg.resume)
    if ck is None:
        return 0
    saved = json.loads((ck / "trainer.json").read_text()).get("config", {})
    for k, what in (("data_fingerprint", "other data (ids, texts or files changed)"), ("seed", "another seed"),
                    ("batch_size", "another batch size"), ("fixed_batch", "another --fixed-batch")):
        now = run.fingerprint if k == "data_fingerprint" else getattr(run.cfg, k)
        if saved.get(k) != now:
            raise AtelierError(f"checkpoint {ck} was trained with {what}: resuming would not continue that run",
                               input="resume", fix="resume with the data and options it was started with, "
                                                   "or train into a new output folder")
    return TL.load_checkpoint(ck, {"controlnet": run.controlnet}, run.opt, run.scaler)


# ----------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------
@dataclass
class _Run:
    """One training run; `step(k)` is one optimiser step (core.train_loop.run_steps drives it)."""
    cfg: ControlNetTrainConfig
    parts: dict                 # base components (frozen)
    controlnet: object
    device: object
    records: list
    fingerprint: str
    out: Path
    opt: object = None
    scaler: object = None       # GradScaler for fp16 on CUDA
    weight_dtype: object = None

    def step(self, step: int) -> float:
        return _train_step(self, step)


def _batch_indices(cfg: ControlNetTrainConfig, n: int, step: int) -> list[int]:
    """Indices of step `step`'s batch: consecutive slices of one seeded permutation per epoch."""
    import torch

    if cfg.fixed_batch:
        step = 0
    out = []
    for pos in range(step * cfg.batch_size, (step + 1) * cfg.batch_size):
        epoch, i = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
        out.append(int(perm[i]))
    return out


def _encode_text(run: _Run, texts: list[str]):
    """(prompt embeds [B,77,ctx], pooled [B,P] or None): SD: TE1's last hidden state; SDXL: the
    penultimate hidden states of both encoders concatenated, and CLIP-G's projected pooled output."""
    import torch

    p = run.parts

    def ids(tok):
        return tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                   return_tensors="pt").input_ids.to(run.device)

    with torch.no_grad():
        if "text_encoder_2" not in p:
            return p["text_encoder"](ids(p["tokenizer"]))[0], None
        o1 = p["text_encoder"](ids(p["tokenizer"]), output_hidden_states=True)
        o2 = p["text_encoder_2"](ids(p["tokenizer_2"]), output_hidden_states=True)
        return torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], -1), o2.text_embeds


def _train_step(run: _Run, step: int) -> float:
    """One step on step `step`'s batch; its latent sample, noise and timesteps come from a generator
    seeded by (seed, step), so the step's loss does not depend on what ran before it."""
    import torch

    from . import train_loop as TL

    cfg, dev, p = run.cfg, run.device, run.parts
    recs = [run.records[i] for i in _batch_indices(cfg, len(run.records), step)]
    pairs = [_load_pair(r, cfg.resolution) for r in recs]
    images = torch.stack([a for a, _, _ in pairs]).to(dev, next(p["vae"].parameters()).dtype)
    cond = torch.stack([b for _, b, _ in pairs]).to(dev, torch.float32)
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + (0 if cfg.fixed_batch else step) + 7)
    with torch.no_grad():
        dist = p["vae"].encode(images).latent_dist
        eps_lat = torch.randn(dist.mean.shape, generator=g).to(dev, dist.mean.dtype)
        latents = (dist.mean + dist.std * eps_lat).float() * float(getattr(p["vae"].config, "scaling_factor", 0.18215))
        text, pooled = _encode_text(run, [r.text for r in recs])
    noise = torch.randn(latents.shape, generator=g).to(dev)
    sched = p["scheduler"]
    t = torch.randint(0, int(sched.config.num_train_timesteps), (len(recs),), generator=g).to(dev)
    noisy = sched.add_noise(latents, noise, t)
    added = None
    if pooled is not None:  # SDXL: original size, crop top-left, target size
        r = cfg.resolution
        time_ids = torch.tensor([[oh, ow, ct, cl, r, r] for _, _, (oh, ow, ct, cl) in pairs], dtype=torch.float32)
        added = {"text_embeds": pooled.float(), "time_ids": time_ids.to(dev)}
    wd = run.weight_dtype
    with torch.autocast(dev.type, dtype=torch.bfloat16 if cfg.precision == "bf16" else torch.float16,
                        enabled=cfg.precision != "fp32"):
        down, mid = run.controlnet(noisy, t, encoder_hidden_states=text.float(), controlnet_cond=cond,
                                   added_cond_kwargs=added, return_dict=False)
        pred = p["unet"](noisy.to(wd), t, encoder_hidden_states=text.to(wd),
                         down_block_additional_residuals=[d.to(wd) for d in down],
                         mid_block_additional_residual=mid.to(wd),
                         added_cond_kwargs=None if added is None else {k: v.to(wd) for k, v in added.items()}).sample
    return TL.loss_and_update(pred, latents, noise, t, sched, run.opt, run.scaler, step)


def _check_config(cfg: ControlNetTrainConfig, device) -> None:
    if cfg.precision not in PRECISIONS:
        raise AtelierError(f"precision '{cfg.precision}' is not known", input="precision", expected=", ".join(PRECISIONS))
    if cfg.precision == "fp16" and device.type != "cuda":
        raise AtelierError("fp16 mixed precision needs a CUDA device", input="precision",
                           expected="fp32 or bf16 on the CPU", fix="use --precision bf16 or fp32 here")
    if cfg.save_dtype not in SAVE_DTYPES:
        raise AtelierError(f"save dtype '{cfg.save_dtype}' is not known", input="save_dtype", expected=", ".join(SAVE_DTYPES))
    for k in ("steps", "batch_size", "resolution"):
        if int(getattr(cfg, k)) < 1:
            raise AtelierError(f"{k} must be at least 1 (got {getattr(cfg, k)})", input=k)
    if cfg.resolution % 8:
        raise AtelierError(f"resolution {cfg.resolution} is not a multiple of 8", input="resolution",
                           fix="use 512, 768, 1024, ...")
    if bool(cfg.controlnet) == bool(cfg.from_unet):
        raise AtelierError("say where the ControlNet starts: --controlnet C or --from-unet (one of them)",
                           input="controlnet")


def _setup(cfg: ControlNetTrainConfig, base: dict | None) -> _Run:
    """Checked config and data, the frozen base (fp16/bf16 weights on CUDA when asked, fp32 on the CPU),
    the ControlNet (fp32, trained under autocast), AdamW and the grad scaler."""
    import torch

    from . import train_loop as TL

    _require_train_extra()
    device = TL.device_of(cfg.device)
    _check_config(cfg, device)
    records = read_dataset(cfg.data)
    parts = dict(base) if base is not None else load_base(cfg.model)
    if is_sdxl(parts["unet"]) and "text_encoder_2" not in parts:
        raise AtelierError("the base UNet is SDXL-type (text_time added conditioning) but the folder has no "
                           "text_encoder_2/ tokenizer_2/", input="model", expected="a complete SDXL diffusers folder")
    torch.manual_seed(cfg.seed)
    controlnet = load_controlnet(None if cfg.from_unet else cfg.controlnet, parts["unet"])
    wd = torch.float32
    if device.type == "cuda":
        wd = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.precision, torch.float32)
    for k in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if k in parts:
            parts[k].requires_grad_(False)
            parts[k].to(device, torch.float32 if k == "vae" and wd == torch.float16 else wd)  # fp16 VAEs overflow
            parts[k].eval()
    controlnet.to(device, torch.float32)
    controlnet.train()
    if cfg.gradient_checkpointing:
        controlnet.enable_gradient_checkpointing()
        parts["unet"].enable_gradient_checkpointing()
        parts["unet"].train()  # the UNet has no dropout: train mode only turns checkpointing on
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(cfg, parts, controlnet, device, records, dataset_fingerprint(records), out, weight_dtype=wd)
    run.opt = torch.optim.AdamW(controlnet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    run.scaler = TL.grad_scaler(cfg.precision, device)
    return run


def _loss_history(path: Path, start: int, losses: list[float]) -> list[tuple[int, float]]:
    """(step, loss) since step 1: this run's losses after the earlier run's (read back up to `start`)."""
    old = []
    if start and path.is_file():
        try:
            old = [(int(k), float(v)) for k, v in json.loads(path.read_text()).items() if int(k) <= start]
        except (ValueError, AttributeError):
            old = []
    hist = sorted(old) + [(start + i + 1, x) for i, x in enumerate(losses)]
    path.write_text(json.dumps({str(k): v for k, v in hist}, indent=0))
    return hist


def train_controlnet(cfg: ControlNetTrainConfig, base: dict | None = None,
                     on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train; returns {"controlnet": <name>.safetensors, "diffusers": folder or None, "losses": this
    run's [loss], "history": [(step, loss)] since step 1, "step", "checkpoints", "seconds_per_step"}.

    base: optional dict of already-built base components (unet, vae, text_encoder, tokenizer,
    scheduler[, text_encoder_2, tokenizer_2]); otherwise loaded from cfg.model."""
    import time

    from . import train_loop as TL

    run = _setup(cfg, base)
    start = _resume(run)
    saved = {**asdict(cfg), "data_fingerprint": run.fingerprint}
    parts = {"controlnet": run.controlnet}
    t0 = time.perf_counter()
    losses, ckpts = TL.run_steps(run, start, cfg.steps, parts=parts, out=run.out, config=saved,
                                 checkpoint_every=cfg.checkpoint_every, desc=f"train-controlnet {cfg.name}",
                                 progress=cfg.progress, on_step=on_step)
    per_step = (time.perf_counter() - t0) / max(1, len(losses))
    end = max(start, cfg.steps)
    ckpts.append(str(TL.save_checkpoint(run.out / "checkpoints", end, parts, run.opt, saved, run.scaler)))
    meta = {"atelier_steps": end, "atelier_base": Path(cfg.model).name if cfg.model else "",
            "atelier_init": "unet" if cfg.from_unet else Path(str(cfg.controlnet)).name,
            "atelier_resolution": cfg.resolution, "atelier_sdxl": is_sdxl(run.parts["unet"])}
    path = export_single_file(run.controlnet, run.out / f"{cfg.name}.safetensors", cfg.save_dtype, meta)
    diff = None
    if cfg.save_diffusers:
        diff = run.out / f"{cfg.name}_diffusers"
        run.controlnet.save_pretrained(diff)
    hist = _loss_history(run.out / f"{cfg.name}_losses.json", start, losses)
    return {"controlnet": path, "diffusers": diff, "losses": losses, "history": hist,
            "step": end, "checkpoints": ckpts, "seconds_per_step": per_step}
