"""Style family: VAE style features, the style adapter and training-free latent matching.

Custom types:
- ATELIER_STYLE: an image-derived style (core.style.StyleStats): latent mean / std maps of the
  style's reference images averaged over the set, and per-channel statistics. Saved as
  `<name>.style.safetensors` (Atelier Style Save) so it is computed once.
- ATELIER_STYLE_ADAPTER: a trained style adapter (core.style.StyleAdapter) from
  ComfyUI/models/style_adapters/, turning a style into 77 tokens added to the text conditioning.

Nodes: Style Encode, Style Save, Style Load, Style Adapter Loader, Style Conditioning Blend,
Style Latent Match (training-free AdaIN of a latent) and Style Guidance (training-free AdaIN of
the denoised prediction during sampling, a MODEL patch).
"""
from __future__ import annotations

import logging
import os
import re


import folder_paths

from ..core import style as S
from ..core import confine as C
from ..core.errors import AtelierError
from ..core.cache import FileCache
from ..core.files import atomic_path
from ..core.folders import list_files
from ..core.finite import check_finite, check_finite_float
from ..core.prompt import check_text
from ._managed import load_to_device, read_weights
from ._progress import Progress
from .models import resolve_model

log = logging.getLogger("atelier")

STYLE = "ATELIER_STYLE"
ADAPTER = "ATELIER_STYLE_ADAPTER"
ADAPTER_FOLDER = "style_adapters"
STYLE_SUFFIX = ".style.safetensors"
STYLE_OUTPUT_SUBDIR = "atelier_styles"
MAX_STYLE_NAME = 120  # characters of a Style Save name (file systems allow 255 bytes per name, the suffix and temp name need room)
NO_ADAPTER = "none"  # the adapter loader's "no trained adapter" choice: the blend passes the conditioning through

#: trained adapters by path + mtime + size (a retrained adapter under the same name is reloaded)
_ADAPTERS: FileCache[S.StyleAdapter] = FileCache(max_items=4)


# ----------------------------------------------------------------------------- style files

def style_dirs() -> list[str]:
    """Where saved styles are looked for: output/atelier_styles, then the style_adapters folders
    (the trainer writes `<name>.style.safetensors` next to the adapter)."""
    dirs = [os.path.join(folder_paths.get_output_directory(), STYLE_OUTPUT_SUBDIR)]
    try:
        dirs += list(folder_paths.get_folder_paths(ADAPTER_FOLDER))
    except KeyError:
        pass
    return dirs


def style_files() -> list[str]:
    """Saved styles by name relative to their folder (bounded, loop-safe, cached walk); only names
    Style Load accepts (a symlink pointing out of the folder is not listed)."""
    names = set()
    for d in style_dirs():
        for rel, _ in list_files([d], [STYLE_SUFFIX]):
            if C.candidate(rel, d) is not None:
                names.add(rel)
    return sorted(names)


def _style_name_ok(name) -> bool:
    return isinstance(name, str) and name.endswith(STYLE_SUFFIX)


def find_style_file(name: str) -> str:
    """Full path of a saved style; any name that is not a .style.safetensors file inside
    style_dirs() (traversal, absolute path, escaping symlink, missing) gets one uniform message."""
    fix = ("save one with Atelier Style Save (or copy the trainer's .style.safetensors there), then refresh; "
           "names are relative to those folders, without '..' or absolute paths.")
    dirs = style_dirs()
    if not _style_name_ok(name):
        raise C.not_in_folder(name, what="style file", node=AtelierStyleLoad.DISPLAY, input="style_file",
                              folders=dirs, fix=fix)
    return C.confine(name, dirs, what="style file", node=AtelierStyleLoad.DISPLAY, input="style_file", fix=fix)


def adapter_files() -> list[str]:
    try:
        files = folder_paths.get_filename_list(ADAPTER_FOLDER)
    except KeyError:
        files = []
    return [f for f in files if not f.endswith(STYLE_SUFFIX)]


def _adapter_dirs() -> list[str]:
    try:
        return list(folder_paths.get_folder_paths(ADAPTER_FOLDER))
    except KeyError:
        return []


def load_adapter_cached(name: str, node: str | None = None) -> S.StyleAdapter:
    node = node or AtelierStyleAdapterLoader.DISPLAY
    path = resolve_model(ADAPTER_FOLDER, name, node=node, input="adapter_name")
    try:
        return _ADAPTERS.get(path, lambda p: S.load_adapter(p, read=read_weights))
    except AtelierError as exc:
        raise exc.at(node) from exc


# ----------------------------------------------------------------------------- nodes

class AtelierStyleEncode:
    """Reference images + VAE -> ATELIER_STYLE."""
    DISPLAY = "Atelier Style Encode"


    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The style's reference images (a batch; RGBA is composited over white, "
                                                "gray is expanded). Every image is brought to the working resolution "
                                                "by the crop policy, so sizes may differ between inputs."}),
                "vae": ("VAE", {"tooltip": "The VAE of the model family you will generate with (the style lives in its "
                                           "latent space). Must be a KL VAE (SD1.x/SD2.x/SDXL), not TAESD."}),
                "resolution": ("INT", {"default": S.DEFAULT_RESOLUTION, "min": 64, "max": 2048, "step": 8, "tooltip":
                                       "Working resolution (square). 512 gives the 8x64x64 feature the adapters are "
                                       "trained on; other sizes are resampled to the adapter's size."}),
                "crop": (list(S.CROP_MODES), {"default": "center", "tooltip":
                         "center: scale the short side to the resolution and cut the centre square; stretch: resize "
                         "ignoring aspect; pad: fit the long side and pad with white."}),
            },
            "optional": {
                "images_2": ("IMAGE", {"tooltip": "More reference images (may have another size)."}),
                "images_3": ("IMAGE", {"tooltip": "More reference images (may have another size)."}),
                "name": ("STRING", {"default": "", "tooltip": "A name stored with the style (e.g. style07)."}),
            },
        }

    RETURN_TYPES = (STYLE,)
    RETURN_NAMES = ("style",)
    OUTPUT_TOOLTIPS = ("ATELIER_STYLE: the latent mean/std of the reference images (VAE distribution, not a sample) "
                       "averaged over the set, plus per-channel statistics.",)
    FUNCTION = "encode"
    CATEGORY = "atelier/style"
    DESCRIPTION = ("Encodes style reference images with the VAE's encoder to the latent distribution (mean and "
                   "log-variance) and averages the per-image mean/std maps over the set: the style signal for "
                   "Atelier Style Conditioning Blend, Latent Match and Guidance. Save it with Atelier Style Save.")

    def encode(self, images, vae, resolution, crop, images_2=None, images_3=None, name=""):
        node = self.DISPLAY
        check_text(name, node=node, input="name")  # stored in the style file's UTF-8 metadata
        for key, b in (("images", images), ("images_2", images_2), ("images_3", images_3)):
            if b is not None:  # NaN pixels would become a NaN style that blackens every image it touches
                check_finite(b, node=node, input=key)
        batches = [b for b in (images, images_2, images_3) if b is not None]
        model = getattr(vae, "first_stage_model", None)
        if model is None:
            raise AtelierError("this VAE input has no first_stage_model", node=node, input="vae",
                               expected="a VAE from a checkpoint or VAE loader")
        dtype = getattr(vae, "vae_dtype", None)
        device = None  # a VAE-like object without ComfyUI's patcher runs where its weights are
        if getattr(vae, "patcher", None) is not None:
            try:  # the working memory ComfyUI's own VAE Encode asks for, for one chunk of 4 images
                need = vae.memory_used_encode((4, 3, resolution, resolution), dtype)
            except Exception:
                need = 0
            device = load_to_device(vae.patcher, memory_required=need,
                                    full_load=bool(getattr(vae, "disable_offload", False)))
        total = sum(int(b.shape[0]) if b.ndim == 4 else 1 for b in batches)
        try:
            style = S.encode_style(batches, model, resolution=resolution, crop=crop, device=device, dtype=dtype,
                                   name=name or "", expected_channels=getattr(vae, "latent_channels", None),
                                   progress=Progress(max(total, 1)).callback())
        except AtelierError as exc:
            raise exc.at(node) from exc
        return (style,)


class AtelierStyleSave:
    DISPLAY = "Atelier Style Save"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "style": (STYLE, {"tooltip": "The style to save."}),
            "filename": ("STRING", {"default": "style", "tooltip":
                         f"File name without extension; written as output/{STYLE_OUTPUT_SUBDIR}/<filename>{STYLE_SUFFIX} "
                         "(an existing file is replaced). Letters, digits, - _ . and / only."}),
        }}

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_TOOLTIPS = ("Full path of the written style file.",)
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "atelier/style"
    DESCRIPTION = (f"Saves an ATELIER_STYLE as a small safetensors file (mean/std maps + metadata) in "
                   f"output/{STYLE_OUTPUT_SUBDIR}/, so Atelier Style Load can reuse it without the images and VAE.")

    def save(self, style, filename):
        name = (filename or "").strip().replace("\\", "/")
        if name.endswith(STYLE_SUFFIX):
            name = name[: -len(STYLE_SUFFIX)]
        allowed = f"at most {MAX_STYLE_NAME} characters of letters A-Z a-z, digits, space, - _ . and / (a relative name)"
        if len(name) > MAX_STYLE_NAME:
            raise AtelierError(f"the file name is {len(name)} characters long ({name[:40]!r}...)",
                               node=self.DISPLAY, input="filename", expected=allowed,
                               fix="use a shorter name, e.g. style07 or brand/spring")
        if not name or not re.fullmatch(r"[A-Za-z0-9_.\-/ ]+", name) or ".." in name.split("/") or name.startswith("/"):
            raise AtelierError(f"{filename!r} is not a usable style file name", node=self.DISPLAY,
                               input="filename", expected=allowed,
                               fix="e.g. style07 or brand/spring")
        base = os.path.join(folder_paths.get_output_directory(), STYLE_OUTPUT_SUBDIR)
        path = C.candidate(name + STYLE_SUFFIX, base)  # None: a symlinked subfolder would lead outside
        if path is None:
            raise AtelierError(f"'{filename}' is not a usable style file name", node=self.DISPLAY,
                               input="filename", expected=f"a name inside output/{STYLE_OUTPUT_SUBDIR}/",
                               fix="e.g. style07 or brand/spring (a symlink there may not point outside)")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_path(path) as tmp:
            S.save_style(style, tmp)
        return {"ui": {"text": [path]}, "result": (path,)}


class AtelierStyleLoad:
    DISPLAY = "Atelier Style Load"

    @classmethod
    def INPUT_TYPES(cls):
        files = style_files()
        return {"required": {
            "style_file": (files or ["(no saved styles)"], {"tooltip":
                           f"A {STYLE_SUFFIX} file from output/{STYLE_OUTPUT_SUBDIR}/ or models/{ADAPTER_FOLDER}/."}),
        }}

    RETURN_TYPES = (STYLE,)
    RETURN_NAMES = ("style",)
    OUTPUT_TOOLTIPS = ("The saved ATELIER_STYLE, bit-exact.",)
    FUNCTION = "load"
    CATEGORY = "atelier/style"
    DESCRIPTION = "Loads a style saved by Atelier Style Save (or written by the style trainer)."

    @classmethod
    def IS_CHANGED(cls, style_file):
        try:
            return os.path.getmtime(find_style_file(style_file))
        except AtelierError:
            return float("nan")

    @classmethod
    def VALIDATE_INPUTS(cls, style_file):
        # a file saved earlier in the same queue is not listed yet, so a confined name that does not
        # exist passes here (load() says it is missing); a name reaching outside the folders never does
        if not _style_name_ok(style_file):
            return str(C.not_in_folder(style_file, what="style file", node=cls.DISPLAY,
                                       input="style_file", folders=style_dirs()))
        return C.check_name(style_file, style_dirs(), what="style file", node=cls.DISPLAY,
                            input="style_file")

    def load(self, style_file):
        try:
            return (S.load_style(find_style_file(style_file), read=read_weights),)
        except AtelierError as exc:
            raise exc.at(self.DISPLAY) from exc


class AtelierStyleAdapterLoader:
    DISPLAY = "Atelier Style Adapter Loader"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "adapter_name": ([NO_ADAPTER] + adapter_files(), {"default": NO_ADAPTER, "tooltip":
                             f"'{NO_ADAPTER}': no trained adapter (Style Conditioning Blend then passes the "
                             "conditioning through; use the training-free Atelier Style Guidance / Latent Match). "
                             f"Otherwise a style adapter (.safetensors written by `atelier train-style`) from "
                             f"ComfyUI/models/{ADAPTER_FOLDER}/. Its context width must match the checkpoint "
                             "(SD1.5: 768, SD2.x: 1024, SDXL: 2048)."}),
        }}

    RETURN_TYPES = (ADAPTER,)
    RETURN_NAMES = ("adapter",)
    OUTPUT_TOOLTIPS = ("ATELIER_STYLE_ADAPTER: style -> 77 tokens of the text-context width "
                       f"(empty for '{NO_ADAPTER}').",)
    FUNCTION = "load"
    CATEGORY = "atelier/style"
    DESCRIPTION = ("Loads a trained style adapter (the seed's conv net: group-norm + SiLU + 3x3 convs, 8 -> 38 -> 38 "
                   "-> 77 channels) with its config from the file's metadata.")

    @classmethod
    def VALIDATE_INPUTS(cls, adapter_name):
        # load() gives the full message (manifest id, folder) for a missing file; a name reaching
        # outside the model folder is refused here with the uniform message
        if adapter_name == NO_ADAPTER or C.name_is_safe(adapter_name):
            return True
        return str(C.not_in_folder(adapter_name, what="style adapter", node=cls.DISPLAY,
                                   input="adapter_name", folders=_adapter_dirs()))

    @classmethod
    def IS_CHANGED(cls, adapter_name):
        if adapter_name == NO_ADAPTER:
            return NO_ADAPTER
        try:  # a retrained file under the same name is reloaded
            return os.path.getmtime(resolve_model(ADAPTER_FOLDER, adapter_name))
        except Exception:
            return float("nan")

    def load(self, adapter_name):
        if adapter_name == NO_ADAPTER:
            return (None,)
        return (load_adapter_cached(adapter_name, self.DISPLAY),)


class AtelierStyleConditioningBlend:
    DISPLAY = "Atelier Style Conditioning Blend"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "conditioning": ("CONDITIONING", {"tooltip": "Text conditioning (CLIPTextEncode). Every entry is blended; "
                                                         "pooled output and other keys are kept as they are."}),
            "style": (STYLE, {"tooltip": "ATELIER_STYLE from Atelier Style Encode or Load."}),
            "adapter": (ADAPTER, {"tooltip": "Style adapter for this checkpoint's context width. From a loader "
                                             f"set to '{NO_ADAPTER}': the conditioning passes through unchanged."}),
            "strength": ("FLOAT", {"default": S.DEFAULT_STRENGTH, "min": -10.0, "max": 10.0, "step": 0.001, "tooltip":
                                   "Weight of the style tokens added to the text tokens. 0.01 is what the adapter was "
                                   "trained with; 0 leaves the conditioning unchanged."}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("conditioning + strength x style tokens (repeated over every 77-token chunk of long prompts).",)
    FUNCTION = "blend"
    CATEGORY = "atelier/style"
    DESCRIPTION = ("Adds the adapter's 77 style tokens, computed from the style's cat([sigma, mu]) feature, to the text "
                   "conditioning with a small weight, as the style-transfer seed did. Use it on the positive prompt.")

    def blend(self, conditioning, style, adapter, strength):
        node = self.DISPLAY
        strength = check_finite_float(strength, node=node, input="strength")
        if adapter is None:  # Atelier Style Adapter Loader set to "none"
            log.info("[Atelier] %s: no trained style adapter ('%s' in Atelier Style Adapter Loader): the conditioning "
                     "passes through unchanged", node, NO_ADAPTER)
            return (conditioning,)
        try:
            tokens = S.style_tokens(adapter, style)
            return (S.blend_conditioning(conditioning, tokens, strength),)
        except AtelierError as exc:
            raise exc.at(node) from exc


class AtelierStyleLatentMatch:
    DISPLAY = "Atelier Style Latent Match"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "samples": ("LATENT", {"tooltip": "Latent to restyle (VAE Encode of an image for img2img, or any latent)."}),
            "style": (STYLE, {"tooltip": "ATELIER_STYLE encoded with this model's VAE."}),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                   "1: every channel's mean/std equal the style's; 0: the latent is unchanged."}),
        }}

    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("samples",)
    OUTPUT_TOOLTIPS = ("The latent with per-channel statistics moved to the style's (other LATENT keys kept).",)
    FUNCTION = "match"
    CATEGORY = "atelier/style"
    DESCRIPTION = ("Training-free style transfer (latent AdaIN): shifts and scales each latent channel of each sample so "
                   "its mean and standard deviation equal the style's. Works without trained weights; best before an "
                   "img2img KSampler (denoise 0.4-0.8). A constant channel (empty latent) takes the style's mean.")

    def match(self, samples, style, strength):
        strength = check_finite_float(strength, node=self.DISPLAY, input="strength")
        try:
            out = dict(samples)
            out["samples"] = S.match_latent_stats(samples["samples"], style.channel_mean, style.channel_std, strength)
            return (out,)
        except AtelierError as exc:
            raise exc.at(self.DISPLAY) from exc


class AtelierStyleGuidance:
    DISPLAY = "Atelier Style Guidance"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The diffusion model to patch."}),
            "style": (STYLE, {"tooltip": "ATELIER_STYLE encoded with this model's VAE."}),
            "strength": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                   "How far each step's denoised prediction is moved towards the style's channel "
                                   "statistics (0 = off). High values flatten detail."}),
            "end_percent": ("FLOAT", {"default": 0.6, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                      "Stop matching after this fraction of the sampling schedule (the late steps "
                                      "refine detail and are left alone)."}),
        }}

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with a post-CFG patch matching the denoised prediction to the style.",)
    FUNCTION = "patch"
    CATEGORY = "atelier/style"
    DESCRIPTION = ("Training-free: during sampling, matches the per-channel mean/std of the denoised prediction to the "
                   "style's (latent AdaIN in the model's latent space), for the first part of the schedule.")

    def patch(self, model, style, strength, end_percent):
        node = self.DISPLAY
        strength = check_finite_float(strength, node=node, input="strength")
        end_percent = check_finite_float(end_percent, node=node, input="end_percent")
        m = model.clone()
        if strength == 0:
            return (m,)
        lf = m.model.latent_format
        c = style.latent_channels
        if getattr(lf, "latent_channels", c) != c:
            raise AtelierError(f"the style has {c} latent channels but this model's latents have {lf.latent_channels}",
                               node=node, input="style", fix="encode the style with this checkpoint's VAE")
        tm, ts = S.affine_stats(style.channel_mean, style.channel_std, lf.process_in)
        try:
            sigma_end = float(m.model.model_sampling.percent_to_sigma(end_percent))
        except Exception:
            sigma_end = 0.0

        def post_cfg(args):
            denoised = args["denoised"]
            sigma = args.get("sigma")
            if sigma is not None and end_percent < 1.0 and float(sigma.reshape(-1)[0]) < sigma_end:
                return denoised
            try:
                return S.match_latent_stats(denoised, tm.to(denoised.device), ts.to(denoised.device), strength)
            except AtelierError as exc:
                raise exc.at(node) from exc

        m.set_model_sampler_post_cfg_function(post_cfg)
        return (m,)


NODE_CLASS_MAPPINGS = {
    "AtelierStyleEncode": AtelierStyleEncode,
    "AtelierStyleSave": AtelierStyleSave,
    "AtelierStyleLoad": AtelierStyleLoad,
    "AtelierStyleAdapterLoader": AtelierStyleAdapterLoader,
    "AtelierStyleConditioningBlend": AtelierStyleConditioningBlend,
    "AtelierStyleLatentMatch": AtelierStyleLatentMatch,
    "AtelierStyleGuidance": AtelierStyleGuidance,
}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY for k, v in NODE_CLASS_MAPPINGS.items()}
