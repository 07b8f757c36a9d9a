"""Pure tensor math of rltrain: no I/O, no config objects, no torch.distributed.

Modules: ``core`` (masked statistics, KL estimators, aggregation, log-probs, entropy), ``dpo``,
``ppo``, ``grpo``, ``entropy`` (Clip-Cov / KL-Cov), ``select`` (token selection), ``spo`` and
``registry`` (name → function for the config groups). See docs/architecture.md "The math API"
and docs/algorithms.md.
"""
from rltrain.algos import core, dpo, entropy, grpo, ppo, registry, select, spo

__all__ = ["core", "dpo", "entropy", "grpo", "ppo", "registry", "select", "spo"]
