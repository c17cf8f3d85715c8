"""A user preset file nested thousands of levels deep, or huge, never takes the prompt nodes out of
/object_info: it is named and skipped, the others load."""
from __future__ import annotations

import logging

import pytest


@pytest.fixture(scope="module")
def nodes(comfy):
    from comfyui_atelier.nodes import prompt as nodes_prompt
    return nodes_prompt


def test_deep_and_huge_user_presets_are_skipped(nodes, caplog):
    from comfyui_atelier.core import presets as P
    d = nodes.user_preset_dir()
    d.mkdir(parents=True, exist_ok=True)
    deep, huge, mine = d / "zz_deep.json", d / "zz_huge.json", d / "zz_mine.json"
    try:
        deep.write_text("[" * 3000 + "]" * 3000, encoding="utf-8")
        huge.write_text('{"name": "huge", "positive": "' + "y" * (P.MAX_PRESET_FILE_BYTES + 1) + '"}', encoding="utf-8")
        mine.write_text('{"name": "zz mine", "positive": "matte ceramic"}', encoding="utf-8")
        with caplog.at_level(logging.WARNING, logger="atelier"):
            for cls in (nodes.AtelierSystemPrompt, nodes.AtelierSystemPromptEncode):
                names = cls.INPUT_TYPES()["required"]["preset"][0]
                assert "zz mine" in names and "e-commerce white background" in names and "huge" not in names
        logged = " ".join(r.getMessage() for r in caplog.records)
        assert str(deep) in logged and str(huge) in logged
        msg = nodes.AtelierSystemPrompt.VALIDATE_INPUTS(preset="huge")
        assert isinstance(msg, str) and "zz_huge.json" in msg and "zz_deep.json" in msg
        out = nodes.AtelierSystemPrompt().run("a mug", "zz mine", "preset default", "")
        assert "matte ceramic" in out["result"][0] and "a mug" in out["result"][0]
        assert "zz_deep.json" in out["result"][2]
    finally:
        for p in (deep, huge, mine):
            p.unlink(missing_ok=True)
