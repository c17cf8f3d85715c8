"""BLIP captioning plumbing on a tiny random BLIP built at test time (transformers classes, save_pretrained):
loading from the folder, batches equal one-by-one runs (each caption stays with its image), greedy
determinism, the conditional prompt, max_new_tokens, strip_prompt, and refusals of wrong folders."""
from __future__ import annotations

import json

import numpy as np
import pytest

from comfyui_atelier.core import captioning as cap
from comfyui_atelier.core.errors import AtelierError
from tests.fixtures import blip_models as BM

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0), (128, 60, 200), (20, 200, 90)]


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    return BM.build_blip(tmp_path_factory.mktemp("captioners") / "tiny-blip")


@pytest.fixture(scope="module")
def captioner(blip_dir):
    return cap.load_captioner(str(blip_dir))


def images(n=len(COLOURS)):
    return [np.full((40 + 3 * i, 50, 3), c, np.uint8) for i, c in enumerate(COLOURS[:n])]


def test_folder_layout_is_the_published_one(blip_dir):
    cfg = json.loads((blip_dir / "config.json").read_text())
    assert cfg["model_type"] == "blip" and cfg["architectures"] == ["BlipForConditionalGeneration"]
    assert (blip_dir / "model.safetensors").is_file() and cap.is_captioner_dir(str(blip_dir))


def test_batches_give_the_same_captions_as_single_images_and_runs_repeat(captioner):
    imgs = images(5)
    one_by_one = [captioner.caption([im], max_new_tokens=6)[0] for im in imgs]
    seen = []
    batched = captioner.caption(imgs, max_new_tokens=6, batch_size=3, progress=lambda d, n: seen.append((d, n)))
    assert batched == one_by_one
    assert len(set(batched)) >= 2  # the tiny model does look at the pixels: captions differ between images
    assert captioner.caption(imgs, max_new_tokens=6, batch_size=5) == batched  # greedy: deterministic
    assert seen == [(3, 5), (5, 5)]


def test_conditional_prompt_max_new_tokens_and_strip_prompt(captioner):
    imgs = images(4)
    tok = captioner.processor.tokenizer
    cond = captioner.caption(imgs, prompt="a keyboard skin of", max_new_tokens=5)
    assert all(c.startswith("a keyboard skin of") for c in cond)
    for c in cond:  # at most 5 new word pieces after the prompt (all vocab entries are whole words)
        assert len(tok.tokenize(c)) <= len(tok.tokenize("a keyboard skin of")) + 5
    stripped = captioner.caption(imgs, prompt="a keyboard skin of", max_new_tokens=5, strip_prompt=True)
    assert stripped == [c[len("a keyboard skin of"):].strip() for c in cond]
    short = captioner.caption(imgs, max_new_tokens=1)
    assert all(len(tok.tokenize(c)) <= 1 for c in short)
    with pytest.raises(AtelierError, match="max_new_tokens"):
        captioner.caption(imgs, max_new_tokens=0)


def test_wrong_folders_are_refused_with_the_download_step(tmp_path, blip_dir):
    with pytest.raises(AtelierError, match="atelier models download blip-image-captioning-large"):
        cap.load_captioner(str(tmp_path))
    other = tmp_path / "clip"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    (other / "model.safetensors").write_bytes((blip_dir / "model.safetensors").read_bytes())
    with pytest.raises(AtelierError, match="'clip_vision_model' model, not BLIP"):
        cap.load_captioner(str(other))
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in blip_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(AtelierError, match="could not read 'model.safetensors'"):
        cap.load_captioner(str(broken))
