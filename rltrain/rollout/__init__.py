"""Rollout engine: batched KV-cached sampling with per-token log-probs, SPO tree sampling, scoring."""
from rltrain.rollout.engine import Rollout, SamplingParams, generate

__all__ = ["Rollout", "SamplingParams", "generate"]
