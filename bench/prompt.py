"""Benchmark: what the system prompt injector costs next to a plain CLIP tokenization (CPU).

    python bench/prompt.py [--repeats 200] [--quick]

Peers, on the same prompts in the same run (medians over interleaved repeats):
- tokenize : one CLIP-L tokenization of the final positive text (ComfyUI's sd1_tokenizer through
             transformers.CLIPTokenizer): the floor any prompt node pays before encoding;
- inject   : build_prompts without token counting (template, phrase dedup, category negatives);
- full     : build_prompts with the same tokenizer counting both sides (and, over 75 tokens, the
             binary search for where the overflow starts): what AtelierSystemPrompt runs.
Each row prints its target and met/missed ("—": no target set for this bench yet). --quick: 3 repeats, a
smoke run that checks the bench still runs and prints its table (timings mean nothing).

Prompts: short (a product line), long (about 190 tokens: triggers the window search). The tokenizer is
ComfyUI's own (from $COMFYUI_PATH or the pinned offline runtime); no model is loaded.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from _verdict import cells

TARGET = None  # no agreed bound on full/tokenize yet: rows print "—"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 repeats, no warm-up loop")
    args = ap.parse_args()
    if args.quick:
        args.repeats = 3

    from transformers import CLIPTokenizer

    from comfyui_atelier.client.runtime import find_comfyui
    from comfyui_atelier.core import presets as PR
    from comfyui_atelier.core import prompt as P

    tok = CLIPTokenizer.from_pretrained(os.path.join(find_comfyui(), "comfy", "sd1_tokenizer"))
    tok.model_max_length = 10 ** 6

    def count(text: str) -> int:
        return len(tok(P.strip_emphasis(text), add_special_tokens=False)["input_ids"])

    load = PR.load_presets([PR.SHIPPED_PRESET_DIR])
    eco = load.presets["e-commerce white background"]
    prompts = {
        "short": "a red leather sneaker with white laces, side view",
        "long": ", ".join(f"tiny detail number {i}" for i in range(30)),
    }
    print(f"{'prompt':<7} {'tokens':>6} {'tokenize ms':>12} {'inject ms':>10} {'full ms':>8} {'full/tokenize':>14}  target")
    for label, text in prompts.items():
        final = P.build_prompts(text, eco).positive
        runs = {"tokenize": [], "inject": [], "full": []}
        fns = {
            "tokenize": lambda: tok(final)["input_ids"],
            "inject": lambda: P.build_prompts(text, eco),
            "full": lambda: P.build_prompts(text, eco, count_tokens=count),
        }
        for _ in range(1 if args.quick else 5):
            for f in fns.values():
                f()
        for _ in range(args.repeats):
            for name, f in fns.items():
                t0 = time.perf_counter()
                f()
                runs[name].append((time.perf_counter() - t0) * 1000)
        med = {k: statistics.median(v) for k, v in runs.items()}
        print(f"{label:<7} {count(final):>6} {med['tokenize']:>12.3f} {med['inject']:>10.3f} {med['full']:>8.3f} "
              f"{med['full'] / med['tokenize']:>13.1f}x  {cells(med['full'] / med['tokenize'], TARGET)}")


if __name__ == "__main__":
    main()
