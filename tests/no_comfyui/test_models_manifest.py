"""models_manifest.json schema and the manifest lookups (no ComfyUI, no network)."""
from __future__ import annotations

import copy
import json
import re

import pytest

from comfyui_atelier.core import manifest as mf
from comfyui_atelier.core.errors import AtelierError

RAW = json.loads(mf.DEFAULT_MANIFEST.read_text(encoding="utf-8"))
ENTRIES = RAW["models"]
MANAGER_FIELDS = ("name", "type", "base", "save_path", "description", "reference", "filename", "url", "size")


def test_shipped_manifest_is_valid():
    assert mf.validate(RAW) == []
    m = mf.load_manifest()
    assert len(m) == len(ENTRIES) >= 10


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["id"] for e in ENTRIES])
def test_entry_has_every_field(entry):
    for k in mf.REQUIRED_FIELDS + MANAGER_FIELDS:
        assert k in entry, f"{entry['id']} lacks {k}"
    assert entry["save_path"] == entry["folder"]
    assert entry["save_path"] in mf.KNOWN_FOLDERS


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["id"] for e in ENTRIES])
def test_filenames_are_plain_names(entry):
    names = [entry["filename"]] + [f["path"].split("/")[-1] for f in entry.get("files", [])]
    for n in names:
        assert "/" not in n and "\\" not in n and ".." not in n and n.strip() == n and n


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["id"] for e in ENTRIES])
def test_sha256_is_hex_or_null_with_note(entry):
    for obj in [entry] + entry.get("files", []):
        sha = obj["sha256"]
        if sha is None:
            assert obj.get("sha256_note", "").startswith(("not verified here", "directory entry")), obj
        else:
            assert re.fullmatch(r"[0-9a-f]{64}", sha)
        if obj["size"] is None:
            assert obj.get("size_note"), obj
        else:
            assert isinstance(obj["size"], int) and obj["size"] > 0


def test_ids_and_targets_unique():
    ids = [e["id"] for e in ENTRIES]
    assert len(ids) == len(set(ids))
    targets = [(e["folder"], e["filename"]) for e in ENTRIES]
    assert len(targets) == len(set(targets))


def test_required_models_are_listed():
    """The issue's list: SD1.5 + canny CN, SDXL + canny CN, PoolNet, CLIP-L, LAION v2 head, lineart CN,
    the HF predictor directory and a CJK font, each in the right folder."""
    m = mf.load_manifest()
    want = {
        "v1-5-pruned-emaonly.safetensors": "checkpoints",
        "control_v11p_sd15_canny_fp16.safetensors": "controlnet",
        "sd_xl_base_1.0.safetensors": "checkpoints",
        "controlnet-canny-sdxl-1.0_fp16.safetensors": "controlnet",
        "poolnet_resnet50_final.pth": "saliency",
        "clip-vit-large-patch14.safetensors": "clip_vision",
        "sac+logos+ava1-l14-linearMSE.pth": "aesthetic",
        "control_v11p_sd15_lineart_fp16.safetensors": "controlnet",
        "aesthetics-predictor-v2-sac-logos-ava1-l14-linearMSE": "aesthetic",
        "NotoSansCJKsc-Regular.otf": "fonts",
        "NotoSansCJK-Regular.ttc": "fonts",
    }
    for filename, folder in want.items():
        e = m.find(filename, folder)
        assert e is not None, filename
    assert m.find("aesthetics-predictor-v2-sac-logos-ava1-l14-linearMSE").kind == "directory"
    # the verified hashes found for the big public files (all published as LFS pointers)
    assert m.by_id("sd15-base").sha256.startswith("6ce0161689b3")
    assert m.by_id("sdxl-base").size == 6938078334
    assert m.by_id("aesthetic-laion-v2-linear").size == 3714759
    assert m.by_id("font-noto-sans-cjk").size == 19484784 and m.by_id("font-noto-sans-cjk").verified


def test_folders_of_pack_cover_issue_list():
    assert {"saliency", "aesthetic", "style_adapters", "fonts"} <= set(mf.PACK_FOLDERS)
    assert {".ttf", ".otf", ".ttc", ".otc"} <= mf.PACK_FOLDERS["fonts"]
    assert {".pth", ".safetensors", ".pt", ".bin"} <= mf.PACK_FOLDERS["saliency"]


def test_lookups():
    m = mf.load_manifest()
    e = m.by_id("sd15-controlnet-canny")
    assert m.find("control_v11p_sd15_canny_fp16.safetensors") is e
    assert m.find("SD1.5/control_v11p_sd15_canny_fp16.safetensors", "controlnet") is e  # subfolder in a widget
    assert m.find("control_v11p_sd15_canny_fp16.safetensors", "checkpoints") is None
    assert m.resolve("sd15-controlnet-canny") is e and m.resolve(e.filename, "controlnet") is e
    assert m.by_id("sd15-controlnet-lineart") in m.for_workflow("line2product")
    with pytest.raises(AtelierError, match="unknown model id 'sd15'.*sd15-base"):
        m.by_id("sd15")


def test_manager_export_is_manager_shaped():
    m = mf.load_manifest()
    doc = m.to_manager_list()
    assert doc["models"], "expected installable entries"
    for item in doc["models"]:
        assert set(item) == set(MANAGER_FIELDS)
        assert item["url"].startswith("https://") and "drive.google.com" not in item["url"]
    names = {i["filename"] for i in doc["models"]}
    assert "aesthetics-predictor-v2-sac-logos-ava1-l14-linearMSE" not in names  # directory: not installable


def test_manual_step_names_url_file_and_folder(tmp_path):
    e = mf.load_manifest().by_id("sd15-base")
    text = mf.manual_step(e, tmp_path)
    assert e.url in text and e.filename in text and str(tmp_path / "checkpoints") in text
    assert e.sha256 in text


@pytest.mark.parametrize("mutate, message", [
    (lambda e: e.pop("license"), "missing field"),
    (lambda e: e.update(filename="../evil.safetensors"), "plain file name"),
    (lambda e: e.update(filename="sub/x.safetensors"), "plain file name"),
    (lambda e: e.update(filename="C:evil.safetensors"), "plain file name"),
    (lambda e: e.update(sha256="ABC"), "64 lowercase hex"),
    (lambda e: e.update(sha256=None), "sha256_note"),
    (lambda e: e.update(size=None), "size_note"),
    (lambda e: e.update(size=-3), "positive number"),
    (lambda e: e.update(folder="nowhere", save_path="nowhere"), "not one of"),
    (lambda e: e.update(save_path="checkpoints/SD1.5"), "must equal folder"),
    (lambda e: e.update(url="ftp://x/y"), "http"),
    (lambda e: e.update(filename="model.txt"), "extension"),
    (lambda e: e.update(used_by=["a"]), "used_by"),
])
def test_validation_catches(mutate, message):
    doc = copy.deepcopy(RAW)
    mutate(doc["models"][0])
    problems = mf.validate(doc)
    assert any(message in p for p in problems), problems
    with pytest.raises(AtelierError, match="invalid"):
        mf.parse(doc)


def test_duplicate_ids_rejected():
    doc = copy.deepcopy(RAW)
    doc["models"].append(copy.deepcopy(doc["models"][0]))
    problems = mf.validate(doc)
    assert any("duplicate id" in p for p in problems)
    assert any("already uses" in p for p in problems)


def test_load_manifest_reports_bad_json(tmp_path):
    p = tmp_path / "m.json"
    p.write_text("{ nope", encoding="utf-8")
    with pytest.raises(AtelierError, match="not valid JSON"):
        mf.load_manifest(p)
    with pytest.raises(AtelierError, match="cannot read"):
        mf.load_manifest(tmp_path / "absent.json")


@pytest.mark.parametrize("content, words", [
    ("[" * 100_000, "nested more than 32 levels deep (at line 1)"),  # json.loads alone: RecursionError
    (b"\xff\xfe{}", "is not UTF-8 text"),
    (None, "cannot read the model manifest"),  # a folder where the file should be
])
def test_load_manifest_names_the_file_for_any_unreadable_content(tmp_path, content, words):
    p = tmp_path / "m.json"
    if content is None:
        p.mkdir()
    elif isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    with pytest.raises(AtelierError) as ei:
        mf.load_manifest(p)
    assert words in str(ei.value) and str(p) in str(ei.value)


def test_check_entry_size_and_hash(tmp_path):
    data = b"atelier" * 100
    import hashlib
    entry = mf.parse({"models": [_entry("tiny", "tiny.safetensors", len(data), hashlib.sha256(data).hexdigest())]}).by_id("tiny")
    st = mf.check_entry(entry, tmp_path)
    assert not st.present and "missing" in st.problems[0]
    (tmp_path / "saliency").mkdir()
    (tmp_path / "saliency" / "tiny.safetensors").write_bytes(data[:-1])
    st = mf.check_entry(entry, tmp_path)
    assert st.present and not st.ok and "expected 700" in st.problems[0]
    (tmp_path / "saliency" / "tiny.safetensors").write_bytes(data[:-1] + b"X")
    assert mf.check_entry(entry, tmp_path).ok  # size only by default
    st = mf.check_entry(entry, tmp_path, hash_files=True)
    assert not st.ok and "sha256" in st.problems[0]


def _entry(mid, filename, size, sha, url="https://example.invalid/x"):
    return {"id": mid, "name": mid, "type": "saliency", "base": "test", "save_path": "saliency",
            "folder": "saliency", "filename": filename, "url": url, "sha256": sha, "size": size,
            "license": "MIT", "used_by": {"nodes": [], "workflows": ["wf"]}, "description": "d",
            "reference": "https://example.invalid"}


# ----------------------------------------------------------------------------- the editor's Download button
# comfyui-frontend-package 1.27.10 (pinned by ComfyUI 0.3.64), MissingModelsWarning: a Download button only for a
# url starting with one of these and a file name ending in one of these (plus three hard-coded urls, none ours).
EDITOR_HOSTS = ("https://civitai.com/", "https://huggingface.co/", "http://localhost:")
EDITOR_SUFFIXES = (".safetensors", ".sft")


def _editor_offers(entry: dict) -> bool:
    return entry.get("kind", "file") == "file" and entry["url"].startswith(EDITOR_HOSTS) and \
        entry["filename"].endswith(EDITOR_SUFFIXES)


def _workflow_model_items():
    for p in sorted((mf.DEFAULT_MANIFEST.parent / "workflows").glob("*.json")):
        for node in json.loads(p.read_text(encoding="utf-8")).get("nodes", []):
            for item in (node.get("properties") or {}).get("models") or []:
                yield p.stem, item


@pytest.mark.parametrize("entry", [e for e in ENTRIES if "editor_download" in e],
                         ids=[e["id"] for e in ENTRIES if "editor_download" in e])
def test_editor_download_flag_follows_the_frontend_rule(entry):
    assert entry["editor_download"] is _editor_offers(entry), (
        f"{entry['id']}: editor_download {entry['editor_download']} but the dialog "
        f"{'offers' if _editor_offers(entry) else 'does not offer'} {entry['url']} as {entry['filename']}")
    if not entry["editor_download"]:
        note = entry.get("editor_download_note") or ""
        assert entry["filename"] in note or "atelier models download " + entry["id"] in note, note


def test_every_workflow_model_says_whether_the_editor_offers_it():
    by_name = {(e["save_path"], e["filename"]): e for e in ENTRIES}
    seen = set()
    for wf, item in _workflow_model_items():
        e = by_name[(item["directory"], item["name"])]
        assert "editor_download" in e, f"{wf}: manifest entry '{e['id']}' lacks editor_download"
        seen.add(e["id"])
    # the story sets' CLIP ViT-L/14 gets a button, the LAION head (.pth on GitHub) is fetched by hand
    assert {"clip-vit-l14", "aesthetic-laion-v2-linear"} <= seen
    flags = {e["id"]: e["editor_download"] for e in ENTRIES if "editor_download" in e}
    assert flags["clip-vit-l14"] is True and flags["aesthetic-laion-v2-linear"] is False
    assert flags["poolnet-resnet50"] is False


def test_editor_rule_is_the_installed_frontends():
    """The hosts and suffixes above are the ones in the installed frontend's missing-models dialog (when the
    frontend package is installed; it is, wherever the 0.3.64 runtime runs)."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.find_spec("comfyui_frontend_package")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("comfyui-frontend-package is not installed")
    assets = Path(list(spec.submodule_search_locations)[0]) / "static" / "assets"
    for js in sorted(assets.glob("*.js")):
        text = js.read_text(encoding="utf-8", errors="replace")
        i = text.find("const allowedSources = [")
        if i < 0:
            continue
        block = text[i:i + 1200]
        sources = re.findall(r'"([^"]+)"', block[:block.index("];")])
        j = block.index("const allowedSuffixes = [")
        suffixes = re.findall(r'"([^"]+)"', block[j:block.index("];", j)])
        assert tuple(sources) == EDITOR_HOSTS and tuple(suffixes) == EDITOR_SUFFIXES
        return
    pytest.skip("this frontend has no allowedSources list (its dialog changed: re-check the rule)")
