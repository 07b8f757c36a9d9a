"""Shared setup for the math tests: one CPU thread (the machine is shared), small helpers."""
from __future__ import annotations

import pytest
import torch
from hypothesis import settings

# Hypothesis budget for this directory: small, deterministic, no per-example deadline.
PROPERTY_SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def right_padded_mask(lengths: list[int], T: int) -> torch.Tensor:
    """bool [B, T] with the first lengths[i] positions of row i valid."""
    return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
