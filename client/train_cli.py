"""`atelier train-style`: train a style adapter (and optionally a LoRA) on a folder of style images.

The command line of core/style_train.py: arguments, printing, exit status. Importing this module
(to build the `atelier` parser) needs no torch; the trainer and torch load when the command runs.
"""
from __future__ import annotations

import argparse

from ..core.style_train import CROP_MODES, DEFAULT_RESOLUTION, DEFAULT_STRENGTH, TrainConfig

DESCRIPTION = ("Train a style adapter (and by default a rank-4 LoRA) with the noise-prediction loss, on a "
               "diffusers SD1.5/SD2.x model folder and a folder of style images (captions in <image>.txt). "
               "Needs the optional 'train' extra; real training wants a GPU.")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train-style", help="train a style adapter (+ optional LoRA) on a folder of style images",
                              description=DESCRIPTION)
    p.add_argument("images", help="folder of style images; captions in <image>.txt (optional)")
    p.add_argument("--model", required=True, help="diffusers model folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/)")
    p.add_argument("--output", "-o", required=True, help="output folder")
    p.add_argument("--name", default="style", help="file name stem of the outputs")
    p.add_argument("--style-token", default="", help="style token appended to captions, e.g. style07")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4, help="LoRA learning rate")
    p.add_argument("--adapter-lr", type=float, default=1e-4)
    p.add_argument("--resolution", type=int, default=512, help="training image size")
    p.add_argument("--style-resolution", type=int, default=DEFAULT_RESOLUTION)
    p.add_argument("--crop", choices=CROP_MODES, default="center")
    p.add_argument("--strength", type=float, default=DEFAULT_STRENGTH)
    p.add_argument("--no-lora", action="store_true", help="train the adapter only")
    p.add_argument("--no-lora-text-encoder", action="store_true")
    p.add_argument("--lora-rank", type=int, default=4)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--resume", default=None, help="'latest' or a checkpoints/step-NNNNNN folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.set_defaults(func=run)
    return p


def config(args) -> TrainConfig:
    """The parsed arguments as the trainer's config (LoRA alpha = rank)."""
    return TrainConfig(images=args.images, output=args.output, model=args.model, name=args.name,
                       style_token=args.style_token, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                       adapter_lr=args.adapter_lr, resolution=args.resolution, style_resolution=args.style_resolution,
                       crop=args.crop, strength=args.strength, lora=not args.no_lora,
                       lora_rank=args.lora_rank, lora_alpha=float(args.lora_rank),
                       lora_text_encoder=not args.no_lora_text_encoder, checkpoint_every=args.checkpoint_every,
                       resume=args.resume, seed=args.seed, device=args.device, precision=args.precision)


def run(args) -> int:
    """Train and print where the outputs went; an AtelierError reaches `atelier`'s handler (exit 2)."""
    from ..core.style_train import train_style  # torch, diffusers, peft: only when training

    res = train_style(config(args))
    print(f"adapter: {res['adapter']}")
    if res["lora"]:
        print(f"lora:    {res['lora']}")
    print(f"style:   {res['style']}")
    if res["losses"]:
        print(f"final loss: {res['losses'][-1]:.5f} (step {res['step']})")
    return 0
