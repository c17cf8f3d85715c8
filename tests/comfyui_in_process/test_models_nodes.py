"""nodes/models.py inside a real (in-process, CPU) ComfyUI: folder registration, resolve_model, the check node."""
from __future__ import annotations

import os

import pytest

from comfyui_atelier.core import manifest as mf
from comfyui_atelier.core.errors import AtelierError, MissingModelError


@pytest.fixture
def models(comfy):
    from comfyui_atelier.nodes import models as m
    return m


@pytest.fixture
def fp(comfy):
    import folder_paths
    return folder_paths


@pytest.fixture
def restore_table(fp):
    """Put folder_paths' table and cache back as they were after a test that rewires folders."""
    saved = {k: (list(v[0]), v[1]) for k, v in fp.folder_names_and_paths.items()}
    yield fp.folder_names_and_paths
    fp.folder_names_and_paths.clear()
    fp.folder_names_and_paths.update(saved)
    getattr(fp, "filename_list_cache", {}).clear()


def test_import_registered_pack_folders(models, fp, comfy):
    for name, exts in mf.PACK_FOLDERS.items():
        paths, got = fp.folder_names_and_paths[name]
        assert os.path.join(fp.models_dir, name) in paths
        assert set(exts) <= set(got)
    assert set(fp.folder_names_and_paths["fonts"][1]) >= {".ttf", ".otf", ".ttc", ".otc"}
    assert ".safetensors" not in fp.folder_names_and_paths["fonts"][1]


def test_registration_keeps_user_paths_from_extra_model_paths(models, fp, tmp_path, restore_table):
    # what ComfyUI's extra_model_paths.yaml loader does for a folder it does not know:
    # add_model_folder_path(name, path) -> ([path], set()) in the ComfyUI of early 2024
    for name in ("fonts", "saliency"):
        restore_table.pop(name, None)
    user_fonts, user_sal = tmp_path / "my_fonts", tmp_path / "my_saliency"
    user_fonts.mkdir()
    user_sal.mkdir()
    (user_fonts / "House.ttf").write_bytes(b"\0")
    (user_fonts / "notes.txt").write_text("not a font")
    (user_sal / "custom.pth").write_bytes(b"\0")
    fp.add_model_folder_path("fonts", str(user_fonts))
    fp.add_model_folder_path("saliency", str(user_sal))

    result = models.register_model_folders()
    again = models.register_model_folders()  # registered once: no duplicate paths
    assert result == again
    ours = os.path.join(fp.models_dir, "fonts")
    assert fp.get_folder_paths("fonts") == [str(user_fonts), ours]  # the user's path stays first
    assert fp.get_folder_paths("saliency") == [str(user_sal), os.path.join(fp.models_dir, "saliency")]
    assert fp.get_filename_list("fonts") == ["House.ttf"]  # extensions set: .txt is not a font
    assert fp.get_filename_list("saliency") == ["custom.pth"]
    assert fp.get_full_path("saliency", "custom.pth") == str(user_sal / "custom.pth")


def test_registration_does_not_touch_shared_extension_sets(models, fp, tmp_path, restore_table):
    shared = fp.supported_pt_extensions
    before = set(shared)
    restore_table["fonts"] = ([str(tmp_path)], shared)  # another pack registered fonts with the pt set
    models.register_model_folders()
    assert set(shared) == before  # not mutated: checkpoints etc. still list no fonts
    assert {".ttf", ".otf"} <= fp.folder_names_and_paths["fonts"][1]
    assert str(tmp_path) == fp.get_folder_paths("fonts")[0]


def test_resolve_model_missing_names_manifest_id_and_folder(models):
    with pytest.raises(MissingModelError) as ei:
        models.resolve_model("controlnet", "control_v11p_sd15_canny_fp16.safetensors",
                             node="Atelier Canny", input="control_net")
    err = ei.value
    assert err.model_id == "sd15-controlnet-canny" and err.folder == "controlnet"
    text = str(err)
    assert text.startswith("[Atelier Canny] input 'control_net':")
    assert "manifest id 'sd15-controlnet-canny'" in text and "'controlnet' model folder" in text
    assert "atelier models download sd15-controlnet-canny" in text
    assert "ControlNet-v1-1_fp16_safetensors" in text  # the URL
    # by manifest id as well
    with pytest.raises(MissingModelError, match="poolnet_resnet50_final.pth"):
        models.resolve_model("saliency", "poolnet-resnet50")


def test_resolve_model_unknown_file_lists_search_paths(models, fp):
    with pytest.raises(AtelierError) as ei:
        models.resolve_model("saliency", "nobody.pth", node="Atelier Matte", input="model")
    assert not isinstance(ei.value, MissingModelError)
    assert os.path.join(fp.models_dir, "saliency") in str(ei.value)
    with pytest.raises(AtelierError, match="no model selected"):
        models.resolve_model("saliency", "", node="Atelier Matte", input="model")


def test_resolve_model_finds_files_and_directories(models, fp, tmp_path, restore_table):
    restore_table["aesthetic"] = (fp.get_folder_paths("aesthetic") + [str(tmp_path)],
                                  fp.folder_names_and_paths["aesthetic"][1])
    head = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    head.write_bytes(b"\0")
    hf = tmp_path / "aesthetics-predictor-v2-sac-logos-ava1-l14-linearMSE"
    hf.mkdir()
    assert models.resolve_model("aesthetic", head.name) == str(head)
    assert models.resolve_model("aesthetic", "aesthetic-laion-v2-linear") == str(head)  # by id
    assert models.resolve_model("aesthetic", "aesthetic-predictor-v2-hf") == str(hf)


def test_model_check_node(models, fp, tmp_path, restore_table):
    node_cls = models.NODE_CLASS_MAPPINGS["AtelierModelCheck"]
    spec = node_cls.INPUT_TYPES()["required"]["workflow"]
    assert spec[1]["tooltip"] and models.ALL_MODELS in spec[0] and "line2product" in spec[0]
    assert node_cls.OUTPUT_NODE and node_cls.CATEGORY == "atelier/models"
    assert models.NODE_DISPLAY_NAME_MAPPINGS["AtelierModelCheck"].startswith("Atelier ")

    out = node_cls().check("line2product")
    text = out["result"][0]
    assert out["ui"]["text"] == [text]
    assert "MISSING  sd15-base" in text and "atelier models download sd15-base" in text
    assert "sdxl-base" not in text  # not part of this workflow
    before = node_cls.IS_CHANGED("line2product")

    restore_table["checkpoints"] = (fp.get_folder_paths("checkpoints") + [str(tmp_path)],
                                    fp.folder_names_and_paths["checkpoints"][1])
    (tmp_path / "v1-5-pruned-emaonly.safetensors").write_bytes(b"\0")
    text = node_cls().check("line2product")["result"][0]
    assert f"OK       sd15-base: {tmp_path / 'v1-5-pruned-emaonly.safetensors'}" in text
    assert node_cls.IS_CHANGED("line2product") != before
    with pytest.raises(AtelierError, match="unknown workflow"):
        node_cls().check("nope")


def test_display_names_come_from_the_classes_in_every_family_module(comfy):
    """Each node class carries its display name (DISPLAY); the modules' mappings are derived from it."""
    import importlib
    for family in ("models", "matting", "aesthetic", "lora"):
        mod = importlib.import_module(f"comfyui_atelier.nodes.{family}")
        for cid, cls in mod.NODE_CLASS_MAPPINGS.items():
            assert cls.DISPLAY.startswith("Atelier ") and mod.NODE_DISPLAY_NAME_MAPPINGS[cid] == cls.DISPLAY
        assert mod.NODE_DISPLAY_NAME_MAPPINGS.keys() == mod.NODE_CLASS_MAPPINGS.keys()
