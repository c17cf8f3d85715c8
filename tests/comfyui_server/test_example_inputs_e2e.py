"""A real ComfyUI server with the pack in custom_nodes offers the shipped example inputs in Load Image.

The server runs with --input-directory pointing at a fresh folder that already holds a user's file
named like one of the examples: after start-up Load Image (GET /object_info/LoadImage) lists every
example input, the copies are byte-identical, and the user's file is untouched. Early-2024 ComfyUI
applies --input-directory only after loading custom nodes, so this also checks the pack copies into the
folder the server really uses.
"""
from __future__ import annotations

from comfyui_atelier.client import runtime

EXAMPLES = runtime.PACK_DIR / "example_inputs"
SHIPPED = sorted(p.name for p in EXAMPLES.glob("*.png"))


def _combo_options(spec) -> list[str]:
    """The option list of a combo input in /object_info (classic [[...], {...}] or ["COMBO", {"options"}])."""
    if isinstance(spec[0], list):
        return spec[0]
    return spec[1]["options"]


def test_load_image_lists_the_example_inputs_after_start_up(comfy_workspace, tmp_path, monkeypatch, start_comfy):
    monkeypatch.delenv("ATELIER_NO_EXAMPLE_INPUTS", raising=False)
    assert len(SHIPPED) >= 5
    inp = tmp_path / "their_input"
    inp.mkdir()
    users = inp / "style07_ref_2.png"
    users.write_bytes(b"not the example")
    server = start_comfy(comfy_workspace, extra_args=["--input-directory", str(inp)])
    try:
        info = server.get_json("/object_info/LoadImage")
        log = server.log_tail(20000)
    finally:
        server.stop()
    options = _combo_options(info["LoadImage"]["input"]["required"]["image"])
    assert set(SHIPPED) <= set(options), (options, log)
    for name in SHIPPED:
        if name != users.name:
            assert (inp / name).read_bytes() == (EXAMPLES / name).read_bytes(), name
    assert users.read_bytes() == b"not the example"
    assert not list(inp.glob("*.tmp"))
    assert "[Atelier] copied example inputs" in log and str(inp) in log
