"""generate(): log-probs equal a fresh forward, stopping (EOS, stop strings, length), padding
invariance, grouping, determinism, top-k/top-p, cache kinds."""
import pytest
import torch

from rltrain.rollout import SamplingParams, generate
from rltrain.rollout.forward import batched_logprobs

from .conftest import EOS, PAD


def _gen(model, prompts, params, seed=0, **kw):
    kw.setdefault("eos_token_ids", [EOS])
    return generate(model, prompts, params, pad_token_id=PAD, generator=torch.Generator().manual_seed(seed), **kw)


def _fresh_logprobs(model, prompt, response, temperature):
    """Log-probs of ``response`` after ``prompt`` from one unpadded, uncached forward pass."""
    seq = torch.tensor(prompt + response).unsqueeze(0)
    with torch.no_grad():
        logits = model(seq).logits[0].float() / temperature  # [L, V]
    lp = torch.log_softmax(logits[len(prompt) - 1 : -1], -1)  # [R, V]
    return lp.gather(1, torch.tensor(response).unsqueeze(1)).squeeze(1)


@pytest.mark.parametrize("kv_cache", ["static", "dynamic"])
def test_logprobs_equal_fresh_forward(tiny_model, prompts, kv_cache):
    params = SamplingParams(max_new_tokens=10, temperature=0.7, n=3)
    r = _gen(tiny_model, prompts, params, kv_cache=kv_cache)
    assert r.response_ids.shape == r.logprobs.shape == r.response_mask.shape == (9, 10)
    assert r.logprobs.dtype == torch.float32 and not torch.is_inference(r.logprobs)
    for i in range(9):
        n = int(r.lengths[i])
        ref = _fresh_logprobs(tiny_model, r.prompt_ids[i], r.response_ids[i, :n].tolist(), 0.7)
        torch.testing.assert_close(r.logprobs[i, :n], ref, atol=1e-4, rtol=0)
        assert torch.all(r.logprobs[i, n:] == 0)
    # The production training forward (prompts encoded once per group, responses on top) agrees too.
    lp, ent = batched_logprobs(tiny_model, r.prompt_ids, r.response_ids, pad_id=PAD, temperature=0.7,
                               micro_batch_size=4, with_entropy=True)
    lp, ent = lp * r.response_mask, ent * r.response_mask  # padding positions mean nothing
    torch.testing.assert_close(lp, r.logprobs, atol=1e-4, rtol=0)
    assert torch.all(ent[r.response_mask == 0] == 0) and torch.all(ent[r.response_mask == 1] > 0)
    # The rollout's own entropies are the policy's at sampling time: equal to the scorer's.
    assert r.entropies.shape == r.logprobs.shape
    torch.testing.assert_close(r.entropies, ent, atol=1e-4, rtol=0)


def test_scoring_entropy_matches_direct(tiny_model, prompts):
    r = _gen(tiny_model, prompts[:1], SamplingParams(max_new_tokens=5))
    _, ent = batched_logprobs(tiny_model, r.prompt_ids, r.response_ids, pad_id=PAD, temperature=2.0,
                              micro_batch_size=1, with_entropy=True)
    with torch.no_grad():
        seq = torch.tensor(r.prompt_ids[0] + r.response_ids[0].tolist()).unsqueeze(0)
        logits = tiny_model(seq).logits[0, len(r.prompt_ids[0]) - 1 : -1] / 2.0
    p = torch.softmax(logits, -1)
    torch.testing.assert_close(ent[0], -(p * torch.log(p)).sum(-1), atol=1e-4, rtol=0)


def test_greedy_logprobs_use_temperature_one(tiny_model, prompts):
    r = _gen(tiny_model, prompts, SamplingParams(max_new_tokens=6, temperature=0.0))
    for i in range(3):
        ref_lp = _fresh_logprobs(tiny_model, r.prompt_ids[i], r.response_ids[i].tolist(), 1.0)
        torch.testing.assert_close(r.logprobs[i], ref_lp, atol=1e-4, rtol=0)
        # Greedy: every token is the argmax given its prefix.
        seq = torch.tensor(r.prompt_ids[i] + r.response_ids[i].tolist()).unsqueeze(0)
        with torch.no_grad():
            argmax = tiny_model(seq).logits[0, len(r.prompt_ids[i]) - 1 : -1].argmax(-1)
        assert argmax.tolist() == r.response_ids[i].tolist()


def _first_token_index(tokens, token_set, start=1):
    return next(t for t in range(start, len(tokens)) if tokens[t] in token_set and tokens[t] not in tokens[:t])


def test_eos_stops_sequence(tiny_model, prompts):
    params = SamplingParams(max_new_tokens=16, temperature=1.0, n=2)
    free = _gen(tiny_model, prompts, params, eos_token_ids=[])
    assert free.finish_reasons == ["length"] * 6
    # Declare as "EOS" a token that row 0 samples at step k (and never before): row 0 must stop
    # right there with the EOS token counted once; rows are independent random streams, so every
    # row equals the un-stopped run up to its own first EOS.
    row0 = free.response_ids[0].tolist()
    k = _first_token_index(row0, set(row0), start=3)
    eos = [row0[k]]
    r = _gen(tiny_model, prompts, params, eos_token_ids=eos)
    assert int(r.lengths[0]) == k + 1 and r.finish_reasons[0] == "stop"
    assert r.response_ids[0, : k + 1].tolist() == row0[: k + 1]
    for i in range(6):
        toks = free.response_ids[i].tolist()
        end = toks.index(eos[0]) + 1 if eos[0] in toks else 16
        assert int(r.lengths[i]) == end
        assert r.finish_reasons[i] == ("stop" if end < 16 or toks[-1] == eos[0] else "length")
        assert r.response_ids[i, :end].tolist() == toks[:end]
        assert r.response_mask[i].sum() == end and torch.all(r.response_mask[i, :end] == 1)
        assert torch.all(r.response_ids[i, end:] == PAD)
        assert r.response_ids[i, :end].tolist().count(eos[0]) <= 1
        torch.testing.assert_close(r.logprobs[i, :end], free.logprobs[i, :end], atol=1e-5, rtol=0)
        assert torch.all(r.logprobs[i, end:] == 0)
    assert r.response_ids.shape[1] == int(r.lengths.max())


def test_stop_strings(tiny_model, prompts, tokenizer):
    params = SamplingParams(max_new_tokens=16, temperature=0.0)
    free = _gen(tiny_model, prompts, params, eos_token_ids=[])
    row = free.response_ids[1].tolist()
    # A stop string spanning tokens 4..6 of row 1 (whatever characters they are).
    stop = tokenizer.decode(row[4:7])
    expected = next(k for k in range(1, 17) if stop in tokenizer.decode(row[:k]))
    r = _gen(tiny_model, prompts, SamplingParams(max_new_tokens=16, temperature=0.0, stop_strings=(stop,)),
             eos_token_ids=[], tokenizer=tokenizer)
    assert int(r.lengths[1]) == expected <= 7 and r.finish_reasons[1] == "stop"
    assert r.response_ids[1, :expected].tolist() == row[:expected]
    assert stop in tokenizer.decode(r.response_ids[1, :expected].tolist())
    for i in (0, 2):  # the others stop at their own first occurrence, or run to the limit
        toks = free.response_ids[i].tolist()
        end = next((k for k in range(1, 17) if stop in tokenizer.decode(toks[:k])), 16)
        assert int(r.lengths[i]) == end
        assert r.finish_reasons[i] == ("stop" if stop in tokenizer.decode(toks[:end]) else "length")


def test_stop_strings_need_tokenizer(tiny_model, prompts):
    with pytest.raises(ValueError, match="tokenizer"):
        _gen(tiny_model, prompts, SamplingParams(max_new_tokens=4, stop_strings=("x",)))


def test_length_finish(tiny_model, prompts):
    r = _gen(tiny_model, prompts, SamplingParams(max_new_tokens=7, n=2), eos_token_ids=[])
    assert r.finish_reasons == ["length"] * 6
    assert r.lengths.tolist() == [7] * 6 and torch.all(r.response_mask == 1)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_prompt_alone_equals_prompt_in_padded_batch(tiny_model, prompts, temperature):
    # The random stream of a sequence depends on (seed, prompt index, sample index) only, so with
    # the prompt at index 0 in both runs sampled tokens must match too, not only greedy ones.
    params = SamplingParams(max_new_tokens=12, temperature=temperature, n=2)
    short = [prompts[1]]  # the shortest prompt: most left padding in the batch
    alone = _gen(tiny_model, short, params, eos_token_ids=[])
    batch = _gen(tiny_model, short + [prompts[2], prompts[0]], params, eos_token_ids=[])
    assert batch.response_ids[:2].tolist() == alone.response_ids.tolist()
    torch.testing.assert_close(batch.logprobs[:2], alone.logprobs, atol=1e-5, rtol=0)


def test_slice_with_first_prompt_index_equals_the_whole_batch(tiny_model, prompts):
    # How ranks sample their slice of a global batch: the same generator everywhere and the
    # slice's global position, so two "ranks" together draw what one process draws.
    params = SamplingParams(max_new_tokens=12, temperature=1.0, n=2)
    whole = _gen(tiny_model, prompts, params, eos_token_ids=[])
    rank0 = _gen(tiny_model, prompts[:1], params, eos_token_ids=[], first_prompt_index=0)
    rank1 = _gen(tiny_model, prompts[1:], params, eos_token_ids=[], first_prompt_index=1)
    assert torch.cat([rank0.response_ids, rank1.response_ids]).tolist() == whole.response_ids.tolist()
    assert rank1.prompt_index.tolist() == [0, 0, 1, 1]  # local indices, for the caller's own lists
    unshifted = _gen(tiny_model, prompts[1:], params, eos_token_ids=[])
    assert unshifted.response_ids.tolist() != whole.response_ids[2:].tolist()  # the index matters


def test_samples_grouped_by_prompt(tiny_model, prompts):
    r = _gen(tiny_model, prompts, SamplingParams(max_new_tokens=8, n=4), eos_token_ids=[])
    assert r.prompt_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert r.prompt_ids == [prompts[i] for i in r.prompt_index.tolist()]
    for i in range(3):
        group = {tuple(x) for x in r.response_ids[4 * i : 4 * i + 4].tolist()}
        assert len(group) > 1  # samples of one prompt differ


def test_same_seed_same_samples(tiny_model, prompts):
    params = SamplingParams(max_new_tokens=8, n=2, top_p=0.95)
    a, b = _gen(tiny_model, prompts, params, seed=3), _gen(tiny_model, prompts, params, seed=3)
    c = _gen(tiny_model, prompts, params, seed=4)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.response_ids, c.response_ids)


def test_top_k_one_equals_greedy(tiny_model, prompts):
    greedy = _gen(tiny_model, prompts, SamplingParams(max_new_tokens=8, temperature=0.0))
    top1 = _gen(tiny_model, prompts, SamplingParams(max_new_tokens=8, temperature=1.0, top_k=1), seed=5)
    assert torch.equal(greedy.response_ids, top1.response_ids)
    torch.testing.assert_close(greedy.logprobs, top1.logprobs, atol=1e-6, rtol=0)


def test_top_k_and_top_p_restrict_support(tiny_model, prompts):
    """Every sampled token lies in the top-k set / the nucleus of its step's distribution."""
    for params in (SamplingParams(max_new_tokens=8, top_k=3, n=4), SamplingParams(max_new_tokens=8, top_p=0.3, n=4)):
        r = _gen(tiny_model, prompts, params, eos_token_ids=[])
        for i in range(12):
            seq = torch.tensor(r.prompt_ids[i] + r.response_ids[i].tolist()).unsqueeze(0)
            with torch.no_grad():
                logits = tiny_model(seq).logits[0, len(r.prompt_ids[i]) - 1 : -1]  # [R, V]
            probs = torch.softmax(logits, -1)
            order = probs.argsort(-1, descending=True)
            for t, tok in enumerate(r.response_ids[i].tolist()):
                rank = (order[t] == tok).nonzero().item()
                if params.top_k:
                    assert rank < 3
                else:
                    mass_before = probs[t, order[t, :rank]].sum()
                    assert mass_before < 0.3 + 1e-6


def test_model_mode_restored_and_training_model_sampled_in_eval(tiny_model, prompts):
    import copy

    model = copy.deepcopy(tiny_model)
    for module in model.modules():  # dropout that would change the samples if left in train mode
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.5
    params = SamplingParams(max_new_tokens=3, temperature=0.0)
    model.train()
    r = _gen(model, prompts, params)
    assert model.training
    model.eval()
    assert torch.equal(r.response_ids, _gen(model, prompts, params).response_ids)


def test_invalid_params():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(max_new_tokens=4, top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)


def test_bf16_model_gives_float32_logprobs(tiny_model, prompts):
    import copy

    model = copy.deepcopy(tiny_model).to(torch.bfloat16)
    r = _gen(model, prompts, SamplingParams(max_new_tokens=6, n=2))
    assert r.logprobs.dtype == torch.float32 and torch.all(torch.isfinite(r.logprobs))
    for i in range(6):
        n = int(r.lengths[i])
        ref = _fresh_logprobs(model, r.prompt_ids[i], r.response_ids[i, :n].tolist(), 1.0)
        assert (r.logprobs[i, :n] - ref).abs().mean() < 0.1  # bf16 rounding differs between the two paths
