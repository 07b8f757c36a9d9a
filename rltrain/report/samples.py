"""``samples.jsonl``: what the model wrote. One JSON object per line:

- ``kind: "train"``, one per rollout of a training step (the first ``log.samples_per_step`` of the
  step's batch on rank 0, so whole prompt groups when it is a multiple of the group size; the
  prompts are in random order): ``step``, ``id`` (the prompt's dataset id), ``prompt`` (the question
  before the chat template), ``answer`` (the reference), ``completion``, ``reward`` (the score the
  advantage was computed from), ``advantage`` (its mean over the response's tokens; GRPO's is the
  same on every token; absent where the loop has none: iterative DPO, SPO-tree's leaves), ``length``
  (tokens), ``finished`` (ended by EOS or a stop string, not cut at ``rollout.max_new_tokens``; absent
  for SPO-tree's leaves) and ``info``
  (the reward's per-completion details: ``correct``, ``extracted``, a combined reward's components
  ``reward/<label>``, errors).
- ``kind: "eval"``, one per answer of a held-out evaluation (the first ``log.eval_samples`` of rank
  0's share; ``step`` 0 is before training): ``prompt``, ``answer``, ``completion``, ``reward`` (the
  score), ``correct`` (the verdict), ``extracted`` (the answer the reward read, where it reports
  one), ``length``, ``finished``, ``sample`` (which of the ``eval.n`` samples).

Bounded on disk: a text field longer than ``MAX_TEXT_CHARS`` is cut (its end replaced by
``…[+N chars]``), and the file stops growing at ``log.samples_max_mb`` (one warning says so). The
file is ASCII (JSON escapes everything else), so a terminal showing it raw never receives a control
character of the model's output; ``printable`` escapes them for ``rltrain-report --samples``.
"""
from __future__ import annotations

import json
import logging
import random
import unicodedata
from pathlib import Path

from rich.console import Console
from rich.text import Text

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 8000


# --------------------------------------------------------------------------- rows


def _jsonable(v, depth: int = 0):
    """A reward-info value as JSON-ready data (tensors and numpy scalars as numbers, the rest as text)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if hasattr(v, "tolist"):  # torch / numpy
        return v.tolist()
    if isinstance(v, (list, tuple)) and depth < 3:
        return [_jsonable(x, depth + 1) for x in v]
    if isinstance(v, dict) and depth < 3:
        return {str(k): _jsonable(x, depth + 1) for k, x in v.items()}
    return str(v)


def rollout_rows(scored, advantages=None, *, limit: int) -> list[dict]:
    """The first ``limit`` rollouts of a step (a ``loops.episodes.Scored``) as ``train`` rows.

    ``advantages``: ``[N, T]`` per-token advantages of the update (or None); a row gets their mean
    over its valid tokens (``scored.mask``)."""
    k = min(limit, len(scored.completions))
    if k <= 0:
        return []
    mask = scored.mask[:k].float()  # [k, T]
    adv = None
    if advantages is not None:
        T = min(mask.shape[1], advantages.shape[1])
        adv = ((advantages[:k, :T].float() * mask[:, :T]).sum(1) / mask[:, :T].sum(1).clamp(min=1)).tolist()
    return completion_rows(scored.samples, scored.completions, scored.scores.tolist(), scored.reward.info,
                           scored.lengths.tolist(), limit=k, finished=scored.finished.tolist(), advantages=adv)


def completion_rows(samples, completions: list[str], scores: list[float], info: dict, lengths: list[int], *,
                    limit: int, finished: list[bool] | None = None,
                    advantages: list[float] | None = None) -> list[dict]:
    """The first ``limit`` scored completions as ``train`` rows (``rollout_rows`` without a ``Scored``:
    SPO-tree's leaves). ``info``: the reward's per-completion lists."""
    rows = []
    for i in range(min(limit, len(completions))):
        s = samples[i]
        row = {"kind": "train", "id": s.id, "prompt": s.question, "answer": s.answer, "completion": completions[i],
               "reward": float(scores[i])}
        if advantages is not None:
            row["advantage"] = advantages[i]
        row["length"] = int(lengths[i])
        if finished is not None:
            row["finished"] = bool(finished[i])
        row["info"] = {key: _jsonable(v[i]) for key, v in info.items()}
        rows.append(row)
    return rows


def eval_rows(scored, correct: list[bool], n: int, *, limit: int) -> list[dict]:
    """Up to ``limit`` answers of an evaluation batch (``n`` per question) as ``eval`` rows."""
    extracted = scored.reward.info.get("extracted")
    rows = []
    for i in range(min(limit, len(scored.completions))):
        s = scored.samples[i]
        row = {"kind": "eval", "id": s.id, "prompt": s.question, "answer": s.answer,
               "completion": scored.completions[i], "reward": float(scored.scores[i]), "correct": bool(correct[i])}
        if extracted is not None:
            row["extracted"] = _jsonable(extracted[i])
        row.update({"length": int(scored.lengths[i]), "finished": bool(scored.finished[i]), "sample": i % n})
        rows.append(row)
    return rows


def _clip(v):
    if isinstance(v, str) and len(v) > MAX_TEXT_CHARS:
        return v[:MAX_TEXT_CHARS] + f"…[+{len(v) - MAX_TEXT_CHARS} chars]"
    if isinstance(v, list):
        return [_clip(x) for x in v]
    if isinstance(v, dict):
        return {k: _clip(x) for k, x in v.items()}
    return v


class SamplesFile:
    """Appends rows to ``samples.jsonl`` up to ``max_mb``; created on the first row. On resume the
    rows after the checkpoint's step are removed first (``report.logger.truncate_metrics``)."""

    def __init__(self, path: str | Path, *, max_mb: float, start_step: int = 0):
        from rltrain.report.logger import truncate_metrics

        self.path = Path(path)
        truncate_metrics(self.path, start_step)
        self.max_mb, self.max_bytes = max_mb, int(max_mb * 2**20)
        self.size = self.path.stat().st_size if self.path.exists() else 0
        self.file = None
        self.full = False

    def write(self, step: int, rows: list[dict]) -> list[dict]:
        """Append ``rows`` at ``step`` (text fields cut to MAX_TEXT_CHARS); returns those written."""
        out = []
        for r in rows:
            row = _clip({"step": step, **r})
            line = json.dumps(row, default=str) + "\n"  # ASCII: control characters escaped
            if self.full or self.size + len(line) > self.max_bytes:
                if not self.full:
                    self.full = True
                    log.warning("samples.jsonl reached log.samples_max_mb=%g at step %d: no more samples are "
                                "written this run (metrics.jsonl is not affected)", self.max_mb, step)
                break
            if self.file is None:
                self.file = open(self.path, "a", buffering=1)
            self.file.write(line)
            self.size += len(line)
            out.append(row)
        return out

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


# --------------------------------------------------------------------------- rltrain-report --samples


_ESCAPED = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def printable(text) -> str:
    """``text`` safe for a terminal: control and format characters (ESC, CR, backspace, bidi
    overrides, zero-width marks, line separators...) as Python escapes like ``\\x1b`` or ``\\u202e``;
    newlines and tabs kept."""
    text = str(text)
    return "".join(ch.encode("unicode_escape").decode("ascii")
                   if ch not in "\n\t" and unicodedata.category(ch) in _ESCAPED else ch for ch in text)


def read_rows(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "samples.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (samples are written by the sampling loops; "
                                "log.samples_per_step=0 turns them off)")
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    return rows


def _verdict(r: dict):
    """An eval row's ``correct``, a train row's ``info["correct"]``; None where the reward gives none."""
    return r["correct"] if "correct" in r else (r.get("info") or {}).get("correct")


def _head(r: dict) -> str:
    parts = [f"reward {r['reward']:.4g}"] if isinstance(r.get("reward"), (int, float)) else []
    if _verdict(r) is not None:
        parts.append("correct" if _verdict(r) else "wrong")
    if isinstance(r.get("advantage"), (int, float)):
        parts.append(f"advantage {r['advantage']:+.3g}")
    if "extracted" in r:
        parts.append(f"extracted {r['extracted']!r}")
    parts.append(f"{r.get('length', '?')} tokens" + ("" if r.get("finished", True) else ", cut at the limit"))
    return ", ".join(parts) + f"  [{r.get('id', '')}]"


def _show(console: Console, label: str, r: dict) -> None:
    console.print(Text(f"── {label}: ", style="bold") + Text(printable(_head(r))))
    console.print(Text("prompt: ", style="dim") + Text(printable(r.get("prompt", ""))))
    console.print(Text("reference: ", style="dim") + Text(printable(r.get("answer", ""))))
    info = {k: v for k, v in (r.get("info") or {}).items() if k not in ("correct", "failed") and v not in (None, "")}
    if info:
        console.print(Text("info: ", style="dim") + Text(printable(json.dumps(info, ensure_ascii=False))))
    body = printable(r.get("completion", ""))
    console.print(Text("completion:", style="dim"))
    console.print(Text("\n".join("  │ " + line for line in body.split("\n"))))


def show_samples(run_dir: str | Path, console: Console, *, kind: str = "train", step: int | None = None,
                 count: int = 1, seed: int = 0) -> int:
    """Print one step's samples: for ``train`` the ``count`` best and worst rollouts by reward and
    ``count`` random others; for ``eval`` ``count`` wrong and ``count`` right answers. ``step``:
    default the last step with samples of that kind."""
    rows = [r for r in read_rows(run_dir) if r.get("kind") == kind]
    steps = sorted({r["step"] for r in rows})
    if not steps:
        raise FileNotFoundError(f"{Path(run_dir) / 'samples.jsonl'} has no {kind} samples")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise FileNotFoundError(f"no {kind} samples at step {step}; steps with {kind} samples: "
                                + ", ".join(map(str, steps)))
    rows = [r for r in rows if r["step"] == step]
    rewards = [r["reward"] for r in rows if isinstance(r.get("reward"), (int, float))]
    mean = f", reward mean {sum(rewards) / len(rewards):.4g}" if rewards else ""
    verdicts = [v for v in map(_verdict, rows) if v is not None]
    acc = f", {sum(map(bool, verdicts)) / len(verdicts):.1%} correct" if verdicts else ""
    console.print(Text(f"{kind} samples of step {step} ({len(rows)} rows{mean}{acc}; steps with {kind} samples: "
                       f"{steps[0]}..{steps[-1]}, {len(steps)} in all)", style="bold"))
    if kind == "train":
        order = sorted(range(len(rows)), key=lambda i: -rows[i].get("reward", 0.0))  # stable: first of equals
        picks = [("best", i) for i in order[:count]]
        picks += [("worst", i) for i in order[::-1][:count] if i not in {j for _, j in picks}]
        rest = [i for i in range(len(rows)) if i not in {j for _, j in picks}]
        picks += [("random", i) for i in random.Random(seed * 1_000_003 + step).sample(rest, min(count, len(rest)))]
    else:
        wrong = [i for i, r in enumerate(rows) if not _verdict(r)]
        right = [i for i, r in enumerate(rows) if _verdict(r)]
        picks = [("wrong", i) for i in wrong[:count]] + [("right", i) for i in right[:count]]
    for label, i in picks:
        _show(console, label, rows[i])
    return 0
