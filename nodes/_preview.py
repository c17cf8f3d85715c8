"""Small preview images for a node's ui output (shown on the node by every ComfyUI frontend).

Like ComfyUI's PreviewImage: PNGs written to the temp folder, returned as
{"filename", "subfolder", "type": "temp"} items for `{"ui": {"images": [...]}}`. A preview is a
convenience: if it cannot be written the node's result is still returned (with a log line).
"""
from __future__ import annotations

import logging
import os
import uuid

import numpy as np
import torch

from ..core.images import to_uint8

log = logging.getLogger("atelier")

MAX_IMAGES = 4
MAX_SIDE = 384


def preview_images(images: torch.Tensor, prefix: str, max_images: int = MAX_IMAGES,
                   max_side: int = MAX_SIDE) -> list[dict]:
    """Write up to `max_images` of an IMAGE [B,H,W,C] (C = 1, 3 or 4) or MASK [B,H,W] batch as small PNGs."""
    try:
        import folder_paths
        from PIL import Image

        out_dir = folder_paths.get_temp_directory()
        os.makedirs(out_dir, exist_ok=True)
        x = images if images.ndim == 4 else images[..., None]
        run = uuid.uuid4().hex[:10]
        items = []
        for i in range(min(int(x.shape[0]), max_images)):
            arr = to_uint8(x[i])  # Save Image's conversion: the preview shows what a save would write
            if arr.shape[-1] == 1:
                arr = arr[..., 0]
            elif arr.shape[-1] not in (3, 4):
                arr = arr[..., :3]
            pil = Image.fromarray(np.ascontiguousarray(arr))
            pil.thumbnail((max_side, max_side))
            name = f"{prefix}_{run}_{i:02d}.png"
            pil.save(os.path.join(out_dir, name), compress_level=1)
            items.append({"filename": name, "subfolder": "", "type": "temp"})
        return items
    except Exception as exc:  # never fail a run for a preview
        log.warning("[Atelier] could not write a preview image: %s: %s", type(exc).__name__, exc)
        return []


def with_preview(result: tuple, images: torch.Tensor, prefix: str) -> dict:
    """A node's return value: `result` plus a preview of `images` on the node."""
    return {"ui": {"images": preview_images(images, prefix)}, "result": result}
