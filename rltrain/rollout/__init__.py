"""Rollout engine: batched KV-cached sampling with per-token log-probs, SPO tree sampling, and
the training forward (log-probs/entropies of given responses, ``forward``)."""
from rltrain.rollout.engine import Rollout, SamplingParams, generate
from rltrain.rollout.forward import batched_logprobs, response_logprobs
from rltrain.rollout.tree import TokenTree, independent_paths, sample_tree

__all__ = [
    "Rollout",
    "SamplingParams",
    "TokenTree",
    "generate",
    "independent_paths",
    "sample_tree",
    "batched_logprobs",
    "response_logprobs",
]
