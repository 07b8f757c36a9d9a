"""``rltrain-report``: plots, a comparison table and the entropy-law fit of finished (or running)
runs, and a token-entropy analysis of a model on a dataset.

    rltrain-report outputs/2026-*/*                       # plots + comparison table
    rltrain-report multirun/2026-05-01/10-00-00 --out cmp # every run of a sweep
    rltrain-report RUN --entropy-law --fit-fraction 0.3   # fit R = −a·e^H + b, forecast the rest
    rltrain-report RUN --samples [--step N] [--kind eval] # what the model wrote (samples.jsonl)
    rltrain-report --token-entropy --model smollm2_135m --data arith --n 64

Outputs go to ``--out`` (default: ``<run>/report`` for one run, ``./report`` for several, and
``./report/token_entropy`` for the token-entropy analysis): metrics_vs_step.png,
metrics_vs_wall_time.png, comparison.md (the table, and the entropy-law fits when asked),
entropy_law_<i>_<run>_<source>.png; token_entropy.{md,json} and token_entropy_hist.png.

This module reads run directories and plots; the command's ``--token-entropy`` runs a model, so
the ``rltrain-report`` entry point is ``rltrain.analysis.main`` (one layer up), which sends
everything else here.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from rltrain.report import entropy_law as EL
from rltrain.report.plots import plot_entropy_law, plot_runs, slug
from rltrain.report.runs import Run, load_runs, markdown_table, rich_table, sampled_eval_table, summarize
from rltrain.report.samples import show_samples

MIN_LAW_POINTS = 3  # two points always fit exactly


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rltrain-report", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("runs", nargs="*", metavar="RUN_DIR",
                   help="run directories (or folders holding runs, e.g. a multirun sweep)")
    p.add_argument("--out", type=Path, default=None, help="output directory")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--dir-labels", action="store_true",
                   help="label runs by their directory names (default: by the config keys that differ)")
    sm = p.add_argument_group("samples (samples.jsonl): what the model wrote")
    sm.add_argument("--samples", action="store_true",
                    help="print one step's rollouts: the best and worst by reward and a random one (one RUN_DIR)")
    sm.add_argument("--step", type=int, default=None, help="which step (default: the last with samples)")
    sm.add_argument("--kind", choices=["train", "eval"], default="train",
                    help="training rollouts, or a held-out evaluation's answers (wrong and right)")
    sm.add_argument("--count", type=int, default=1, help="rollouts of each of best / worst / random (or wrong / right)")
    law = p.add_argument_group("entropy law (Cui et al. 2025): R = −a·exp(H) + b")
    law.add_argument("--entropy-law", action="store_true", help="fit the law to each run")
    law.add_argument("--fit-fraction", type=float, default=None,
                     help="fit on the first fraction of each run's points, report the RMSE on the rest")
    law.add_argument("--law-source", choices=["train", "eval", "both"], default="both",
                     help="R = training accuracy per step (train), held-out greedy eval accuracy (eval), or both")
    law.add_argument("--smooth", type=int, default=1,
                     help="average H and R over windows of this many consecutive points before fitting")
    te = p.add_argument_group("token-entropy analysis (Wang et al. 2025, '80/20')")
    te.add_argument("--token-entropy", action="store_true", help="analyse a model's token entropies")
    te.add_argument("--model", default="smollm2_135m", help="smollm2_135m | tiny | hf")
    te.add_argument("--model-path", default=None, help="hub id or local directory (model hf), or a saved tiny")
    te.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"], help="model weights dtype")
    te.add_argument("--data", default="arith", help="dataset option name (as data=...)")
    te.add_argument("--data-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="a dataset builder option, e.g. difficulty=3 (repeatable)")
    te.add_argument("--split", default="test", choices=["train", "test"])
    te.add_argument("--n", type=int, default=64, help="number of prompts (one sampled response each)")
    te.add_argument("--max-new-tokens", type=int, default=64)
    te.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (entropy is at T=1)")
    te.add_argument("--texts", type=Path, default=None,
                    help='score given responses instead of sampling: jsonl rows {"prompt": ..., "response": ...}')
    te.add_argument("--no-chat-template", action="store_true", help="plain-text prompts")
    te.add_argument("--top-ratio", type=float, default=0.2, help="share of tokens counted as high-entropy")
    te.add_argument("--top-k", type=int, default=20, help="high-entropy tokens to list")
    te.add_argument("--seed", type=int, default=0)
    return p


# --------------------------------------------------------------------------- runs


@dataclass
class LawRow:
    """The entropy-law fit of one run on one source of (H, R) pairs."""

    source: str
    what: str  # what R is
    H: np.ndarray
    R: np.ndarray
    fit: EL.EntropyLawFit | None = None
    forecast: EL.Forecast | None = None
    note: str = ""


def law_rows(run: Run, sources: list[str], fit_fraction: float | None, smooth: int) -> list[LawRow]:
    out = []
    for source in sources:
        H, R, what = EL.pairs_from_rows(run.steps, run.evals, source)
        row = LawRow(source, what, EL.moving_average(H, smooth), EL.moving_average(R, smooth))
        if len(row.H) < MIN_LAW_POINTS:
            hint = "; set eval.every" if source == "eval" else ""
            row.note = f"{len(row.H)} points (need {MIN_LAW_POINTS}{hint})"
        else:
            try:
                row.fit = EL.fit_entropy_law(row.H, row.R)
                row.note = "R is constant: R² undefined" if math.isnan(row.fit.r2) else ""
                if fit_fraction is not None:
                    row.forecast = EL.forecast(row.H, row.R, fit_fraction)
            except ValueError as err:
                row.note = str(err)
        out.append(row)
    return out


def _f(v, fmt="{:.4g}") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


LAW_HEAD = ["run", "R", "points", "a", "b", "R²", "ceiling b−a", "fit/predict", "forecast RMSE", "note"]


def law_cells(run: Run, row: LawRow) -> list[str]:
    fit, fc = row.fit, row.forecast
    return [run.label, row.what, str(len(row.H)), _f(fit and fit.a), _f(fit and fit.b), _f(fit and fit.r2, "{:.3f}"),
            _f(fit and fit.ceiling), f"{fc.n_fit}/{fc.n_test}" if fc else "-", _f(fc and fc.rmse), row.note]


def report_runs(args, console: Console) -> int:
    runs = load_runs(args.runs, dir_labels=args.dir_labels)
    out = args.out or (runs[0].path / "report" if len(runs) == 1 else Path("report"))
    out.mkdir(parents=True, exist_ok=True)
    for r in runs:
        if not r.steps:
            console.print(f"[yellow]warning[/]: {r.path} has no step rows in metrics.jsonl")
    summaries = [summarize(r) for r in runs]
    console.print(rich_table(summaries, title=f"{len(runs)} run(s)"))
    md = ["# rltrain-report", "", "Runs: " + ", ".join(f"`{r.path}`" for r in runs), "",
          "Eval accuracy: held-out, before the first and after the last step; greedy, or with `eval.n` > 1 the "
          "mean over the samples (mean@n). Step time: mean of `time/step`. Rollout tok/s: mean of "
          "`perf/tokens_per_s` (generated tokens / rollout time).", "",
          markdown_table(summaries)]
    head, rows = sampled_eval_table(runs)
    if rows:
        t = Table(title="sampled evaluation (first and last)")
        for i, h in enumerate(head):
            t.add_column(h, justify="left" if i == 0 else "right")
        for r in rows:
            t.add_row(*r)
        console.print(t)
        md += ["## Sampled evaluation", "",
               "`eval.n` samples per question: mean@n = mean accuracy over every sample; pass@k = unbiased "
               "estimate of P(at least one of k samples is correct) (Chen et al. 2021); maj@k = the most frequent "
               "extracted answer among the first k samples is correct (ties: the earliest). Each averaged over "
               "questions; the run's first and last sampled evaluation.", "",
               "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        md += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows] + [""]
    files = [] if args.no_plots else [str(p) for p in plot_runs(runs, out)]

    if args.entropy_law:
        sources = ["train", "eval"] if args.law_source == "both" else [args.law_source]
        smoothed = f", smoothed over {args.smooth}" if args.smooth > 1 else ""
        t = Table(title=f"entropy law R = −a·exp(H) + b{smoothed}")
        for h in LAW_HEAD:
            t.add_column(h, justify="left" if h in ("run", "R", "note") else "right")
        md += ["## Entropy law R = −a·exp(H) + b", "",
               "Least-squares fit (closed form). R = training accuracy of each step's samples paired with that "
               "step's mean token entropy (`train`), or greedy held-out eval accuracy paired with the entropy "
               "of the policy it evaluated (`eval`). Ceiling = predicted R at H = 0."
               + (f" Forecast: fit on the first {args.fit_fraction:.0%} of the points, RMSE on the rest."
                  if args.fit_fraction else ""), "",
               "| " + " | ".join(LAW_HEAD) + " |", "|" + "|".join(["---"] * len(LAW_HEAD)) + "|"]
        for i, run in enumerate(runs):
            for row in law_rows(run, sources, args.fit_fraction, args.smooth):
                cells = law_cells(run, row)
                t.add_row(*cells)
                md.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
                if row.fit is not None and not args.no_plots:
                    name = out / f"entropy_law_{i}_{slug(run.label)[:40]}_{row.source}.png"
                    H, R, fc = row.H, row.R, row.forecast
                    if fc is not None:
                        k = fc.n_fit
                        plot_entropy_law(H[:k], R[:k], fc.fit, name, title=f"{run.label}: fit on first {k}, "
                                         f"forecast RMSE {fc.rmse:.3g}", H_test=H[k:], R_test=R[k:], r_label=row.what)
                    else:
                        plot_entropy_law(H, R, row.fit, name, title=run.label, r_label=row.what)
                    files.append(str(name))
        console.print(t)
        md.append("")
    (out / "comparison.md").write_text("\n".join(md) + "\n")
    files.append(str(out / "comparison.md"))
    console.print("wrote " + ", ".join(files))
    return 0


# --------------------------------------------------------------------------- entry


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked (``--fit-fraction`` implies ``--entropy-law``)."""
    args = build_parser().parse_args(argv)
    if args.fit_fraction is not None and not 0 < args.fit_fraction < 1:
        raise SystemExit(f"--fit-fraction must be in (0, 1), got {args.fit_fraction}")
    if args.smooth < 1:
        raise SystemExit(f"--smooth must be >= 1, got {args.smooth}")
    if args.fit_fraction is not None:
        args.entropy_law = True
    if args.token_entropy and args.runs:
        raise SystemExit("--token-entropy analyses a model, not run directories; give no RUN_DIR")
    if args.samples and len(args.runs) != 1:
        raise SystemExit(f"--samples shows one run: give exactly one RUN_DIR (got {len(args.runs)})")
    if args.count < 1:
        raise SystemExit(f"--count must be >= 1, got {args.count}")
    return args


def console() -> Console:
    return Console() if sys.stdout.isatty() else Console(width=200)


def report(args: argparse.Namespace) -> int:
    """Tables and plots of the run directories in ``args.runs``."""
    if args.token_entropy:  # it runs a model: rltrain.analysis (the rltrain-report command) does that
        raise SystemExit("rltrain-report: --token-entropy runs a model; start it with the rltrain-report command "
                         "(rltrain.analysis:main), not rltrain.report.cli")
    if not args.runs:
        build_parser().print_usage(sys.stderr)
        raise SystemExit("rltrain-report: give one or more RUN_DIRs (or --token-entropy)")
    try:
        if args.samples:
            return show_samples(args.runs[0], console(), kind=args.kind, step=args.step, count=args.count)
        return report_runs(args, console())
    except FileNotFoundError as err:
        raise SystemExit(f"rltrain-report: {err}") from err


def main(argv: list[str] | None = None) -> int:
    """Run directories only; the ``rltrain-report`` command is ``rltrain.analysis.main``, which also
    serves ``--token-entropy``."""
    return report(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
