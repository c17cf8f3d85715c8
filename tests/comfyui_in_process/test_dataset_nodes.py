"""Dataset nodes called with ComfyUI types inside a real (in-process) ComfyUI: filter a folder of the input
folder (or an IMAGE list), caption with a tiny BLIP from models/captioners, export into the output folder."""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures import blip_models as BM

BLIP_NAME = "tiny-blip-captioner"


@pytest.fixture(scope="module")
def env(comfy, tmp_path_factory):
    import folder_paths
    from comfyui_atelier.nodes import dataset as N
    folder = Path(folder_paths.get_folder_paths("captioners")[0])
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / BLIP_NAME).exists():
        shutil.copytree(BM.build_blip(tmp_path_factory.mktemp("blip") / BLIP_NAME), folder / BLIP_NAME)
    inp = Path(folder_paths.get_input_directory()) / f"dataset-{uuid.uuid4().hex[:6]}"
    (inp / "photos").mkdir(parents=True)
    (inp / "edges").mkdir()
    for sid, (w, h) in {"a": (64, 64), "b": (96, 64), "c": (32, 64), "d": (200, 64)}.items():
        arr = np.full((h, w, 3), 40 * (ord(sid) - 96), np.uint8)
        Image.fromarray(arr).save(inp / "photos" / f"{sid}.png")
    Image.new("RGB", (64, 64)).save(inp / "edges" / "a.png")
    Image.new("RGB", (16, 16)).save(inp / "edges" / "b.png")  # too small: 'all' drops b, 'any' keeps it
    return {"N": N, "fp": folder_paths, "input": inp, "rel": inp.name}


def filter_node(env, folder="", images=None, cond="", any_or_all="any", min_side=64):
    node = env["N"].AtelierDatasetFilter()
    kw = {} if images is None else {"images": images}
    out = node.filter(folder=[folder], min_width=[min_side], max_width=[0], min_height=[min_side], max_height=[0],
                      min_ratio=[0.5], max_ratio=[2.0], any_or_all=[any_or_all], conditioning_folder=[cond], **kw)
    return out["result"]


def test_node_conventions(env):
    N = env["N"]
    assert set(N.NODE_CLASS_MAPPINGS) == {"AtelierDatasetFilter", "AtelierCaptionerLoader", "AtelierCaption",
                                          "AtelierDatasetExport"}
    for cid, cls in N.NODE_CLASS_MAPPINGS.items():
        assert N.NODE_DISPLAY_NAME_MAPPINGS[cid].startswith("Atelier ") and cls.CATEGORY == "atelier/dataset"
        for group in cls.INPUT_TYPES().values():
            for name, (typ, *opts) in group.items():
                assert opts and opts[0].get("tooltip"), f"{cid}.{name} has no tooltip"
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
    assert N.AtelierDatasetExport.OUTPUT_NODE is True
    from comfyui_atelier import nodes as pack
    assert "dataset" not in pack.FAILED_FAMILIES and "AtelierCaption" in pack.NODE_CLASS_MAPPINGS


def test_filter_a_folder_of_the_input_folder_by_id_with_any_and_all(env):
    images, ids, report = filter_node(env, f"{env['rel']}/photos")
    assert ids == ["a", "b"]
    assert [tuple(t.shape) for t in images] == [(1, 64, 64, 3), (1, 64, 96, 3)]
    assert abs(float(images[1][0, 0, 0, 0]) - 80 / 255) < 1e-6  # b's own pixels
    assert "c: image_shape_filter: c.png 32x64 is outside min_width 64" in report
    assert "d: image_aspect_ratio_filter" in report and "max_ratio 2" in report
    _, ids_any, _ = filter_node(env, f"{env['rel']}/photos", cond=f"{env['rel']}/edges", any_or_all="any")
    _, ids_all, rep_all = filter_node(env, f"{env['rel']}/photos", cond=f"{env['rel']}/edges", any_or_all="all")
    assert ids_any == ["a", "b"] and ids_all == ["a"]
    assert "b: image_shape_filter: b.png 16x16 is outside min_width 64 (all: not all images passed)" in rep_all


def test_filter_folder_names_are_confined_to_the_input_folder(env, tmp_path):
    from comfyui_atelier.core.confine import NotInFolderError
    outside = tmp_path / "secret"
    outside.mkdir()
    os.symlink(outside, env["input"] / "link_out")
    for bad in ("../", str(outside), f"{env['rel']}/../../", f"{env['rel']}/link_out", f"{env['rel']}/nope"):
        with pytest.raises(NotInFolderError, match="Atelier Dataset Filter"):
            filter_node(env, bad)


def test_filter_an_image_list_keeps_place_ids(env):
    batches = [torch.rand(2, 64, 64, 3), torch.rand(1, 64, 20, 3), torch.rand(1, 48, 64, 3)]
    images, ids, report = filter_node(env, images=batches, min_side=48)
    assert ids == ["00000", "00001", "00003"]  # 00002 (20 px wide) dropped; 00003 keeps its id
    assert torch.equal(images[2], batches[2])
    assert "00002: image_shape_filter" in report
    with pytest.raises(Exception, match="nothing to filter"):
        filter_node(env)


@pytest.fixture(scope="module")
def captioner(env):
    N = env["N"]
    assert BLIP_NAME in N.list_captioners()
    assert BLIP_NAME in N.AtelierCaptionerLoader.INPUT_TYPES()["required"]["model_name"][0]
    (cap,) = N.AtelierCaptionerLoader().load(BLIP_NAME)
    assert N.AtelierCaptionerLoader().load(BLIP_NAME)[0] is cap  # cached by path and mtime
    return cap


def test_caption_node_templates_ids_and_model_management(env, captioner):
    import comfy.model_management as mm
    N = env["N"]
    colours = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]])
    batches = [colours[:2, None, None, :].expand(2, 40, 50, 3).contiguous(),
               colours[2:, None, None, :].expand(2, 32, 32, 3).contiguous()]
    out = N.AtelierCaption().caption(captioner=[captioner], images=batches, prompt=["a keyboard skin of"],
                                     template=["{id}: {caption}, iflyskin"], trigger=[""], strip_prompt=[False],
                                     max_new_tokens=[5], batch_size=[3], ids=[["p", "q", "r", "s"]])
    caps, text = out["result"]
    want = captioner.caption([np.asarray((c * 255).to(torch.uint8).expand(8, 8, 3)) for c in colours],
                             prompt="a keyboard skin of", max_new_tokens=5)
    assert caps == [f"{i}: {w}, iflyskin" for i, w in zip("pqrs", want)]
    assert text.splitlines() == caps
    assert any(lm.model is getattr(captioner, "_atelier_patcher") for lm in mm.current_loaded_models)
    with pytest.raises(Exception, match="3 ids for 4 images"):
        N.AtelierCaption().caption(captioner=[captioner], images=batches, prompt=[""], template=["{caption}"],
                                   trigger=[""], strip_prompt=[False], max_new_tokens=[2], batch_size=[2],
                                   ids=[["p", "q", "r"]])


def test_missing_captioner_names_the_manifest_entry(env):
    from comfyui_atelier.core.errors import MissingModelError
    with pytest.raises(MissingModelError, match="atelier models download blip-image-captioning-large"):
        env["N"].AtelierCaptionerLoader().load("blip-image-captioning-large")


def test_export_controlnet_layout_into_the_output_folder(env):
    N = env["N"]
    images, ids, _ = filter_node(env, f"{env['rel']}/photos")
    conds = [torch.zeros_like(t) for t in images]
    name = f"datasets/{env['rel']}"
    out = N.AtelierDatasetExport().export(images=images, captions=["first", "second"], layout=["controlnet"],
                                          dataset_name=[name], ids=[ids], conditioning=conds)
    path, report = out["result"]
    assert Path(path) == Path(env["fp"].get_output_directory()) / name
    rows = [json.loads(x) for x in open(os.path.join(path, "train.jsonl"))]
    assert rows == [{"id": "a", "text": "first", "image": "images/a.png", "conditioning_image": "conditioning/a.png"},
                    {"id": "b", "text": "second", "image": "images/b.png", "conditioning_image": "conditioning/b.png"}]
    assert np.asarray(Image.open(os.path.join(path, "images", "b.png"))).shape == (64, 96, 3)
    assert "2 ids (2 written, 0 unchanged)" in report
    again = N.AtelierDatasetExport().export(images=images, captions=["first", ""], layout=["controlnet"],
                                            dataset_name=[name], ids=[ids], conditioning=conds)
    assert "b: no caption" in again["result"][1] and "1 ids (0 written, 1 unchanged)" in again["result"][1]
    for bad in ("../x", "/tmp/x", ""):
        with pytest.raises(Exception, match="not a folder name inside the output folder"):
            N.AtelierDatasetExport().export(images=images, captions=["a", "b"], layout=["lora"],
                                            dataset_name=[bad], ids=[ids])
    with pytest.raises(Exception, match="1 captions for 2 images"):
        N.AtelierDatasetExport().export(images=images, captions=["a"], layout=["lora"], dataset_name=[name + "-l"])
