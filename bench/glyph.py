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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--boxes", type=int, default=50)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=0, help="cv2 threads (0 = OpenCV default)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 6 boxes, 256x256, one repeat")
    a = ap.parse_args(argv)
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
