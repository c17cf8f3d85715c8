"""Every node input naming a file stays inside the node's folders (core/confine.py), with one message
whether the name escapes by '..', by an absolute path or by a symlink, and whether or not it exists."""
from __future__ import annotations

import os

import pytest

from comfyui_atelier.core.confine import NotInFolderError
from comfyui_atelier.core.errors import AtelierError


@pytest.fixture(scope="module")
def N(comfy):
    from comfyui_atelier.nodes import style
    return style


@pytest.fixture()
def escape(N, tmp_path):
    """An outside secret, a traversal name reaching it, an absolute name, and an escaping symlink."""
    import folder_paths
    base = os.path.join(folder_paths.get_output_directory(), N.STYLE_OUTPUT_SUBDIR)
    os.makedirs(base, exist_ok=True)
    outside = tmp_path / "x"
    outside.mkdir()
    secret = outside / "secret.style.safetensors"
    secret.write_bytes(b"not really a style")
    up = "/".join([".."] * (len(os.path.realpath(base).split(os.sep)) - 1))
    link = os.path.join(base, "escape_link.style.safetensors")
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(secret, link)
    names = {
        "traversal (exists)": f"{up}{outside}/secret.style.safetensors",
        "traversal (missing)": f"{up}{outside}/nothing.style.safetensors",
        "absolute (exists)": str(secret),
        "absolute (missing)": str(outside / "nothing.style.safetensors"),
        "symlink out": "escape_link.style.safetensors",
        "missing inside": "never_saved.style.safetensors",
    }
    assert os.path.isfile(os.path.join(base, names["traversal (exists)"]))  # the name really reaches the file
    yield names
    os.unlink(link)


def _shape(msg: str, name: str) -> str:
    return msg.replace(repr(name), "<NAME>")


def test_style_load_refuses_outside_names_uniformly(N, escape):
    msgs = {}
    for what, name in escape.items():
        with pytest.raises(NotInFolderError) as ei:
            N.AtelierStyleLoad().load(name)
        msgs[what] = _shape(str(ei.value), name)
        with pytest.raises(AtelierError):
            N.find_style_file(name)
    assert len(set(msgs.values())) == 1, msgs
    msg = next(iter(msgs.values()))
    assert msg.startswith("[Atelier Style Load] input 'style_file'") and "secret" not in msg
    assert "escape_link.style.safetensors" not in N.style_files()  # not offered either


def test_style_load_validate_inputs(N, escape):
    outs = {what: N.AtelierStyleLoad.VALIDATE_INPUTS(name) for what, name in escape.items()}
    assert outs.pop("missing inside") is True  # may be saved earlier in the same queue
    assert all(isinstance(v, str) for v in outs.values()), outs
    shapes = {_shape(v, escape[w]) for w, v in outs.items()}
    assert len(shapes) == 1, shapes
    assert N.AtelierStyleLoad.VALIDATE_INPUTS("x.txt") != True  # noqa: E712  not a style file name


def test_saved_style_still_loads(N, escape):
    import torch
    from comfyui_atelier.core import style as S
    st = S.StyleStats(mu=torch.rand(4, 8, 8), sigma=torch.ones(4, 8, 8), channel_mean=torch.zeros(4),
                      channel_std=torch.ones(4), count=1, resolution=64, name="c")
    N.AtelierStyleSave().save(st, "confine/ok")
    assert N.AtelierStyleLoad.VALIDATE_INPUTS("confine/ok.style.safetensors") is True
    back = N.AtelierStyleLoad().load("confine/ok.style.safetensors")[0]
    assert torch.equal(back.mu, st.mu)


def test_model_names_are_confined(comfy, tmp_path):
    from comfyui_atelier.nodes import matting, models, style
    secret = tmp_path / "secret.safetensors"
    secret.write_bytes(b"x")
    for name in (str(secret), "../../../../../../../../" + str(secret).lstrip("/"), "../nothing.safetensors"):
        with pytest.raises(NotInFolderError, match="was not found inside the folders"):
            models.resolve_model("style_adapters", name, node="T", input="i")
        assert style.AtelierStyleAdapterLoader.VALIDATE_INPUTS(name) != True  # noqa: E712
        assert "was not found inside the folders" in str(matting.AtelierSaliencyLoader.VALIDATE_INPUTS(name))
    assert style.AtelierStyleAdapterLoader.VALIDATE_INPUTS(style.NO_ADAPTER) is True


def test_lora_names_are_confined(comfy, tmp_path):
    from comfyui_atelier.nodes import lora
    secret = tmp_path / "secret.safetensors"
    secret.write_bytes(b"x")
    for name in (str(secret), "../../" + secret.name):
        out = lora.AtelierOptionalLora.VALIDATE_INPUTS(name)
        assert isinstance(out, str) and "was not found inside the folders" in out
    assert lora.AtelierOptionalLora.VALIDATE_INPUTS(lora.NONE) is True


def test_style_save_never_writes_through_an_escaping_symlink(N, tmp_path):
    import folder_paths
    import torch
    from comfyui_atelier.core import style as S
    base = os.path.join(folder_paths.get_output_directory(), N.STYLE_OUTPUT_SUBDIR)
    os.makedirs(base, exist_ok=True)
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = os.path.join(base, "escape_dir")
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(target, link)
    st = S.StyleStats(mu=torch.rand(4, 8, 8), sigma=torch.ones(4, 8, 8), channel_mean=torch.zeros(4),
                      channel_std=torch.ones(4), count=1, resolution=64, name="c")
    try:
        for bad in ("escape_dir/x", "../x", "/tmp/x", "a/../../x"):
            with pytest.raises(AtelierError, match="not a usable style file name"):
                N.AtelierStyleSave().save(st, bad)
        assert list(target.iterdir()) == []
    finally:
        os.unlink(link)
