"""Markdown table of the reproduction runs (outputs/repro/<name>) for docs/results.md: held-out greedy
accuracy after training, steps, summed step time, and the entropy / response-length trajectory.
Usage: python scripts/repro/table.py [OUT_DIR] > bench/repro/results.md
       python scripts/repro/table.py outputs/menu --menu   (scripts/repro/menu.sh's runs)"""
from __future__ import annotations

import json
import sys
from pathlib import Path

GROUPS = {
    "Equal training time (240 s of steps)": ["grpo_240s", "spo_chain_240s", "spo_tree_240s", "spo_chain_240s_no_mask",
                                             "spo_tree_240s_no_mask", "grpo_240s_seed1", "spo_chain_240s_seed1",
                                             "spo_tree_240s_seed1"],
    "GRPO, 6 steps: token selection and entropy control": [
        "grpo", "grpo_top20", "grpo_seed1", "grpo_top20_seed1", "grpo_clip_higher", "grpo_clip_cov", "grpo_kl_cov", "grpo_2mb", "grpo_2mb_clip_higher"],
    "The post-training ladder": ["sft", "dpo", "dpo_iterative", "ppo"],
    "PPO and its three tricks": ["ppo", "ppo_no_adv_norm", "ppo_frozen_ref", "ppo_small_batch"],
}


# Runs whose step times are inflated, judged from their rollout tokens/s against runs of the same
# work: † the other core was busy (the test suite or a benchmark); ‡ the machine slowed down (the
# same rollout ran at a third to a half of the speed it had in an earlier run).
MARKS = {"grpo_kl_cov": "†", "ppo": "†", "ppo_no_adv_norm": "†", "spo_chain_240s_no_mask": "‡",
         "grpo_top20_seed1": "‡", "grpo_240s_seed1": "‡", "spo_chain_240s_seed1": "‡", "spo_tree_240s_seed1": "†"}


def summary(run: Path) -> dict | None:
    path = run / "metrics.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    steps = [r for r in rows if "event" not in r]
    evals = {r["step"]: r for r in rows if r.get("event") == "eval"}
    final = max((s for s in evals if s > 0), default=None)
    if final is None:
        return None
    ent = [r["actor/entropy"] for r in steps if "actor/entropy" in r]
    length = [r["response/length_mean"] for r in steps if "response/length_mean" in r]
    fmt = lambda xs: " → ".join(f"{x:.2f}" for x in (xs[0], xs[len(xs) // 2], xs[-1])) if xs else "-"  # noqa: E731
    return {"acc": evals[final]["accuracy"], "before": evals.get(0, {}).get("accuracy"), "steps": len(steps),
            "time": sum(r.get("time/step", 0.0) for r in steps), "entropy": fmt(ent),
            "length": fmt(length), "eval_len": evals[final]["length"]}


MENU = ["grpo", "gspo", "cispo", "sapo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "tis", "icepop", "gdpo",
        "opd"]


def menu(out: Path) -> None:
    print("| recipe | held-out greedy before → after | training reward (first → last step) | step time (s) "
          "| mean step time (s) | rollout tok/s (median) | sampled length (first → mid → last step) |")
    print("|---|---|---|---|---|---|---|")
    for name in MENU:
        s = summary(out / name)
        if s is None:
            continue
        before = "-" if s["before"] is None else f"{s['before']:.0%}"
        rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in rows if "event" not in r]
        tps = sorted(r.get("perf/tokens_per_s", 0.0) for r in steps)
        reward = f"{steps[0]['reward/mean']:.2f} → {steps[-1]['reward/mean']:.2f}"
        print(f"| `+experiment=menu_{name}` | {before} → **{s['acc']:.0%}** | {reward} | {s['time']:.0f} "
              f"| {s['time'] / max(s['steps'], 1):.1f} | {tps[len(tps) // 2]:.0f} | {s['length']} |")


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/repro")
    if "--menu" in sys.argv:
        return menu(out)
    for title, names in GROUPS.items():
        print(f"\n#### {title}\n")
        print("| run | held-out accuracy | steps | step time (s) | policy entropy (first → mid → last step) "
              "| sampled length (tokens) | greedy length after |")
        print("|---|---|---|---|---|---|---|")
        for name in names:
            s = summary(out / name)
            if s is None:
                continue
            print(f"| `{name}`{MARKS.get(name, '')} | **{s['acc']:.0%}** | {s['steps']} | {s['time']:.0f} | {s['entropy']} | {s['length']} "
                  f"| {s['eval_len']:.1f} |")


if __name__ == "__main__":
    main()
