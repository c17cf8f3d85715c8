"""Aesthetic nodes called with ComfyUI types inside a real (in-process) ComfyUI."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch


from tests.fixtures import aesthetic_models as FX  # noqa: E402
HF_NAME = "tiny-aesthetics-predictor-v2-linear"
HEAD_NAME = "tiny-sac+logos+ava1-linearMSE.pth"


@pytest.fixture(scope="module")
def env(comfy, tmp_path_factory):
    import folder_paths
    from comfyui_atelier.nodes import aesthetic as N
    folder = Path(folder_paths.get_folder_paths("aesthetic")[0])
    folder.mkdir(parents=True, exist_ok=True)
    src = tmp_path_factory.mktemp("aesthetic-nodes")
    hf = FX.build_hf_predictor(str(src / HF_NAME), layout="linear", seed=5)
    if not (folder / HF_NAME).exists():
        shutil.copytree(hf, folder / HF_NAME)
    FX.save_head(str(folder / HEAD_NAME), "relu", in_dim=FX.TINY_CLIP["projection_dim"], seed=6)
    return {"N": N, "folder": folder, "hf": str(folder / HF_NAME), "head": str(folder / HEAD_NAME), "tmp": src}


@pytest.fixture(scope="module")
def tiny_comfy_clip_vision(env):
    """ComfyUI's own ClipVisionModel (comfy.clip_vision) with the tiny architecture and the tiny CLIP weights.

    ComfyUI's CLIPVisionLoader picks its config by key presence (ViT-L needs 24 layers of width 1024), so a
    tiny model cannot come through the loader; we build ComfyUI's class directly from a json config in its
    format, which is exactly what the loader does after choosing the config.
    """
    import comfy.clip_vision
    cfg = FX.comfy_clip_vision_config(str(env["tmp"] / "tiny_clip_vision_config.json"))
    cv = comfy.clip_vision.ClipVisionModel(cfg)
    missing, unexpected = cv.load_sd(FX.clip_vision_state_dict(env["hf"]))
    assert not [k for k in missing if "position_ids" not in k]
    return cv


def _images(n=8, h=72, w=96, seed=0):
    return FX.sample_images(n, h, w, seed=seed)


def test_node_conventions(env):
    N = env["N"]
    for cid, cls in N.NODE_CLASS_MAPPINGS.items():
        assert cid.startswith("Atelier") and N.NODE_DISPLAY_NAME_MAPPINGS[cid].startswith("Atelier ")
        assert cls.CATEGORY == "atelier/aesthetic"
        spec = cls.INPUT_TYPES()
        for group in spec.values():
            for name, (typ, *opts) in group.items():
                assert opts and opts[0].get("tooltip"), f"{cid}.{name} has no tooltip"
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
        assert cls.DESCRIPTION
    assert "BOOLEAN" in N.AtelierAestheticSetGate.RETURN_TYPES


def test_loader_lists_folders_and_heads_and_explains_missing(env):
    N = env["N"]
    names = N.AtelierAestheticLoader.INPUT_TYPES()["required"]["model_name"][0]
    assert HF_NAME in names and HEAD_NAME in names
    assert not any(n.startswith(HF_NAME + "/") for n in names)  # the folder's own files are not listed
    (m,) = N.AtelierAestheticLoader().load(HF_NAME)
    assert m.has_clip and m.head.layout == "v2_linear"
    assert N.AtelierAestheticLoader().load(HF_NAME)[0] is m  # cached by path + mtime
    stamp = N.AtelierAestheticLoader.IS_CHANGED(HEAD_NAME)
    assert stamp == N.AtelierAestheticLoader.IS_CHANGED(HEAD_NAME)
    os.utime(env["head"], (1, 1))
    assert N.AtelierAestheticLoader.IS_CHANGED(HEAD_NAME) != stamp
    (h,) = N.AtelierAestheticLoader().load(HEAD_NAME)
    assert not h.has_clip and h.head.layout == "v2_relu"
    from comfyui_atelier.core.errors import MissingModelError
    with pytest.raises(MissingModelError) as e:
        N.AtelierAestheticLoader().load("sac+logos+ava1-l14-linearMSE.pth")
    msg = str(e.value)
    assert "[Atelier Aesthetic Loader]" in msg and "models/aesthetic/sac+logos+ava1-l14-linearMSE.pth" in msg
    assert "aesthetic-laion-v2-linear" in msg


def test_scorer_folder_model_scores_ui_and_sorting(env):
    N = env["N"]
    from comfyui_atelier.core import aesthetic as A
    (m,) = N.AtelierAestheticLoader().load(HF_NAME)
    imgs = _images()
    out = N.AtelierAestheticScorer().score(m, imgs)
    scores, report, sorted_images = out["result"]
    assert isinstance(scores, list) and len(scores) == 8 and all(isinstance(s, float) for s in scores)
    assert out["ui"]["atelier_scores"] == scores and isinstance(out["ui"]["atelier_scores"], list)
    ref = A.load_hf_predictor(env["hf"]).score(imgs)
    assert max(abs(a - b) for a, b in zip(scores, ref.tolist())) <= 1e-5
    order = sorted(range(8), key=lambda i: -scores[i])
    assert torch.equal(sorted_images, imgs[order])
    resc = N.AtelierAestheticScorer().score(m, sorted_images)["result"][0]
    assert resc == sorted(resc, reverse=True)
    assert "mean" in report and f"{max(scores):6.3f}" in report
    assert N.AtelierAestheticScorer.OUTPUT_IS_LIST == (True, False, False)
    # as ComfyUI calls it (INPUT_IS_LIST): one batch per upstream run, merged into one set
    listed = _call_listed(N.AtelierAestheticScorer, aesthetic_model=m, images=[imgs[:3], imgs[3:5], imgs[5:]])
    assert listed["result"][0] == scores and torch.equal(listed["result"][2], sorted_images)


def test_scorer_rgba_and_gray_batches(env):
    N = env["N"]
    (m,) = N.AtelierAestheticLoader().load(HF_NAME)
    rgb = _images(3, 40, 50, seed=2)
    rgba = torch.cat([rgb, torch.ones_like(rgb[..., :1])], -1)
    a = N.AtelierAestheticScorer().score(m, rgb)["result"][0]
    b = N.AtelierAestheticScorer().score(m, rgba)["result"][0]
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-6
    g = N.AtelierAestheticScorer().score(m, rgb[..., :1])["result"]
    assert len(g[0]) == 3 and g[2].shape == (3, 40, 50, 1)


def test_head_with_comfy_clip_vision_matches_direct_computation(env, tiny_comfy_clip_vision):
    """Path (b): head file + ComfyUI CLIP_VISION; compared with head(encode_image(crops)) computed directly."""
    N = env["N"]
    from comfyui_atelier.core import aesthetic as A
    (h,) = N.AtelierAestheticLoader().load(HEAD_NAME)
    imgs = _images(5, 120, 90, seed=3)
    out = N.AtelierAestheticScorer().score(h, imgs, clip_vision=tiny_comfy_clip_vision)
    scores = out["result"][0]
    crops = A.clip_crops(imgs).float() / 255.0
    emb = tiny_comfy_clip_vision.encode_image(crops)["image_embeds"].float()
    sd = FX.head_state_dict("relu", FX.TINY_CLIP["projection_dim"], seed=6)
    x = emb.double()
    x = x / x.norm(dim=-1, keepdim=True)
    for n, i in enumerate(FX.V2_INDEX["relu"]):
        x = x @ sd[f"layers.{i}.weight"].double().T + sd[f"layers.{i}.bias"].double()
        if n < 4:
            x = x.clamp_min(0)
    assert max(abs(a - b) for a, b in zip(scores, x[:, 0].tolist())) <= 1e-4
    # ComfyUI sees the same pixels as CLIPProcessor: its embedding is close to transformers' one
    # (ComfyUI keeps CLIP vision weights in fp16 on the CPU, hence the loose tolerance)
    hf = A.load_hf_predictor(env["hf"])
    emb_hf = hf.embed(A.normalize_crops(A.clip_crops(imgs)))
    cos = torch.nn.functional.cosine_similarity(emb, emb_hf, dim=-1)
    assert cos.min() > 0.999


def test_head_without_clip_vision_is_refused(env):
    N = env["N"]
    (h,) = N.AtelierAestheticLoader().load(HEAD_NAME)
    from comfyui_atelier.core.errors import AtelierError
    with pytest.raises(AtelierError) as e:
        N.AtelierAestheticScorer().score(h, _images(1))
    assert "input 'clip_vision'" in str(e.value) and "Load CLIP Vision" in str(e.value)


def _score(env, imgs):
    N = env["N"]
    (m,) = N.AtelierAestheticLoader().load(HF_NAME)
    return N.AtelierAestheticScorer().score(m, imgs)["result"][0]


def _call_listed(cls, **kw):
    """Call an INPUT_IS_LIST node the way ComfyUI does: every input arrives as a list."""
    obj = cls()
    kw = {k: (v if isinstance(v, list) else [v]) for k, v in kw.items()}
    return getattr(obj, cls.FUNCTION)(**kw)


def test_filter_threshold_topk_indices_and_nothing_passes(env):
    N = env["N"]
    imgs = _images(seed=4)
    scores = _score(env, imgs)
    thr = sorted(scores)[4]  # the 4 best reach it
    out = _call_listed(N.AtelierAestheticFilter, images=imgs, scores=scores, mode="threshold", threshold=thr,
                       top_k=2, if_none_pass="keep best")
    kept_imgs, idx, kept, report = out["result"]
    assert idx == [i for i, s in enumerate(scores) if s >= thr] and kept == len(idx) == 4
    assert torch.equal(kept_imgs, imgs[idx])
    assert out["ui"]["atelier_scores"] == [scores[i] for i in idx]
    assert N.AtelierAestheticFilter.OUTPUT_IS_LIST == (False, True, False, False)

    out = _call_listed(N.AtelierAestheticFilter, images=imgs, scores=scores, mode="top_k", threshold=6.0,
                       top_k=3, if_none_pass="keep best")
    kept_imgs, idx, kept, _ = out["result"]
    assert sorted(idx) == idx and set(idx) == set(sorted(range(8), key=lambda i: -scores[i])[:3])
    assert torch.equal(kept_imgs, imgs[idx]) and kept == 3

    high = max(scores) + 1
    out = _call_listed(N.AtelierAestheticFilter, images=imgs, scores=scores, mode="threshold", threshold=high,
                       top_k=3, if_none_pass="keep best")
    kept_imgs, idx, kept, report = out["result"]
    best = max(range(8), key=lambda i: scores[i])
    assert kept == 0 and idx == [best] and kept_imgs.shape[0] == 1 and torch.equal(kept_imgs, imgs[best:best + 1])
    assert report.startswith("NOTHING PASSED")
    from comfyui_atelier.core.errors import AtelierError
    with pytest.raises(AtelierError, match="no image passed") as e:
        _call_listed(N.AtelierAestheticFilter, images=imgs, scores=scores, mode="threshold", threshold=high,
                     top_k=3, if_none_pass="stop with error")
    assert "[Atelier Aesthetic Filter]" in str(e.value)
    with pytest.raises(AtelierError, match="7 scores for 8 images"):
        _call_listed(N.AtelierAestheticFilter, images=imgs, scores=scores[:7], mode="top_k", threshold=6.0,
                     top_k=3, if_none_pass="keep best")


def test_filter_accepts_a_list_of_batches(env):
    N = env["N"]
    imgs = _images(6, seed=8)
    scores = _score(env, imgs)
    out = _call_listed(N.AtelierAestheticFilter, images=[imgs[:2], imgs[2:]], scores=scores, mode="top_k",
                       threshold=6.0, top_k=2, if_none_pass="keep best")
    kept_imgs, idx, _, _ = out["result"]
    assert torch.equal(kept_imgs, imgs[idx])


def test_set_gate_pass_fail_and_stop(env):
    N = env["N"]
    imgs = _images(seed=6)
    scores = _score(env, imgs)
    mean = sum(scores) / len(scores)
    out = _call_listed(N.AtelierAestheticSetGate, images=imgs, scores=scores, threshold=mean - 0.01,
                       on_fail="continue")
    images, passed, m, report = out["result"]
    assert passed is True and m == pytest.approx(mean) and torch.equal(images, imgs) and "PASS" in report
    assert out["ui"]["atelier_gate"][0]["passed"] is True and out["ui"]["atelier_scores"] == scores
    out = _call_listed(N.AtelierAestheticSetGate, images=imgs, scores=scores, threshold=mean + 0.01,
                       on_fail="continue")
    assert out["result"][1] is False and "FAIL" in out["result"][3]
    from comfyui_atelier.core.errors import AtelierError
    with pytest.raises(AtelierError, match="set rejected: mean aesthetic score"):
        _call_listed(N.AtelierAestheticSetGate, images=imgs, scores=scores, threshold=mean + 0.01,
                     on_fail="stop workflow")
    assert N.AtelierAestheticSetGate.INPUT_TYPES()["required"]["threshold"][1]["default"] == 6.0


def test_grid_node_default_layout_captions_rgba(env):
    N = env["N"]
    imgs = _images(8, 32, 48, seed=1)
    (g,) = _call_listed(N.AtelierImageGrid, images=imgs, rows=0, cols=0, gap=8, background="#ffffff",
                        font_size=12)
    assert g.shape == (1, 8 + 4 * (32 + 8), 8 + 2 * (48 + 8), 3)  # 8 images -> 4 rows x 2 columns (story seed)
    assert torch.allclose(g[0, 8:40, 8 + 56:8 + 56 + 48], imgs[1])  # cell 1 is row 0, column 1
    assert torch.allclose(g[0, 8 + 40:8 + 40 + 32, 8:8 + 48], imgs[2])  # cell 2 starts row 1
    assert "8 images -> 4 rows x 2" in N.AtelierImageGrid.INPUT_TYPES()["required"]["rows"][1]["tooltip"]
    scores = [float(i) for i in range(8)]
    (g2,) = _call_listed(N.AtelierImageGrid, images=imgs, rows=0, cols=0, gap=8, background="#ffffff",
                         font_size=12, captions="", scores=scores)
    assert g2.shape == (1, 8 + 4 * (32 + 18 + 8), 8 + 2 * (48 + 8), 3)
    rgba = torch.cat([imgs, torch.ones_like(imgs[..., :1])], -1)
    (g3,) = _call_listed(N.AtelierImageGrid, images=rgba, rows=4, cols=2, gap=8, background="#ffffff",
                         font_size=12)
    assert torch.allclose(g3, g, atol=1 / 255 + 1e-6)
    from comfyui_atelier.core.errors import AtelierError
    with pytest.raises(AtelierError, match=r"\[Atelier Image Grid\]"):
        _call_listed(N.AtelierImageGrid, images=imgs, rows=1, cols=3, gap=8, background="#fff", font_size=12)


def test_grid_node_cjk_captions(env):
    """Story captions in Chinese are drawn (ink in every caption strip), with a font that covers them."""
    N = env["N"]
    from comfyui_atelier.core import glyph
    from comfyui_atelier.core.grid import caption_font, cell_boxes
    imgs = torch.ones(8, 24, 240, 3)
    lines = ["小狐狸找到了灯笼", "灯笼亮了", "它走进森林", "遇见了小兔子", "一起回家", "月亮出来了", "晚安", "完"]
    (g,) = _call_listed(N.AtelierImageGrid, images=[imgs[:4], imgs[4:]], rows=0, cols=0, gap=4,
                        background="#ffffff", font_size=20, captions="\n".join(lines))
    cap_h = 30
    assert g.shape == (1, 4 + 4 * (24 + cap_h + 4), 4 + 2 * (240 + 4), 3)
    font = caption_font(lines, 20, font_dirs=N._caption_font_dirs())
    assert glyph.missing_glyphs(font.path, font.index, "".join(lines)) == []
    for i, (y, x, h, w) in enumerate(cell_boxes(8, 24, 240, gap=4, caption_h=cap_h)):
        strip = g[0, y + h:y + h + cap_h, x:x + w]
        assert (strip.min(dim=-1).values < 0.5).sum() > 20 * len(lines[i]), lines[i]  # ink for every character


@pytest.mark.slow
def test_head_with_real_clip_vision_loader_full_size_vitl(env):
    """Path (b) through ComfyUI's own CLIPVisionLoader: a full-size random ViT-L/14 file (the loader only
    accepts real ViT-L/H/G shapes) + a 768-wide LAION v2 head, scored against a direct computation."""
    import folder_paths
    import nodes as comfy_nodes
    import comfy.clip_vision
    N = env["N"]
    cv_dir = Path(folder_paths.get_folder_paths("clip_vision")[0])
    name = "atelier-random-vit-l-14.safetensors"
    FX.build_comfy_vitl_clip_vision(str(cv_dir / name), seed=1)
    (clip_vision,) = comfy_nodes.CLIPVisionLoader().load_clip(name)
    assert isinstance(clip_vision, comfy.clip_vision.ClipVisionModel)
    head_name = "test-vitl-head-linearMSE.safetensors"
    FX.save_head(str(env["folder"] / head_name), "linear", in_dim=768, seed=12)
    (h,) = N.AtelierAestheticLoader().load(head_name)
    imgs = _images(2, 160, 200, seed=13)
    scores = N.AtelierAestheticScorer().score([h], [imgs], clip_vision=[clip_vision])["result"][0]
    from comfyui_atelier.core import aesthetic as A
    emb = clip_vision.encode_image(A.clip_crops(imgs).float() / 255.0)["image_embeds"].float()
    assert emb.shape == (2, 768)
    direct = A.head_from_state_dict(FX.head_state_dict("linear", 768, seed=12))(emb)
    assert max(abs(a - b) for a, b in zip(scores, direct.tolist())) <= 1e-4
    # the tiny CLIP cannot come through the loader: ComfyUI finds no config for it
    tiny_sd = FX.clip_vision_state_dict(env["hf"])
    assert comfy.clip_vision.load_clipvision_from_sd(tiny_sd) is None


def test_display_names_come_from_the_classes(env):
    N = env["N"]
    assert N.NODE_DISPLAY_NAME_MAPPINGS == {cid: cls.DISPLAY for cid, cls in N.NODE_CLASS_MAPPINGS.items()}
    assert N.NODE_DISPLAY_NAME_MAPPINGS["AtelierAestheticSetGate"] == "Atelier Aesthetic Set Gate"


def test_model_list_is_bounded_loop_safe_and_creates_nothing(env, tmp_path, monkeypatch):
    import folder_paths
    N = env["N"]
    folder = env["folder"]
    loop = folder / "atelier-test-loop"
    (loop / "deeper").mkdir(parents=True, exist_ok=True)
    os.symlink("..", loop / "deeper" / "back")  # a link loop: deeper/back/deeper/back/...
    head = loop / "deeper" / "looped-head.safetensors"
    FX.save_head(str(head), "linear", in_dim=FX.TINY_CLIP["projection_dim"], seed=2)
    try:
        names = N.AtelierAestheticLoader.INPUT_TYPES()["required"]["model_name"][0]
        assert "atelier-test-loop/deeper/looped-head.safetensors" in names and HF_NAME in names
        assert not any("/back/" in n for n in names)  # each real folder is visited once
    finally:
        shutil.rmtree(loop)
    # a model folder that does not exist: listed as empty, and INPUT_TYPES does not create it
    missing = tmp_path / "no-such-models" / "aesthetic"
    paths, exts = folder_paths.folder_names_and_paths["aesthetic"]
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "aesthetic", ([str(missing)], exts))
    names = N.AtelierAestheticLoader.INPUT_TYPES()["required"]["model_name"][0]
    assert names == ["(put models in ComfyUI/models/aesthetic)"] and not missing.parent.exists()


def test_sizes_from_inputs_are_checked_before_allocating(env):
    """Image Grid: the grid size from rows, cols, cells and caption band; Scorer: the CLIP resize."""
    N = env["N"]
    from comfyui_atelier.core.errors import AtelierError
    with pytest.raises(AtelierError) as e:
        _call_listed(N.AtelierImageGrid, images=torch.zeros(1, 512, 512, 3), rows=256, cols=256, gap=8,
                     background="#ffffff", font_size=18)
    msg = str(e.value)
    assert msg.startswith("[Atelier Image Grid] input 'rows': the 256 x 256 grid of 512 x 512 px cells")
    assert "megapixels" in msg and "fewer rows/cols" in msg
    (m,) = N.AtelierAestheticLoader().load(HF_NAME)
    with pytest.raises(AtelierError) as e:
        N.AtelierAestheticScorer().score([m], [torch.rand(1, 1, 20000, 3)])
    msg = str(e.value)
    assert msg.startswith("[Atelier Aesthetic Scorer] input 'images': image 0 (20,000 x 1)") and "224" in msg


def test_a_predictor_folder_is_reloaded_when_a_file_inside_changes(env):
    """The cache's stamp of a model folder covers the files in it (config.json, the weights)."""
    N = env["N"]
    (m,) = N.AtelierAestheticLoader().load(HF_NAME)
    assert N.AtelierAestheticLoader().load(HF_NAME)[0] is m
    stamp = N.AtelierAestheticLoader.IS_CHANGED(HF_NAME)
    weights = Path(env["hf"]) / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert N.AtelierAestheticLoader.IS_CHANGED(HF_NAME) != stamp
    again = N.AtelierAestheticLoader().load(HF_NAME)[0]
    assert again is not m and again.head.layout == m.head.layout


# --------------------------------------------------------------------------- set coherence and the gate's coherence check
def test_set_coherence_node_folder_model_finds_the_planted_outlier(env):
    N = env["N"]
    from comfyui_atelier.core import aesthetic as A
    from comfyui_atelier.core import coherence as C
    from tests.fixtures import coherence_sets as CS
    (m,) = N.AtelierAestheticLoader().load(HF_NAME)
    imgs = CS.planted(at=3)
    # as ComfyUI calls it: INPUT_IS_LIST, here the set arrives as two batches
    out = _call_listed(N.AtelierSetCoherence, aesthetic_model=m, images=[imgs[:5], imgs[5:]])
    value, per_image, outlier, report = out["result"]
    want = C.coherence(A.load_hf_predictor(env["hf"]).image_embeddings(imgs))
    assert outlier == 3 == want.outlier and value == pytest.approx(want.coherence, abs=1e-6)
    assert len(per_image) == 8 and per_image == pytest.approx(want.per_image, abs=1e-6)
    assert "<- outlier" in report and "#3" in out["ui"]["atelier_report"][0]  # shown on the node
    assert N.AtelierSetCoherence.OUTPUT_IS_LIST == (False, True, False, False)
    coherent = _call_listed(N.AtelierSetCoherence, aesthetic_model=m, images=CS.coherent_set())["result"][0]
    mixed = _call_listed(N.AtelierSetCoherence, aesthetic_model=m, images=CS.mixed_set())["result"][0]
    assert coherent > mixed


def test_set_coherence_node_with_comfy_clip_vision(env, tiny_comfy_clip_vision):
    """Path (b): head file + ComfyUI CLIP_VISION embeds the set; same outlier, coherence close to path (a)."""
    N = env["N"]
    from tests.fixtures import coherence_sets as CS
    (h,) = N.AtelierAestheticLoader().load(HEAD_NAME)
    (m,) = N.AtelierAestheticLoader().load(HF_NAME)
    imgs = CS.planted(at=6)
    b = _call_listed(N.AtelierSetCoherence, aesthetic_model=h, images=imgs, clip_vision=tiny_comfy_clip_vision)
    a = _call_listed(N.AtelierSetCoherence, aesthetic_model=m, images=imgs)
    assert b["result"][2] == a["result"][2] == 6
    assert b["result"][0] == pytest.approx(a["result"][0], abs=1e-3)  # ComfyUI keeps CLIP vision in fp16 on CPU
    from comfyui_atelier.core.errors import AtelierError
    with pytest.raises(AtelierError) as e:
        _call_listed(N.AtelierSetCoherence, aesthetic_model=h, images=imgs)
    assert "input 'clip_vision'" in str(e.value) and "[Atelier Set Coherence]" in str(e.value)


def test_set_gate_with_coherence(env):
    N = env["N"]
    from comfyui_atelier.core.errors import AtelierError
    imgs = _images(seed=6)
    scores = _score(env, imgs)
    mean = sum(scores) / len(scores)
    low = mean - 0.01
    # old call (no coherence inputs, as a workflow saved before them) and min_coherence 0: unchanged verdicts
    old = _call_listed(N.AtelierAestheticSetGate, images=imgs, scores=scores, threshold=low, on_fail="continue")
    off = _call_listed(N.AtelierAestheticSetGate, images=imgs, scores=scores, threshold=low, on_fail="continue",
                       coherence=0.42, min_coherence=0.0)
    assert old["result"][1] is True and off["result"][1] is True and "coherence" not in old["result"][3]
    assert "set coherence 0.4200 (check off" in off["result"][3]
    assert off["ui"]["atelier_gate"][0]["coherence"] == pytest.approx(0.42)
    ok = _call_listed(N.AtelierAestheticSetGate, images=imgs, scores=scores, threshold=low, on_fail="stop workflow",
                      coherence=0.9, min_coherence=0.8)
    assert ok["result"][1] is True and "-> PASS" in ok["result"][3]
    bad = _call_listed(N.AtelierAestheticSetGate, images=imgs, scores=scores, threshold=low, on_fail="continue",
                       coherence=0.7, min_coherence=0.8)
    assert bad["result"][1] is False and bad["result"][2] == pytest.approx(mean) and "-> FAIL" in bad["result"][3]
    with pytest.raises(AtelierError, match="set rejected: set coherence 0.7 < min_coherence 0.8"):
        _call_listed(N.AtelierAestheticSetGate, images=imgs, scores=scores, threshold=low, on_fail="stop workflow",
                     coherence=0.7, min_coherence=0.8)
    with pytest.raises(AtelierError, match="set rejected: mean aesthetic score"):  # the mean still rules first
        _call_listed(N.AtelierAestheticSetGate, images=imgs, scores=scores, threshold=mean + 0.01,
                     on_fail="stop workflow", coherence=0.9, min_coherence=0.8)
    with pytest.raises(AtelierError) as e:
        _call_listed(N.AtelierAestheticSetGate, images=imgs, scores=scores, threshold=low, on_fail="continue",
                     min_coherence=0.5)
    assert "input 'coherence'" in str(e.value) and "Atelier Set Coherence" in str(e.value)
    spec = N.AtelierAestheticSetGate.INPUT_TYPES()
    assert list(spec["optional"]) == ["coherence", "min_coherence"]  # at the end: saved widget values keep their order
    assert spec["optional"]["min_coherence"][1]["default"] == 0.0
