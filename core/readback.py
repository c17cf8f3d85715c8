"""Text read-back: OCR a (generated) image inside the text boxes it was meant to show, and score the result.

Given an image and the boxes the glyph nodes rendered (core.glyph box dicts: ``text`` + 4-point ``polygon``
in the image's pixels), each box is cropped with a margin (``margin`` x the box's shorter side on every side,
to tolerate a label the generator drew a little off its box), the crops are laid out on one or a few
mosaic pages (each crop surrounded by its own replicated border, ``GAP`` px apart) and read with
core.ocr.run_ocr (rapidocr by default, PaddleOCR through the same backend switch), and every detection is
given to the crop its centre falls in. Detections of one crop are joined in reading order (rows top to
bottom, left to right within a row). A crop where the detector finds nothing (single characters often fall
below it) is read whole by the recogniser alone (rapidocr; PaddleOCR has no such fallback here). Crops are
scaled first so the box's shorter side is ``TEXT_HEIGHT`` px, and pages are padded to rapidocr's 736 px rather
than rescaled, so the figures depend neither on the image size nor on the other boxes. Labels closer together than
the margin share pixels: a detection spanning both is given to one of them (lower ``margin`` for tight layouts).

Per box: expected text, recognised text, character accuracy and confidence:

- ``accuracy = max(0, 1 - levenshtein(expected, read) / max(len(expected), 1))`` on normalised text (below);
- ``confidence`` = mean recognition score of the detections in the crop, 0 when nothing was read.

Per image: mean and min accuracy, the fraction of boxes read exactly (accuracy 1), mean confidence. An image
with no boxes has nothing to misread: accuracy 1, exact fraction 1, confidence 0, and ``boxes == 0`` says so.

Normalisation (``NORMALIZATIONS``), applied to expected and read text alike before the edit distance:

- ``"ignore case and spaces"`` (default): Unicode NFKC (full-width Latin and digits become ASCII, the
  compatibility forms of CJK punctuation fold), every whitespace character removed (OCR drops or adds spaces
  between words: rapidocr reads "空格 Space" as "空格Space"), then ``str.casefold`` (Latin "shift" = "Shift";
  no effect on Chinese);
- ``"ignore spaces"``: NFKC and whitespace removed, case kept;
- ``"exact"``: the strings as they are.

Pure core: numpy, cv2 and core.ocr; no ComfyUI.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

import cv2
import numpy as np

from . import ocr as O
# ranking / selection / comparison text shared with the aesthetic family (same filter rules)
from .selection import compare_text, keep_or_best, order_by_score  # noqa: F401
from .budget import check_size
from .glyph import polygon_size

NORMALIZATIONS = ("ignore case and spaces", "ignore spaces", "exact")
DEFAULT_MARGIN = 0.25
GAP = 24  # px of replicated border around each crop on the mosaic page
TEXT_HEIGHT = 80  # px: every crop is scaled so its box's shorter side is this (1/8x..8x), whatever the image size;
# pages are padded to 736 px (core.ocr pad_to_min_side) so rapidocr does not rescale them again: a box then reads
# the same whatever else is on its page
PAGE_SIDE = 1600  # a page stays under rapidocr's max_side_len (2000), so it is never shrunk


def normalize_text(text: str, mode: str = NORMALIZATIONS[0]) -> str:
    """The text as compared (see the module doc for the modes)."""
    if mode == "exact":
        return str(text)
    s = "".join(unicodedata.normalize("NFKC", str(text)).split())
    return s.casefold() if mode == NORMALIZATIONS[0] else s


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions, each 1) between two strings."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def char_accuracy(expected: str, read: str, mode: str = NORMALIZATIONS[0]) -> float:
    """1 - edit distance / expected length (at least 1), clipped at 0, on normalised text."""
    e, r = normalize_text(expected, mode), normalize_text(read, mode)
    return max(0.0, 1.0 - edit_distance(e, r) / max(len(e), 1))


@dataclass
class BoxRead:
    expected: str
    read: str
    accuracy: float
    confidence: float
    polygon: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"expected": self.expected, "read": self.read, "accuracy": round(self.accuracy, 6),
                "confidence": round(self.confidence, 6), "polygon": self.polygon}


@dataclass
class Readback:
    """The read-back of one image: one BoxRead per expected box, and the summary figures."""
    boxes: list[BoxRead] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        """Mean character accuracy over the boxes (1.0 when there are none)."""
        return float(np.mean([b.accuracy for b in self.boxes])) if self.boxes else 1.0

    @property
    def min_accuracy(self) -> float:
        return float(min(b.accuracy for b in self.boxes)) if self.boxes else 1.0

    @property
    def exact_fraction(self) -> float:
        return float(np.mean([b.accuracy >= 1.0 for b in self.boxes])) if self.boxes else 1.0

    @property
    def confidence(self) -> float:
        return float(np.mean([b.confidence for b in self.boxes])) if self.boxes else 0.0

    def summary(self) -> dict:
        return {"boxes": len(self.boxes), "accuracy": self.accuracy, "min_accuracy": self.min_accuracy,
                "exact_fraction": self.exact_fraction, "confidence": self.confidence}

    def to_dict(self) -> dict:
        return dict(self.summary(), items=[b.to_dict() for b in self.boxes])


def crop_rect(polygon, height: int, width: int, margin: float = DEFAULT_MARGIN) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a box's bounding rectangle grown by margin x its shorter side, inside the image;
    never empty (at least 1x1)."""
    p = np.asarray(polygon, np.float64).reshape(4, 2)
    grow = margin * min(polygon_size(p))
    x0, y0 = np.floor(p.min(0) - grow).astype(int)
    x1, y1 = np.ceil(p.max(0) + grow).astype(int)
    x0, y0 = min(max(0, x0), width - 1), min(max(0, y0), height - 1)
    return x0, y0, max(x0 + 1, min(width, x1)), max(y0 + 1, min(height, y1))


def _pages(sizes: list[tuple[int, int]], gap: int, side: int) -> list[tuple[int, int, list[tuple[int, int, int]]]]:
    """Shelf-pack (h, w) tiles (each grown by `gap` on every side) into pages of width <= side (a wider tile
    gets a page of its own width). Returns [(page_h, page_w, [(tile index, x, y), ...])]."""
    pages, cur, x, y, row_h, page_w = [], [], 0, 0, 0, 0
    for i, (h, w) in enumerate(sizes):
        th, tw = h + 2 * gap, w + 2 * gap
        if x and x + tw > side:  # next row
            x, y, row_h = 0, y + row_h, 0
        if cur and y + th > side:  # next page
            pages.append((y + row_h, page_w, cur))
            cur, x, y, row_h, page_w = [], 0, 0, 0, 0
        cur.append((i, x + gap, y + gap))
        x += tw
        row_h, page_w = max(row_h, th), max(page_w, x)
    if cur:
        pages.append((y + row_h, page_w, cur))
    return pages


def _reading_order(polys: np.ndarray) -> list[int]:
    """Indices of detections in reading order: rows (centres within half a median line height) top to
    bottom, left to right inside a row."""
    if len(polys) == 0:
        return []
    c = polys.mean(1)
    hs = polys[:, :, 1].max(1) - polys[:, :, 1].min(1)
    tol = max(1.0, float(np.median(hs)) / 2)
    order = sorted(range(len(polys)), key=lambda k: c[k, 1])
    rows, out = [], []
    for k in order:
        if rows and abs(c[k, 1] - np.mean([c[j, 1] for j in rows[-1]])) <= tol:
            rows[-1].append(k)
        else:
            rows.append([k])
    for r in rows:
        out.extend(sorted(r, key=lambda k: c[k, 0]))
    return out


def read_back(image: np.ndarray, boxes: list[dict], *, margin: float = DEFAULT_MARGIN,
              normalization: str = NORMALIZATIONS[0], backend: str = "rapidocr",
              det_model_dir: str | None = None, rec_model_dir: str | None = None, lang: str | None = None,
              node: str | None = None, input: str = "glyphs") -> Readback:
    """Read each box's text back from `image` (uint8 or float 0..1 RGB/RGBA/gray [H, W(, C)]).

    boxes: core.glyph box dicts with ``text`` and ``polygon`` in this image's pixels."""
    if normalization not in NORMALIZATIONS:
        from .errors import AtelierError
        raise AtelierError(f"unknown normalisation '{normalization}'", node=node, input="normalization",
                           expected=" / ".join(NORMALIZATIONS), fix="pick one of those.")
    img = O.to_uint8_rgb(image)
    h, w = img.shape[:2]
    rects = [crop_rect(b["polygon"], h, w, margin) for b in boxes]
    crops = []
    for b, (x0, y0, x1, y1) in zip(boxes, rects):
        crop = img[y0:y1, x0:x1]
        s = float(np.clip(TEXT_HEIGHT / max(1.0, min(polygon_size(np.asarray(b["polygon"], np.float64)))), 1 / 8, 8))
        if abs(s - 1) > 0.05:
            size = (max(1, round(crop.shape[1] * s)), max(1, round(crop.shape[0] * s)))
            crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
        crops.append(crop)
    sizes = [c.shape[:2] for c in crops]
    found: list[list[tuple[np.ndarray, str, float]]] = [[] for _ in boxes]
    for page_h, page_w, tiles in _pages(sizes, GAP, PAGE_SIDE):
        check_size(page_h, page_w, channels=3, node=node, input=input, what=f"the read-back page ({page_w}x{page_h})",
                   fix="read back fewer or smaller text boxes at once.")
        page = np.full((page_h, page_w, 3), 127, np.uint8)
        spans = []
        for i, x, y in tiles:
            ch, cw = sizes[i]
            page[y - GAP:y + ch + GAP, x - GAP:x + cw + GAP] = cv2.copyMakeBorder(crops[i], GAP, GAP, GAP, GAP,
                                                                                  cv2.BORDER_REPLICATE)
            spans.append((i, x - GAP, y - GAP, x + cw + GAP, y + ch + GAP))
        res = O.run_ocr(page, backend=backend, min_confidence=0.0, det_model_dir=det_model_dir, pad_small=True,
                        rec_model_dir=rec_model_dir, lang=lang, node=node)
        for poly, text, score in zip(res.polygons, res.texts, res.scores):
            cx, cy = poly.mean(0)
            for i, tx0, ty0, tx1, ty1 in spans:
                if tx0 <= cx < tx1 and ty0 <= cy < ty1:
                    found[i].append((poly, text, score))
                    break
    out = []
    for b, hits, crop in zip(boxes, found, crops):
        order = _reading_order(np.asarray([p for p, _, _ in hits], np.float32).reshape(-1, 4, 2))
        read = " ".join(hits[k][1] for k in order)
        conf = float(np.mean([hits[k][2] for k in order])) if order else 0.0
        if not order:  # nothing detected (a single letter is often below the detector): read the crop whole
            read, conf = O.recognize(crop, backend=backend, node=node) or ("", 0.0)
        out.append(BoxRead(str(b["text"]), read, char_accuracy(b["text"], read, normalization), conf,
                           [[float(x), float(y)] for x, y in b["polygon"]]))
    return Readback(out)


def format_report(results: list[Readback], threshold: float | None = None, title: str = "text read-back",
                  max_boxes: int = 40) -> str:
    """Readable report: per image its summary (and pass/below against threshold), then up to max_boxes box
    lines (expected -> read, accuracy, confidence), then the overall figures."""
    lines = [f"{title} ({len(results)} image{'s' if len(results) != 1 else ''}; accuracy = 1 - edit distance / "
             "expected length):"]
    for i, r in enumerate(results):
        mark = "" if threshold is None else ("  pass" if r.accuracy >= threshold else "  below")
        lines.append(f"#{i}: accuracy {r.accuracy:.3f}  min {r.min_accuracy:.3f}  exact {r.exact_fraction:.0%}  "
                     f"confidence {r.confidence:.3f}  ({len(r.boxes)} box{'es' if len(r.boxes) != 1 else ''}){mark}")
        for b in r.boxes[:max_boxes]:
            lines.append(f"    {b.expected!r} -> {b.read!r}  {b.accuracy:.3f}  conf {b.confidence:.3f}")
        if len(r.boxes) > max_boxes:
            lines.append(f"    ... {len(r.boxes) - max_boxes} more")
    if results:
        acc = [r.accuracy for r in results]
        nb = sum(len(r.boxes) for r in results)
        exact = sum(sum(b.accuracy >= 1.0 for b in r.boxes) for r in results)
        lines.append(f"overall: mean accuracy {float(np.mean(acc)):.3f}  min {min(acc):.3f}  "
                     f"exact {exact}/{nb} boxes  mean confidence {float(np.mean([r.confidence for r in results])):.3f}")
    return "\n".join(lines)


#: degradation ladders (kind -> levels, mildest first) used by the read-back test and bench/glyph.py --readback
LADDERS = {"blur": (0.0, 1.5, 2.5, 3.5, 5.0), "noise": (0.0, 60.0, 120.0, 180.0, 250.0),
           "jpeg": (90, 10, 5, 2, 1), "contrast": (1.0, 0.1, 0.04, 0.02, 0.01)}


def degrade(image: np.ndarray, kind: str, level: float, seed: int = 0) -> np.ndarray:
    """A uint8 RGB image made worse: ``blur`` (Gaussian, sigma px), ``noise`` (Gaussian, std in 0..255 levels,
    seeded), ``jpeg`` (JPEG round trip at this quality) or ``contrast`` (every pixel pulled toward mid-grey,
    keeping `level` of its distance from it: low-contrast colour)."""
    img = np.ascontiguousarray(image, np.uint8)
    if kind == "blur":
        return img.copy() if level <= 0 else cv2.GaussianBlur(img, (0, 0), float(level))
    if kind == "noise":
        n = np.random.default_rng(seed).normal(0.0, float(level), img.shape)
        return np.clip(img + n, 0, 255).astype(np.uint8)
    if kind == "jpeg":
        ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(level)])
        return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    if kind == "contrast":
        return np.clip(127.5 + (img.astype(np.float32) - 127.5) * float(level), 0, 255).astype(np.uint8)
    raise ValueError(f"unknown degradation '{kind}' (one of {', '.join(LADDERS)})")
