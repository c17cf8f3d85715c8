"""LAION aesthetic predictor (v1 linear head, v2 linearMSE / reluMSE heads) on CLIP image embeddings.

Score = head(e / |e|), where e is the *projected* CLIP ViT-L/14 image embedding
(`image_embeds` of transformers' CLIPVisionModelWithProjection, `image_embeds` of ComfyUI's
CLIP_VISION output). LAION's scale is roughly 1..10; the story gate rejects sets with mean < 6.

Head layouts (state-dict keys as published; a `layers.` / `predictor.` prefix inside a full
predictor checkpoint is recognised):

- ``v2_linear``  sac+logos+ava1-l14-linearMSE.pth and friends: Linear(D,1024) Dropout Linear(1024,128)
  Dropout Linear(128,64) Dropout Linear(64,16) Linear(16,1) -> keys layers.{0,2,4,6,7}.{weight,bias}
- ``v2_relu``    ava+logos-l14-reluMSE.pth: same sizes with ReLU after the first four linears
  -> keys layers.{0,3,6,9,11}.{weight,bias}
- ``v1_linear``  sa_0_4_vit_l_14_linear.pth: Linear(D,1) -> keys weight, bias (predictor.* in the HF layout)

Embedding sources:
(a) a Hugging Face-format directory as published by simple-aesthetics-predictor (config.json +
    model.safetensors / pytorch_model.bin holding vision_model.*, visual_projection.weight and the
    head), loaded with transformers' CLIPVisionConfig / CLIPVisionModelWithProjection (no remote code);
(b) any CLIP vision encoder that maps [B,224,224,3] 0..1 crops to projected embeddings (ComfyUI's
    CLIP_VISION; the node layer does that wiring, this module never imports ComfyUI).

Pre-processing is identical to CLIPProcessor's PIL path (the classic CLIPImageProcessor): the image
is turned into 8-bit RGB the way ComfyUI's SaveImage writes it (clip, x255, truncate), RGBA is
composited on white and grayscale expanded (as transformers' convert_to_rgb does), the short side
is resized to 224 with PIL bicubic (long side int(224*long/short)), centre-cropped to 224x224
(offset (size-224)//2), scaled by 1/255 and normalised with CLIP's mean/std.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .budget import check_size
from .errors import AtelierError
# ranking, selection and verdict text (shared with the read-back family), re-exported for this family's callers
from .selection import compare_text, gate, keep_or_best, order_by_score, select  # noqa: F401
from .images import strip_rows, to_uint8, to_uint8_into
from .parallel import cpus, pool
from .weights import Reader, read_weights

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: layout name -> (state-dict linear indices under `layers.`, ReLU between linears)
V2_LAYOUTS = {
    "v2_linear": ((0, 2, 4, 6, 7), False),
    "v2_relu": ((0, 3, 6, 9, 11), True),
}
V2_HIDDEN = (1024, 128, 64, 16, 1)
HEAD_FILE_EXTENSIONS = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _err(problem, *, node=None, input=None, expected=None, fix=None):
    return AtelierError(problem, node=node, input=input, expected=expected, fix=fix)


# --------------------------------------------------------------------------- heads
class AestheticHead(torch.nn.Module):
    """The LAION head: normalises the embedding (L2) then applies the linear stack.

    forward(embeds [B, D] any float dtype) -> scores [B] float32.
    """

    def __init__(self, layout: str, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]):
        super().__init__()
        self.layout = layout
        self.relu = V2_LAYOUTS.get(layout, ((), False))[1]
        # own copies: a loader may hand out tensors over a read-only memory map of the file (newer ComfyUI)
        self.weights = torch.nn.ParameterList([torch.nn.Parameter(w.detach().to(torch.float32, copy=True).contiguous(),
                                                                  requires_grad=False) for w in weights])
        self.biases = torch.nn.ParameterList([torch.nn.Parameter(b.detach().to(torch.float32, copy=True).contiguous(),
                                                                 requires_grad=False) for b in biases])

    @property
    def in_dim(self) -> int:
        return int(self.weights[0].shape[1])

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        x = embeds.to(self.weights[0].device, torch.float32)
        x = x / x.norm(dim=-1, keepdim=True)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = F.linear(x, w, b)
            if self.relu and i < last:
                x = torch.relu(x)
        return x[:, 0]

    def state_dict_published(self) -> dict:
        """State dict in the published key layout (for saving / round trips)."""
        if self.layout == "v1_linear":
            return {"weight": self.weights[0].data.clone(), "bias": self.biases[0].data.clone()}
        idx = V2_LAYOUTS[self.layout][0]
        out = {}
        for i, w, b in zip(idx, self.weights, self.biases):
            out[f"layers.{i}.weight"] = w.data.clone()
            out[f"layers.{i}.bias"] = b.data.clone()
        return out


def _strip_head_keys(sd: dict) -> dict:
    """Keep only head tensors, normalising the prefixes used by the known layouts."""
    keys = list(sd.keys())
    # full simple-aesthetics-predictor checkpoint, or a Lightning/`model.` wrapped head
    for pre in ("model.", "module.", "mlp."):
        if keys and all(k.startswith(pre) for k in keys):
            sd = {k[len(pre):]: v for k, v in sd.items()}
            keys = list(sd.keys())
    if any(k.startswith("layers.") for k in keys):
        return {k: v for k, v in sd.items() if k.startswith("layers.")}
    if any(k.startswith("predictor.") for k in keys):
        return {k[len("predictor."):]: v for k, v in sd.items() if k.startswith("predictor.")}
    return dict(sd)


def head_from_state_dict(sd: dict, *, source: str = "head", node: str | None = None,
                         input: str | None = None) -> AestheticHead:
    """Build an AestheticHead from a published state dict; refuses unknown keys or wrong shapes."""
    if not isinstance(sd, dict) or not sd:
        raise _err(f"{source} does not contain a state dict (got {type(sd).__name__}).", node=node, input=input,
                   expected="a LAION aesthetic head (.pth or .safetensors) with keys layers.N.weight/bias or weight/bias",
                   fix="use sac+logos+ava1-l14-linearMSE.pth, ava+logos-l14-reluMSE.pth or sa_0_4_vit_l_14_linear.pth.")
    if "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    sd = _strip_head_keys(sd)
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise _err(f"{source} has non-tensor entries {bad[:4]}.", node=node, input=input,
                   expected="a plain state dict of tensors", fix="save the head with torch.save(model.state_dict()).")
    keys = set(sd.keys())
    fix = ("use a LAION aesthetic head: sac+logos+ava1-l14-linearMSE.pth (v2 linear), ava+logos-l14-reluMSE.pth "
           "(v2 relu) or sa_0_4_vit_l_14_linear.pth (v1), or a simple-aesthetics-predictor model directory.")
    layout = None
    if keys == {"weight", "bias"}:
        layout, idx = "v1_linear", None
    else:
        for name, (idx_, _relu) in V2_LAYOUTS.items():
            want = {f"layers.{i}.{p}" for i in idx_ for p in ("weight", "bias")}
            if keys == want:
                layout, idx = name, idx_
                break
    if layout is None:
        shown = ", ".join(sorted(keys)[:12]) + (" ..." if len(keys) > 12 else "")
        raise _err(f"{source} has keys [{shown}], which match no known aesthetic head layout.", node=node, input=input,
                   expected="keys layers.{0,2,4,6,7}.weight/bias (v2 linearMSE), layers.{0,3,6,9,11}.weight/bias "
                            "(v2 reluMSE) or weight/bias (v1 linear)", fix=fix)
    if layout == "v1_linear":
        ws, bs, outs = [sd["weight"]], [sd["bias"]], (1,)
    else:
        ws = [sd[f"layers.{i}.weight"] for i in idx]
        bs = [sd[f"layers.{i}.bias"] for i in idx]
        outs = V2_HIDDEN
    prev = None
    for n, (w, b, o) in enumerate(zip(ws, bs, outs)):
        want_in = prev if prev is not None else (w.shape[1] if w.ndim == 2 else -1)
        if w.ndim != 2 or w.shape[0] != o or w.shape[1] != want_in or tuple(b.shape) != (o,):
            raise _err(f"{source} ({layout}) linear {n} has weight {tuple(w.shape)} and bias {tuple(b.shape)}.",
                       node=node, input=input,
                       expected=f"weight ({o}, {want_in if prev is not None else 'D'}) and bias ({o},) "
                                f"(hidden sizes {outs})", fix=fix)
        prev = o
    if not all(torch.is_floating_point(t) for t in ws + bs):
        raise _err(f"{source} has non-float tensors.", node=node, input=input, expected="float weights", fix=fix)
    return AestheticHead(layout, ws, bs)


def load_head_file(path: str, *, node: str | None = None, input: str | None = None,
                   read: Reader | None = None) -> AestheticHead:
    """Load a head from .safetensors or .pth/.pt/.bin, read by ``read`` (default: core.weights.read_weights,
    torch.load weights_only=True; ComfyUI's nodes pass comfy.utils.load_torch_file)."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise _err(f"head file '{path}' does not exist.", node=node, input=input,
                   fix="put the head in ComfyUI/models/aesthetic/.")
    try:
        sd, _ = (read or read_weights)(path)
    except AtelierError:
        raise
    except Exception as exc:  # corrupt file, pickle with code, truncated download
        raise _err(f"could not read head file '{name}': {type(exc).__name__}: {exc}", node=node, input=input,
                   expected="a .safetensors file or a .pth state dict loadable with weights_only=True",
                   fix="download the file again; convert pickled full models to a plain state dict.") from exc
    return head_from_state_dict(sd, source=f"head file '{name}'", node=node, input=input)


# --------------------------------------------------------------------------- pre-processing
def to_uint8_rgb(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """ComfyUI IMAGE [B,H,W,C] (or [H,W,C]) float 0..1 -> the uint8 RGB [B,H,W,3] a CLIP processor reads
    from the PNG that ComfyUI's Save Image writes of it, so an image scores the same in the graph as saved.

    The 8-bit values are core.images.to_uint8's (Save Image: x255, clip, truncate); gray is expanded; gray+alpha
    and RGBA are laid on white *in 8 bit* with the saved alpha, as transformers' convert_to_rgb does with the
    PNG (PIL alpha_composite, rounded), which a float composite before truncation would miss by one level.
    """
    a = images.detach() if isinstance(images, torch.Tensor) else np.asarray(images)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] not in (1, 2, 3, 4):
        raise _err(f"image array has shape {tuple(a.shape)}.", expected="[B,H,W,C] with 1, 2, 3 or 4 channels")
    # numpy only (called per image from a thread pool): small torch ops would start OpenMP regions
    u8 = to_uint8(a)
    c = u8.shape[-1]
    if c == 3:
        return np.ascontiguousarray(u8)
    if c == 1:
        return np.repeat(u8, 3, axis=-1)
    rgb = u8[..., :-1] if c == 4 else np.repeat(u8[..., :1], 3, axis=-1)
    alpha = u8[..., -1:].astype(np.uint16)
    # PIL alpha_composite on an opaque white background: out = (c*a + 255*(255-a)) / 255, rounded
    return ((rgb.astype(np.uint16) * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def crop_resize_size(h: int, w: int, size: int = 224, n: int = 0, node: str | None = None) -> tuple[int, int]:
    """(height, width) CLIPProcessor resizes an h x w image to (short side ``size``), checked against the
    size budget before the resize allocates it (a 1 x 20000 image would become 224 x 4,480,000)."""
    nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    check_size(nh, nw, channels=3, bytes_per_value=1, node=node, input="images",
               what=f"image {n} ({w:,} x {h:,}) resized to a {size} px short side for CLIP",
               fix="crop the image to a less extreme aspect ratio before scoring it.")
    return nh, nw


def _rgb_uint8(item, n: int = 0) -> np.ndarray:
    """One image (float [H,W,C] 0..1 array/tensor, or uint8 [H,W,3]) -> uint8 RGB [H,W,3]: to_uint8_rgb's
    values (Save Image's 8 bits, composited on white), converted in row chunks."""
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 3 and item.shape[-1] == 3:
        return item
    if item.ndim != 3:
        raise _err(f"image {n} has shape {tuple(item.shape)}.", expected="[H,W,C] with 1, 2, 3 or 4 channels")
    h, w = int(item.shape[0]), int(item.shape[1])
    out = np.empty((h, w, 3), dtype=np.uint8)
    if isinstance(item, np.ndarray) and item.shape[-1] == 3:  # the common case: straight into the output
        return to_uint8_into(item, out)
    k = strip_rows(item)  # chunks whose float temporaries stay in the CPU cache (core.images.strip_rows)
    for r in range(0, h, k):
        out[r:r + k] = to_uint8_rgb(item[r:r + k])[0]
    return out


def _pil_rgbx(item, n: int = 0) -> Image.Image:
    """One image -> a PIL image over a 4-byte-per-pixel buffer (what PIL stores RGB as), with _rgb_uint8's
    values in its first three bytes. A float RGB image is converted a chunk of rows at a time straight into
    that buffer (the uint8 chunk stays in cache: no full-size RGB copy is written and read back); PIL then
    uses the buffer as is (Image.fromarray would unpack an RGB array again). PIL resamples each band on its
    own, so an RGBX resize gives the RGB resize's bytes in its first three."""
    h, w = int(item.shape[0]), int(item.shape[1])
    rgbx = np.empty((h, w, 4), np.uint8)
    if isinstance(item, np.ndarray) and item.dtype == np.float32 and item.ndim == 3 and item.shape[-1] == 3:
        to_uint8_into(item, rgbx, convert=cv2.COLOR_RGB2RGBA)
    else:
        cv2.cvtColor(np.ascontiguousarray(_rgb_uint8(item, n)), cv2.COLOR_RGB2RGBA, dst=rgbx)
    return Image.frombuffer("RGBX", (w, h), rgbx, "raw", "RGBX", 0, 1)


def _crop_one(item, size: int, n: int = 0, node: str | None = None) -> np.ndarray:
    h, w = int(item.shape[0]), int(item.shape[1])
    nh, nw = crop_resize_size(h, w, size, n, node)
    top, left = (nh - size) // 2, (nw - size) // 2
    if top < 0 or left < 0 or nh < size or nw < size:
        raise _err(f"image {n} ({w}x{h}) cannot be cropped to {size}x{size}.")
    if (nh, nw) == (h, w):
        return _rgb_uint8(item, n)[top:top + size, left:left + size]
    f = np.asarray(_pil_rgbx(item, n).resize((nw, nh), resample=Image.BICUBIC))
    return f[top:top + size, left:left + size, :3]


def crop_threads(n_images: int) -> int:
    """How many threads clip_crops uses for n images: one per CPU this process may run on (at most 8), never
    more than the images. ATELIER_CLIP_THREADS overrides it (1 = in the calling thread)."""
    env = os.environ.get("ATELIER_CLIP_THREADS", "").strip()
    want = int(env) if env.isdigit() and int(env) > 0 else cpus()
    return max(1, min(n_images, want, 8))


def _in_threads(fn, items: list) -> list:
    """[fn(x) for x in items], in the pack's thread pool when crop_threads allows more than one."""
    if crop_threads(len(items)) > 1:
        return list(pool().map(fn, items))
    return [fn(x) for x in items]


def clip_crops(images, size: int = 224, node: str | None = None, first: int = 0) -> torch.Tensor:
    """Resize (short side `size`, PIL bicubic) and centre-crop like CLIPProcessor.

    images: IMAGE tensor [B,H,W,C] 0..1, a uint8 array, or a list of those / of PIL images
    (mixed sizes allowed). Returns uint8 crops [B,size,size,3] as a torch tensor. Images are
    converted and resized in parallel threads (crop_threads; the result does not depend on it). An image whose
    resize would exceed the size budget raises an AtelierError naming ``node`` and its index (``first`` + position).
    """
    if isinstance(images, (list, tuple)):
        items = []
        for im in images:
            if isinstance(im, Image.Image):
                items.append(np.asarray(im.convert("RGB")))
            elif getattr(im, "ndim", 0) == 4:
                items.extend(im[i] for i in range(im.shape[0]))
            else:
                items.append(im)
    else:
        if getattr(images, "ndim", 0) == 3:
            images = images[None]
        items = [images[i] for i in range(images.shape[0])]
    # float32 tensors are read through numpy views (no copy, and no torch op inside the worker threads)
    items = [(it.detach().cpu().numpy() if it.dtype == torch.float32 else it.detach().cpu())
             if isinstance(it, torch.Tensor) else it for it in items]
    if not items:
        return torch.empty((0, size, size, 3), dtype=torch.uint8)
    out = np.empty((len(items), size, size, 3), np.uint8)

    def one(n_item):
        n, item = n_item
        out[n] = _crop_one(item, size, first + n, node)

    _in_threads(one, list(enumerate(items)))
    return torch.from_numpy(out)


def _normalize_luts() -> np.ndarray:
    """[3, 256] float32: for each channel and 8-bit value, (v * (1/255) - mean) / std computed in float32, one
    rounding per operation, in CLIPProcessor's order: the values torch's elementwise mul, sub and div give."""
    v = np.arange(256, dtype=np.float32) * np.float32(1.0 / 255.0)
    mean = np.asarray(CLIP_MEAN, np.float32)[:, None]
    std = np.asarray(CLIP_STD, np.float32)[:, None]
    return ((v[None, :] - mean) / std).astype(np.float32)


_NORMALIZE_LUTS = _normalize_luts()


def normalize_crops(crops_u8: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """uint8 [B,S,S,3] -> normalised pixel_values [B,3,S,S] (CLIP mean/std): x * (1/255), minus the mean,
    divided by the std, in float32 and in that order (CLIPProcessor's rescale then normalize). Done as one
    256-entry table per channel (_normalize_luts: the same float32 values), one image per thread, which is
    ~8x cheaper than elementwise torch ops on a batch of 8."""
    t = crops_u8 if isinstance(crops_u8, torch.Tensor) else torch.from_numpy(np.asarray(crops_u8))
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise _err(f"crops are {t.dtype} {tuple(t.shape)}.", expected="uint8 crops [B,S,S,3] (clip_crops' output)")
    a = np.ascontiguousarray(t.detach().cpu().numpy())
    b = a.shape[0]
    out = np.empty((b, 3) + a.shape[1:3], np.float32)

    def one(i):
        for c, plane in enumerate(cv2.split(a[i])):
            dst = out[i, c]
            if cv2.LUT(plane, _NORMALIZE_LUTS[c].reshape(1, 256), dst=dst) is not dst:  # reallocated (never expected)
                dst[...] = cv2.LUT(plane, _NORMALIZE_LUTS[c].reshape(1, 256))

    _in_threads(one, list(range(b)))
    x = torch.from_numpy(out)
    return x if dtype == torch.float32 else x.to(dtype)


def clip_pixel_values(images, size: int = 224) -> torch.Tensor:
    """Same as CLIPProcessor(images=...)["pixel_values"] for 8-bit RGB inputs."""
    return normalize_crops(clip_crops(images, size))


# --------------------------------------------------------------------------- HF predictor (path a)
def is_hf_predictor_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")) and any(
        os.path.isfile(os.path.join(path, f)) for f in HF_WEIGHT_FILES)


def hf_weights_file(path: str) -> str:
    """The weights file of a predictor folder: model.safetensors, else pytorch_model.bin."""
    for f in HF_WEIGHT_FILES:
        if os.path.isfile(os.path.join(path, f)):
            return os.path.join(path, f)
    return os.path.join(path, HF_WEIGHT_FILES[-1])


def _read_hf_state_dict(path: str, read: Reader | None = None, *, name: str = "", node=None, input=None) -> dict:
    weights = hf_weights_file(path)
    try:
        sd, _ = (read or read_weights)(weights)
    except AtelierError as exc:
        if name and f"'{name}'" in exc.problem:
            raise
        raise _err(f"'{os.path.basename(weights)}' in model folder '{name}': {exc.problem}", node=exc.node or node,
                   input=exc.input or input, expected=exc.expected, fix=exc.fix) from exc
    except Exception as exc:  # a pickle with code in it (refused by weights_only), a truncated file, ...
        raise _err(f"could not read '{os.path.basename(weights)}' in model folder '{name}': {type(exc).__name__}: "
                   f"{str(exc)[:300]}", node=node, input=input,
                   expected="a complete model.safetensors (or a pytorch_model.bin loadable with weights_only=True)",
                   fix="download the model folder again.") from exc
    return sd


@dataclass
class AestheticModel:
    """What the loader node hands to the scorer: a head, plus a CLIP vision tower for path (a).

    clip: transformers CLIPVisionModelWithProjection or None (then a ComfyUI CLIP_VISION is needed).
    """
    head: AestheticHead
    clip: torch.nn.Module | None = None
    image_size: int = 224
    name: str = ""
    source: str = ""
    info: dict = field(default_factory=dict)

    @property
    def has_clip(self) -> bool:
        return self.clip is not None

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [B,3,S,S] normalised -> projected image embeddings [B,D] (not normalised)."""
        if self.clip is None:
            raise _err(f"aesthetic model '{self.name}' is a head only and has no CLIP vision tower.",
                       expected="a CLIP vision encoder", fix="connect a Load CLIP Vision node (ViT-L/14).")
        p = next(self.clip.parameters())
        with torch.inference_mode():
            out = self.clip(pixel_values=pixel_values.to(p.device, p.dtype))
        emb = out.image_embeds if hasattr(out, "image_embeds") else out[0]
        return emb.float()

    def scores_from_embeddings(self, embeds: torch.Tensor, *, node=None, input=None) -> torch.Tensor:
        if embeds.ndim != 2 or embeds.shape[1] != self.head.in_dim:
            raise _err(f"the CLIP image embedding has size {tuple(embeds.shape[1:])} but the aesthetic head "
                       f"'{self.name}' expects {self.head.in_dim}.", node=node, input=input,
                       expected=f"a CLIP vision model whose projection dim is {self.head.in_dim} "
                                "(ViT-L/14 -> 768 for the LAION heads)",
                       fix="load the CLIP ViT-L/14 vision model (e.g. clip_vision_vit_l.safetensors / "
                           "openai clip-vit-large-patch14), not ViT-H or ViT-G.")
        with torch.inference_mode():
            return self.head(embeds.to(self.head.weights[0].device)).float().cpu()

    def image_embeddings(self, images, *, batch_size: int = 8,
                         progress: Callable[[int, int], None] | None = None,
                         embed_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                         node=None, input=None) -> torch.Tensor:
        """Projected CLIP image embeddings [B,D] float32 on the CPU (not normalised) of images (IMAGE
        [B,H,W,C] 0..1, or a list), pre-processed exactly as for scoring (the CLIPProcessor crops).

        embed_fn, if given, maps uint8 crops [b,S,S,3] -> embeddings [b,D] (path b); otherwise the
        bundled CLIP tower is used (path a). progress(done, total) is called after each chunk.
        """
        n = len(images) if isinstance(images, (list, tuple)) else int(images.shape[0])
        if n == 0:
            raise _err("the image batch is empty.", node=node, input=input, expected="at least one image")
        if embed_fn is None and self.clip is None:
            raise _err(f"aesthetic model '{self.name}' is a head only (no CLIP vision inside).", node=node,
                       input="clip_vision", expected="a CLIP_VISION input (CLIP ViT-L/14)",
                       fix="add Load CLIP Vision with the ViT-L/14 vision model and connect it to clip_vision, "
                           "or load a simple-aesthetics-predictor model directory instead.")
        out = []
        step = max(1, int(batch_size))
        for s in range(0, n, step):
            crops = clip_crops(images[s:s + step], self.image_size, node=node, first=s)
            emb = embed_fn(crops) if embed_fn is not None else self.embed(normalize_crops(crops))
            out.append(emb.float().cpu())
            if progress is not None:
                progress(min(s + step, n), n)
        return torch.cat(out)

    def score(self, images, *, batch_size: int = 8,
              progress: Callable[[int, int], None] | None = None,
              embed_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
              node=None, input=None) -> torch.Tensor:
        """Score images (IMAGE [B,H,W,C] 0..1, or a list). Returns float32 scores [B] on the CPU.

        embed_fn: see image_embeddings (path b); without it the bundled CLIP tower is used (path a).
        """
        emb = self.image_embeddings(images, batch_size=batch_size, progress=progress, embed_fn=embed_fn,
                                    node=node, input=input)
        return self.scores_from_embeddings(emb, node=node, input=input)


def load_hf_predictor(path: str, *, node: str | None = None, input: str | None = None,
                      name: str | None = None, read: Reader | None = None) -> AestheticModel:
    """Load a simple-aesthetics-predictor directory (config.json + weights) with transformers' CLIP classes;
    the weights file is read by ``read`` (default: core.weights.read_weights)."""
    name = name or os.path.basename(os.path.normpath(path))
    if not is_hf_predictor_dir(path):
        raise _err(f"'{path}' is not a Hugging Face model directory.", node=node, input=input,
                   expected="a folder with config.json and model.safetensors (or pytorch_model.bin)",
                   fix="download the whole shunk031/aesthetics-predictor-v2-* repository folder into "
                       "ComfyUI/models/aesthetic/.")
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    cfg_fix = ("download config.json of the model folder again (the whole shunk031/aesthetics-predictor-v2-* "
               "repository folder; config.json and the weights must come from the same repository).")
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _err(f"could not read 'config.json' in model folder '{name}': {type(exc).__name__}: "
                   f"{str(exc)[:200]}", node=node, input=input,
                   expected="a JSON object (a CLIPVisionConfig, model_type 'clip_vision_model')", fix=cfg_fix) from exc
    if not isinstance(raw, dict):
        raise _err(f"'config.json' in model folder '{name}' holds a JSON {type(raw).__name__}, not an object.",
                   node=node, input=input, expected="a JSON object (a CLIPVisionConfig)", fix=cfg_fix)
    if raw.get("model_type") not in (None, "clip_vision_model"):
        # a full CLIP config (text + vision) also works: take its vision part
        if "vision_config" not in raw:
            raise _err(f"config.json in '{name}' has model_type '{raw.get('model_type')}'.", node=node, input=input,
                       expected="model_type 'clip_vision_model' (simple-aesthetics-predictor layout)",
                       fix="use an aesthetics-predictor-v1/v2 model folder.")
    try:
        config = CLIPVisionConfig.from_pretrained(path)
        dims = (int(config.image_size), int(config.projection_dim), int(config.hidden_size))
    except Exception as exc:  # wrong types or values in an otherwise valid JSON
        raise _err(f"'config.json' in model folder '{name}' is not a usable CLIP vision config: "
                   f"{type(exc).__name__}: {str(exc)[:200]}", node=node, input=input,
                   expected="a CLIPVisionConfig (image_size, hidden_size, projection_dim, ... as integers)",
                   fix=cfg_fix) from exc
    if min(dims) <= 0:
        raise _err(f"'config.json' in model folder '{name}' has image_size/projection_dim/hidden_size {dims}.",
                   node=node, input=input, expected="positive sizes", fix=cfg_fix)
    sd = _read_hf_state_dict(path, read, name=name, node=node, input=input)
    head = head_from_state_dict(sd, source=f"model folder '{name}'", node=node, input=input)
    clip_sd = {k: v for k, v in sd.items() if not k.startswith(("layers.", "predictor."))}
    import transformers
    prev = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        clip = CLIPVisionModelWithProjection(config)
    finally:
        transformers.logging.set_verbosity(prev)
    missing, unexpected = clip.load_state_dict(clip_sd, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    if missing or unexpected:
        raise _err(f"model folder '{name}' does not match its config.json: missing {missing[:4]}, unexpected "
                   f"{unexpected[:4]}.", node=node, input=input,
                   expected="vision_model.* and visual_projection.weight for the configured CLIP vision model",
                   fix="download the model folder again (config.json and weights must come from the same repository).")
    clip = clip.float().eval().requires_grad_(False)
    if head.in_dim != config.projection_dim:
        raise _err(f"head input size {head.in_dim} != CLIP projection_dim {config.projection_dim} in '{name}'.",
                   node=node, input=input, fix="download the model folder again.")
    return AestheticModel(head=head, clip=clip, image_size=int(config.image_size), name=name, source=path,
                          info={"layout": head.layout, "projection_dim": config.projection_dim})


def load_aesthetic_model(path: str, *, node: str | None = None, input: str | None = None,
                         read: Reader | None = None) -> AestheticModel:
    """A model folder (path a) or a head file (path b); ``read`` reads the weights (see core.weights)."""
    if os.path.isdir(path):
        return load_hf_predictor(path, node=node, input=input, read=read)
    head = load_head_file(path, node=node, input=input, read=read)
    return AestheticModel(head=head, clip=None, name=os.path.basename(path), source=path,
                          info={"layout": head.layout})


# --------------------------------------------------------------------------- set logic
def format_report(scores: Sequence[float], threshold: float | None = None, title: str = "aesthetic scores") -> str:
    """Readable multi-line report: one line per image, then mean / min / max (and the gate verdict)."""
    s = [float(x) for x in scores]
    lines = [f"{title} (LAION scale, {len(s)} image{'s' if len(s) != 1 else ''}):"]
    rank = {i: r + 1 for r, i in enumerate(order_by_score(s))}
    for i, v in enumerate(s):
        mark = ""
        if threshold is not None:
            mark = "  pass" if v >= threshold else "  below"
        lines.append(f"  #{i}: {v:6.3f}  (rank {rank[i]}){mark}")
    if s:
        mean = float(np.mean(s))
        lines.append(f"mean {mean:.3f}  min {min(s):.3f}  max {max(s):.3f}")
        if threshold is not None:
            bad = [i for i, v in enumerate(s) if not math.isfinite(v)]
            if bad:
                lines.append(f"set gate: {len(bad)} of {len(s)} scores are NaN/inf -> FAIL")
            else:
                verdict = "PASS" if mean >= threshold else "FAIL"
                lines.append(f"set gate: {compare_text(mean, threshold, names=('mean ', 'threshold '))} -> {verdict}")
    return "\n".join(lines)
