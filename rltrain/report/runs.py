"""Reading run directories and comparing them: the data side of ``rltrain-report``.

A run directory holds ``config.yaml`` (the resolved config) and ``metrics.jsonl``: step rows
``{"step": n, "wall_time": s, <metric>: value, ...}`` (``RunLogger.log``) and event rows
``{"step": n, "event": "eval", "accuracy": ..., ...}`` (``RunLogger.event``). Evaluations between
start and end are logged inside step rows as ``eval/<key>``; both forms are read as evals. A sampled
evaluation (``eval.n`` > 1) adds ``mean@n``, ``pass@k`` and ``maj@k`` (``sampled_eval_table``).

Everything here tolerates missing pieces: a run without ``config.yaml`` is labelled by its
directory name, a metric no row has is simply absent, a line cut off by a crash is skipped.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# Config keys that never explain a difference between runs (paths, logging, launch, evaluation).
LABEL_NOISE = ("hydra", "run_dir", "resume", "log", "launch", "checkpoint", "eval")
MAX_LABEL = 60


@dataclass
class Run:
    """One run directory, parsed.

    Attributes:
        path: the run directory.
        config: the resolved config as nested dicts ({} when ``config.yaml`` is missing).
        overrides: the command-line overrides Hydra recorded (``.hydra/overrides.yaml``), if any.
        steps: step rows sorted by step (one per step: the last line wins after a resume).
        evals: held-out evaluations ``{"step": n, "accuracy": ..., ...}`` sorted by step.
        label: short name for legends and tables (set by ``load_runs``).
    """

    path: Path
    config: dict = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    label: str = ""

    def has(self, key: str) -> bool:
        return any(_is_num(r.get(key)) for r in self.steps)

    def series(self, key: str, x: str = "step") -> tuple[list[float], list[float]]:
        """(xs, ys) of ``key`` over the step rows that have it; ``x`` is ``step`` or ``wall_time``."""
        pts = [(r[x], r[key]) for r in self.steps if _is_num(r.get(key)) and _is_num(r.get(x))]
        return [p[0] for p in pts], [p[1] for p in pts]

    def eval_series(self, key: str = "accuracy", x: str = "step") -> tuple[list[float], list[float]]:
        """Held-out eval ``key`` against step or (approximate) wall time: an eval after step n is
        placed at that step's ``wall_time`` (0 for the eval before training)."""
        wall = {r["step"]: r["wall_time"] for r in self.steps if _is_num(r.get("wall_time"))}
        wall.setdefault(0, 0.0)
        xs, ys = [], []
        for e in self.evals:
            xv = e["step"] if x == "step" else wall.get(e["step"])
            if _is_num(e.get(key)) and xv is not None:
                xs.append(xv)
                ys.append(e[key])
        return xs, ys


SAMPLED_EVAL_PREFIXES = ("mean@", "pass@", "maj@")


def sampled_eval_keys(ev: dict) -> list[str]:
    """The sampled-evaluation metrics of an eval record (``mean@n``, ``pass@k``, ``maj@k``, logged
    with ``eval.n`` > 1), ordered mean, pass, maj, then by k."""
    split = {k: k.partition("@") for k in ev if k.startswith(SAMPLED_EVAL_PREFIXES)}
    order = {k: (SAMPLED_EVAL_PREFIXES.index(head + at), int(n)) for k, (head, at, n) in split.items() if n.isdigit()}
    return sorted(order, key=order.get)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    """(step rows, eval records) of a ``metrics.jsonl``; unreadable lines are skipped."""
    steps: dict[int, dict] = {}
    evals: dict[int, dict] = {}
    if not path.exists():
        return [], []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if not isinstance(row, dict) or not _is_num(row.get("step")):
            continue
        step = int(row["step"])
        if row.get("event") == "eval":
            evals[step] = {k: v for k, v in row.items() if k != "event"}
        elif "event" not in row:
            steps[step] = row
            inline = {k[len("eval/"):]: v for k, v in row.items() if k.startswith("eval/")}
            if inline:
                evals.setdefault(step, {"step": step, **inline})
    return [steps[k] for k in sorted(steps)], [evals[k] for k in sorted(evals)]


def load_run(path: str | Path) -> Run:
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"run directory {p} does not exist")
    config, overrides = {}, []
    if (p / "config.yaml").exists():
        config = yaml.safe_load((p / "config.yaml").read_text()) or {}
    if (p / ".hydra" / "overrides.yaml").exists():
        overrides = [str(o) for o in (yaml.safe_load((p / ".hydra" / "overrides.yaml").read_text()) or [])]
    steps, evals = read_metrics(p / "metrics.jsonl")
    return Run(path=p, config=config, overrides=overrides, steps=steps, evals=evals)


def expand_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Run directories among ``paths``: a directory with ``metrics.jsonl`` is a run; one without
    (a sweep's ``multirun/...`` folder) contributes its subdirectories that are runs."""
    out = []
    for raw in paths:
        p = Path(raw)
        if (p / "metrics.jsonl").exists():
            out.append(p)
        elif p.is_dir():
            found = sorted(c for c in p.rglob("metrics.jsonl") if ".hydra" not in c.parts)
            if not found:
                raise FileNotFoundError(f"{p}: no metrics.jsonl in it or below it")
            out.extend(c.parent for c in found)
        else:
            raise FileNotFoundError(f"run directory {p} does not exist")
    return out


def load_runs(paths: list[str | Path], dir_labels: bool = False) -> list[Run]:
    """The runs under ``paths``, labelled by what sets them apart (``make_labels``) or, with
    ``dir_labels``, by their directory names."""
    runs = [load_run(p) for p in expand_run_dirs(paths)]
    labels = [r.path.name for r in runs] if dir_labels else make_labels(runs)
    for run, label in zip(runs, labels):
        run.label = label
    return runs


# --------------------------------------------------------------------------- labels


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _noise(key: str) -> bool:
    return key.split(".")[0].lstrip("+~") in LABEL_NOISE


def _differences(configs: list[dict]) -> list[list[str]]:
    """Per run, ``key=value`` for every key whose value differs between the runs; when a group's
    ``name`` differs, that one ``group=name`` stands for the whole group."""
    flat = [flatten(c) for c in configs]
    keys = sorted(set().union(*flat), key=lambda k: (k.count("."), k))
    differing = [k for k in keys if not _noise(k) and len({json.dumps(f.get(k), default=str) for f in flat}) > 1]
    groups = {k[: -len(".name")] for k in differing if k.endswith(".name")}
    out = []
    for f in flat:
        parts = []
        for k in differing:
            head = k.rsplit(".", 1)[0] if "." in k else ""
            if k.endswith(".name") and head in groups:
                parts.append(f"{head}={f.get(k)}")
            elif head in groups:  # a field of a group whose option differs: shown where it sets
                same = [g for g in flat if g.get(f"{head}.name") == f.get(f"{head}.name")]  # runs of one option apart
                if len({json.dumps(g.get(k), default=str) for g in same}) > 1:
                    parts.append(f"{k}={f.get(k)}")
            elif k != "algo.name":
                parts.append(f"{k}={f.get(k)}")
        out.append(sorted(parts, key=lambda p: "." in p.split("=")[0]))  # group choices first
    return out


def make_labels(runs: list[Run]) -> list[str]:
    """``<algo> <what sets it apart>``: with several runs, the config keys that differ between them;
    with one, its own command-line overrides. Falls back to the directory name; duplicates get
    the directory name appended."""
    if len(runs) > 1 and all(r.config for r in runs):
        extras = _differences([r.config for r in runs])
    else:  # the config-group choices among the run's own overrides (model=tiny, policy_loss=kl_cov)
        extras = [[o for o in r.overrides if "." not in o.split("=")[0] and not _noise(o.split("=")[0])
                   and not o.startswith("algo=")] for r in runs]
    labels = []
    for run, extra in zip(runs, extras):
        algo = (run.config.get("algo") or {}).get("name") if run.config else None
        text = " ".join([algo or run.path.name, ", ".join(extra)]).strip()
        labels.append(text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…")
    for i, lab in enumerate(labels):
        if labels.count(lab) > 1:
            labels[i] = f"{lab} [{runs[i].path.name}]"
    return labels


# --------------------------------------------------------------------------- comparison table


@dataclass(frozen=True)
class Summary:
    """One row of the comparison table (None where the run did not log the quantity)."""

    label: str
    steps: int
    acc_before: float | None
    acc_after: float | None
    step_time: float | None
    tokens_per_s: float | None
    final_entropy: float | None
    final_reward: float | None
    wall_time: float | None


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarize(run: Run) -> Summary:
    """Final eval accuracy before/after training, mean step time (``time/step``, else the spacing
    of ``wall_time``), mean rollout tokens/s, final entropy and reward."""
    _, step_times = run.series("time/step")
    if not step_times:
        _, wall = run.series("wall_time")
        step_times = [b - a for a, b in zip(wall, wall[1:])]
    _, tps = run.series("perf/tokens_per_s")
    _, ent = run.series("actor/entropy")
    _, rew = run.series("reward/mean")
    _, wall = run.series("wall_time")
    accs = [(e["step"], e["accuracy"]) for e in run.evals if _is_num(e.get("accuracy"))]
    before = next((a for s, a in accs if s == 0), None)
    last_step = run.steps[-1]["step"] if run.steps else 0
    after = accs[-1][1] if accs and accs[-1][0] > 0 and accs[-1][0] >= last_step else None
    return Summary(label=run.label, steps=len(run.steps), acc_before=before, acc_after=after,
                   step_time=_mean(step_times), tokens_per_s=_mean(tps), final_entropy=ent[-1] if ent else None,
                   final_reward=rew[-1] if rew else None, wall_time=wall[-1] if wall else None)


COLUMNS = [
    ("run", "label", "{}"),
    ("steps", "steps", "{}"),
    ("eval acc before", "acc_before", "{:.1%}"),
    ("eval acc after", "acc_after", "{:.1%}"),
    ("mean step time (s)", "step_time", "{:.2f}"),
    ("rollout tok/s", "tokens_per_s", "{:.0f}"),
    ("final entropy", "final_entropy", "{:.3f}"),
    ("final reward", "final_reward", "{:.3f}"),
    ("wall time (s)", "wall_time", "{:.0f}"),
]


def sampled_eval_table(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the sampled evaluations: for each run that logged them, its first and
    last eval (step, mean@n, pass@k, maj@k); "-" where a run lacks a column. No rows: none did."""
    picked = []
    for run in runs:
        evals = [e for e in run.evals if sampled_eval_keys(e)]
        picked += [(run, e) for e in ([evals[0], evals[-1]] if len(evals) > 1 else evals)]
    keys = sampled_eval_keys(dict.fromkeys(k for _, e in picked for k in sampled_eval_keys(e)))
    rows = [[run.label, str(e["step"])] + [f"{e[k]:.1%}" if _is_num(e.get(k)) else "-" for k in keys]
            for run, e in picked]
    return ["run", "step"] + keys, rows


def table_cells(s: Summary) -> list[str]:
    cells = []
    for _, attr, fmt in COLUMNS:
        v = getattr(s, attr)
        cells.append("-" if v is None else fmt.format(v))
    return cells


def markdown_table(summaries: list[Summary]) -> str:
    head = [c[0] for c in COLUMNS]
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"
    lines = ["| " + " | ".join(head) + " |", rule]
    for s in summaries:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in table_cells(s)) + " |")
    return "\n".join(lines) + "\n"


def rich_table(summaries: list[Summary], title: str = "runs"):
    from rich.table import Table

    t = Table(title=title)
    for i, (name, _, _) in enumerate(COLUMNS):
        t.add_column(name, justify="left" if i == 0 else "right")
    for s in summaries:
        t.add_row(*table_cells(s))
    return t
