"""Matting benchmark: PoolNet forward vs the classical backend, batching, and the max_side speed-up.

    python bench/matting.py [--weights final.pth] [--sizes 512 1024] [--batches 1 8] [--repeats 3]
                            [--big 2048] [--max-side 512] [--threads N] [--quick]

Prints medians (ms per batch and per image) and peak memory (RSS growth over the process's state with
model and inputs loaded; a fresh process per row, so numbers do not leak between rows). The batching rows
time a batch and the single images alternately in one process (wall and CPU time), so a change of load on a
shared machine hits both alike; each table prints the load average before and after it. Without --weights it uses seeded random weights
in the official layout: timings are the real network's, but the IoU row then measures random
features, not the published model (say so when quoting it).

The reference implementation (the forward rows' peer) is the authors' PoolNet forward
(tests/fixtures/poolnet_models.reference_forward: eval BatchNorm, NCHW, no_grad, every map kept,
upsample-then-conv) on the same weights.

Targets: batch 4 costs <= 0.9x a single image per image; our forward <= 0.8x the reference's time at
1024^2 and <= 0.5x its peak memory at 2048^2 (max|d| of the outputs printed per row); max_side=512 on a 2048^2 input >= 4x faster
than full resolution with alpha IoU >= 0.97 against full resolution. Every row prints its target and
met/missed ("—" where a row has none).

--quick: a smoke run (128^2 inputs, batches 1 and 2, a 256^2 max_side input, one repeat, in this process):
it checks the bench still runs and prints its tables; its timings mean nothing.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time

from _verdict import cells

BATCH_TARGET = ("<=", 0.9)      # batch per image / single per image
FORWARD_TARGET = ("<=", 0.8)    # our forward / the reference implementation's, at 1024^2
PEAK_TARGET = ("<=", 0.5)       # our peak memory / the reference's, full resolution at --ref-big
MAX_SIDE_TARGET = (">=", 4.0)   # full-resolution time / max_side time on the big input
IOU_TARGET = (">=", 0.97)       # min alpha IoU of max_side against full resolution

# `tests.fixtures` (seeded PoolNet weights) through the installed pack, comfyui_atelier: never the repository root on
# sys.path, where the pack's own nodes/ would shadow ComfyUI's `nodes`
sys.modules.setdefault("tests.fixtures", __import__("comfyui_atelier.tests.fixtures", fromlist=["link_file"]))


def _reset_peak() -> None:
    """Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) of this process."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _rss_mb(key: str = "VmHWM") -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def product_shots(n: int, size: int, seed: int = 0):
    """Near-white studio shots with a shaded box and a disc at varying places (RGB [n,H,W,3])."""
    import torch
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    out = []
    for i in range(n):
        img = (0.985 - 0.03 * (xx ** 2 + yy ** 2))[..., None].repeat(1, 1, 3)
        cx, cy = (torch.rand(2, generator=g) - 0.5) * 0.6
        box = ((xx - cx).abs() < 0.35) & ((yy - cy).abs() < 0.45)
        img[box] = torch.tensor([0.7, 0.2 + 0.1 * i % 0.5, 0.1]) * (0.75 + 0.25 * (yy[box] + 1)[..., None] / 2)
        disc = ((xx - cx - 0.3) ** 2 + (yy - cy + 0.35) ** 2) < 0.05
        img[disc] = torch.tensor([0.15, 0.25, 0.75])
        out.append((img + torch.randn(size, size, 3, generator=g) * 0.005).clamp(0, 1))
    return torch.stack(out)


def _load(weights):
    from comfyui_atelier.core import poolnet as P
    if weights:
        return P.load_poolnet(weights), os.path.basename(weights)
    from tests.fixtures.poolnet_models import random_state_dict
    net = P.PoolNet()
    P.load_state_dict_strict(net, random_state_dict(0))
    return P.prepare_inference(net), "seeded random weights (official layout)"


def reference_weights(weights):
    """The peer of the forward rows runs the authors' forward (tests.fixtures.poolnet_models.reference_forward:
    eval BatchNorm, NCHW, torch.no_grad, every intermediate kept as their code keeps it) on these weights."""
    from comfyui_atelier.core import poolnet as P
    if weights:
        sd = P.normalise_keys(P._read_state_dict(weights))
    else:
        from tests.fixtures.poolnet_models import random_state_dict
        sd = random_state_dict(0)
    return {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}


def _load_avg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


_NETS: dict = {}


def _job(kind, args, q):
    try:
        _run_job(kind, args, q)
    except BaseException as exc:  # report instead of leaving the parent waiting
        q.put({"error": f"{type(exc).__name__}: {exc}"})
        raise


def _run_job(kind, args, q):
    import torch
    torch.set_num_threads(args["threads"])
    from comfyui_atelier.core import matting as M
    from comfyui_atelier.core import poolnet as P
    if kind == "classical":
        net = None
    elif kind == "reference":
        from tests.fixtures.poolnet_models import reference_forward
        net = reference_weights(args["weights"])
    elif args.get("inline"):  # --quick: one model for every row of this process
        net = _NETS.get(args["weights"]) or _NETS.setdefault(args["weights"], _load(args["weights"])[0])
    else:
        net, _ = _load(args["weights"])
    imgs = product_shots(args["batch"], args["size"])
    import gc
    gc.collect()
    if kind == "batching":
        return q.put(_time_batching(net, imgs, args))
    base, peak = _rss_mb("VmRSS"), 0.0
    times, cpus, result = [], [], None
    for i in range(args["repeats"] + args.get("warmup", 1)):
        _reset_peak()
        t, c = time.perf_counter(), time.process_time()
        if kind == "poolnet":
            result = P.predict_saliency(net, imgs, batch_size=args["batch"])
        elif kind == "reference":
            with torch.no_grad():
                result = torch.sigmoid(reference_forward(net, P.preprocess(imgs)))[:, 0]
        elif kind == "classical":
            result = M.classical_alpha(imgs, work_side=0)
        else:  # remove: the whole node path at a max_side
            model = (M.SaliencyModel("poolnet", "bench", net=net) if kind == "remove"
                     else M.SaliencyModel("classical", M.CLASSICAL_NAME))
            result = M.remove_background(model, imgs, max_side=args["max_side"], refine="guided_filter",
                                         batch_size=args["batch"])[1]
        if i >= args.get("warmup", 1):  # the first call builds the CPU kernels for this shape
            times.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
        peak = max(peak, _rss_mb("VmHWM"))
    q.put({"median_s": statistics.median(times), "cpu_s": statistics.median(cpus), "peak_mb": peak - base,
           "alpha": result.numpy() if kind.startswith("remove") or args.get("keep") else None})


def _time_batching(net, imgs, args) -> dict:
    """One batch of len(imgs) vs the same images one at a time, alternately (warm-ups first): medians of
    wall and CPU seconds per image for each, and the peak RSS growth of each."""
    from comfyui_atelier.core import poolnet as P
    n = imgs.shape[0]
    ways = {"single": lambda: [P.predict_saliency(net, imgs[i:i + 1], batch_size=1) for i in range(n)],
            "batch": lambda: P.predict_saliency(net, imgs, batch_size=n)}
    base = _rss_mb("VmRSS")
    out = {k: {"wall": [], "cpu": [], "peak_mb": 0.0} for k in ways}
    for i in range(args["repeats"] + args.get("warmup", 1)):
        for name, run in ways.items():
            _reset_peak()
            t, c = time.perf_counter(), time.process_time()
            run()
            t, c = time.perf_counter() - t, time.process_time() - c
            if i >= args.get("warmup", 1):
                out[name]["wall"].append(t / n)
                out[name]["cpu"].append(c / n)
            out[name]["peak_mb"] = max(out[name]["peak_mb"], _rss_mb("VmHWM") - base)
    return {k: {"wall": statistics.median(v["wall"]), "cpu": statistics.median(v["cpu"]), "peak_mb": v["peak_mb"]}
            for k, v in out.items()}


class _Inline:
    """A queue stand-in for --quick, where jobs run in this process (no fresh interpreter per row)."""

    def put(self, item):
        self.item = item


def measure(kind, **args):
    if args.get("inline"):
        q = _Inline()
        _run_job(kind, args, q)
        return q.item
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_job, args=(kind, args, q))
    p.start()
    out = q.get()
    p.join()
    if "error" in out:
        raise RuntimeError(f"{kind} {args.get('size')}x{args.get('batch')}: {out['error']}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", help="PoolNet final.pth / .safetensors (default: seeded random weights)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--ref-cases", nargs="*", default=["512x1", "512x4", "1024x1"],
                    help="SIDExBATCH cases timed against the reference forward (empty: skip)")
    ap.add_argument("--ref-big", type=int, default=2048, help="side of the peak-memory row vs the reference (0 = skip)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--big", type=int, default=2048, help="side of the max_side test input (0 = skip)")
    ap.add_argument("--big-images", type=int, default=2)
    ap.add_argument("--max-side", type=int, default=512)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs per configuration before timing")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, one repeat, in-process, seconds")
    a = ap.parse_args(argv)
    if a.quick:
        a.sizes, a.batches, a.repeats, a.warmup = [128], [1, 2], 1, 0  # PoolNet needs sides >= 111
        a.big, a.big_images, a.max_side, a.threads = 256, 1, 128, min(a.threads, 2)
        a.ref_cases, a.ref_big = ["128x1", "128x2"], 128
    common = dict(weights=a.weights, threads=a.threads, warmup=a.warmup, inline=a.quick)
    print(f"# matting bench: torch CPU, {a.threads} threads, weights: "
          f"{a.weights or 'seeded random weights (official layout)'}; medians of {a.repeats} runs")
    print("# peak MB = peak RSS growth over the process's state with model and inputs loaded")
    _backend_rows(a, common)
    if a.ref_cases or a.ref_big:
        _reference_rows(a, common)
    if a.big:
        _max_side_rows(a, common)
    return 0


def _backend_rows(a, common) -> None:
    """PoolNet per batch size (a batch vs its images one at a time, alternately in one process) and the
    classical backend, then the batching ratios."""
    print(f"# load average before: {_load_avg()}")
    print(f"{'backend':<10} {'size':>6} {'batch':>5} {'ms/batch':>10} {'ms/image':>10} {'cpu ms/img':>10} "
          f"{'peak MB':>8}  target (batch/image vs single, wall; cpu)")
    ratios = []
    for size in a.sizes:
        for b in [b for b in a.batches if b > 1] or [1]:
            r = measure("batching", size=size, batch=b, repeats=a.repeats, max_side=0, **common)
            one, many = r["single"], r["batch"]
            ratio = many["wall"] / one["wall"]
            ratios.append((size, b, ratio, many["cpu"] / one["cpu"]))
            for n, m in ((1, one), (b, many)):
                verdict = (f"{ratio:.2f}x; cpu {ratios[-1][3]:.2f}x, {cells(ratio, BATCH_TARGET)}" if n > 1
                           else cells(None, None))
                print(f"{'poolnet':<10} {size:>6} {n:>5} {1000 * m['wall'] * n:>10.0f} {1000 * m['wall']:>10.0f} "
                      f"{1000 * m['cpu']:>10.0f} {m['peak_mb']:>8.0f}  {verdict}", flush=True)
        r = measure("classical", size=size, batch=1, repeats=a.repeats, max_side=0, **common)
        print(f"{'classical':<10} {size:>6} {1:>5} {1000 * r['median_s']:>10.0f} {1000 * r['median_s']:>10.0f} "
              f"{'':>10} {r['peak_mb']:>8.0f}  {cells(None, None)}", flush=True)
    print(f"# load average after: {_load_avg()}")
    print("\n# ratios")
    for size, b, ratio, cpu in ratios:
        if b > 1:
            print(f"{size}^2: batch {b} per image / single = {ratio:.2f} wall, {cpu:.2f} cpu  "
                  f"(target {cells(ratio, BATCH_TARGET)})")


def _reference_rows(a, common) -> None:
    """Our forward vs the reference implementation's (time, and peak memory at --ref-big)."""
    import numpy as np
    print("\n# forward vs the reference implementation's (the authors' forward: eval BatchNorm, NCHW, no_grad), "
          f"same weights, preprocess + forward + sigmoid; load average before: {_load_avg()}")
    print(f"{'size':>6} {'batch':>5} {'ref ms/img':>11} {'ours ms/img':>12} {'ratio':>6} {'cpu':>5} {'ref MB':>7} "
          f"{'ours MB':>8} {'max|d|':>8}  target (time: wall ratio; cpu: CPU-time ratio)")
    cases = [tuple(int(v) for v in c.split("x")) for c in a.ref_cases]
    if a.ref_big:
        cases.append((a.ref_big, 0))  # batch 0: the peak-memory row, one image, one untimed-warm-up-free run
    for size, b in cases:
        big = b == 0
        args = dict(common, size=size, batch=max(1, b), repeats=1 if big else a.repeats, max_side=0, keep=True)
        if big:
            args["warmup"] = 0
        ref = measure("reference", **args)
        ours = measure("poolnet", **args)
        n = max(1, b)
        num, den = (ours["peak_mb"], ref["peak_mb"]) if big else (ours["median_s"], ref["median_s"])
        ratio = num / den if den > 0 else float("nan")
        target = PEAK_TARGET if big else (FORWARD_TARGET if size == 1024 else None)
        d = float(np.abs(ours["alpha"] - ref["alpha"]).max())
        cpu = ours["cpu_s"] / ref["cpu_s"] if ref["cpu_s"] > 0 else float("nan")
        print(f"{size:>6} {n:>5} {1000 * ref['median_s'] / n:>11.0f} {1000 * ours['median_s'] / n:>12.0f} "
              f"{ratio:>6.2f} {cpu:>5.2f} {ref['peak_mb']:>7.0f} {ours['peak_mb']:>8.0f} {d:>8.1e}  "
              f"{'peak ' if big else 'time '}{cells(ratio, target)}", flush=True)
    print(f"# load average after: {_load_avg()}")


def _max_side_rows(a, common) -> None:
    """remove_background at full resolution vs max_side on the big input (PoolNet and classical)."""
    from comfyui_atelier.core.matting import alpha_iou
    full = measure("remove", size=a.big, batch=a.big_images, repeats=1, max_side=0, **dict(common, warmup=0))
    small = measure("remove", size=a.big, batch=a.big_images, repeats=1, max_side=a.max_side, **common)
    speed = full["median_s"] / small["median_s"]
    import torch
    ious = [alpha_iou(torch.from_numpy(small["alpha"][i]), torch.from_numpy(full["alpha"][i]))
            for i in range(a.big_images)]
    print(f"\n# {a.big}^2 input, {a.big_images} images, remove_background with guided-filter edges; "
          f"load average: {_load_avg()}")
    print(f"full resolution : {1000 * full['median_s'] / a.big_images:>9.0f} ms/image  peak {full['peak_mb']:.0f} MB")
    print(f"max_side={a.max_side:<6}: {1000 * small['median_s'] / a.big_images:>9.0f} ms/image  "
          f"peak {small['peak_mb']:.0f} MB")
    print(f"speed-up {speed:.1f}x (target {cells(speed, MAX_SIDE_TARGET)}); alpha IoU vs full "
          f"resolution min {min(ious):.3f} mean {statistics.mean(ious):.3f} (target "
          f"{cells(min(ious), IOU_TARGET)})" + ("" if a.weights else "  [random weights]"))
    cf = measure("remove_classical", size=a.big, batch=a.big_images, repeats=1, max_side=0, **common)
    cs = measure("remove_classical", size=a.big, batch=a.big_images, repeats=1, max_side=a.max_side, **common)
    ious = [alpha_iou(torch.from_numpy(cs["alpha"][i]), torch.from_numpy(cf["alpha"][i]))
            for i in range(a.big_images)]
    print(f"classical backend, same path: full {1000 * cf['median_s'] / a.big_images:.0f} ms/image, "
          f"max_side={a.max_side} {1000 * cs['median_s'] / a.big_images:.0f} ms/image, "
          f"speed-up {cf['median_s'] / cs['median_s']:.1f}x, alpha IoU min {min(ious):.3f} (target {cells(None, None)})")


if __name__ == "__main__":
    sys.exit(main())
