"""The training loop both trainers share (core/style_train.py, core/lora_train.py): the captioned
image folder, the noise-prediction step, the step loop with progress and checkpoints, resume.

Importing this module does not import torch (the `atelier` parser imports the trainers' constants);
each function imports what it needs.

Reproducibility: the global RNG (seeded by the trainer) initialises the trainable weights; each
step's batch, latent sample, noise and timesteps come from a generator seeded by (seed, step) only,
so a run resumed from a checkpoint (weights + optimiser state + step) gives the losses the
uninterrupted run gives.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from .errors import AtelierError
from .files import IMAGE_EXTS, images_by_id

if TYPE_CHECKING:  # annotations only
    import torch

PRECISIONS = ("fp32", "bf16", "fp16")


def require_train_extra(what: str = "the trainer"):
    try:
        import diffusers  # noqa: F401
        import peft  # noqa: F401
    except ImportError as exc:
        raise AtelierError(f"{what} needs the optional 'train' extra ({exc.name} is missing)",
                           fix="pip install 'comfyui-atelier[train]'  (diffusers, peft, accelerate)") from exc


def device_of(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ----------------------------------------------------------------------------------------
# data: <folder>/images/<id>.<ext> (or <folder>/<id>.<ext>) + <id>.txt and/or metadata.jsonl
# ----------------------------------------------------------------------------------------
@dataclass
class Item:
    id: str                 # the file's stem: captions are matched by id, never by position
    image: object           # [H,W,3] float 0..1 (alpha composited over white)
    caption: str
    path: Path


def with_token(caption: str, token: str) -> str:
    """`caption` with `token` appended (", token") unless it already has it."""
    if not token or token in caption.split(", ") or caption.endswith(token):
        return caption
    return f"{caption}, {token}" if caption else token


def _metadata_captions(folder: Path, input: str) -> dict[str, str]:
    """{id: text} from `folder/metadata.jsonl` ({"file_name", "text"} per line), {} when absent."""
    from .jsontext import loads

    p = folder / "metadata.jsonl"
    if not p.is_file():
        return {}
    out = {}
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = loads(line)
        except ValueError as e:
            rec = e
        if not isinstance(rec, dict) or not isinstance(rec.get("file_name"), str) or not isinstance(rec.get("text", ""), str):
            raise AtelierError(f"{p} line {n} is not a caption record", input=input,
                               expected='one JSON object per line: {"file_name": "<id>.png", "text": "<caption>"}',
                               fix="fix or remove that line (or give captions as <id>.txt beside each image)")
        out[Path(rec["file_name"]).stem] = rec.get("text", "").strip()
    return out


def image_folder(folder) -> Path:
    """`folder/images` when there is one (the dataset export's layout), else `folder` itself."""
    folder = Path(folder)
    return folder / "images" if (folder / "images").is_dir() else folder


def captioned_images(folder, token: str = "", *, input: str = "images") -> Iterator[Item]:
    """The images of `folder` (see image_folder) sorted by name, each with its caption: `<id>.txt`
    beside it, else the `metadata.jsonl` entry of its file name, else empty; `token` appended to each
    caption that lacks it. Decoded one at a time (a trainer keeps latents, not pixels)."""
    import numpy as np
    import torch
    from PIL import Image

    from .images import to_rgb

    src = Path(folder)
    if not src.is_dir():
        raise AtelierError(f"image folder '{src}' does not exist", input=input,
                           expected="a folder of images (captions in <id>.txt or images/metadata.jsonl)")
    d = image_folder(src)
    meta = _metadata_captions(d, input)
    found = images_by_id(d, input=input)
    if not found:
        raise AtelierError(f"no images in '{d}'", input=input, expected=f"image files ({', '.join(IMAGE_EXTS)})")
    for rid, path in found.items():
        p = Path(path)
        with Image.open(p) as im:
            arr = np.asarray(im.convert("RGBA" if "A" in im.getbands() else "RGB"), dtype=np.float32) / 255.0
        cap_file = p.with_suffix(".txt")
        caption = cap_file.read_text(encoding="utf-8").strip() if cap_file.exists() else meta.get(rid, "")
        yield Item(rid, to_rgb(torch.from_numpy(arr))[0], with_token(caption, token), p)


# ----------------------------------------------------------------------------------------
# checkpoints: checkpoints/step-NNNNNN/{weights.safetensors, optimizer.pt, trainer.json}
# ----------------------------------------------------------------------------------------
def trainables(parts: dict) -> dict:
    return {f"{pn}.{n}": p for pn, mod in parts.items() if mod is not None
            for n, p in mod.named_parameters() if p.requires_grad}


def save_checkpoint(folder: Path, step: int, parts: dict, optimizer, config: dict, scaler=None) -> Path:
    import shutil

    import torch
    from safetensors.torch import save_file

    d = Path(folder) / f"step-{step:06d}"
    tmp = d.with_name(d.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in trainables(parts).items()}, str(tmp / "weights.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if scaler is not None and scaler.is_enabled():
        torch.save(scaler.state_dict(), tmp / "scaler.pt")
    (tmp / "trainer.json").write_text(json.dumps({"step": step, "config": config}, indent=1))
    if d.exists():
        shutil.rmtree(d)
    tmp.rename(d)
    return d


def find_checkpoint(output: Path, resume: str | None) -> Path | None:
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


def load_checkpoint(ck: Path, parts: dict, optimizer, scaler=None) -> int:
    import torch
    from safetensors.torch import load_file

    sd = load_file(str(ck / "weights.safetensors"))
    params = trainables(parts)
    missing = set(params) - set(sd)
    wrong = [k for k in set(params) & set(sd) if tuple(sd[k].shape) != tuple(params[k].shape)]
    if missing or wrong:
        what = f"{len(missing)} weights missing, e.g. {sorted(missing)[0]}" if missing else \
            f"{len(wrong)} weights of another shape, e.g. {sorted(wrong)[0]}"
        raise AtelierError(f"checkpoint {ck} does not match this run ({what})", input="resume",
                           fix="resume with the same model, LoRA rank and text-encoder options it was started with")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(sd[k].to(p))
    optimizer.load_state_dict(torch.load(ck / "optimizer.pt", map_location="cpu", weights_only=True))
    if scaler is not None and scaler.is_enabled() and (ck / "scaler.pt").exists():
        scaler.load_state_dict(torch.load(ck / "scaler.pt", map_location="cpu", weights_only=True))
    return int(json.loads((ck / "trainer.json").read_text())["step"])


# ----------------------------------------------------------------------------------------
# the step and the loop
# ----------------------------------------------------------------------------------------
def vae_moments(vae, images, resolution: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, log-variance) [N,C,h,w] of the VAE's latent distribution for each image [H,W,3]
    (centre crop to a `resolution` square); sampled anew at every step."""
    import torch

    from . import style as S

    moments = S.moments_fn_from_autoencoder(vae)
    means, logvars = [], []
    with torch.no_grad():
        for im in images:
            m, lv = moments(S.prepare_image(im, resolution, "center").to(device))
            means.append(m)
            logvars.append(lv)
    return torch.cat(means), torch.cat(logvars)


@dataclass
class Denoiser:
    """What one noise-prediction step needs. `cond(idx)` -> (encoder_hidden_states, added_cond_kwargs
    or None) for the batch's item indices; it runs under autocast, inside the step's graph."""
    unet: object
    sched: object
    opt: object
    device: object
    means: object
    logvars: object
    scaling: float
    seed: int
    batch_size: int
    precision: str
    cond: Callable
    scaler: object = None   # torch.amp.GradScaler (enabled for fp16 on CUDA only)
    fixed_batch: bool = False  # every step draws step 0's batch, noise and timesteps (overfitting check)

    def step(self, step: int) -> float:
        """One optimiser step on a batch drawn from a generator seeded by (seed, step): resumable."""
        import torch

        device, sched = self.device, self.sched
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + (0 if self.fixed_batch else step))  # the step only
        idx = torch.randint(0, len(self.means), (self.batch_size,), generator=g)
        mu, lv = self.means[idx.to(device)], self.logvars[idx.to(device)]
        eps_lat = torch.randn(mu.shape, generator=g).to(device)
        latents = (mu + torch.exp(0.5 * lv) * eps_lat) * self.scaling
        noise = torch.randn(latents.shape, generator=g).to(device)
        t = torch.randint(0, int(sched.config.num_train_timesteps), (self.batch_size,), generator=g).to(device)
        noisy = sched.add_noise(latents, noise, t)
        amp = self.precision != "fp32" and device.type == "cuda"
        amp_dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            hidden, added = self.cond(idx.to(device))
            unet_dtype = next(self.unet.parameters()).dtype
            pred = self.unet(noisy.to(unet_dtype), t, encoder_hidden_states=hidden, added_cond_kwargs=added).sample
        return loss_and_update(pred, latents, noise, t, sched, self.opt, self.scaler, step)


def loss_and_update(pred, latents, noise, t, sched, opt, scaler, step: int) -> float:
    """The noise-prediction loss (MSE against the noise, or v for v-prediction schedulers), refused
    when not finite, then backward and one optimiser step (through `scaler` for fp16 when given)."""
    import torch
    import torch.nn.functional as F

    v_pred = getattr(sched.config, "prediction_type", "epsilon") == "v_prediction"
    target = sched.get_velocity(latents, noise, t) if v_pred else noise
    loss = F.mse_loss(pred.float(), target.float())
    if not torch.isfinite(loss):
        raise AtelierError(f"the loss became {loss.item()} at step {step + 1}", input="lr",
                           fix="lower the learning rate or use --precision fp32 (or bf16 instead of fp16)")
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()
    return float(loss.item())


def grad_scaler(precision: str, device):
    """A GradScaler for fp16 on CUDA, else None (bf16 and fp32 need none)."""
    if precision == "fp16" and device.type == "cuda":
        import torch
        return torch.amp.GradScaler("cuda")
    return None


def run_steps(den: Denoiser, start: int, steps: int, *, parts: dict, out: Path, config: dict,
              checkpoint_every: int, desc: str, progress: bool = True,
              on_step: Callable[[int, float], None] | None = None) -> tuple[list[float], list[str]]:
    """Steps start..steps with a progress bar and a checkpoint every `checkpoint_every` steps (not
    at the end: the caller saves the final one); returns (losses, checkpoint folders)."""
    losses: list[float] = []
    ckpts: list[str] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, initial=start, desc=desc, unit="step")
    for step in range(start, steps):
        losses.append(den.step(step))
        if on_step:
            on_step(step + 1, losses[-1])
        if bar:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            ckpts.append(str(save_checkpoint(Path(out) / "checkpoints", step + 1, parts, den.opt, config, den.scaler)))
    if bar:
        bar.close()
    return losses, ckpts
