"""LoRA trainer (core/lora_train.py): a few CPU steps on tiny SD1.5-, SDXL- and Kolors-shaped diffusers models.

What these prove: each family's conditioning path runs (SDXL: two CLIP encoders, pooled embeds, time
ids; Kolors: encoder_hid_proj over cached ChatGLM states), the loss falls on a fixed batch, resume gives
the uninterrupted run's losses, the two learning rates apply to their own weights, and the kohya file
has the names ComfyUI maps (checked against ComfyUI's own key maps in tests/comfyui_server/test_lora_train_e2e.py).
"""
import argparse
import subprocess
import sys

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from comfyui_atelier.client import train_cli  # noqa: E402
from comfyui_atelier.core import lora_export as LE  # noqa: E402
from comfyui_atelier.core import lora_train as L  # noqa: E402
from comfyui_atelier.core import train_loop as TL  # noqa: E402
from comfyui_atelier.core.errors import AtelierError  # noqa: E402
from tests.fixtures import diffusers_models as DM  # noqa: E402
from tests.fixtures import lora_train_models as LT  # noqa: E402
from tests.fixtures import style_models as SM  # noqa: E402

BUILD = {"sd": lambda tmp: SM.tiny_diffusers_components(tmp), "sdxl": lambda tmp: DM.sdxl_components(tmp),
         "kolors": lambda tmp: LT.kolors_components(tmp)}


def _cfg(tmp_path, **kw):
    base = dict(data=str(LT.write_lora_dataset(tmp_path / "data", n=3, trigger="sks")), output=str(tmp_path / "out"),
                name="t", trigger="sks", steps=4, resolution=64, rank=4, alpha=4.0, unet_lr=1e-3,
                text_encoder_lr=1e-3, checkpoint_every=0, device="cpu", progress=False)
    base.update(kw)
    return L.LoraTrainConfig(**base)


def _lora(res):
    from safetensors.torch import load_file
    return load_file(str(res["lora"]))


@pytest.mark.parametrize("family", ["sd", "sdxl", "kolors"])
def test_loss_falls_on_a_fixed_batch_and_the_export_is_kohya(tmp_path, family, record_property):
    te = family != "kolors"
    res = L.train_lora(_cfg(tmp_path, steps=4, fixed_batch=True, train_text_encoder=te), BUILD[family](tmp_path))
    losses = res["losses"]
    record_property("losses", losses)
    record_property("seconds_per_step", res["seconds_per_step"])
    print(f"{family}: " + ", ".join(f"{i + 1}: {v:.4f}" for i, v in enumerate(losses)), f"({res['seconds_per_step']:.2f} s/step)")
    assert res["family"] == family and len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    # the same batch, noise and timesteps at every step: training must lower the loss, step after step
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert res["ids"] == ["pic00", "pic01", "pic02"]
    sd = _lora(res)
    mods = LE.kohya_modules(sd)
    prefixes = {m.split("_text_model")[0] if "_text_model_" in m else "lora_unet" for m in mods}
    assert prefixes == {"sd": {"lora_unet", "lora_te"}, "sdxl": {"lora_unet", "lora_te1", "lora_te2"},
                        "kolors": {"lora_unet"}}[family]
    for m in mods:
        down, up, alpha = sd[f"{m}.lora_down.weight"], sd[f"{m}.lora_up.weight"], sd[f"{m}.alpha"]
        assert down.shape[0] == 4 and up.shape[1] == 4 and float(alpha) == 4.0
        # every LoRA moved off PEFT's zero init, except on CLIP-L's last layer in SDXL: SDXL conditions on
        # CLIP-L's penultimate hidden state (as ComfyUI does), so that layer gets no gradient (zero delta)
        unused = family == "sdxl" and m.startswith("lora_te1_text_model_encoder_layers_1_")
        assert (torch.count_nonzero(up) == 0) == unused, m
    assert any("attn2_to_k" in m for m in mods) and any("ff_net_0_proj" in m for m in mods)
    if family == "sdxl":
        assert "lora_te2_text_model_encoder_layers_1_self_attn_out_proj" in mods
    from safetensors import safe_open
    with safe_open(str(res["lora"]), "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_dim"] == "4" and meta["atelier_family"] == family


@pytest.mark.parametrize("family", ["sdxl", "kolors"])
def test_resume_reproduces_the_losses(tmp_path, family):
    te = family != "kolors"
    full = L.train_lora(_cfg(tmp_path / "a", steps=4, train_text_encoder=te), BUILD[family](tmp_path / "a"))
    L.train_lora(_cfg(tmp_path / "b", steps=2, train_text_encoder=te), BUILD[family](tmp_path / "b"))
    resumed = L.train_lora(_cfg(tmp_path / "b", steps=4, resume="latest", train_text_encoder=te),
                           BUILD[family](tmp_path / "b"))
    assert resumed["step"] == 4 and len(resumed["losses"]) == 2
    assert resumed["losses"] == pytest.approx(full["losses"][2:], rel=1e-5, abs=1e-7)
    a, b = _lora(full), _lora(resumed)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_separate_learning_rates_apply(tmp_path):
    """Text-encoder lr 0: the TE LoRA keeps its initial weights while the UNet's move; the reverse with UNet lr 0."""
    comps = lambda n: SM.tiny_diffusers_components(tmp_path / n)  # noqa: E731
    init = _lora(L.train_lora(_cfg(tmp_path / "0", steps=0, train_text_encoder=True), comps("0")))
    te0 = _lora(L.train_lora(_cfg(tmp_path / "1", steps=3, train_text_encoder=True, text_encoder_lr=0.0), comps("1")))
    un0 = _lora(L.train_lora(_cfg(tmp_path / "2", steps=3, train_text_encoder=True, unet_lr=0.0), comps("2")))
    te_keys = [k for k in init if k.startswith("lora_te_") and "weight" in k]
    unet_keys = [k for k in init if k.startswith("lora_unet_") and "weight" in k]
    assert te_keys and unet_keys
    assert all(torch.equal(init[k], te0[k]) for k in te_keys)
    assert all(torch.equal(init[k], un0[k]) for k in unet_keys)
    assert all(torch.count_nonzero(init[k]) == 0 for k in unet_keys + te_keys if k.endswith("lora_up.weight"))
    assert sum(not torch.equal(init[k], te0[k]) for k in unet_keys) == len(unet_keys)
    assert sum(not torch.equal(init[k], un0[k]) for k in te_keys) == len(te_keys)


def test_dataset_ids_captions_and_trigger(tmp_path):
    d = LT.write_lora_dataset(tmp_path / "d", n=4, trigger="sks")
    items = list(TL.captioned_images(d, "sks"))
    assert [it.id for it in items] == ["pic00", "pic01", "pic02", "pic03"]
    # pic00: side-car with the trigger already; pic01/pic03: metadata.jsonl; trigger appended once
    assert [it.caption for it in items] == ["a pattern number 0, sks", "a pattern number 1, sks",
                                           "a pattern number 2, sks", "a pattern number 3, sks"]
    assert items[1].image.shape == (64, 72, 3)
    # ids from stems, not positions: a side-car wins over metadata, and an image without either gets ""
    (d / "images" / "pic01.txt").write_text("own caption")
    (d / "images" / "pic00.png").rename(d / "images" / "zz.png")
    (d / "images" / "pic00.txt").unlink()
    caps = {it.id: it.caption for it in TL.captioned_images(d)}
    assert caps["pic01"] == "own caption" and caps["zz"] == "" and caps["pic03"] == "a pattern number 3"


def test_bad_inputs(tmp_path):
    d = LT.write_lora_dataset(tmp_path / "d", n=2)
    from PIL import Image
    Image.new("RGB", (64, 64)).save(d / "images" / "pic00.jpg")
    with pytest.raises(AtelierError, match="share an id in .*pic00: pic00.jpg, pic00.png"):
        list(TL.captioned_images(d))
    (d / "images" / "pic00.jpg").unlink()
    (d / "images" / "metadata.jsonl").write_text('{"file_name": 3}\n')
    with pytest.raises(AtelierError, match="line 1 is not a caption record"):
        list(TL.captioned_images(d))
    with pytest.raises(AtelierError, match="not a diffusers model folder"):
        L.load_components(tmp_path)
    comps = SM.tiny_diffusers_components(tmp_path)
    with pytest.raises(AtelierError, match="looks like 'sd', not 'sdxl'"):
        L.train_lora(_cfg(tmp_path, family="sdxl"), comps)
    with pytest.raises(AtelierError, match="UNet-only"):
        L.train_lora(_cfg(tmp_path, train_text_encoder=True), LT.kolors_components(tmp_path))
    L.train_lora(_cfg(tmp_path / "r", steps=1, train_text_encoder=True), SM.tiny_diffusers_components(tmp_path / "r"))
    with pytest.raises(AtelierError, match="does not match this run"):
        L.train_lora(_cfg(tmp_path / "r", steps=2, resume="latest", rank=8, train_text_encoder=True),
                     SM.tiny_diffusers_components(tmp_path / "r"))


def test_cli_from_diffusers_folders(tmp_path, capsys):
    """`atelier train-lora` on an SDXL-shaped and a Kolors-shaped diffusers folder (the family found from the folder)."""
    from comfyui_atelier.client import cli
    data = LT.write_lora_dataset(tmp_path / "data", n=2)
    for fam, folder in (("sdxl", DM.sdxl_folder(tmp_path / "sdxl")), ("kolors", LT.kolors_folder(tmp_path / "kolors"))):
        out = tmp_path / f"out-{fam}"
        argv = ["train-lora", str(data), "--model", str(folder), "-o", str(out), "--steps", "2", "--resolution", "64",
                "--rank", "4", "--device", "cpu", "--name", fam, "--unet-lr", "1e-3", "--gradient-checkpointing",
                "--precision", "bf16"]   # bf16 applies on CUDA only: on the CPU the run says fp32
        if fam == "sdxl":
            argv += ["--train-text-encoder", "--text-encoder-lr", "1e-4"]
        assert cli.main(argv) == 0, capsys.readouterr().err
        printed = capsys.readouterr().out
        assert f"({fam}, 2 images, fp32)" in printed and "final loss" in printed
        assert (out / f"{fam}.safetensors").is_file() and (out / "checkpoints" / "step-000002").is_dir()
    rc = cli.main(["train-lora", str(data), "--model", str(tmp_path), "-o", str(tmp_path / "o"), "--device", "cpu"])
    assert rc == 2 and "atelier train-lora:" in capsys.readouterr().err


def test_cli_parser_import_is_torch_free_and_style_lr_option():
    code = ("import sys, argparse; from comfyui_atelier.client import train_cli; "
            "p = argparse.ArgumentParser(); train_cli.add_parser(p.add_subparsers()); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
    p = argparse.ArgumentParser()
    train_cli.add_parser(p.add_subparsers())
    a = p.parse_args(["train-style", "imgs", "--model", "m", "-o", "o", "--lr", "1e-4", "--text-encoder-lr", "2e-5"])
    assert train_cli.config(a).text_encoder_lr == 2e-5 and train_cli.config(a).lr == 1e-4
    a = p.parse_args(["train-lora", "data", "--model", "m", "-o", "o"])
    c = train_cli.lora_config(a)
    assert (c.rank, c.alpha, c.unet_lr, c.train_text_encoder, c.family) == (16, 4.0, 1e-4, False, "auto")


def test_reads_the_dataset_exports_lora_layout(tmp_path):
    """The dataset export's LoRA layout (core/dataset_prep.py) is what the trainer reads: ids, captions, pixels."""
    import numpy as np

    from comfyui_atelier.core import dataset_prep as DP
    pix = {rid: (SM.style_image(i, 40, 56).numpy() * 255).round().astype(np.uint8) for i, rid in enumerate(["b7", "a3"])}
    DP.export_dataset([DP.Item(rid, px, caption=f"caption of {rid}") for rid, px in pix.items()], str(tmp_path / "x"), "lora")
    items = list(TL.captioned_images(tmp_path / "x", "sks"))
    assert [(it.id, it.caption) for it in items] == [("a3", "caption of a3, sks"), ("b7", "caption of b7, sks")]
    for it in items:
        assert np.array_equal((it.image.numpy() * 255).round().astype(np.uint8), pix[it.id])
