"""PNG plots for ``rltrain-report`` (matplotlib, Agg backend: no display needed).

- ``metrics_vs_step.png`` and ``metrics_vs_wall_time.png``: a 2×3 grid of the headline training
  curves (reward, accuracy, KL, entropy, response length, clip fraction) with every run overlaid
  in its own colour. The accuracy panel shows the training accuracy (solid) and the greedy
  held-out eval accuracy (dashed, markers) of each run.
- ``entropy_law_<run>.png``: the (entropy, accuracy) pairs and the fitted R = −a·e^H + b.
- ``token_entropy_hist.png``: the distribution of per-token entropies.

A metric no run logged gets an empty panel that says so, rather than a missing file.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from rltrain.report.runs import Run

# (metric keys in order of preference, panel title). A run without the first key is drawn from the
# next one it has, and its legend entry names that key (PPO with the KL in the reward logs the
# per-sequence ``kl/ref_seq`` instead of the per-token ``actor/kl``).
PANELS = [
    (("reward/mean",), "reward (mean)"),
    (("reward/accuracy",), "accuracy"),
    (("actor/kl", "kl/ref_seq"), "KL to reference"),
    (("actor/entropy",), "entropy (nats)"),
    (("response/length_mean",), "response length (tokens)"),
    (("actor/clipfrac",), "clip fraction"),
]
X_AXES = [("step", "step", "metrics_vs_step.png"), ("wall_time", "wall time (s)", "metrics_vs_wall_time.png")]


def _plt():
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("rltrain-report's plots need matplotlib: pip install 'rltrain[report]' "
                          "(or pass --no-plots)") from err

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "run"


def plot_runs(runs: list[Run], out_dir: str | Path) -> list[Path]:
    """The two overlay grids (against step and against wall time); returns the files written."""
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    written = []
    for x, xlabel, fname in X_AXES:
        fig, axes = plt.subplots(2, 3, figsize=(15, 8), squeeze=False)
        for ax, (keys, title) in zip(axes.flat, PANELS):
            drew = False
            for i, run in enumerate(runs):
                c = colors[i % len(colors)]
                key = next((k for k in keys if run.has(k)), keys[0])
                xs, ys = run.series(key, x)
                if xs:
                    label = run.label if key == keys[0] else f"{run.label} ({key})"
                    ax.plot(xs, ys, color=c, label=label, marker="." if len(xs) < 30 else None)
                    drew = True
                if key == "reward/accuracy":
                    ex, ey = run.eval_series("accuracy", x)
                    if ex:
                        ax.plot(ex, ey, color=c, linestyle="--", marker="o", label=f"{run.label} (eval)")
                        drew = True
            ax.set_title(title)
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
            if not drew:
                ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
        seen = {}
        for ax in axes.flat:  # one legend for the figure: every distinct line label once
            for h, lab in zip(*ax.get_legend_handles_labels()):
                seen.setdefault(lab, h)
        if seen:
            fig.legend(list(seen.values()), list(seen.keys()), loc="lower center",
                       ncol=min(4, len(seen)), fontsize="small")
        fig.tight_layout(rect=(0, 0.08 if seen else 0, 1, 1))
        path = out / fname
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def plot_entropy_law(H, R, fit, path: str | Path, *, title: str, H_test=None, R_test=None,
                     r_label: str = "accuracy") -> Path:
    """Scatter of (H, R) with the fitted curve; held-out (later) points in another colour."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(H, R, s=18, label="fitted points")
    allH = np.concatenate([np.asarray(H, float)] + ([np.asarray(H_test, float)] if H_test is not None else []))
    if H_test is not None and len(H_test):
        ax.scatter(H_test, R_test, s=18, color="tab:orange", label="held-out (later) points")
    lo, hi = min(0.0, float(allH.min())), float(allH.max()) * 1.05 + 1e-6
    grid = np.linspace(lo, hi, 200)
    ax.plot(grid, fit.predict(grid), color="black",
            label=f"R = −{fit.a:.3g}·e^H + {fit.b:.3g}  (R²={fit.r2:.3f})")
    ax.axhline(fit.ceiling, color="gray", linestyle=":", label=f"ceiling b − a = {fit.ceiling:.3g}")
    ax.set_xlabel("entropy H (nats)")
    ax.set_ylabel(r_label)
    ax.set_title(title, fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p


def plot_entropy_hist(entropies, path: str | Path, *, title: str) -> Path:
    """Histogram of per-token entropies on a log x-axis (most tokens sit near 0)."""
    plt = _plt()
    e = np.asarray(entropies, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 4))
    floor = 1e-6
    bins = np.logspace(np.log10(floor), np.log10(max(float(e.max()), 1e-3) * 1.01), 50)
    ax.hist(np.clip(e, floor, None), bins=bins)
    ax.set_xscale("log")
    ax.axvline(0.01, color="gray", linestyle=":", label="0.01")
    ax.axvline(float(np.quantile(e, 0.8)), color="tab:red", linestyle="--", label="80th percentile")
    ax.set_xlabel("token entropy (nats, values < 1e-6 shown at 1e-6)")
    ax.set_ylabel("tokens")
    ax.set_title(title, fontsize="medium")
    ax.legend(fontsize="small")
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p
