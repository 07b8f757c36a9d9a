"""engine.gguf_convert against transformers' own GGUF loading, on small llama GGUFs written here with
gguf's writer (quantised Q4_1 / Q8_0 like SmolLM2's file, F32 norms; tied and untied heads; 4 query heads
over 2 KV heads so that Q and K are un-permuted with different head counts)."""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rltrain.engine.gguf_convert import convert_llama, unpermute_rotary

HIDDEN, FFN, HEADS, KV_HEADS, LAYERS = 64, 96, 4, 2, 2
TOKENS = ["<unk>", "<s>", "</s>"] + [chr(c) for c in range(97, 123)] + ["ab", "abc"]


def write_gguf(path, tied: bool) -> None:
    q = gguf.GGMLQuantizationType
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("Tiny Test Llama")
    w.add_block_count(LAYERS)
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(50000.0)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(TOKENS))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(TOKENS)
    w.add_token_types([3, 3, 3] + [1] * (len(TOKENS) - 3))
    w.add_token_merges(["a b", "ab c"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_unk_token_id(0)
    rng = np.random.default_rng(0)

    def add(name, shape, qtype):
        a = rng.standard_normal(shape).astype(np.float32)
        if qtype == q.F32:
            w.add_tensor(name, a)
        else:
            w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)

    add("token_embd.weight", (len(TOKENS), HIDDEN), q.Q8_0)
    add("output_norm.weight", (HIDDEN,), q.F32)
    if not tied:
        add("output.weight", (len(TOKENS), HIDDEN), q.Q8_0)
    kv = HIDDEN // HEADS * KV_HEADS
    for i in range(LAYERS):
        add(f"blk.{i}.attn_norm.weight", (HIDDEN,), q.F32)
        add(f"blk.{i}.ffn_norm.weight", (HIDDEN,), q.F32)
        add(f"blk.{i}.attn_q.weight", (HIDDEN, HIDDEN), q.Q4_1)
        add(f"blk.{i}.attn_k.weight", (kv, HIDDEN), q.Q4_1)
        add(f"blk.{i}.attn_v.weight", (kv, HIDDEN), q.Q4_1)
        add(f"blk.{i}.attn_output.weight", (HIDDEN, HIDDEN), q.Q4_1)
        add(f"blk.{i}.ffn_gate.weight", (FFN, HIDDEN), q.Q4_1)
        add(f"blk.{i}.ffn_up.weight", (FFN, HIDDEN), q.Q4_1)
        add(f"blk.{i}.ffn_down.weight", (HIDDEN, FFN), q.Q4_1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def transformers_conversion(gguf_path, out):
    """What rltrain did before engine.gguf_convert: transformers loads the GGUF, the quantizer is dropped,
    the model is saved."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)


@pytest.mark.parametrize("tied", [True, False], ids=["tied-head", "untied-head"])
def test_conversion_equals_transformers_bit_for_bit(tmp_path, tied):
    path = tmp_path / "m" / "tiny.gguf"
    path.parent.mkdir()
    write_gguf(path, tied)
    convert_llama(path, tmp_path / "ours")
    transformers_conversion(path, tmp_path / "ref")

    ours, ref = load_file(tmp_path / "ours" / "model.safetensors"), load_file(tmp_path / "ref" / "model.safetensors")
    assert sorted(ours) == sorted(ref)
    assert ("lm_head.weight" in ref) == (not tied)
    for name in ref:
        assert ours[name].dtype == ref[name].dtype == torch.float32, name
        assert torch.equal(ours[name], ref[name]), name
    config = [json.loads((tmp_path / d / "config.json").read_text()) for d in ("ours", "ref")]
    assert config[0] == config[1]
    assert config[0]["tie_word_embeddings"] is tied
    generation = [json.loads((tmp_path / d / "generation_config.json").read_text()) for d in ("ours", "ref")]
    assert generation[0] == generation[1]
    assert (tmp_path / "ours" / "tokenizer.json").exists()

    from transformers import AutoModelForCausalLM  # the directory loads and runs

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ours")
    assert model(torch.tensor([[1, 5, 6]])).logits.shape == (1, 3, len(TOKENS))


def test_unpermute_rotary_is_the_inverse_of_llama_cpps_permutation():
    """llama.cpp's converter permutes each head's rows as w.reshape(h, 2, d/2h, ...).swapaxes(1, 2); a
    hand example with one head of 4 rows: [r0, r1, r2, r3] is stored as [r0, r2, r1, r3]."""
    stored = np.array([[0.0], [2.0], [1.0], [3.0]])
    assert unpermute_rotary(stored, 1).ravel().tolist() == [0.0, 1.0, 2.0, 3.0]
    w = np.arange(2 * 8 * 3, dtype=np.float32).reshape(16, 3)
    permuted = w.reshape(2, 2, 4, 3).swapaxes(1, 2).reshape(16, 3)
    assert np.array_equal(unpermute_rotary(permuted, 2), w)


def test_other_architectures_are_refused_by_name(tmp_path):
    path = tmp_path / "q.gguf"
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="architecture 'qwen2'"):
        convert_llama(path, tmp_path / "out")
