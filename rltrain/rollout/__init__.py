"""Rollout engine: batched KV-cached sampling with per-token log-probs, SPO tree sampling, and
recomputation of log-probs/entropies of given responses."""
from rltrain.rollout.engine import Rollout, SamplingParams, generate
from rltrain.rollout.scoring import sequence_logprobs
from rltrain.rollout.tree import TokenTree, independent_paths, sample_tree

__all__ = [
    "Rollout",
    "SamplingParams",
    "TokenTree",
    "generate",
    "independent_paths",
    "sample_tree",
    "sequence_logprobs",
]
