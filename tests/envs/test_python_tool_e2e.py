"""env=python_tool end to end on model=tiny: a first turn forced to call run_python plays through the
rollout the loops use (play_and_score: episodes, the real sandbox, the carried KV cache), the code's
output comes back as masked environment tokens; and ``rltrain env=python_tool`` runs through the CLI."""
import inspect

import pytest
import torch

from rltrain.cli import compose_or_explain, to_run_config
from rltrain.config import register_configs, validate
from rltrain.loops.env_episodes import play_and_score
from rltrain.rollout import SamplingParams
from rltrain.types import RewardOutput, Sample
from tests.cli import TINY, metrics, run_cli
from tests.rewards.sandbox_support import NAMESPACE_UNSUPPORTED

STOPS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")  # not in the script: its turn ends at its EOS
CALL = '<tool>run_python("print(6 * 7)")</tool>'


class Scripted(torch.nn.Module):
    """The tiny model, except that the first turn of every episode is ``script`` (then EOS): the logits of
    the token that continues the script at that position are made certain. Later turns are the model's."""

    def __init__(self, inner, prompt_len: int, script: list[int]):
        super().__init__()
        self.inner, self.prompt_len, self.script = inner, prompt_len, script
        self.config = inner.config

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, use_cache=None,
                logits_to_keep=0):
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                         use_cache=use_cache, logits_to_keep=logits_to_keep)
        k = (position_ids[:, -1] + 1 - self.prompt_len).tolist()  # [B] script index of the token predicted
        for row, j in enumerate(k):
            if 0 <= j < len(self.script):
                out.logits[row, -1] = -1e4
                out.logits[row, -1, self.script[j]] = 0.0
        return out


assert "cache" in inspect.signature(Scripted.forward).parameters  # the engine passes the cache as `cache`


def _no_reward(samples, completions):
    return RewardOutput([0.0] * len(completions), {})


@pytest.mark.skipif(NAMESPACE_UNSUPPORTED is not None,
                    reason=f"namespace isolation cannot run on this machine: {NAMESPACE_UNSUPPORTED}")
def test_a_python_tool_call_plays_through_the_rollout():
    from rltrain.engine.model import load_model
    from rltrain.rollout.multiturn import ChatDelta

    register_configs()
    cfg = to_run_config(compose_or_explain(["model=tiny", "env=python_tool", "env.max_turns=2"]))
    validate(cfg)
    inner, tok = load_model("tiny", None, dtype="fp32", seed=0)
    samples = [Sample("a", "What is 6 * 7?", "42"), Sample("b", "What is 7 * 6?", "42")]
    lens = set()
    for s in samples:  # the first prompt as the rollout renders it (system message with the tool, question)
        lens.add(len(ChatDelta(tok, "tiny").prompt_ids(_reset(cfg, s))))
    assert len(lens) == 1
    model = Scripted(inner, lens.pop(), tok(CALL, add_special_tokens=False).input_ids + [tok.eos_token_id])
    params = SamplingParams(max_new_tokens=48, temperature=1.0, n=2, stop_strings=STOPS)
    scored, _ = play_and_score(model, tok, samples, _no_reward, cfg, params=params,
                               generator=torch.Generator().manual_seed(0))
    info = scored.reward.info
    assert info["env/tool_calls"] == [1.0] * 4 and info["env/called_tool"] == [1.0] * 4
    assert info["env/turns"] == [2.0] * 4 and info["env/invalid_calls"] == [0.0] * 4
    for i in range(4):
        L = int(scored.lengths[i])
        ids, mask = scored.response_ids[i, :L], scored.mask[i, :L]
        assert tok.decode(ids[mask == 1]).startswith(CALL)
        env_text = tok.decode(ids[mask == 0])
        assert "42" in env_text and "tool" in env_text  # the sandbox's output, as the template's tool message
        assert (scored.logprobs[i, :L][mask == 0] == 0).all()


def _reset(cfg, sample):
    from rltrain.loops.env_episodes import env_factory

    factory = env_factory(cfg)
    try:
        return factory().reset(sample)
    finally:
        factory.close()


def test_cli_env_python_tool_runs(tmp_path):
    """The command: preflight builds the jail (or fails closed), the step plays episodes and logs env/*."""
    if NAMESPACE_UNSUPPORTED is not None:
        pytest.skip(f"namespace isolation cannot run on this machine: {NAMESPACE_UNSUPPORTED}")
    r = run_cli([*TINY, "train.steps=1", "train.prompts_per_step=2", "train.samples_per_prompt=2", "env=python_tool",
                 "eval.size=2", "env.max_turns=2"], tmp_path / "run", timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    (row,) = metrics(tmp_path / "run")
    assert {"env/turns", "env/tool_calls", "env/masked_tokens", "env/prefill_tokens"} <= set(row)
