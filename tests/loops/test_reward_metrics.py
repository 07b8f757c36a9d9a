"""Step reward metrics: reward=combined's per-component means and the code reward's truncated-output
fraction, from per-completion info (a failed completion's None counts 0)."""
import torch

from rltrain.engine.dist import Dist
from rltrain.loops.episodes import Scored, reward_components, reward_metrics
from rltrain.types import RewardOutput


def _scored(info, keys=()):
    n = 4
    return Scored(prompt_ids=[[1]] * n, response_ids=torch.ones(n, 2, dtype=torch.long), mask=torch.ones(n, 2),
                  logprobs=torch.zeros(n, 2), lengths=torch.full((n,), 2), finished=torch.ones(n, dtype=torch.bool),
                  samples=[None] * n, completions=["a"] * n, scores=torch.tensor([1.0, 0.0, 0.5, 0.0]),
                  reward=RewardOutput([1.0, 0.0, 0.5, 0.0], info), info_keys=tuple(keys))


def test_component_means_and_truncated_fraction():
    info = {"reward/math": [1.0, 0.0, 1.0, None], "reward/brevity": [0.5, 0.25, 0.0, 0.25],
            "code/code/output_truncated": [True, False, None, True], "failed": [False, False, False, True],
            "correct": [True, False, True, False]}
    m = reward_metrics(_scored(info, ("reward/math", "reward/brevity", "code/code/output_truncated")), Dist())
    assert m["reward/math"] == 0.5 and m["reward/brevity"] == 0.25
    assert m["code/code/output_truncated_frac"] == 0.5
    assert m["reward/mean"] == 0.375 and m["reward/accuracy"] == 0.5 and m["reward/failed"] == 1


def test_reward_components_follow_the_component_order_and_weights():
    class Combined:
        components = [("math", 1.0, None), ("brevity", 0.2, None)]

    comps, w = reward_components(_scored({"reward/math": [1.0, 0.0, 1.0, None],
                                          "reward/brevity": [0.5, 0.25, 0.0, 0.25]}), Combined())
    assert torch.equal(comps, torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.5, 0.25, 0.0, 0.25]]))
    assert torch.allclose(w, torch.tensor([1.0, 0.2]))


def test_mismatch_summary_uses_only_steps_that_measured_tokens(tmp_path):
    """A step whose rows were all skipped (zero advantage) logs tokens 0: the summary must not show
    its 0.00 as a measurement."""
    import json

    from rltrain.loops.lifecycle import mismatch_rows

    rows = [{"step": 1, "mismatch/abs_dlogp_mean": 0.0, "mismatch/ratio_max": 1.0, "mismatch/tokens": 0.0},
            {"step": 2, "mismatch/abs_dlogp_mean": 2e-3, "mismatch/ratio_max": 1.2, "mismatch/tokens": 50.0},
            {"step": 3, "mismatch/abs_dlogp_mean": 1e-3, "mismatch/ratio_max": 1.1, "mismatch/tokens": 40.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    got = mismatch_rows(str(tmp_path))
    assert got[0][1:] == ("2.00e-03", "1.00e-03") and got[1][1:] == ("1.200", "1.100")
    (tmp_path / "metrics.jsonl").write_text(json.dumps(rows[0]))
    assert mismatch_rows(str(tmp_path)) == [("rollout↔trainer mismatch", "-", "no token measured")]


def test_logged_info_keys_follow_the_reward_config():
    """The names every rank logs come from the reward config: the code reward's declared info, and
    inside reward=combined each component's score and its info as CombinedReward names it."""
    from rltrain.loops.episodes import logged_info_keys
    from rltrain.rewards.code import CodeReward
    from rltrain.rewards.math import MathReward

    class Combined:
        components = [("code", 1.0, CodeReward()), ("run", 0.5, CodeReward()), ("math", 1.0, MathReward())]

    assert logged_info_keys(CodeReward()) == ("code/output_truncated", "code/judge_timeout")
    assert logged_info_keys(MathReward()) == ()
    assert logged_info_keys(Combined()) == ("code/judge_timeout", "code/output_truncated", "reward/code", "reward/math",
                                            "reward/run", "run/code/judge_timeout", "run/code/output_truncated")
