"""One TRL training run for the benchmark (a child process of run_all.py, so that its peak memory
is its own): GRPOTrainer on the arith prompts or DPOTrainer on the synthetic preference pairs,
with the same model object, prompt text, reward and batch settings as the rltrain run.

    python scripts/bench/trl_worker.py grpo '<GRPOSettings as JSON>' --json out.json --output-dir DIR

What is the same as rltrain, by construction:
- the model: ``rltrain.engine.model.load_model`` (fp32 master weights, like rltrain's actor), and TRL's
  standard bf16 mode (``bf16=True``: autocast) where rltrain's ``model.dtype=bf16`` is its own
  bf16 compute; the thread count (``torch.set_num_threads``);
- the prompts: ``rltrain.data.render_prompt`` of the arith questions (the chat template with the
  generation prompt), passed to TRL as finished text; DPO pairs from ``rltrain.data.render_pair``;
- the reward: ``rltrain.rewards.math.MathReward`` with its default options (rltrain's reward=math).

Measured here: the wall time of each optimizer step (between consecutive ``on_step_end`` callbacks,
the first from ``on_train_begin``), tokens generated (counted from the ``completion_ids`` TRL passes
to the reward), and the time spent in ``model.generate``. Written as JSON to ``--json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

T_START = time.time()


def timed_generate(model, stats: dict):
    """Wrap ``model.generate`` (TRL calls it on the unwrapped model) to add up its wall time."""
    inner = model.generate

    def generate(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            stats["generate_s"] += time.perf_counter() - t0
            stats["generate_calls"] += 1

    model.generate = generate


def step_timer(stats: dict):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            stats["train_begin_s"] = time.time() - T_START
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            stats["step_times"].append(now - self.t)
            self.t = now

    return StepTimer()


def load(settings: dict, threads: int):
    import torch

    from rltrain.engine.model import load_model

    torch.set_num_threads(threads)
    tiny = {"hidden_size": 64, "num_layers": 2} if settings["model"] == "tiny" else {}
    return load_model(settings["model"], dtype="fp32", seed=settings["seed"], **tiny)


def run_grpo(s: dict, output_dir: str, stats: dict):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from rltrain.data import build_dataset, render_prompt
    from rltrain.rewards.math import MathReward
    from rltrain.types import Sample

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_settings import TRL_COMMON, GRPOSettings

    gs = GRPOSettings(**s)
    model, tok = load(s, gs.threads)
    splits = build_dataset("arith", n_train=gs.n_train, n_test=4, seed=0)
    ds = Dataset.from_dict({"prompt": [render_prompt(tok, x.question) for x in splits.train],
                            "answer": [x.answer for x in splits.train]})
    reward = MathReward()

    def math_reward(prompts, completions, completion_ids, answer, **kw):
        stats["gen_tokens"].append(sum(len(c) for c in completion_ids))
        out = reward([Sample(id=str(i), question="", answer=a) for i, a in enumerate(answer)], completions)
        stats["accuracy"].append(sum(bool(c) for c in out.info["correct"]) / len(completions))
        return out.scores

    cfg = GRPOConfig(output_dir=output_dir, bf16=gs.dtype == "bf16", seed=gs.seed, log_completions=False,
                     **TRL_COMMON, **gs.trl())
    trainer = GRPOTrainer(model=model, reward_funcs=[math_reward], args=cfg, train_dataset=ds, processing_class=tok,
                          callbacks=[step_timer(stats)])
    timed_generate(trainer.model, stats)
    trainer.train()
    reward.close()
    stats["log_history"] = trainer.state.log_history


def run_dpo(s: dict, output_dir: str, stats: dict):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from rltrain.data import build_dataset, render_pair

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_settings import TRL_COMMON, DPOSettings

    ds_ = DPOSettings(**s)
    model, tok = load(s, ds_.threads)
    splits = build_dataset("synthetic_prefs", n_train=ds_.n_train, n_test=4, seed=0)
    rows = [render_pair(tok, p) for p in splits.train]
    ds = Dataset.from_dict({"prompt": [r[0] for r in rows], "chosen": [r[1] for r in rows],
                            "rejected": [r[2] for r in rows]})
    cfg = DPOConfig(output_dir=output_dir, bf16=ds_.dtype == "bf16", seed=ds_.seed, **TRL_COMMON, **ds_.trl())
    t0 = time.time()
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[step_timer(stats)])
    stats["setup_s"] = time.time() - t0  # includes TRL's reference log-prob precompute
    trainer.train()
    stats["log_history"] = trainer.state.log_history


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("algo", choices=["grpo", "dpo"])
    p.add_argument("settings", help="GRPOSettings / DPOSettings as JSON")
    p.add_argument("--json", required=True, type=Path)
    p.add_argument("--output-dir", required=True)
    a = p.parse_args()
    s = json.loads(a.settings)
    import trl

    stats = {"trl_version": trl.__version__, "step_times": [], "gen_tokens": [], "accuracy": [],
             "generate_s": 0.0, "generate_calls": 0}
    (run_grpo if a.algo == "grpo" else run_dpo)(s, a.output_dir, stats)
    stats["wall_s"] = time.time() - T_START
    a.json.write_text(json.dumps(stats, default=str))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
