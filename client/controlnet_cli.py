"""`atelier train-controlnet`: fine-tune a ControlNet on a train.jsonl dataset, export a ComfyUI single file.

The command line of core/controlnet_train.py: arguments, progress, printing. Importing this module (to
build the `atelier` parser) needs no torch; the trainer, torch and diffusers load when the command runs.
An AtelierError reaches `atelier`'s handler (message, exit status 2).
"""
from __future__ import annotations

import argparse

from ..core.controlnet_train import PRECISIONS, SAVE_DTYPES, ControlNetTrainConfig

DESCRIPTION = ("Fine-tune a ControlNet with diffusers on DATA/train.jsonl ({id, text, image, conditioning_image}), "
               "starting from an existing ControlNet (diffusers folder or single file, e.g. control_v11p_sd15_canny) "
               "or from the base model's UNet, and write OUTPUT/<name>.safetensors for ComfyUI's ControlNetLoader "
               "(models/controlnet/). SD1.x/2.x and SDXL diffusers base folders. Needs the optional 'train' extra; "
               "real training wants a GPU.")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train-controlnet", help="fine-tune a ControlNet on a train.jsonl dataset",
                              description=DESCRIPTION)
    p.add_argument("data", help="folder holding train.jsonl (or the .jsonl file)")
    p.add_argument("--model", required=True, help="diffusers base model folder (unet/ vae/ text_encoder/ tokenizer/ "
                                                  "scheduler/; SDXL: + text_encoder_2/ tokenizer_2/)")
    start = p.add_mutually_exclusive_group(required=True)
    start.add_argument("--controlnet", help="ControlNet to start from: a diffusers folder or a .safetensors/.pth file "
                                            "(ldm control_model.* or diffusers layout)")
    start.add_argument("--from-unet", action="store_true", help="start from a copy of the UNet's encoder (zero convs)")
    p.add_argument("--output", "-o", required=True, help="output folder")
    p.add_argument("--name", default="controlnet", help="file name stem of the outputs")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--resolution", type=int, default=512, help="training image size (short side resized, centre crop)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="autocast precision (fp16: CUDA only; bf16 works on the CPU too)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="less memory, ~30%% slower steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between resumable checkpoints (0: only the last)")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoints/step-NNNNNN folder")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--save-dtype", choices=SAVE_DTYPES, default="fp16", help="dtype of the exported file")
    p.add_argument("--save-diffusers", action="store_true", help="also write OUTPUT/<name>_diffusers/")
    p.add_argument("--fixed-batch", action="store_true",
                   help="sanity check: train on the first batch (same noise and timesteps) every step")
    p.set_defaults(func=run)
    return p


def config(args) -> ControlNetTrainConfig:
    return ControlNetTrainConfig(
        data=args.data, output=args.output, model=args.model, controlnet=args.controlnet, from_unet=args.from_unet,
        name=args.name, steps=args.steps, batch_size=args.batch_size, lr=args.lr, resolution=args.resolution,
        precision=args.precision, gradient_checkpointing=args.gradient_checkpointing, seed=args.seed,
        checkpoint_every=args.checkpoint_every, resume=args.resume, device=args.device, save_dtype=args.save_dtype,
        save_diffusers=args.save_diffusers, fixed_batch=args.fixed_batch)


def run(args) -> int:
    from ..core.controlnet_train import train_controlnet  # torch, diffusers: only when training

    res = train_controlnet(config(args))
    print(f"controlnet: {res['controlnet']}")
    if res["diffusers"]:
        print(f"diffusers:  {res['diffusers']}")
    if res["losses"]:
        print(f"final loss: {res['losses'][-1]:.5f} (step {res['step']}, {res['seconds_per_step']:.2f} s/step)")
    else:
        print(f"nothing to train: the checkpoint is at step {res['step']}")
    return 0
