"""UI -> API conversion against a saved /object_info of the pinned ComfyUI (core nodes)."""
import copy
import json
from pathlib import Path

import pytest

from comfyui_atelier.client import convert
from comfyui_atelier.core.errors import AtelierError

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def info():
    return json.loads((DATA / "object_info_pinned.json").read_text())


@pytest.fixture()
def default_graph():
    # the pinned frontend's own default graph (web/scripts/defaultGraph.js), dumped to JSON
    return json.loads((DATA / "client_default_graph.json").read_text())


DEFAULT_API = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 156680208700286, "steps": 20, "cfg": 8, "sampler_name": "euler",
                                               "scheduler": "normal", "denoise": 1, "model": ["4", 0],
                                               "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.ckpt"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {
        "text": "beautiful scenery nature glass bottle landscape, , purple galaxy bottle,", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}


def _node(wf, nid):
    return next(n for n in wf["nodes"] if n["id"] == nid)


def _add_link(wf, origin, oslot, target, tslot, type_):
    lid = max(l[0] for l in wf["links"]) + 1
    wf["links"].append([lid, origin, oslot, target, tslot, type_])
    return lid


def test_default_graph_matches_frontend(default_graph, info):
    # legacy boolean seed control after the seed; SaveImage without widgets_values gets its default
    assert convert.ui_to_api(default_graph, info) == DEFAULT_API


def test_seed_control_values_are_skipped(default_graph, info):
    for control in ("fixed", "increment", "decrement", "randomize"):
        wf = copy.deepcopy(default_graph)
        _node(wf, 3)["widgets_values"] = [42, control, 7, 6.5, "dpmpp_2m", "karras", 0.8]
        out = convert.ui_to_api(wf, info)["3"]["inputs"]
        assert (out["seed"], out["steps"], out["cfg"], out["sampler_name"], out["scheduler"], out["denoise"]) == \
            (42, 7, 6.5, "dpmpp_2m", "karras", 0.8)


def test_seed_without_control_value(default_graph, info):
    # a workflow written by a tool that does not save the hidden control value still maps in order
    wf = copy.deepcopy(default_graph)
    _node(wf, 3)["widgets_values"] = [42, 7, 6.5, "dpmpp_2m", "karras", 0.8]
    out = convert.ui_to_api(wf, info)["3"]["inputs"]
    assert (out["seed"], out["steps"], out["denoise"]) == (42, 7, 0.8)


def test_noise_seed_in_advanced_sampler(info):
    wf = {"nodes": [{"id": 1, "type": "KSamplerAdvanced", "mode": 0, "inputs": [],
                     "widgets_values": ["enable", 5, "randomize", 30, 7, "euler", "normal", 0, 10000, "disable"]},
                    {"id": 2, "type": "SaveImage", "mode": 0, "inputs": [], "widgets_values": ["x"]}], "links": []}
    out = convert.ui_to_api(wf, info)["1"]["inputs"]
    assert out == {"add_noise": "enable", "noise_seed": 5, "steps": 30, "cfg": 7, "sampler_name": "euler",
                   "scheduler": "normal", "start_at_step": 0, "end_at_step": 10000, "return_with_leftover_noise": "disable"}


def test_upload_value_after_image_is_skipped(info):
    wf = json.loads((DATA / "client_invert.json").read_text())
    assert convert.ui_to_api(wf, info) == json.loads((DATA / "client_invert_api.json").read_text())


def test_reroute_primitive_note_muted_bypassed(default_graph, info):
    wf = copy.deepcopy(default_graph)
    # Reroute between the checkpoint MODEL and the sampler
    wf["nodes"].append({"id": 20, "type": "Reroute", "mode": 0,
                        "inputs": [{"name": "", "type": "*", "link": None}],
                        "outputs": [{"name": "", "type": "MODEL", "links": []}], "properties": {}})
    lk = _add_link(wf, 4, 0, 20, 0, "MODEL")
    _node(wf, 20)["inputs"][0]["link"] = lk
    wf["links"] = [l for l in wf["links"] if l[0] != 1]
    lk2 = _add_link(wf, 20, 0, 3, 0, "MODEL")
    _node(wf, 3)["inputs"][0]["link"] = lk2
    # 'steps' converted to an input fed by a PrimitiveNode: the value lives in the widget
    lk3 = _add_link(wf, 21, 0, 3, 4, "INT")
    _node(wf, 3)["inputs"].append({"name": "steps", "type": "INT", "link": lk3, "widget": {"name": "steps"}})
    _node(wf, 3)["widgets_values"] = [7, "fixed", 33, 8, "euler", "normal", 1]
    wf["nodes"].append({"id": 21, "type": "PrimitiveNode", "mode": 0, "inputs": [],
                        "outputs": [{"name": "INT", "type": "INT", "links": [lk3], "widget": {"name": "steps"}}],
                        "widgets_values": [33, "fixed"], "properties": {}})
    # 'cfg' converted to an input with nothing connected: old frontends leave it out
    _node(wf, 3)["inputs"].append({"name": "cfg", "type": "FLOAT", "link": None, "widget": {"name": "cfg"}})
    # a bypassed ImageInvert between VAEDecode and SaveImage passes the IMAGE through
    wf["nodes"].append({"id": 22, "type": "ImageInvert", "mode": 4,
                        "inputs": [{"name": "image", "type": "IMAGE", "link": None}],
                        "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": []}]})
    wf["links"] = [l for l in wf["links"] if l[0] != 9]
    a = _add_link(wf, 8, 0, 22, 0, "IMAGE")
    _node(wf, 22)["inputs"][0]["link"] = a
    b = _add_link(wf, 22, 0, 9, 0, "IMAGE")
    _node(wf, 9)["inputs"][0]["link"] = b
    # a muted (mode 2) preview fed by VAEDecode, and a muted node feeding an optional input
    wf["nodes"].append({"id": 23, "type": "PreviewImage", "mode": 2,
                        "inputs": [{"name": "images", "type": "IMAGE", "link": _add_link(wf, 8, 0, 23, 0, "IMAGE")}]})
    wf["nodes"].append({"id": 24, "type": "Note", "mode": 0, "widgets_values": ["remember to ..."], "properties": {}})
    out = convert.ui_to_api(wf, info)
    exp = copy.deepcopy(DEFAULT_API)
    exp["3"]["inputs"].update(seed=7, steps=33)
    del exp["3"]["inputs"]["cfg"]
    assert out == exp


def test_muted_parent_link_is_removed(default_graph, info):
    wf = copy.deepcopy(default_graph)
    _node(wf, 8)["mode"] = 2  # VAEDecode muted: SaveImage loses its images input
    out = convert.ui_to_api(wf, info)
    assert "8" not in out and "images" not in out["9"]["inputs"]
    assert any("required input 'images'" in p for p in convert.validate_api(out, info))


def test_bypass_without_matching_type_drops_link(default_graph, info):
    wf = copy.deepcopy(default_graph)
    _node(wf, 8)["mode"] = 4  # VAEDecode bypassed: its inputs are LATENT/VAE, SaveImage wants IMAGE
    out = convert.ui_to_api(wf, info)
    assert "images" not in out["9"]["inputs"]


def test_unknown_node_is_a_clear_error(default_graph, info):
    wf = copy.deepcopy(default_graph)
    wf["nodes"].append({"id": 30, "type": "SomePackNode", "mode": 0, "inputs": [], "widgets_values": []})
    with pytest.raises(AtelierError) as e:
        convert.ui_to_api(wf, info)
    assert "#30 'SomePackNode'" in str(e.value) and "install" in str(e.value).lower()
    _node(wf, 30)["mode"] = 2  # a muted unknown node is harmless
    assert "30" not in convert.ui_to_api(wf, info)


def test_dynamic_prompts_and_save_prefix_replacement(default_graph, info):
    import datetime as dt
    wf = copy.deepcopy(default_graph)
    _node(wf, 6)["widgets_values"] = ["a {red|red} bottle /* note */ // trailing"]
    _node(wf, 9)["widgets_values"] = ["%date:yyyy-MM-dd%/%KSampler.seed%"]
    _node(wf, 3)["properties"] = {"Node name for S&R": "KSampler"}
    out = convert.ui_to_api(wf, info, now=dt.datetime(2024, 3, 5))
    assert out["6"]["inputs"]["text"] == "a red bottle  "
    assert out["9"]["inputs"]["filename_prefix"] == "2024-03-05/156680208700286"


def test_api_format_passes_through(info):
    api = json.loads((DATA / "client_invert_api.json").read_text())
    assert convert.to_api(api, info) == api
    assert convert.is_api_format(api) and not convert.is_ui_format(api)


def test_validate_reports_missing_model_choice(info):
    api = copy.deepcopy(DEFAULT_API)
    api["4"]["inputs"]["ckpt_name"] = "nope.safetensors"
    probs = convert.validate_api(api, info)
    assert any("'ckpt_name' = 'nope.safetensors'" in p for p in probs)
    api["99"] = {"class_type": "Missing", "inputs": {}}
    assert any("unknown node type 'Missing'" in p for p in convert.validate_api(api, info))


def test_bad_files(tmp_path, info):
    with pytest.raises(AtelierError, match="does not exist"):
        convert.to_api(str(tmp_path / "nope.json"), info)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(AtelierError, match="not valid JSON"):
        convert.to_api(str(bad), info)


# --------------------------------------------------------------------------- subgraphs
# client_subgraph.json was built in the real frontend (comfyui-frontend-package 1.27.10) and saved with
# app.graph.serialize(); client_subgraph_api.json is that frontend's own graphToPrompt() output (see
# tests/comfyui_server/test_client_subgraph_browser.py, which also compares live on ComfyUI 0.3.64).

@pytest.fixture()
def subgraph_wf():
    return json.loads((DATA / "client_subgraph.json").read_text())


@pytest.fixture(scope="module")
def subgraph_info():
    return json.loads((DATA / "client_subgraph_object_info.json").read_text())


def _defn(wf, name):
    return next(d for d in wf["definitions"]["subgraphs"] if d["name"] == name)


def test_subgraphs_convert_like_the_frontends_graph_to_prompt(subgraph_wf, subgraph_info):
    frontend = json.loads((DATA / "client_subgraph_api.json").read_text())
    ours = convert.ui_to_api(subgraph_wf, subgraph_info)
    assert ours == {k: {"inputs": v["inputs"], "class_type": v["class_type"]} for k, v in frontend.items()}
    # nested instance ids; a link through two subgraph inputs; each instance's own promoted widget values
    assert ours["10:9:7"]["inputs"]["image"] == ["10:5", 0]
    assert ours["10:9:7"]["inputs"]["height"] == ["2", 2] and ours["11:9:7"]["inputs"]["height"] == 36
    assert ours["10:5"]["inputs"]["blur_radius"] == 2 and ours["11:5"]["inputs"]["blur_radius"] == 7
    assert not convert.validate_api(ours, subgraph_info)


def test_subgraph_promoted_widget_falls_back_to_the_inner_value(subgraph_wf, subgraph_info):
    inst = _node(subgraph_wf, 11)
    del inst["widgets_values"]  # an instance saved without its own values: the inner widget's value is used
    _defn(subgraph_wf, "Soften")["nodes"][2]["widgets_values"] = [5, 0.75]
    out = convert.ui_to_api(subgraph_wf, subgraph_info)
    assert out["11:5"]["inputs"]["blur_radius"] == 5 and out["10:5"]["inputs"]["blur_radius"] == 2


def test_subgraph_bypass_and_mute_inside(subgraph_wf, subgraph_info):
    fit = _defn(subgraph_wf, "Fit")
    fit["nodes"][0]["mode"] = 0  # the inner ImageInvert no longer bypassed: it is sent, under both instances
    out = convert.ui_to_api(subgraph_wf, subgraph_info)
    assert out["10:9:6"]["inputs"]["image"] == ["10:5", 0] and out["10:9:7"]["inputs"]["image"] == ["10:9:6", 0]
    fit["nodes"][1]["mode"] = 2  # the inner ImageScale muted: gone, and so is the link to it
    out = convert.ui_to_api(subgraph_wf, subgraph_info)
    assert "10:9:7" not in out and "images" not in out["8"]["inputs"]
    assert any("required input 'images' is missing" in p for p in convert.validate_api(out, subgraph_info))


def test_subgraph_unknown_inner_node_is_named_by_its_path(subgraph_wf, subgraph_info):
    _defn(subgraph_wf, "Fit")["nodes"][1]["type"] = "SomePackScale"
    with pytest.raises(AtelierError) as e:
        convert.ui_to_api(subgraph_wf, subgraph_info)
    assert "#10:9:7 'SomePackScale'" in str(e.value) and "#11:9:7 'SomePackScale'" in str(e.value)


def test_subgraph_that_contains_itself_is_refused(subgraph_wf, subgraph_info):
    fit, soften = _defn(subgraph_wf, "Fit"), _defn(subgraph_wf, "Soften")
    fit["nodes"][0]["type"] = soften["id"]  # Fit holds Soften, which holds Fit
    with pytest.raises(AtelierError, match="contains itself"):
        convert.ui_to_api(subgraph_wf, subgraph_info)
