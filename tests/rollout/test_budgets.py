"""generate(max_new_per_prompt=...): each prompt's responses stop at its own cap, and the capped
responses are exactly the first tokens (and log-probs) of the uncapped ones; EOS before the cap
still wins. SPO-chain's Monte-Carlo continuations rely on this to generate nothing past the
response cap (issue: MC waste)."""
import pytest
import torch

from rltrain.rollout import SamplingParams, generate

from .conftest import EOS, PAD


def _gen(model, prompts, params, **kw):
    return generate(model, prompts, params, pad_token_id=PAD, generator=torch.Generator().manual_seed(3), **kw)


def test_capped_rows_are_prefixes_of_uncapped_rows(tiny_model, prompts):
    params = SamplingParams(max_new_tokens=16, temperature=1.0, n=3)
    caps = [1, 7, 16][: len(prompts)] + [5] * max(0, len(prompts) - 3)
    free = _gen(tiny_model, prompts, params, eos_token_ids=[])
    capped = _gen(tiny_model, prompts, params, eos_token_ids=[], max_new_per_prompt=caps)
    for j in range(len(free.lengths)):
        cap = caps[int(free.prompt_index[j])]
        assert int(capped.lengths[j]) == cap
        assert capped.finish_reasons[j] == "length"
        assert capped.response_ids[j, :cap].tolist() == free.response_ids[j, :cap].tolist()
        torch.testing.assert_close(capped.logprobs[j, :cap], free.logprobs[j, :cap], atol=1e-5, rtol=0)
        assert torch.all(capped.response_ids[j, cap:] == PAD) and capped.response_mask[j].sum() == cap
    # Only the tokens below the caps were generated.
    assert int(capped.lengths.sum()) == sum(caps[int(i)] for i in free.prompt_index)


def test_eos_before_the_cap_still_stops(tiny_model, prompts):
    params = SamplingParams(max_new_tokens=16, temperature=1.0, n=2)
    free = _gen(tiny_model, prompts, params, eos_token_ids=[])
    row0 = free.response_ids[0].tolist()
    eos = row0[2]  # a token row 0 samples at step 2
    k = row0.index(eos)
    r = _gen(tiny_model, prompts, params, eos_token_ids=[eos], max_new_per_prompt=[12] * len(prompts))
    assert int(r.lengths[0]) == k + 1 and r.finish_reasons[0] == "stop"
    for j in range(len(r.lengths)):
        toks = free.response_ids[j].tolist()
        end = min(toks.index(eos) + 1 if eos in toks else 16, 12)
        assert int(r.lengths[j]) == end
        assert r.response_ids[j, :end].tolist() == toks[:end]


def test_bad_budgets_fail_clearly(tiny_model, prompts):
    params = SamplingParams(max_new_tokens=8, temperature=1.0, n=1)
    with pytest.raises(ValueError, match="prompt_budgets"):
        _gen(tiny_model, prompts, params, eos_token_ids=[EOS], max_new_per_prompt=[0] * len(prompts))
    with pytest.raises(ValueError, match="prompt_budgets"):
        _gen(tiny_model, prompts, params, eos_token_ids=[EOS], max_new_per_prompt=[3])


def test_progress_callback_ends_at_the_last_decoded_position(tiny_model, prompts):
    """on_position(done, max_new_tokens) after each decoded position, up to the longest capped row;
    the samples are unchanged by it (progress display for SPO-chain's MC phase)."""
    params = SamplingParams(max_new_tokens=16, temperature=1.0, n=2)
    caps = [3, 6] + [4] * max(0, len(prompts) - 2)
    calls = []
    seen = _gen(tiny_model, prompts, params, eos_token_ids=[], max_new_per_prompt=caps,
                on_position=lambda done, total: calls.append((done, total)))
    plain = _gen(tiny_model, prompts, params, eos_token_ids=[], max_new_per_prompt=caps)
    assert torch.equal(seen.response_ids, plain.response_ids)
    assert calls == [(d, 16) for d in range(1, max(caps) + 1)]


@pytest.mark.parametrize("kv_cache", ["static", "dynamic"])
def test_shared_prefixes_sample_what_separate_prefills_sample(tiny_model, prompts, kv_cache, monkeypatch):
    """Prompts that are prefixes of a few sources (SPO-chain's cut states of one response), started
    from their source's cached keys and values, give the samples of encoding each prompt alone, with
    the same log-probs up to float rounding, and with per-prompt caps too."""
    params = SamplingParams(max_new_tokens=10, temperature=1.0, n=3)
    sources = [p + [7, 8, 9, 10, 11, 12][: 3 + i] for i, p in enumerate(prompts[:3])]
    cuts = [(0, len(prompts[0]) + 1), (0, len(sources[0])), (1, len(prompts[1])), (2, len(prompts[2]) + 2),
            (1, len(sources[1]) - 1), (2, len(sources[2]))]  # (source, prefix length), nested and whole
    states = [sources[r][:n] for r, n in cuts]
    caps = [4, 10, 7, 1, 10, 3]
    alone = _gen(tiny_model, states, params, eos_token_ids=[], kv_cache=kv_cache, max_new_per_prompt=caps)
    shared = _gen(tiny_model, states, params, eos_token_ids=[], kv_cache=kv_cache, max_new_per_prompt=caps,
                  shared_prefixes=(sources, [r for r, _ in cuts]))
    assert torch.equal(shared.response_ids, alone.response_ids)
    assert torch.equal(shared.lengths, alone.lengths)
    torch.testing.assert_close(shared.logprobs, alone.logprobs, atol=1e-5, rtol=0)
    # a model whose final norm is not found falls back to the plain prefill: the same samples
    with monkeypatch.context() as m:
        m.setattr("rltrain.rollout.decode.final_norm", lambda model: None)
        plain = _gen(tiny_model, states, params, eos_token_ids=[], kv_cache=kv_cache, max_new_per_prompt=caps,
                     shared_prefixes=(sources, [r for r, _ in cuts]))
    assert torch.equal(plain.response_ids, alone.response_ids) and torch.equal(plain.logprobs, alone.logprobs)
    with pytest.raises(ValueError, match="prefix of its source"):
        _gen(tiny_model, [prompts[0] + [99]], params, eos_token_ids=[], shared_prefixes=([prompts[0] + [98]], [0]))
