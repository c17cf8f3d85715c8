"""Aesthetic family: LAION aesthetic loader, scorer, filter, set gate and image grid (ComfyUI wrappers).

Model files live in ComfyUI/models/aesthetic/:
- a simple-aesthetics-predictor folder (config.json + model.safetensors, CLIP ViT-L/14 + head), or
- a LAION head file (sac+logos+ava1-l14-linearMSE.pth, ava+logos-l14-reluMSE.pth, sa_0_4_vit_l_14_linear.pth,
  or the same as .safetensors); a head needs a CLIP_VISION (ViT-L/14) from Load CLIP Vision.
"""
from __future__ import annotations

import math

import torch

import comfy.model_management
import folder_paths

from ..core import aesthetic as core
from ..core import coherence as coh
from ..core.cache import FileCache, file_stamp
from ..core.errors import AtelierError
from ..core.finite import check_finite, check_finite_float, check_finite_floats
from ..core.folders import list_files
from ..core.grid import AUTO_LAYOUT_RULE, make_grid
from ..core.images import image_batch
from ._lists import floats, one as _one
from ._managed import load_to_device, managed, read_weights
from ._progress import Progress
from .models import resolve_model  # importing it registers the model folders (aesthetic among them)

FOLDER = "aesthetic"
AESTHETIC_TYPE = "ATELIER_AESTHETIC"
CATEGORY = "atelier/aesthetic"


# --------------------------------------------------------------------------- model files
def list_aesthetic_models() -> list[str]:
    """Model folders (relative path of a dir holding config.json + weights) and head files, sorted.

    core.folders.list_files: bounded, each real folder once (a link loop ends), hidden entries skipped,
    nothing created, cached by folder mtimes; a predictor folder is one entry, its weights are not
    listed on their own."""
    try:
        roots = folder_paths.get_folder_paths(FOLDER)
    except KeyError:
        roots = []
    return [rel for rel, _ in list_files(roots, core.HEAD_FILE_EXTENSIONS, stop=core.is_hf_predictor_dir)]


def resolve_aesthetic(name: str, node: str, input: str = "model_name") -> str:
    """Path of a head file or model folder; a missing one raises MissingModelError naming the manifest entry."""
    return resolve_model(FOLDER, name, node=node, input=input)


#: loaded models by path and stamp (a predictor folder's stamp covers the files inside it)
_CACHE: FileCache[core.AestheticModel] = FileCache(max_items=2)


def load_cached(path: str, node: str, input: str = "model_name") -> core.AestheticModel:
    return _CACHE.get(path, lambda p: core.load_aesthetic_model(p, node=node, input=input, read=read_weights))


# --------------------------------------------------------------------------- helpers
def comfy_clip_vision_embedder(clip_vision):
    """Path (b): uint8 CLIP crops [b,S,S,3] -> projected embeddings via ComfyUI's CLIP_VISION.

    The crops are already resized/cropped exactly like CLIPProcessor; ComfyUI's own preprocessing then
    only normalises them (the size already matches), so both paths see the same pixels.
    """
    def embed(crops_u8: torch.Tensor) -> torch.Tensor:
        out = clip_vision.encode_image(crops_u8.to(torch.float32) / 255.0)
        emb = out["image_embeds"]
        return emb.float().cpu()
    return embed


def _cat_images(images, node: str, input: str = "images") -> torch.Tensor:
    """A list of IMAGE batches (INPUT_IS_LIST) -> one batch; sizes must match."""
    items = [t for t in (images if isinstance(images, (list, tuple)) else [images]) if t is not None]
    if not items:
        raise AtelierError("no images arrived.", node=node, input=input, expected="an IMAGE batch",
                           fix="connect an IMAGE output (e.g. VAE Decode) to this input.")
    shapes = {tuple(t.shape[1:3]) for t in items}
    if len(shapes) > 1:
        raise AtelierError(f"the image batches have different sizes {sorted(shapes)}.", node=node, input=input,
                           expected="images of one size", fix="resize them to one size first (e.g. Upscale Image).")
    return torch.cat(items, dim=0) if len(items) > 1 else items[0]


def _flat_scores(scores, node: str, input: str = "scores") -> list[float]:
    out = floats(scores)
    if not out:
        raise AtelierError("no scores arrived.", node=node, input=input,
                           expected="the scores output of Atelier Aesthetic Scorer",
                           fix="connect Atelier Aesthetic Scorer's 'scores' output.")
    return out


# --------------------------------------------------------------------------- nodes
class AtelierAestheticLoader:
    DISPLAY = "Atelier Aesthetic Loader"

    @classmethod
    def INPUT_TYPES(cls):
        names = list_aesthetic_models()
        return {"required": {
            "model_name": (names or ["(put models in ComfyUI/models/aesthetic)"], {
                "tooltip": "From ComfyUI/models/aesthetic: a simple-aesthetics-predictor folder (CLIP ViT-L/14 + "
                           "LAION head, works alone) or a LAION head file (.pth/.safetensors: v2 linearMSE, v2 "
                           "reluMSE or v1 linear), which needs a CLIP_VISION (ViT-L/14) on the scorer."}),
        }}

    RETURN_TYPES = (AESTHETIC_TYPE,)
    RETURN_NAMES = ("aesthetic_model",)
    OUTPUT_TOOLTIPS = ("ATELIER_AESTHETIC: the LAION aesthetic head (and its CLIP vision tower when loaded from a "
                       "model folder). Connect to Atelier Aesthetic Scorer.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Loads the LAION aesthetic predictor v2 (sac+logos+ava1-l14-linearMSE by default) or v1 head. "
                   "Scores are on LAION's ~1-10 scale.")

    @classmethod
    def IS_CHANGED(cls, model_name):
        """Re-run when the file (or the folder's weights) changes on disk."""
        try:
            path = resolve_aesthetic(model_name, cls.DISPLAY)
            return repr(file_stamp(path))
        except Exception:
            return model_name  # the run itself reports the missing model

    def load(self, model_name):
        node = self.DISPLAY
        path = resolve_aesthetic(model_name, node)
        return (load_cached(path, node),)


class AtelierAestheticScorer:
    DISPLAY = "Atelier Aesthetic Scorer"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "aesthetic_model": (AESTHETIC_TYPE, {"tooltip": "From Atelier Aesthetic Loader."}),
            "images": ("IMAGE", {"tooltip": "The batch to score (RGBA is composited on white, grayscale expanded)."}),
        }, "optional": {
            "clip_vision": ("CLIP_VISION", {"tooltip": "ComfyUI CLIP vision model (ViT-L/14, from Load CLIP Vision). "
                                                       "Needed when the loader loaded a head file; ignored when it "
                                                       "loaded a model folder, which has its own CLIP."}),
        }}

    INPUT_IS_LIST = True  # a list of images (e.g. one VAE Decode run per prompt line) is scored as one set
    RETURN_TYPES = ("FLOAT", "STRING", "IMAGE")
    RETURN_NAMES = ("scores", "report", "sorted_images")
    OUTPUT_IS_LIST = (True, False, False)
    OUTPUT_TOOLTIPS = ("One LAION aesthetic score per image, in batch order (a FLOAT list).",
                       "Readable report: each image's score and rank, then mean/min/max.",
                       "The images sorted by score, best first.")
    FUNCTION = "score"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Scores each image with the LAION aesthetic predictor; the scores also appear on the node. "
                   "Several incoming batches (a list, e.g. one per prompt line) are scored as one set.")

    def score(self, aesthetic_model, images, clip_vision=None):
        node = self.DISPLAY
        images, model, kw = _embedding_setup(aesthetic_model, images, clip_vision, node)
        scores = model.score(images, **kw)
        vals = check_finite_floats(
            scores, node=node, input="aesthetic_model", what="scores",
            fix=f"the aesthetic model '{model.name}' (or its CLIP vision) has NaN/inf weights: download it "
                "again; a CLIP vision model loaded in fp16 can overflow, try --fp32-text-enc or another file.")
        order = core.order_by_score(vals)
        sorted_images = images[torch.tensor(order, dtype=torch.long)]
        report = core.format_report(vals)
        return {"ui": {"atelier_scores": vals}, "result": (vals, report, sorted_images)}


def _embedding_setup(aesthetic_model, images, clip_vision, node: str):
    """The INPUT_IS_LIST inputs of the scorer and Set Coherence -> (one IMAGE batch, the model, the keyword
    arguments of AestheticModel.score / image_embeddings: progress, embed_fn, node, input)."""
    images = _cat_images(images, node)
    check_finite(images, node=node, input="images")  # NaN pixels would be embedded as black, silently
    model, embed_fn, where = _clip_for(_one(aesthetic_model), _one(clip_vision), node)
    return images, model, {"progress": Progress(int(images.shape[0])).callback(), "embed_fn": embed_fn,
                           "node": node, "input": where}


def _clip_for(aesthetic_model, clip_vision, node: str):
    """(model, embed_fn, input name) for AestheticModel.image_embeddings / score: the bundled CLIP tower
    (loaded under ComfyUI's model management, embed_fn None) or ComfyUI's CLIP_VISION (path b)."""
    if not isinstance(aesthetic_model, core.AestheticModel):
        raise AtelierError("this is not an aesthetic model.", node=node, input="aesthetic_model",
                           fix="connect Atelier Aesthetic Loader.")
    if aesthetic_model.has_clip:
        # CLIP tower + head as one model under ComfyUI's model management (offloaded like a CLIP vision)
        load_to_device(managed(aesthetic_model, aesthetic_model.clip, aesthetic_model.head,
                               offload_device=comfy.model_management.text_encoder_offload_device()))
        return aesthetic_model, None, "images"
    # ComfyUI's CLIP_VISION loads itself through its own patcher (encode_image)
    if clip_vision is None:
        raise AtelierError(f"'{aesthetic_model.name}' is a head file without a CLIP vision model.", node=node,
                           input="clip_vision", expected="a CLIP_VISION (CLIP ViT-L/14) input",
                           fix="add Load CLIP Vision with clip-vit-large-patch14 and connect it to "
                               "clip_vision, or load a simple-aesthetics-predictor model folder.")
    model = _with_image_size(aesthetic_model, getattr(clip_vision, "image_size", 224))
    return model, comfy_clip_vision_embedder(clip_vision), "clip_vision"


def _with_image_size(m: core.AestheticModel, size) -> core.AestheticModel:
    try:
        size = int(size)
    except (TypeError, ValueError):
        size = 224
    if size == m.image_size:
        return m
    return core.AestheticModel(head=m.head, clip=m.clip, image_size=size, name=m.name, source=m.source, info=m.info)


class AtelierAestheticFilter:
    DISPLAY = "Atelier Aesthetic Filter"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "The scored batch (same order as the scores)."}),
            "scores": ("FLOAT", {"forceInput": True, "tooltip": "The 'scores' output of Atelier Aesthetic Scorer."}),
            "mode": (["threshold", "top_k"], {"tooltip": "threshold: keep images scoring >= threshold. top_k: keep "
                                                         "the k best (kept in their original order)."}),
            "threshold": ("FLOAT", {"default": 6.0, "min": -100.0, "max": 100.0, "step": 0.05,
                                    "tooltip": "Minimum LAION score to keep an image (mode threshold)."}),
            "top_k": ("INT", {"default": 4, "min": 1, "max": 4096, "tooltip": "How many to keep (mode top_k)."}),
            "if_none_pass": (["keep best", "stop with error"], {
                "tooltip": "When no image reaches the threshold: pass on the single best image (the report says "
                           "nothing passed), or stop the run with an error."}),
        }}

    INPUT_IS_LIST = True
    RETURN_TYPES = ("IMAGE", "INT", "INT", "STRING")
    RETURN_NAMES = ("images", "indices", "kept", "report")
    OUTPUT_IS_LIST = (False, True, False, False)
    OUTPUT_TOOLTIPS = ("The kept images, in their original order (never empty).",
                       "Batch index of each kept image (an INT list).",
                       "How many images passed the filter (0 when none passed, even if 'keep best' passed one on).",
                       "What was kept and why.")
    FUNCTION = "filter"
    CATEGORY = CATEGORY
    DESCRIPTION = "Keeps the images whose aesthetic score reaches a threshold, or the top k."

    def filter(self, images, scores, mode, threshold, top_k, if_none_pass):
        node = self.DISPLAY
        batch = _cat_images(images, node)
        vals = _flat_scores(scores, node)
        mode, top_k, if_none = _one(mode), int(_one(top_k)), _one(if_none_pass)
        threshold = check_finite_float(_one(threshold), node=node, input="threshold")
        check_finite_floats(vals, node=node, input="scores", what="scores")  # a NaN score has no rank
        check_finite(batch, node=node, input="images")
        if len(vals) != batch.shape[0]:
            raise AtelierError(f"{len(vals)} scores for {batch.shape[0]} images.", node=node, input="scores",
                               expected="one score per image",
                               fix="connect the scores and the images of the same Atelier Aesthetic Scorer run "
                                   "(its input images, not sorted_images, or re-score the sorted ones).")
        keep, passed, report = core.keep_or_best(vals, mode=mode, threshold=threshold, top_k=top_k, if_none=if_none,
                                                 metric="score", node=node)
        out = batch[torch.tensor(keep, dtype=torch.long)]
        return {"ui": {"atelier_scores": [vals[i] for i in keep], "atelier_report": [report]},
                "result": (out, keep, passed, report)}


class AtelierAestheticSetGate:
    DISPLAY = "Atelier Aesthetic Set Gate"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "The set (passed through unchanged, so what you save waits for the gate)."}),
            "scores": ("FLOAT", {"forceInput": True, "tooltip": "The 'scores' output of Atelier Aesthetic Scorer."}),
            "threshold": ("FLOAT", {"default": 6.0, "min": -100.0, "max": 100.0, "step": 0.05,
                                    "tooltip": "The set passes when its mean score is >= this (6.0: the story "
                                               "submission rule)."}),
            "on_fail": (["continue", "stop workflow"], {
                "tooltip": "continue: report FAIL and pass the images on. stop workflow: raise an error so "
                           "nothing downstream (e.g. Save Image) runs for a rejected set."}),
        }, "optional": {
            "coherence": ("FLOAT", {"forceInput": True,
                                    "tooltip": "Optional: the 'coherence' output of Atelier Set Coherence (mean "
                                               "pairwise CLIP cosine similarity of the set). Shown in the report; "
                                               "checked against min_coherence when that is above 0."}),
            "min_coherence": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                        "tooltip": "The set also needs coherence >= this to pass. 0 = off (the "
                                                   "coherence is only reported): no threshold is calibrated for "
                                                   "CLIP ViT-L/14 yet; set one from the coherence of sets you "
                                                   "accept (see the node docs)."}),
        }}

    INPUT_IS_LIST = True
    RETURN_TYPES = ("IMAGE", "BOOLEAN", "FLOAT", "STRING")
    RETURN_NAMES = ("images", "passed", "mean", "report")
    OUTPUT_TOOLTIPS = ("The input images, unchanged.", "True when the mean score reaches the threshold.",
                       "The mean aesthetic score of the set.", "Per-image scores and the verdict.")
    FUNCTION = "gate"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Accepts or rejects a whole set by its mean aesthetic score (default: mean >= 6.0) and, "
                   "optionally, its coherence (Atelier Set Coherence) against min_coherence.")

    def gate(self, images, scores, threshold, on_fail, coherence=None, min_coherence=None):
        node = self.DISPLAY
        batch = _cat_images(images, node)
        vals = _flat_scores(scores, node)
        threshold, on_fail = check_finite_float(_one(threshold), node=node, input="threshold"), _one(on_fail)
        min_coh = check_finite_float(_one(min_coherence, coh.OFF), node=node, input="min_coherence")
        coh_value = _one(coherence)
        if coh_value is not None:
            coh_value = float(coh_value)
        elif min_coh > coh.OFF:
            raise AtelierError(f"min_coherence is {min_coh:g} but no coherence is connected.", node=node,
                               input="coherence", expected="the 'coherence' output of Atelier Set Coherence",
                               fix="connect Atelier Set Coherence's 'coherence' output, or set min_coherence to 0.")
        if len(vals) != batch.shape[0]:
            raise AtelierError(f"{len(vals)} scores for {batch.shape[0]} images.", node=node, input="scores",
                               expected="one score per image", fix="score exactly the images you gate.")
        # a NaN/inf score or image fails the set, whatever its mean: it never passes
        broken = None
        for check in (lambda: check_finite_floats(vals, node=node, input="scores", what="scores"),
                      lambda: check_finite(batch, node=node, input="images")):
            try:
                check()
            except AtelierError as exc:
                broken = broken or exc
        passed, mean = core.gate(vals, threshold)
        coh_ok = coh_value is None or coh.passes(coh_value, min_coh)
        mean_ok = bool(passed)
        passed = mean_ok and coh_ok and broken is None
        report = core.format_report(vals, threshold, title="set gate")
        if coh_value is not None:
            report += "\n" + _coherence_line(coh_value, min_coh)
            if mean_ok and broken is None:
                report += f"\nset gate (mean and coherence): {'PASS' if passed else 'FAIL'}"
        if broken is not None:
            report += f"\nset gate: FAIL, {broken.problem}"
            if on_fail == "stop workflow":
                raise AtelierError(f"set rejected: {broken.problem}", node=node, input=broken.input,
                                   expected=broken.expected, fix=broken.fix)
        elif not coh_ok and mean_ok and on_fail == "stop workflow":
            raise AtelierError("set rejected: set coherence "
                               f"{core.compare_text(coh_value, min_coh, names=('', 'min_coherence '))}.", node=node,
                               input="min_coherence", expected=f"coherence >= {min_coh:g}",
                               fix="re-render the outlier image (see Atelier Set Coherence's report) or the set with "
                                   "a shared style (LoRA, style prompt, seed), or lower min_coherence (0 = off), or "
                                   "set on_fail to 'continue'.")
        elif not passed and on_fail == "stop workflow":
            raise AtelierError("set rejected: mean aesthetic score "
                               f"{core.compare_text(mean, threshold, names=('', 'threshold '))}.", node=node, input="threshold", expected=f"mean >= {threshold:g}",
                               fix="re-render the set (other seed, prompts or LoRA strength), or lower the "
                                   "threshold, or set on_fail to 'continue'.")
        # the UI message is JSON: NaN/inf is not valid there, so it travels as null
        ui = {"atelier_scores": [v if math.isfinite(v) else None for v in vals],
              "atelier_gate": [{"passed": passed, "mean": mean if math.isfinite(mean) else None,
                                "threshold": threshold}]}
        if coh_value is not None:
            ui["atelier_gate"][0].update(coherence=coh_value if math.isfinite(coh_value) else None,
                                         min_coherence=min_coh)
        return {"ui": ui, "result": (batch, passed, mean, report)}


def _coherence_line(value: float, min_coherence: float) -> str:
    if min_coherence <= coh.OFF:
        return f"set coherence {value:.4f} (check off: min_coherence 0)"
    verdict = "PASS" if coh.passes(value, min_coherence) else "FAIL"
    return (f"set coherence: {core.compare_text(value, min_coherence, names=('', 'min_coherence '))} "
            f"-> {verdict}")


class AtelierSetCoherence:
    DISPLAY = "Atelier Set Coherence"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "aesthetic_model": (AESTHETIC_TYPE, {"tooltip": "From Atelier Aesthetic Loader: its CLIP vision tower "
                                                            "(model folder) or, for a head file, clip_vision "
                                                            "embeds the images, exactly as the scorer does."}),
            "images": ("IMAGE", {"tooltip": "The set (a batch, or a list of batches such as one per prompt line); "
                                            "at least 2 images for a meaningful coherence."}),
        }, "optional": {
            "clip_vision": ("CLIP_VISION", {"tooltip": "ComfyUI CLIP vision model (ViT-L/14, from Load CLIP Vision): "
                                                       "needed when the loader loaded a head file; ignored for a "
                                                       "model folder, which has its own CLIP."}),
        }}

    INPUT_IS_LIST = True
    RETURN_TYPES = ("FLOAT", "FLOAT", "INT", "STRING")
    RETURN_NAMES = ("coherence", "per_image", "outlier", "report")
    OUTPUT_IS_LIST = (False, True, False, False)
    OUTPUT_TOOLTIPS = ("Mean pairwise cosine similarity of the images' CLIP embeddings (1 = identical; "
                       "connect to Atelier Aesthetic Set Gate's coherence).",
                       "Each image's mean similarity to the others, in batch order (a FLOAT list).",
                       "Batch index of the outlier: the image least like the others (-1 for a single image).",
                       "Readable report: the coherence, each image's similarity and the outlier.")
    FUNCTION = "measure"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Scores how consistent a set is in style: mean pairwise cosine similarity of CLIP image "
                   "embeddings from the aesthetic scorer's CLIP vision model, plus the outlier image.")

    def measure(self, aesthetic_model, images, clip_vision=None):
        node = self.DISPLAY
        images, model, kw = _embedding_setup(aesthetic_model, images, clip_vision, node)
        n = int(images.shape[0])
        c = coh.coherence(model.image_embeddings(images, **kw), node=node, input=kw["input"])
        report = coh.format_report(c)
        short = (f"set coherence {c.coherence:.4f} ({n} images); outlier #{c.outlier} "
                 f"{c.per_image[c.outlier]:.4f} ({c.gap:.4f} below)" if c.outlier >= 0
                 else f"set coherence {c.coherence:.4f} (a single image)")
        return {"ui": {"atelier_report": [short]}, "result": (c.coherence, c.per_image, c.outlier, report)}


def _caption_font_dirs() -> list[str]:
    """The pack's `fonts` model folder(s), shared with the glyph family (system fonts are added in core)."""
    try:
        from .glyph import font_folder_paths
        return font_folder_paths()
    except ImportError:  # glyph family unavailable: the system fonts still apply
        return []


class AtelierImageGrid:
    DISPLAY = "Atelier Image Grid"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "Images to lay out, filled row by row. Different sizes are centred in "
                                            "cells as large as the largest image."}),
            "rows": ("INT", {"default": 0, "min": 0, "max": 256, "tooltip": "Rows; " + AUTO_LAYOUT_RULE}),
            "cols": ("INT", {"default": 0, "min": 0, "max": 256, "tooltip": "Columns; " + AUTO_LAYOUT_RULE}),
            "gap": ("INT", {"default": 8, "min": 0, "max": 512, "tooltip": "Pixels between cells and at the border."}),
            "background": ("STRING", {"default": "#ffffff",
                                      "tooltip": "Background colour: #rrggbb, #rgb, r,g,b or a colour name."}),
            "font_size": ("INT", {"default": 18, "min": 6, "max": 256,
                                  "tooltip": "Caption text size in pixels (the caption strip is 1.5x this)."}),
        }, "optional": {
            "captions": ("STRING", {"multiline": True, "default": "",
                                    "tooltip": "One caption per line, under each cell in order; any language "
                                               "(Chinese etc. is drawn with a font that has every character, "
                                               "from ComfyUI/models/fonts/ or the system fonts). Empty: use the "
                                               "scores when connected, else no captions."}),
            "scores": ("FLOAT", {"forceInput": True,
                                 "tooltip": "Optional scores (from the scorer) shown as captions when 'captions' is "
                                            "empty."}),
        }}

    INPUT_IS_LIST = True
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("grid",)
    OUTPUT_TOOLTIPS = ("One image holding all inputs as a grid.",)
    FUNCTION = "grid"
    CATEGORY = CATEGORY
    DESCRIPTION = "Lays a batch out as a rows x cols grid with gaps, a background colour and optional captions."

    def grid(self, images, rows, cols, gap, background, font_size, captions=None, scores=None):
        node = self.DISPLAY
        items = [t for t in (images if isinstance(images, (list, tuple)) else [images]) if t is not None]
        if not items:
            raise AtelierError("no images arrived.", node=node, input="images", expected="an IMAGE batch")
        items = [image_batch(t, node=node, input="images") for t in items]
        n = sum(int(t.shape[0]) for t in items)
        text = _one(captions, "") or ""
        caps = None
        if text.strip():
            caps = text.splitlines()
        elif scores is not None:
            vals = _flat_scores(scores, node)
            caps = [f"{v:.2f}" for v in vals[:n]]
        try:
            out = make_grid(items, rows=int(_one(rows)), cols=int(_one(cols)), gap=int(_one(gap)),
                            background=str(_one(background)), captions=caps, font_size=int(_one(font_size)),
                            font_dirs=_caption_font_dirs())
        except AtelierError as e:
            raise e.at(node) from None
        return (out,)


NODE_CLASS_MAPPINGS = {
    "AtelierAestheticLoader": AtelierAestheticLoader,
    "AtelierAestheticScorer": AtelierAestheticScorer,
    "AtelierAestheticFilter": AtelierAestheticFilter,
    "AtelierAestheticSetGate": AtelierAestheticSetGate,
    "AtelierSetCoherence": AtelierSetCoherence,
    "AtelierImageGrid": AtelierImageGrid,
}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY for k, v in NODE_CLASS_MAPPINGS.items()}
