"""A Llama GGUF → Hugging Face conversion that reads the file once.

transformers can load a GGUF itself (``from_pretrained(..., gguf_file=...)``), but it parses the whole
file three times (for the config, the tokenizer and the weights; each parse walks the 49 K vocabulary
strings of SmolLM2 one memory-mapped slice at a time) and rebuilds gguf's name map once per module.
That made the first run's conversion ~30 s on a 2-core CPU. Here the weights and the config come from one
``GGUFReader``; only the tokenizer still goes through transformers (its GGUF tokenizer conversion is not
something to rewrite). The result is the same directory transformers would write: the same tensors bit for
bit and the same config (tests/engine/test_gguf_convert.py checks both against transformers on a GGUF written there).

Only what the embedded model needs is handled: the ``llama`` architecture with F32/F16/BF16 and any
quantisation ``gguf.quants`` can dequantise. Anything else raises ``ValueError`` naming what it found.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

# GGUF tensor names (llama.cpp's) → transformers' LlamaForCausalLM names; {i} is the block index.
LLAMA_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "attn_norm": "model.layers.{i}.input_layernorm",
    "attn_q": "model.layers.{i}.self_attn.q_proj",
    "attn_k": "model.layers.{i}.self_attn.k_proj",
    "attn_v": "model.layers.{i}.self_attn.v_proj",
    "attn_output": "model.layers.{i}.self_attn.o_proj",
    "ffn_norm": "model.layers.{i}.post_attention_layernorm",
    "ffn_gate": "model.layers.{i}.mlp.gate_proj",
    "ffn_up": "model.layers.{i}.mlp.up_proj",
    "ffn_down": "model.layers.{i}.mlp.down_proj",
}


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _hf_name(gguf_name: str) -> str:
    stem, _, suffix = gguf_name.rpartition(".")  # suffix: weight | bias
    parts = stem.split(".")
    if parts[0] == "blk" and len(parts) == 3 and parts[2] in LLAMA_NAMES:
        return f"{LLAMA_NAMES[parts[2]].format(i=int(parts[1]))}.{suffix}"
    if len(parts) == 1 and parts[0] in LLAMA_NAMES:
        return f"{LLAMA_NAMES[parts[0]]}.{suffix}"
    raise ValueError(f"GGUF tensor {gguf_name!r} has no Llama counterpart")


def unpermute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (it interleaves each head's two rotary halves for its kernel):
    rows of a head go from (pair, 2) order back to (2, pair) order."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_state_dict(reader) -> dict[str, torch.Tensor]:
    """Every tensor of a llama GGUF, dequantised to fp32 under transformers' names."""
    from gguf.quants import dequantize

    n_head = int(_field(reader, "llama.attention.head_count"))
    n_kv = int(_field(reader, "llama.attention.head_count_kv", n_head))
    out = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        w = w.reshape(tuple(int(d) for d in reversed(t.shape)))  # GGUF lists dimensions fastest first
        if ".attn_q." in t.name:
            w = unpermute_rotary(w, n_head)
        elif ".attn_k." in t.name:
            w = unpermute_rotary(w, n_kv)
        w = np.ascontiguousarray(w)
        out[_hf_name(t.name)] = torch.from_numpy(w if w.flags.writeable else w.copy())  # F32 data is a file view
    return out


def llama_config(reader, tied: bool):
    """The ``LlamaConfig`` transformers derives from the same GGUF metadata."""
    from transformers import LlamaConfig

    def get(key, default=None):
        return _field(reader, key, default)

    n_head = int(get("llama.attention.head_count"))
    hidden = int(get("llama.embedding_length"))
    vocab = get("llama.vocab_size")
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    cfg = LlamaConfig(
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(get("llama.feed_forward_length")),
        num_hidden_layers=int(get("llama.block_count")),
        num_attention_heads=n_head,
        num_key_value_heads=int(get("llama.attention.head_count_kv", n_head)),
        head_dim=int(get("llama.rope.dimension_count", hidden // n_head)),
        max_position_embeddings=int(get("llama.context_length")),
        rms_norm_eps=float(get("llama.attention.layer_norm_rms_epsilon")),
        rope_theta=float(get("llama.rope.freq_base", 10000.0)),
        tie_word_embeddings=tied,
        bos_token_id=get("tokenizer.ggml.bos_token_id"),
        eos_token_id=get("tokenizer.ggml.eos_token_id"),
        pad_token_id=get("tokenizer.ggml.padding_token_id"),
        unk_token_id=get("tokenizer.ggml.unknown_token_id"),
        architectures=["LlamaForCausalLM"],
    )
    return cfg


def convert_llama(gguf_path: Path, out_dir: Path) -> None:
    """Write ``out_dir`` as a Hugging Face directory (fp32 safetensors, config, tokenizer)."""
    from gguf import GGUFReader
    from transformers import AutoTokenizer, LlamaForCausalLM

    reader = GGUFReader(gguf_path)
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{gguf_path.name}: architecture {arch!r}; only llama GGUFs are converted here")
    state = llama_state_dict(reader)
    config = llama_config(reader, tied="lm_head.weight" not in state)
    name = _field(reader, "general.name")
    del reader
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    missing = set(model.state_dict()) - set(state) - ({"lm_head.weight"} if config.tie_word_embeddings else set())
    if missing:
        raise ValueError(f"{gguf_path.name}: no tensor for {sorted(missing)[:3]}")
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    if name is not None:  # transformers keeps the GGUF's general.name under this key
        model.config._model_name_or_path = name
    model.generation_config.bos_token_id = config.bos_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name).save_pretrained(out_dir)
