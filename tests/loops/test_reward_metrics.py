"""Step reward metrics: reward=combined's per-component means and the code reward's truncated-output
fraction, from per-completion info (a failed completion's None counts 0)."""
import torch

from rltrain.engine.dist import Dist
from rltrain.loops.episodes import Scored, reward_components, reward_metrics
from rltrain.types import RewardOutput


def _scored(info):
    n = 4
    return Scored(prompt_ids=[[1]] * n, response_ids=torch.ones(n, 2, dtype=torch.long), mask=torch.ones(n, 2),
                  logprobs=torch.zeros(n, 2), lengths=torch.full((n,), 2), finished=torch.ones(n, dtype=torch.bool),
                  samples=[None] * n, completions=["a"] * n, scores=torch.tensor([1.0, 0.0, 0.5, 0.0]),
                  reward=RewardOutput([1.0, 0.0, 0.5, 0.0], info))


def test_component_means_and_truncated_fraction():
    info = {"reward/math": [1.0, 0.0, 1.0, None], "reward/brevity": [0.5, 0.25, 0.0, 0.25],
            "code/code/output_truncated": [True, False, None, True], "failed": [False, False, False, True],
            "correct": [True, False, True, False]}
    m = reward_metrics(_scored(info), Dist())
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
