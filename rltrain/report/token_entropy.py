"""Token-entropy analysis of a model on a dataset, as in "Beyond the 80/20 Rule" (Wang et al. 2025,
arXiv 2506.01939; docs/algorithms.md §5): how many response tokens are near-deterministic, where the
80th percentile of entropy lies, and which tokens the model emits at its high-entropy ("forking")
positions.

Definitions (the paper's, and the ones training uses):
- The entropy of response position t is H_t = −Σ_j p_j log p_j of the distribution the token at t
  was drawn from, p = softmax(z_t / T) with T = 1, computed in a teacher-forced forward pass of the
  model over prompt + response (``rltrain.rollout.forward.response_logprobs``, which calls
  ``rltrain.algos.core.token_entropy``), not taken from the sampler. Running the model is
  ``rltrain.analysis``'s part; this module computes the statistics and writes the outputs.
- High-entropy tokens are the top ⌈ρ·N⌉ of all N valid response tokens pooled over the batch
  (ρ = 0.2), chosen by ``rltrain.algos.select.high_entropy_mask``, the selection
  ``token_selection=high_entropy`` trains on. The token "at" a position is the one emitted there.

The paper reports > 50% of tokens below 0.01 and an 80th percentile of 0.672 for Qwen3-8B chains
of thought; a 135M model answering arithmetic in a few dozen tokens need not match.
"""
from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from rltrain.algos.select import high_entropy_mask

LOW_ENTROPY = 0.01


@dataclass(frozen=True)
class TokenCount:
    """A token among the high-entropy positions."""

    token_id: int
    text: str
    count: int
    """Times it was emitted at a high-entropy position."""
    share: float
    """count / number of high-entropy positions."""
    total: int
    """Times it was emitted anywhere in the responses."""
    mean_entropy: float
    """Mean entropy over its high-entropy positions."""


@dataclass(frozen=True)
class TokenEntropyStats:
    n_tokens: int
    mean: float
    frac_below: float
    """Fraction of tokens with entropy < ``low`` (0.01)."""
    p80: float
    """80th percentile of the token entropies (linear interpolation, ``torch.quantile``)."""
    top_ratio: float
    n_high: int
    high_threshold: float
    """The smallest entropy among the selected high-entropy tokens."""
    top_tokens: list[TokenCount] = field(default_factory=list)
    low: float = LOW_ENTROPY


def token_entropy_stats(entropy: torch.Tensor, mask: torch.Tensor, token_ids: torch.Tensor, *,
                        top_ratio: float = 0.2, k: int = 20, low: float = LOW_ENTROPY,
                        decode=None) -> TokenEntropyStats:
    """Statistics of per-token entropies over the valid response tokens.

    Args:
        entropy: ``[B, T]`` token entropies (nats).
        mask: ``[B, T]`` 1 on valid response tokens.
        token_ids: ``[B, T]`` the tokens emitted at those positions.
        top_ratio: ρ, the share of tokens counted as high-entropy.
        k: how many of the most frequent high-entropy tokens to list.
        low: the "near-deterministic" entropy threshold.
        decode: token id → text (``repr`` of the id when None).

    Raises:
        ValueError: no valid tokens, or shapes that differ.
    """
    if not (entropy.shape == mask.shape == token_ids.shape) or entropy.dim() != 2:
        raise ValueError(f"entropy, mask and token_ids must all be [B, T]; got {tuple(entropy.shape)}, "
                         f"{tuple(mask.shape)}, {tuple(token_ids.shape)}")
    m = mask.bool()
    vals = entropy.detach().float()[m]  # [N]
    if vals.numel() == 0:
        raise ValueError("no valid response tokens to analyse")
    high = high_entropy_mask(entropy.detach().float(), m, top_ratio=top_ratio)  # [B, T] bool
    high_ids = token_ids[high].tolist()
    high_ent = entropy.detach().float()[high].tolist()
    totals = Counter(token_ids[m].tolist())
    counts = Counter(high_ids)
    ent_sum: dict[int, float] = defaultdict(float)
    for t, e in zip(high_ids, high_ent):
        ent_sum[t] += e
    decode = decode or (lambda t: repr(t))
    top = [TokenCount(token_id=t, text=decode(t), count=c, share=c / len(high_ids), total=totals[t],
                      mean_entropy=ent_sum[t] / c)
           for t, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]
    return TokenEntropyStats(
        n_tokens=int(vals.numel()), mean=float(vals.mean()), frac_below=float((vals < low).float().mean()),
        p80=float(torch.quantile(vals, 0.8)), top_ratio=top_ratio, n_high=len(high_ids),
        high_threshold=float(min(high_ent)) if high_ent else math.nan, top_tokens=top, low=low)


# --------------------------------------------------------------------------- outputs


@dataclass
class Responses:
    """Responses and their per-token entropies under the analysed model (``rltrain.analysis``
    samples or scores them; this module only reads them)."""

    entropy: torch.Tensor  # [N, T]
    mask: torch.Tensor  # [N, T]
    response_ids: torch.Tensor  # [N, T]
    prompts: list[str]
    completions: list[str]


def token_text(tokenizer, token_id: int) -> str:
    """A token as readable text: its decoded string, with spaces and newlines made visible."""
    text = tokenizer.decode([token_id])
    return text.replace("\n", "\\n").replace(" ", "␣") or tokenizer.convert_ids_to_tokens(token_id)


def stats_markdown(stats: TokenEntropyStats, title: str) -> str:
    lines = [f"## {title}", "",
             f"- response tokens: {stats.n_tokens}",
             f"- mean entropy: {stats.mean:.3f} nats",
             f"- fraction with entropy < {stats.low}: {stats.frac_below:.1%}",
             f"- 80th percentile: {stats.p80:.3f} nats",
             f"- top {stats.top_ratio:.0%} (high-entropy) tokens: {stats.n_high}, "
             f"entropy ≥ {stats.high_threshold:.3f}",
             "", "| rank | token | count at high-entropy positions | share | emitted in total | mean entropy |",
             "|---:|---|---:|---:|---:|---:|"]
    for i, t in enumerate(stats.top_tokens, 1):
        text = t.text.replace("|", "¦").replace("`", "ˋ")
        lines.append(f"| {i} | `{text}` | {t.count} | {t.share:.1%} | {t.total} | {t.mean_entropy:.3f} |")
    return "\n".join(lines) + "\n"


def stats_rich(stats: TokenEntropyStats, title: str):
    from rich.table import Table

    t = Table(title=f"{title}\n{stats.n_tokens} tokens, mean {stats.mean:.3f}, < {stats.low}: {stats.frac_below:.1%}, "
                    f"p80 {stats.p80:.3f}; top {stats.top_ratio:.0%} = {stats.n_high} tokens with H ≥ "
                    f"{stats.high_threshold:.3f}")
    for c in ("rank", "token", "high-H count", "share", "total", "mean H"):
        t.add_column(c, justify="left" if c == "token" else "right")
    for i, tc in enumerate(stats.top_tokens, 1):
        t.add_row(str(i), tc.text, str(tc.count), f"{tc.share:.1%}", str(tc.total), f"{tc.mean_entropy:.3f}")
    return t


def write_outputs(stats: TokenEntropyStats, res: Responses, out_dir: Path, title: str) -> list[Path]:
    """token_entropy.md, token_entropy.json (stats + samples), token_entropy_hist.png."""
    from rltrain.report.plots import plot_entropy_hist

    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "token_entropy.md"
    md.write_text(stats_markdown(stats, title))
    js = out_dir / "token_entropy.json"
    js.write_text(json.dumps({"title": title, **asdict(stats),
                              "examples": [{"prompt": p, "completion": c}
                                           for p, c in list(zip(res.prompts, res.completions))[:8]]}, indent=1))
    hist = plot_entropy_hist(res.entropy[res.mask.bool()].numpy(), out_dir / "token_entropy_hist.png", title=title)
    return [md, js, hist]
