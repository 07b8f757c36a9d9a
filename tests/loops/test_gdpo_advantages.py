"""GDPO in the GRPO loop's advantage step (``loops.grpo.advantages``): the paper's form by default."""
from types import SimpleNamespace

import pytest
import torch

from rltrain.cli import compose_or_explain, to_run_config
from rltrain.config import ConfigError, register_configs, validate
from rltrain.engine.dist import Dist
from rltrain.loops import episodes, grpo
from rltrain.types import RewardOutput, Sample

GDPO = ["reward=combined", "reward.normalize=then_sum", "train.prompts_per_step=2", "train.samples_per_prompt=4"]


def _advantages(overrides):
    """Two groups of 4 scored by one component, [0, 0, 1, 0] and [1, 1, 1, 1], through gdpo() and the
    loop's advantage step (no reference model)."""
    register_configs()
    cfg = to_run_config(compose_or_explain(GDPO + overrides))
    validate(cfg)
    n = 8
    s = episodes.Scored(
        prompt_ids=[[1]] * n, response_ids=torch.zeros(n, 2, dtype=torch.long), mask=torch.ones(n, 2),
        logprobs=torch.zeros(n, 2), lengths=torch.full((n,), 2), finished=torch.ones(n, dtype=torch.bool),
        samples=[Sample(str(i // 4), "q") for i in range(n)], completions=[""] * n, scores=torch.zeros(n),
        reward=RewardOutput(scores=[0.0] * n, info={"reward/c": [0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]}))
    episodes.gdpo(s, SimpleNamespace(components=[("c", 1.0, None)]), cfg, 4, eps=cfg.algo.adv_eps,
                  std_ddof=cfg.algo.std_ddof)
    ctx = SimpleNamespace(tok=SimpleNamespace(pad_token_id=0), ref=None)
    adv, ref_logp, _, _ = grpo.advantages(ctx, cfg, Dist(), s, {})
    assert ref_logp is None and torch.equal(adv[:, 0], adv[:, 1])
    return adv[:, 0]


def test_gdpo_advantage_is_the_sum_normalised_over_the_batch():
    """By hand (tests/algos/test_reinforce_gdpo.py): group-normalised sums [−0.5, −0.5, 1.5, −0.5, 0 × 4];
    over the batch (mean 0, std √(3/7)) → [−0.764, −0.764, 2.291, −0.764, 0 × 4], the GDPO paper's
    advantage. Before issue 31 the GRPO step normalised the sum again within its group:
    [−0.5, −0.5, 1.5, −0.5, 0 × 4], which ``reward.sum_normalize=group`` keeps."""
    s = 0.5 / (3 / 7) ** 0.5
    torch.testing.assert_close(_advantages([]), torch.tensor([-s, -s, 3 * s, -s, 0, 0, 0, 0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(_advantages(["reward.sum_normalize=group"]),
                               torch.tensor([-0.5, -0.5, 1.5, -0.5, 0, 0, 0, 0]), atol=1e-5, rtol=0)


def test_batch_form_needs_the_grpo_estimator():
    register_configs()
    with pytest.raises(ConfigError, match=r"reward\.sum_normalize=group"):
        validate(to_run_config(compose_or_explain(GDPO + ["algo.adv_estimator=rloo"])))
    validate(to_run_config(compose_or_explain(GDPO + ["algo.adv_estimator=rloo", "reward.sum_normalize=group"])))
    with pytest.raises(ConfigError, match=r"reward\.sum_normalize"):
        validate(to_run_config(compose_or_explain(GDPO + ["reward.sum_normalize=sequence"])))
