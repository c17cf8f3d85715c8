"""Style family timings: ours vs a peer on the same inputs in the same run.

    python bench/style.py [--resolution 256] [--images 4] [--repeats 5] [--threads N] [--quick]

Rows:
- style encode: `core.style.encode_style` (resize/crop, encoder + quant_conv, split to mean/logvar,
  set statistics) vs the peer diffusers `AutoencoderKL.encode(x).latent_dist.sample()` on the same
  already-cropped pixels (what a plain VAE Encode costs). Real SD-VAE shapes, random weights.
  Skipped when diffusers is not installed.
- latent match: `match_latent_stats` (our AdaIN, with constant-channel guard and strength blend)
  vs the peer `F.instance_norm(x) * std + mean` on [4, 4, 128, 128] latents.
- style tokens: adapter forward + blend into a [1, 77, W] conditioning for W = 768 / 1024 / 2048,
  vs the peer: adding a precomputed token tensor (the cost of the blend alone).
Prints median seconds, ratio ours/peer (< 1 means ours is faster, > 1 slower), each row's target with
met/missed ("—" where none is set) and peak RSS. --quick: a smoke run (64 px, one image, one repeat) that
checks the bench still runs and prints its table (timings mean nothing).
CPU only.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from _verdict import cells

from comfyui_atelier.core import style as S


# ours/peer bounds per row (by the row name's start); None: no agreed target yet, the row prints "—"
TARGETS: dict[str, tuple[str, float] | None] = {"style encode": None, "latent match": None, "style tokens": None}


def _target(name: str):
    return next((t for k, t in TARGETS.items() if name.startswith(k)), None)


def _median(fn, repeats):
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 px, one image, one repeat")
    a = ap.parse_args(argv)
    if a.quick:
        a.resolution, a.images, a.repeats = 64, 1, 1
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rows = []

    # --- style encode vs plain VAE encode
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        AutoencoderKL = None
    if AutoencoderKL is not None:
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4).eval()
        imgs = torch.rand(a.images, a.resolution + 40, a.resolution, 3)
        px = torch.cat([S.prepare_image(im, a.resolution) for im in imgs])

        def ours():
            S.encode_style(imgs, vae, resolution=a.resolution, batch_size=a.images)

        @torch.no_grad()
        def peer():
            vae.encode(px).latent_dist.sample()

        rows.append((f"style encode {a.images}x{a.resolution}px", _median(ours, a.repeats), _median(peer, a.repeats)))

    # --- latent match vs instance_norm AdaIN
    x = torch.randn(4, 4, 128, 128)
    tm, ts = torch.randn(4), torch.rand(4) + 0.5

    def ours_m():
        S.match_latent_stats(x, tm, ts, 1.0)

    def peer_m():
        F.instance_norm(x) * ts.view(1, -1, 1, 1) + tm.view(1, -1, 1, 1)

    rows.append(("latent match 4x4x128x128", _median(ours_m, a.repeats * 4), _median(peer_m, a.repeats * 4)))

    # --- adapter tokens + blend per width
    style = S.StyleStats(mu=torch.randn(4, 64, 64), sigma=torch.rand(4, 64, 64), channel_mean=torch.zeros(4),
                         channel_std=torch.ones(4), count=1)
    for w in (768, 1024, 2048):
        ad = S.StyleAdapter(context_dim=w)
        for p in ad.parameters():
            torch.nn.init.normal_(p, std=0.02)
        cond = [[torch.randn(1, 77, w), {"pooled_output": torch.randn(1, w)}]]
        pre = S.style_tokens(ad, style)

        def ours_b():
            S.blend_conditioning(cond, S.style_tokens(ad, style), 0.01)

        def peer_b():
            [[c[0] + 0.01 * pre, dict(c[1])] for c in cond]

        rows.append((f"style tokens + blend W={w} ({ad.config.head})", _median(ours_b, a.repeats * 4),
                     _median(peer_b, a.repeats * 4)))

    print(f"{'case':44s} {'ours s':>10s} {'peer s':>10s} {'ours/peer':>10s}  target")
    for name, o, p in rows:
        print(f"{name:44s} {o:10.5f} {p:10.5f} {o / p:10.2f}  {cells(o / p, _target(name))}")
    print(f"peak RSS {_rss_mb():.0f} MB, torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
