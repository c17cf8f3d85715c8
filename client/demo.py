"""`atelier demo`: the main job end to end — line2product on the shipped example line drawing.

1. Find a ComfyUI (`--comfyui`, else $COMFYUI_PATH, else the pinned offline runtime).
2. Check the models the workflow needs (its loader nodes' `properties.models`, matched to
   models_manifest.json) in the models folder; download missing ones, verified.
3. Run `workflows/api/line2product.json` as shipped (no graph edits: its optional LoRA is 'none')
   on a private ComfyUI server over a workspace copy, with the caption and the example drawing,
   and copy the result (the drawing's size and aspect) to `--out`.

When a model cannot be had (offline, no space, manual-only), it says which and runs the same
workflow on generated tiny models instead, under a banner: a plumbing check, not real images.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from ..core import manifest as mf
from . import models_cli, runtime
from .download import DownloadError, download_entry

PACK = runtime.PACK_DIR
WORKFLOW_UI = PACK / "workflows" / "line2product.json"
WORKFLOW_API = PACK / "workflows" / "api" / "line2product.json"
EXAMPLE_IMAGE = PACK / "example_inputs" / "line_drawing_mug.png"
EXAMPLE_CAPTION = "a white ceramic coffee mug with a round handle"

# Loader input that names each model folder's file in the API prompt.
LOADER_INPUTS = {
    "CheckpointLoaderSimple": ("ckpt_name", "checkpoints"),
    "ControlNetLoader": ("control_net_name", "controlnet"),
    "AtelierSaliencyLoader": ("model_name", "saliency"),
}
# The LoRA is not here: the workflow's Atelier LoRA (optional) ships set to "none", so it runs as shipped
# without one (pick your own LoRA there, or in the API prompt's lora_name).
# A missing PoolNet has a fallback (the classical matting backend, set by input value), so it never
# forces the tiny-model plumbing check.
OPTIONAL_FOLDERS = {"saliency"}
# AtelierSaliencyLoader's model_name for the classical matting backend (no weights): core.matting's
# CLASSICAL_NAME, a saved widget value that never changes; repeated here because core.matting
# imports torch and the client must not (a test checks they agree).
CLASSICAL_MATTING = "classical"
# Inputs set to TINY_SIZE for the plumbing check (the latent follows the line art's size; Crop Back
# restores the drawing's size, so the result has the drawing's size and aspect in both modes).
TINY_SIZE = 256
TINY_SIZE_INPUTS = {"AtelierLineart": ("resolution",)}
BANNER = """
############################################################################
#  PLUMBING CHECK, NOT REAL IMAGES                                         #
#  The real models are missing, so line2product runs on generated tiny     #
#  random models. The graph, the nodes and ComfyUI are real; the picture   #
#  is noise. Put the models listed above in place for a real product shot. #
############################################################################
"""


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run line2product on the example line drawing through a real ComfyUI",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--comfyui", help="ComfyUI checkout to use (default: $COMFYUI_PATH, else the pinned runtime)")
    p.add_argument("--models-dir", help="ComfyUI models folder holding/receiving the real models "
                   "(default: as `atelier models`: <COMFYUI_PATH>/models, the ComfyUI the pack is installed in, "
                   "else the pack's models/)")
    p.add_argument("--image", default=str(EXAMPLE_IMAGE), help="line drawing to render (default: the shipped mug)")
    p.add_argument("--caption", default=EXAMPLE_CAPTION, help="product caption")
    p.add_argument("--offline", action="store_true", help="do not try to download; use what is there or tiny models")
    p.add_argument("--steps", type=int, default=20, help="sampling steps for the real models (tiny models use 2)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out", default="output/demo", help="folder for the result (default: output/demo)")
    p.set_defaults(func=run)


def _models_dir(args) -> Path:
    if args.models_dir:
        return Path(args.models_dir).expanduser().resolve()
    return models_cli.default_models_dir(args.comfyui)[0].resolve()


def ensure_models(models_dir: Path, offline: bool) -> list[str]:
    """Check (and unless offline, download) the workflow's required models; return the ids still missing."""
    manifest = mf.load_manifest()
    entries, unknown = mf.entries_for_workflow_file(manifest, WORKFLOW_UI)
    missing = []
    for item in unknown:
        print(f"  ! workflow model {item.get('name')} is not in the manifest", file=sys.stderr)
    for entry in entries:
        if entry.save_path in OPTIONAL_FOLDERS and not mf.check_entry(entry, models_dir).ok:
            print(f"  absent  {entry.id:28s} (optional: a fallback is used; see `atelier models check`)")
            continue
        if mf.check_entry(entry, models_dir).ok:
            print(f"  ok      {entry.id:28s} {entry.target(models_dir)}")
            continue
        if offline:
            print(f"  missing {entry.id:28s} (offline: not downloading)")
            missing.append(entry.id)
            continue
        print(f"  fetch   {entry.id:28s} -> {models_dir / entry.save_path}")
        try:
            download_entry(entry, models_dir,
                           progress_factory=lambda spec: models_cli.ProgressBar(f"  {Path(spec.relpath).name}"))
        except DownloadError as exc:
            print(f"  missing {entry.id:28s} {exc}", file=sys.stderr)
            missing.append(entry.id)
    return missing


def prepare_prompt(prompt: dict, *, image_name: str, caption: str, seed: int, steps: int,
                   model_files: dict[str, str] | None, models_dir: Path | None) -> dict:
    """Patch the API twin's input values: image, caption, seed/steps, and model files (tiny ones; the
    classical matting backend for a missing PoolNet). The graph itself is run as shipped."""
    for node in prompt.values():
        ct, inputs = node["class_type"], node["inputs"]
        if ct == "LoadImage":
            inputs["image"] = image_name
        elif ct == "AtelierSystemPrompt":
            inputs["prompt"] = caption
        elif ct == "KSampler":
            inputs.update(seed=seed, steps=steps)
        if model_files is not None and ct in TINY_SIZE_INPUTS:
            # Tiny random models make noise at any size: keep the plumbing check quick.
            inputs.update({k: TINY_SIZE for k in TINY_SIZE_INPUTS[ct]})
        if ct not in LOADER_INPUTS:
            continue
        key, folder = LOADER_INPUTS[ct]
        if model_files is not None and folder in model_files:
            inputs[key] = model_files[folder]
        elif model_files is None and (models_dir / folder / inputs[key]).is_file():
            continue  # the user's own file is in place
        elif ct == "AtelierSaliencyLoader":
            print(f"  note: no PoolNet weights ({inputs[key]}); the matting step uses the classical backend")
            inputs[key] = CLASSICAL_MATTING
    return prompt


def run(args) -> int:
    comfy_src = runtime.find_comfyui(args.comfyui)
    models_dir = _models_dir(args)
    image = Path(args.image).expanduser().resolve()
    if not image.is_file():
        print(f"atelier demo: --image {image} does not exist", file=sys.stderr)
        return 2
    print(f"ComfyUI: {comfy_src}\nmodels:  {models_dir}\nchecking the models line2product needs:")
    missing = ensure_models(models_dir, args.offline)
    tiny = bool(missing)

    workspace = PACK / ".cache" / "demo"
    root = runtime.prepare_workspace(workspace, comfy_src, extra_model_dirs=None if tiny else [models_dir])
    model_files = None
    if tiny:
        print(BANNER)
        print("missing: " + ", ".join(missing) + f"\n(download later with: atelier models download {' '.join(missing)})")
        from . import demo_models  # torch needed only here

        built = demo_models.build_all(PACK / ".cache" / "tiny-models")
        for folder, path in built.items():
            (root / "models" / folder).mkdir(parents=True, exist_ok=True)
            (root / "models" / folder / path.name).symlink_to(path)
        model_files = {folder: path.name for folder, path in built.items()}
    shutil.copy(image, root / "input" / image.name)
    prompt = prepare_prompt(json.loads(WORKFLOW_API.read_text()), image_name=image.name, caption=args.caption,
                            seed=args.seed, steps=2 if tiny else args.steps, model_files=model_files,
                            models_dir=models_dir)

    server = runtime.ComfyServer(root)
    print(f"starting ComfyUI on {server.url} (log: {server.log_path})")
    server.start()
    try:
        t0 = time.monotonic()
        entry = server.run(prompt, timeout=3600)
        files = server.output_files(entry)
    except (runtime.PromptRejected, runtime.PromptFailed) as exc:
        print(f"atelier demo: the workflow failed: {exc}\n--- server log ---\n{server.log_tail()}", file=sys.stderr)
        return 1
    finally:
        server.stop()
    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    for f in files:
        dest = out / (f"{image.stem}{'_PLUMBING_CHECK' if tiny else ''}{f.suffix}")
        shutil.copy(f, dest)
        print(f"wrote {dest} ({time.monotonic() - t0:.1f}s)")
    if tiny:
        print("plumbing check passed: every node ran in a real ComfyUI; the image is not a real render.")
    return 0 if files else 1
