"""System prompt injection: presets, phrase-aware merging, negatives, CLIP token windows.

Pure Python (no torch, no ComfyUI). The node layer (`nodes/prompt.py`) passes in the preset
folders and a `count_tokens(text) -> int` callable (a CLIP tokenizer), so everything here is
testable with a fake counter.

Vocabulary
----------
- *phrase*: one piece of a prompt between separators: ASCII ``,`` ``;`` and newlines, and the
  full-width / CJK ``，`` ``、`` ``；`` ``。`` ``：`` (``PHRASE_SEPARATORS``). Two phrases are the same
  when their normalised forms match: NFKC (full-width letters become ASCII), lower case,
  whitespace collapsed, ComfyUI emphasis (``(text:1.2)``, ``(text)``) and trailing stops removed.
- *head noun*: what a product phrase names. Presets with ``"match": "head"`` fire a category
  only on it (``bottle holder for bike`` is a holder, ``perfume bottle`` a bottle); see
  ``noun_phrases`` for the rule.
- *preset*: a JSON file in a preset folder (schema in ``presets/README.md``).
- *template*: an optional preset string with ``{prompt}`` and ``{style}`` placeholders,
  e.g. ``"{prompt}, {style}"`` for style tokens ``styleNN``.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from .errors import AtelierError
# the preset files (core/presets.py); the names are also offered here, where the prompt family's users look
from .presets import (MAX_PRESET_DEPTH, MAX_PRESET_FILE_BYTES, POSITIONS, SHIPPED_PRESET_DIR,  # noqa: F401
                      Category, Preset, PresetLoad, get_preset, json_depth_problem, load_preset_file,
                      load_presets, normalise_style_id, parse_preset, presets_signature)

#: CLIP text encoders see 77 tokens: a start token, 75 text tokens and an end token.
CLIP_WINDOW = 75
#: Kolors' ChatGLM3 text encoder reads 256 tokens (its [gMASK] sop prefix included) and cuts the rest.
CHATGLM_WINDOW = 256

_STYLE_RE = re.compile(r"(?<![\w])style(\d{1,4})(?![\w])", re.IGNORECASE)
_WEIGHT_RE = re.compile(r"^\((.*?)(?::\s*[-+]?\d*\.?\d+)?\)$", re.DOTALL)
#: phrase separators: ASCII comma, semicolon and newline; full-width comma, ideographic comma
#: (and its small / half-width forms), full-width semicolon, ideographic full stop, full-width colon.
#: (ASCII ':' and '.' are not separators: they occur inside weights like ``(text:1.2)``.)
PHRASE_SEPARATORS = ",;\n\r\uff0c\u3001\uff1b\u3002\uff1a\uff64\ufe50\ufe51\ufe54"
_SPLIT_RE = re.compile("[" + re.escape(PHRASE_SEPARATORS) + "]")
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_RE = re.compile(f"[{_CJK}]")
_LATIN_WORD = f"[^\\W{_CJK}]"  # a word character that is not CJK (letters, digits, '_')


# --------------------------------------------------------------------------- phrases

def normalise_phrase(phrase: str) -> str:
    """Comparison key for a phrase: NFKC (full-width forms folded), emphasis and weights removed,
    lower case, single spaces."""
    p = unicodedata.normalize("NFKC", phrase).strip()
    for _ in range(4):  # peel nested emphasis like ((a:1.2))
        m = _WEIGHT_RE.match(p)
        if not m:
            break
        p = m.group(1).strip()
    p = p.replace("\\(", "(").replace("\\)", ")")
    p = re.sub(r"\s+", " ", p).strip(" .;:,!?\u3002\u3001").lower()
    return p


def split_phrases(text: str) -> list[str]:
    """Phrases between PHRASE_SEPARATORS (ASCII , ; newline and CJK ，、；。：), stripped, empties
    dropped. '红色运动鞋，白色背景、bright' -> ['红色运动鞋', '白色背景', 'bright']."""
    return [p.strip() for p in _SPLIT_RE.split(text or "") if p.strip()]


def join_phrases(phrases: Sequence[str]) -> str:
    return ", ".join(p for p in phrases if p)


def tidy(text: str) -> str:
    """Clean separators left by empty template fields: ', ,' -> ',', no leading/trailing commas."""
    lines = []
    for line in (text or "").split("\n"):
        line = re.sub(r"\s*,\s*(,\s*)+", ", ", line)
        line = re.sub(r"\s+,", ",", line)
        line = re.sub(r"[ \t]{2,}", " ", line)
        lines.append(line.strip().strip(",").strip())
    return "\n".join(l for l in lines if l)


def unique_phrases(texts: Iterable[str], exclude: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """Phrases from `texts` in order, first spelling kept, duplicates (and anything in `exclude`,
    by normalised form) dropped. Returns (kept, dropped)."""
    seen = {normalise_phrase(p) for p in exclude}
    kept, dropped = [], []
    for text in texts:
        for p in split_phrases(text):
            key = normalise_phrase(p)
            if not key:
                continue
            if key in seen:
                dropped.append(p)
            else:
                seen.add(key)
                kept.append(p)
    return kept, dropped


@dataclass
class Injection:
    text: str
    added: list[str]
    skipped: list[str]  # preset phrases already present in the prompt


def inject(prompt: str, addition: str, position: str = "prefix") -> Injection:
    """Put `addition`'s phrases before (prefix) or after (suffix) `prompt`, leaving out every phrase
    the prompt already has (case-insensitive, emphasis ignored). The user's text is kept verbatim."""
    if position not in POSITIONS:
        raise AtelierError(f"unknown position {position!r}", input="position", expected="prefix or suffix")
    added, skipped = unique_phrases([addition], exclude=split_phrases(prompt))
    extra = join_phrases(added)
    body = (prompt or "").strip()
    if not extra:
        text = body
    elif not body:
        text = extra
    elif position == "prefix":
        text = f"{extra}, {body}"
    else:
        text = f"{body.rstrip(' ,')}, {extra}"
    return Injection(text, added, skipped)


# --------------------------------------------------------------------------- styles / templates

def find_style_ids(text: str) -> list[str]:
    """Every styleNN token in the text, normalised, in order, without repeats."""
    out = []
    for m in _STYLE_RE.finditer(text or ""):
        sid = f"style{int(m.group(1)):02d}"
        if sid not in out:
            out.append(sid)
    return out


def remove_style_ids(text: str) -> str:
    return tidy(_STYLE_RE.sub("", text or ""))


def apply_template(template: str, prompt: str, style: str = "") -> str:
    """Fill {prompt} and {style}; tidy separators an empty field leaves behind."""
    return tidy(template.replace("{prompt}", (prompt or "").strip()).replace("{style}", style))


# --------------------------------------------------------------------------- negatives

def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text or "").lower()


def keyword_in(keyword: str, text: str) -> bool:
    """Whole-word, case-insensitive match; a trailing 's'/'es' plural also matches.

    Chinese has no spaces between words, so a CJK end of a keyword needs no word boundary:
    '香水' is found in '一瓶香水' and in '香水瓶' (use ``match: head`` to tell those apart)."""
    kw = _fold(keyword).strip()
    if not kw:
        return False
    pat = re.escape(kw).replace(r"\ ", r"\s+")
    left = "" if _CJK_RE.match(kw[0]) else rf"(?<!{_LATIN_WORD})"
    right = "" if _CJK_RE.match(kw[-1]) else rf"(?:s|es)?(?!{_LATIN_WORD})"
    return re.search(left + pat + right, _fold(text)) is not None


# ---- head nouns (match: head)
#
# English compounds put the head last ("bottle holder" is a holder, "water bottle" a bottle) and a
# prepositional phrase after the head only qualifies it ("holder for bike", "case with card slot").
# Chinese puts the head last too, and modifiers before it or before 的 ("带卡槽的手机壳" is a 壳).

#: words that end a phrase's noun part: what follows qualifies the head, it is not the product
HEAD_STOPWORDS = frozenset("""
    for with without in on at by from to into onto over under above below beneath underneath beside
    besides behind near against inside outside within upon across around through throughout along
    among between toward towards via per versus vs next atop like featuring including containing
    that which who whose where while when is are was were has have
""".split())
#: words that join noun phrases which are all heads ("a ring and a bottle", "a pair of sneakers")
HEAD_JOINERS = frozenset({"and", "or", "plus", "&", "+", "/", "of"})
#: accessory / container nouns: after a keyword they are the compound's head and the keyword only
#: its modifier ("bottle holder", "phone case", "shoe rack", "laptop sleeve", "watch strap")
COMPOUND_HEADS = frozenset("""
    holder stand rack case cover mount bag organizer organiser box sleeve pouch strap band dock cradle
    tray hook hanger clip cap lid opener brush protector skin decal sticker shelf cabinet pad mat insole
    lace cleaner charger cable adapter pump dispenser basket bin caddy carrier clamp bracket mug cup
    maker machine grinder
""".split())
_ZH_PLACE_RE = re.compile("放在|摆在|置于|位于|在")  # "X 放在桌子上": the head is X
_ZH_JOIN_RE = re.compile("以及|和|与|及|或")
_TOKEN_RE = re.compile(r"[\w'’\-]+|[&+/]")


def _singulars(word: str) -> set[str]:
    """The word and what it is the plural of (sneakers, boxes, accessories, shelves)."""
    out = {word}
    if len(word) > 2 and word.endswith("s"):
        out.add(word[:-1])
        if word.endswith("es"):
            out.add(word[:-2])
        if word.endswith("ies"):
            out.add(word[:-3] + "y")
        if word.endswith("ves"):
            out.update({word[:-3] + "f", word[:-3] + "fe"})
    return out


def _tokens(phrase: str) -> list[str]:
    """Latin words (hyphens kept), CJK runs and the joiners & + /, in order, NFKC lower case."""
    out = []
    for m in _TOKEN_RE.finditer(_fold(strip_emphasis(phrase))):
        for part in re.findall(f"[{_CJK}]+|[^{_CJK}]+", m.group()):
            part = part.strip("-'’")
            if part:
                out.append(part)
    return out


def _zh_heads(run: str) -> list[str]:
    """Noun chunks of a Chinese run whose ends are heads: the part before a place/verb marker,
    after its last 的, split at 和/与/及/或."""
    parts = [p for p in _ZH_PLACE_RE.split(run) if p]
    if not parts:
        return []
    head = parts[0].rsplit("的", 1)[-1]
    return [p for p in _ZH_JOIN_RE.split(head) if p]


def noun_phrases(text: str, split_hyphens_except: Iterable[str] = ()) -> list[list[str]]:
    """The noun phrases of `text` whose last noun is a head, one token list each.

    Per phrase (see ``split_phrases``): the noun part ends at the first HEAD_STOPWORDS word
    (a preposition or relative word: 'bottle holder | for bike', 'case | with card slot');
    inside it HEAD_JOINERS ('and', 'or', '&', 'of') separate noun phrases that all count ('gold
    ring | and | a perfume bottle', 'a pair | of | sneakers'). A CJK run is its own noun phrase
    (``_zh_heads``). Hyphenated words are split ('bottle-holder' -> bottle holder) unless the
    whole word is one of `split_hyphens_except` (keywords such as 't-shirt').
    """
    keep = {_fold(k) for k in split_hyphens_except}
    out: list[list[str]] = []
    for phrase in split_phrases(text):
        cur: list[str] = []
        for tok in _tokens(phrase):
            if _CJK_RE.match(tok):
                out.extend([h] for h in _zh_heads(tok))
                continue
            if tok in HEAD_STOPWORDS:
                break
            if tok in HEAD_JOINERS:
                if cur:
                    out.append(cur)
                cur = []
                continue
            if "-" in tok and not (_singulars(tok) & keep):
                cur.extend(t for t in tok.split("-") if t)
            else:
                cur.append(tok)
        if cur:
            out.append(cur)
    return out


def keyword_is_head(keyword: str, text: str, nouns: Iterable[str] = ()) -> bool:
    """True when `keyword` is the head noun of a noun phrase of `text` (``noun_phrases``): no
    COMPOUND_HEADS word and none of `nouns` (the other category keywords) comes after it in its
    noun phrase. 'perfume bottle isolated' -> bottle is the head; 'bottle holder' -> holder is.
    A CJK keyword must end its Chinese noun chunk: '香水瓶' is a 瓶, not a 香水."""
    return _HeadIndex(text, [*nouns, keyword]).is_head(keyword)


class _HeadIndex:
    """What :func:`keyword_is_head` reads from a text and the category nouns, worked out once for every
    keyword of a preset (``match_categories``). Per keyword it cost the noun phrases of the text and the
    tokens of every noun again: 181 keywords made one e-commerce prompt take 31 ms, 287x its tokenization."""

    def __init__(self, text: str, nouns: Iterable[str]):
        self.text = text
        self.nouns = {_fold(n).strip() for n in nouns}
        self.heads = set(COMPOUND_HEADS) | {w for k in self.nouns if not _CJK_RE.search(k) for w in _tokens(k)[-1:]}
        self._phrases: list[list[str]] | None = None  # hyphens split except in the nouns
        self._chunks: list[list[str]] | None = None  # plain noun_phrases(text), for CJK keywords

    def is_head(self, keyword: str) -> bool:
        kw = _fold(keyword).strip()
        if not kw:
            return False
        if _CJK_RE.search(kw):
            if self._chunks is None:
                self._chunks = noun_phrases(self.text)
            return any(len(np_) == 1 and np_[0].endswith(kw) for np_ in self._chunks)
        if self._phrases is None:
            self._phrases = noun_phrases(self.text, split_hyphens_except=self.nouns)
        kt = _tokens(kw)
        n = len(kt)
        for np_ in self._phrases:
            for i in range(len(np_) - n + 1):
                if np_[i:i + n - 1] != kt[:-1] or kt[-1] not in _singulars(np_[i + n - 1]):
                    continue
                if not any(_singulars(w) & self.heads for w in np_[i + n:]):
                    return True
        return False


def match_categories(preset: Preset, text: str) -> list[Category]:
    """Categories whose keywords occur in `text`: as whole words (``match: word``) or as the head
    noun of a phrase (``match: head``, see ``keyword_is_head``)."""
    if preset.match == "head":
        index = _HeadIndex(text, [k for c in preset.categories for k in c.keywords])
        return [c for c in preset.categories if any(index.is_head(k) for k in c.keywords)]
    return [c for c in preset.categories if any(keyword_in(k, text) for k in c.keywords)]


@dataclass
class Negative:
    text: str
    categories: list[str]  # matched category names
    dropped_conflicts: list[str]  # negative phrases left out because the positive asks for them


def build_negative(preset: Preset, subject: str, extra: str = "", positive: str = "") -> Negative:
    """preset.negative + negatives of categories whose keywords occur in `subject` + `extra`,
    deduplicated by phrase. A phrase the positive prompt itself contains is left out (it would
    fight the positive)."""
    cats = match_categories(preset, subject)
    kept, _ = unique_phrases([preset.negative] + [c.negative for c in cats] + [extra or ""])
    pos_keys = {normalise_phrase(p) for p in split_phrases(positive)}
    final = [p for p in kept if normalise_phrase(p) not in pos_keys]
    conflicts = [p for p in kept if normalise_phrase(p) in pos_keys]
    return Negative(join_phrases(final), [c.name for c in cats], conflicts)


# --------------------------------------------------------------------------- token windows

_EMPHASIS_RE = re.compile(r"(?<!\\)\(([^()]*?)(?::\s*[-+]?\d*\.?\d+)?(?<!\\)\)")


def strip_emphasis(text: str) -> str:
    """Drop ComfyUI weight syntax for counting: '(red car:1.2)' -> 'red car', '\\(' -> '('."""
    prev = None
    while prev != text:
        prev, text = text, _EMPHASIS_RE.sub(r"\1", text)
    return text.replace("\\(", "(").replace("\\)", ")")


@dataclass(frozen=True)
class TokenWindow:
    """How a text encoder reads tokens: `size` per window, named `unit` in reports; `cuts` True when the text
    past the window is dropped (Kolors' ChatGLM3) rather than encoded as a further chunk (ComfyUI's CLIP)."""
    size: int = CLIP_WINDOW
    unit: str = "CLIP"
    cuts: bool = False


CLIP_TOKENS = TokenWindow()
KOLORS_TOKENS = TokenWindow(CHATGLM_WINDOW, "ChatGLM", cuts=True)


@dataclass
class TokenReport:
    count: int
    window: int
    overflow: str  # text past the window ('' when it fits)
    unit: str = "CLIP"
    cuts: bool = False

    @property
    def fits(self) -> bool:
        return self.count <= self.window

    @property
    def chunks(self) -> int:
        return max(1, -(-self.count // self.window))


def token_report(text: str, count_tokens: Callable[[str], int], window: int = CLIP_WINDOW,
                 unit: str = "CLIP", cuts: bool = False) -> TokenReport:
    """Count tokens and, when over the window, find the text past it (word-level binary search:
    the longest word prefix that still fits; a CJK character counts as a word, Chinese has no spaces)."""
    text = text or ""
    total = int(count_tokens(text))
    if total <= window:
        return TokenReport(total, window, "", unit, cuts)
    ends = [m.end() for m in re.finditer(f"[{_CJK}][^\\s{_CJK}]*|[^\\s{_CJK}]+", text)]
    lo, hi = 0, len(ends)  # invariant: first `lo` words fit, first `hi` words do not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count_tokens(text[:ends[mid - 1]]) <= window:
            lo = mid
        else:
            hi = mid
    cut = ends[lo - 1] if lo else 0
    overflow = text[cut:].strip().lstrip(",，、；").strip()
    return TokenReport(total, window, overflow, unit, cuts)


def window_warning(side: str, rep: TokenReport, max_shown: int = 80) -> str | None:
    if rep.fits:
        return None
    shown = rep.overflow if len(rep.overflow) <= max_shown else rep.overflow[:max_shown].rstrip() + "..."
    if rep.cuts:
        return (f"WARNING: {side} prompt is {rep.count} {rep.unit} tokens, over the {rep.window}-token window. "
                f"The text after token {rep.window} (\"{shown}\") is cut: the text encoder never reads it. "
                f"Shorten the prompt or move the important phrases to the front.")
    return (f"WARNING: {side} prompt is {rep.count} {rep.unit} tokens, over the {rep.window}-token window. "
            f"The text after token {rep.window} (\"{shown}\") is not read together with the rest: "
            f"ComfyUI encodes it as a separate chunk, and tools that truncate at 77 tokens ignore it. "
            f"Shorten the prompt or move the important phrases to the front.")


# --------------------------------------------------------------------------- all together

@dataclass
class PromptResult:
    positive: str
    negative: str
    report: str
    warnings: list[str]
    positive_tokens: TokenReport | None = None
    negative_tokens: TokenReport | None = None
    categories: list[str] = field(default_factory=list)
    style: str = ""


_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(text, *, node: str | None = None, input: str | None = None) -> str:
    """`text` unchanged, or an AtelierError when it holds a lone surrogate (U+D800..U+DFFF): not a
    character, so CLIP's tokenizer fails on it (TypeError) and it cannot be written as UTF-8. It comes
    from an API client that split an emoji's UTF-16 pair (JSON "\\ud83d" without its "\\ude00")."""
    if text is None:
        return text
    if not isinstance(text, str):  # the pinned runtime passes a JSON object or list sent for a STRING through
        raise AtelierError(f"got {type(text).__name__}, not text", node=node, input=input, expected="a string",
                           fix="type the text in the widget or connect a STRING output; an API client must send "
                               "a JSON string for this input.")
    m = _SURROGATE.search(text)
    if m is None:
        return text
    n = len(_SURROGATE.findall(text))
    i = m.start()
    around = text[max(0, i - 20):i + 20]
    raise AtelierError(f"the text holds {n} lone surrogate{'s' if n != 1 else ''} (first U+{ord(m.group()):04X} at "
                       f"character {i}, near {around!r}), which is not a Unicode character.", node=node, input=input,
                       expected="text of whole Unicode characters (valid UTF-8)",
                       fix="remove that character or send the whole emoji: a JSON client must send both halves of a "
                           "surrogate pair (\\ud83d\\ude00) or the character itself, and never cut a string inside one.")


def build_prompts(prompt: str, preset: Preset, *, position: str | None = None, extra_negative: str = "",
                  style_id: str = "", count_tokens: Callable[[str], int] | None = None,
                  window: int = CLIP_WINDOW, node: str | None = None,
                  tokens: TokenWindow | None = None) -> PromptResult:
    """The whole injector: template -> inject positive -> negative -> token counts -> report.

    - `position` None or 'preset default' uses the preset's position.
    - Empty prompt: the preset text alone, with a warning (never an error).
    - Templates with {style}: `style_id` wins, else the first styleNN in the prompt (moved to where
      the template puts it), else the preset's default style; none at all is an AtelierError.
    - `count_tokens` counts the text encoder's tokens; `tokens` says how it reads them (CLIP_TOKENS: chunks of
      75, the default with `window`; KOLORS_TOKENS: 256 ChatGLM tokens, the rest cut).
    """
    tw = tokens or TokenWindow(window)
    for key, value in (("prompt", prompt), ("extra_negative", extra_negative), ("style_id", style_id)):
        check_text(value, node=node, input=key)
    warnings: list[str] = []
    user = (prompt or "").strip()
    if not user:
        warnings.append("WARNING: the prompt is empty; using the preset text alone.")
    pos = preset.position if position in (None, "", "preset default") else position
    if pos not in POSITIONS:
        raise AtelierError(f"unknown position {position!r}", node=node, input="position",
                           expected="preset default, prefix or suffix")

    subject = user
    style = ""
    if preset.template is not None:
        body = user
        if preset.needs_style:
            style = normalise_style_id(style_id, node=node, input="style_id") if style_id else ""
            found = find_style_ids(user)
            if not style:
                style = found[0] if found else preset.style
            if not style:
                raise AtelierError(
                    f"preset '{preset.name}' needs a style id for its template {preset.template!r}, "
                    "and none was given", node=node, input="style_id",
                    expected="a style id like style03, in the style_id input or written in the prompt",
                    fix="type the style id (e.g. style03) into style_id, or add it to the prompt text.")
            if len(found) > 1:
                warnings.append(f"WARNING: several style ids in the prompt ({', '.join(found)}); using {style}.")
            body = remove_style_ids(user)
        subject = apply_template(preset.template, body, style)
    elif style_id:
        style = normalise_style_id(style_id, node=node, input="style_id")
        inj = inject(subject, style, "suffix")
        subject = inj.text

    inj = inject(subject, preset.positive, pos)
    neg = build_negative(preset, subject, extra_negative, positive=inj.text)

    pos_rep = neg_rep = None
    if count_tokens is not None:
        pos_rep = token_report(inj.text, count_tokens, tw.size, tw.unit, tw.cuts)
        neg_rep = token_report(neg.text, count_tokens, tw.size, tw.unit, tw.cuts)
        for side, rep in (("positive", pos_rep), ("negative", neg_rep)):
            w = window_warning(side, rep)
            if w:
                warnings.append(w)

    lines = [f"preset: {preset.name} ({pos})"]
    if style:
        lines.append(f"style: {style}")
    if inj.added:
        lines.append("added: " + join_phrases(inj.added))
    if inj.skipped:
        lines.append("already in prompt: " + join_phrases(inj.skipped))
    lines.append("categories: " + (", ".join(neg.categories) or "none matched"))
    if neg.dropped_conflicts:
        lines.append("left out of negative (the positive asks for it): " + join_phrases(neg.dropped_conflicts))
    if pos_rep is not None:
        def fmt(rep):
            if tw.cuts:
                return f"{rep.count}/{tw.size}" + (" (cut)" if not rep.fits else "")
            return f"{rep.count}/{tw.size}" + (f" ({rep.chunks} chunks)" if rep.chunks > 1 else "")
        unit = "" if tw.unit == "CLIP" else f" ({tw.unit} tokens)"
        lines.append(f"tokens: positive {fmt(pos_rep)}, negative {fmt(neg_rep)}{unit}")
    report = "\n".join(warnings + lines)
    return PromptResult(inj.text, neg.text, report, warnings, pos_rep, neg_rep, neg.categories, style)


def split_lines(text: str, skip_comments: bool = True, *, node: str | None = None) -> list[str]:
    """One prompt per non-empty line; lines starting with '#' are comments when `skip_comments`.
    A lone surrogate anywhere is refused (see check_text)."""
    check_text(text, node=node, input="text")
    out = []
    for line in (text or "").splitlines():
        s = line.strip()
        if not s or (skip_comments and s.startswith("#")):
            continue
        out.append(s)
    return out
