"""The pack's models under ComfyUI's model management and ComfyUI's loader, in a real in-process ComfyUI.

- Remove Background's PoolNet and the Aesthetic Scorer's CLIP tower + head are loaded with
  comfy.model_management.load_models_gpu through a ModelPatcher: they are listed in
  current_loaded_models (once, however often the node runs) and freed by unload_all_models (what
  POST /free {"unload_models": true} runs: server.py sets the queue flag, main.py's prompt_worker
  calls comfy.model_management.unload_all_models(), in the 2024 runtime and in 0.3.64 alike) and
  by free_memory under memory pressure. A ComfyUI CLIP_VISION comes with its own patcher.
- Every weight file the nodes load is read by comfy.utils.load_torch_file(path, safe_load=True),
  which refuses a code-executing pickle; a refusal by ComfyUI's model policy reaches the user as such.

On the CPU the load device is the CPU; model management tracks the models all the same.
"""
from __future__ import annotations

import functools
import os
import sys
import types
from pathlib import Path

import pytest
import torch

from tests.fixtures import aesthetic_models as FX
from tests.fixtures import poolnet_models as PM

from comfyui_atelier.core.errors import AtelierError

POOLNET = "atelier-mm-poolnet.pth"
EVIL = "atelier-mm-evil.pth"
HF = "atelier-mm-aesthetic-v2"
HEAD = "atelier-mm-head.pth"
EVIL_HEAD = "atelier-mm-evil-head.pth"
ADAPTER = "atelier-mm-adapter.safetensors"
STYLE = "atelier-mm/style.style.safetensors"


class _WritesFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))  # unpickling would create the file


@pytest.fixture(scope="module")
def env(comfy, tmp_path_factory):
    import folder_paths
    from comfyui_atelier.core import style as S
    from comfyui_atelier.nodes import aesthetic as A, matting as M, style as ST

    made = []
    sal = Path(folder_paths.get_folder_paths("saliency")[0])
    aes = Path(folder_paths.get_folder_paths("aesthetic")[0])
    ada = Path(folder_paths.get_folder_paths("style_adapters")[0])
    sty = Path(folder_paths.get_output_directory()) / ST.STYLE_OUTPUT_SUBDIR
    for d in (sal, aes, ada, sty):
        d.mkdir(parents=True, exist_ok=True)
    pool = PM.build_poolnet_files(str(tmp_path_factory.getbasetemp() / "poolnet_models"))
    if not (sal / POOLNET).exists():
        os.symlink(pool["centre"], sal / POOLNET)
    made.append(sal / POOLNET)
    src = tmp_path_factory.mktemp("mm-aesthetic")
    hf = FX.build_hf_predictor(str(src / HF), layout="linear", seed=11)
    if not (aes / HF).exists():
        os.symlink(hf, aes / HF)
    made.append(aes / HF)
    FX.save_head(str(aes / HEAD), "relu", in_dim=FX.TINY_CLIP["projection_dim"], seed=12)
    made.append(aes / HEAD)
    torch.manual_seed(0)
    adapter = S.StyleAdapter(context_dim=768, feature_size=8)
    for p in adapter.parameters():
        torch.nn.init.normal_(p, std=0.05)
    S.save_adapter(adapter, ada / ADAPTER)
    made.append(ada / ADAPTER)
    g = torch.Generator().manual_seed(3)
    style = S.StyleStats(mu=torch.randn(4, 8, 8, generator=g), sigma=torch.rand(4, 8, 8, generator=g) + 0.1,
                         channel_mean=torch.randn(4, generator=g), channel_std=torch.rand(4, generator=g) + 0.5,
                         count=2, resolution=64, name="mm")
    (sty / STYLE).parent.mkdir(parents=True, exist_ok=True)
    S.save_style(style, sty / STYLE)
    made.append(sty / STYLE)
    _forget_file_lists()
    yield types.SimpleNamespace(M=M, A=A, ST=ST, sal=sal, aes=aes, adapter=adapter, style=style, made=made)
    for p in made:
        if p.is_symlink() or p.exists():
            p.unlink()
    M._CACHE.clear()
    A._CACHE.clear()
    ST._ADAPTERS.clear()
    _forget_file_lists()


def _forget_file_lists():
    import folder_paths
    cache = getattr(folder_paths, "filename_list_cache", None)
    if isinstance(cache, dict):
        for k in ("saliency", "aesthetic", "style_adapters"):
            cache.pop(k, None)


def _loaded():
    """The torch modules ComfyUI's model management holds, one per current_loaded_models entry."""
    import comfy.model_management as mm
    return [lm.model.model for lm in mm.current_loaded_models if lm.model is not None]


def _entries(module):
    """How many current_loaded_models entries manage `module` (itself or as part of the loaded model)."""
    return sum(1 for m in _loaded() if any(x is module for x in m.modules()))


def _remove(M, model, image):
    return M.AtelierRemoveBackground().remove(model, image, background="#FFFFFF", alpha_mode="soft", threshold=0.5,
                                              grow_shrink=0, feather=0.0, refine_edges="none", refine_radius=0,
                                              max_side=1024, small_input="upscale")


def _score(A, model, images, clip_vision=None):
    return A.AtelierAestheticScorer().score([model], [images], None if clip_vision is None else [clip_vision])


def _run_both(env, image, images):
    sal = env.M.AtelierSaliencyLoader().load(POOLNET)[0]
    aes = env.A.AtelierAestheticLoader().load(HF)[0]
    out = _remove(env.M, sal, image)
    res = _score(env.A, aes, images)
    return sal, aes, out, res["result"][0]


def test_poolnet_and_aesthetic_clip_are_loaded_listed_once_and_freed(env):
    import comfy.model_management as mm
    image = torch.full((2, 128, 160, 3), 0.97)
    image[:, 32:96, 40:120] = torch.tensor([0.8, 0.3, 0.1])
    images = FX.sample_images(3, 72, 96, seed=4)

    sal, aes, out, scores = _run_both(env, image, images)
    assert sal.kind == "poolnet" and aes.has_clip
    assert _entries(sal.net) == 1 and _entries(aes.clip) == 1 and _entries(aes.head) == 1
    assert any(m is sal.net for m in _loaded())  # PoolNet is the patcher's .model itself
    device = mm.get_torch_device()
    for module in (sal.net, aes.clip, aes.head):
        assert all(p.device.type == device.type for p in module.parameters())
    assert float(out[1][:, 64, 80].min()) > 0.9 and float(out[1][:, 2, 2].max()) < 0.1  # the product is found
    held = [lm.model for lm in mm.current_loaded_models]

    # a second run (same cached models, same patchers) adds no entry and gives the same results
    sal2, aes2, out2, scores2 = _run_both(env, image, images)
    assert sal2 is sal and aes2 is aes
    assert _entries(sal.net) == 1 and _entries(aes.clip) == 1
    assert all(any(lm.model is p for lm in mm.current_loaded_models) for p in held if p is not None)
    assert torch.equal(out[0], out2[0]) and scores == scores2

    # memory pressure (what load_models_gpu does for another model): both are unloaded
    mm.free_memory(1e30, device)
    assert _entries(sal.net) == 0 and _entries(aes.clip) == 0

    # loaded again on the next run, then freed by unload_all_models (POST /free {"unload_models": true})
    _, _, out3, scores3 = _run_both(env, image, images)
    assert _entries(sal.net) == 1 and _entries(aes.clip) == 1
    assert torch.equal(out[0], out3[0]) and scores == scores3
    mm.unload_all_models()
    assert _entries(sal.net) == 0 and _entries(aes.clip) == 0 and _entries(aes.head) == 0
    offload = {mm.unet_offload_device().type, mm.text_encoder_offload_device().type}
    assert all(p.device.type in offload for m in (sal.net, aes.clip) for p in m.parameters())


def test_comfy_clip_vision_runs_under_its_own_patcher(env, tmp_path):
    import comfy.clip_vision
    import comfy.model_management as mm
    cfg = FX.comfy_clip_vision_config(str(tmp_path / "mm_clip_vision.json"))
    cv = comfy.clip_vision.ClipVisionModel(cfg)
    cv.load_sd(FX.clip_vision_state_dict(str(env.aes / HF)))
    head = env.A.AtelierAestheticLoader().load(HEAD)[0]
    assert not head.has_clip
    res = _score(env.A, head, FX.sample_images(2, 64, 64, seed=5), cv)
    assert len(res["result"][0]) == 2
    assert sum(1 for lm in mm.current_loaded_models if lm.model is cv.patcher) == 1
    mm.unload_all_models()
    assert not any(lm.model is cv.patcher for lm in mm.current_loaded_models)


@pytest.fixture
def reads(monkeypatch):
    """Record every comfy.utils.load_torch_file call (path, safe_load) and let it load."""
    import comfy.utils
    seen = []
    original = comfy.utils.load_torch_file

    @functools.wraps(original)
    def recording(ckpt, *args, **kwargs):
        seen.append((os.path.realpath(ckpt), kwargs.get("safe_load", args[0] if args else False)))
        return original(ckpt, *args, **kwargs)

    monkeypatch.setattr(comfy.utils, "load_torch_file", recording)
    return seen


def test_every_weight_file_is_read_by_comfy_load_torch_file(env, reads):
    env.M._CACHE.clear()
    env.A._CACHE.clear()
    env.ST._ADAPTERS.clear()
    sal = env.M.AtelierSaliencyLoader().load(POOLNET)[0]
    aes = env.A.AtelierAestheticLoader().load(HF)[0]
    head = env.A.AtelierAestheticLoader().load(HEAD)[0]
    adapter = env.ST.AtelierStyleAdapterLoader().load(ADAPTER)[0]
    style = env.ST.AtelierStyleLoad().load(STYLE)[0]
    want = {os.path.realpath(env.sal / POOLNET), os.path.realpath(env.aes / HF / "model.safetensors"),
            os.path.realpath(env.aes / HEAD), os.path.realpath(env.made[3]), os.path.realpath(env.made[4])}
    assert {p for p, _ in reads} == want and all(safe for _, safe in reads)
    # and what was read is the model: strict PoolNet keys, the adapter's config from the metadata, a bit-exact style
    assert set(sal.net.state_dict()) >= set(PM.official_layout())
    assert aes.has_clip and head.head.layout == "v2_relu"
    assert adapter.config == env.adapter.config
    for k, v in env.adapter.state_dict().items():
        assert torch.equal(adapter.state_dict()[k], v), k
    for k in ("mu", "sigma", "channel_mean", "channel_std"):
        assert torch.equal(getattr(style, k), getattr(env.style, k)), k
    assert style.name == "mm" and style.resolution == 64


def test_code_executing_pickle_is_refused_through_comfy_loader(env, reads, tmp_path):
    marker = tmp_path / "pwned"
    for folder, name in ((env.sal, EVIL), (env.aes, EVIL_HEAD)):
        torch.save({"base.resnet.conv1.weight": torch.zeros(1), "x": _WritesFile(str(marker))}, folder / name)
        env.made.append(folder / name)
    _forget_file_lists()
    with pytest.raises(AtelierError, match="could execute code") as e:
        env.M.AtelierSaliencyLoader().load(EVIL)
    assert "[Atelier Saliency Loader]" in str(e.value)
    with pytest.raises(AtelierError, match="could not read head file") as e:
        env.A.AtelierAestheticLoader().load(EVIL_HEAD)
    assert "[Atelier Aesthetic Loader]" in str(e.value) and "weights_only" in str(e.value)
    assert not marker.exists()
    assert {os.path.realpath(env.sal / EVIL), os.path.realpath(env.aes / EVIL_HEAD)} <= {p for p, _ in reads}
    PM.save_malicious_pth(str(env.sal / EVIL))  # the fixture's os.system payload too
    with pytest.raises(AtelierError, match="could execute code"):
        env.M.AtelierSaliencyLoader().load(EVIL)


def test_a_model_policy_refusal_reaches_the_user_as_such(env, monkeypatch):
    """Newest ComfyUI's load_torch_file raises app.governance.ModelNotPermittedError (a RuntimeError) for a
    file its organization's policy does not list; the node says so instead of calling the file corrupt."""
    import comfy.utils

    class ModelNotPermittedError(RuntimeError):
        pass

    governance = types.ModuleType("app.governance")
    governance.ModelNotPermittedError = ModelNotPermittedError
    monkeypatch.setitem(sys.modules, "app.governance", governance)

    def refuse(ckpt, *args, **kwargs):
        raise ModelNotPermittedError(f"Model '{os.path.basename(ckpt)}' is not permitted by your organization's policy.")

    monkeypatch.setattr(comfy.utils, "load_torch_file", refuse)
    env.M._CACHE.clear()
    env.ST._ADAPTERS.clear()
    for load, name, node in ((env.M.AtelierSaliencyLoader().load, POOLNET, "Atelier Saliency Loader"),
                             (env.ST.AtelierStyleAdapterLoader().load, ADAPTER, "Atelier Style Adapter Loader")):
        with pytest.raises(AtelierError) as e:
            load(name)
        msg = str(e.value)
        assert f"[{node}]" in msg and f"Model '{name}' is not permitted by your organization's policy" in msg, msg
        assert "administrator" in msg and "corrupt" not in msg and "truncated" not in msg, msg
