"""Glyph family: OCR boxes, typed text boxes, glyph render / compose, keyboard layout composer.

Thin wrappers over ``core.glyph``, ``core.ocr`` and ``core.layout``.

ATELIER_GLYPHS (the value passed between these nodes) is a JSON-serialisable dict::

    {"type": "atelier_glyphs", "version": 1, "width": W, "height": H,
     "items": [[{"text", "polygon": [[x, y] x 4], "font", "size", "direction", "score"}, ...], ...]}

one list of text boxes per image of the batch, in pixels of a W x H canvas (renderers scale it to
their own canvas).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..core import fonts as F
from ..core import glyph as G
from ..core import layout as L
from ..core import ocr as O
from ..core import readback as RB
from ..core.budget import check_size
from ..core.errors import AtelierError
from ..core.finite import check_finite_float, check_finite_floats, is_finite_number
from ..core.images import from_uint8, image_batch, rgb_uint8, to_uint8
from ._lists import floats, one as _one
from ._preview import with_preview
from ._progress import Progress

CATEGORY = "atelier/glyph"
GLYPHS = "ATELIER_GLYPHS"
PAD_TYPE = "ATELIER_PAD"
MAX_SIDE = 8192

GLYPHS_TOOLTIP = ("ATELIER_GLYPHS: text boxes (text, 4-point polygon in pixels, optional font/size, OCR score) "
                  "for each image of the batch, with the canvas size they refer to. JSON-serialisable.")
FONT_TOOLTIP = ("Font for boxes that do not name their own. 'auto' picks an installed font that has every "
                "character (a CJK font such as Noto Sans CJK for Chinese). Fonts come from ComfyUI/models/fonts/ "
                "and the system font folders; 'file.ttc#2' picks face 2 of a collection. A font that lacks a "
                "character is an error, never boxes.")
FIT_TOOLTIP = ("contain: keep the font's proportions and centre the text in its box (long text is shrunk, "
               "never clipped). stretch: fill the box along the line, as OCR boxes do.")
POLARITY = ["white_on_black", "black_on_white"]
SMALL_IMAGE = ["as is", "pad to 736"]


def font_folder_paths() -> list[str]:
    """The `fonts` model folder(s): registered by the models family, else ComfyUI/models/fonts."""
    import folder_paths
    entry = getattr(folder_paths, "folder_names_and_paths", {}).get("fonts")
    if entry:
        return [p for p in entry[0]]
    return [os.path.join(folder_paths.models_dir, "fonts")]


def allowed_font_dirs() -> list[Path]:
    return F.font_dirs(font_folder_paths())


def font_choices() -> list[str]:
    try:
        return ["auto"] + F.font_names(allowed_font_dirs())
    except Exception:
        return ["auto"]


def _validate_font(font: str, node: str) -> bool | str:
    if not font or font == "auto":
        return True
    try:
        path, index = F.resolve_font(font, allowed_font_dirs(), node=node)
        F.load_font(path, index, 32, node=node)  # a damaged file or a face the collection lacks: said at queue time
    except AtelierError as exc:
        return str(exc)
    return True


def _rgb_u8(x: torch.Tensor, background: float = 0.0) -> np.ndarray:
    """One image [H, W, C] float -> uint8 RGB as Save Image writes it; alpha laid on `background`."""
    return rgb_uint8(x[None], background)[0]


def check_glyphs(glyphs, node: str, input: str = "glyphs") -> dict:
    """Validate an ATELIER_GLYPHS value (also accepts the JSON text of one)."""
    if isinstance(glyphs, str):
        try:
            glyphs = json.loads(glyphs)
        except json.JSONDecodeError:
            glyphs = None
    if (not isinstance(glyphs, dict) or glyphs.get("type") != G.GLYPHS_TYPE
            or not isinstance(glyphs.get("items"), list)):
        raise AtelierError("this is not an ATELIER_GLYPHS value", node=node, input=input,
                           expected="the glyphs output of Atelier OCR Boxes, Atelier Text Boxes or Atelier Layout",
                           fix="connect one of those nodes.")
    fix = ("connect the glyphs output of Atelier OCR Boxes / Text Boxes / Layout Compose unchanged; an API client "
           "must send finite JSON numbers (not NaN, Infinity or 1e999).")
    for key in ("width", "height"):
        v = glyphs.get(key)
        if isinstance(v, bool) or not is_finite_number(v) or float(v) < 1 or not float(v).is_integer():
            raise AtelierError(f"the glyphs' canvas {key} is {v!r}", node=node, input=input,
                               expected="a canvas width and height in whole pixels (>= 1)", fix=fix)
    for i, boxes in enumerate(glyphs["items"]):
        for k, b in enumerate(boxes if isinstance(boxes, list) else [None]):
            where = f"box #{k + 1} of image #{i + 1}"
            poly = b.get("polygon") if isinstance(b, dict) else None
            try:
                flat = np.asarray(poly, np.float64).reshape(-1)
            except (TypeError, ValueError):
                flat = np.zeros(0)
            if flat.size != 8:
                raise AtelierError(f"{where} has no 4-point polygon ({poly!r})", node=node, input=input,
                                   expected='boxes {"text", "polygon": [[x, y] x 4], ...}', fix=fix)
            check_finite_floats(flat, node=node, input=input, what=f"corner coordinates of {where}", fix=fix)
            size = b.get("size")
            if size is not None and (isinstance(size, bool) or not is_finite_number(size) or float(size) <= 0):
                raise AtelierError(f"{where} has font size {size!r}", node=node, input=input,
                                   expected="a font size in pixels > 0, or none (auto-fit)", fix=fix)
    return glyphs


def _check_canvas(h: int, w: int, n: int, node: str, input: str, what: str) -> None:
    """The output batch (IMAGE + MASK floats) of n canvases of h x w, against the size budget, before allocating."""
    check_size(h, w, batch=n, channels=4, node=node, input=input, what=what,
               fix="use a smaller width/height (the glyphs are scaled to it), or fewer images at once.")


def _boxes_for_canvas(glyphs: dict, i: int, width: int, height: int, pad: dict | None = None) -> list[dict]:
    items = glyphs["items"]
    boxes = items[i if len(items) > 1 else 0] if items else []
    gw, gh = float(glyphs["width"]), float(glyphs["height"])
    if pad:
        sx, sy = pad["scaled_w"] / gw, pad["scaled_h"] / gh
        boxes = G.scale_boxes(boxes, sx, sy)
        return [dict(b, polygon=[[p[0] + pad["left"], p[1] + pad["top"]] for p in b["polygon"]]) for b in boxes]
    if (gw, gh) != (float(width), float(height)):
        boxes = G.scale_boxes(boxes, width / gw, height / gh)
    return boxes


def _batch_size(node: str, **sizes: int) -> int:
    vals = {k: v for k, v in sizes.items() if v > 1}
    if len(set(vals.values())) > 1:
        raise AtelierError(f"batch sizes do not match ({', '.join(f'{k}: {v}' for k, v in vals.items())})", node=node,
                           expected="equal batch sizes, or a batch of 1 that is reused for every image",
                           fix="make the batches the same size or use a single image / single glyph set.")
    return max([1] + list(sizes.values()))


# --------------------------------------------------------------------------------------------- nodes

class AtelierOCRBoxes:
    DISPLAY = "Atelier OCR Boxes"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "Reference image(s) to read text from (RGB, RGBA or grayscale)."}),
            "backend": (list(O.BACKENDS), {"default": "rapidocr", "tooltip":
                        "rapidocr: PP-OCRv4 ONNX models shipped in the rapidocr_onnxruntime wheel, works offline "
                        "(pip install \"comfyui-atelier[ocr]\"). paddleocr: PaddleOCR 3.x, optional extra "
                        "(pip install \"comfyui-atelier[paddle]\")."}),
            "min_confidence": ("FLOAT", {"default": O.DEFAULT_MIN_CONFIDENCE, "min": 0.0, "max": 1.0, "step": 0.01,
                               "tooltip": "Keep detections whose recognition score is at least this (0.98 keeps "
                                          "only text read with near certainty, as the keyboard-skin seed did)."}),
        }, "optional": {
            "paddle_det_model": ("STRING", {"default": "", "tooltip":
                                 "PaddleOCR only: detection model folder inside ComfyUI/models/paddleocr/ "
                                 "(empty = PaddleOCR's default, which it must already have cached offline)."}),
            "paddle_rec_model": ("STRING", {"default": "", "tooltip":
                                 "PaddleOCR only: recognition model folder inside ComfyUI/models/paddleocr/."}),
            "small_image": (SMALL_IMAGE, {"default": SMALL_IMAGE[0], "tooltip":
                            "rapidocr only. 'as is' (default): the image goes to rapidocr unchanged, so the boxes "
                            "are exactly what rapidocr reads on it. 'pad to 736': pad an image with a side under "
                            "736 px to 736 first (the pack's old behaviour; can keep short rendered lines whole, "
                            "but on photos it sometimes reads less)."}),
        }}

    RETURN_TYPES = (GLYPHS, "IMAGE", "STRING")
    RETURN_NAMES = ("glyphs", "preview", "boxes_json")
    OUTPUT_TOOLTIPS = (GLYPHS_TOOLTIP,
                       "The image with every kept box outlined and numbered.",
                       "The boxes of the first image as an editable JSON spec (paste it into Atelier Text Boxes).")
    FUNCTION = "detect"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Runs OCR on the image(s) and keeps text boxes above min_confidence: polygons, texts and "
                   "recognition scores, ready for Atelier Glyph Render / Compose (re-render the reference text "
                   "into a control image).")

    def _paddle_dir(self, name: str, input: str) -> str | None:
        name = (name or "").strip()
        if not name:
            return None
        import folder_paths
        roots = list(getattr(folder_paths, "folder_names_and_paths", {}).get("paddleocr", ([],))[0]) or [
            os.path.join(folder_paths.models_dir, "paddleocr")]
        for root in roots:
            real = Path(root, name).resolve()
            if real.is_dir() and real.is_relative_to(Path(root).resolve()):
                return str(real)
        raise AtelierError(f"PaddleOCR model folder '{name}' was not found", node=self.DISPLAY, input=input,
                           expected=f"a model folder inside {', '.join(roots)}",
                           fix="put the exported PaddleOCR model folder there and type its name.")

    def detect(self, image, backend="rapidocr", min_confidence=O.DEFAULT_MIN_CONFIDENCE, paddle_det_model="",
               paddle_rec_model="", small_image=None):
        node = self.DISPLAY
        min_confidence = check_finite_float(min_confidence, node=node, input="min_confidence")
        x = image_batch(image, node)
        small_image = small_image or SMALL_IMAGE[0]  # saved before the option existed: as is
        if small_image not in SMALL_IMAGE:
            raise AtelierError(f"small_image is '{small_image}'", node=node, input="small_image",
                               expected=" or ".join(repr(v) for v in SMALL_IMAGE), fix="pick one of those.")
        det = self._paddle_dir(paddle_det_model, "paddle_det_model") if backend == "paddleocr" else None
        rec = self._paddle_dir(paddle_rec_model, "paddle_rec_model") if backend == "paddleocr" else None
        b, h, w = x.shape[:3]
        progress = Progress(b)
        items, previews = [], []
        for i in range(b):
            rgb = _rgb_u8(x[i], background=1.0)
            res = O.run_ocr(rgb, backend=backend, min_confidence=min_confidence, det_model_dir=det,
                            rec_model_dir=rec, pad_small=small_image == SMALL_IMAGE[1], node=node)
            boxes = res.to_boxes()
            items.append(boxes)
            previews.append(from_uint8(G.draw_boxes_preview(rgb, boxes)))
            progress.step()
        spec = json.dumps([{"text": bb["text"], "polygon": [[round(p[0], 1), round(p[1], 1)] for p in bb["polygon"]],
                            "score": round(bb["score"], 4)} for bb in items[0]], ensure_ascii=False)
        return (G.make_glyphs(items, w, h), torch.stack(previews), spec)


class AtelierTextBoxes:
    DISPLAY = "Atelier Text Boxes"
    EXAMPLE = ('[{"text": "Hello", "box": [64, 64, 448, 160]},\n'
               ' {"text": "键盘", "box": [64, 224, 256, 320], "font": "auto"},\n'
               ' {"text": "竖排", "box": [900, 100, 980, 400]}]')

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "spec": ("STRING", {"multiline": True, "default": cls.EXAMPLE, "tooltip":
                     "Text boxes to draw. JSON list of {text, box: [x0, y0, x1, y1] | polygon: [[x, y] x 4] "
                     "(top-left, top-right, bottom-right, bottom-left), font?, size? (max px), direction? "
                     "(auto / horizontal / vertical)}; or one box per line: 'text | x0,y0,x1,y1 [| font [| size]]'."}),
            "width": ("INT", {"default": 1024, "min": 8, "max": MAX_SIDE, "step": 8,
                              "tooltip": "Canvas width the box coordinates refer to."}),
            "height": ("INT", {"default": 1024, "min": 8, "max": MAX_SIDE, "step": 8,
                               "tooltip": "Canvas height the box coordinates refer to."}),
        }, "optional": {
            "glyphs": (GLYPHS, {"tooltip": "Optional boxes to extend (e.g. from OCR): the typed boxes are added "
                                           "to every image's boxes, scaled to that canvas."}),
        }}

    RETURN_TYPES = (GLYPHS,)
    RETURN_NAMES = ("glyphs",)
    OUTPUT_TOOLTIPS = (GLYPHS_TOOLTIP,)
    FUNCTION = "build"
    CATEGORY = CATEGORY
    DESCRIPTION = "Text boxes you type (JSON or 'text | x0,y0,x1,y1' lines), checked against the canvas."

    def build(self, spec, width=1024, height=1024, glyphs=None):
        node = self.DISPLAY
        check_size(height, width, node=node, input="width", what="the text-box canvas",
                   fix="use a canvas of at most 8192 x 8192 px (the renderers scale the boxes to their own size).")
        boxes = G.parse_text_boxes(spec, node=node, input="spec")
        for i, b in enumerate(boxes):
            G.check_polygon(b["polygon"], width, height, text=b["text"], index=i, node=node, input="spec")
        if glyphs is None:
            return (G.make_glyphs([boxes], width, height),)
        g = check_glyphs(glyphs, node)
        scaled = G.scale_boxes(boxes, g["width"] / width, g["height"] / height)
        items = [list(it) + scaled for it in (g["items"] or [[]])]
        return (G.make_glyphs(items, g["width"], g["height"]),)


def _render_inputs() -> dict:
    return {
        "font": (font_choices(), {"default": "auto", "tooltip": FONT_TOOLTIP}),
        "fit": (["contain", "stretch"], {"default": "contain", "tooltip": FIT_TOOLTIP}),
        "direction": (["from boxes", "auto", "horizontal", "vertical"], {"default": "from boxes", "tooltip":
                      "Text direction for every box: 'from boxes' uses each box's own (default auto); auto draws "
                      "vertically, character by character, when a box is at least 1.5x taller than wide."}),
        "padding": ("FLOAT", {"default": 0.08, "min": 0.0, "max": 0.45, "step": 0.01, "tooltip":
                    "Margin inside each box, as a fraction of its shorter side."}),
    }


def _render_batch(node, glyphs, n, width, height, font, fit, direction, padding, pad=None):
    padding = check_finite_float(padding, node=node, input="padding")
    dirs = allowed_font_dirs()
    d = None if direction == "from boxes" else direction
    progress = Progress(n)
    out = []
    for i in range(n):
        boxes = _boxes_for_canvas(glyphs, i, width, height, pad)
        g, m, info = G.render_glyphs(boxes, width, height, font=font, dirs=dirs, padding=padding, direction=d,
                                     fit=fit, node=node, input="glyphs")
        out.append((g, m, info))
        progress.step()
    return out


class AtelierGlyphRender:
    DISPLAY = "Atelier Glyph Render"

    @classmethod
    def INPUT_TYPES(cls):
        req = {"glyphs": (GLYPHS, {"tooltip": GLYPHS_TOOLTIP}),
               "width": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 8, "tooltip":
                         "Output width; 0 = the glyphs' own canvas. Boxes are scaled to the output size."}),
               "height": ("INT", {"default": 0, "min": 0, "max": MAX_SIDE, "step": 8, "tooltip":
                          "Output height; 0 = the glyphs' own canvas."})}
        req.update(_render_inputs())
        req["polarity"] = (POLARITY, {"default": "white_on_black", "tooltip":
                           "white_on_black is what ControlNet / AnyText-style glyph inputs expect."})
        return {"required": req}

    RETURN_TYPES = ("IMAGE", "MASK", "STRING")
    RETURN_NAMES = ("glyph_image", "position_mask", "info")
    OUTPUT_TOOLTIPS = ("Rendered text, white on black (or black on white), 3 channels.",
                       "Position mask: 1 inside every text polygon.",
                       "JSON: per image, the font, size and direction used for each box.")
    FUNCTION = "render_with_preview"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Renders the text boxes into a glyph image and a position mask: auto-fitted font size, rotated "
                   "polygons, vertical text for tall narrow boxes, CJK-aware font choice.")

    @classmethod
    def VALIDATE_INPUTS(cls, font):
        return _validate_font(font, cls.DISPLAY)

    def render(self, glyphs, width=0, height=0, font="auto", fit="contain", direction="from boxes", padding=0.08,
               polarity="white_on_black"):
        node = self.DISPLAY
        g = check_glyphs(glyphs, node)
        w, h = int(width or g["width"]), int(height or g["height"])
        n = max(1, len(g["items"]))
        _check_canvas(h, w, n, node, "width" if width or height else "glyphs",
                      f"the glyph image batch ({n} x {w}x{h}{'' if width or height else ', the glyphs canvas'})")
        res = _render_batch(node, g, n, w, h, font, fit, direction, padding)
        imgs = from_uint8(np.stack([r[0] for r in res]))
        if polarity == "black_on_white":
            imgs = 1.0 - imgs
        masks = torch.from_numpy(np.stack([r[1] for r in res])).float()
        info = json.dumps([r[2] for r in res], ensure_ascii=False)
        return (imgs.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous(), masks, info)

    def render_with_preview(self, **kwargs):
        """What ComfyUI calls: `render` plus a small preview of the glyph image on the node."""
        out = self.render(**kwargs)
        return with_preview(out, out[0], "atelier_glyphs")


class AtelierGlyphCompose:
    DISPLAY = "Atelier Glyph Compose"

    @classmethod
    def INPUT_TYPES(cls):
        req = {"background": ("IMAGE", {"tooltip": "Control image to draw the text on, e.g. Canny edges of the "
                                                   "reference (white lines on black)."}),
               "glyphs": (GLYPHS, {"tooltip": GLYPHS_TOOLTIP + " Scaled from their canvas to the background's size."})}
        req.update(_render_inputs())
        req["clear_under_text"] = ("BOOLEAN", {"default": True, "tooltip":
                                   "Blank the background inside the text polygons first, so the control shows "
                                   "clean glyphs instead of the old text's edges."})
        req["polarity"] = (POLARITY, {"default": "white_on_black", "tooltip":
                           "Polarity of the background: white_on_black for Canny/lineart edges (text drawn white), "
                           "black_on_white for dark-line sketches (text drawn black)."})
        return {"required": req, "optional": {
            "pad_info": (PAD_TYPE, {"tooltip": "Optional: the pad_info of the Atelier conditioner that made the "
                                               "background from the same reference, so the boxes follow its scaling "
                                               "and padding exactly."})}}

    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("control_image", "text_mask")
    OUTPUT_TOOLTIPS = ("The background with the text glyphs drawn in their boxes.",
                       "1 inside every text polygon.")
    FUNCTION = "compose"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Overlays rendered text on a control image (e.g. Canny edges), as the keyboard-skin pipeline "
                   "did: reference -> Canny + OCR boxes -> glyph compose -> ControlNet.")

    @classmethod
    def VALIDATE_INPUTS(cls, font):
        return _validate_font(font, cls.DISPLAY)

    def compose(self, background, glyphs, font="auto", fit="contain", direction="from boxes", padding=0.08,
                clear_under_text=True, polarity="white_on_black", pad_info=None):
        node = self.DISPLAY
        g = check_glyphs(glyphs, node)
        bg = image_batch(background, node, "background")
        b, h, w = bg.shape[:3]
        n = _batch_size(node, background=b, glyphs=len(g["items"]))
        _check_canvas(h, w, n, node, "glyphs" if n > b else "background", f"the control image batch ({n} x {w}x{h})")
        pad = None
        if pad_info is not None:
            from ..core.edges import check_pad_info
            pad = check_pad_info(pad_info, node=node)
            if (pad["top"] + pad["scaled_h"] + pad["bottom"], pad["left"] + pad["scaled_w"] + pad["right"]) != (h, w):
                raise AtelierError(f"pad_info describes a {pad['left'] + pad['scaled_w'] + pad['right']}x"
                                   f"{pad['top'] + pad['scaled_h'] + pad['bottom']} image but the background is {w}x{h}",
                                   node=node, input="pad_info", expected="the pad_info of the node that made the background",
                                   fix="connect the pad_info from the same conditioner as the background.")
        res = _render_batch(node, g, n, w, h, font, fit, direction, padding, pad)
        inv = polarity == "black_on_white"
        out = []
        for i, (gl, m, _) in enumerate(res):
            base = _rgb_u8(bg[i if b > 1 else 0], background=1.0 if inv else 0.0)
            out.append(G.compose_glyphs(base, gl, m, clear_under_text=clear_under_text, invert=inv))
        imgs = from_uint8(np.stack(out))
        masks = torch.from_numpy(np.stack([r[1] for r in res])).float()
        return (imgs, masks)


def _element_u8(images, node: str, input: str) -> np.ndarray:
    """IMAGE batch -> uint8 [B, H, W, 3|4]; gray (+ alpha) becomes RGB (+ alpha), so a gray key keeps its
    transparency."""
    x = image_batch(images, node, input)
    if x.shape[-1] < 3:
        x = torch.cat([x[..., :1].expand(-1, -1, -1, 3), x[..., 1:]], -1)
    return to_uint8(x)


class AtelierLayoutCompose:
    DISPLAY = "Atelier Layout Compose"
    CUSTOM = "custom (layout_json)"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "layout": (list(L.shipped_layouts()) + [cls.CUSTOM], {"default": "qwerty_26", "tooltip":
                       "Shipped layout (layouts/*.json: qwerty_26 = 26-key, t9_9key = Chinese 9-key) or "
                       "'custom' to use layout_json."}),
            "layout_json": ("STRING", {"multiline": True, "default": "", "tooltip":
                            "Custom layout JSON: {canvas: [w, h], colors?, label_size?, regions: [{slot, rect: "
                            "[x, y, w, h], label?}]}. Slots background / function_bar / key / function_key take the "
                            "images below; other slots are drawn in their colour."}),
            "width": ("INT", {"default": 1216, "min": 64, "max": MAX_SIDE, "step": 8,
                              "tooltip": "Output width (the layout is scaled to it)."}),
            "height": ("INT", {"default": 832, "min": 64, "max": MAX_SIDE, "step": 8,
                               "tooltip": "Output height."}),
            "fit": (["stretch", "contain"], {"default": "stretch", "tooltip":
                    "How element images fill their rects: stretch to the rect, or keep aspect and centre."}),
        }, "optional": {
            "background": ("IMAGE", {"tooltip": "Background image, stretched over the canvas (first of the batch)."}),
            "function_bar": ("IMAGE", {"tooltip": "Image for the function bar (top strip)."}),
            "key": ("IMAGE", {"tooltip": "Key image used for every letter key (RGBA alpha is respected)."}),
            "function_key": ("IMAGE", {"tooltip": "Key image for function keys (Shift, Del, 123, Enter...)."}),
            "per_key": ("IMAGE", {"tooltip": "Optional: a different image per key. Image k of this batch goes to "
                                             "key k in layout order (every region except background and "
                                             "function_bar: in qwerty_26, Q W E ... P, A ... L, Shift, Z ... M, "
                                             "Del, 123, ',', space, '.', Enter). Keys after the last image use "
                                             "the single key / function_key image (or the flat placeholder)."}),
        }}

    RETURN_TYPES = ("IMAGE", "MASK", GLYPHS)
    RETURN_NAMES = ("image", "elements_mask", "labels")
    OUTPUT_TOOLTIPS = ("The composed keyboard skin.",
                       "1 where a key / bar element was placed.",
                       GLYPHS_TOOLTIP + " The key labels, to draw with Atelier Glyph Render / Compose.")
    FUNCTION = "compose_with_preview"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Places element images (background, function bar, keys) on a canvas by layout rules; a slot "
                   "without an image is drawn as a flat rounded key. Ships a 26-key and a 9-key layout.")

    def compose(self, layout, layout_json="", width=1216, height=832, fit="stretch", background=None,
                function_bar=None, key=None, function_key=None, per_key=None):
        node = self.DISPLAY
        _check_canvas(height, width, 1, node, "width", f"the layout image ({width}x{height})")
        if layout == self.CUSTOM:
            if not (layout_json or "").strip():
                raise AtelierError("layout is 'custom' but layout_json is empty", node=node, input="layout_json",
                                   expected="a layout JSON", fix="paste a layout (see layouts/qwerty_26.json) or pick a shipped one.")
            lay = L.load_layout(layout_json, node=node)
        else:
            lay = L.load_layout(layout, node=node, input="layout")
        elems = {}
        for name, val in (("background", background), ("function_bar", function_bar), ("key", key),
                          ("function_key", function_key)):
            if val is not None:
                elems[name] = _element_u8(val, node, name)[0]
        keys = None if per_key is None else list(_element_u8(per_key, node, "per_key"))
        img, mask, labels = L.compose_layout(lay, width, height, elems, fit=fit, node=node, per_key=keys)
        return (from_uint8(img)[None], torch.from_numpy(mask).float()[None],
                G.make_glyphs([labels], width, height))

    def compose_with_preview(self, **kwargs):
        """What ComfyUI calls: `compose` plus a small preview of the layout on the node."""
        out = self.compose(**kwargs)
        return with_preview(out, out[0], "atelier_layout")


# --------------------------------------------------------------------------------------------- read-back

READBACK_TYPE_NOTE = ("Character accuracy per image: the mean over its boxes of 1 - edit distance(expected, read) "
                      "/ length of the expected text (0..1; 1 = every label read exactly).")


def _image_list(images, node: str, input: str = "images") -> list[torch.Tensor]:
    """A list of IMAGE batches (INPUT_IS_LIST) -> one [H, W, C] tensor per image, sizes may differ."""
    items = [t for t in (images if isinstance(images, (list, tuple)) else [images]) if t is not None]
    if not items:
        raise AtelierError("no images arrived", node=node, input=input, expected="an IMAGE batch",
                           fix="connect an IMAGE output (e.g. VAE Decode) to this input.")
    out = []
    for t in items:
        x = image_batch(t, node, input)
        out.extend(x[i] for i in range(x.shape[0]))
    return out


def _float_list(values, node: str, input: str = "accuracy") -> list[float]:
    out = floats(values)
    if not out:
        raise AtelierError("no accuracies arrived", node=node, input=input,
                           expected="the accuracy output of Atelier Text Read-back",
                           fix="connect Atelier Text Read-back's 'accuracy' output.")
    return check_finite_floats(out, node=node, input=input, what="accuracies")


def _readback_boxes(glyphs, images: list[torch.Tensor], pad_info, node: str) -> list[list[dict]]:
    """For each image, its expected boxes in its own pixels (pad_info: the boxes follow the conditioner's
    scaling and padding, as in Glyph Compose, then that canvas is scaled to the image)."""
    sets = []
    for g in (glyphs if isinstance(glyphs, (list, tuple)) else [glyphs]):
        g = check_glyphs(g, node)
        sets.extend((g, k) for k in range(max(1, len(g["items"]))))
    n = _batch_size(node, images=len(images), glyphs=len(sets))
    pad = None
    pad_info = _one(pad_info)
    if pad_info is not None:
        from ..core.edges import check_pad_info
        pad = check_pad_info(pad_info, node=node)
    out = []
    for i in range(n):
        g, k = sets[i if len(sets) > 1 else 0]
        h, w = images[i if len(images) > 1 else 0].shape[:2]
        one = dict(g, items=[g["items"][k]] if g["items"] else [])
        if pad:
            cw, ch = pad["left"] + pad["scaled_w"] + pad["right"], pad["top"] + pad["scaled_h"] + pad["bottom"]
            boxes = G.scale_boxes(_boxes_for_canvas(one, 0, cw, ch, pad), w / cw, h / ch)
        else:
            boxes = _boxes_for_canvas(one, 0, w, h)
        out.append(boxes)
    return out


def _readback_preview(rgb: np.ndarray, result: RB.Readback) -> np.ndarray:
    """The image with each box outlined (green: read exactly, orange: partly, red: not at all) and its accuracy."""
    import cv2
    out = rgb.copy()
    th = max(1, round(min(out.shape[:2]) / 400))
    for b in result.boxes:
        color = (64, 200, 64) if b.accuracy >= 1 else (240, 160, 32) if b.accuracy > 0 else (230, 40, 40)
        p = np.round(np.asarray(b.polygon, np.float32)).astype(np.int32)
        cv2.polylines(out, [p], True, color, th, cv2.LINE_AA)
        cv2.putText(out, f"{b.accuracy:.2f}", (int(p[0][0]), max(10, int(p[0][1]) - 3)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4 * th, color, th, cv2.LINE_AA)
    return out


class AtelierTextReadback:
    DISPLAY = "Atelier Text Read-back"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "The generated image(s) whose text to check (RGB, RGBA or gray; a list "
                                            "of batches, e.g. one per seed, is read as one set)."}),
            "glyphs": (GLYPHS, {"tooltip": GLYPHS_TOOLTIP + " The text each image should show where: connect the "
                                "glyphs that Glyph Compose / Render drew (e.g. Atelier OCR Boxes of the reference, "
                                "or Layout Compose's labels). One set is used for every image, or one per image."}),
            "backend": (list(O.BACKENDS), {"default": "rapidocr", "tooltip":
                        "OCR backend. rapidocr (default, offline): its bundled PP-OCRv4 models read Chinese and "
                        "Latin letters/digits, not kana or hangul. paddleocr: the optional PaddleOCR 3.x extra."}),
            "margin": ("FLOAT", {"default": RB.DEFAULT_MARGIN, "min": 0.0, "max": 2.0, "step": 0.05, "tooltip":
                       "Each box is cropped with this margin (x its shorter side) on every side, so a label "
                       "drawn a little off its box is still found."}),
            "normalization": (list(RB.NORMALIZATIONS), {"default": RB.NORMALIZATIONS[0], "tooltip":
                              "How texts are compared. 'ignore case and spaces': Unicode NFKC, all spaces removed, "
                              "case-folded (Shift = shift). 'ignore spaces': NFKC, spaces removed, case kept. "
                              "'exact': as they are."}),
        }, "optional": {
            "pad_info": (PAD_TYPE, {"tooltip": "The pad_info Glyph Compose used (from the conditioner): the boxes then "
                                               "follow the same scaling and padding onto the generated image."}),
        }}

    INPUT_IS_LIST = True
    OUTPUT_NODE = True  # shows its scores on the node even when nothing downstream is connected
    RETURN_TYPES = ("FLOAT", "STRING", "IMAGE", "STRING")
    RETURN_NAMES = ("accuracy", "report", "sorted_images", "details_json")
    OUTPUT_IS_LIST = (True, False, True, False)
    OUTPUT_TOOLTIPS = (READBACK_TYPE_NOTE + " A FLOAT list in input order (feed Text Read-back Filter / Gate).",
                       "Readable report: per image its accuracy, min accuracy, exact fraction and confidence, and "
                       "each box's expected -> read text.",
                       "The images sorted by accuracy, best first (a list of single images).",
                       "JSON: per image the summary and every box (expected, read, accuracy, confidence, polygon).")
    FUNCTION = "read"
    CATEGORY = CATEGORY
    DESCRIPTION = ("OCRs each generated image inside the text boxes the glyph nodes rendered and scores how well "
                   "the labels came out: recognised text, character accuracy (1 - normalised edit distance) and "
                   "confidence per box and per image; the scores and an annotated preview appear on the node.")

    def read(self, images, glyphs, backend="rapidocr", margin=RB.DEFAULT_MARGIN,
             normalization=RB.NORMALIZATIONS[0], pad_info=None):
        node = self.DISPLAY
        imgs = _image_list(images, node)
        backend, normalization = _one(backend, "rapidocr"), _one(normalization, RB.NORMALIZATIONS[0])
        margin = check_finite_float(_one(margin, RB.DEFAULT_MARGIN), node=node, input="margin")
        if backend not in O.BACKENDS:
            raise AtelierError(f"unknown OCR backend '{backend}'", node=node, input="backend",
                               expected=" or ".join(O.BACKENDS), fix="pick rapidocr (default) or paddleocr.")
        if not 0 <= margin <= 2:
            raise AtelierError(f"margin {margin} is outside 0..2", node=node, input="margin",
                               expected="a fraction of the box's shorter side in 0..2", fix="use e.g. 0.25.")
        boxes = _readback_boxes(glyphs, imgs, pad_info, node)
        progress = Progress(len(boxes))
        results, previews = [], []
        for i, bx in enumerate(boxes):
            rgb = _rgb_u8(imgs[i if len(imgs) > 1 else 0], background=1.0)
            r = RB.read_back(rgb, bx, margin=margin, normalization=normalization, backend=backend, node=node)
            results.append(r)
            previews.append(from_uint8(_readback_preview(rgb, r))[None])
            progress.step()
        acc = [r.accuracy for r in results]
        order = RB.order_by_score(acc)
        report = RB.format_report(results)
        details = json.dumps([r.to_dict() for r in results], ensure_ascii=False)
        full = [imgs[i if len(imgs) > 1 else 0][None] for i in range(len(results))]
        ui = {"atelier_scores": acc, "atelier_report": [report]}
        try:
            from ._preview import preview_images
            ui["images"] = [p for k in range(len(previews)) for p in preview_images(previews[k], "atelier_readback")]
        except Exception:  # a preview is a help, never a failure
            pass
        return {"ui": ui, "result": (acc, report, [full[i] for i in order], details)}


class AtelierTextReadbackFilter:
    DISPLAY = "Atelier Text Read-back Filter"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "The read-back images (same order as the accuracies), e.g. N seeds."}),
            "accuracy": ("FLOAT", {"forceInput": True, "tooltip": "The 'accuracy' output of Atelier Text Read-back."}),
            "mode": (["threshold", "top_k"], {"tooltip": "threshold: keep images with accuracy >= threshold. top_k: "
                                                         "keep the k most legible (in their original order); k = 1 "
                                                         "keeps the best of N seeds."}),
            "threshold": ("FLOAT", {"default": 0.9, "min": 0.0, "max": 1.0, "step": 0.01,
                                    "tooltip": "Minimum character accuracy to keep an image (mode threshold)."}),
            "top_k": ("INT", {"default": 1, "min": 1, "max": 4096, "tooltip": "How many to keep (mode top_k)."}),
            "if_none_pass": (["keep best", "stop with error"], {
                "tooltip": "When no image reaches the threshold: pass on the single most legible image (the report "
                           "says nothing passed), or stop the run with an error."}),
        }}

    INPUT_IS_LIST = True
    RETURN_TYPES = ("IMAGE", "INT", "INT", "STRING")
    RETURN_NAMES = ("images", "indices", "kept", "report")
    OUTPUT_IS_LIST = (True, True, False, False)
    OUTPUT_TOOLTIPS = ("The kept images, in their original order (never empty; a list, sizes may differ).",
                       "Index of each kept image (an INT list).",
                       "How many images passed (0 when none did, even if 'keep best' passed one on).",
                       "What was kept and why.")
    FUNCTION = "filter"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Keeps the images whose labels read back best: accuracy >= threshold, or the top k (best of N "
                   "seeds).")

    def filter(self, images, accuracy, mode, threshold, top_k, if_none_pass):
        node = self.DISPLAY
        imgs = _image_list(images, node)
        vals = _float_list(accuracy, node)
        mode, top_k, if_none = _one(mode), int(_one(top_k)), _one(if_none_pass)
        threshold = check_finite_float(_one(threshold), node=node, input="threshold")
        if len(vals) != len(imgs):
            raise AtelierError(f"{len(vals)} accuracies for {len(imgs)} images", node=node, input="accuracy",
                               expected="one accuracy per image",
                               fix="connect the images and the accuracy of the same Atelier Text Read-back run (its "
                                   "input images, not sorted_images).")
        keep, passed, report = RB.keep_or_best(vals, mode=mode, threshold=threshold, top_k=top_k, if_none=if_none,
                                               metric="accuracy", node=node)
        return {"ui": {"atelier_scores": [vals[i] for i in keep], "atelier_report": [report]},
                "result": ([imgs[i][None] for i in keep], keep, passed, report)}


class AtelierTextReadbackGate:
    DISPLAY = "Atelier Text Read-back Gate"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "The batch (passed through unchanged, so what you save waits for the gate)."}),
            "accuracy": ("FLOAT", {"forceInput": True, "tooltip": "The 'accuracy' output of Atelier Text Read-back."}),
            "threshold": ("FLOAT", {"default": 0.9, "min": 0.0, "max": 1.0, "step": 0.01,
                                    "tooltip": "The batch passes when its accuracy (see rule) is >= this."}),
            "rule": (["every image", "mean"], {"tooltip": "every image: the lowest image accuracy must reach the "
                                                          "threshold. mean: the mean over the images must."}),
            "on_fail": (["continue", "stop workflow"], {
                "tooltip": "continue: report FAIL and pass the images on (passed = False). stop workflow: raise an "
                           "error so nothing downstream (e.g. Save Image) runs for an illegible batch."}),
        }}

    INPUT_IS_LIST = True
    RETURN_TYPES = ("IMAGE", "BOOLEAN", "FLOAT", "STRING")
    RETURN_NAMES = ("images", "passed", "accuracy", "report")
    OUTPUT_IS_LIST = (True, False, False, False)
    OUTPUT_TOOLTIPS = ("The input images, unchanged (a list, sizes may differ).",
                       "True when the accuracy reaches the threshold.",
                       "The gated figure: the lowest image accuracy (rule every image) or the mean.",
                       "Per-image accuracies and the verdict.")
    FUNCTION = "gate"
    CATEGORY = CATEGORY
    DESCRIPTION = "Accepts or stops a batch by how legibly its labels read back (default: every image >= 0.9)."

    def gate(self, images, accuracy, threshold, rule, on_fail):
        node = self.DISPLAY
        imgs = _image_list(images, node)
        vals = _float_list(accuracy, node)
        threshold = check_finite_float(_one(threshold), node=node, input="threshold")
        rule, on_fail = _one(rule, "every image"), _one(on_fail, "continue")
        if len(vals) != len(imgs):
            raise AtelierError(f"{len(vals)} accuracies for {len(imgs)} images", node=node, input="accuracy",
                               expected="one accuracy per image", fix="read back exactly the images you gate.")
        value = min(vals) if rule == "every image" else float(np.mean(vals))
        passed = bool(value >= threshold)
        what = "lowest image accuracy" if rule == "every image" else "mean accuracy"
        lines = [f"read-back gate ({len(vals)} image{'s' if len(vals) != 1 else ''}):"]
        lines += [f"  #{i}: {v:.3f}  {'pass' if v >= threshold else 'below'}" for i, v in enumerate(vals)]
        verdict = f"{what} {RB.compare_text(value, threshold, names=('', 'threshold '))}"
        lines.append(f"gate: {'PASS' if passed else 'FAIL'}, {verdict}")
        report = "\n".join(lines)
        if not passed and on_fail == "stop workflow":
            raise AtelierError(f"batch rejected: {verdict}", node=node, input="threshold",
                               expected=f"{what} >= {threshold:g}",
                               fix="re-generate (other seed, stronger ControlNet), lower the threshold, or set "
                                   "on_fail to 'continue'.")
        ui = {"atelier_scores": vals, "atelier_gate": [{"passed": passed, "mean": value, "threshold": threshold}],
              "atelier_report": [report]}
        return {"ui": ui, "result": ([x[None] for x in imgs], passed, value, report)}


NODE_CLASS_MAPPINGS = {
    "AtelierOCRBoxes": AtelierOCRBoxes,
    "AtelierTextBoxes": AtelierTextBoxes,
    "AtelierGlyphRender": AtelierGlyphRender,
    "AtelierGlyphCompose": AtelierGlyphCompose,
    "AtelierLayoutCompose": AtelierLayoutCompose,
    "AtelierTextReadback": AtelierTextReadback,
    "AtelierTextReadbackFilter": AtelierTextReadbackFilter,
    "AtelierTextReadbackGate": AtelierTextReadbackGate,
}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY for k, v in NODE_CLASS_MAPPINGS.items()}
