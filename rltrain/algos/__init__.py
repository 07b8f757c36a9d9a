"""Pure tensor math of rltrain: no I/O, no config objects, no torch.distributed.

Modules: ``core`` (masked statistics, KL estimators, aggregation, log-probs, entropy), ``dpo``,
``ppo``, ``grpo``, ``entropy`` (Clip-Cov / KL-Cov), ``pg_losses`` (GSPO, CISPO, SAPO, GMPO),
``select`` (token selection), ``spo`` and ``registry`` (one registry per config group, filled by
the decorators next to each function: importing this package registers every entry). See
docs/architecture.md "The math API" and docs/algorithms.md.
"""
from rltrain.algos import core, dpo, entropy, grpo, pg_losses, ppo, registry, select, spo

__all__ = ["core", "dpo", "entropy", "grpo", "pg_losses", "ppo", "registry", "select", "spo"]
