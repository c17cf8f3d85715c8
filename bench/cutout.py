"""Clean cut-out benchmark: what decontamination and the contact shadow cost on top of the matte composite.

    python bench/cutout.py [--sizes 512 1024 2048] [--repeats 5] [--threads N] [--weights final.pth] [--quick]

Rows per size (one image, CPU, float32, fresh process per row so peak memory does not leak between rows):
- composite: the plain matte composite (core.matting.composite), what Remove Background does today after
  the matte;
- decontaminate, shadow, both: core.matting.clean_composite with each option;
- poolnet matte: PoolNet (seeded random weights in the official layout unless --weights; the time is the
  real network's either way) through remove_background at max_side 1024, the node's default: the cost a
  user already pays for the matte.

Medians over --repeats runs after one untimed warm-up; peak MB is that process's peak RSS over its state
with the inputs loaded. Target: the clean options together (decontaminate + shadow) cost at most
0.5x the PoolNet matte at the same size (they are then a minor part of the node's time), checked per size.

--quick: a smoke run (128^2, one repeat, in this process, no PoolNet row timing claims): it checks that the
bench still runs and prints its table; its timings mean nothing.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from _verdict import cells

CLEAN_TARGET = ("<=", 0.5)  # (decontaminate + shadow) time / PoolNet matte time, same size

# `tests.fixtures` (seeded PoolNet weights) through the installed pack, comfyui_atelier: never the repository root on
# sys.path, where the pack's own nodes/ would shadow ComfyUI's `nodes`
sys.modules.setdefault("tests.fixtures", __import__("comfyui_atelier.tests.fixtures", fromlist=["link_file"]))


def _rss_now_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024.0 for line in f if line.startswith("VmRSS:"))


def scene(size: int):
    """(image [1,S,S,3], alpha [1,S,S]): an orange bottle-like shape with a soft edge on a green backdrop."""
    import torch
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    body = 1 - torch.maximum((xx / 0.35).abs(), ((yy - 0.15) / 0.6).abs())
    neck = 1 - torch.maximum((xx / 0.12).abs(), ((yy + 0.6) / 0.2).abs())
    alpha = (torch.maximum(body, neck) * size / 8).clamp(0, 1)[None]
    fg = torch.tensor([0.9, 0.45, 0.1])
    bg = torch.tensor([0.1, 0.8, 0.2]) * (0.9 + 0.1 * yy[..., None])
    return (alpha[..., None] * fg + (1 - alpha[..., None]) * bg).clamp(0, 1), alpha


def _run(kind, args):
    import torch
    torch.set_num_threads(args["threads"])
    from comfyui_atelier.core import matting as M
    img, alpha = scene(args["size"])
    alpha = M.snap_alpha(alpha)
    if kind == "poolnet":
        from comfyui_atelier.core import poolnet as P
        if args["weights"]:
            net = P.load_poolnet(args["weights"])
        else:
            from tests.fixtures.poolnet_models import random_state_dict
            net = P.PoolNet()
            P.load_state_dict_strict(net, random_state_dict(0))
            net = P.prepare_inference(net)
        model = M.SaliencyModel("poolnet", "bench", net=net)
        call = lambda: M.remove_background(model, img, max_side=1024)  # noqa: E731
    else:
        opts = {"composite": {}, "decontaminate": {"decontaminate_edges": True},
                "shadow": {"shadow_strength": 0.35},
                "both": {"decontaminate_edges": True, "shadow_strength": 0.35}}[kind]
        call = (lambda: M.composite(img, alpha)) if kind == "composite" else \
            (lambda: M.clean_composite(img, alpha, **opts))
    import gc
    gc.collect()
    base, times = _rss_now_mb(), []
    for i in range(args["repeats"] + args["warmup"]):
        t = time.perf_counter()
        with torch.no_grad():
            call()
        if i >= args["warmup"]:
            times.append(time.perf_counter() - t)
    # a fresh process per row: its lifetime peak RSS is this row's (inline, in --quick, it means nothing)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"median_s": statistics.median(times), "peak_mb": max(0.0, peak - base)}


def measure(kind, **args):
    """One row, in a fresh (spawned) interpreter unless --quick."""
    if args.get("inline"):
        return _run(kind, args)
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(_run, kind, args).result()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--weights", help="PoolNet final.pth / .safetensors (default: seeded random weights)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 128^2, one repeat, in-process, seconds")
    a = ap.parse_args(argv)
    if a.quick:
        a.sizes, a.repeats, a.warmup, a.threads = [128], 1, 0, min(a.threads, 2)
    common = dict(repeats=a.repeats, warmup=a.warmup, threads=a.threads, weights=a.weights, inline=a.quick)
    print(f"# clean cut-out bench: torch CPU, {a.threads} threads, one image per row, medians of {a.repeats} runs")
    print("# ratio = row time / plain composite time; target: (decontaminate + shadow) / PoolNet matte at max_side 1024")
    print(f"{'size':>6} {'row':<14} {'ms':>9} {'ratio':>8} {'peak MB':>8}  target")
    for size in a.sizes:
        rows = {k: measure(k, size=size, **common) for k in ("composite", "decontaminate", "shadow", "both", "poolnet")}
        base = rows["composite"]["median_s"]
        clean_vs_matte = rows["both"]["median_s"] / rows["poolnet"]["median_s"]
        for k, r in rows.items():
            ratio = r["median_s"] / base if base > 0 else float("nan")
            target = (f"{clean_vs_matte:.2f}x the matte, {cells(clean_vs_matte, CLEAN_TARGET)}" if k == "both"
                      else cells(None, None))
            label = "poolnet matte" if k == "poolnet" else k
            print(f"{size:>6} {label:<14} {1000 * r['median_s']:>9.1f} {ratio:>8.1f} {r['peak_mb']:>8.0f}  {target}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
