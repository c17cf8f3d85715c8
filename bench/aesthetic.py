"""Aesthetic scoring throughput: ours vs simple-aesthetics-predictor, same models, same images, same run.

    python bench/aesthetic.py [--sizes tiny,vitl] [--batches 1,8] [--image 1024] [--repeats 5] [--quick]

Both sides start from a ComfyUI IMAGE tensor [B,H,W,3] float 0..1, as a node would: ours scores it
directly; the peer converts it to 8-bit PIL images the way ComfyUI's SaveImage does, pre-processes them
with transformers' classic (PIL) CLIP image processor and runs AestheticsPredictorV2Linear under
torch.no_grad(). Models are random but real-shaped
(tiny CLIP, and CLIP ViT-L/14 = 304M vision parameters), written once to --cache in the
simple-aesthetics-predictor layout and loaded from disk by both. Prints median seconds per call,
images/s, ratio peer/ours (>= 1.0 means we are at least as fast), the max score difference and peak RSS, and
the load average at the start and end (a shared machine's load shows in every figure).
Ours converts and resizes the images of a batch in one thread per CPU (core.aesthetic.crop_threads: PIL and
numpy release the GIL; torch's thread count is not touched); "ours 1-thr" is the same with every resize in
the calling thread (ATELIER_CLIP_THREADS=1), for comparison.
The peer is timed twice: with transformers' default CLIP processor (transformers 5: torchvision resizing,
the speed target) and with the classic PIL processor (whose pixel values ours are identical to: the
parity reference). Each row prints its targets (peer/ours >= 1.0 on a batch of 8, "—" on other batches;
max |d score| <= 1e-4 on every row) with met/missed. Each timing round starts one function later than the
last (no order effect), after the allocator is settled as in a long-running ComfyUI (_verdict.py). CPU only (set
--threads to pin torch's thread count). --quick: a smoke run (tiny model, batches 1 and 2, 64x64 images, one
repeat) that checks the bench still runs and prints its table (timings mean nothing).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _verdict import cells, settle_allocator
from comfyui_atelier.core import aesthetic as A

HERE = Path(__file__).resolve().parent
SPEED_TARGET = (">=", 1.0)   # peer time / our time, on a batch of 8 (the target); other batches: "—"
SPEED_BATCH = 8
PARITY_TARGET = ("<=", 1e-4)  # max |score difference|


def _fixtures():
    p = HERE.parent / "tests" / "fixtures" / "aesthetic_models.py"
    spec = importlib.util.spec_from_file_location("atelier_aesthetic_fixture_models", p)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _peer_processors():
    """(default, PIL) CLIP image processors. transformers 5's default CLIPImageProcessor resizes with
    torchvision (faster, pixel values up to one 8-bit level off PIL's); CLIPImageProcessorPil is the
    classic one our pixel values are identical to. transformers 4.x: both are the PIL processor."""
    from transformers import CLIPImageProcessor
    try:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as P
    except ImportError:
        P = CLIPImageProcessor
    return CLIPImageProcessor(), P()


def _time_all(fns, repeats: int):
    """Median seconds of each function and its first result, measured in turns (a shared machine's load hits
    all alike). Each round starts one function later, so every function follows every other equally often:
    whichever ran first after the peer's torch work paid for it (up to 2x on one image), an order effect."""
    outs = [fn() for fn in fns]  # warm-up (also the results we compare)
    times = [[] for _ in fns]
    for r in range(repeats * len(fns)):
        k = (r + r // len(fns)) % len(fns)
        t = time.perf_counter()
        fns[k]()
        times[k].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times], outs


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="tiny,vitl")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--image", type=int, default=1024, help="square input side in pixels (SDXL renders 1024)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--vitl-repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--cache", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "atelier-bench-aesthetic"))
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny model, batches 1,2, 64x64, one repeat")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.batches, args.image, args.repeats = "tiny", "1,2", 64, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        from aesthetics_predictor import AestheticsPredictorV2Linear
    except ImportError:
        print("peer missing: pip install --no-deps simple-aesthetics-predictor", file=sys.stderr)
        return 2
    settle_allocator()
    load_start = os.getloadavg()
    FX = _fixtures()
    procs = _peer_processors()
    batches = [int(b) for b in args.batches.split(",")]
    imgs = FX.sample_images(max(batches), args.image, args.image, seed=0)

    rows = []
    for size in args.sizes.split(","):
        path = FX.build_hf_predictor(os.path.join(args.cache, f"{size}-linear"), layout="linear", size=size, seed=0)
        ours = A.load_hf_predictor(path)
        peer = AestheticsPredictorV2Linear.from_pretrained(path).float().eval()
        reps = args.repeats if size == "tiny" else args.vitl_repeats
        for b in batches:
            x = imgs[:b]

            def run_ours():
                return ours.score(x, batch_size=b)

            def run_ours_1():  # every conversion and resize in the calling thread
                prev = os.environ.get("ATELIER_CLIP_THREADS")
                os.environ["ATELIER_CLIP_THREADS"] = "1"
                try:
                    return ours.score(x, batch_size=b)
                finally:
                    if prev is None:
                        del os.environ["ATELIER_CLIP_THREADS"]
                    else:
                        os.environ["ATELIER_CLIP_THREADS"] = prev

            def peer_with(proc):
                def run_peer():
                    # a ComfyUI node built on the peer must first turn the IMAGE tensor into PIL images
                    p = [Image.fromarray(np.clip(255.0 * i.cpu().numpy(), 0, 255).astype(np.uint8)) for i in x]
                    with torch.no_grad():
                        pv = proc(images=p, return_tensors="pt")["pixel_values"]
                        return peer(pixel_values=pv).logits[:, 0]
                return run_peer

            (t_ours, t_one, t_peer, t_pil), (s_ours, s_one, _, s_pil) = _time_all(
                [run_ours, run_ours_1, peer_with(procs[0]), peer_with(procs[1])], reps)
            assert torch.equal(s_ours, s_one)  # threads change the speed, never the scores
            diff = (s_ours - s_pil).abs().max().item()
            rows.append((size, b, t_ours, t_one, t_peer, t_pil, b / t_ours, b / t_peer, t_peer / t_ours, diff,
                         _peak_rss_mb()))
        del ours, peer

    load_end = os.getloadavg()
    print(f"\naesthetic scoring, CPU ({torch.get_num_threads()} torch threads; our crops on "
          f"{A.crop_threads(max(batches))} threads), {args.image}x{args.image} RGB inputs, torch {torch.__version__}; "
          f"load average {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end ({os.cpu_count()} CPUs)")
    head = (f"{'model':<6} {'batch':>5} {'ours s':>9} {'ours 1-thr s':>12} {'peer s':>9} {'peer PIL s':>10} "
            f"{'ours img/s':>11} {'peer img/s':>11} {'peer/ours':>9} {'max |d score|':>14} {'peak RSS MB':>12}  "
            f"target (speed; parity)")
    print(head)
    print("-" * len(head))
    for size, b, to, t1, tp, tpil, io, ip, ratio, diff, rss in rows:
        print(f"{size:<6} {b:>5} {to:>9.4f} {t1:>12.4f} {tp:>9.4f} {tpil:>10.4f} {io:>11.2f} {ip:>11.2f} "
              f"{ratio:>8.2f}x {diff:>14.2e} {rss:>12.0f}  {cells(ratio, SPEED_TARGET if b == SPEED_BATCH else None)}; {cells(diff, PARITY_TARGET)}")
    print("(medians; peer = simple-aesthetics-predictor with transformers' default CLIP processor, the speed "
          "target: peer/ours >= 1.0 means at least as fast; peer PIL = the same with the classic PIL processor, "
          "the parity reference: max |d score| <= 1e-4 against it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
