"""`atelier train-style` and `atelier train-lora`: the trainers' command lines.

train-style: a style adapter (and optionally a LoRA) on a folder of style images (core/style_train.py).
train-lora: a DreamBooth-style LoRA for SD1.5/SD2.x, SDXL or Kolors, exported in kohya format
(core/lora_train.py). Arguments, printing, exit status only. Importing this module (to build the
`atelier` parser) needs no torch; the trainer and torch load when the command runs.
"""
from __future__ import annotations

import argparse

from ..core.lora_train import FAMILIES, PRECISIONS, LoraTrainConfig
from ..core.style_train import CROP_MODES, DEFAULT_RESOLUTION, DEFAULT_STRENGTH, TrainConfig

DESCRIPTION = ("Train a style adapter (and by default a rank-4 LoRA) with the noise-prediction loss, on a "
               "diffusers SD1.5/SD2.x model folder and a folder of style images (captions in <image>.txt). "
               "Needs the optional 'train' extra; real training wants a GPU.")


LORA_DESCRIPTION = (
    "Train a DreamBooth-style LoRA on a diffusers model folder (SD1.5/SD2.x, SDXL or Kolors, found from the "
    "folder) and a dataset folder (images/<id>.<ext> with captions in <id>.txt or images/metadata.jsonl); writes "
    "<name>.safetensors in kohya format (ComfyUI's LoraLoader; Atelier Kolors LoRA Loader for Kolors, UNet-only) "
    "and checkpoints for --resume. Needs the optional 'train' extra; real training wants a GPU.")


def add_parser(subparsers) -> argparse.ArgumentParser:
    add_lora_parser(subparsers)
    p = subparsers.add_parser("train-style", help="train a style adapter (+ optional LoRA) on a folder of style images",
                              description=DESCRIPTION)
    p.add_argument("images", help="folder of style images; captions in <image>.txt (optional)")
    p.add_argument("--model", required=True, help="diffusers model folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/)")
    p.add_argument("--output", "-o", required=True, help="output folder")
    p.add_argument("--name", default="style", help="file name stem of the outputs")
    p.add_argument("--style-token", default="", help="style token appended to captions, e.g. style07")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4, help="LoRA learning rate (UNet; the text encoder's too by default)")
    p.add_argument("--text-encoder-lr", type=float, default=None, help="text encoder LoRA learning rate (default: --lr)")
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
                       text_encoder_lr=args.text_encoder_lr,
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


def add_lora_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train-lora", help="train a LoRA (SD1.5/2.x, SDXL, Kolors) on a captioned image folder",
                              description=LORA_DESCRIPTION)
    p.add_argument("data", help="dataset folder: images/<id>.<ext> + <id>.txt captions (or images/metadata.jsonl)")
    p.add_argument("--model", required=True, help="diffusers model folder (unet/ vae/ text_encoder/ tokenizer/ "
                                                  "scheduler/; SDXL + text_encoder_2/ tokenizer_2/)")
    p.add_argument("--output", "-o", required=True, help="output folder")
    p.add_argument("--family", choices=FAMILIES, default="auto", help="model family (default: from the folder)")
    p.add_argument("--name", default="lora", help="file name stem of the LoRA")
    p.add_argument("--trigger", default="", help="trigger word appended to every caption that lacks it")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--unet-lr", type=float, default=1e-4, help="UNet LoRA learning rate")
    p.add_argument("--train-text-encoder", action="store_true",
                   help="also train a LoRA on the CLIP text encoder(s) (SD, SDXL; not Kolors)")
    p.add_argument("--text-encoder-lr", type=float, default=5e-5, help="text encoder LoRA learning rate")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank")
    p.add_argument("--alpha", type=float, default=4.0, help="LoRA alpha (scale = alpha / rank)")
    p.add_argument("--resolution", type=int, default=0, help="training size (default: 512 SD, 1024 SDXL/Kolors)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16/fp16: frozen weights in that dtype + autocast on CUDA (LoRA weights stay fp32)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="less GPU memory, ~30%% slower steps")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--resume", default=None, help="'latest' or a checkpoints/step-NNNNNN folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run_lora)
    return p


def lora_config(args) -> LoraTrainConfig:
    return LoraTrainConfig(data=args.data, output=args.output, model=args.model, family=args.family, name=args.name,
                           trigger=args.trigger, steps=args.steps, batch_size=args.batch_size, unet_lr=args.unet_lr,
                           text_encoder_lr=args.text_encoder_lr, train_text_encoder=args.train_text_encoder,
                           rank=args.rank, alpha=args.alpha, resolution=args.resolution, precision=args.precision,
                           gradient_checkpointing=args.gradient_checkpointing,
                           checkpoint_every=args.checkpoint_every, resume=args.resume, seed=args.seed,
                           device=args.device)


def run_lora(args) -> int:
    from ..core.lora_train import train_lora  # torch, diffusers, peft: only when training

    res = train_lora(lora_config(args))
    print(f"lora:   {res['lora']} ({res['family']}, {len(res['ids'])} images, {res['precision']})")
    if res["losses"]:
        print(f"final loss: {res['losses'][-1]:.5f} (step {res['step']}, {res['seconds_per_step']:.2f} s/step)")
    return 0
