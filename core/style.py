"""VAE style features: style statistics, the style adapter and latent AdaIN.

Pure core: torch only, no ComfyUI. Three pieces, following the style-transfer seed
(DreamBooth-LoRA on SD2.1 plus an image-derived style signal):

1. Style statistics (`encode_style`). Each reference image is resized to a fixed working
   resolution (default 512, see `prepare_images` for the crop policy), VAE-encoded *to the
   distribution* (encoder -> quant_conv -> split into mean and log-variance, never a
   sample), and the per-image latent mean map mu and standard-deviation map sigma
   (sigma = exp(logvar / 2)) are averaged over the set. A style also keeps per-channel
   statistics of the latent distribution of the whole set (law of total variance over
   images and positions), used by the training-free latent match. Styles are saved as
   small safetensors files with metadata (`save_style` / `load_style`).

2. The adapter (`StyleAdapter`): the seed's conv net over the feature cat([sigma, mu])
   (sigma first, as in the seed's public code) -> 77 tokens of the text-context width,
   added to the text conditioning with a small weight (default 0.01).

3. Latent AdaIN (`match_latent_stats`): shift/scale each latent channel so its mean and
   standard deviation equal the style's, blended by strength.

All latents here are *raw* VAE latents (what ComfyUI's LATENT holds and what the VAE's
encoder produces), not the model's scaled latents.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import AtelierError
from .images import to_rgb
from .weights import Reader, read_weights

STYLE_FORMAT = "atelier-style/1"
ADAPTER_FORMAT = "atelier-style-adapter/1"
DEFAULT_RESOLUTION = 512
DEFAULT_STRENGTH = 0.01
CROP_MODES = ("center", "stretch", "pad")

MomentsFn = Callable[[torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


# ----------------------------------------------------------------------------------------
# image preparation
# ----------------------------------------------------------------------------------------
def prepare_image(image: torch.Tensor, resolution: int = DEFAULT_RESOLUTION, crop: str = "center") -> torch.Tensor:
    """One image [H,W,C] (0..1) -> [1,3,R,R] in -1..1, the VAE's input range.

    Crop policy (the working size is always a square of `resolution`):
      - "center"  (default): scale so the short side is `resolution`, then cut the centre
                  square. Keeps texture scale and aspect; drops the margins of long images.
      - "stretch": resize to the square ignoring aspect (keeps everything, distorts shapes).
      - "pad":     scale so the long side is `resolution` and pad the rest with white.
    Resizing uses bicubic with antialiasing on downscale."""
    if crop not in CROP_MODES:
        raise AtelierError(f"unknown crop mode '{crop}'", input="crop", expected=" / ".join(CROP_MODES))
    if resolution < 64 or resolution % 8:
        raise AtelierError(f"working resolution {resolution} is not usable", input="resolution",
                           expected="a multiple of 8, at least 64 (512 is the trained default)")
    x = to_rgb(image)[0].permute(2, 0, 1).unsqueeze(0)  # [1,3,H,W]
    h, w = x.shape[-2:]
    if h < 1 or w < 1:
        raise AtelierError("an image is empty", expected="images of at least 1x1 pixels")
    r = resolution

    def _resize(t, size):
        return F.interpolate(t, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)

    if crop == "stretch":
        x = _resize(x, (r, r))
    elif crop == "center":
        s = r / min(h, w)
        nh, nw = max(r, round(h * s)), max(r, round(w * s))
        x = _resize(x, (nh, nw))
        top, left = (nh - r) // 2, (nw - r) // 2
        x = x[..., top:top + r, left:left + r]
    else:  # pad
        s = r / max(h, w)
        nh, nw = max(1, min(r, round(h * s))), max(1, min(r, round(w * s)))
        x = _resize(x, (nh, nw))
        canvas = torch.ones(1, 3, r, r, dtype=x.dtype)
        top, left = (r - nh) // 2, (r - nw) // 2
        canvas[..., top:top + nh, left:left + nw] = x
        x = canvas
    return x * 2.0 - 1.0


def iter_images(images) -> list[torch.Tensor]:
    """A ComfyUI IMAGE batch [B,H,W,C], a single [H,W,C], or a list of those (sizes may
    differ) -> list of [H,W,C] tensors."""
    if isinstance(images, torch.Tensor):
        images = [images]
    out: list[torch.Tensor] = []
    for im in images:
        if not isinstance(im, torch.Tensor):
            raise AtelierError(f"style images must be tensors, got {type(im).__name__}", expected="IMAGE")
        if im.ndim == 4:
            out.extend(im[i] for i in range(im.shape[0]))
        elif im.ndim == 3:
            out.append(im)
        else:
            raise AtelierError(f"an image has shape {tuple(im.shape)}", expected="IMAGE [B,H,W,C]")
    return out


# ----------------------------------------------------------------------------------------
# VAE moments
# ----------------------------------------------------------------------------------------
def split_moments(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Diagonal Gaussian split, as ComfyUI and diffusers do: chunk in two along channels,
    log-variance clamped to [-30, 20]."""
    if moments.ndim != 4 or moments.shape[1] % 2:
        raise AtelierError(f"the VAE encoder returned moments of shape {tuple(moments.shape)}",
                           expected="[B, 2*latent_channels, h, w] (a KL / diagonal-Gaussian VAE)",
                           fix="use an SD1.x/SD2.x/SDXL-style KL VAE (TAESD and VQ VAEs have no distribution)")
    mean, logvar = torch.chunk(moments, 2, dim=1)
    return mean, torch.clamp(logvar, -30.0, 20.0)


def moments_fn_from_autoencoder(model: nn.Module) -> MomentsFn:
    """Build `encode_moments(pixels[-1..1] NCHW) -> (mean, logvar)` from a module with
    `.encoder` and (optionally) `.quant_conv`, which both ComfyUI's AutoencoderKL
    (`VAE.first_stage_model`) and diffusers' AutoencoderKL have. We do not call the module's
    own `encode`: ComfyUI's returns a sample of the distribution."""
    enc = getattr(model, "encoder", None)
    if not isinstance(enc, nn.Module):
        raise AtelierError(f"this VAE ({type(model).__name__}) has no KL encoder",
                           expected="a KL autoencoder with .encoder and .quant_conv (SD1.x/SD2.x/SDXL VAE)",
                           fix="load a standard VAE; TAESD and cascade VAEs cannot give style statistics")
    quant = getattr(model, "quant_conv", None)
    if quant is not None and not isinstance(quant, nn.Module):
        quant = None

    def encode_moments(pixels: torch.Tensor):
        h = enc(pixels)
        if quant is not None:
            h = quant(h)
        return split_moments(h)

    return encode_moments


def _module_device_dtype(model: nn.Module):
    for p in model.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.float32


# ----------------------------------------------------------------------------------------
# style statistics
# ----------------------------------------------------------------------------------------
@dataclass
class StyleStats:
    """An image-derived style (ComfyUI type ATELIER_STYLE).

    mu, sigma: [C,h,w] float32, the latent mean / standard deviation maps averaged over
               the images (h = w = resolution / 8).
    channel_mean, channel_std: [C] float32, per-channel mean and standard deviation of the
               latent distribution of the whole set (all images, all positions, including
               the encoder's own variance): the target of the latent match.
    """
    mu: torch.Tensor
    sigma: torch.Tensor
    channel_mean: torch.Tensor
    channel_std: torch.Tensor
    count: int
    resolution: int = DEFAULT_RESOLUTION
    crop: str = "center"
    name: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def latent_channels(self) -> int:
        return int(self.mu.shape[0])

    def feature(self) -> torch.Tensor:
        """The adapter input [1, 2C, h, w] = cat([sigma, mu]) (sigma first, as the seed)."""
        return torch.cat([self.sigma, self.mu], dim=0).unsqueeze(0)

    def __repr__(self):  # shown in ComfyUI's debug output
        return (f"StyleStats(name={self.name!r}, images={self.count}, channels={self.latent_channels}, "
                f"res={self.resolution}, crop={self.crop})")


def style_from_moments(moments: Iterable[tuple[torch.Tensor, torch.Tensor]], *, resolution: int = DEFAULT_RESOLUTION,
                       crop: str = "center", name: str = "") -> StyleStats:
    """Average per-image (mean [1|B,C,h,w], logvar) pairs into a StyleStats.

    Sums are accumulated in float64, so the result does not depend on the order of the
    images (up to float64 rounding, far below float32 resolution)."""
    n = 0
    s_mu = s_sigma = s_m = s_m2 = None
    shape = None
    for mean, logvar in moments:
        mean, logvar = mean.detach().double(), logvar.detach().double()
        if mean.ndim == 3:
            mean, logvar = mean.unsqueeze(0), logvar.unsqueeze(0)
        if shape is None:
            shape = tuple(mean.shape[1:])
            s_mu = torch.zeros(shape, dtype=torch.float64)
            s_sigma = torch.zeros(shape, dtype=torch.float64)
            s_m = torch.zeros(shape[0], dtype=torch.float64)
            s_m2 = torch.zeros(shape[0], dtype=torch.float64)
        elif tuple(mean.shape[1:]) != shape:
            raise AtelierError(f"latent moments of shape {tuple(mean.shape[1:])} and {shape} cannot be averaged",
                               expected="every image encoded at the same working resolution")
        mean, logvar = mean.cpu(), logvar.cpu()
        var = torch.exp(logvar)
        s_mu += mean.sum(0)
        s_sigma += torch.exp(0.5 * logvar).sum(0)
        hw = mean.shape[2] * mean.shape[3]
        s_m += mean.sum(dim=(0, 2, 3)) / hw
        s_m2 += (mean * mean + var).sum(dim=(0, 2, 3)) / hw
        n += mean.shape[0]
    if n == 0:
        raise AtelierError("no style images were given", input="images",
                           expected="at least one reference image", fix="connect a LoadImage (or a batch) with the style's images")
    cm = s_m / n
    cstd = torch.sqrt(torch.clamp(s_m2 / n - cm * cm, min=0.0))
    return StyleStats(mu=(s_mu / n).float(), sigma=(s_sigma / n).float(), channel_mean=cm.float(),
                      channel_std=cstd.float(), count=n, resolution=resolution, crop=crop, name=name)


@torch.no_grad()
def encode_style(images, encode_moments: MomentsFn | nn.Module, *, resolution: int = DEFAULT_RESOLUTION,
                 crop: str = "center", batch_size: int = 4, device=None, dtype=None, name: str = "",
                 expected_channels: int | None = None, progress: Callable[[int, int], None] | None = None) -> StyleStats:
    """Compute a style from reference images.

    images: IMAGE batch [B,H,W,C] 0..1, or a list of such tensors / [H,W,C] images of any
            sizes (each is brought to `resolution` by the crop policy, see `prepare_image`).
    encode_moments: `f(pixels[-1..1] [N,3,R,R]) -> (mean, logvar)` or a module with
            `.encoder` / `.quant_conv` (ComfyUI's `vae.first_stage_model`, diffusers AutoencoderKL).
    device / dtype: where and in which dtype to run the encoder (default: the module's).
    expected_channels: if given, the VAE's latent channel count must equal it.
    progress: called as progress(done, total) after each batch."""
    if isinstance(encode_moments, nn.Module):
        mdev, mdt = _module_device_dtype(encode_moments)
        device = device if device is not None else mdev
        dtype = dtype if dtype is not None else mdt
        encode_moments = moments_fn_from_autoencoder(encode_moments)
    device = device if device is not None else torch.device("cpu")
    dtype = dtype if dtype is not None else torch.float32
    items = iter_images(images)
    if not items:
        raise AtelierError("no style images were given", input="images",
                           expected="at least one reference image", fix="connect a LoadImage (or a batch) with the style's images")
    total = len(items)
    batch_size = max(1, int(batch_size))

    def gen():
        for i in range(0, total, batch_size):
            px = torch.cat([prepare_image(im, resolution, crop) for im in items[i:i + batch_size]], 0)
            mean, logvar = encode_moments(px.to(device=device, dtype=dtype))
            if expected_channels is not None and mean.shape[1] != expected_channels:
                raise AtelierError(f"the VAE has {mean.shape[1]} latent channels, {expected_channels} were expected",
                                   input="vae", expected=f"a VAE with {expected_channels} latent channels",
                                   fix="use the VAE of the model family the style is for")
            yield mean.float(), logvar.float()
            if progress is not None:
                progress(min(i + batch_size, total), total)

    return style_from_moments(gen(), resolution=resolution, crop=crop, name=name)


def save_style(style: StyleStats, path) -> None:
    """Write a style as safetensors: tensors mu, sigma, channel_mean, channel_std and
    metadata (format, count, resolution, crop, name, latent_channels, user meta as JSON)."""
    from safetensors.torch import save_file
    tensors = {k: getattr(style, k).detach().cpu().float().contiguous()
               for k in ("mu", "sigma", "channel_mean", "channel_std")}
    meta = {"format": STYLE_FORMAT, "count": str(style.count), "resolution": str(style.resolution),
            "crop": style.crop, "name": style.name, "latent_channels": str(style.latent_channels),
            "feature": "cat([sigma, mu]) along channels", "meta": json.dumps(style.meta)}
    save_file(tensors, str(path), metadata=meta)


def _read(path, read: Reader | None, what: str, input: str) -> tuple[dict, dict]:
    """(tensors, safetensors metadata) of an Atelier file, read by ``read`` (default: core.weights.read_weights)."""
    try:
        sd, meta = (read or read_weights)(str(path))
    except AtelierError:
        raise
    except Exception as exc:
        raise AtelierError(f"cannot read {what} file '{path}': {exc}", input=input,
                           expected=f"a safetensors {what}",
                           fix=f"the file is damaged or not a {what}: write it again (Atelier Style Save, or "
                               "`atelier train-style` for adapters) or pick another file.") from exc
    return sd, dict(meta or {})


def load_style(path, read: Reader | None = None) -> StyleStats:
    """A style written by save_style; ``read`` reads the file (ComfyUI's nodes pass comfy.utils.load_torch_file)."""
    sd, meta = _read(path, read, "style", "style_file")
    need = {"mu", "sigma", "channel_mean", "channel_std"}
    if meta.get("format") != STYLE_FORMAT or not need <= set(sd):
        raise AtelierError(f"'{path}' is not an Atelier style file (format {meta.get('format')!r})",
                           input="style_file", expected=f"a file written by Atelier Style Save ({STYLE_FORMAT})",
                           fix="re-create the style with Atelier Style Encode and save it")
    # own copies: a loader may hand out tensors over a read-only memory map of the file (newer ComfyUI)
    t = {k: sd[k].clone() for k in need}
    return StyleStats(mu=t["mu"], sigma=t["sigma"], channel_mean=t["channel_mean"], channel_std=t["channel_std"],
                      count=int(meta.get("count", 0)), resolution=int(meta.get("resolution", DEFAULT_RESOLUTION)),
                      crop=meta.get("crop", "center"), name=meta.get("name", ""),
                      meta=json.loads(meta.get("meta") or "{}"))


# ----------------------------------------------------------------------------------------
# adapter
# ----------------------------------------------------------------------------------------
@dataclass
class AdapterConfig:
    """Architecture of a StyleAdapter, stored in the weights file's metadata.

    head: how the token maps [tokens, g, g] (g = feature_size/2) become [tokens, context_dim]:
      "reshape" - the seed's flatten, only valid when g*g == context_dim (SD2.x at 512: 32*32 = 1024);
      "linear"  - flatten then a Linear(g*g -> context_dim) head (SD1.5: 768, SDXL: 2048, or any
                  working resolution). `default_head` picks reshape when it fits, else linear."""
    context_dim: int = 1024
    latent_channels: int = 4
    hidden: int = 38
    tokens: int = 77
    feature_size: int = 64
    head: str = ""

    def __post_init__(self):
        if not self.head:
            self.head = default_head(self.context_dim, self.feature_size)
        if self.head not in ("reshape", "linear"):
            raise AtelierError(f"unknown adapter head '{self.head}'", expected="reshape or linear")
        g = self.grid
        if self.head == "reshape" and g * g != self.context_dim:
            raise AtelierError(f"the reshape head needs grid {g}x{g} = {g * g} to equal the context width {self.context_dim}",
                               expected="head='linear' for this width")

    @property
    def grid(self) -> int:
        return (self.feature_size + 1) // 2  # first conv has stride 2, padding 1

    def to_json(self) -> str:
        return json.dumps({k: getattr(self, k) for k in
                           ("context_dim", "latent_channels", "hidden", "tokens", "feature_size", "head")})

    @classmethod
    def from_json(cls, s: str) -> "AdapterConfig":
        d = json.loads(s)
        return cls(**{k: d[k] for k in ("context_dim", "latent_channels", "hidden", "tokens", "feature_size", "head") if k in d})


def default_head(context_dim: int, feature_size: int = 64) -> str:
    g = (feature_size + 1) // 2
    return "reshape" if g * g == context_dim else "linear"


def _gn(channels: int) -> nn.GroupNorm:
    # two groups: the input's sigma half and mu half are normalised separately; the hidden
    # layers (38 = 2 x 19) use the same grouping.
    return nn.GroupNorm(2 if channels % 2 == 0 else 1, channels, eps=1e-5)


class StyleAdapter(nn.Module):
    """The seed's style adapter: feature [B, 2C, S, S] -> tokens [B, 77, context_dim].

    GroupNorm -> SiLU -> Conv3x3(2C->38, stride 2) -> GroupNorm -> SiLU -> Conv3x3(38->38)
    -> GroupNorm -> SiLU -> Conv3x3(38->77) -> head (see AdapterConfig.head).
    The first conv is zero-initialised and every bias starts at zero, so a fresh adapter
    outputs exactly zero and leaves the conditioning unchanged."""

    def __init__(self, config: AdapterConfig | None = None, **kw):
        super().__init__()
        self.config = config or AdapterConfig(**kw)
        c = self.config
        cin = 2 * c.latent_channels
        self.norm_in = _gn(cin)
        self.conv_in = nn.Conv2d(cin, c.hidden, 3, stride=2, padding=1)
        self.norm_mid = _gn(c.hidden)
        self.conv_mid = nn.Conv2d(c.hidden, c.hidden, 3, padding=1)
        self.norm_out = _gn(c.hidden)
        self.conv_out = nn.Conv2d(c.hidden, c.tokens, 3, padding=1)
        self.proj = nn.Linear(c.grid * c.grid, c.context_dim) if c.head == "linear" else None
        nn.init.zeros_(self.conv_in.weight)
        for m in (self.conv_in, self.conv_mid, self.conv_out, self.proj):
            if m is not None:
                nn.init.zeros_(m.bias)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        c = self.config
        if feature.ndim == 3:
            feature = feature.unsqueeze(0)
        if feature.shape[1] != 2 * c.latent_channels:
            raise AtelierError(
                f"the style has {feature.shape[1] // 2} latent channels but the adapter was built for {c.latent_channels}",
                input="style", expected=f"a style encoded with a {c.latent_channels}-channel VAE",
                fix="encode the style with the VAE of the model family this adapter was trained for")
        if feature.shape[-1] != c.feature_size or feature.shape[-2] != c.feature_size:
            # a style computed at another working resolution: area-resample to the trained size
            feature = F.interpolate(feature, size=(c.feature_size, c.feature_size), mode="area")
        x = self.conv_in(F.silu(self.norm_in(feature)))
        x = self.conv_mid(F.silu(self.norm_mid(x)))
        x = self.conv_out(F.silu(self.norm_out(x)))  # [B, tokens, g, g]
        x = x.flatten(2)
        if self.proj is not None:
            x = self.proj(x)
        return x  # [B, tokens, context_dim]


def save_adapter(adapter: StyleAdapter, path, extra_meta: dict | None = None) -> None:
    from safetensors.torch import save_file
    sd = {k: v.detach().cpu().float().contiguous() for k, v in adapter.state_dict().items()}
    meta = {"format": ADAPTER_FORMAT, "config": adapter.config.to_json(),
            "default_strength": str(DEFAULT_STRENGTH)}
    for k, v in (extra_meta or {}).items():
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v)
    save_file(sd, str(path), metadata=meta)


def load_adapter(path, device="cpu", read: Reader | None = None) -> StyleAdapter:
    """A style adapter with its config from the file's metadata; ``read`` reads the file (ComfyUI's nodes
    pass comfy.utils.load_torch_file)."""
    sd, meta = _read(path, read, "adapter", "adapter_name")
    if meta.get("format") != ADAPTER_FORMAT or "config" not in meta:
        raise AtelierError(f"'{path}' is not an Atelier style adapter (format {meta.get('format')!r})",
                           input="adapter_name", expected=f"a file written by the style trainer ({ADAPTER_FORMAT})",
                           fix="pick a style adapter file, not a LoRA or checkpoint")
    adapter = StyleAdapter(AdapterConfig.from_json(meta["config"]))
    missing, unexpected = adapter.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise AtelierError(f"adapter file '{path}' does not match its config (missing {missing[:3]}, unexpected {unexpected[:3]})",
                           input="adapter_name", fix="re-export the adapter with the trainer")
    return adapter.to(device).eval()


# ----------------------------------------------------------------------------------------
# conditioning blend
# ----------------------------------------------------------------------------------------
def style_tokens(adapter: StyleAdapter, style: StyleStats, device=None, dtype=None) -> torch.Tensor:
    """[1, tokens, context_dim] style tokens for `style`."""
    p = next(adapter.parameters())
    with torch.no_grad():
        t = adapter(style.feature().to(device=p.device, dtype=p.dtype))
    return t.to(device=device or t.device, dtype=dtype or t.dtype)


def blend_tokens(cond: torch.Tensor, tokens: torch.Tensor, strength: float = DEFAULT_STRENGTH) -> torch.Tensor:
    """cond [B,T,D] + strength * tokens [1|B, N, D], the N style tokens repeated along T
    (a long prompt of T = k*77 tokens gets the style added to every 77-token chunk; a T that
    is not a multiple is cut). strength 0 returns `cond` itself."""
    if cond.ndim != 3:
        raise AtelierError(f"the conditioning tensor has shape {tuple(cond.shape)}", input="conditioning",
                           expected="[batch, tokens, width] text conditioning (CLIPTextEncode output)")
    if tokens.shape[-1] != cond.shape[-1]:
        raise AtelierError(
            f"the style adapter was built for a context width of {tokens.shape[-1]} but this conditioning has width {cond.shape[-1]}",
            input="adapter", expected=f"an adapter for width {cond.shape[-1]} "
                                      f"(SD1.5: 768, SD2.x: 1024, SDXL: 2048)",
            fix="load the adapter trained for this checkpoint's model family")
    if strength == 0:
        return cond
    T, N = cond.shape[1], tokens.shape[1]
    reps = -(-T // N)
    add = tokens.repeat(1, reps, 1)[:, :T].to(device=cond.device, dtype=cond.dtype)
    return cond + float(strength) * add


def blend_conditioning(conditioning: list, tokens: torch.Tensor, strength: float = DEFAULT_STRENGTH) -> list:
    """ComfyUI CONDITIONING (list of [tensor, dict]) -> new list; every entry's tensor is
    blended, its dict is copied with every key (pooled_output included) left as it was."""
    out = []
    for i, item in enumerate(conditioning):
        if not isinstance(item, (list, tuple)) or len(item) < 2 or not isinstance(item[0], torch.Tensor):
            raise AtelierError(f"conditioning entry {i} is not a [tensor, dict] pair", input="conditioning",
                               expected="CONDITIONING from a text encoder node")
        out.append([blend_tokens(item[0], tokens, strength), dict(item[1])] + list(item[2:]))
    return out


# ----------------------------------------------------------------------------------------
# training-free: latent AdaIN
# ----------------------------------------------------------------------------------------
def match_latent_stats(latent: torch.Tensor, target_mean: torch.Tensor, target_std: torch.Tensor,
                       strength: float = 1.0, eps: float = 1e-6) -> torch.Tensor:
    """Latent AdaIN: per sample and channel, (x - mean) / std * target_std + target_mean,
    blended with the input by `strength` (0 = input unchanged, 1 = exact match).

    latent [B,C,...] (any number of trailing spatial/temporal dims); target_mean/std [C].
    Statistics are population statistics over all positions of one sample. A channel
    that is constant (std < eps, e.g. an empty latent) becomes the target mean: a
    variance cannot be made from nothing."""
    if latent.ndim < 3:
        raise AtelierError(f"the latent has shape {tuple(latent.shape)}", input="samples",
                           expected="LATENT samples [B, C, H, W]")
    C = latent.shape[1]
    if target_mean.numel() != C:
        raise AtelierError(
            f"the style has {target_mean.numel()} latent channels but the latent has {C}",
            input="style", expected=f"a style encoded with a {C}-channel VAE (the model's own VAE)",
            fix="encode the style with the VAE that belongs to this checkpoint")
    if strength == 0:
        return latent
    x = latent.float()
    dims = tuple(range(2, x.ndim))
    shape = (1, C) + (1,) * (x.ndim - 2)
    # two-pass mean / variance (torch.std_mean is far slower on CPU builds for this layout)
    m = x.mean(dim=dims, keepdim=True)
    d = x - m
    s = (d * d).mean(dim=dims, keepdim=True).sqrt()
    tm = target_mean.to(x).reshape(shape)
    ts = target_std.to(x).reshape(shape)
    # matched = (x - m) / s * ts + tm = x * scale + (tm - m * scale); a flat channel gets scale 0 (-> tm)
    scale = torch.where(s < eps, torch.zeros_like(s), ts / s.clamp_min(eps))
    shift = tm - m * scale
    st = float(strength)
    if st != 1.0:  # x + st * (matched - x), folded into one scale and shift
        scale = (1.0 - st) + st * scale
        shift = st * shift
    out = torch.addcmul(shift, x, scale)
    return out.to(latent.dtype)


def affine_stats(target_mean: torch.Tensor, target_std: torch.Tensor, process_in: Callable[[torch.Tensor], torch.Tensor]):
    """Carry raw-latent channel statistics through a per-channel affine latent transform
    (a model's latent_format.process_in, e.g. x * 0.18215 for SD1.5) -> (mean, std) in the
    model's space."""
    C = target_mean.numel()
    zero = torch.zeros(1, C, 1, 1)
    one = torch.ones(1, C, 1, 1)
    b = process_in(zero).reshape(-1)[:C].float()
    a = process_in(one).reshape(-1)[:C].float() - b
    return a * target_mean.float() + b, a.abs() * target_std.float()
