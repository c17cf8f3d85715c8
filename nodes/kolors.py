"""Kolors (family `kolors`): the Kolors UNet and its ChatGLM3 text encoder as ComfyUI MODEL and CLIP.

ComfyUI has no Kolors support (neither the pinned 2024 runtime nor 0.3.64), so the pack builds it
from ComfyUI's own parts:

- MODEL: ComfyUI's UNetModel (the SDXL trunk) with one extra Linear, ``encoder_hid_proj`` (ChatGLM
  4096 -> cross-attention 2048), applied to the context inside the diffusion model's forward; a
  ``model_base.SDXL`` subclass whose adm is the pooled ChatGLM state (4096) + the six SDXL time ids
  (6 x 256 = 5632) and whose ModelSamplingDiscrete carries Kolors' own schedule (1100 steps,
  scaled-linear betas 0.00085..0.014; the pinned runtime's sampler would otherwise build 1000).
  Keys are converted from the published diffusers layout with ``comfy.utils.unet_to_diffusers``.
  So KSampler, LoraLoader / LoraLoaderModelOnly (diffusers/kohya keys map through the same
  table; ``lora_unet_encoder_hid_proj`` too), model management (/free, lowvram) work unchanged.
- CLIP (nodes/_kolors_text.py): a real ``comfy.sd.CLIP`` around our ChatGLM3 encoder (core/kolors.py, the published
  weight names, ComfyUI's casting ops), so CLIPTextEncode, the pack's system-prompt encoders and
  ComfyUI's model management treat it like any text encoder. Conditioning: context [B, 256, 4096]
  (penultimate layer), pooled_output [B, 4096] (last layer, last token).

- CONTROL_NET: Kolors' ControlNets (diffusers ControlNetModel files whose forward, in Kwai-Kolors'
  kolors/models/controlnet.py, first applies their own ``encoder_hid_proj``) as ComfyUI's cldm
  ControlNet + that projection, wrapped in ``comfy.controlnet.ControlNet``, so ComfyUI's Apply
  ControlNet nodes use them; ComfyUI's own ControlNet loader cannot detect them (adm 5632).

Memory: see core.kolors.MEMORY_NOTE. Prompt weights "(word:1.2)" are not applied (read as text), as
in KolorsPipeline.
"""
from __future__ import annotations

import logging
import os

import torch

import comfy.cldm.cldm
import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.sd
import comfy.supported_models
import comfy.supported_models_base
import comfy.utils
import folder_paths
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

from ..core import kolors as K
from ..core import kolors_lora as KL
from ..core.cache import file_stamp
from ..core.errors import AtelierError
from ..core.folders import walk
from ._kolors_text import load_kolors_text_encoder
from ._managed import read_weights

log = logging.getLogger("atelier")

CATEGORY = "atelier/kolors"
UNET_FOLDERS = ("diffusion_models", "unet")          # 0.3.64 / pinned names of models/unet
TE_FOLDERS = ("text_encoders", "clip")
DTYPES = {"default": None, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


# ----------------------------------------------------------------------------- the model

class KolorsUNetModel(UNetModel):
    """ComfyUI's UNetModel + Kolors' text projection (``encoder_hid_proj``) on the context."""

    def __init__(self, *args, text_dim: int = K.TEXT_HIDDEN, **kwargs):
        super().__init__(*args, **kwargs)
        ops = kwargs.get("operations") or comfy.ops.disable_weight_init
        self.encoder_hid_proj = ops.Linear(text_dim, kwargs["context_dim"], bias=True,
                                           dtype=kwargs.get("dtype"), device=kwargs.get("device"))

    def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs):
        if context is not None and context.shape[-1] == self.encoder_hid_proj.in_features:
            context = self.encoder_hid_proj(context)
        return super().forward(x, timesteps, context, y, control, transformer_options, **kwargs)


class KolorsModel(comfy.model_base.SDXL):
    """SDXL-class model_base for Kolors: its adm (pooled ChatGLM + 6 time ids) and noise schedule."""

    def __init__(self, model_config, model_type=comfy.model_base.ModelType.EPS, device=None):
        comfy.model_base.BaseModel.__init__(self, model_config, model_type, device=device, unet_model=KolorsUNetModel)
        self.text_dim = int(model_config.unet_config.get("text_dim", K.TEXT_HIDDEN))
        self.time_embed_dim = (int(model_config.unet_config["adm_in_channels"]) - self.text_dim) // 6
        self.embedder = None
        self.noise_augmentor = None
        s = model_config.sampling_settings
        self.model_sampling._register_schedule(given_betas=K.kolors_betas(s["timesteps"], s["linear_start"], s["linear_end"]),
                                               timesteps=s["timesteps"], linear_start=s["linear_start"],
                                               linear_end=s["linear_end"])

    def encode_adm(self, **kwargs):
        pooled = kwargs.get("pooled_output", None)
        if pooled is None:
            pooled = torch.zeros((1, self.text_dim))
        if pooled.shape[-1] != self.text_dim:
            raise AtelierError(f"the conditioning's pooled output is {pooled.shape[-1]} wide, Kolors needs {self.text_dim}",
                               node="KSampler", input="positive / negative",
                               expected="conditioning from the Kolors text encoder (Atelier Kolors Text Encoder Loader -> CLIP Text Encode)",
                               fix="encode the prompts with the Kolors text encoder, not an SD/SDXL CLIP")
        width = kwargs.get("width", 1024)
        height = kwargs.get("height", 1024)
        ids = torch.tensor([[height, width, kwargs.get("crop_h", 0), kwargs.get("crop_w", 0),
                             kwargs.get("target_height", height), kwargs.get("target_width", width)]], dtype=torch.float32)
        flat = K.time_ids_embedding(ids, self.time_embed_dim).repeat(pooled.shape[0], 1)
        return torch.cat((pooled.to(flat.device, flat.dtype), flat), dim=1)


class KolorsConfig(comfy.supported_models_base.BASE):
    """Model config of the pack-defined Kolors family (never matched by ComfyUI's detection)."""
    unet_config = {"kolors": True}
    latent_format = comfy.latent_formats.SDXL
    sampling_settings = {"beta_schedule": "linear", "linear_start": K.SCHEDULE["beta_start"],
                         "linear_end": K.SCHEDULE["beta_end"], "timesteps": K.SCHEDULE["num_train_timesteps"]}
    memory_usage_factor = getattr(comfy.supported_models.SDXL, "memory_usage_factor", 0.8)   # SDXL's estimate
    supported_inference_dtypes = [torch.float16, torch.bfloat16, torch.float32]

    def __init__(self, unet_config):
        super().__init__(unet_config)
        self.sampling_settings = dict(type(self).sampling_settings)

    def get_model(self, state_dict, prefix="", device=None):
        return KolorsModel(self, device=device)


def diffusers_to_comfy(sd: dict, layout: K.UNetLayout) -> dict:
    """Published diffusers keys -> ComfyUI UNetModel keys (ComfyUI's own table + encoder_hid_proj)."""
    keymap = comfy.utils.unet_to_diffusers(layout.unet_config)
    keymap.update({"encoder_hid_proj.weight": "encoder_hid_proj.weight", "encoder_hid_proj.bias": "encoder_hid_proj.bias"})
    return {keymap[k]: v for k, v in sd.items() if k in keymap}


def load_kolors_unet_state_dict(sd: dict, dtype: torch.dtype | None = None, node: str = K.NODE_UNET):
    """A diffusers-layout Kolors UNet state dict -> ModelPatcher over KolorsModel (ComfyUI's loading steps)."""
    sd = K.strip_unet_prefix(sd)
    layout = K.unet_layout(sd)
    cfg = dict(layout.unet_config, text_dim=layout.text_dim)
    model_config = KolorsConfig(cfg)
    new_sd = diffusers_to_comfy(sd, layout)
    parameters = comfy.utils.calculate_parameters(sd)
    load_device = mm.get_torch_device()
    offload_device = mm.unet_offload_device()
    unet_dtype = dtype or mm.unet_dtype(model_params=parameters, supported_dtypes=model_config.supported_inference_dtypes)
    manual_cast_dtype = mm.unet_manual_cast(unet_dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(unet_dtype, manual_cast_dtype)
    model = model_config.get_model(new_sd, "")
    model = model.to(offload_device)
    missing, unexpected = model.diffusion_model.load_state_dict(new_sd, strict=False)
    left = len(sd) - len(new_sd)
    if missing or left:
        first = missing[0] if missing else next(k for k in sd if k not in set(comfy.utils.unet_to_diffusers(layout.unet_config)) and not k.startswith("encoder_hid_proj."))
        raise AtelierError(f"the file's keys do not fill a Kolors UNet ({len(missing)} missing, {left} unused; first: {first})",
                           node=node, input="unet_name",
                           expected="the complete Kolors UNet in the published diffusers layout",
                           fix="re-download unet/diffusion_pytorch_model.fp16.safetensors of Kwai-Kolors/Kolors")
    log.info("[Atelier] Kolors UNet: %.2f B parameters, weights %s, compute %s", parameters / 1e9, unet_dtype,
             manual_cast_dtype or unet_dtype)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


# ----------------------------------------------------------------------------- selectors

def _folder_paths(names) -> list[str]:
    out = []
    for n in names:
        try:
            out += [p for p in folder_paths.get_folder_paths(n) if p not in out]
        except KeyError:
            continue
    return out


def register_unet_folder() -> None:
    """Old ComfyUI (the pinned runtime) knows only models/unet: add models/diffusion_models, where current
    ComfyUI and models_manifest.json put the Kolors UNet, so the same files load on both. Idempotent."""
    table = folder_paths.folder_names_and_paths
    if "diffusion_models" in table:
        return
    folder_paths.add_model_folder_path("diffusion_models", os.path.join(folder_paths.models_dir, "diffusion_models"))
    table["diffusion_models"] = (table["diffusion_models"][0], {".safetensors", ".sft"})
    cache = getattr(folder_paths, "filename_list_cache", None)
    if isinstance(cache, dict):
        cache.pop("diffusion_models", None)


register_unet_folder()


def unet_files() -> list[str]:
    seen = []
    for n in UNET_FOLDERS:
        try:
            seen += [f for f in folder_paths.get_filename_list(n) if f not in seen and f.endswith((".safetensors", ".sft"))]
        except KeyError:
            continue
    return seen


def unet_path(name: str) -> str:
    for n in UNET_FOLDERS:
        try:
            if name in folder_paths.get_filename_list(n):
                p = folder_paths.get_full_path(n, name)
                if p:
                    return p
        except KeyError:
            continue
    raise AtelierError(f"UNet file '{name}' was not found", node=K.NODE_UNET, input="unet_name",
                       expected="a file in " + (", ".join(_folder_paths(UNET_FOLDERS)) or "ComfyUI/models/unet"),
                       fix="put Kwai-Kolors/Kolors unet/diffusion_pytorch_model.fp16.safetensors into ComfyUI/models/unet "
                           "(rename it, e.g. kolors_unet_fp16.safetensors) and refresh")


def _is_te_folder(d: str) -> bool:
    return os.path.isfile(os.path.join(d, "config.json")) and os.path.isfile(os.path.join(d, K.TOKENIZER_FILE))


def text_encoder_folders() -> dict[str, str]:
    """{name shown in the selector: folder} for every folder with config.json + tokenizer.model."""
    out = {}
    for root in _folder_paths(TE_FOLDERS):
        if _is_te_folder(root):
            continue
        for rel, full in walk(root, max_depth=3, stop=_is_te_folder):
            if os.path.isdir(full) and _is_te_folder(full) and rel not in out:
                out[rel] = full
    return out


# ----------------------------------------------------------------------------- nodes

class AtelierKolorsUNetLoader:
    DISPLAY = K.NODE_UNET
    DESCRIPTION = ("Loads a Kolors UNet (the published diffusers file unet/diffusion_pytorch_model*.safetensors of "
                   "Kwai-Kolors/Kolors) from models/unet as a MODEL for KSampler, LoRA loaders and model management. "
                   + K.MEMORY_NOTE)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "unet_name": (unet_files(), {"tooltip": "The Kolors UNet file in ComfyUI/models/unet (diffusion_models): "
                                                    "diffusion_pytorch_model.fp16.safetensors of Kwai-Kolors/Kolors, 5.2 GB "
                                                    "(2.6 B parameters)."}),
            "weight_dtype": (list(DTYPES), {"default": "default", "tooltip":
                             "Weight dtype on the device. default: ComfyUI's choice (fp16/bf16 on a GPU). fp16/bf16: 5.2 GB; "
                             "fp32: 10.3 GB."}),
        }}

    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("Kolors MODEL: SDXL-class UNet with the ChatGLM projection and Kolors' 1100-step schedule. "
                       "Use it with conditioning from Atelier Kolors Text Encoder Loader + CLIP Text Encode and the SDXL VAE.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    @classmethod
    def IS_CHANGED(cls, unet_name, weight_dtype="default"):
        try:
            return str(file_stamp(unet_path(unet_name))) + weight_dtype
        except Exception:
            return unet_name

    def load(self, unet_name, weight_dtype="default"):
        path = unet_path(unet_name)
        sd, _ = read_weights(path)
        try:
            return (load_kolors_unet_state_dict(sd, DTYPES.get(weight_dtype)),)
        except AtelierError as e:
            raise AtelierError(f"'{unet_name}': {e.problem}", node=K.NODE_UNET, input="unet_name",
                               expected=e.expected, fix=e.fix) from None


class AtelierKolorsTextEncoderLoader:
    DISPLAY = K.NODE_TE
    DESCRIPTION = ("Loads Kolors' ChatGLM3-6B text encoder from a folder in models/text_encoders (or models/clip) laid "
                   "out as Kwai-Kolors/Kolors text_encoder/ (config.json, the weight shards, tokenizer.model) as a CLIP "
                   "for CLIP Text Encode. Needs sentencepiece (the pack's kolors extra). " + K.MEMORY_NOTE)

    @classmethod
    def INPUT_TYPES(cls):
        names = sorted(text_encoder_folders())
        return {"required": {
            "text_encoder": (names, {"tooltip": "A folder under ComfyUI/models/text_encoders (or models/clip) holding "
                                                "the Kolors text_encoder files: config.json, 7 pytorch_model-0000N-of-00007.bin "
                                                "shards (or .safetensors), tokenizer.model. ChatGLM3-6B: 6.2 B parameters, "
                                                "12.5 GB in fp16."}),
            "weight_dtype": (list(DTYPES), {"default": "default", "tooltip":
                             "default: ComfyUI's text-encoder dtype (fp16). fp16/bf16: 12.0 GB, fp32: 24 GB (full-size ChatGLM3-6B)."}),
            "device": (["default", "cpu"], {"default": "default", "tooltip":
                       "cpu: always run the text encoder on the CPU (keeps the GPU for the UNet; slow: a prompt "
                       "takes seconds to minutes)."}),
        }}

    RETURN_TYPES = ("CLIP",)
    OUTPUT_TOOLTIPS = ("Kolors text encoder as a CLIP: CLIP Text Encode gives context [1, 256, 4096] and pooled [1, 4096]; "
                       "prompts up to 256 ChatGLM tokens (Chinese and English), longer ones are cut.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    @classmethod
    def IS_CHANGED(cls, text_encoder, weight_dtype="default", device="default"):
        folder = text_encoder_folders().get(text_encoder)
        return f"{file_stamp(folder) if folder else text_encoder}{weight_dtype}{device}"

    def load(self, text_encoder, weight_dtype="default", device="default"):
        folder = text_encoder_folders().get(text_encoder)
        if folder is None:
            raise AtelierError(f"text encoder folder '{text_encoder}' was not found", node=K.NODE_TE, input="text_encoder",
                               expected="a folder with config.json and tokenizer.model under "
                                        + (", ".join(_folder_paths(TE_FOLDERS)) or "ComfyUI/models/text_encoders"),
                               fix="copy Kwai-Kolors/Kolors text_encoder/ to ComfyUI/models/text_encoders/kolors_chatglm3 and refresh")
        return (load_kolors_text_encoder(folder, DTYPES.get(weight_dtype), device),)


NO_LORA = "none"  # the LoRA selector's pass-through choice (as Atelier LoRA (optional))


class AtelierKolorsLoraLoader:
    DISPLAY = "Atelier Kolors LoRA Loader"
    DESCRIPTION = ("Applies a Kolors UNet LoRA in any of the formats people publish: kohya (lora_unet_*), "
                   "diffusers/peft (unet.*.lora_A/B) and DiffSynth-Studio (blocks.N.*.lora_A/B.default, the "
                   "format of ModelScope's Kolors LoRA trainings, which store no alpha). It converts the keys to "
                   "kohya names and applies them exactly as ComfyUI's LoraLoaderModelOnly does (kohya files work "
                   "in that node directly).")

    @classmethod
    def INPUT_TYPES(cls):
        try:
            loras = list(folder_paths.get_filename_list("loras"))
        except KeyError:
            loras = []
        return {"required": {
            "model": ("MODEL", {"tooltip": "The Kolors MODEL (Atelier Kolors UNet Loader)."}),
            "lora_name": ([NO_LORA] + loras, {"default": NO_LORA, "tooltip":
                          "A Kolors LoRA in ComfyUI/models/loras (.safetensors, or .ckpt/.pt/.bin read with "
                          "torch.load(weights_only=True)). 'none': no LoRA, the MODEL passes through unchanged (so a "
                          "workflow runs with only the base model's files)."}),
            "strength_model": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                                         "tooltip": "LoRA strength, as in ComfyUI's LoRA loaders."}),
            "diffsynth_alpha": ("FLOAT", {"default": 4.0, "min": 0.0, "max": 1024.0, "step": 0.5, "tooltip":
                                "Alpha for files that store none (DiffSynth-Studio's): the scale is alpha / rank. "
                                "ModelScope's Kolors LoRA recipe trains rank 16 with alpha 4 (scale 0.25). "
                                "0 = the rank (scale 1). Files with their own alpha keys ignore this."}),
        }}

    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The Kolors MODEL with the LoRA patched in (ComfyUI ModelPatcher patches).",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY

    def apply(self, model, lora_name, strength_model=1.0, diffsynth_alpha=4.0):
        node = self.DISPLAY
        if lora_name == NO_LORA:
            return (model,)
        path = folder_paths.get_full_path("loras", lora_name) if lora_name else None
        if not path:
            raise AtelierError(f"LoRA file '{lora_name}' was not found", node=node, input="lora_name",
                               expected="a file in " + (", ".join(_folder_paths(("loras",))) or "ComfyUI/models/loras"),
                               fix="put the LoRA into ComfyUI/models/loras and refresh")
        if strength_model == 0:
            return (model,)
        cfg = getattr(getattr(model, "model", None), "model_config", None)
        if not isinstance(getattr(model, "model", None), KolorsModel):
            raise AtelierError("the MODEL is not a Kolors model", node=node, input="model",
                               expected="the MODEL of Atelier Kolors UNet Loader",
                               fix="use ComfyUI's LoraLoader for SD/SDXL models")
        sd, _ = read_weights(path)
        if isinstance(sd.get("state_dict"), dict):      # a Lightning .ckpt (DiffSynth-Studio's trainer)
            sd = sd["state_dict"]
        sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
        try:
            u = cfg.unet_config
            blocks = KL.diffsynth_blocks(u["num_res_blocks"], u["transformer_depth"], u.get("transformer_depth_middle", 1),
                                        u.get("transformer_depth_output"))
            kohya, fmt, unmapped = KL.lora_to_kohya(sd, blocks, diffsynth_alpha or None)
        except AtelierError as e:
            raise AtelierError(f"'{lora_name}': {e.problem}", node=node, input="lora_name", expected=e.expected, fix=e.fix) from None
        import comfy.lora
        key_map = comfy.lora.model_lora_keys_unet(model.model, {})
        modules = [k[:-len(".lora_down.weight")] for k in kohya if k.endswith(".lora_down.weight")]
        known = [m for m in modules if m in key_map]
        if not known:
            raise AtelierError(f"'{lora_name}' ({fmt} format) names no module of this Kolors UNet "
                               f"({len(modules)} modules, first: {modules[0] if modules else '-'})", node=node,
                               input="lora_name", expected="a LoRA trained on Kolors' UNet",
                               fix="check that the LoRA is for Kolors (not SD1.5/SDXL/a text encoder)")
        if len(known) < len(modules) or unmapped:
            log.warning("[Atelier] Kolors LoRA %s (%s): %d of %d modules apply; %d keys not understood", lora_name, fmt,
                        len(known), len(modules), len(unmapped))
        patched, _ = comfy.sd.load_lora_for_models(model, None, kohya, strength_model, 0)
        return (patched,)


# ----------------------------------------------------------------------------- ControlNet

class KolorsControlNetModel(comfy.cldm.cldm.ControlNet):
    """ComfyUI's ControlNet (cldm) + the Kolors ControlNet's own ``encoder_hid_proj`` on the context:
    ComfyUI hands a ControlNet the conditioning's raw context (ChatGLM, 4096 wide), as it does the UNet."""

    def __init__(self, *args, text_dim: int = K.TEXT_HIDDEN, **kwargs):
        super().__init__(*args, **kwargs)
        ops = kwargs.get("operations") or comfy.ops.disable_weight_init
        self.encoder_hid_proj = ops.Linear(text_dim, kwargs["context_dim"], bias=True,
                                           dtype=kwargs.get("dtype"), device=kwargs.get("device"))

    def forward(self, x, hint, timesteps, context, y=None, **kwargs):
        if context is not None and context.shape[-1] == self.encoder_hid_proj.in_features:
            context = self.encoder_hid_proj(context)
        return super().forward(x, hint, timesteps, context, y=y, **kwargs)


NODE_CN = "Atelier Kolors ControlNet Loader"


def controlnet_keymap(sd: dict, unet_config: dict) -> dict:
    """Diffusers ControlNetModel keys -> ComfyUI cldm keys (the UNet table + zero convs + hint block)."""
    cfg = dict(unet_config, transformer_depth_output=[0] * sum(r + 1 for r in unet_config["num_res_blocks"]))
    keymap = comfy.utils.unet_to_diffusers(cfg)
    keymap.update({"encoder_hid_proj.weight": "encoder_hid_proj.weight", "encoder_hid_proj.bias": "encoder_hid_proj.bias",
                   "controlnet_mid_block.weight": "middle_block_out.0.weight",
                   "controlnet_mid_block.bias": "middle_block_out.0.bias"})
    n = 0
    while f"controlnet_down_blocks.{n}.weight" in sd:
        for s in ("weight", "bias"):
            keymap[f"controlnet_down_blocks.{n}.{s}"] = f"zero_convs.{n}.0.{s}"
        n += 1
    blocks = 0
    while f"controlnet_cond_embedding.blocks.{blocks}.weight" in sd:
        blocks += 1
    for s in ("weight", "bias"):
        keymap[f"controlnet_cond_embedding.conv_in.{s}"] = f"input_hint_block.0.{s}"
        for b in range(blocks):
            keymap[f"controlnet_cond_embedding.blocks.{b}.{s}"] = f"input_hint_block.{2 * (b + 1)}.{s}"
        keymap[f"controlnet_cond_embedding.conv_out.{s}"] = f"input_hint_block.{2 * (blocks + 1)}.{s}"
    return keymap


def load_kolors_controlnet_state_dict(sd: dict, dtype: torch.dtype | None = None, node: str = NODE_CN):
    """A diffusers-layout Kolors ControlNet (Kwai-Kolors/Kolors-ControlNet-*) -> comfy.controlnet.ControlNet."""
    import comfy.controlnet
    if "controlnet_cond_embedding.conv_in.weight" not in sd:
        raise AtelierError("no controlnet_cond_embedding: this is not a diffusers-layout ControlNet", node=node,
                           input="control_net_name", expected="a Kolors ControlNet (diffusion_pytorch_model.safetensors of "
                           "Kwai-Kolors/Kolors-ControlNet-Canny/Depth/Pose)",
                           fix="load SD1.5/SDXL ControlNets with ComfyUI's Load ControlNet Model")
    try:
        layout = K.unet_layout(sd)
    except AtelierError as e:
        raise AtelierError(e.problem.replace("UNet", "ControlNet"), node=node, input="control_net_name",
                           expected="a Kolors ControlNet in the diffusers layout (encoder_hid_proj 4096->2048, "
                                    "add_embedding with 5632 inputs)",
                           fix="use ComfyUI's Load ControlNet Model for SD1.5/SDXL ControlNets") from None
    cfg = {k: v for k, v in layout.unet_config.items() if k not in ("out_channels", "transformer_depth_output")}
    keymap = controlnet_keymap(sd, layout.unet_config)
    new_sd = {keymap[k]: v for k, v in sd.items() if k in keymap}
    parameters = comfy.utils.calculate_parameters(sd)
    load_device = mm.get_torch_device()
    supported = [torch.float16, torch.bfloat16, torch.float32]
    unet_dtype = dtype or mm.unet_dtype(model_params=parameters, supported_dtypes=supported)
    manual_cast_dtype = mm.unet_manual_cast(unet_dtype, load_device, supported)
    ops = comfy.ops.manual_cast if manual_cast_dtype is not None else comfy.ops.disable_weight_init
    model = KolorsControlNetModel(hint_channels=3, text_dim=layout.text_dim, operations=ops,
                                  device=mm.unet_offload_device(), dtype=unet_dtype, **cfg)
    missing, _ = model.load_state_dict(new_sd, strict=False)
    left = [k for k in sd if k not in keymap]
    if missing or left:
        raise AtelierError(f"the file's keys do not fill a Kolors ControlNet ({len(missing)} missing, {len(left)} unused; "
                           f"first: {(missing or left)[0]})", node=node, input="control_net_name",
                           expected="a complete Kolors ControlNet in the diffusers layout",
                           fix="re-download the ControlNet's diffusion_pytorch_model.safetensors")
    return comfy.controlnet.ControlNet(control_model=model, load_device=load_device, manual_cast_dtype=manual_cast_dtype)


class AtelierKolorsControlNetLoader:
    DISPLAY = NODE_CN
    DESCRIPTION = ("Loads a Kolors ControlNet (Kwai-Kolors/Kolors-ControlNet-Canny, -Depth, -Pose: diffusers "
                   "ControlNetModel files with their own 4096->2048 text projection and the 5632-wide adm) from "
                   "models/controlnet as a CONTROL_NET for ComfyUI's Apply ControlNet nodes. ComfyUI's own Load "
                   "ControlNet Model cannot detect these files.")

    @classmethod
    def INPUT_TYPES(cls):
        try:
            files = [f for f in folder_paths.get_filename_list("controlnet") if f.endswith((".safetensors", ".sft"))]
        except KeyError:
            files = []
        return {"required": {
            "control_net_name": (files, {"tooltip": "A Kolors ControlNet in ComfyUI/models/controlnet "
                                                    "(diffusion_pytorch_model.fp16.safetensors of Kwai-Kolors/Kolors-ControlNet-*, "
                                                    "about 2.5 GB in fp16)."}),
        }}

    RETURN_TYPES = ("CONTROL_NET",)
    OUTPUT_TOOLTIPS = ("A ComfyUI ControlNet for the Kolors MODEL: use it with Apply ControlNet on conditioning from "
                       "the Kolors text encoder.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, control_net_name):
        path = folder_paths.get_full_path("controlnet", control_net_name) if control_net_name else None
        if not path:
            raise AtelierError(f"ControlNet file '{control_net_name}' was not found", node=NODE_CN,
                               input="control_net_name", expected="a file in ComfyUI/models/controlnet",
                               fix="put the Kolors ControlNet into ComfyUI/models/controlnet and refresh")
        sd, _ = read_weights(path)
        try:
            return (load_kolors_controlnet_state_dict(sd),)
        except AtelierError as e:
            raise AtelierError(f"'{control_net_name}': {e.problem}", node=NODE_CN, input="control_net_name",
                               expected=e.expected, fix=e.fix) from None


NODE_CLASS_MAPPINGS = {
    "AtelierKolorsUNetLoader": AtelierKolorsUNetLoader,
    "AtelierKolorsTextEncoderLoader": AtelierKolorsTextEncoderLoader,
    "AtelierKolorsLoraLoader": AtelierKolorsLoraLoader,
    "AtelierKolorsControlNetLoader": AtelierKolorsControlNetLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {cid: cls.DISPLAY for cid, cls in NODE_CLASS_MAPPINGS.items()}
