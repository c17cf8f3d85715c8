"""Matting family: saliency model loader and background remover (ComfyUI wrappers over core/matting.py).

Model files live in ComfyUI/models/saliency/:
- PoolNet-ResNet50 w/o edge: the released ``final.pth`` (manifest id ``poolnet-resnet50``, saved as
  poolnet_resnet50_final.pth) or its .safetensors conversion (`atelier models convert poolnet-resnet50`);
- optionally a stronger salient-object model exported to ONNX (e.g. BiRefNet, MIT), which needs the
  optional package onnxruntime;
- or no file at all: the "classical" entry (border flood fill + GrabCut) for near-white studio shots.
"""
from __future__ import annotations

import os

import comfy.model_management
import folder_paths

from ..core import matting as core
from ..core.cache import FileCache, file_stamp
from ..core.errors import AtelierError
from ..core.finite import check_finite, check_finite_float
from ..core.images import image_batch
from ..core.manifest import PACK_FOLDERS
from ..core.poolnet import load_poolnet
from ._managed import load_to_device, managed, read_weights
from ._preview import with_preview
from ._progress import Progress
from .models import resolve_model  # importing it registers the model folders

FOLDER = "saliency"
SALIENCY_TYPE = "ATELIER_SALIENCY"
CATEGORY = "atelier/matting"
EXTENSIONS = tuple(PACK_FOLDERS[FOLDER])
LOADER = "Atelier Saliency Loader"
REMOVER = "Atelier Remove Background"


def saliency_files() -> list[str]:
    names = folder_paths.get_filename_list(FOLDER)
    return sorted((n for n in names if n.lower().endswith(EXTENSIONS)), key=str.lower)


def resolve_saliency(name: str, node: str = LOADER, input: str = "model_name") -> str | None:
    """Selector value -> full path, None for the classical backend; a missing file raises the
    models family's error (manifest id and folder for PoolNet)."""
    if name == core.CLASSICAL_NAME or name in core.LEGACY_CLASSICAL_NAMES:
        return None
    return resolve_model(FOLDER, name, node=node, input=input)


#: loaded models by path and mtime (with their ModelPatcher, once used); a replaced file is loaded again
_CACHE: FileCache[core.SaliencyModel] = FileCache(max_items=2)


def _load(path: str) -> core.SaliencyModel:
    if path.lower().endswith(".onnx"):  # an onnxruntime session (no torch module, no ComfyUI loader for .onnx)
        return core.load_saliency_model(path, device=str(comfy.model_management.get_torch_device()))
    # PoolNet: read by ComfyUI's load_torch_file, built on the CPU; Remove Background puts it on the
    # device through ComfyUI's model management (nodes/_managed.py)
    net = load_poolnet(path, read=read_weights)
    return core.SaliencyModel("poolnet", os.path.basename(path), path, net, "cpu")


def load_cached(path: str | None) -> core.SaliencyModel:
    """The model for `path` (None: classical), cached by path and mtime."""
    if path is None:
        return core.load_saliency_model(None)
    return _CACHE.get(path, _load)


POOLNET_BYTES_PER_PIXEL = 1300  # fp32 working memory per input pixel (measured: 1.33 GB peak for one 1024x1024 on the CPU)


def _poolnet_memory(image, max_side: int) -> int:
    """Working memory PoolNet needs for one forward pass over `image` (chunked to core.PIXEL_BUDGET pixels)."""
    h, w = int(image.shape[1]), int(image.shape[2])
    scale = min(1.0, max_side / max(h, w)) if max_side else 1.0
    one = max(1, int(h * w * scale * scale))
    return POOLNET_BYTES_PER_PIXEL * min(int(image.shape[0]) * one, max(one, core.PIXEL_BUDGET))


class AtelierSaliencyLoader:
    DISPLAY = LOADER

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (saliency_files() + [core.CLASSICAL_NAME], {
                "tooltip": "From ComfyUI/models/saliency: PoolNet-ResNet50 w/o edge (the released final.pth, "
                           "manifest id 'poolnet-resnet50', or its .safetensors conversion), or a salient-object "
                           f".onnx model such as BiRefNet (needs onnxruntime). The last entry, "
                           f"'{core.CLASSICAL_NAME}', needs no file: a border-colour flood fill + GrabCut, only "
                           "for near-white/plain backgrounds (workflows saved with its older long name still "
                           "load and run)."}),
        }}

    RETURN_TYPES = (SALIENCY_TYPE,)
    RETURN_NAMES = ("saliency_model",)
    OUTPUT_TOOLTIPS = ("ATELIER_SALIENCY: a loaded salient-object model (PoolNet, ONNX) or the classical "
                       "backend. Connect to Atelier Remove Background.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Loads the saliency model that decides what is product and what is background. PoolNet "
                   "weights load strictly (official key names), safely (tensors only) and are cached.")

    @classmethod
    def VALIDATE_INPUTS(cls, model_name):
        # checked here rather than by ComfyUI's list check (which ComfyUI skips for an input this takes),
        # so a missing file names its manifest entry and the legacy classical value still validates
        try:
            resolve_saliency(model_name)
        except AtelierError as exc:
            return str(exc)
        return True

    @classmethod
    def IS_CHANGED(cls, model_name):
        # a file replaced under the same name is loaded again
        try:
            path = resolve_saliency(model_name)
            return repr(file_stamp(path)) if path else core.CLASSICAL_NAME
        except Exception:
            return model_name

    def load(self, model_name):
        try:
            path = resolve_saliency(model_name)
            return (load_cached(path),)
        except AtelierError as exc:
            raise exc.at(LOADER, "model_name") from exc


class AtelierRemoveBackground:
    DISPLAY = REMOVER

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "saliency_model": (SALIENCY_TYPE, {
                    "tooltip": "From Atelier Saliency Loader (PoolNet, an ONNX model, or the classical backend)."}),
                "image": ("IMAGE", {"tooltip": "Product image batch (RGB, RGBA or grayscale)."}),
                "background": ("STRING", {"default": "#FFFFFF", "tooltip":
                               "Colour the background becomes: '#RRGGBB' or 'R,G,B' (0..255). #FFFFFF = pure white."}),
                "alpha_mode": (["soft", "threshold"], {"default": "soft", "tooltip":
                               "soft: keep the model's soft edges; threshold: hard 0/1 alpha at 'threshold'."}),
                "threshold": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                              "Saliency level that counts as product when alpha_mode is 'threshold'."}),
                "grow_shrink": ("INT", {"default": 0, "min": -256, "max": 256, "step": 1, "tooltip":
                                "Grow (+) or shrink (-) the product mask by this many pixels."}),
                "feather": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 256.0, "step": 0.5, "tooltip":
                            "Soften the mask edge by this many pixels (Gaussian)."}),
                "refine_edges": (["guided_filter", "none"], {"default": "guided_filter", "tooltip":
                                 "guided_filter: move the mask edge onto the image's own edges (also used to "
                                 "bring a reduced-resolution mask back to full size); none: the model's mask as is."}),
                "refine_radius": ("INT", {"default": 0, "min": 0, "max": 256, "tooltip":
                                  "Guided-filter radius in pixels; 0 = automatic (about 1% of the longer side)."}),
                "max_side": ("INT", {"default": 1024, "min": 0, "max": 8192, "step": 16, "tooltip":
                             "Run the model with the longer side at most this many pixels and resize the mask "
                             "back (much faster on big images). 0 = full resolution (the published model's exact "
                             "output)."}),
                "small_input": (["upscale", "pad"], {"default": "upscale", "tooltip":
                                "Images smaller than the network's minimum side (111 px for PoolNet): upscale "
                                "them, or pad them (edge pixels repeated) and crop the mask."}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Optional external mask (1 = product) used instead of the model's "
                                  "saliency; a single mask is used for the whole batch."}),
                # clean cut-outs (added after the original widgets, so workflows saved before keep their
                # values; left out, as in those workflows and API prompts, they are off: today's output)
                "decontaminate": ("BOOLEAN", {"default": False, "tooltip":
                                  "Clean edges: estimate the product's own colour where the mask is soft (hair, "
                                  "fur, blurred or anti-aliased edges), so the old background's colour does not "
                                  "bleed onto the new one as a halo. Pixels the mask calls solid (alpha >= 0.99) "
                                  "are untouched; the rgba output carries the cleaned colour too. Off = the "
                                  "original pixels as they are."}),
                "shadow_strength": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                                    "Soft contact shadow under the product (0 = none): how dark it gets at its "
                                    "darkest, as a fraction of the background (0.35 is a natural studio look). "
                                    "Drawn on the background only, never over the product; made from the "
                                    "bottom of the mask's silhouette, squashed flat. Only in 'image', not in "
                                    "'rgba' or 'mask'."}),
                "shadow_softness": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 50.0, "step": 0.5, "tooltip":
                                    "Blur of the contact shadow, in percent of the product's height (so it looks "
                                    "the same at any resolution). 0 = a hard shadow."}),
                "shadow_offset": ("FLOAT", {"default": 0.5, "min": -20.0, "max": 20.0, "step": 0.5, "tooltip":
                                  "Moves the contact shadow down (+) or up under the product (-), in percent "
                                  "of the product's height."}),
            },
        }

    RETURN_TYPES = ("IMAGE", "MASK", "IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask", "rgba", "saliency")
    OUTPUT_TOOLTIPS = (
        "The image composited onto the background colour (RGB); with decontaminate on, its soft edges carry the "
        "product's own colour (no halo of the old background); with shadow_strength > 0, a soft contact shadow "
        "under the product on the background.",
        "The final alpha used for the composite (refined, thresholded, grown/shrunk, feathered; values within "
        "1/255 of 0 or 1 are snapped so the background is exactly the colour).",
        "RGBA cut-out: the RGB image (with decontaminate on: its cleaned edge colour) with the final alpha as 4th "
        "channel (save it as PNG for transparency). Never carries the shadow.",
        "The model's raw soft saliency at full size (PoolNet: sigmoid of the logits), before any refinement.",
    )
    FUNCTION = "remove_with_preview"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Decides what is product with a salient-object model and forces everything else to a flat "
                   "background colour (pure white by default). Outputs the composite, the mask, an RGBA cut-out "
                   "and the raw saliency.")

    def remove(self, saliency_model, image, background="#FFFFFF", alpha_mode="soft", threshold=0.5,
               grow_shrink=0, feather=0.0, refine_edges="guided_filter", refine_radius=0, max_side=1024,
               small_input="upscale", mask=None, decontaminate=False, shadow_strength=0.0, shadow_softness=3.0,
               shadow_offset=0.5):
        if not isinstance(saliency_model, core.SaliencyModel):
            raise AtelierError(f"got {type(saliency_model).__name__}", node=REMOVER, input="saliency_model",
                               expected="ATELIER_SALIENCY from Atelier Saliency Loader",
                               fix="connect Atelier Saliency Loader's output")
        image = image_batch(image, node=REMOVER, input="image")
        # NaN would pass min/max: a NaN threshold erases the product, NaN pixels composite to black, not white
        threshold = check_finite_float(threshold, node=REMOVER, input="threshold")
        feather = check_finite_float(feather, node=REMOVER, input="feather")
        shadow = {k: check_finite_float(v, node=REMOVER, input=k) for k, v in (
            ("shadow_strength", shadow_strength), ("shadow_softness", shadow_softness), ("shadow_offset", shadow_offset))}
        check_finite(image, node=REMOVER, input="image")
        if mask is not None:
            check_finite(mask, node=REMOVER, input="mask", what="masks", unit="values",
                         fix="the node that makes this mask produced NaN/inf; a MASK is 0..1 (1 = product).")
        try:
            color = core.parse_color(background, node=REMOVER)
            core.check_budget(saliency_model, image.shape, max_side, small_input, mask is not None, node=REMOVER)
            if saliency_model.kind == "poolnet":
                load_to_device(managed(saliency_model, saliency_model.net),
                               memory_required=_poolnet_memory(image, max_side))
            bar = Progress(int(image.shape[0]))
            out, alpha, rgba, sal = core.remove_background(
                saliency_model, image, background=color, mask=mask, alpha_mode=alpha_mode, threshold=threshold,
                grow=grow_shrink, feather_px=feather, refine=refine_edges, refine_radius=refine_radius,
                max_side=max_side, small_input=small_input, progress=bar.step, node=REMOVER,
                decontaminate_edges=bool(decontaminate), **shadow)
        except AtelierError as exc:
            raise exc.at(REMOVER) from exc
        return (out.cpu(), alpha.cpu(), rgba.cpu(), sal.cpu())

    def remove_with_preview(self, **kwargs):
        """What ComfyUI calls: `remove` plus a small preview of the RGBA cut-out (the matte) on the node."""
        out = self.remove(**kwargs)
        return with_preview(out, out[2], "atelier_matte")


NODE_CLASS_MAPPINGS = {
    "AtelierSaliencyLoader": AtelierSaliencyLoader,
    "AtelierRemoveBackground": AtelierRemoveBackground,
}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY for k, v in NODE_CLASS_MAPPINGS.items()}
