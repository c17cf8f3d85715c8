"""System prompt injector nodes (family `prompt`).

- AtelierSystemPrompt: prompt + preset -> positive / negative STRINGs and a report.
- AtelierSystemPromptEncode: the same with a required CLIP input; also outputs both CONDITIONINGs.
  (Two nodes rather than one with an optional CLIP: every output of each node is always valid,
  so a KSampler is never fed a None conditioning.)
- AtelierPromptLines: one prompt per line -> a list of prompts (ComfyUI then runs the nodes it
  feeds once per line: the batch for the story-set pipeline).

Presets: the pack's `presets/*.json`, then the user's `ComfyUI/user/atelier/presets/*.json`
(a user preset with the same name replaces a shipped one). Schema: presets/README.md.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from ..core import presets
from ..core import prompt as core
from ..core.errors import AtelierError

log = logging.getLogger("atelier")

POSITION_CHOICES = ["preset default", "prefix", "suffix"]
DEFAULT_PRESET = "e-commerce white background"


# --------------------------------------------------------------------------- preset folders

def user_preset_dir() -> Path:
    """ComfyUI/user/atelier/presets (honours --user-directory where ComfyUI supports it)."""
    import folder_paths
    if hasattr(folder_paths, "get_user_directory"):
        base = folder_paths.get_user_directory()
    else:  # ComfyUI before mid-2024
        base = getattr(folder_paths, "user_directory", None) or os.path.join(folder_paths.base_path, "user")
    return Path(base) / "atelier" / "presets"


def preset_dirs() -> list[Path]:
    """The shipped presets, then the user's folder (listed, never created: the preset tooltip says where)."""
    return [presets.SHIPPED_PRESET_DIR, user_preset_dir()]


_cache: dict = {"sig": None, "load": None}


def load_presets() -> presets.PresetLoad:
    """All presets, reloaded only when a preset file was added, removed or changed.
    Bad files are logged once per change, naming the file."""
    dirs = preset_dirs()
    sig = presets.presets_signature(dirs)
    if _cache["sig"] != sig or _cache["load"] is None:
        try:
            load = presets.load_presets(dirs)
        except Exception as exc:  # never take both prompt nodes out of /object_info over a preset folder
            load = presets.PresetLoad()
            load.errors.append(f"preset folders {', '.join(map(str, dirs))} could not be read: "
                               f"{type(exc).__name__}: {exc}")
        for err in load.errors:
            log.warning("[Atelier] %s (the other presets are loaded)", err)
        for note in load.overridden:
            log.info("[Atelier] preset %s", note)
        _cache.update(sig=sig, load=load)
    return _cache["load"]


def preset_names() -> list[str]:
    names = load_presets().names
    if DEFAULT_PRESET in names:  # the first entry is the widget default
        names = [DEFAULT_PRESET] + [n for n in names if n != DEFAULT_PRESET]
    return names or ["(no presets found)"]


# --------------------------------------------------------------------------- tokens / encoding

_tokenizer: dict = {}


def default_token_counter():
    """Counts CLIP-L tokens with the tokenizer files that ship inside ComfyUI (comfy/sd1_tokenizer),
    ignoring ComfyUI's (weight:1.2) syntax. None if they cannot be loaded."""
    if "count" not in _tokenizer:
        count = None
        try:
            import comfy.sd1_clip
            from transformers import CLIPTokenizer
            path = os.path.join(os.path.dirname(os.path.realpath(comfy.sd1_clip.__file__)), "sd1_tokenizer")
            tok = CLIPTokenizer.from_pretrained(path)
            tok.model_max_length = 10 ** 6  # we count, we do not run the model: no length warning

            def count(text: str) -> int:
                return len(tok(core.strip_emphasis(text), add_special_tokens=False)["input_ids"])
        except Exception as exc:  # token counts are a help, never a reason to fail the graph
            log.warning("[Atelier] CLIP tokenizer unavailable, token counts disabled: %s", exc)
        _tokenizer["count"] = count
    return _tokenizer["count"]


def clip_token_counter(clip):
    """Counts text tokens exactly as this CLIP tokenizes them (first text encoder: CLIP-L when present)."""
    def count(text: str) -> int:
        tokens = clip.tokenize(text, return_word_ids=True)
        key = "l" if "l" in tokens else next(iter(tokens))
        return sum(1 for batch in tokens[key] for tok in batch if len(tok) > 2 and tok[2] != 0)
    return count


def token_window(clip):
    """(count_tokens, core.TokenWindow) for this CLIP: the pack's Kolors text encoder counts ChatGLM tokens (its
    [gMASK] sop prefix included) against Kolors' 256-token window, any other CLIP its own tokens against 75."""
    tok = getattr(clip, "tokenizer", None)
    try:
        from ._kolors_text import KolorsTokenizer
    except Exception:  # noqa: BLE001 - Kolors support unavailable: every CLIP is a CLIP
        KolorsTokenizer = None
    if KolorsTokenizer is not None and isinstance(tok, KolorsTokenizer):
        return tok.tok.count, core.KOLORS_TOKENS
    return clip_token_counter(clip), core.CLIP_TOKENS


def encode(clip, text: str):
    """CONDITIONING for `text`, the way ComfyUI's CLIPTextEncode makes it."""
    tokens = clip.tokenize(text)
    if hasattr(clip, "encode_from_tokens_scheduled"):  # current ComfyUI (hooks aware)
        return clip.encode_from_tokens_scheduled(tokens)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


# --------------------------------------------------------------------------- shared node logic

def _common_inputs() -> dict:
    return {
        "prompt": ("STRING", {"multiline": True, "default": "", "tooltip":
                   "Your prompt. The preset's phrases are added unless the prompt already has them "
                   "(compared per phrase: separated by , ; newlines or the Chinese ，、；。：, any case, "
                   "(weights) ignored). An empty prompt "
                   "is allowed: the preset text is used alone and the report warns. One prompt per line "
                   "as a batch: feed this from 'Atelier Prompt Lines'."}),
        "preset": (preset_names(), {"default": DEFAULT_PRESET, "tooltip":
                   "Preset from the pack's presets/ folder or your own *.json presets in "
                   f"{user_preset_dir()} (ComfyUI/user/atelier/presets; create the folder if it is not there, "
                   "then refresh the page; schema in presets/README.md). A file that fails "
                   "to load is named in the log and the report."}),
        "position": (POSITION_CHOICES, {"default": "preset default", "tooltip":
                     "Where the preset's positive text goes: the preset's own choice, before your prompt "
                     "(prefix) or after it (suffix)."}),
        "extra_negative": ("STRING", {"multiline": True, "default": "", "tooltip":
                           "Added to the negative prompt after the preset's negative and the negatives of "
                           "the product/subject categories found in your prompt (e-commerce: by the product's "
                           "head noun, so 'bottle holder for bike' is an accessory, not a bottle); duplicates "
                           "are removed."}),
    }


def _optional_inputs() -> dict:
    return {
        "style_id": ("STRING", {"default": "", "tooltip":
                     "Style id for template presets like 'style token' ({prompt}, {style}): style03 or 3. "
                     "Empty: the first styleNN written in the prompt is used. With other presets a "
                     "style id is appended to the prompt."}),
    }


def _validate_preset(preset) -> bool | str:
    """True, or the error text ComfyUI shows when the prompt is queued (we replace ComfyUI's own
    'value not in list' check so the message can also name preset files that failed to load)."""
    if not isinstance(preset, str):  # linked from another node: checked when the node runs
        return True
    try:
        presets.get_preset(load_presets(), preset)
    except AtelierError as exc:
        return str(exc)
    return True


def _run(node: str, prompt, preset, position, extra_negative, style_id, count_tokens, tokens=None):
    load = load_presets()
    p = presets.get_preset(load, preset, node=node)
    res = core.build_prompts(prompt, p, position=position, extra_negative=extra_negative or "",
                             style_id=style_id or "", count_tokens=count_tokens, node=node, tokens=tokens)
    for w in res.warnings:
        log.warning("[Atelier] %s: %s", node, w)
    report = res.report
    if load.errors:
        report += "\npreset files skipped: " + " | ".join(load.errors)
    if count_tokens is None:
        report += "\ntokens: not counted (CLIP tokenizer unavailable)"
    return res, report


def _files_hash() -> str:
    return hashlib.sha256(repr(presets.presets_signature(preset_dirs())).encode()).hexdigest()


# --------------------------------------------------------------------------- nodes

class _PresetNode:
    """ComfyUI hooks shared by the preset nodes: check the preset name before the run (so the
    error can also name broken preset files) and rerun when a preset file changes."""

    @classmethod
    def VALIDATE_INPUTS(cls, preset):
        return _validate_preset(preset)

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return _files_hash()


class AtelierSystemPrompt(_PresetNode):
    """Prompt + preset -> positive and negative prompt strings."""
    DISPLAY = "Atelier System Prompt"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": _common_inputs(), "optional": _optional_inputs()}

    RETURN_TYPES = ("STRING", "STRING", "STRING")
    RETURN_NAMES = ("positive", "negative", "report")
    OUTPUT_TOOLTIPS = (
        "Your prompt with the preset's positive text injected (no repeated phrases).",
        "Preset negative + negatives of the categories found in the prompt + extra_negative.",
        "What was added or skipped, matched categories, CLIP token counts and warnings (e.g. text past "
        "CLIP's 75-token window).",
    )
    FUNCTION = "run"
    CATEGORY = "atelier/prompt"
    DESCRIPTION = ("Injects a system prompt preset (e-commerce white background, style token styleNN, keyboard "
                   "skin, general negative, or your own JSON) into your prompt and builds the negative prompt "
                   "from keywords in it. Reports CLIP token counts and warns past 75 tokens. Use 'Atelier "
                   "System Prompt (encode)' to get CONDITIONING directly.")

    def run(self, prompt, preset, position, extra_negative, style_id=""):
        res, report = _run(self.DISPLAY, prompt, preset, position, extra_negative, style_id,
                           default_token_counter())
        return {"ui": {"text": [report]}, "result": (res.positive, res.negative, report)}


class AtelierSystemPromptEncode(_PresetNode):
    """Same as AtelierSystemPrompt, then encodes both sides with the CLIP."""
    DISPLAY = "Atelier System Prompt (encode)"

    @classmethod
    def INPUT_TYPES(cls):
        req = {"clip": ("CLIP", {"tooltip": "Text encoder, e.g. from Load Checkpoint. Token counts use its own "
                                 "tokenizer: CLIP tokens against the 75-token window, or, with Atelier Kolors Text "
                                 "Encoder Loader's CLIP, ChatGLM tokens against Kolors' 256 (the rest is cut)."})}
        req.update(_common_inputs())
        return {"required": req, "optional": _optional_inputs()}

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "STRING", "STRING", "STRING")
    RETURN_NAMES = ("positive", "negative", "positive_text", "negative_text", "report")
    OUTPUT_TOOLTIPS = (
        "The positive prompt encoded by the CLIP (for KSampler's positive).",
        "The negative prompt encoded by the CLIP (for KSampler's negative).",
        "The positive prompt text.",
        "The negative prompt text.",
        "What was added or skipped, matched categories, token counts (CLIP of 75, or ChatGLM of 256 for Kolors) "
        "and warnings.",
    )
    FUNCTION = "run"
    CATEGORY = "atelier/prompt"
    DESCRIPTION = ("Atelier System Prompt plus CLIP text encoding: outputs both CONDITIONINGs ready for a "
                   "sampler, and the texts and report.")

    def run(self, clip, prompt, preset, position, extra_negative, style_id=""):
        node = self.DISPLAY
        if clip is None:
            raise AtelierError("the CLIP input is None: the loaded checkpoint has no text encoder.", node=node,
                               input="clip", expected="a CLIP from Load Checkpoint or Load CLIP",
                               fix="load a checkpoint that contains a text encoder, or add a Load CLIP node.")
        count, window = token_window(clip)
        res, report = _run(node, prompt, preset, position, extra_negative, style_id, count, window)
        return {"ui": {"text": [report]},
                "result": (encode(clip, res.positive), encode(clip, res.negative), res.positive, res.negative, report)}


class AtelierPromptLines:
    """Multiline text -> list of prompts, one per non-empty line."""
    DISPLAY = "Atelier Prompt Lines"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text": ("STRING", {"multiline": True, "default": "", "tooltip":
                     "One prompt per line. Empty lines are skipped. Connected nodes run once per line."}),
            "skip_comments": ("BOOLEAN", {"default": True, "tooltip":
                              "Skip lines that start with '#'."}),
        }}

    RETURN_TYPES = ("STRING", "INT")
    RETURN_NAMES = ("prompts", "count")
    OUTPUT_IS_LIST = (True, False)
    OUTPUT_TOOLTIPS = ("The prompts, as a list: each node it feeds runs once per prompt.",
                       "How many prompts there are.")
    FUNCTION = "run"
    CATEGORY = "atelier/prompt"
    DESCRIPTION = "Splits a multiline prompt into one prompt per line (a batch for the story-set pipeline)."

    def run(self, text, skip_comments=True):
        lines = core.split_lines(text, skip_comments=skip_comments, node=self.DISPLAY)
        if not lines:
            raise AtelierError("there are no prompt lines (the text is empty or only comments).",
                               node=self.DISPLAY, input="text",
                               expected="at least one non-empty line", fix="type one prompt per line.")
        return (lines, len(lines))


NODE_CLASS_MAPPINGS = {
    "AtelierSystemPrompt": AtelierSystemPrompt,
    "AtelierSystemPromptEncode": AtelierSystemPromptEncode,
    "AtelierPromptLines": AtelierPromptLines,
}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY for k, v in NODE_CLASS_MAPPINGS.items()}
