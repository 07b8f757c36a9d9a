"""Environments in the GRPO loop: the environment's tokens get exactly zero gradient through the real
update (a constructed 3-turn episode), the update's forward reaches the last turn past the masked
tokens, and the CLI runs env=calculator and a multi-turn env=python end to end on the tiny model."""
import pytest
import torch

from rltrain.cli import compose_or_explain, to_run_config
from rltrain.config import register_configs
from rltrain.engine.dist import Dist
from rltrain.loops import pg
from rltrain.rollout.multiturn import ChatDelta
from tests.cli import TINY, events, metrics, run_cli, run_inprocess


class _Actor:
    """LocalActor-like: plain SGD over an fp32 module (the gradient is what is checked)."""

    def __init__(self, module):
        self.module, self.lr, self.collective = module, 0.0, None
        self.opt = torch.optim.SGD(module.parameters(), lr=0.0)

    def backward(self, loss):
        loss.backward()

    def step(self):
        self.opt.step()
        return 0.0


def _episode(tok, final: str):
    """Prompt ids and the response (model, env, model, env, model) of a 3-turn calculator episode."""
    d = ChatDelta(tok, "tiny")
    msgs = [{"role": "user", "content": "What is 123 + 456?"}]
    prompt = d.prompt_ids(msgs)
    ids, mask = [], []
    turns = [('<tool>calculate("123+456")</tool>', {"role": "tool", "content": "579"}),
             ("<tool>calculate('579*1')</tool>", {"role": "tool", "content": "579"}), (final, None)]
    for text, env_msg in turns:
        sampled = tok(text, add_special_tokens=False).input_ids + [tok.eos_token_id]
        ids += sampled
        mask += [1.0] * len(sampled)
        msgs.append({"role": "assistant", "content": text})
        if env_msg is not None:
            delta = d.env_ids(msgs, env_msg, ended_with_eos=True)
            ids += delta
            mask += [0.0] * len(delta)
            msgs.append(env_msg)
    return prompt, ids, mask


def test_environment_tokens_get_exactly_zero_gradient():
    from rltrain.engine.model import load_model

    register_configs()
    cfg = to_run_config(compose_or_explain(["model=tiny", "train.prompts_per_step=1", "train.samples_per_prompt=2",
                                            "train.micro_batch_size=2"]))
    model, tok = load_model("tiny", None, dtype="fp32", seed=0)
    rows = [_episode(tok, "\\boxed{579}"), _episode(tok, "It is 580, \\boxed{580}")]
    T = max(len(r[1]) for r in rows)
    resp = torch.full((2, T), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros(2, T)
    for i, (_, ids, m) in enumerate(rows):
        resp[i, :len(ids)] = torch.tensor(ids)
        mask[i, :len(m)] = torch.tensor(m)
    adv = torch.tensor([[1.0], [-0.5]]) * mask  # [2, T] one advantage per episode (unequal: no cancelling)
    captured = []

    def keep(module, args, out):  # the LM head's logits of each forward, with their gradient
        out.retain_grad()
        captured.append(out)

    hook = model.get_output_embeddings().register_forward_hook(keep)
    try:
        pg.PolicyUpdate(cfg).run(_Actor(model), pg.PGBatch([r[0] for r in rows], resp, mask, adv), Dist(),
                                 pad_id=tok.pad_token_id, step=0, generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    first, rest = captured[0], captured[1]  # [1, 1, V] the shared prompt's last position; [2, W, V] the responses
    assert rest.shape[1] == T, "the forward must reach the last model turn, past the environment's tokens"
    assert first.grad.abs().sum() > 0  # it predicts response token 0, the model's
    # rest[:, t] predicts response token t + 1: the gradient at the logits of tokens 1 .. T-1, [2, T-1]
    per_token = rest.grad[:, :-1].abs().sum(-1)
    m = mask[:, 1:]
    env = (m == 0) & (torch.arange(1, T) < torch.tensor([len(r[1]) for r in rows])[:, None])
    assert env.sum() > 20 and (per_token[env] == 0).all()  # exactly zero, not small
    assert (per_token[m == 1] > 0).all()  # every model token, the last turn's included
    assert (rest.grad[:, -1] == 0).all()


def test_response_spans_reach_the_last_loss_token():
    mask = torch.tensor([[1, 1, 0, 0, 1, 0], [1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0.]])
    assert pg.response_spans(mask).tolist() == [5, 3, 0]
    prefix = (torch.arange(6) < torch.tensor([[4], [6], [1]])).float()  # single-turn masks: the count
    assert pg.response_spans(prefix).tolist() == prefix.sum(1).long().tolist()


def test_cli_env_calculator_runs(tmp_path):
    r = run_cli([*TINY, "train.steps=1", "train.prompts_per_step=2", "train.samples_per_prompt=2", "env=calculator",
                 "eval.size=2", "env.max_turns=2"], tmp_path / "run", timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    (row,) = metrics(tmp_path / "run")
    assert {"env/turns", "env/called_tool", "env/masked_tokens", "env/prefill_tokens"} <= set(row)


def test_multiturn_episodes_train_through_grpo(tmp_path):
    """A multi-turn env=python class (tests/envs/toy_envs.py: Echo answers every turn) through the real
    loop: three turns per episode, environment tokens masked, the update runs on them."""
    stops = "rollout.stop_strings=[" + ",".join("abcdefghijklmnopqrstuvwxyz") + "]"
    run_inprocess([*TINY, "train.steps=2", "env=python", "env.cls=tests.envs.toy_envs:Echo", "env.max_turns=3",
                   stops, "eval.at_start=false", "eval.temperature=1.0", "reward.fn=tests.toy_rewards:mean_char_code"], tmp_path / "run")
    rows = metrics(tmp_path / "run")
    assert len(rows) == 2
    for row in rows:
        assert row["env/turns"] > 2.5 and row["env/masked_tokens"] > 10 and row["env/tool_calls"] > 1.5
        assert row["actor/token_select_frac"] == 1.0 and row["actor/grad_norm"] > 0
        assert row["env/prefill_tokens"] > 0
    (final,) = [e for e in events(tmp_path / "run") if e.get("event") == "eval"]
    assert final["tool_call_rate"] > 0.5  # the held-out episodes play the environment too


def test_env_errors_are_one_line_before_any_model_loads(tmp_path):
    """(A wrong env option or value is the generic config error: tests/config.)"""
    for args, says in [(["env=python", "env.cls=no_such_module:Env"], "rltrain: env error: env.cls='no_such_module:Env'"),
                       (["env=python", "env.cls=tests.envs.toy_envs:Undocumented"],
                        "rltrain: env error: tool Undocumented.tool has no docstring")]:
        r = run_cli(["model=hf", "model.path=/nonexistent", *args], tmp_path / "x", timeout=120)
        assert r.returncode == 2 and says in r.stderr, (args, r.stderr[-2000:])
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
