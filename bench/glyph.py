"""Glyph rendering and OCR timings on the CPU, medians over repeated runs.

    python bench/glyph.py [--repeats 7] [--boxes 50] [--size 1024] [--threads 0] [--quick]

Rendering: 50 text boxes (Latin and Chinese, a quarter of them rotated, some tall ones vertical) on a
1024x1024 canvas with core.glyph.render_glyphs (auto font per box, auto-fit size, perspective warp into the
polygon, position mask). Peer: the plain PIL way, ImageDraw.text at a fixed size at each box's top-left
corner with a fixed CJK font (no fitting, no rotation, no mask, no glyph check), on the same canvas.

OCR: the same 1024x1024 glyph image through core.ocr.run_ocr with rapidocr (PP-OCRv4 ONNX models from its
wheel) and with PaddleOCR 3.x where it is installed and its models are available offline (otherwise the
row says why it was skipped). Prints median ms, the ratio to the peer / to rapidocr, each row's target with
met/missed ("—" where none is set) and peak RSS. --quick: a smoke run (6 boxes on 256x256, one repeat) that
checks the bench still runs and prints its table (timings mean nothing).

    python bench/glyph.py --parity 40     # OCR fidelity: run_ocr vs raw rapidocr on 40 rendered images
    python bench/glyph.py --readback      # read-back accuracy table under the degradation ladders

--parity N renders N images (sizes from 160 px to 1400 px on a side, Latin and Chinese, light and dark) and counts
how many of core.ocr.run_ocr(min_confidence=0)'s results equal raw rapidocr's on the same pixels (texts, scores,
quads), by default and with the opt-in padding of small images. --readback prints core.readback's accuracy and
confidence per step of core.readback.LADDERS on make_boxes(16, ...) labels, one table row per ladder, plus the
read-back time.
"""
from __future__ import annotations

import argparse
import math
import resource
import statistics
import time

import numpy as np
from PIL import Image, ImageDraw

from _verdict import cells

from comfyui_atelier.core import fonts as F
from comfyui_atelier.core import glyph as G
from comfyui_atelier.core import ocr as O
from comfyui_atelier.core.errors import AtelierError

WORDS = ["Enter", "Shift", "space", "Del", "123", "键盘", "皮肤", "空格", "换行", "符号", "Atelier", "中/英",
         "Hello", "设计", "Keyboard", "夜空"]


def make_boxes(n: int, size: int, seed: int = 0) -> list[dict]:
    """n non-overlapping boxes on a grid; every 4th rotated, every 7th tall (vertical text)."""
    rng = np.random.default_rng(seed)
    cols = int(math.ceil(math.sqrt(n)))
    cell = size / cols
    out = []
    for i in range(n):
        r, c = divmod(i, cols)
        cx, cy = (c + 0.5) * cell, (r + 0.5) * cell
        text = WORDS[i % len(WORDS)]
        if i % 7 == 3:
            w, h, text = cell * 0.3, cell * 0.85, "竖排文字"
        else:
            w, h = cell * 0.85, cell * 0.35
        ang = math.radians(rng.uniform(-20, 20)) if i % 4 == 1 else 0.0
        ca, sa = math.cos(ang), math.sin(ang)
        pts = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
        out.append({"text": text, "polygon": [[cx + x * ca - y * sa, cy + x * sa + y * ca] for x, y in pts]})
    return G.parse_text_boxes(out)


# bounds on each row's ratio (ours/PIL, backend/rapidocr); None: no agreed target yet, the row prints "—"
RENDER_TARGET = ("<=", 2.0)  # the target: 50 boxes on 1024² within 2x plain PIL text drawing
OCR_TARGET = None


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up (font cache, ONNX sessions)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parity(n: int) -> int:
    """How often run_ocr equals raw rapidocr (default, and with pad_small) on n rendered images."""
    from rapidocr_onnxruntime import RapidOCR
    raw_engine = RapidOCR()
    rng = np.random.default_rng(0)
    dirs = F.font_dirs()
    same = same_padded = small = 0
    t0 = time.perf_counter()
    for k in range(n):
        w, h = (int(v) for v in rng.integers(160, 1400, 2))
        glyph = G.render_glyphs(make_boxes(int(rng.integers(3, 10)), min(w, h), seed=k), w, h, dirs=dirs)[0]
        a = glyph.astype(np.float32)[..., None] / 255
        ink, paper = rng.integers(0, 100, 3), rng.integers(160, 256, 3)
        if k % 2:
            ink, paper = paper, ink
        img = (paper * (1 - a) + ink * a).astype(np.uint8)
        res, _ = raw_engine(np.ascontiguousarray(img[..., ::-1]), text_score=0.0)
        res = [r for r in (res or []) if str(r[1]).strip()]
        raw = ([str(r[1]) for r in res], [float(r[2]) for r in res],
               np.clip(np.asarray([O._order_quad(r[0]) for r in res], np.float32).reshape(-1, 4, 2), 0, [w, h]))

        def equal(o):
            return o.texts == raw[0] and o.scores == raw[1] and np.allclose(o.polygons, raw[2], atol=1e-4)
        small += min(w, h) < O.RAPID_MIN_SIDE
        same += equal(O.run_ocr(img, min_confidence=0.0))
        same_padded += equal(O.run_ocr(img, min_confidence=0.0, pad_small=True))
    print(f"OCR parity with raw rapidocr on {n} rendered images ({small} with a side under {O.RAPID_MIN_SIDE} px): "
          f"default {same}/{n} identical, with pad_small {same_padded}/{n} ({time.perf_counter() - t0:.0f} s)")
    return 0 if same == n else 1


def readback_table() -> int:
    from comfyui_atelier.core import readback as R
    size = 512
    boxes = make_boxes(16, size, seed=1)
    glyph = G.render_glyphs(boxes, size, size, dirs=F.font_dirs())[0]
    base = np.repeat((255 - glyph)[..., None], 3, -1)
    print(f"read-back accuracy (mean confidence) on {len(boxes)} labels, {size}², under core.readback.LADDERS:")
    for kind, levels in R.LADDERS.items():
        cells_ = []
        for lv in levels:
            t = time.perf_counter()
            r = R.read_back(R.degrade(base, kind, lv, seed=1), boxes)
            cells_.append(f"{lv:g}: {r.accuracy:.3f} ({r.confidence:.2f}, {time.perf_counter() - t:.1f} s)")
        print(f"  {kind:9s}" + "  ".join(cells_))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--boxes", type=int, default=50)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=0, help="cv2 threads (0 = OpenCV default)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 6 boxes, 256x256, one repeat")
    ap.add_argument("--parity", type=int, default=0, metavar="N", help="OCR parity vs raw rapidocr on N images")
    ap.add_argument("--readback", action="store_true", help="read-back accuracy under degradation ladders")
    a = ap.parse_args(argv)
    if a.parity:
        return parity(a.parity)
    if a.readback:
        return readback_table()
    if a.quick:
        a.repeats, a.boxes, a.size = 1, 6, 256
    if a.threads:
        import cv2
        cv2.setNumThreads(a.threads)
    dirs = F.font_dirs()
    boxes = make_boxes(a.boxes, a.size)
    cjk_path, cjk_idx = F.choose_font("auto", "键盘Enter", dirs)

    def ours():
        return G.render_glyphs(boxes, a.size, a.size, dirs=dirs)

    font = F.load_font(cjk_path, cjk_idx, 32)

    def peer():
        img = Image.new("L", (a.size, a.size), 0)
        d = ImageDraw.Draw(img)
        for b in boxes:
            d.text(tuple(b["polygon"][0]), b["text"], fill=255, font=font)
        return np.asarray(img)

    rows = []
    t_ours = median_ms(ours, a.repeats)
    t_peer = median_ms(peer, a.repeats)
    rows.append((f"render {a.boxes} boxes, {a.size}² (atelier)", t_ours, f"{t_ours / t_peer:.1f}x PIL",
                 cells(t_ours / t_peer, RENDER_TARGET)))
    rows.append((f"render {a.boxes} boxes, {a.size}² (plain PIL text)", t_peer, "1.0x", cells(None, None)))

    def ours_cold():  # every cache of core.glyph emptied first: a layout never rendered before
        G.clear_caches()
        return ours()
    t_cold = median_ms(ours_cold, a.repeats)
    rows.append((f"render {a.boxes} boxes, {a.size}² (atelier, caches cleared)", t_cold, f"{t_cold / t_peer:.1f}x PIL",
                 cells(None, None)))

    glyph_img = ours()[0]
    ocr_rows = []
    t_rapid = None
    for backend in O.BACKENDS:
        if not O.backend_available(backend):
            ocr_rows.append((f"OCR {a.size}² ({backend})", None, "skipped: not installed", cells(None, None)))
            continue
        try:
            n = len(O.run_ocr(glyph_img, backend=backend, min_confidence=0.0))
            t = median_ms(lambda: O.run_ocr(glyph_img, backend=backend, min_confidence=0.0), a.repeats)
        except AtelierError as exc:
            ocr_rows.append((f"OCR {a.size}² ({backend})", None, f"skipped: {exc.problem}", cells(None, None)))
            continue
        if backend == "rapidocr":
            t_rapid = t
        ratio = f"{t / t_rapid:.2f}x rapidocr" if t_rapid else ""
        ocr_rows.append((f"OCR {a.size}² ({backend}, {n} lines)", t, ratio,
                         cells(t / t_rapid, OCR_TARGET) if t_rapid and backend != "rapidocr" else cells(None, None)))
    rows += ocr_rows

    w = max(len(r[0]) for r in rows)
    nw = max(len(r[2]) for r in rows + [("", 0, "ratio")])
    print(f"{'case':<{w}}  {'median ms':>10}  {'ratio':<{nw}}  target")
    for name, t, note, target in rows:
        print(f"{name:<{w}}  {('%.1f' % t) if t is not None else '-':>10}  {note:<{nw}}  {target}")
    print(f"peak RSS {peak_rss_mb():.0f} MB, {a.repeats} repeats")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
