"""vLLM as the rollout engine (rltrain/rollout/vllm_engine.py), a real engine on the CPU: after a push of the
trainer's weights, vLLM's sampled-token log-probs equal the training forward's (fp32, 1e-4), for a plain
(untied) policy, a LoRA policy (pushed merged) and a tied-head policy; each check also shows it would see a
stale engine. One engine per policy architecture, started once for this module."""
import os

import psutil
import pytest
import torch

from rltrain.algos import core
from rltrain.engine.lora import LORA_B, apply_lora
from rltrain.engine.model import build_tiny_model, eos_token_ids
from rltrain.rollout import SamplingParams, response_logprobs
from rltrain.rollout.vllm_engine import VLLMEngine, policy_state

TEMPERATURE = 0.7
BIND = "VLLM_CPU_OMP_THREADS_BIND"
BIND_BEFORE = os.environ.get(BIND)  # this process's thread binding for vLLM before any engine started
PARAMS = SamplingParams(max_new_tokens=12, temperature=TEMPERATURE, n=3)


def tiny(tied: bool):
    """model=tiny at hidden size 128 (head size 32: vLLM's CPU attention has no kernel for tiny's default 16)."""
    model, tok = build_tiny_model(hidden_size=128, seed=0)
    if not tied:  # the plain policy: an LM head of its own
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    return model, tok


def train_step(model, seed: int, scale: float = 0.05) -> None:
    """Stand-in for an optimizer step: every trainable weight moves (the head too, tied or not)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def max_gap(engine, model, tok) -> float:
    """Largest |vLLM log-prob − training forward log-prob| over the sampled tokens of a few prompts."""
    prompts = [tok("What is 12 + 30?", add_special_tokens=False).input_ids,
               tok("Count to seven:", add_special_tokens=False).input_ids]
    ro = engine.generate(prompts, PARAMS, eos_token_ids=eos_token_ids(model, tok), pad_token_id=tok.pad_token_id,
                         generator=torch.Generator().manual_seed(0))
    assert ro.response_ids.shape[0] == len(prompts) * PARAMS.n and ro.lengths.min() >= 1
    with torch.no_grad():
        lp, _ = response_logprobs(model, ro.prompt_ids, ro.response_ids, pad_id=tok.pad_token_id,
                                  temperature=TEMPERATURE)
    return float(((lp - ro.logprobs).abs() * ro.response_mask).max())


@pytest.fixture(scope="module")
def untied():
    model, tok = tiny(tied=False)
    engine = VLLMEngine(model, tok, dtype="fp32", max_model_len=128, kv_cache_gb=0.25, threads=1)
    yield engine, model, tok
    engine.close()


@pytest.fixture(scope="module")
def tied():
    model, tok = tiny(tied=True)
    engine = VLLMEngine(model, tok, dtype="fp32", max_model_len=128, kv_cache_gb=0.25, threads=1)
    yield engine, model, tok
    engine.close()


def test_plain_policy_logprobs_match_after_push(untied):
    engine, model, tok = untied
    assert max_gap(engine, model, tok) < 1e-4  # the weights it started with
    train_step(model, seed=1)
    assert max_gap(engine, model, tok) > 1e-2  # not pushed yet: the check sees a stale engine
    assert engine.push(model) < 30
    assert max_gap(engine, model, tok) < 1e-4


def test_per_prompt_budgets(untied):
    """SPO-chain's continuations: each prompt its own token budget (``max_new_per_prompt``), log-probs still
    the trainer's."""
    engine, model, tok = untied
    prompts = [tok("What is 12 + 30?", add_special_tokens=False).input_ids,
               tok("Count to seven:", add_special_tokens=False).input_ids]
    ro = engine.generate(prompts, PARAMS, eos_token_ids=eos_token_ids(model, tok), pad_token_id=tok.pad_token_id,
                         generator=torch.Generator().manual_seed(0), max_new_per_prompt=[3, 9])
    lengths = ro.lengths.view(2, PARAMS.n)  # [prompt, sample]
    assert lengths[0].max() <= 3 and lengths[1].max() > 3 and lengths[1].max() <= 9, lengths
    with torch.no_grad():
        lp, _ = response_logprobs(model, ro.prompt_ids, ro.response_ids, pad_id=tok.pad_token_id,
                                  temperature=TEMPERATURE)
    assert float(((lp - ro.logprobs).abs() * ro.response_mask).max()) < 1e-4


def test_eager_sampler_samples_as_the_compiled_one(untied):
    """The runs these tests start skip the torch.compile of vLLM's sampler (conftest: TORCH_COMPILE_DISABLE);
    this process's engines compile it as a user's run does. Both give the same samples and log-probs."""
    import torch._dynamo.config

    engine, model, tok = untied
    assert not torch._dynamo.config.disable
    prompts = [tok(f"What is {i} + 30?", add_special_tokens=False).input_ids for i in range(4)]
    params = SamplingParams(max_new_tokens=12, temperature=1.0, n=4)
    kw = dict(eos_token_ids=eos_token_ids(model, tok), pad_token_id=tok.pad_token_id)
    compiled = engine.generate(prompts, params, generator=torch.Generator().manual_seed(3), **kw)
    with torch.compiler.set_stance("force_eager"):
        eager = engine.generate(prompts, params, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(eager.response_ids, compiled.response_ids) and torch.equal(eager.logprobs, compiled.logprobs)


def test_more_prompt_tokens_than_one_engine_step(untied):
    """70 prompts of 120 tokens (8,400 > the 8,192 tokens of one engine step) with seeded requests: without
    chunked prefill no prompt is split over steps (a split one made vLLM 0.32 rewind its CPU generator and
    raise), and each sample is the same as when its prompt is sampled alone (seeds by global position)."""
    engine, model, tok = untied
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(4, len(tok), (120,), generator=g).tolist() for _ in range(70)]
    params = SamplingParams(max_new_tokens=4, temperature=1.0, n=1)
    kw = dict(eos_token_ids=eos_token_ids(model, tok), pad_token_id=tok.pad_token_id)
    ro = engine.generate(prompts, params, generator=torch.Generator().manual_seed(0), **kw)
    assert ro.response_ids.shape[0] == 70 and ro.lengths.min() >= 1
    alone = engine.generate(prompts[69:], params, generator=torch.Generator().manual_seed(0), first_prompt_index=69,
                            **kw)
    assert torch.equal(alone.response_ids[0, :int(alone.lengths[0])], ro.response_ids[69, :int(ro.lengths[69])])


def test_lora_policy_is_pushed_merged(untied):
    engine, model, tok = untied
    lora = apply_lora(model, r=4, alpha=8.0, dropout=0.0, target_modules=["all-linear"])
    train_step(lora, seed=2, scale=0.2)  # only the adapters train; B ≠ 0 changes the outputs
    assert any(LORA_B in k for k in lora.state_dict()) and not any(LORA_B in k for k in policy_state(lora))
    engine.push(lora)
    assert max_gap(engine, lora, tok) < 1e-4


def test_tied_head_policy_logprobs_match_after_push(tied):
    engine, model, tok = tied
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    train_step(model, seed=3)
    engine.push(model)
    assert max_gap(engine, model, tok) < 1e-4
    # Why lm_head.weight is pushed although it is the embedding: vLLM on a CPU keeps its own packed
    # copy of the head, which a push of the embedding alone leaves stale.
    train_step(model, seed=4)
    state = {k: v for k, v in policy_state(model).items() if k != "lm_head.weight"}
    engine.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(state.items())})
    engine.llm.reset_prefix_cache()
    assert max_gap(engine, model, tok) > 1e-2


def test_bf16_policy_after_a_real_optimizer_step_and_push():
    """bf16 (the trainer's LocalActor: fp32 masters, bf16 compute weights, the head in fp32; vLLM all bf16):
    after a real optimizer step the engine is stale, after the push its log-probs are back near the trainer's.
    bf16 cannot match to 1e-4: the bound is the measured gap (mean ~1e-3, docs/vllm.md) with margin."""
    from rltrain.engine.actor import LocalActor, OptimConfig

    model, tok = tiny(tied=True)
    opt = OptimConfig(lr=1e-2, weight_decay=0.0, betas=(0.9, 0.99), warmup_steps=0, schedule="constant",
                      total_steps=1, max_grad_norm=1.0)
    actor = LocalActor(model, opt, dtype="bf16")
    engine = VLLMEngine(actor.module, tok, dtype="bf16", max_model_len=128, kv_cache_gb=0.25, threads=1)
    try:
        def gap():
            ro = engine.generate([tok("What is 12 + 30?", add_special_tokens=False).input_ids], PARAMS,
                                 eos_token_ids=eos_token_ids(model, tok), pad_token_id=tok.pad_token_id,
                                 generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                lp, _ = response_logprobs(actor.module, ro.prompt_ids, ro.response_ids, pad_id=tok.pad_token_id,
                                          temperature=TEMPERATURE)
            return float(core.masked_mean((lp - ro.logprobs).abs(), ro.response_mask)), ro

        start, ro = gap()
        lp, _ = response_logprobs(actor.module, ro.prompt_ids, ro.response_ids, pad_id=tok.pad_token_id,
                                  temperature=TEMPERATURE)
        actor.backward(-core.masked_mean(lp, ro.response_mask))  # make the sampled tokens likelier
        actor.step()
        stale = gap()[0]
        engine.push(actor.module)
        pushed = gap()[0]
        assert start < 5e-3 and pushed < 5e-3, (start, pushed)
        assert stale > 10 * pushed, (stale, pushed)
    finally:
        engine.close()


def test_close_leaves_no_process_or_engine(tied):
    """The engine runs in this process (no engine-core or worker process), leaves this process's environment as
    it found it, and close frees it."""
    engine, _, _ = tied
    assert psutil.Process().children(recursive=True) == []  # while it runs: nothing of it outside this process
    # Its thread binding was set for its start only: a later engine here, or a process started from here (a
    # test's run, a rank), binds to its own cores, not to this engine's.
    assert os.environ.get(BIND) == BIND_BEFORE
    engine.close()
    engine.close()  # idempotent (the atexit hook and the fixture call it again)
    assert not hasattr(engine, "llm")
    assert psutil.Process().children(recursive=True) == []
