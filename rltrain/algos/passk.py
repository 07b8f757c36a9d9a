"""Metrics of a sampled evaluation: n answers per question, c of them correct.

- pass@k: the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on
  Code", eq. 1): the probability that at least one of k answers drawn without replacement from the
  n is correct, 1 − C(n−c, k) / C(n, k), averaged over questions by the caller.
- maj@k: majority voting over the first k answers (self-consistency, Wang et al. 2022; "maj1@k"
  of Lewkowycz et al. 2022): the question counts as solved when the most frequent final answer
  among the first k samples is a correct one.

No deviation from either paper; pass@k uses the product form of Chen et al.'s reference code, never
factorials. Pure functions on plain Python values: no tensors, no config.
"""
from __future__ import annotations

from typing import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one question with ``c`` correct answers among ``n`` samples.

    1 − C(n−c, k) / C(n, k), computed as 1 − ∏_{i=n−c+1}^{n} (1 − k/i): the ratio of binomials
    telescopes into c factors in (0, 1], so nothing overflows and no large numbers cancel.
    Exactly 1.0 when n − c < k (every k-subset holds a correct answer) and exactly 0.0 when c = 0.

    Args:
        n: samples drawn for the question (≥ 1).
        c: how many of them are correct (0 ≤ c ≤ n).
        k: the budget (1 ≤ k ≤ n).
    """
    if not (n >= 1 and 0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs n ≥ 1, 0 ≤ c ≤ n and 1 ≤ k ≤ n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    none_correct = 1.0  # C(n−c, k) / C(n, k): the chance that k draws miss every correct answer
    for i in range(n - c + 1, n + 1):
        none_correct *= 1.0 - k / i
    return 1.0 - none_correct


def majority_vote(answers: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """Whether the majority answer among ``answers`` is correct (maj@k with k = len(answers)).

    Votes are the answer strings exactly as given (the caller passes the reward's extracted
    final answer, ``info["extracted"]``; for ``MathReward`` that is ``extract_answer``'s result,
    e.g. the content of the last ``\\boxed{}``, before normalisation, so "1/2" and "0.5" are two
    different votes).
    ``None`` (no final answer found) casts no vote; with no vote at all the question counts as
    not solved. Ties go to the tied answer that appears first in ``answers`` (the lowest sample
    index), so the result is deterministic. The winner is correct when the sample where it first
    appears is correct (samples with the same answer string get the same verdict from a
    rule-based reward).

    Args:
        answers: per sample, its final answer or None.
        correct: per sample, whether the reward judged it correct (same length).
    """
    if len(answers) != len(correct):
        raise ValueError(f"majority_vote: {len(answers)} answers for {len(correct)} correctness flags")
    votes: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, a in enumerate(answers):
        if a is None:
            continue
        votes[a] = votes.get(a, 0) + 1
        first.setdefault(a, i)
    if not votes:
        return False
    winner = max(votes, key=lambda a: (votes[a], -first[a]))
    return bool(correct[first[winner]])
