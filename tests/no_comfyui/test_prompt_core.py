"""Core tests for the system prompt injector (no ComfyUI)."""
import json
import re

import pytest

from comfyui_atelier.client import runtime
from comfyui_atelier.core import presets as PR
from comfyui_atelier.core import prompt as P
from comfyui_atelier.core.errors import AtelierError


def words(text: str) -> int:
    """Fake counter: one token per word, commas count as tokens too (like CLIP)."""
    return len(text.replace(",", " , ").split())


@pytest.fixture(scope="module")
def shipped():
    load = PR.load_presets([PR.SHIPPED_PRESET_DIR])
    assert not load.errors, load.errors
    return load


@pytest.fixture(scope="module")
def clip_tokenizer():
    """CLIP-L's tokenizer from the ComfyUI runtime in use (pinned, or $COMFYUI_PATH): its
    comfy/sd1_tokenizer folder. Both runtimes ship it, so a missing one is a failure, not a skip."""
    try:
        root = runtime.find_comfyui()
    except runtime.RuntimeNotFound as e:
        pytest.fail(str(e))
    folder = root / "comfy" / "sd1_tokenizer"
    assert (folder / "vocab.json").is_file(), f"{runtime.describe(root)} has no comfy/sd1_tokenizer"
    import transformers  # a ComfyUI requirement: installed wherever a runtime is
    return transformers.CLIPTokenizer.from_pretrained(str(folder))


def preset(**kw):
    return PR.parse_preset({"name": "t", **kw})


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
    load = PR.load_presets([PR.SHIPPED_PRESET_DIR, tmp_path])
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
    load = PR.load_presets([PR.SHIPPED_PRESET_DIR, tmp_path, tmp_path / "missing"])
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
        PR.parse_preset(data)


def test_unknown_preset_lists_available_and_load_errors(tmp_path):
    (tmp_path / "bad.json").write_text("{nope")
    load = PR.load_presets([PR.SHIPPED_PRESET_DIR, tmp_path])
    with pytest.raises(AtelierError) as ei:
        PR.get_preset(load, "nonexistent", node="AtelierSystemPrompt")
    msg = str(ei.value)
    assert "unknown preset 'nonexistent'" in msg
    assert "keyboard skin" in msg and "general negative" in msg
    assert "bad.json" in msg


def test_signature_changes_with_files(tmp_path):
    s0 = PR.presets_signature([tmp_path])
    (tmp_path / "a.json").write_text("{}")
    assert PR.presets_signature([tmp_path]) != s0


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
            neg = P.build_negative(p, ", ".join(cat.keywords) if cat else "", "")
            assert cat is None or cat.name in neg.categories, (p.name, cat.name)
            assert count(neg.text) <= 75, (p.name, cat and cat.name, count(neg.text))


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


# ---------------------------------------------------------------- presets serve their pipelines

#: words that name text: a negative with any of them pushes the image away from the key legends the
#: keyboard-skin pipeline's glyph control draws
TEXT_LIKE = {"text", "texts", "legend", "legends", "letter", "letters", "lettering", "character", "characters",
             "glyph", "glyphs", "font", "fonts", "typography", "word", "words", "writing", "caption", "label",
             "labels", "signature", "watermark", "logo", "symbol", "symbols", "number", "numbers", "digit",
             "digits", "inscription", "title", "文字", "字"}


def test_keyboard_skin_negative_does_not_fight_the_glyph_control(shipped):
    kb = shipped.presets["keyboard skin"]
    negatives = [kb.negative] + [c.negative for c in kb.categories]
    for text in negatives:
        for phrase in P.split_phrases(text):
            bad = set(P.normalise_phrase(phrase).split()) & TEXT_LIKE
            assert not bad, f"keyboard skin negative phrase {phrase!r} names text: {bad}"
            assert not any(ch in phrase for ch in "文字"), phrase
    # nor the keys themselves (the Canny control draws them): only broken keys are negated
    assert not {"keycaps", "keys", "keyboard"} & {P.normalise_phrase(x) for x in P.split_phrases(kb.negative)}
    # what serves the pipeline stays: blur, broken key geometry, perspective
    for keep in ("blurry", "warped keys", "misaligned keycaps", "perspective view"):
        assert keep in P.split_phrases(kb.negative), keep
    # a full run: legends asked for in the positive, none negated
    r = P.build_prompts("anime girl with a katana, sunset city", kb)
    assert "key legends" in r.positive
    assert not set(re.findall(r"\w+", r.negative.lower())) & TEXT_LIKE, r.negative
    # the old negative fails the same check (so the check can fail)
    old = "keycaps, key legends, perspective view, 3d render, text, watermark, signature, blurry"
    assert any(set(P.normalise_phrase(x).split()) & TEXT_LIKE for x in P.split_phrases(old))


#: realistic product captions -> categories of the e-commerce preset (match: head)
CAPTIONS = [
    ("bottle holder for bike", ["accessories"]),
    ("Bike Bottle Holders, aluminium, black", ["accessories"]),
    ("bike bottle-holder", ["accessories"]),
    ("holder for water bottle", ["accessories"]),
    ("phone case with card slot", ["accessories"]),
    ("silicone phone case for iPhone 15", ["accessories"]),
    ("phone stand for desk", ["accessories"]),
    ("laptop sleeve 13 inch", ["accessories"]),
    ("watch strap, leather", ["accessories"]),
    ("shoe rack", ["furniture"]),
    ("3-tier shoe rack with hooks", ["furniture"]),
    ("coffee table", ["furniture"]),
    ("perfume bottle", ["cosmetics"]),
    ("a perfume bottle isolated on white", ["cosmetics"]),
    ("water bottle", ["cosmetics"]),
    ("stainless steel water bottle with lid", ["cosmetics"]),
    ("a bottle of perfume", ["cosmetics"]),
    ("sneaker", ["shoes"]),
    ("two white Sneakers on a plinth", ["shoes"]),
    ("a pair of running shoes for women", ["shoes"]),
    ("high-heel sandals", ["shoes"]),
    ("bag for shoes", ["bags"]),
    ("shoe bag", ["bags"]),
    ("laptop backpack with USB charging port", ["bags"]),
    ("gold ring and a perfume bottle", ["jewelry", "cosmetics"]),
    ("a ringing alarm clock", []),
    ("coffee mug", []),
    ("on a white background", []),
    ("blue T-Shirts, folded", ["clothing"]),
    # Chinese: the head is last, modifiers before it or before 的
    ("自行车水壶架", ["accessories"]),
    ("带卡槽的手机壳", ["accessories"]),
    ("手机", ["electronics"]),
    ("一瓶香水", ["cosmetics"]),
    ("香水瓶放在大理石桌子上", ["cosmetics"]),
    ("鞋架", ["furniture"]),
    ("红色运动鞋，白色背景", ["shoes"]),
    ("适合跑步的运动鞋", ["shoes"]),
    ("咖啡桌", ["furniture"]),
    ("面包", ["food"]),
    ("戒指和香水", ["jewelry", "cosmetics"]),
    ("iPhone 15 手机壳，透明", ["accessories"]),
    ("红色 sneaker、白色背景", ["shoes"]),
]


@pytest.mark.parametrize("caption, expected", CAPTIONS)
def test_ecommerce_categories_fire_on_the_head_noun(shipped, caption, expected):
    eco = shipped.presets["e-commerce white background"]
    assert eco.match == "head"
    assert P.build_prompts(caption, eco).categories == expected


def test_head_rule_details():
    assert P.noun_phrases("bottle holder for bike") == [["bottle", "holder"]]
    assert P.noun_phrases("gold ring and a perfume bottle, (studio:1.2)") == [
        ["gold", "ring"], ["a", "perfume", "bottle"], ["studio"]]
    assert P.noun_phrases("a pair of sneakers") == [["a", "pair"], ["sneakers"]]
    assert P.noun_phrases("用于自行车的水壶架，白色背景") == [["水壶架"], ["白色背景"]]
    assert P.keyword_is_head("bottle", "water bottle")
    assert not P.keyword_is_head("bottle", "bottle holder")
    assert not P.keyword_is_head("bottle", "bottle opener")
    assert P.keyword_is_head("hand bag", "a red hand bag with strap")
    assert not P.keyword_is_head("phone", "phone camera", nouns=["camera"])  # another keyword is the head
    assert P.keyword_is_head("t-shirt", "white t-shirts", nouns=["t-shirt"])
    assert P.keyword_is_head("香水", "一瓶香水") and not P.keyword_is_head("香水", "香水瓶")
    assert not P.keyword_is_head("手机", "带卡槽的手机壳")



def test_one_head_index_for_all_keywords_matches_each_keyword_on_its_own():
    """match_categories works the text out once for every keyword of the preset; it must find what
    keyword_is_head finds keyword by keyword, on captions built from the preset's own keywords, compound
    heads, joiners, hyphens, plurals, emphasis and Chinese."""
    import random
    eco = PR.load_presets([PR.SHIPPED_PRESET_DIR]).presets["e-commerce white background"]
    nouns = [k for c in eco.categories for k in c.keywords]
    words = nouns + ["red", "holder", "for", "with", "strap", "and", "a", "pair", "of", "case", "的", "和", "瓶",
                     "water-bottle", "shelves", "(studio:1.2)", ",", "isolated", "mug", "sneakers"]
    rng = random.Random(7)
    seen = set()
    for _ in range(80):  # each one-by-one call works the text out again: ~50 ms a caption
        text = rng.choice([" ", "", ", "]).join(rng.choice(words) for _ in range(rng.randint(1, 8)))
        one_by_one = [c.name for c in eco.categories if any(P.keyword_is_head(k, text, nouns) for k in c.keywords)]
        assert [c.name for c in P.match_categories(eco, text)] == one_by_one, text
        seen.add(bool(one_by_one))
    assert seen == {True, False}  # the captions hit some categories and miss others

def test_match_mode_word_is_the_default_and_unchanged():
    p = preset(categories={"cosmetics": {"keywords": ["bottle"], "negative": "leaking product"}})
    assert p.match == "word"
    assert P.build_negative(p, "bottle holder for bike").categories == ["cosmetics"]  # anywhere, as before
    h = preset(match="head", categories={"cosmetics": {"keywords": ["bottle"], "negative": "leaking product"}})
    assert P.build_negative(h, "bottle holder for bike").categories == []
    assert P.build_negative(h, "a water bottle").categories == ["cosmetics"]
    with pytest.raises(ValueError, match="'match' must be 'word'.*or 'head'"):
        preset(match="noun")
    # Chinese keywords in word mode: no spaces needed around them
    z = preset(categories={"perfume": {"keywords": ["香水"], "negative": "leaking product"}})
    assert P.build_negative(z, "一瓶法国香水，白色背景").categories == ["perfume"]
    assert P.keyword_in("sneaker", "红色sneaker鞋") and not P.keyword_in("ring", "ringing")


# ---------------------------------------------------------------- Chinese / full-width punctuation

def test_split_phrases_on_chinese_and_full_width_punctuation():
    text = "红色运动鞋，白色背景、bright；高清。产品：香水; studio\nsoft light, 8k"
    assert P.split_phrases(text) == ["红色运动鞋", "白色背景", "bright", "高清", "产品", "香水",
                                     "studio", "soft light", "8k"]
    # weights keep their ASCII ':' and '.'
    assert P.split_phrases("(bright:1.2), a.b") == ["(bright:1.2)", "a.b"]
    # full-width letters and emphasis compare equal to ASCII
    assert P.normalise_phrase("ＢＲＩＧＨＴ。") == "bright"
    assert P.normalise_phrase("（bright：1.2）") == "bright"


def test_inject_dedups_against_a_mixed_chinese_english_prompt():
    inj = P.inject("红色运动鞋，Pure White Background、明亮；bright",
                   "product photography, pure white background, bright, 明亮", "prefix")
    assert inj.added == ["product photography"]
    assert inj.skipped == ["pure white background", "bright", "明亮"]
    assert inj.text == "product photography, 红色运动鞋，Pure White Background、明亮；bright"
    # Chinese preset phrases separated by Chinese punctuation are deduplicated against each other too
    inj2 = P.inject("一只猫", "高清，细节丰富、高清；明亮。", "suffix")
    assert inj2.added == ["高清", "细节丰富", "明亮"]
    assert inj2.text == "一只猫, 高清, 细节丰富, 明亮"


def test_negative_conflicts_and_dedup_with_chinese_punctuation():
    p = preset(negative="模糊，文字、watermark", categories={})
    neg = P.build_negative(p, "", extra="模糊；低分辨率", positive="一个杯子，文字")
    assert neg.text == "模糊, watermark, 低分辨率"
    assert neg.dropped_conflicts == ["文字"]


def test_token_overflow_in_chinese_text_without_spaces():
    def chars(text):  # fake counter: one token per CJK character
        return sum(1 for c in text if "\u4e00" <= c <= "\u9fff")
    rep = P.token_report("一二三四五，六七八", chars, window=5)
    assert rep.count == 8 and rep.overflow == "六七八"
