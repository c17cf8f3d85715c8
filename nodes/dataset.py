"""Dataset family: filter, BLIP captions and training-layout export (ComfyUI wrappers of core/dataset_prep.py
and core/captioning.py), to look at a training set in the editor before `atelier dataset` runs it on thousands.

- Atelier Dataset Filter: a subfolder of ComfyUI's input folder (ids = file stems) or an IMAGE list ->
  kept images, their ids and a report (data-juicer image_shape_filter + image_aspect_ratio_filter).
- Atelier Captioner Loader: a BLIP folder from ComfyUI/models/captioners/ -> ATELIER_CAPTIONER.
- Atelier Caption: images -> one caption per image, with prompt, template and trigger word.
- Atelier Dataset Export: images + captions (+ control images) -> the ControlNet or LoRA layout in a
  subfolder of ComfyUI's output folder.

Folder names typed into these nodes arrive over HTTP with the prompt: they are confined to ComfyUI's
input (filter) or output (export) folder by core/confine.py.
"""
from __future__ import annotations

import os

import torch

import folder_paths

from ..core import captioning as cap
from ..core import confine as C
from ..core import dataset_prep as dp
from ..core.budget import check_size
from ..core.cache import FileCache, file_stamp
from ..core.errors import AtelierError
from ..core.files import images_by_id
from ..core.finite import check_finite
from ..core.folders import list_files
from ..core.images import from_uint8, image_batch, rgb_uint8
from ._lists import one as _one
from ._managed import load_to_device, managed, read_weights
from ._progress import Progress
from .models import resolve_model  # importing it registers the pack's model folders (captioners among them)

CATEGORY = "atelier/dataset"
FOLDER = "captioners"
CAPTIONER_TYPE = "ATELIER_CAPTIONER"
NO_LIMIT = 0


def _flat_images(images, node: str, input: str) -> list[torch.Tensor]:
    """A list of IMAGE batches -> one [1,H,W,C] tensor per image, in order (sizes may differ)."""
    out = []
    for t in images if isinstance(images, (list, tuple)) else [images]:
        if t is None:
            continue
        b = image_batch(t, node=node, input=input)
        check_finite(b, node=node, input=input)
        out.extend(b[i:i + 1] for i in range(b.shape[0]))
    return out


def _flat_strings(values) -> list[str]:
    out = []
    for v in values if isinstance(values, (list, tuple)) else [values]:
        if isinstance(v, (list, tuple)):
            out.extend(str(x) for x in v)
        elif v is not None:
            out.append(str(v))
    return out


def position_ids(n: int) -> list[str]:
    """Ids of images that arrive without names: their place in the incoming list (00000, 00001, ...),
    fixed before filtering, so a dropped image never renames another."""
    return [f"{i:05d}" for i in range(n)]


# --------------------------------------------------------------------------- filter

class AtelierDatasetFilter:
    DISPLAY = "Atelier Dataset Filter"

    @classmethod
    def INPUT_TYPES(cls):
        size = {"min": 0, "max": 1 << 20, "step": 1}
        return {"required": {
            "folder": ("STRING", {"default": "", "tooltip":
                       "A subfolder of ComfyUI's input folder holding the images (the id of an image is its file "
                       "name without extension). Empty: filter the 'images' input instead."}),
            "min_width": ("INT", {"default": 1, **size, "tooltip": "Keep images at least this wide (inclusive)."}),
            "max_width": ("INT", {"default": NO_LIMIT, **size, "tooltip": "Keep images at most this wide "
                                                                           "(inclusive); 0 = no limit."}),
            "min_height": ("INT", {"default": 1, **size, "tooltip": "Keep images at least this tall (inclusive)."}),
            "max_height": ("INT", {"default": NO_LIMIT, **size, "tooltip": "Keep images at most this tall "
                                                                            "(inclusive); 0 = no limit."}),
            "min_ratio": ("FLOAT", {"default": dp.DEFAULT_MIN_RATIO, "min": 0.001, "max": 1000.0, "step": 0.01,
                                    "tooltip": "Smallest aspect ratio width/height kept (inclusive; 0.5 = twice as "
                                               "tall as wide)."}),
            "max_ratio": ("FLOAT", {"default": dp.DEFAULT_MAX_RATIO, "min": 0.001, "max": 1000.0, "step": 0.01,
                                    "tooltip": "Largest aspect ratio width/height kept (inclusive)."}),
            "any_or_all": (list(dp.ANY_OR_ALL), {"tooltip":
                           "When an id has several images (image + control image): 'any' keeps it if one passes, "
                           "'all' only if every one passes (data-juicer's any_or_all)."}),
        }, "optional": {
            "images": ("IMAGE", {"tooltip": "Images to filter when 'folder' is empty; their ids are their places "
                                            "in the incoming list (00000, 00001, ...)."}),
            "conditioning_folder": ("STRING", {"default": "", "tooltip":
                                    "Optional subfolder of the input folder with control images by id: each "
                                    "becomes a second image of its id's sample (see any_or_all)."}),
        }}

    INPUT_IS_LIST = True
    RETURN_TYPES = ("IMAGE", "STRING", "STRING")
    RETURN_NAMES = ("images", "ids", "report")
    OUTPUT_IS_LIST = (True, True, False)
    OUTPUT_TOOLTIPS = ("The kept images, one list entry per image (sizes may differ), sorted by id.",
                       "The id of each kept image (a STRING list, same order): connect to Atelier Dataset Export.",
                       "Kept and dropped ids, with the filter, the measured size or ratio and the bound.")
    FUNCTION = "filter"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Keeps the images whose size and aspect ratio are within range, with data-juicer's "
                   "image_shape_filter / image_aspect_ratio_filter semantics (inclusive bounds, any/all), and "
                   "reports what was dropped and why.")

    def filter(self, folder, min_width, max_width, min_height, max_height, min_ratio, max_ratio, any_or_all,
               images=None, conditioning_folder=None):
        node = self.DISPLAY
        v = {k: _one(x) for k, x in dict(min_width=min_width, max_width=max_width, min_height=min_height,
                                         max_height=max_height, min_ratio=min_ratio, max_ratio=max_ratio,
                                         any_or_all=any_or_all).items()}
        rules = [dp.ShapeRule(int(v["min_width"]), int(v["max_width"]) or dp.MAXSIZE, int(v["min_height"]),
                              int(v["max_height"]) or dp.MAXSIZE, v["any_or_all"]),
                 dp.RatioRule(float(v["min_ratio"]), float(v["max_ratio"]), v["any_or_all"])]
        folder = (_one(folder, "") or "").strip()
        cond_folder = (_one(conditioning_folder, "") or "").strip()
        if folder:
            return self._filter_folder(folder, cond_folder, rules, node)
        pics = _flat_images(images, node, "images") if images is not None else []
        if not pics:
            raise AtelierError("nothing to filter.", node=node, input="folder",
                               expected="a subfolder of ComfyUI's input folder, or an IMAGE on 'images'",
                               fix="type the folder name (e.g. my_dataset) or connect images.")
        ids = position_ids(len(pics))
        sizes = {i: [(int(p.shape[2]), int(p.shape[1]))] for i, p in zip(ids, pics)}
        report = dp.filter_sizes(sizes, rules, node=node)
        by_id = dict(zip(ids, pics))
        return self._out([by_id[i] for i in report.kept], report)

    def _filter_folder(self, folder, cond_folder, rules, node):
        root = folder_paths.get_input_directory()
        path = C.confine(folder, [root], kind="dir", what="folder", node=node, input="folder",
                         fix="type the name of a subfolder of ComfyUI's input folder (e.g. my_dataset).")
        found = images_by_id(path, node=node, input="folder")
        cond = {}
        if cond_folder:
            cpath = C.confine(cond_folder, [root], kind="dir", what="folder", node=node, input="conditioning_folder",
                              fix="type the name of a subfolder of ComfyUI's input folder, or leave it empty.")
            cond = images_by_id(cpath, node=node, input="conditioning_folder")
        samples = {i: [p] + ([cond[i]] if i in cond else []) for i, p in found.items()}
        progress = Progress(len(samples))
        report = dp.filter_files(samples, rules, progress=progress.callback(), node=node)
        kept = []
        for i in report.kept:
            w, h = dp.read_size(found[i])
            check_size(h, w, node=node, input="folder", what=f"image {os.path.basename(found[i])}")
            kept.append(from_uint8(dp.load_rgb(found[i]))[None])
        return self._out(kept, report)

    @staticmethod
    def _out(kept, report):
        text = report.text()
        return {"ui": {"text": [text]}, "result": (kept, list(report.kept), text)}


# --------------------------------------------------------------------------- captioner

def list_captioners() -> list[str]:
    """BLIP folders (config.json + weights) in ComfyUI/models/captioners/, one entry each."""
    try:
        roots = folder_paths.get_folder_paths(FOLDER)
    except KeyError:
        roots = []
    return [rel for rel, full in list_files(roots, (".safetensors",), stop=cap.is_captioner_dir)
            if os.path.isdir(full)]


_CACHE: FileCache[cap.Captioner] = FileCache(max_items=1)


class AtelierCaptionerLoader:
    DISPLAY = "Atelier Captioner Loader"

    @classmethod
    def INPUT_TYPES(cls):
        names = list_captioners()
        return {"required": {
            "model_name": (names or [cap.MODEL_ID], {"tooltip":
                           "A BLIP captioning folder in ComfyUI/models/captioners/ (config.json, model.safetensors, "
                           f"preprocessor and tokenizer files), e.g. {cap.MODEL_ID}: "
                           f"`atelier models download {cap.MODEL_ID}`."}),
        }}

    RETURN_TYPES = (CAPTIONER_TYPE,)
    RETURN_NAMES = ("captioner",)
    OUTPUT_TOOLTIPS = ("ATELIER_CAPTIONER: a BLIP model and its processor (transformers). Connect to Atelier "
                       "Caption.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads a BLIP image-captioning model (BlipForConditionalGeneration) from models/captioners."

    @classmethod
    def IS_CHANGED(cls, model_name):
        try:
            return repr(file_stamp(resolve_model(FOLDER, model_name, node=cls.DISPLAY, input="model_name")))
        except Exception:
            return model_name  # the run reports the missing model

    def load(self, model_name):
        node = self.DISPLAY
        path = resolve_model(FOLDER, model_name, node=node, input="model_name")
        return (_CACHE.get(path, lambda p: cap.load_captioner(p, read=read_weights, node=node)),)


class AtelierCaption:
    DISPLAY = "Atelier Caption"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "captioner": (CAPTIONER_TYPE, {"tooltip": "From Atelier Captioner Loader."}),
            "images": ("IMAGE", {"tooltip": "Images to caption (a batch or a list of batches of any sizes; RGBA is "
                                            "laid on white)."}),
            "prompt": ("STRING", {"default": "", "tooltip":
                       "Conditional prompt BLIP continues, e.g. 'a keyboard skin of' (the caption then starts "
                       "with it unless strip_prompt is on). Empty: unconditional captions."}),
            "template": ("STRING", {"default": "{caption}", "tooltip":
                         "How each caption is written: {caption}, {trigger} and {id} are filled in, e.g. "
                         "'{caption}, iflyskin' or '{trigger}, {caption}'."}),
            "trigger": ("STRING", {"default": "", "tooltip": "Trigger word for {trigger} in the template."}),
            "strip_prompt": ("BOOLEAN", {"default": False, "tooltip": "Remove the prompt from the start of each "
                                                                        "caption."}),
            "max_new_tokens": ("INT", {"default": cap.DEFAULT_MAX_NEW_TOKENS, "min": 1, "max": 512, "tooltip":
                               "Longest caption in tokens (greedy decoding: the same image always gets the same "
                               "caption)."}),
            "batch_size": ("INT", {"default": cap.DEFAULT_BATCH_SIZE, "min": 1, "max": 256,
                                   "tooltip": "Images per forward pass (lower it when memory is short)."}),
        }, "optional": {
            "ids": ("STRING", {"forceInput": True, "tooltip": "Ids for {id} (the 'ids' output of Atelier Dataset "
                                                               "Filter); default: 00000, 00001, ..."}),
        }}

    INPUT_IS_LIST = True
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("captions", "text")
    OUTPUT_IS_LIST = (True, False)
    OUTPUT_TOOLTIPS = ("One caption per image, in image order (a STRING list; an empty caption stays empty and the "
                       "export drops that id).", "All captions, one per line.")
    FUNCTION = "caption"
    CATEGORY = CATEGORY
    DESCRIPTION = "Captions each image with BLIP (greedy), then applies the template and trigger word."

    def caption(self, captioner, images, prompt, template, trigger, strip_prompt, max_new_tokens, batch_size,
                ids=None):
        node = self.DISPLAY
        captioner = _one(captioner)
        if not isinstance(captioner, cap.Captioner):
            raise AtelierError("this is not a captioner.", node=node, input="captioner",
                               fix="connect Atelier Captioner Loader.")
        template, trigger, prompt = _one(template, "{caption}"), _one(trigger, "") or "", _one(prompt, "") or ""
        dp.apply_template("x", template, node=node)  # a bad template fails before the model runs
        pics = _flat_images(images, node, "images")
        if not pics:
            raise AtelierError("no images arrived.", node=node, input="images", expected="an IMAGE batch")
        names = _flat_strings(ids) if ids is not None else position_ids(len(pics))
        if len(names) != len(pics):
            raise AtelierError(f"{len(names)} ids for {len(pics)} images.", node=node, input="ids",
                               expected="one id per image", fix="connect the ids and images of the same filter.")
        # its two towers as one managed model (ComfyUI's ModelPatcher sets `.device` on the module it holds,
        # which a transformers model refuses): /free and memory pressure unload it like ComfyUI's own
        device = load_to_device(managed(captioner, captioner.model.vision_model, captioner.model.text_decoder))
        progress = Progress(len(pics))
        raw = captioner.caption([rgb_uint8(p)[0] for p in pics], prompt=prompt,
                                max_new_tokens=int(_one(max_new_tokens)), batch_size=int(_one(batch_size)),
                                strip_prompt=bool(_one(strip_prompt)), device=device, progress=progress.callback(),
                                node=node)
        out = [dp.apply_template(t, template, id=i, trigger=trigger, node=node) if t else "" for t, i in zip(raw, names)]
        text = "\n".join(out)
        return {"ui": {"text": [text]}, "result": (out, text)}


# --------------------------------------------------------------------------- export

class AtelierDatasetExport:
    DISPLAY = "Atelier Dataset Export"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "The training images (a list, e.g. from Atelier Dataset Filter)."}),
            "captions": ("STRING", {"forceInput": True, "tooltip": "One caption per image, same order (Atelier "
                                                                    "Caption's 'captions')."}),
            "layout": (list(dp.LAYOUTS), {"tooltip":
                       "controlnet: train.jsonl + images/ + conditioning/ (diffusers train_controlnet). lora: "
                       "images/<id>.png + <id>.txt + metadata.jsonl (kohya and diffusers imagefolder)."}),
            "dataset_name": ("STRING", {"default": "datasets/my_dataset", "tooltip":
                             "Folder inside ComfyUI's output folder to write (re-running skips ids whose image "
                             "and caption did not change)."}),
        }, "optional": {
            "ids": ("STRING", {"forceInput": True, "tooltip": "The id of each image (Atelier Dataset Filter's "
                                                               "'ids'); default 00000, 00001, ... by place."}),
            "conditioning": ("IMAGE", {"tooltip": "Control images, one per image, same order (e.g. Atelier Canny); "
                                                  "required for the controlnet layout."}),
        }}

    INPUT_IS_LIST = True
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("path", "report")
    OUTPUT_TOOLTIPS = ("The dataset folder that was written.",
                       "Exported, unchanged and dropped ids (no caption, no control image).")
    FUNCTION = "export"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Writes images, captions and control images, keyed by id, in the layout the ControlNet or LoRA "
                   "trainer reads, into a folder of ComfyUI's output folder (every file written whole, then renamed).")

    def export(self, images, captions, layout, dataset_name, ids=None, conditioning=None):
        node = self.DISPLAY
        layout, name = _one(layout), (_one(dataset_name, "") or "").strip()
        base = folder_paths.get_output_directory()
        out = C.candidate(name, base) if name else None
        if out is None:
            raise AtelierError(f"{name!r} is not a folder name inside the output folder.", node=node,
                               input="dataset_name", expected="a relative name such as datasets/keyboard",
                               fix="use letters, digits, '-', '_' and '/', no '..' (a symlink there may not "
                                   "point outside the output folder).")
        pics = _flat_images(images, node, "images")
        caps = _flat_strings(captions)
        names = _flat_strings(ids) if ids is not None else position_ids(len(pics))
        conds = _flat_images(conditioning, node, "conditioning") if conditioning is not None else None
        for what, got in (("captions", len(caps)), ("ids", len(names))) + (
                (("conditioning", len(conds)),) if conds is not None else ()):
            if got != len(pics):
                raise AtelierError(f"{got} {what} for {len(pics)} images.", node=node, input=what,
                                   expected=f"one entry of '{what}' per image",
                                   fix="connect outputs that come from the same images (the same filter run).")
        items = [dp.Item(i, rgb_uint8(p)[0], c, rgb_uint8(conds[k])[0] if conds is not None else None)
                 for k, (i, p, c) in enumerate(zip(names, pics, caps))]
        progress = Progress(len(items))
        try:
            report = dp.export_dataset(items, out, layout, progress=progress.callback(), node=node)
        except AtelierError as exc:
            raise exc.at(node)
        text = report.text()
        return {"ui": {"text": [text]}, "result": (out, text)}


NODE_CLASS_MAPPINGS = {
    "AtelierDatasetFilter": AtelierDatasetFilter,
    "AtelierCaptionerLoader": AtelierCaptionerLoader,
    "AtelierCaption": AtelierCaption,
    "AtelierDatasetExport": AtelierDatasetExport,
}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY for k, v in NODE_CLASS_MAPPINGS.items()}
