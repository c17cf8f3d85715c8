"""Every shipped workflow runs as shipped: open it, press Run, it works.

On the runtime this pytest process uses (the pinned one, or COMFYUI_PATH), one ComfyUI server of this
module's own gets a models folder holding *only* the files models_manifest.json names, as tiny stand-ins in
the real formats under the manifest's exact file names (`filename` in `save_path`), and the example inputs
the pack ships. Each UI workflow in workflows/*.json is converted the way the frontend converts it
(client.convert.ui_to_api with the live /object_info) and queued. The only test-side changes are fewer
sampling steps and smaller image / latent sizes (tiny random models on a CPU), and the test asserts that it
changed nothing else. The prompt must pass the server's validation (/prompt accepts it) and run to its last
Save Image: every Save Image node's files exist.

story_set_kolors runs on the tiny Kolors UNet and ChatGLM3 folder (tests/fixtures/kolors_models.py) under the
manifest's names (models/diffusion_models/kolors_unet_fp16.safetensors, the folder models/clip/kolors_chatglm3) and the tiny
SD1.5 checkpoint's VAE (same KL-f8 architecture as SDXL's) as models/vae/sdxl_vae.safetensors; its wall time and
the server's peak RSS so far are printed and recorded.

Also here: line2product keeps a 3:4 drawing's aspect end to end, and story_set's Set Gate (threshold 6.0,
on_fail "stop workflow") stops a failing set before the grid's Save Image.

Wall times per workflow are printed (run with -s to see them) and recorded as junit properties.
"""
from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_atelier.client import convert, runtime
from comfyui_atelier.core import manifest as mf
from tests.fixtures import aesthetic_models as FX
from tests.fixtures import link_file
from tests.fixtures import poolnet_models as PM

PACK = runtime.PACK_DIR
WORKFLOWS = {p.stem: p for p in sorted((PACK / "workflows").glob("*.json"))}
EXAMPLE_INPUTS = PACK / "example_inputs"
SD15_WORKFLOWS = ("remove_background", "line2product", "style_transfer")
SDXL_WORKFLOWS = ("keyboard_skin", "story_set")
KOLORS_WORKFLOWS = ("story_set_kolors",)

# What the test may change, and how: fewer steps, smaller images / latents. Nothing else.
STEP_INPUTS = {"steps": 1}
SIZE_INPUTS = {"width", "height", "resolution", "max_side"}
SHRINK = 8  # sizes divided by this (multiples of 8 or 16 kept), never below 64
# Kept as shipped although they are sizes: keyboard_skin's Canny resolution sets the size the OCR'd labels are
# re-rendered at (at 1/8 the smallest key labels no longer fit their boxes), and it costs only OpenCV time: the
# ControlNet resizes its hint to the (small) latent anyway.
KEEP_SIZE = {("AtelierCanny", "resolution")}
AESTHETIC_PASS_BIAS, AESTHETIC_FAIL_BIAS = 20.0, -20.0
TIMES: dict[str, float] = {}


# ----------------------------------------------------------------------------------------- helpers

def smaller(name: str, value: int) -> int:
    step = 16 if name == "max_side" else 8
    return max(64, value // SHRINK // step * step)


def shrink(prompt: dict) -> dict:
    """The test-only edits: fewer sampling steps, smaller image and latent sizes."""
    out = copy.deepcopy(prompt)
    for node in out.values():
        for name, value in node["inputs"].items():
            if isinstance(value, bool) or not isinstance(value, int) or (node["class_type"], name) in KEEP_SIZE:
                continue
            if name in STEP_INPUTS:
                node["inputs"][name] = min(value, STEP_INPUTS[name])
            elif name in SIZE_INPUTS and value > 0:
                node["inputs"][name] = min(value, smaller(name, value))
    return out


def changed_inputs(shipped: dict, run: dict) -> dict[tuple[str, str], tuple]:
    assert shipped.keys() == run.keys()
    diff = {}
    for nid, node in shipped.items():
        assert run[nid]["class_type"] == node["class_type"]
        assert run[nid]["inputs"].keys() == node["inputs"].keys()
        for name, value in node["inputs"].items():
            if run[nid]["inputs"][name] != value:
                diff[(nid, name)] = (value, run[nid]["inputs"][name])
    return diff


def under_a_folder_target(rel: Path, targets: set[str]) -> bool:
    """A file inside a manifest entry that is a folder (the Kolors text encoder: models/clip/kolors_chatglm3/...)."""
    return any(str(parent) in targets for parent in rel.parents)


def vae_from_checkpoint(ckpt: Path, out: Path) -> Path:
    """The VAE of a checkpoint (first_stage_model.* keys, prefix dropped) as a VAE file for Load VAE."""
    from safetensors.torch import load_file, save_file
    sd = load_file(str(ckpt))
    vae = {k[len("first_stage_model."):]: v.contiguous() for k, v in sd.items() if k.startswith("first_stage_model.")}
    assert vae, f"{ckpt} has no first_stage_model.* keys"
    save_file(vae, str(out))
    return out


def manifest_targets() -> dict[str, Path]:
    """manifest id -> models/<save_path>/<filename> (relative)."""
    return {e.id: Path(e.save_path) / e.filename for e in mf.load_manifest()}


def workflow_model_ids(name: str) -> set[str]:
    entries, unknown = mf.entries_for_workflow_file(mf.load_manifest(), WORKFLOWS[name])
    assert not unknown, f"{name} lists models the manifest does not know: {unknown}"
    return {e.id for e in entries}


def load_images(name: str) -> list[str]:
    wf = json.loads(WORKFLOWS[name].read_text(encoding="utf-8"))
    return [n["widgets_values"][0] for n in wf["nodes"] if n["type"] == "LoadImage" and n.get("mode", 0) == 0]


def aesthetic_head(path: Path, bias: float) -> Path:
    """A LAION v2 linear head (.pth, published key layout) whose scores sit near `bias`."""
    sd = FX.head_state_dict("linear", 768, seed=5)
    sd["layers.7.bias"] = torch.full((1,), float(bias))
    tmp = path.with_name(path.name + ".part")
    torch.save(sd, tmp)
    os.replace(tmp, path)
    return path


class Shipped:
    """The module's server and what it knows about the shipped workflows."""

    def __init__(self, server: runtime.ComfyServer, stand_ins: dict[str, Path]):
        self.server, self.stand_ins = server, stand_ins
        self.info = server.object_info()

    def prompt(self, name: str) -> tuple[dict, dict]:
        ui = json.loads(WORKFLOWS[name].read_text(encoding="utf-8"))
        shipped = convert.ui_to_api(ui, self.info)
        return shipped, shrink(shipped)

    def run(self, name: str, prompt: dict, timeout: float = 900) -> dict:
        t0 = time.monotonic()
        try:
            entry = self.server.run(prompt, timeout=timeout)
        except (runtime.PromptRejected, runtime.PromptFailed) as exc:
            pytest.fail(f"{name} as shipped: {type(exc).__name__}: {exc}\n--- server log ---\n{self.server.log_tail()}")
        TIMES[name] = time.monotonic() - t0
        return entry

    def saved(self, entry: dict, prompt: dict) -> dict[str, list[Path]]:
        saves = [k for k, v in prompt.items() if v["class_type"] == "SaveImage"]
        return {k: self.server.output_files(entry, k) for k in saves}


# ----------------------------------------------------------------------------------------- server

@pytest.fixture(scope="module")
def stand_ins(tiny_sd15, tmp_path_factory) -> dict[str, Path]:
    """manifest id -> a tiny stand-in file (SD1.5-based ones; SDXL ones are added when a test needs them)."""
    cache = tmp_path_factory.mktemp("as-shipped-models")
    poolnet = PM.build_poolnet_files(str(cache / "poolnet"))["centre"]  # border -> background, inside -> product
    return {
        "sd15-base": tiny_sd15["checkpoints"],
        "sd15-controlnet-canny": tiny_sd15["controlnet"],
        "sd15-controlnet-lineart": tiny_sd15["controlnet"],
        "poolnet-resnet50": Path(poolnet),
    }


@pytest.fixture(scope="module")
def shipped(stand_ins, tmp_path_factory, start_comfy) -> Shipped:
    root = runtime.prepare_workspace(tmp_path_factory.mktemp("as-shipped"))
    targets = manifest_targets()
    for model_id, src in stand_ins.items():
        link_file(src, root / "models" / targets[model_id])
    server = start_comfy(root)
    # Example inputs: nothing is copied here. The pack copies example_inputs/*.png into ComfyUI's input
    # folder when ComfyUI loads it (nodes/_example_inputs.py), as it does for a user.
    for name in sorted({i for wf in WORKFLOWS for i in load_images(wf)}):
        assert (EXAMPLE_INPUTS / name).is_file(), f"no shipped example input example_inputs/{name}"
        arrived = server.input_dir / name
        assert arrived.is_file() and arrived.read_bytes() == (EXAMPLE_INPUTS / name).read_bytes(), \
            f"the pack did not put {name} into the server's input folder\n{server.log_tail()}"
    yield Shipped(server, stand_ins)
    if TIMES:
        print(f"\nwall time per workflow as shipped on tiny models ({runtime.find_comfyui()}):")
        for name, secs in TIMES.items():
            print(f"  {name:28s} {secs:7.1f} s")


@pytest.fixture(scope="module")
def sdxl(shipped, request, tmp_path_factory) -> Shipped:
    """Adds the SDXL-based workflows' stand-ins under their manifest names: the tiny SDXL checkpoint and SDXL
    ControlNet, a full-size random CLIP ViT-L/14 vision model (ComfyUI's loader takes no smaller one) and a
    LAION v2 head whose scores pass the story set's gate."""
    models = request.getfixturevalue("tiny_sdxl_models")
    more = {"sdxl-base": Path(models["checkpoints"]), "sdxl-controlnet-canny": Path(models["controlnet"])}
    _add_stand_ins(shipped, {**_aesthetic_stand_ins(shipped, tmp_path_factory), **more})
    return shipped


def _aesthetic_stand_ins(shipped: Shipped, tmp_path_factory) -> dict[str, Path]:
    """The story sets' scorer models (built once per module): a full-size random CLIP ViT-L/14 vision model
    (ComfyUI's loader takes no smaller one) and a LAION v2 head whose scores pass the 6.0 gate."""
    if "clip-vit-l14" not in shipped.stand_ins:
        cache = tmp_path_factory.mktemp("as-shipped-aesthetic-models")
        _add_stand_ins(shipped, {
            "clip-vit-l14": Path(FX.build_comfy_vitl_clip_vision(str(cache / "clip_vision_vitl.safetensors"))),
            "aesthetic-laion-v2-linear": aesthetic_head(cache / "aesthetic_head.pth", AESTHETIC_PASS_BIAS)})
    return {k: shipped.stand_ins[k] for k in ("clip-vit-l14", "aesthetic-laion-v2-linear")}


def _add_stand_ins(shipped: Shipped, more: dict[str, Path]) -> None:
    targets = manifest_targets()
    for model_id, src in more.items():
        if shipped.stand_ins.get(model_id) == src:
            continue
        link_file(src, shipped.server.models_dir / targets[model_id])
        shipped.stand_ins[model_id] = src
    shipped.info = shipped.server.object_info()  # the new files are listed after a refresh


@pytest.fixture(scope="module")
def kolors(shipped, tiny_sd15, tmp_path_factory) -> Shipped:
    """Adds story_set_kolors' stand-ins under their manifest names: the tiny Kolors UNet (diffusers keys), the
    tiny ChatGLM3 text_encoder folder (config, 2 shards + index, a sentencepiece tokenizer.model trained here),
    the tiny SD1.5 checkpoint's VAE as the SDXL VAE, and the scorer models."""
    pytest.importorskip("diffusers")
    pytest.importorskip("sentencepiece")
    from tests.fixtures import kolors_models as KM
    cache = tmp_path_factory.mktemp("as-shipped-kolors-models")
    more = {"kolors-unet-fp16": KM.build_unet(cache / "unet" / "kolors_unet.safetensors"),
            "kolors-text-encoder": KM.build_text_encoder(cache / "text_encoder"),
            "kolors-vae": vae_from_checkpoint(Path(tiny_sd15["checkpoints"]), cache / "vae.safetensors")}
    _add_stand_ins(shipped, {**_aesthetic_stand_ins(shipped, tmp_path_factory), **more})
    return shipped


# ----------------------------------------------------------------------------------------- tests

def test_every_shipped_workflow_is_covered():
    assert set(WORKFLOWS) == set(SD15_WORKFLOWS) | set(SDXL_WORKFLOWS) | set(KOLORS_WORKFLOWS)


def test_models_folder_holds_only_manifest_files(shipped):
    """The server sees the manifest's files and nothing else (no LoRA, no style adapter, no extra model)."""
    targets = {str(p) for p in manifest_targets().values()}
    present = {str(p.relative_to(shipped.server.models_dir)) for p in shipped.server.models_dir.rglob("*")
               if p.is_file() or p.is_symlink()}
    extra = {p for p in present - targets if not under_a_folder_target(Path(p), targets)}
    assert present and not extra, extra
    for name in SD15_WORKFLOWS + SDXL_WORKFLOWS + KOLORS_WORKFLOWS:
        need = workflow_model_ids(name)
        assert need <= set(manifest_targets()), need


def _check_runs_as_shipped(ctx: Shipped, name: str, record_property) -> tuple[dict, dict]:
    shipped, prompt = ctx.prompt(name)
    for (nid, inp), (old, new) in changed_inputs(shipped, prompt).items():
        assert inp in STEP_INPUTS or inp in SIZE_INPUTS, f"{name}: the test changed {nid}.{inp}"
        assert new < old, f"{name}: {nid}.{inp} {old} -> {new} is not lower"
    problems = convert.validate_api(prompt, ctx.info)
    assert not problems, f"{name}: " + "; ".join(problems)
    entry = ctx.run(name, prompt)
    saved = ctx.saved(entry, prompt)
    assert saved, f"{name} has no Save Image"
    for nid, files in saved.items():
        assert files and all(f.is_file() and f.stat().st_size > 0 for f in files), \
            f"{name}: Save Image {nid} wrote nothing ({files})"
    record_property(f"wall_s[{name}]", round(TIMES[name], 2))
    return prompt, saved


def test_remove_background_as_shipped(shipped, record_property):
    prompt, saved = _check_runs_as_shipped(shipped, "remove_background", record_property)
    src = Image.open(EXAMPLE_INPUTS / load_images("remove_background")[0])
    for files in saved.values():
        assert Image.open(files[0]).size == src.size
    # the centre-prior PoolNet stand-in makes the border background: pure white on the white-background save
    rgb = [k for k, v in prompt.items() if v["class_type"] == "SaveImage" and "rgba" not in
           v["inputs"]["filename_prefix"]][0]
    img = np.asarray(Image.open(saved[rgb][0]).convert("RGB"))
    assert (img[:2] == 255).all() and (img[-2:] == 255).all()


def test_line2product_as_shipped(shipped, record_property):
    prompt, saved = _check_runs_as_shipped(shipped, "line2product", record_property)
    (files,) = saved.values()
    drawing = Image.open(EXAMPLE_INPUTS / load_images("line2product")[0])
    assert Image.open(files[0]).size == drawing.size  # Crop Back restored the drawing's size
    lora = [v for v in prompt.values() if v["class_type"] == "AtelierOptionalLora"]
    assert lora and all(v["inputs"]["lora_name"] == "none" for v in lora)


def test_line2product_keeps_a_3_by_4_drawing_aspect(shipped):
    """A 3:4 portrait drawing: the latent follows the line art (padded to 64) and Crop Back restores 3:4."""
    w, h = 96, 128
    img = np.full((h, w), 255, np.uint8)
    img[16:112, 20:76] = 0
    img[20:108, 24:72] = 255  # an outlined box
    Image.fromarray(img).save(shipped.server.input_dir / "atelier_drawing_3x4.png")
    _, prompt = shipped.prompt("line2product")
    load = next(k for k, v in prompt.items() if v["class_type"] == "LoadImage")
    prompt[load]["inputs"]["image"] = "atelier_drawing_3x4.png"
    entry = shipped.run("line2product (3:4 drawing)", prompt)
    (files,) = shipped.saved(entry, prompt).values()
    out = Image.open(files[0])
    assert out.size == (w, h) and out.size[0] * 4 == out.size[1] * 3


def test_style_transfer_as_shipped(shipped, record_property):
    prompt, _ = _check_runs_as_shipped(shipped, "style_transfer", record_property)
    types = {v["class_type"] for v in prompt.values()}
    assert "AtelierStyleGuidance" in types  # the style comes from the references without trained weights
    assert [v["inputs"]["adapter_name"] for v in prompt.values()
            if v["class_type"] == "AtelierStyleAdapterLoader"] == ["none"]
    assert "no trained style adapter" in shipped.server.log_tail(200000)


def test_keyboard_skin_as_shipped(sdxl, record_property):
    _check_runs_as_shipped(sdxl, "keyboard_skin", record_property)


def test_story_set_as_shipped(sdxl, record_property):
    prompt, saved = _check_runs_as_shipped(sdxl, "story_set", record_property)
    frames = [k for k, v in prompt.items()
              if v["class_type"] == "SaveImage" and "frame" in v["inputs"]["filename_prefix"]]
    assert frames and len(saved[frames[0]]) == 8  # one frame per prompt line


def test_story_set_failing_set_stops_before_the_grid(sdxl):
    """A set under the gate's 6.0 (the same workflow, a head that scores low) saves nothing."""
    head = sdxl.server.models_dir / manifest_targets()["aesthetic-laion-v2-linear"]
    passing = head.resolve()
    failing = aesthetic_head(passing.with_name("failing_head.pth"), AESTHETIC_FAIL_BIAS)
    link_file(failing, head)  # same file name, new content and mtime: the loader reloads it
    try:
        _, prompt = sdxl.prompt("story_set")
        saves = [k for k, v in prompt.items() if v["class_type"] == "SaveImage"]
        before = {p for p in sdxl.server.output_dir.rglob("*.png")}
        with pytest.raises(runtime.PromptFailed) as err:
            sdxl.server.run(prompt, timeout=900)
        assert "set rejected" in str(err.value) and "6" in str(err.value)
        assert {p for p in sdxl.server.output_dir.rglob("*.png")} == before, "a rejected set saved images"
        outputs = err.value.entry.get("outputs") or {}
        assert not any(outputs.get(k, {}).get("images") for k in saves)
    finally:
        link_file(passing, head)


def test_story_set_kolors_as_shipped(kolors, record_property):
    """Kolors loaders (UNet, ChatGLM3 folder, the optional LoRA at 'none') + Load VAE + the story set's scorer, gate,
    grid and saves, as shipped, on the tiny Kolors model."""
    prompt, saved = _check_runs_as_shipped(kolors, "story_set_kolors", record_property)
    types = {v["class_type"] for v in prompt.values()}
    assert {"AtelierKolorsUNetLoader", "AtelierKolorsTextEncoderLoader", "VAELoader"} <= types
    assert "CheckpointLoaderSimple" not in types                   # nothing SDXL-checkpoint-shaped is needed
    assert [v["inputs"]["lora_name"] for v in prompt.values() if v["class_type"] == "AtelierKolorsLoraLoader"] == ["none"]
    frames = [k for k, v in prompt.items()
              if v["class_type"] == "SaveImage" and "frame" in v["inputs"]["filename_prefix"]]
    assert frames and len(saved[frames[0]]) == 8                   # one frame per prompt line
    imgs = [np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) for f in saved[frames[0]]]
    assert all(np.isfinite(i).all() and i.std() > 0.5 for i in imgs)   # real decodes, not constant frames
    # the 8 Chinese prompt lines reach the UNet: same seed, different prompts, different frames
    assert max(np.abs(imgs[0] - i).max() for i in imgs[1:]) > 1.0
    peak = kolors.server.peak_rss()
    if peak:
        record_property("peak_rss_gib[story_set_kolors]", round(peak / 2**30, 2))
    print(f"\nstory_set_kolors as shipped on the tiny Kolors model: {TIMES['story_set_kolors']:.1f} s; "
          f"server peak RSS so far {peak / 2**30 if peak else float('nan'):.2f} GiB")
