"""A preallocated key/value cache for batched sampling.

Why not transformers' ``DynamicCache``: it grows every layer's keys and values with ``torch.cat`` at
each decoded token, i.e. it allocates and copies the whole cache 2 × num_layers times per token. On
CPU the fresh allocations also page-fault; profiling SmolLM2-135M at batch 64 showed ``aten::cat``
taking ~40% of a decode step (fp32). Here each layer allocates ``[B, H, capacity, D]`` once and
writes new positions in place; attention reads the view ``[:, :, :length]``.

Rows (sequences) are removed or replicated with ``batch_select_indices`` (the same method name as
transformers' caches, so the decoding loop treats both kinds alike): one ``index_select`` per
tensor, used both to drop finished sequences and to fork a shared prefix into its samples.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class PreallocatedLayer(CacheLayerMixin):
    """One attention layer's cache: ``keys``/``values`` of shape ``[B, H, capacity, D]``."""

    is_sliding = False
    is_compileable = False

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, k_dim = key_states.shape
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = key_states.new_empty((batch, heads, self.capacity, k_dim))
        self.values = value_states.new_empty((batch, value_states.shape[1], self.capacity, value_states.shape[-1]))
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write ``[B, H, q, D]`` new states at ``length`` and return views of the filled part."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} positions > capacity {self.capacity}")
        self.keys[:, :, self.length : end].copy_(key_states)
        self.values[:, :, self.length : end].copy_(value_states)
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.capacity

    def reset(self) -> None:
        super().reset()
        self.length = 0

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep (and possibly repeat) the rows ``indices`` ([B'] long), in that order."""
        if self.is_initialized:
            self.keys = self.keys.index_select(0, indices)
            self.values = self.values.index_select(0, indices)


class PreallocatedCache(Cache):
    """A ``transformers`` cache whose layers are ``PreallocatedLayer(capacity)``, created lazily on the
    first ``update`` of each layer (so the number of layers need not be read from the config)."""

    def __init__(self, capacity: int):
        super().__init__(layer_class_to_replicate=lambda: PreallocatedLayer(capacity))
        self.capacity = capacity
