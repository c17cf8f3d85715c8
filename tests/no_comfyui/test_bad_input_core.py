"""Bad inputs the reliability suite found reaching a bare exception, refused by name in core and client."""
import pytest
import torch

from comfyui_atelier.client import convert
from comfyui_atelier.core import glyph, grid, layout, prompt, style
from comfyui_atelier.core.errors import AtelierError


def test_text_box_line_with_a_word_for_a_number():
    with pytest.raises(AtelierError, match=r"\[N\] input 'spec': line 2 'Hello \| 4,4,x,60': the box '4,4,x,60'"):
        glyph.parse_text_boxes("Q | 1,1,9,9\nHello | 4,4,x,60", node="N", input="spec")


@pytest.mark.parametrize("parse, arg", [(glyph.parse_text_boxes, "spec"), (layout.load_layout, "layout_json")])
def test_deeply_nested_json_is_refused_by_name(parse, arg):
    with pytest.raises(AtelierError, match=rf"\[N\] input '{arg}'.*nested more than"):
        parse("[" * 100_000, node="N", input=arg)


def test_grid_caption_of_a_million_characters_is_trimmed():
    out = grid.make_grid(torch.zeros(2, 32, 32, 3), captions=["x" * 1_200_000, "short"], font_size=10)
    assert out.shape[0] == 1 and torch.isfinite(out).all()


def test_prompt_that_is_not_text_is_refused():
    with pytest.raises(AtelierError, match=r"\[Atelier System Prompt\] input 'prompt': got dict, not text"):
        prompt.check_text({"evil": 1}, node="Atelier System Prompt", input="prompt")
    assert prompt.check_text(None) is None


def test_corrupt_style_file_says_how_to_fix(tmp_path):
    bad = tmp_path / "x.style.safetensors"
    bad.write_bytes(b"\x00not safetensors")
    with pytest.raises(AtelierError) as e:
        style.load_style(bad)
    assert "Fix:" in str(e.value) and "x.style.safetensors" in str(e.value)


def test_workflow_nested_too_deep_names_the_file(tmp_path):
    wf = tmp_path / "wf.json"
    wf.write_text('{"1": ' + "[" * 100_000)
    with pytest.raises(AtelierError, match="wf.json' is not valid JSON.*nested more than 64"):
        convert.load_json(wf)
