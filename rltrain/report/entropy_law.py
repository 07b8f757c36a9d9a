"""The entropy law of Cui et al. 2025 ("The Entropy Mechanism of RL for Reasoning LMs", arXiv
2505.22617; docs/algorithms.md §6): downstream performance R and policy entropy H obey

    R = −a · exp(H) + b

over a run, so the performance ceiling once entropy is exhausted (H = 0) is R = b − a.

The model is linear in (a, b) once x = exp(H) is fixed, so the least-squares fit is ordinary linear
regression of R on x in closed form (no iterative curve fitting, no scipy):

    slope = Σ (x − x̄)(R − R̄) / Σ (x − x̄)²,   a = −slope,   b = R̄ − slope · x̄.

Which (H, R) pairs a run gives (``pairs_from_rows``):
- ``train``: one pair per logged step, H = ``actor/entropy`` (mean token entropy of that step's
  rollout under the policy that sampled it) and R = ``reward/accuracy`` (fraction of that step's
  sampled responses that are correct; ``reward/mean`` when a run logs no accuracy). Many points,
  but R is a noisy sampled estimate (prompts_per_step × samples_per_prompt responses).
- ``eval``: the paper's choice, R = greedy held-out accuracy. An eval taken after step n measures
  the policy that samples step n+1, so it is paired with step n+1's entropy (the final eval, with
  no step after it, with the last step's). Runs evaluate only at start and end unless
  ``eval.every`` is set, so this usually has few points.

Deviation from the paper: the paper fits validation accuracy only; the training-accuracy fit is the
one with enough points for a short CPU run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EntropyLawFit:
    """Least-squares fit of R = −a·exp(H) + b.

    Attributes:
        a, b: the law's coefficients.
        r2: coefficient of determination on the fitted points (NaN when R is constant).
        n: number of (H, R) pairs fitted.
    """

    a: float
    b: float
    r2: float
    n: int

    @property
    def ceiling(self) -> float:
        """Predicted performance at zero entropy: b − a."""
        return self.b - self.a

    def predict(self, entropy) -> np.ndarray:
        return -self.a * np.exp(np.asarray(entropy, dtype=np.float64)) + self.b


def fit_entropy_law(entropy, reward) -> EntropyLawFit:
    """Fit R = −a·exp(H) + b by least squares (closed form).

    Args:
        entropy: ``[n]`` policy entropies H (nats).
        reward: ``[n]`` performances R, paired with ``entropy``.

    Raises:
        ValueError: fewer than 2 pairs, mismatched lengths, non-finite values, or all H equal
            (the slope is then undetermined).
    """
    H = np.asarray(entropy, dtype=np.float64)
    R = np.asarray(reward, dtype=np.float64)
    if H.shape != R.shape or H.ndim != 1:
        raise ValueError(f"entropy and reward must be 1-D of equal length, got {H.shape} and {R.shape}")
    if len(H) < 2:
        raise ValueError(f"the entropy law needs at least 2 (entropy, reward) pairs, got {len(H)}")
    if not (np.isfinite(H).all() and np.isfinite(R).all()):
        raise ValueError("entropy and reward must be finite")
    x = np.exp(H)
    dx = x - x.mean()
    sxx = float(dx @ dx)
    if sxx <= 1e-12 * max(1.0, float(x.mean()) ** 2) * len(x):
        raise ValueError("all entropies are equal: the entropy law's slope is undetermined")
    slope = float(dx @ (R - R.mean())) / sxx
    b = float(R.mean()) - slope * float(x.mean())
    fit = EntropyLawFit(a=-slope, b=b, r2=math.nan, n=len(H))
    return EntropyLawFit(a=fit.a, b=fit.b, r2=r_squared(R, fit.predict(H)), n=len(H))


def r_squared(actual, predicted) -> float:
    """1 − SS_res / SS_tot; NaN when ``actual`` is constant."""
    y, p = np.asarray(actual, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    if len(y) == 0 or np.ptp(y) == 0.0:
        return math.nan
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - p) ** 2).sum()) / ss_tot


def rmse(actual, predicted) -> float:
    y, p = np.asarray(actual, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    return float(np.sqrt(((y - p) ** 2).mean()))


@dataclass(frozen=True)
class Forecast:
    """A fit on the first ``n_fit`` pairs of a run and its error on the remaining ``n_test``."""

    fit: EntropyLawFit
    n_fit: int
    n_test: int
    rmse: float
    """Root-mean-square error of the prediction on the held-out (later) pairs."""


def forecast(entropy, reward, fit_fraction: float) -> Forecast:
    """Fit on the first ``fit_fraction`` of the pairs (in run order), predict the rest.

    Raises:
        ValueError: ``fit_fraction`` not in (0, 1), or a split with fewer than 2 pairs to fit
            or none to predict.
    """
    if not 0.0 < fit_fraction < 1.0:
        raise ValueError(f"fit_fraction must be in (0, 1), got {fit_fraction}")
    H = np.asarray(entropy, dtype=np.float64)
    R = np.asarray(reward, dtype=np.float64)
    k = int(round(fit_fraction * len(H)))
    if k < 2 or k >= len(H):
        raise ValueError(f"fit_fraction={fit_fraction} of {len(H)} pairs leaves {k} to fit and {len(H) - k} "
                         "to predict; need at least 2 and 1")
    fit = fit_entropy_law(H[:k], R[:k])
    return Forecast(fit=fit, n_fit=k, n_test=len(H) - k, rmse=rmse(R[k:], fit.predict(H[k:])))


def moving_average(values, window: int) -> np.ndarray:
    """The mean of every full window of ``window`` consecutive values (``len − window + 1``
    outputs, none when the series is shorter). ``window=1`` returns the values unchanged."""
    v = np.asarray(values, dtype=np.float64)
    if window < 1:
        raise ValueError(f"smoothing window must be >= 1, got {window}")
    if window == 1:
        return v
    if len(v) < window:
        return np.empty(0)
    c = np.cumsum(np.insert(v, 0, 0.0))
    return (c[window:] - c[:-window]) / window


ENTROPY_KEY = "actor/entropy"
TRAIN_REWARD_KEYS = ("reward/accuracy", "reward/mean")


def pairs_from_rows(steps: list[dict], evals: list[dict], source: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(H, R, what R is) of a run, in step order; see the module docstring.

    Args:
        steps: the run's step rows (each with ``step``), sorted by step.
        evals: ``{"step": n, "accuracy": ...}`` records of held-out evals, sorted by step.
        source: ``train`` | ``eval``.
    """
    if source == "train":
        key = next((k for k in TRAIN_REWARD_KEYS if any(k in r for r in steps)), None)
        if key is None:
            return np.empty(0), np.empty(0), "none"
        rows = [r for r in steps if _finite(r.get(ENTROPY_KEY)) and _finite(r.get(key))]
        return (np.array([r[ENTROPY_KEY] for r in rows], dtype=np.float64),
                np.array([r[key] for r in rows], dtype=np.float64), f"train {key}")
    if source == "eval":
        ent = {r["step"]: r[ENTROPY_KEY] for r in steps if _finite(r.get(ENTROPY_KEY))}
        H, R = [], []
        for e in evals:
            h = ent.get(e["step"] + 1, ent.get(e["step"]))
            if h is not None and _finite(e.get("accuracy")):
                H.append(h)
                R.append(e["accuracy"])
        return np.array(H, dtype=np.float64), np.array(R, dtype=np.float64), "eval accuracy (greedy, held-out)"
    raise ValueError(f"unknown entropy-law source {source!r}; valid: train, eval")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
