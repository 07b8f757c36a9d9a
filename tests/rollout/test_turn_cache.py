"""The KV cache carried across turns (rltrain/rollout/turn_cache.py): the episodes it samples are the
recompute path's (each turn a ``generate`` call on the whole context), token for token, with the same
masks, lengths and ends, and log-probs / entropies equal up to float rounding (fp32, model=tiny); only
what the cache lacks is prefilled (every episode token at most once, plus one sampled token per turn)."""
import pytest
import torch

from rltrain.envs import ToolEnv
from rltrain.rollout import SamplingParams
from rltrain.rollout.multiturn import ChatDelta, Limits, run_episodes
from rltrain.types import Sample
from tests.envs.toy_envs import Echo, Shouty

STOPS = tuple("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


@pytest.fixture(scope="module")
def tiny():
    from rltrain.engine.model import load_model

    model, tok = load_model("tiny", None, dtype="fp32", seed=0)
    return model.eval(), tok


class EndsEarly(Echo):
    """Samples b and d end after one turn, c after two: later turns' batches have holes."""

    def reset(self, sample):
        self.stop_after, self.turn = {"b": 1, "c": 2, "d": 1}.get(sample.id, 99), 0
        return super().reset(sample)

    def step(self, text):
        self.turn += 1
        return (None, True, {}) if self.turn >= self.stop_after else super().step(text)


class LongAnswer(Echo):
    """Messages of different lengths per episode (ragged prefills)."""

    def step(self, text):
        return "go on " * (1 + len(text) % 5), False, {}


def _play(tiny, env_cls, limits, params, carry, first=0):
    model, tok = tiny
    eos = [tok.eos_token_id]
    if not params.stop_strings:  # turns end by "EOS": any letter (the random model rarely samples the real one)
        eos += tok("abcdefghijklmnopqrstuvwxyz", add_special_tokens=False).input_ids
    samples = [Sample(c, f"{i} + 30?", "") for i, c in enumerate("abcd")]
    envs = [ToolEnv(env_cls(), system_prompt=None, tool_timeout_s=2.0, max_tool_output_chars=10_000,
                    max_invalid_tool_calls=2) for _ in range(len(samples) * params.n)]
    return run_episodes(model, tok, ChatDelta(tok, "tiny"), envs, samples, params, limits,
                        eos_token_ids=eos, pad_token_id=tok.pad_token_id,
                        generator=torch.Generator().manual_seed(7), first_prompt_index=first, carry_cache=carry)


CASES = {
    "four turns": (Echo, Limits(max_turns=4, max_episode_tokens=400, max_tool_output_tokens=64),
                   SamplingParams(max_new_tokens=12, temperature=1.0, n=3, stop_strings=STOPS)),
    "32 rows (stopped rows wait to leave the batch)": (
        Echo, Limits(max_turns=3, max_episode_tokens=400, max_tool_output_tokens=64),
        SamplingParams(max_new_tokens=16, temperature=1.0, n=8, stop_strings=tuple("abcdefgh"))),
    "episodes end early": (EndsEarly, Limits(max_turns=4, max_episode_tokens=400, max_tool_output_tokens=64),
                           SamplingParams(max_new_tokens=12, temperature=1.0, n=2, stop_strings=STOPS)),
    "ragged messages, top-p": (LongAnswer, Limits(max_turns=3, max_episode_tokens=400, max_tool_output_tokens=64),
                               SamplingParams(max_new_tokens=10, temperature=0.8, top_p=0.9, n=2, stop_strings=STOPS)),
    "token budget": (Echo, Limits(max_turns=6, max_episode_tokens=90, max_tool_output_tokens=64),
                     SamplingParams(max_new_tokens=12, temperature=1.0, n=2, stop_strings=STOPS)),
    "cut tool output, turns end at EOS": (Shouty, Limits(max_turns=3, max_episode_tokens=400, max_tool_output_tokens=24),
                                         SamplingParams(max_new_tokens=6, temperature=1.0, n=2)),
    "greedy": (Echo, Limits(max_turns=3, max_episode_tokens=400, max_tool_output_tokens=64),
               SamplingParams(max_new_tokens=8, temperature=0.0, n=1, stop_strings=tuple(map(chr, range(32, 127))))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_carried_cache_samples_the_recompute_paths_episodes(tiny, case):
    env_cls, limits, params = CASES[case]
    again, carried = (_play(tiny, env_cls, limits, params, carry, first=2) for carry in (False, True))
    assert torch.equal(carried.response_ids, again.response_ids)
    assert torch.equal(carried.mask, again.mask) and torch.equal(carried.lengths, again.lengths)
    assert torch.equal(carried.finished, again.finished) and carried.final_texts == again.final_texts
    for key in ("turns", "tool_calls", "truncations", "masked_tokens", "episode_tokens"):
        assert carried.stats[key] == again.stats[key], key
    # fp32: a token's keys computed one position at a time vs. in one prefill differ in the last bits
    torch.testing.assert_close(carried.logprobs, again.logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(carried.entropies, again.entropies, atol=1e-5, rtol=0)
    assert max(carried.stats["turns"]) > 1  # the case exercises later turns
    if case == "four turns":
        assert (carried.logprobs - again.logprobs).abs().max() < 2e-6


def test_only_what_the_cache_lacks_is_prefilled(tiny):
    """Carried: the first prompt (shared by its group), each environment message, and at most one sampled
    token per later turn (the last token of a turn is sampled, never fed). Recompute: every turn's whole
    context."""
    env_cls, limits, params = CASES["four turns"]
    again, carried = (_play(tiny, env_cls, limits, params, carry) for carry in (False, True))
    for i in range(len(carried.final_texts)):
        prompt = len(carried.prompt_ids[i])
        env_tokens, turns = carried.stats["masked_tokens"][i], int(carried.stats["turns"][i])
        assert prompt / params.n + env_tokens <= carried.stats["prefill_tokens"][i] <= \
            prompt / params.n + env_tokens + (turns - 1)
        # recompute: turn t prefills the prompt and everything before turn t
        assert again.stats["prefill_tokens"][i] > prompt / params.n + (turns - 1) * prompt
    saved = 1 - sum(carried.stats["prefill_tokens"]) / sum(again.stats["prefill_tokens"])
    assert saved > 0.5, saved


def test_a_context_that_does_not_extend_the_cache_is_refused(tiny):
    from rltrain.rollout.turn_cache import TurnCache

    model, tok = tiny
    params = SamplingParams(max_new_tokens=4, temperature=1.0, n=1, stop_strings=STOPS)
    cache = TurnCache(model, params, eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id, tokenizer=tok)
    prompt = tok("user: hi\nassistant: ", add_special_tokens=False).input_ids
    level = cache.first_turn([prompt], [0], [4], base_seed=1)
    sampled = level.tokens[0, :int(level.lengths[0])].tolist()
    with pytest.raises(ValueError, match="do not extend"):
        cache.next_turn([0], [prompt[:-1] + sampled + [5, 6]], [0], [4], base_seed=2)
