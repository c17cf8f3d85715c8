"""Line / Canny conditioners: Canny edges and product line art for ControlNet, crop-back, and an empty
latent the size of the control image.

Thin wrappers over ``core.edges``. The whole batch is brought to CPU float32 once, each image is
converted to uint8 gray and processed with OpenCV, and the results are written straight into one
preallocated output tensor (no per-image float copies, no stack).
"""
from __future__ import annotations


import cv2
import numpy as np
import torch

from ..core import edges as E
from ..core.budget import check_size, fits
from ..core.errors import AtelierError
from ..core.finite import NonFinitePixels, check_finite, check_finite_float, sum_is_finite
from ..core.images import image_batch
from ..core.parallel import for_items, for_row_bands
from ._progress import Progress

CATEGORY = "atelier/conditioning"
PAD_TYPE = "ATELIER_PAD"
MAX_RES = E.MAX_SIDE

RESOLUTION_TOOLTIP = ("Short side of the output in pixels; the aspect ratio is kept and the result is padded with "
                      "black (centred) up to a multiple of 64, ready for a ControlNet. 0 = keep the input size "
                      "exactly (no scaling, no padding). The pad_info output undoes it (Atelier Crop Back).")
PAD_TOOLTIP = ("ATELIER_PAD: how the image was scaled and padded, a small JSON-serialisable dict "
               "{orig_h, orig_w, scaled_h, scaled_w, top, bottom, left, right} (pixels). Feed it with the generated "
               "image to Atelier Crop Back to get the original size and aspect back.")
MASK_TOOLTIP = "The same lines as a MASK [B,H,W] (1 = line)."


def _finite_batch(image, node: str) -> torch.Tensor:
    """The IMAGE as a CPU float32 batch (core.images.image_batch), refused by name if it holds NaN/inf: one
    fast sum over the batch (core.finite.sum_is_finite); only a non-finite sum goes through
    core.finite.check_finite, which names the bad images. (Canny and Lineart check as they convert instead:
    run_batch.)"""
    x = image_batch(image, node)
    a = x.numpy()
    if not sum_is_finite(a):
        check_finite(a, node=node, input="image")
    return x


_U8_TO_FLOAT = (np.arange(256, dtype=np.float32) / 255.0).reshape(1, 256)


def _to_float_outputs(lines: np.ndarray, mask_out: np.ndarray, image_out: np.ndarray) -> None:
    """uint8 ``[H,W]`` -> float ``mask_out`` ``[H,W]`` and 3-channel ``image_out`` ``[H,W,3]``, written in place
    (one table lookup, one gray-to-RGB copy: ~3x cheaper than torch's convert + broadcast copy; cvtColor is
    10-25 % faster than cv2.merge here), in one band of rows per CPU for a large image."""
    def band(r0: int, r1: int) -> None:
        mo, io = mask_out[r0:r1], image_out[r0:r1]
        if cv2.LUT(lines[r0:r1], _U8_TO_FLOAT, dst=mo) is not mo:  # OpenCV reallocated (never expected): copy
            mo[...] = cv2.LUT(lines[r0:r1], _U8_TO_FLOAT)
        if cv2.cvtColor(mo, cv2.COLOR_GRAY2RGB, dst=io) is not io:
            io[...] = cv2.cvtColor(mo, cv2.COLOR_GRAY2RGB)

    for_row_bands(band, lines.shape[0], lines.shape[1])


def run_batch(x: torch.Tensor, fn, node: str, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Apply ``fn(float32 HxWxC ndarray) -> (uint8 HxW map, PadInfo)`` to every image of the batch.
    ``fn`` converts its image with ``finite="refuse"`` (core.images.to_uint8): NaN/inf pixels are found while
    the image is read anyway (no separate pass over the batch) and refused naming every bad image.

    ``size``: the (h, w) every map has (from the PadInfo, known before the first image is traced). Returns
    IMAGE ``[B,H,W,3]``, MASK ``[B,H,W]`` (both float32 0..1) and the PadInfo (identical for all images, which
    share one size in a ComfyUI batch). Each map is written straight into its slice of the outputs.
    """
    b, (h, w) = x.shape[0], size
    # numpy allocates big arrays with MADV_HUGEPAGE: ~40x fewer page faults than torch.empty on the fresh
    # memory a batch output needs (the tensors share it: torch.from_numpy, no copy)
    mask = np.empty((b, h, w), dtype=np.float32)
    image = np.empty((b, h, w, 3), dtype=np.float32)
    xs = x.numpy()
    progress = Progress(b if b > 1 else 0)  # one image: no bar (it would jump from 0 to done at the end)
    infos: list = [None] * b

    def one(i: int) -> None:
        lines, infos[i] = fn(xs[i])
        if lines.shape != (h, w):  # never expected: the PadInfo fixes the size
            raise AtelierError(f"image #{i} gave a {lines.shape[1]}x{lines.shape[0]} map, not {w}x{h}",
                               node=node, input="image", fix="report this as a bug of the pack.")
        _to_float_outputs(lines, mask[i], image[i])

    try:  # a batch runs one image per CPU at a time (0.7-0.95x the time of one image after the other)
        for_items(one, b, on_done=lambda i: progress.step())
    except NonFinitePixels as exc:  # fn converts with finite="refuse": name every bad image, not just this one
        check_finite(xs, node=node, input="image")
        raise AtelierError(exc.problem, node=node, input="image", expected=exc.expected, fix=exc.fix) from exc
    return torch.from_numpy(image), torch.from_numpy(mask), dict(infos[0])


class AtelierCanny:
    DISPLAY = "Atelier Canny"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "Image(s) to trace. Any size; RGB, RGBA (transparent areas are laid on "
                                           "white or black, whichever contrasts) or grayscale."}),
            "low_threshold": ("INT", {"default": 50, "min": 0, "max": 2040, "step": 1,
                                      "tooltip": "Canny hysteresis low threshold on the Sobel gradient (OpenCV units, "
                                                 "0..2040): weak edges above it are kept only where they touch a "
                                                 "strong edge. Must not exceed high_threshold. Ignored in auto mode."}),
            "high_threshold": ("INT", {"default": 80, "min": 0, "max": 2040, "step": 1,
                                       "tooltip": "Canny high threshold: gradients above it always start an edge. "
                                                  "Raise to keep only strong outlines (try 100..300 for photos). "
                                                  "Ignored in auto mode."}),
            "threshold_mode": (["manual", "auto_median"], {
                "default": "manual",
                "tooltip": "manual: use low/high_threshold. auto_median: per image, low = (1 - auto_sigma) x median "
                           "and high = (1 + auto_sigma) x median of the gray image, good for mixed batches."}),
            "auto_sigma": ("FLOAT", {"default": 0.33, "min": 0.0, "max": 1.0, "step": 0.01,
                                     "tooltip": "Width of the auto_median threshold band around the median; larger "
                                                "keeps more edges. Only used in auto_median mode."}),
            "blur_sigma": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 20.0, "step": 0.1,
                                     "tooltip": "Gaussian blur (sigma, pixels) before edge detection; 0 = off. "
                                                "1..2 removes texture/noise edges from photos."}),
            "l2_gradient": ("BOOLEAN", {"default": False,
                                        "tooltip": "Use the exact L2 gradient magnitude instead of |gx|+|gy| "
                                                   "(slightly cleaner diagonals, slightly slower)."}),
            "resolution": ("INT", {"default": 512, "min": 0, "max": MAX_RES, "step": 8,
                                   "tooltip": RESOLUTION_TOOLTIP}),
        }}

    RETURN_TYPES = ("IMAGE", "MASK", PAD_TYPE)
    RETURN_NAMES = ("edges", "mask", "pad_info")
    OUTPUT_TOOLTIPS = ("Canny edges, white on black, 3 channels (what ControlNet canny models expect).",
                       MASK_TOOLTIP, PAD_TOOLTIP)
    FUNCTION = "detect"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Canny edge map for ControlNet (OpenCV). Manual thresholds (default 50/80) or automatic ones "
                   "from the image median; optional blur and L2 gradient; scales to a resolution and pads to a "
                   "multiple of 64, with pad_info to crop the result back.")

    def detect(self, image, low_threshold=50, high_threshold=80, threshold_mode="manual", auto_sigma=0.33,
               blur_sigma=0.0, l2_gradient=False, resolution=512):
        node = self.DISPLAY
        auto = threshold_mode == "auto_median"
        if threshold_mode not in ("manual", "auto_median"):
            raise AtelierError(f"unknown mode {threshold_mode!r}", node=node, input="threshold_mode",
                               expected="'manual' or 'auto_median'", fix="pick one from the list.")
        if not auto:
            E.check_thresholds(low_threshold, high_threshold, node=node)
        # NaN passes ComfyUI's min/max check; a NaN sigma would give NaN thresholds or an unblurred map
        auto_sigma = check_finite_float(auto_sigma, node=node, input="auto_sigma")
        blur_sigma = check_finite_float(blur_sigma, node=node, input="blur_sigma")
        resolution = _check_resolution(resolution, node)
        x = image_batch(image, node)
        size = _check_output_size(x, resolution, node)

        def one(img):  # NaN pixels would trace as black: refused as they are converted
            edges, info, _ = E.canny_image(img, low=low_threshold, high=high_threshold, auto=auto, sigma=auto_sigma,
                                           blur_sigma=blur_sigma, l2_gradient=l2_gradient, resolution=resolution,
                                           node=node, finite="refuse")
            return edges, info

        return run_batch(x, one, node, size)


class AtelierLineart:
    DISPLAY = "Atelier Lineart"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "Line drawing(s): scans, CAD exports, sketches; dark lines on light "
                                           "paper or light lines on dark. Any size; RGB, RGBA or grayscale."}),
            "polarity": (["auto", "dark_on_light", "light_on_dark"], {
                "default": "auto",
                "tooltip": "Line colour of the input. auto: detected per image (the ground is the median; lines are "
                           "whatever departs from it). The output is always white lines on black."}),
            "binarize": ("BOOLEAN", {"default": True,
                                     "tooltip": "On: pure black/white lines. Off: keep the line strength (pencil "
                                                "pressure, antialiasing) as gray levels."}),
            "threshold": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                    "tooltip": "Line-strength threshold for binarize (0..1 of full contrast against "
                                               "the ground); 0 = automatic (Otsu). Lower keeps fainter lines."}),
            "min_speck_area": ("INT", {"default": 4, "min": 0, "max": 100000, "step": 1,
                                       "tooltip": "Remove dust: connected blobs smaller than this many pixels (at "
                                                  "the output resolution) are erased. 0 = keep everything."}),
            "thickness": ("INT", {"default": 0, "min": -8, "max": 16, "step": 1,
                                  "tooltip": "Grow (positive) or thin (negative) the lines by this many pixels on "
                                             "each side, after speck removal. 0 = unchanged."}),
            "resolution": ("INT", {"default": 512, "min": 0, "max": MAX_RES, "step": 8,
                                   "tooltip": RESOLUTION_TOOLTIP}),
        }}

    RETURN_TYPES = ("IMAGE", "MASK", PAD_TYPE)
    RETURN_NAMES = ("lineart", "mask", "pad_info")
    OUTPUT_TOOLTIPS = ("Clean line art, white lines on black, 3 channels (what ControlNet lineart models expect).",
                       MASK_TOOLTIP, PAD_TOOLTIP)
    FUNCTION = "extract"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Turns a product line drawing into ControlNet line art: detects dark-on-light vs "
                   "light-on-dark, outputs white lines on black, optional binarisation, speck removal and line "
                   "thickness; scales to a resolution and pads to a multiple of 64, with pad_info to crop back.")

    def extract(self, image, polarity="auto", binarize=True, threshold=0.0, min_speck_area=4, thickness=0,
                resolution=512):
        node = self.DISPLAY
        if polarity not in ("auto", "dark_on_light", "light_on_dark"):
            raise AtelierError(f"unknown polarity {polarity!r}", node=node, input="polarity",
                               expected="'auto', 'dark_on_light' or 'light_on_dark'", fix="pick one from the list.")
        threshold = check_finite_float(threshold, node=node, input="threshold")
        if not 0.0 <= threshold <= 1.0:
            raise AtelierError(f"threshold {threshold} is outside 0..1", node=node, input="threshold",
                               expected="0 (automatic) or a fraction such as 0.5", fix="use a value in 0..1.")
        resolution = _check_resolution(resolution, node)
        x = image_batch(image, node)
        size = _check_output_size(x, resolution, node)
        thr = None if float(threshold) <= 0.0 else int(round(float(threshold) * 255))

        def one(img):
            lines, info, _ = E.lineart_image(img, polarity=polarity, binarize_lines=bool(binarize), threshold=thr,
                                             min_speck_area=int(min_speck_area), thickness=int(thickness),
                                             resolution=resolution, node=node, finite="refuse")
            return lines, info

        return run_batch(x, one, node, size)


class AtelierCropBack:
    DISPLAY = "Atelier Crop Back"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "Image generated from (or equal to) a padded conditioner output; it "
                                               "may be at another scale (e.g. after a 2x upscale): the padding is "
                                               "scaled along."}),
                "pad_info": (PAD_TYPE, {"tooltip": "The pad_info output of Atelier Canny / Atelier Lineart "
                                                   "(ATELIER_PAD: original size, scaled size and padding)."}),
                "restore_size": ("BOOLEAN", {"default": True,
                                             "tooltip": "On: scale the cropped image back to the original input "
                                                        "size. Off: only remove the padding."}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Optional mask of the same size as image, cropped the same way."}),
            },
        }

    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    OUTPUT_TOOLTIPS = ("The image without the padding, at the original size (or the scaled size if restore_size "
                       "is off).",
                       "The mask cropped the same way; when no mask is connected, the cropped image's luminance.")
    FUNCTION = "crop"
    CATEGORY = CATEGORY
    DESCRIPTION = "Undoes the scale-and-pad of an Atelier conditioner: crops the padding and restores the size."

    def crop(self, image, pad_info, restore_size=True, mask=None):
        node = self.DISPLAY
        info = E.check_pad_info(pad_info, node=node)
        x = _finite_batch(image, node)
        b, h, w, c = x.shape
        E.check_pad_fits(h, w, info, node=node)  # another image's pad_info would crop the wrong box, silently
        if restore_size:  # a hand-made pad_info may ask for any original size: refuse before allocating it
            check_size(info["orig_h"], info["orig_w"], batch=b, channels=4, node=node, input="pad_info",
                       what=f"the restored batch ({b} image(s) + mask(s) at the original size)",
                       fix="connect the pad_info of the conditioner that made this image, or turn restore_size off.")
        m = None
        if mask is not None:
            m = check_finite(image_batch(mask, node, "mask")[..., 0], node=node, input="mask", what="masks",
                             unit="values", fix="the node that makes this mask produced NaN/inf; a MASK is 0..1.")
            if m.shape[1:] != (h, w):
                raise AtelierError(f"mask is {m.shape[2]}x{m.shape[1]} but image is {w}x{h}", node=node,
                                   input="mask", expected="a mask of the same size as image",
                                   fix="connect the mask that belongs to this image (or none).")
        out = _crop_back_each(x, info, bool(restore_size))
        if c <= 2:  # gray (+ alpha): 3-channel gray, as an IMAGE should be
            out = out[..., :1].expand(-1, -1, -1, 3).contiguous()
        if m is not None:
            return out, _crop_back_each(m, info, bool(restore_size))
        rgb = out[..., :3]
        return out, (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114).clamp_(0, 1)


def _crop_back_each(x: torch.Tensor, info: E.PadInfo, restore_size: bool) -> torch.Tensor:
    """core.edges.crop_back on every item of an IMAGE [B,H,W,C] or MASK [B,H,W] batch -> one new tensor."""
    return torch.stack([torch.from_numpy(E.crop_back(x[i].numpy(), info, restore_size)) for i in range(x.shape[0])])


class AtelierEmptyLatentLike:
    DISPLAY = "Atelier Empty Latent Like Image"
    LATENT_CHANNELS = 4  # SD1.x / SD2.x / SDXL

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The image whose size the latent takes, typically the control image of "
                                           "Atelier Lineart / Atelier Canny (already padded to a multiple of 64), so "
                                           "the generated image has the drawing's aspect and Atelier Crop Back can "
                                           "undo the padding."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096, "tooltip":
                           "Latents per image of the input batch (1: one latent per control image). The batch is "
                           "image count x batch_size, in the order ComfyUI's ControlNet repeats a hint batch."}),
        }}

    RETURN_TYPES = ("LATENT", "INT", "INT")
    RETURN_NAMES = ("latent", "width", "height")
    OUTPUT_TOOLTIPS = ("An empty (zero) SD1.x/SD2.x/SDXL latent batch, 4 channels, image size / 8.",
                       "The latent's width in pixels (the image width rounded down to a multiple of 8).",
                       "The latent's height in pixels (the image height rounded down to a multiple of 8).")
    FUNCTION = "generate"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Empty Latent Image at the size of an image: the latent follows the conditioner's output, so "
                   "line2product keeps the drawing's aspect from the line art to the saved image.")

    def generate(self, image, batch_size=1):
        node = self.DISPLAY
        x = _finite_batch(image, node)  # a NaN image means a broken chain
        b, h, w = int(x.shape[0]), int(x.shape[1]), int(x.shape[2])
        if h < 8 or w < 8:
            raise AtelierError(f"the image is {w}x{h}, smaller than one latent pixel (8x8)", node=node, input="image",
                               expected="an image of at least 8x8 pixels (a conditioner output at resolution >= 64)",
                               fix="raise the conditioner's resolution, or connect the control image.")
        if not isinstance(batch_size, (int, np.integer)) or not 1 <= int(batch_size) <= 4096:
            raise AtelierError(f"batch_size {batch_size!r} is out of range", node=node, input="batch_size",
                               expected="an integer in 1..4096", fix="use 1 for one latent per image.")
        check_size(h // 8, w // 8, batch=b * int(batch_size), channels=self.LATENT_CHANNELS, node=node,
                   input="batch_size", what=f"the empty latent batch ({b} image(s) x batch_size {int(batch_size)})",
                   fix="lower batch_size (or send fewer control images at once).")
        try:
            import comfy.model_management
            device = comfy.model_management.intermediate_device()
        except Exception:  # outside ComfyUI
            device = "cpu"
        latent = torch.zeros([b * int(batch_size), self.LATENT_CHANNELS, h // 8, w // 8], device=device)
        return ({"samples": latent}, (w // 8) * 8, (h // 8) * 8)


def _check_output_size(x: torch.Tensor, resolution: int, node: str) -> tuple[int, int]:
    """The (h, w) of the output maps; refused, before anything is allocated, when the output batch (IMAGE +
    MASK, float32) is over the size budget."""
    b, h, w = (int(v) for v in x.shape[:3])
    info = E.pad_info(h, w, resolution)
    oh, ow = info["scaled_h"] + info["top"] + info["bottom"], info["scaled_w"] + info["left"] + info["right"]
    if fits(oh, ow, batch=b, channels=4):  # the common case: skip building check_size's texts
        return oh, ow
    keep = resolution == 0
    check_size(oh, ow, batch=b, channels=4, node=node, input="image" if keep else "resolution",
               what=f"the output batch ({b} map(s) + mask(s) of {ow}x{oh}"
                    f"{', the input size: resolution 0' if keep else f' for resolution {resolution}'})",
               fix=("set resolution to the short side you need (e.g. 1024) instead of 0, or split the batch."
                    if keep else "lower resolution (the output's short side, e.g. 1024), or split the batch."))
    return oh, ow


def _check_resolution(resolution, node: str) -> int:
    ok = isinstance(resolution, (int, np.integer, float)) and float(resolution).is_integer()
    if not ok or resolution < 0 or resolution > MAX_RES:
        raise AtelierError(f"resolution {resolution!r} is out of range", node=node, input="resolution",
                           expected=f"0 (keep size) or a short side in 1..{MAX_RES}", fix="use e.g. 512 or 1024.")
    return int(resolution)


NODE_CLASS_MAPPINGS = {
    "AtelierCanny": AtelierCanny,
    "AtelierLineart": AtelierLineart,
    "AtelierCropBack": AtelierCropBack,
    "AtelierEmptyLatentLike": AtelierEmptyLatentLike,
}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY for k, v in NODE_CLASS_MAPPINGS.items()}
