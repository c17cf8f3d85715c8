"""ControlNet trainer (`atelier train-controlnet`): key layouts, data checks, a few CPU steps on tiny
diffusers models (SD-shaped and SDXL-shaped), resume, the CLI. ComfyUI loading is tests/comfyui_server."""
import json

import pytest
import torch

pytest.importorskip("diffusers")

from safetensors.torch import load_file  # noqa: E402

from comfyui_atelier.client import cli, demo_models  # noqa: E402
from comfyui_atelier.core import controlnet_convert as CC  # noqa: E402
from comfyui_atelier.core import controlnet_train as T  # noqa: E402
from comfyui_atelier.core.errors import AtelierError  # noqa: E402
from tests.fixtures import diffusers_models as DM  # noqa: E402
from tests.fixtures import style_models as SM  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return DM.write_controlnet_dataset(tmp_path_factory.mktemp("cn-data"), n=3)


@pytest.fixture(scope="module")
def small_sd(tmp_path_factory):
    """A small SD-shaped diffusers folder (32-channel UNet, two levels): fast CPU steps."""
    d = tmp_path_factory.mktemp("small-sd")
    return SM.save_diffusers_folder(SM.tiny_diffusers_components(d / "_tok"), d / "model")


@pytest.fixture(scope="module")
def sd15_unet():
    """A diffusers UNet with the tiny SD1.5 checkpoint's architecture (the e2e ControlNet's shapes)."""
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(320,), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)


def _cfg(data, out, model, **kw):
    base = dict(data=str(data), output=str(out), model=str(model), from_unet=True, steps=4, resolution=32,
                lr=1e-3, checkpoint_every=2, device="cpu", progress=False)
    base.update(kw)
    return T.ControlNetTrainConfig(**base)


# ----------------------------------------------------------------------------------------
# key layouts
# ----------------------------------------------------------------------------------------
def _tagged(keys):
    """A state dict whose every value is its own object, so a mapping that swaps two keys is seen."""
    return {k: torch.tensor([i]) for i, k in enumerate(keys)}


def test_ldm_to_diffusers_to_ldm_is_the_identity_sd15():
    sd = _tagged(demo_models.controlnet_spec())      # control_model.* keys, lllyasviel layout
    back = CC.diffusers_to_ldm(CC.ldm_to_diffusers(sd))
    assert back.keys() == sd.keys()
    assert all(back[k] is sd[k] for k in sd)
    bare = {k[len("control_model."):]: v for k, v in sd.items()}   # bare keys (no prefix) read the same
    assert CC.ldm_to_diffusers(bare).keys() == CC.ldm_to_diffusers(sd).keys()
    assert CC.diffusers_to_ldm(CC.ldm_to_diffusers(bare), prefix="").keys() == bare.keys()


def test_layouts_match_diffusers_controlnet_names_and_shapes(sd15_unet):
    from diffusers import ControlNetModel
    net = ControlNetModel.from_unet(sd15_unet)
    own = net.state_dict()
    spec = demo_models.controlnet_spec()
    mapped = CC.ldm_to_diffusers(spec)   # values are the shapes
    assert mapped.keys() == own.keys()
    assert all(tuple(mapped[k]) == tuple(own[k].shape) for k in own)
    assert CC.diffusers_to_ldm(own).keys() == spec.keys()


def test_sdxl_layout_round_trip_and_label_emb(tmp_path):
    from diffusers import ControlNetModel
    net = ControlNetModel.from_unet(DM.sdxl_components(tmp_path)["unet"])
    sd = _tagged(net.state_dict())
    ldm = CC.diffusers_to_ldm(sd)
    assert {"control_model.label_emb.0.0.weight", "control_model.label_emb.0.2.bias",
            "control_model.input_blocks.2.0.op.weight", "control_model.input_blocks.3.1.proj_in.weight",
            "control_model.middle_block.2.out_layers.3.weight"} <= ldm.keys()
    back = CC.ldm_to_diffusers(ldm)
    assert back.keys() == sd.keys() and all(back[k] is sd[k] for k in sd)
    again = CC.diffusers_to_ldm(back)
    assert again.keys() == ldm.keys() and all(again[k] is ldm[k] for k in ldm)


def test_not_a_controlnet_is_refused():
    with pytest.raises(AtelierError, match="not a ControlNet"):
        CC.to_diffusers({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)})
    with pytest.raises(AtelierError, match="input_blocks.1.7.x. is not part of the ldm ControlNet layout"):
        CC.ldm_to_diffusers({"zero_convs.0.0.weight": 1, "input_blocks.1.7.x": 2})


def test_single_file_ldm_controlnet_loads_and_exports_unchanged(tmp_path, sd15_unet):
    """The tiny lllyasviel-layout ControlNet (fp16) -> diffusers ControlNetModel -> exported file: same tensors."""
    src = demo_models.build_controlnet(tmp_path / "cn.safetensors")
    net = T.load_controlnet(src, sd15_unet)
    orig = load_file(str(src))
    out = load_file(str(T.export_single_file(net, tmp_path / "out.safetensors", "fp16")))
    assert out.keys() == orig.keys()
    assert all(torch.equal(out[k], orig[k]) for k in orig)
    # bare keys (no control_model. prefix) load the same
    from safetensors.torch import save_file
    save_file({k[len("control_model."):]: v for k, v in orig.items()}, str(tmp_path / "bare.safetensors"))
    bare = T.load_controlnet(tmp_path / "bare.safetensors", sd15_unet)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), bare.state_dict().values()))


def test_controlnet_of_another_architecture_is_refused(tmp_path):
    src = demo_models.build_controlnet(tmp_path / "cn.safetensors")
    small_unet = SM.tiny_diffusers_components(tmp_path)["unet"]
    with pytest.raises(AtelierError, match="does not fit this base model") as e:
        T.load_controlnet(src, small_unet)
    assert "--from-unet" in str(e.value)


# ----------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------
def test_dataset_is_read_by_id(data):
    recs = T.read_dataset(data)
    assert [r.id for r in recs] == ["item000", "item001", "item002"]
    assert all(r.image.name == f"{r.id}.png" and r.conditioning_image.name == f"{r.id}.png" for r in recs)
    assert recs[1].text.startswith("a pattern number 1") and recs[1].line == 2


def _write_jsonl(folder, lines):
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_malformed_train_jsonl_names_line_and_id(tmp_path):
    d = DM.write_controlnet_dataset(tmp_path / "d", n=3)
    good = (d / "train.jsonl").read_text().splitlines()
    (d / "conditioning" / "item001.png").unlink()
    with pytest.raises(AtelierError) as e:
        T.read_dataset(d)
    msg = str(e.value)
    assert "line 2 (id 'item001')" in msg and "conditioning/item001.png" in msg and "does not exist" in msg
    assert "item000" not in msg and "item002" not in msg    # nothing shifts to a neighbour
    cases = {
        "not valid JSON": [good[0], "{not json", good[2]],
        "id 'item000' repeats line 1": [good[0], good[0]],
        "missing or not text: conditioning_image": [json.dumps({"id": "a", "text": "t", "image": "images/item000.png"})],
        "no 'id'": [json.dumps({"text": "t", "image": "images/item000.png", "conditioning_image": "x.png"})],
        "is not a relative path inside": [json.dumps({"id": "a", "text": "t", "image": "../escape.png",
                                                      "conditioning_image": "conditioning/item000.png"})],
        "no records": [""],
    }
    for expected, lines in cases.items():
        with pytest.raises(AtelierError, match=expected):
            T.read_dataset(_write_jsonl(d, lines))
    with pytest.raises(AtelierError, match="no training data"):
        T.read_dataset(tmp_path / "nowhere")


def test_the_dataset_export_is_what_the_trainer_reads(tmp_path, small_sd):
    """core.dataset_prep's ControlNet export (keyed by id) -> read_dataset -> one training step."""
    from comfyui_atelier.core import dataset_prep as DP
    items = []
    for i, rid in enumerate(("b-second", "a-first")):
        img, cond = DM.control_pair(300 + i, 48)
        items.append(DP.Item(id=rid, image=img, caption=f"caption of {rid}", conditioning=cond))
    out = tmp_path / "export"
    DP.export_dataset(items, str(out), "controlnet")
    recs = T.read_dataset(out)
    assert [(r.id, r.text) for r in recs] == [("a-first", "caption of a-first"), ("b-second", "caption of b-second")]
    res = T.train_controlnet(_cfg(out, tmp_path / "o", small_sd, steps=1, checkpoint_every=0))
    assert len(res["losses"]) == 1


# ----------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------
def test_sdxl_steps_lower_the_loss_on_a_fixed_batch(tmp_path, data, capsys):
    """Tiny SDXL-shaped base (text_time added conditioning, two text encoders), ControlNet from the UNet."""
    base = DM.sdxl_folder(tmp_path / "xl")
    res = T.train_controlnet(_cfg(data, tmp_path / "out", base, steps=5, fixed_batch=True, checkpoint_every=0))
    losses = res["losses"]
    with capsys.disabled():
        print("\nSDXL-shaped ControlNet, fixed batch:", {s: round(v, 4) for s, v in res["history"]},
              f"{res['seconds_per_step']:.2f} s/step")
    assert len(losses) == 5 and losses[-1] < 0.9 * losses[0]
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 3
    f = load_file(str(res["controlnet"]))
    assert "control_model.label_emb.0.0.weight" in f and f["control_model.zero_convs.0.0.weight"].dtype == torch.float16
    assert torch.count_nonzero(f["control_model.zero_convs.0.0.weight"]) > 0  # moved off the zero init
    assert json.loads((tmp_path / "out" / "controlnet_losses.json").read_text()) == \
        {str(s): v for s, v in res["history"]}


def test_resume_reproduces_the_uninterrupted_run(tmp_path, data, small_sd):
    full = T.train_controlnet(_cfg(data, tmp_path / "a", small_sd, batch_size=2))
    assert [p.rsplit("/", 1)[-1] for p in full["checkpoints"]] == ["step-000002", "step-000004"]
    T.train_controlnet(_cfg(data, tmp_path / "b", small_sd, batch_size=2, steps=2))
    resumed = T.train_controlnet(_cfg(data, tmp_path / "b", small_sd, batch_size=2, resume="latest"))
    assert resumed["step"] == 4 and len(resumed["losses"]) == 2
    assert resumed["losses"] == pytest.approx(full["losses"][2:], rel=0, abs=1e-6)
    assert [s for s, _ in resumed["history"]] == [1, 2, 3, 4]
    a, b = load_file(str(full["controlnet"])), load_file(str(resumed["controlnet"]))
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-3) for k in a)
    # resuming on other data would not continue that run: refused
    other = DM.write_controlnet_dataset(tmp_path / "other", n=2)
    with pytest.raises(AtelierError, match="other data"):
        T.train_controlnet(_cfg(other, tmp_path / "b", small_sd, batch_size=2, steps=6, resume="latest"))


def test_gradient_checkpointing_gives_the_same_step(tmp_path, data, small_sd):
    a = T.train_controlnet(_cfg(data, tmp_path / "a", small_sd, steps=1, checkpoint_every=0))
    b = T.train_controlnet(_cfg(data, tmp_path / "b", small_sd, steps=1, checkpoint_every=0, gradient_checkpointing=True))
    assert b["losses"] == pytest.approx(a["losses"], abs=1e-5)


def test_bf16_on_cpu_runs_and_fp16_on_cpu_is_refused(tmp_path, data, small_sd):
    res = T.train_controlnet(_cfg(data, tmp_path / "a", small_sd, steps=1, precision="bf16", checkpoint_every=0))
    assert len(res["losses"]) == 1 and torch.isfinite(torch.tensor(res["losses"])).all()
    with pytest.raises(AtelierError, match="fp16 mixed precision needs a CUDA device"):
        T.train_controlnet(_cfg(data, tmp_path / "b", small_sd, steps=1, precision="fp16"))


# ----------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------
def test_cli_trains_and_reports_errors_with_exit_2(tmp_path, data, small_sd, capsys):
    rc = cli.main(["train-controlnet", str(data), "--model", str(small_sd), "--from-unet", "-o", str(tmp_path / "o"),
                   "--steps", "1", "--resolution", "32", "--device", "cpu", "--name", "mine", "--save-diffusers"])
    out = capsys.readouterr().out
    assert rc == 0 and "controlnet:" in out and "final loss:" in out
    assert (tmp_path / "o" / "mine.safetensors").is_file() and (tmp_path / "o" / "mine_diffusers" / "config.json").is_file()
    # it goes on from its own diffusers folder, its diffusers-layout weights file and its exported ldm file
    for start in ("mine_diffusers", "mine_diffusers/diffusion_pytorch_model.safetensors", "mine.safetensors"):
        rc = cli.main(["train-controlnet", str(data), "--model", str(small_sd), "--controlnet", str(tmp_path / "o" / start),
                       "-o", str(tmp_path / "o-next"), "--steps", "1", "--resolution", "32", "--device", "cpu"])
        assert rc == 0, start
    assert "final loss:" in capsys.readouterr().out
    (tmp_path / "bad").mkdir()
    bad = _write_jsonl(tmp_path / "bad", ['{"id": "x", "text": "t"}'])
    rc = cli.main(["train-controlnet", str(bad), "--model", str(small_sd), "--from-unet", "-o", str(tmp_path / "o2"),
                   "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "train.jsonl line 1 (id 'x')" in err and "Traceback" not in err
    rc = cli.main(["train-controlnet", str(data), "--model", str(tmp_path / "no-model"), "--from-unet",
                   "-o", str(tmp_path / "o3"), "--device", "cpu"])
    assert rc == 2 and "is not a diffusers model folder" in capsys.readouterr().err


# The parser with torch blocked: tests/no_comfyui/test_client_cli.py (its command list has train-controlnet).
