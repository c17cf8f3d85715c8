"""OCR adapters with one result shape: polygons, texts, recognition scores.

Backends (imported lazily, only when used):
- ``rapidocr`` (default): the ``rapidocr_onnxruntime`` wheel ships the PP-OCRv4 detection / recognition
  and the direction-classifier ONNX models, so it works offline. Install: ``pip install
  "comfyui-atelier[ocr]"`` (rapidocr_onnxruntime + onnxruntime). The newer ``rapidocr`` package (2.x+)
  is used when it is the one installed.
- ``paddleocr``: PaddleOCR 3.x through its ``predict`` API; optional extra ``pip install
  "comfyui-atelier[paddle]"`` (paddleocr + paddlepaddle; they pin old opencv/protobuf, so keep them out of
  the main requirements). Model folders are configurable; model-hoster checks are switched off so it
  runs offline once the models are on disk.

The seed kept detections with recognition score > 0.98; ``min_confidence`` defaults to that and keeps
detections with score >= min_confidence.

Fidelity: by default an image goes to rapidocr exactly as given (uint8 RGB from core.images' Save-Image
conversion, channels flipped to BGR), so ``run_ocr(x, min_confidence=t)`` lists the same texts, scores and boxes
(in TL, TR, BR, BL order) as ``RapidOCR()(bgr, text_score=t)``; the only difference is that detections whose
text is empty or blank are dropped (they cannot be re-rendered). ``pad_small=True`` (the OCR Boxes node's
``small_image: pad to 736``) pads images with a side under 736 px first, as the pack did before: on rendered
text it can keep a short line whole, on real photos it changed 9 of 54 result lists and lost all text once.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .errors import AtelierError
from .images import from_uint8, rgb_uint8

BACKENDS = ("rapidocr", "paddleocr")
DEFAULT_MIN_CONFIDENCE = 0.98

_ENGINES: dict = {}
_LOCK = threading.Lock()


@dataclass
class OcrResult:
    """polygons: float32 [N, 4, 2] (TL, TR, BR, BL in image pixels); texts: N strings; scores: N floats."""
    polygons: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 2), np.float32))
    texts: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def filter(self, min_confidence: float) -> "OcrResult":
        keep = [i for i, s in enumerate(self.scores) if s >= min_confidence and self.texts[i].strip()]
        return OcrResult(self.polygons[keep].reshape(-1, 4, 2), [self.texts[i] for i in keep],
                         [self.scores[i] for i in keep])

    def to_boxes(self) -> list[dict]:
        """Canonical glyph boxes (see core.glyph) for these detections."""
        return [{"text": t, "polygon": [[float(x), float(y)] for x, y in p], "font": None, "size": None,
                 "direction": "auto", "score": float(s)} for p, t, s in zip(self.polygons, self.texts, self.scores)]


def _order_quad(pts) -> np.ndarray:
    """Any 4+ points -> a 4-point quad in TL, TR, BR, BL order (min-area rectangle for more points)."""
    p = np.asarray(pts, np.float32).reshape(-1, 2)
    if len(p) != 4:
        import cv2
        p = cv2.boxPoints(cv2.minAreaRect(p)).astype(np.float32)
    c = p.mean(0)
    ang = np.arctan2(p[:, 1] - c[1], p[:, 0] - c[0])
    p = p[np.argsort(ang)]  # clockwise on screen (y down), starting anywhere
    start = int(np.argmin(p[:, 0] + p[:, 1]))
    return np.roll(p, -start, axis=0)


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """Any accepted image -> contiguous uint8 RGB ``[H, W, 3]``, alpha flattened on white, floats converted as
    ComfyUI's Save Image does (core.images), so OCR of an IMAGE and of its saved PNG read the same pixels."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4) or 0 in a.shape:
        raise AtelierError(f"OCR needs an image [H, W, 3], got shape {tuple(np.asarray(image).shape)}",
                           input="image", expected="an RGB, RGBA or grayscale image", fix="pass a normal image.")
    if a.dtype == np.uint8:
        if a.shape[-1] == 3:
            return np.ascontiguousarray(a)
        return rgb_uint8(from_uint8(a)[None])[0]
    f = a.astype(np.float32)
    if f.max() > 1.0:  # a float image in 0..255
        f = f / np.float32(255.0)
    return np.ascontiguousarray(rgb_uint8(torch.from_numpy(f)[None])[0])


def _missing(backend: str, exc: Exception, node, extra: str, pkgs: str) -> AtelierError:
    return AtelierError(f"OCR backend '{backend}' is not installed ({type(exc).__name__}: {exc})", node=node,
                        input="backend", expected=f"the Python packages {pkgs}",
                        fix=f"pip install \"comfyui-atelier[{extra}]\" (i.e. pip install {pkgs}) into ComfyUI's "
                            f"Python and restart, or select the other backend.")


# ----------------------------------------------------------------------------------------------
# rapidocr

def _rapid_engine(node):
    key = ("rapidocr",)
    with _LOCK:
        if key in _ENGINES:
            return _ENGINES[key]
        try:
            from rapidocr_onnxruntime import RapidOCR  # 1.x: models inside the wheel
            eng = ("v1", RapidOCR())
        except ImportError as exc1:
            try:
                from rapidocr import RapidOCR  # 2.x+
            except ImportError:
                raise _missing("rapidocr", exc1, node, "ocr", "rapidocr_onnxruntime onnxruntime") from None
            eng = ("v2", RapidOCR())
        _ENGINES[key] = eng
        return eng


RAPID_MIN_SIDE = 736  # rapidocr's detector upscales the short side to this ("limit_type: min")


def pad_to_min_side(img: np.ndarray, min_side: int = RAPID_MIN_SIDE) -> np.ndarray:
    """Pad (bottom / right, with the border's median colour) so both sides are >= min_side.

    Opt-in only (``run_ocr(pad_small=True)``): rapidocr upscales a small image until its short side reaches
    736 px, and upscaled text lines are sometimes split at spaces; padding keeps the text at its own scale
    and leaves the coordinates unchanged, but on real photos it changes what is read (see the module doc).
    """
    h, w = img.shape[:2]
    if h >= min_side and w >= min_side:
        return img
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    out = np.empty((max(h, min_side), max(w, min_side)) + img.shape[2:], img.dtype)
    out[:] = np.median(border, axis=0).astype(img.dtype)
    out[:h, :w] = img
    return out


def _run_rapid(img: np.ndarray, node, pad_small: bool = False) -> OcrResult:
    kind, eng = _rapid_engine(node)
    h, w = img.shape[:2]
    bgr = np.ascontiguousarray((pad_to_min_side(img) if pad_small else img)[..., ::-1])
    if kind == "v1":
        res, _ = eng(bgr, text_score=0.0)
        res = res or []
        polys = [r[0] for r in res]
        texts = [str(r[1]) for r in res]
        scores = [float(r[2]) for r in res]
    else:
        out = eng(bgr)
        polys = list(out.boxes) if getattr(out, "boxes", None) is not None else []
        texts = [str(t) for t in (out.txts or [])]
        scores = [float(s) for s in (out.scores or [])]
    quads = np.stack([_order_quad(p) for p in polys]) if polys else np.zeros((0, 4, 2), np.float32)
    quads[..., 0] = np.clip(quads[..., 0], 0, w)
    quads[..., 1] = np.clip(quads[..., 1], 0, h)
    return OcrResult(quads.astype(np.float32), texts, scores)


# ----------------------------------------------------------------------------------------------
# PaddleOCR 3.x

def _paddle_engine(node, det_model_dir: str | None, rec_model_dir: str | None, lang: str | None):
    key = ("paddleocr", det_model_dir, rec_model_dir, lang)
    with _LOCK:
        if key in _ENGINES:
            return _ENGINES[key]
        # offline: no model-hoster connectivity check; models must already be on disk when dirs are given
        os.environ.setdefault("PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK", "True")
        os.environ.setdefault("DISABLE_MODEL_SOURCE_CHECK", "True")
        try:
            from paddleocr import PaddleOCR
        except ImportError as exc:
            raise _missing("paddleocr", exc, node, "paddle", "paddleocr>=3.0 paddlepaddle>=3.0") from None
        kwargs = dict(use_doc_orientation_classify=False, use_doc_unwarping=False, use_textline_orientation=False)
        for arg, val in (("text_detection_model_dir", det_model_dir), ("text_recognition_model_dir", rec_model_dir)):
            if val:
                if not os.path.isdir(val):
                    raise AtelierError(f"PaddleOCR model folder '{val}' does not exist", node=node, input=arg,
                                       expected="a folder with an exported PaddleOCR inference model",
                                       fix="download the model folder and give its path, or leave it empty.")
                kwargs[arg] = val
        if lang:
            kwargs["lang"] = lang
        try:
            eng = PaddleOCR(**kwargs)
        except Exception as exc:  # model download blocked offline, bad folder...
            raise AtelierError(f"PaddleOCR could not start: {type(exc).__name__}: {exc}", node=node, input="backend",
                               expected="PaddleOCR 3.x with its models on disk",
                               fix="set the detection/recognition model folders to downloaded models, or use rapidocr.") from exc
        _ENGINES[key] = eng
        return eng


def _run_paddle(img: np.ndarray, node, det_model_dir, rec_model_dir, lang) -> OcrResult:
    eng = _paddle_engine(node, det_model_dir, rec_model_dir, lang)
    if not hasattr(eng, "predict"):
        raise AtelierError("the installed paddleocr is older than 3.0 (no predict API)", node=node, input="backend",
                           expected="paddleocr>=3.0", fix="pip install -U \"comfyui-atelier[paddle]\".")
    polys, texts, scores = [], [], []
    for res in eng.predict(np.ascontiguousarray(img[..., ::-1])):
        d = res.json.get("res", res.json) if hasattr(res, "json") and isinstance(res.json, dict) else res
        for p, t, s in zip(d["rec_polys"], d["rec_texts"], d["rec_scores"]):
            polys.append(_order_quad(p))
            texts.append(str(t))
            scores.append(float(s))
    quads = np.stack(polys).astype(np.float32) if polys else np.zeros((0, 4, 2), np.float32)
    return OcrResult(quads, texts, scores)


# ----------------------------------------------------------------------------------------------

def backend_available(backend: str) -> bool:
    from importlib.util import find_spec
    if backend == "rapidocr":
        return find_spec("rapidocr_onnxruntime") is not None or find_spec("rapidocr") is not None
    if backend == "paddleocr":
        return find_spec("paddleocr") is not None
    return False


def run_ocr(image: np.ndarray, *, backend: str = "rapidocr", min_confidence: float = DEFAULT_MIN_CONFIDENCE,
            det_model_dir: str | None = None, rec_model_dir: str | None = None, lang: str | None = None,
            pad_small: bool = False, node: str | None = None) -> OcrResult:
    """OCR one image (uint8 or float 0..1, [H, W], [H, W, 1|3|4] RGB/RGBA); keeps scores >= min_confidence.

    pad_small (rapidocr only): pad an image with a side under 736 px to 736 first (see pad_to_min_side);
    off by default, so the result is rapidocr's own on the same pixels."""
    if backend not in BACKENDS:
        raise AtelierError(f"unknown OCR backend '{backend}'", node=node, input="backend",
                           expected=" or ".join(BACKENDS), fix="pick rapidocr (default) or paddleocr.")
    if not 0.0 <= float(min_confidence) <= 1.0:
        raise AtelierError(f"min_confidence {min_confidence} is outside 0..1", node=node, input="min_confidence",
                           expected="a value in 0..1 (the seed used 0.98)", fix="set e.g. 0.98.")
    img = to_uint8_rgb(image)
    if backend == "rapidocr":
        res = _run_rapid(img, node, bool(pad_small))
    else:
        res = _run_paddle(img, node, det_model_dir, rec_model_dir, lang)
    return res.filter(float(min_confidence))


def recognize(image: np.ndarray, *, backend: str = "rapidocr", node: str | None = None) -> tuple[str, float] | None:
    """Recognition only (no detection): the whole image read as one text line, (text, score); ("", 0.0) when
    nothing is read. rapidocr only; None for a backend without a recognition-only call (paddleocr)."""
    if backend != "rapidocr":
        return None
    img = to_uint8_rgb(image)
    kind, eng = _rapid_engine(node)
    bgr = np.ascontiguousarray(img[..., ::-1])
    if kind == "v1":
        res, _ = eng(bgr, use_det=False, use_cls=False, text_score=0.0)
        pairs = [(str(r[0]), float(r[1])) for r in (res or [])]
    else:
        out = eng(bgr, use_det=False, use_cls=False)
        pairs = list(zip([str(t) for t in (getattr(out, "txts", None) or [])],
                         [float(v) for v in (getattr(out, "scores", None) or [])]))
    pairs = [(t.strip(), v) for t, v in pairs if t.strip()]
    if not pairs:
        return "", 0.0
    return " ".join(t for t, _ in pairs), float(np.mean([v for _, v in pairs]))


def polygon_iou(a: Sequence, b: Sequence) -> float:
    """Intersection over union of two convex quadrilaterals (pixels)."""
    import cv2
    pa, pb = np.asarray(a, np.float32).reshape(-1, 2), np.asarray(b, np.float32).reshape(-1, 2)
    inter, _ = cv2.intersectConvexConvex(pa, pb)
    ua = abs(cv2.contourArea(pa)) + abs(cv2.contourArea(pb)) - inter
    return float(inter / ua) if ua > 0 else 0.0
