"""Set coherence: how alike a set of images is, from CLIP image embeddings.

The embeddings come from the same CLIP vision model the aesthetic scorer uses (core.aesthetic:
``AestheticModel.image_embeddings``, either the CLIP tower bundled in a simple-aesthetics-predictor folder
or ComfyUI's CLIP_VISION through the node layer's embedder), pre-processed exactly as for scoring.

With the embeddings L2-normalised to e_1..e_n and S_ij = e_i . e_j (cosine similarity):

- coherence = mean of S_ij over all pairs i != j (in [-1, 1]; 1 = identical embeddings);
- per image i: p_i = mean of S_ij over j != i (how well image i fits the others); the mean of the p_i
  is the coherence;
- the outlier is argmin p_i (the lowest index on ties), reported with how far it lies below the
  coherence (``gap`` = coherence - p_outlier) and that gap in standard deviations of the p_i.

A single image has no pairs: its coherence is 1.0 by definition and there is no outlier (index -1).
Pure: torch only, no ComfyUI.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .selection import compare_text
from .errors import AtelierError

#: min_coherence at or below this disables the coherence check of the set gate (the value is then only reported).
OFF = 0.0


@dataclass(frozen=True)
class Coherence:
    coherence: float
    per_image: list[float]
    outlier: int  # -1 when there is no outlier (fewer than 2 images)
    gap: float  # coherence - per_image[outlier]; 0.0 without an outlier
    gap_sd: float  # gap in standard deviations of per_image; 0.0 when they are all equal

    @property
    def n(self) -> int:
        return len(self.per_image)


def normalise(embeds: torch.Tensor, *, node: str | None = None, input: str | None = None) -> torch.Tensor:
    """[B,D] embeddings -> float64 unit vectors. A zero or non-finite embedding is refused (its direction
    is undefined, so any similarity would be made up)."""
    if not isinstance(embeds, torch.Tensor) or embeds.ndim != 2 or embeds.shape[0] == 0:
        shape = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
        raise AtelierError(f"the image embeddings have shape {shape}.", node=node, input=input,
                           expected="a [B,D] tensor with B >= 1 (one CLIP image embedding per image)")
    e = embeds.detach().to("cpu", torch.float64)
    norms = e.norm(dim=1)
    bad = [i for i, v in enumerate(norms.tolist()) if not math.isfinite(v) or v == 0.0]
    if bad:
        raise AtelierError(f"the CLIP embedding of image(s) {bad[:8]} is zero or not finite.", node=node,
                           input=input, expected="finite, non-zero CLIP image embeddings",
                           fix="check the CLIP vision model (NaN/inf weights, or fp16 overflow: try "
                               "--fp32-text-enc or another file) and the images (no NaN pixels).")
    return e / norms[:, None]


def similarity_matrix(embeds: torch.Tensor, **where) -> torch.Tensor:
    """Cosine similarities [B,B] (float64) of the embeddings' directions."""
    e = normalise(embeds, **where)
    return (e @ e.T).clamp_(-1.0, 1.0)


def coherence(embeds: torch.Tensor, *, node: str | None = None, input: str | None = None) -> Coherence:
    """The set's coherence, each image's mean similarity to the others, and the outlier (see module doc)."""
    s = similarity_matrix(embeds, node=node, input=input)
    n = int(s.shape[0])
    if n == 1:
        return Coherence(1.0, [1.0], -1, 0.0, 0.0)
    off = s - torch.diag(torch.diagonal(s))
    per = (off.sum(dim=1) / (n - 1)).tolist()
    mean = sum(per) / n
    outlier = min(range(n), key=lambda i: (per[i], i))
    gap = max(0.0, mean - per[outlier])  # >= 0 by definition; round-off can make it -1e-16
    sd = math.sqrt(sum((p - mean) ** 2 for p in per) / n)
    gap_sd = gap / sd if sd > 1e-12 else 0.0  # equal similarities: no spread to measure the gap in
    return Coherence(float(mean), [float(p) for p in per], outlier, float(gap), float(gap_sd))


def passes(value: float, min_coherence: float) -> bool:
    """The gate's coherence rule: min_coherence <= OFF disables it; otherwise value >= min_coherence.
    A NaN value never passes an enabled check."""
    if min_coherence <= OFF:
        return True
    return math.isfinite(value) and value >= min_coherence


def format_report(c: Coherence, min_coherence: float | None = None) -> str:
    """Readable report: the coherence, one line per image (its mean similarity to the others), the outlier."""
    lines = [f"set coherence (mean pairwise CLIP cosine similarity, {c.n} image{'s' if c.n != 1 else ''}): "
             f"{c.coherence:.4f}"]
    if c.n == 1:
        lines.append("  a single image: no pairs to compare (coherence 1 by definition, no outlier)")
        return "\n".join(lines)
    for i, p in enumerate(c.per_image):
        mark = "  <- outlier" if i == c.outlier else ""
        lines.append(f"  #{i}: {p:.4f}{mark}")
    lines.append(f"outlier #{c.outlier}: {c.per_image[c.outlier]:.4f}, {c.gap:.4f} below the mean"
                 + (f" ({c.gap_sd:.1f} sd)" if c.gap_sd > 0 else ""))
    if min_coherence is not None:
        if min_coherence <= OFF:
            lines.append("coherence check: off (min_coherence 0)")
        else:
            verdict = "PASS" if passes(c.coherence, min_coherence) else "FAIL"
            lines.append(f"coherence check: "
                         f"{compare_text(c.coherence, min_coherence, names=('coherence ', 'min_coherence '))} -> {verdict}")
    return "\n".join(lines)
