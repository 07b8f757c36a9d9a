"""SPO loop pieces (edge replay, whitening) and SPO-chain / SPO-tree end to end on model=tiny."""
import json
from pathlib import Path

import torch

from rltrain.engine.dist import Dist
from rltrain.loops.spo import Edge, EdgeReplay, whiten
from tests.cli import run_inprocess


def _edge(q, step, adv=1.0):
    return Edge(question=q, step=step, prompt_ids=[1], response_ids=[2], advantage=adv, old_logp=torch.zeros(1))


def test_replay_off_uses_each_new_edge_once():
    r = EdgeReplay(max_age=0, per_question=1)
    new = [_edge("a", 0), _edge("a", 0)]
    assert r.draw(new, 0, torch.Generator().manual_seed(0)) == new
    assert r.edges == []


def test_replay_draws_per_question_and_expires_old_edges():
    """3 edges of question a at step 0, max_age 2, 1 drawn per question and step:
    step 0 draws 1 (2 left), step 1 draws 1 (1 left, age 1), step 2: the last one is age 2 → gone."""
    r = EdgeReplay(max_age=2, per_question=1)
    g = torch.Generator().manual_seed(0)
    first = r.draw([_edge("a", 0, 1.0), _edge("a", 0, 2.0), _edge("a", 0, 3.0), _edge("b", 0, 4.0)], 0, g)
    assert sorted(e.question for e in first) == ["a", "b"]
    assert len(r.edges) == 2
    second = r.draw([], 1, g)
    assert [e.question for e in second] == ["a"] and len(r.edges) == 1
    assert r.draw([], 2, g) == [] and r.edges == []
    drawn = {e.advantage for e in first + second if e.question == "a"}
    assert len(drawn) == 2  # never the same edge twice


def test_whiten_over_kept_tokens_only():
    adv = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 0.0]])
    keep = torch.tensor([[True, True, True], [True, False, False]])
    out = whiten(adv, keep, Dist())
    kept = out[keep]
    assert torch.allclose(kept.mean(), torch.tensor(0.0), atol=1e-6)
    # unbiased variance of [1, 2, 3, 4] is 5/3; whitened values are (x - 2.5) / sqrt(5/3)
    assert torch.allclose(kept, (torch.tensor([1.0, 2.0, 3.0, 4.0]) - 2.5) / (5 / 3) ** 0.5, atol=1e-4)
    assert out[1, 1] == 0 and out[1, 2] == 0
    # One kept token has no spread: exactly 0 (decision 11 in docs/algorithms.md), not its raw advantage.
    one = torch.tensor([[False, True, False], [False, False, False]])
    assert torch.equal(whiten(adv, one, Dist()), torch.zeros_like(adv))


TINY = ["model=tiny", "data.n_train=64", "data.n_test=8", "eval.size=8", "eval.max_new_tokens=8",
        "reward=python", "reward.fn=tests.toy_rewards:contains_seven", "launch.threads_per_rank=1", "log.console=false",
        "algo.kl_coef=0", "train.lr=1e-2"]


def _run(args, run_dir):
    run_inprocess(args, run_dir)
    return [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_spo_tree_learns_toy_reward(tmp_path):
    rows = _run(TINY + ["algo=spo_tree", "algo.branching=[4,4]", "algo.segment_len=4", "rollout.max_new_tokens=8",
                        "algo.replay_max_age=0", "algo.prob_mask=false", "train.prompts_per_step=4",
                        "train.micro_batch_size=32", "train.steps=10"], tmp_path)
    steps = [r for r in rows if "event" not in r]
    assert len(steps) == 10
    # 4 children per node, 2 depths: at most 1 + 4 + 16 nodes per tree, 16 leaves
    assert all(r["tree/nodes"] <= 21 and r["tree/leaves"] <= 16 for r in steps)
    assert all(r["tree/edges_new"] > 0 for r in steps[:3])
    # The update runs each edge on its parent's KV cache: the tokens through the model are about the
    # trees' unique tokens, not the sum over root-to-leaf contexts (what the plain forward would take).
    trained = [r for r in steps if r["tree/edges_trained"] > 0]
    assert trained and all(r["perf/update_tokens"] <= 1.2 * r["perf/tree_unique_tokens"] for r in trained), \
        [(r["perf/update_tokens"], r["perf/tree_unique_tokens"]) for r in trained]
    assert all(r["perf/update_tokens_plain"] > 1.3 * r["perf/update_tokens"] for r in trained)
    first = sum(r["reward/mean"] for r in steps[:2]) / 2
    last = sum(r["reward/mean"] for r in steps[-2:]) / 2
    assert last > 0.5 and last > 2 * first, (first, last)


def test_spo_chain_learns_toy_reward(tmp_path):
    rows = _run(TINY + ["algo=spo_chain", "algo.mc_rollouts=2", "algo.cut_interval=3", "rollout.max_new_tokens=8",
                        "algo.prob_mask=false", "train.prompts_per_step=4", "train.samples_per_prompt=4",
                        "train.steps=10"], tmp_path)
    steps = [r for r in rows if "event" not in r]
    assert all(r["spo/cut_states"] > 0 for r in steps)
    # MC continuations stop at the budget left after their cut state: nothing generated is thrown away.
    assert all(r["spo/mc_tokens"] <= 1.05 * r["spo/mc_tokens_used"] for r in steps)
    # Each response with cut states is encoded once for its MC continuations, not once per state.
    assert all(r["spo/mc_prefill_tokens"] < r["spo/mc_prefill_tokens_unshared"] for r in steps if r["spo/cut_states"] > 16)
    assert any(r["spo/cut_states"] > 16 for r in steps)
    assert all("mismatch/abs_dlogp_mean" in r and r["mismatch/abs_dlogp_mean"] < 1e-3 for r in steps)  # fp32 tiny
    first = sum(r["reward/mean"] for r in steps[:2]) / 2
    last = sum(r["reward/mean"] for r in steps[-2:]) / 2
    assert last > 0.5 and last > 2 * first, (first, last)
