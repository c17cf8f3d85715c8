"""Kolors ControlNet in a real in-process ComfyUI (both runtimes): a tiny Kolors ControlNet in the
published diffusers layout (ControlNetModel with encoder_hid_proj "text_proj" and the "text_time"
add embedding) through Atelier Kolors ControlNet Loader, against diffusers' ControlNetModel on the
same weights and inputs (down and mid residuals, max |d| <= 1e-4, fp32; the context projected by
the ControlNet's own encoder_hid_proj as Kwai-Kolors' kolors/models/controlnet.py does), then ComfyUI's own
ControlNetApply + KSampler with the Kolors MODEL."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.fixtures import kolors_models as KM

pytest.importorskip("diffusers")

CN = "atelier-kolors-tiny-controlnet.safetensors"
UNET = "atelier-kolors-cn-unet.safetensors"


@pytest.fixture(scope="module")
def env(comfy):
    import folder_paths
    from safetensors.torch import save_file
    from comfyui_atelier.nodes import kolors as N
    cn_dir = Path(folder_paths.get_folder_paths("controlnet")[0])
    cn_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in KM.controlnet_state_dict().items()}, str(cn_dir / CN))
    save_file({k: v for k, v in KM.unet_state_dict().items() if k.startswith("down_blocks.")},
              str(cn_dir / "atelier-kolors-not-a-controlnet.safetensors"))
    unet_dir = Path(folder_paths.get_folder_paths([n for n in ("diffusion_models", "unet")
                                                   if n in folder_paths.folder_names_and_paths][0])[0])
    KM.build_unet(unet_dir / "kolors-cn" / UNET)
    return {"N": N}


def _flat(out):
    if isinstance(out, dict):                      # ComfyUI 0.3.64: {"output": [...], "middle": [...]}
        return list(out["output"]), out["middle"][-1]
    return list(out[:-1]), out[-1]                 # pinned runtime: a list, middle last


def test_controlnet_residuals_match_diffusers(env):
    N = env["N"]
    assert CN in N.AtelierKolorsControlNetLoader.INPUT_TYPES()["required"]["control_net_name"][0]
    (cn,) = N.AtelierKolorsControlNetLoader().load(CN)
    g = torch.Generator().manual_seed(9)
    B, h, w = 2, 8, 8
    x = torch.randn(B, 4, h, w, generator=g)
    hint = torch.rand(B, 3, h * 8, w * 8, generator=g)
    ctx = torch.randn(B, 11, KM.TEXT_HIDDEN, generator=g)
    pooled = torch.randn(B, KM.TEXT_HIDDEN, generator=g)
    t = torch.tensor([800.0, 20.0])
    time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * B)
    from comfyui_atelier.core import kolors as K
    y = torch.cat([pooled, K.time_ids_embedding(time_ids)], dim=1)
    ref = KM.controlnet_model()
    with torch.no_grad():
        # Kwai-Kolors' kolors/models/controlnet.py applies the ControlNet's own encoder_hid_proj to the
        # context first; diffusers' upstream ControlNetModel does not, so the reference projects here
        down_ref, mid_ref = ref(x, t, encoder_hidden_states=ref.encoder_hid_proj(ctx), controlnet_cond=hint,
                                                  added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
                                                  return_dict=False)
        down, mid = _flat(cn.control_model.float()(x=x, hint=hint, timesteps=t, context=ctx, y=y))
    assert len(down) == len(down_ref)
    d = max([(a - b).abs().max().item() for a, b in zip(down, down_ref)] + [(mid - mid_ref).abs().max().item()])
    print(f"Kolors ControlNet parity (ComfyUI cldm + projection vs diffusers): max|d| {d:.2e}")
    assert d <= 1e-4 and mid_ref.abs().max() > 1e-2


def test_apply_controlnet_and_sample(env):
    import nodes
    N = env["N"]
    (model,) = N.AtelierKolorsUNetLoader().load(f"kolors-cn/{UNET}", "fp32")
    (cn,) = N.AtelierKolorsControlNetLoader().load(CN)
    g = torch.Generator().manual_seed(1)
    cond = [[torch.randn(1, 256, KM.TEXT_HIDDEN, generator=g), {"pooled_output": torch.randn(1, KM.TEXT_HIDDEN, generator=g)}]]
    neg = [[torch.zeros(1, 256, KM.TEXT_HIDDEN), {"pooled_output": torch.zeros(1, KM.TEXT_HIDDEN)}]]
    image = torch.zeros(1, 64, 64, 3)
    image[:, 16:48, 16:48, :] = 1.0
    (controlled,) = nodes.ControlNetApply().apply_controlnet(cond, cn, image, 1.0)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    plain = nodes.common_ksampler(model, 3, 2, 4.0, "euler", "normal", cond, neg, latent)[0]["samples"]
    with_cn = nodes.common_ksampler(model, 3, 2, 4.0, "euler", "normal", controlled, neg, latent)[0]["samples"]
    assert torch.isfinite(with_cn).all() and with_cn.shape == (1, 4, 8, 8)
    assert (with_cn - plain).abs().max() > 1e-3


def test_non_controlnet_file_is_refused(env):
    from comfyui_atelier.core.errors import AtelierError
    with pytest.raises(AtelierError) as e:
        env["N"].AtelierKolorsControlNetLoader().load("atelier-kolors-not-a-controlnet.safetensors")
    assert "Atelier Kolors ControlNet Loader" in str(e.value) and "control_net_name" in str(e.value)
