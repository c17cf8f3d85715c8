"""Node tests for the system prompt injector, inside a real (in-process, CPU) ComfyUI."""
import json
import logging

import pytest

from comfyui_atelier.core.errors import AtelierError


@pytest.fixture(scope="module")
def nodes(comfy):
    from comfyui_atelier.nodes import prompt as nodes_prompt
    return nodes_prompt


@pytest.fixture
def user_presets(nodes):
    """The user preset folder of the test ComfyUI; files written here are removed afterwards."""
    d = nodes.user_preset_dir()
    d.mkdir(parents=True, exist_ok=True)
    made = []

    def write(name, text):
        p = d / name
        p.write_text(text, encoding="utf-8")
        made.append(p)
        return p

    yield write
    for p in made:
        p.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def sd15_clip(comfy, tiny_sd15):
    import torch
    import nodes as comfy_nodes  # ComfyUI's own nodes.py
    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        _model, clip, _vae = comfy_nodes.CheckpointLoaderSimple().load_checkpoint(tiny_sd15["checkpoints"].name)[:3]
    return clip


def encode_run(nodes, *args):
    import torch
    with torch.inference_mode():
        return nodes.AtelierSystemPromptEncode().run(*args)


def run(nodes, **kw):
    args = dict(prompt="a red sneaker", preset="e-commerce white background", position="preset default",
                extra_negative="")
    args.update(kw)
    return nodes.AtelierSystemPrompt().run(**args)


def test_node_definitions(nodes):
    for cls_id, cls in nodes.NODE_CLASS_MAPPINGS.items():
        assert cls_id.startswith("Atelier")
        assert nodes.NODE_DISPLAY_NAME_MAPPINGS[cls_id].startswith("Atelier ")
        assert cls.CATEGORY == "atelier/prompt"
        spec = cls.INPUT_TYPES()
        for group in spec.values():
            for name, (typ, opts) in group.items():
                assert opts.get("tooltip"), f"{cls_id}.{name} has no tooltip"
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
    presets = nodes.AtelierSystemPrompt.INPUT_TYPES()["required"]["preset"][0]
    assert presets[0] == "e-commerce white background"
    assert {"style token", "keyboard skin", "general negative"} <= set(presets)
    assert nodes.user_preset_dir().parts[-3:] == ("user", "atelier", "presets")


def test_system_prompt_outputs_strings_and_report(nodes):
    out = run(nodes, prompt="a red sneaker, Pure White Background", extra_negative="laces")
    positive, negative, report = out["result"]
    assert positive.startswith("product photography, bright, high-key studio lighting")
    assert positive.endswith("a red sneaker, Pure White Background")
    assert positive.lower().count("pure white background") == 1
    assert "scuffed sole" in negative and negative.endswith("laces")
    assert out["ui"]["text"] == [report]
    assert "categories: shoes" in report
    # the real CLIP tokenizer shipped inside ComfyUI counted both sides
    assert "tokens: positive" in report and "not counted" not in report
    assert "WARNING" not in report


def test_token_window_warning_in_report_and_log(nodes, caplog):
    long_prompt = ", ".join(f"tiny detail number {i}" for i in range(30))
    with caplog.at_level(logging.WARNING, logger="atelier"):
        out = run(nodes, prompt=long_prompt)
    report = out["result"][2]
    assert "WARNING: positive prompt is" in report and "over the 75-token window" in report
    # the report quotes where the overflow starts, as the real tokenizer counts it
    from comfyui_atelier.core.prompt import token_report
    rep = token_report(out["result"][0], nodes.default_token_counter())
    assert rep.overflow.startswith("detail number 9, tiny detail number 10")  # 28 preset + 47 = 75 tokens
    assert f'("{rep.overflow[:40]}' in report
    assert any("over the 75-token window" in r.getMessage() for r in caplog.records)


def test_empty_prompt_is_preset_alone_with_warning(nodes, caplog):
    with caplog.at_level(logging.WARNING, logger="atelier"):
        out = run(nodes, prompt="  \n")
    positive, _negative, report = out["result"]
    assert positive.startswith("product photography, pure white background, bright")
    assert "prompt is empty" in report
    assert any("prompt is empty" in r.getMessage() for r in caplog.records)


def test_unknown_preset_is_a_clear_error(nodes):
    msg = nodes.AtelierSystemPrompt.VALIDATE_INPUTS(preset="no such preset")
    assert isinstance(msg, str)
    assert "unknown preset 'no such preset'" in msg and "keyboard skin" in msg and "style token" in msg
    assert nodes.AtelierSystemPrompt.VALIDATE_INPUTS(preset="keyboard skin") is True
    with pytest.raises(AtelierError, match=r"\[Atelier System Prompt\] input .preset.: unknown preset"):
        run(nodes, preset="no such preset")


def test_invalid_user_preset_file_is_named_and_others_load(nodes, user_presets, caplog):
    user_presets("mine.json", json.dumps({"name": "my mugs", "positive": "ceramic mug, studio", "position": "suffix"}))
    bad = user_presets("broken.json", '{"name": "broken", "positive": "x"')
    with caplog.at_level(logging.WARNING, logger="atelier"):
        names = nodes.AtelierSystemPrompt.INPUT_TYPES()["required"]["preset"][0]
    assert "my mugs" in names and "e-commerce white background" in names and "broken" not in names
    assert any(str(bad) in r.getMessage() and "invalid JSON" in r.getMessage() for r in caplog.records)
    out = run(nodes, prompt="a blue mug", preset="my mugs")
    assert out["result"][0] == "a blue mug, ceramic mug, studio"
    assert "broken.json" in out["result"][2]  # the report names the skipped file
    # asking for the broken preset says why it is missing
    msg = nodes.AtelierSystemPrompt.VALIDATE_INPUTS(preset="broken")
    assert "broken.json" in msg and "invalid JSON" in msg


def test_is_changed_follows_preset_files(nodes, user_presets):
    before = nodes.AtelierSystemPrompt.IS_CHANGED(prompt="x", preset="keyboard skin")
    user_presets("extra.json", json.dumps({"name": "extra", "positive": "y"}))
    assert nodes.AtelierSystemPrompt.IS_CHANGED(prompt="x", preset="keyboard skin") != before


def test_style_token_preset(nodes):
    out = run(nodes, prompt="a lighthouse at dusk", preset="style token", style_id="3")
    assert out["result"][0] == "a lighthouse at dusk, style03"
    out2 = run(nodes, prompt="style11, a cat portrait", preset="style token")
    assert out2["result"][0] == "a cat portrait, style11"
    assert "deformed face" in out2["result"][1]  # people category from 'portrait'
    with pytest.raises(AtelierError, match="style_id"):
        run(nodes, prompt="a lighthouse", preset="style token")


def test_prompt_lines(nodes):
    lines, count = nodes.AtelierPromptLines().run("page one: a fox\n\n# note\npage two: the fox sleeps\n")
    assert lines == ["page one: a fox", "page two: the fox sleeps"] and count == 2
    assert nodes.AtelierPromptLines.OUTPUT_IS_LIST == (True, False)
    with pytest.raises(AtelierError, match="no prompt lines"):
        nodes.AtelierPromptLines().run("\n# only a comment\n")


def test_encode_produces_conditioning(nodes, sd15_clip):
    out = encode_run(nodes, sd15_clip, "a red sneaker", "e-commerce white background", "preset default", "")
    pos, neg, pos_text, neg_text, report = out["result"]
    for cond in (pos, neg):
        assert isinstance(cond, list) and len(cond) == 1
        tensor, extra = cond[0]
        assert tuple(tensor.shape) == (1, 77, 768)
        assert extra["pooled_output"] is not None
    assert pos_text.startswith("product photography")
    count = nodes.clip_token_counter(sd15_clip)
    assert f"tokens: positive {count(pos_text)}/75" in report
    # the CLIP's own count agrees with the standalone tokenizer on plain text
    assert count(pos_text) == nodes.default_token_counter()(pos_text)


def test_encode_long_prompt_extra_chunks_and_warning(nodes, sd15_clip):
    long_prompt = ", ".join(f"tiny detail number {i}" for i in range(30))
    out = encode_run(nodes, sd15_clip, long_prompt, "general negative", "preset default", "")
    pos = out["result"][0]
    assert pos[0][0].shape[1] == 77 * 3  # ComfyUI encodes overflow as extra 77-token chunks
    assert "WARNING: positive prompt is" in out["result"][4]


def test_encode_without_clip_is_a_clear_error(nodes):
    with pytest.raises(AtelierError, match="clip"):
        nodes.AtelierSystemPromptEncode().run(None, "a mug", "general negative", "preset default", "")


def test_ecommerce_categories_by_head_noun_through_the_node(nodes):
    """The product's head noun picks the category: a bottle holder gets accessory negatives, not cosmetics."""
    _pos, neg, report = run(nodes, prompt="bottle holder for bike")["result"]
    assert "categories: accessories" in report
    assert "leaking product" not in neg and "floating parts" in neg
    _pos, neg, report = run(nodes, prompt="perfume bottle, studio")["result"]
    assert "categories: cosmetics" in report and "leaking product" in neg
    _pos, neg, report = run(nodes, prompt="带卡槽的手机壳，白色背景")["result"]
    assert "categories: accessories" in report and "screen glare" not in neg


def test_chinese_prompt_phrases_are_not_repeated(nodes):
    positive, _neg, report = run(nodes, prompt="红色运动鞋，pure white background、bright")["result"]
    assert positive.lower().count("pure white background") == 1 and positive.count("bright") == 1
    assert positive.endswith("红色运动鞋，pure white background、bright")
    assert "already in prompt: pure white background, bright" in report
    assert "categories: shoes" in report


def test_keyboard_skin_negative_leaves_the_legends_to_the_glyph_control(nodes):
    positive, negative, report = run(nodes, prompt="cherry blossom night sky over a neon city",
                                     preset="keyboard skin")["result"]
    assert "key legends" in positive and positive.startswith("cherry blossom night sky")
    phrases = [p.strip().lower() for p in negative.split(",")]
    for word in ("text", "key legends", "letters", "characters", "keycaps", "watermark", "signature"):
        assert word not in phrases, word
    assert "warped keys" in phrases and "misaligned keycaps" in phrases
    assert "categories: landscape" in report  # 'sky' / 'city'


def test_listing_presets_creates_no_folder_and_the_tooltip_says_where_presets_go(nodes, monkeypatch, tmp_path):
    import folder_paths
    user = tmp_path / "fresh_user"
    monkeypatch.setattr(folder_paths, "get_user_directory", lambda: str(user), raising=False)
    monkeypatch.setattr(folder_paths, "user_directory", str(user), raising=False)
    for cls in (nodes.AtelierSystemPrompt, nodes.AtelierSystemPromptEncode):
        spec = cls.INPUT_TYPES()["required"]["preset"]
        assert "e-commerce white background" in spec[0]
        assert str(user / "atelier" / "presets") in spec[1]["tooltip"]
    nodes.AtelierSystemPrompt.IS_CHANGED(preset="e-commerce white background")
    assert not user.exists()  # INPUT_TYPES / IS_CHANGED list the folder, they never make it


def test_display_names_come_from_each_class_and_errors_use_them(nodes):
    from comfyui_atelier.nodes import conditioners, glyph, style
    for mod in (conditioners, glyph, style, nodes):
        for cid, cls in mod.NODE_CLASS_MAPPINGS.items():
            assert cls.DISPLAY.startswith("Atelier ") and mod.NODE_DISPLAY_NAME_MAPPINGS[cid] == cls.DISPLAY
    assert nodes.NODE_DISPLAY_NAME_MAPPINGS == {"AtelierSystemPrompt": "Atelier System Prompt",
                                                "AtelierSystemPromptEncode": "Atelier System Prompt (encode)",
                                                "AtelierPromptLines": "Atelier Prompt Lines"}
    with pytest.raises(AtelierError, match=r"^\[Atelier Prompt Lines\] input 'text': there are no prompt lines"):
        nodes.AtelierPromptLines().run("# only a comment")
    with pytest.raises(AtelierError, match=r"^\[Atelier System Prompt \(encode\)\] input 'clip'"):
        nodes.AtelierSystemPromptEncode().run(None, "a mug", nodes.DEFAULT_PRESET, "preset default", "")
