"""bf16 compute with fp32 logits (engine.model.FP32Head / precise_head, engine.actor.LocalActor)."""
import torch

from rltrain.engine.actor import LocalActor, OptimConfig
from rltrain.engine.model import FP32Head, choose_dtype, cpu_bf16_probe, load_model
from rltrain.rollout.forward import response_logprobs
from rltrain.rollout.engine import SamplingParams, generate

OPT = OptimConfig(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.99), warmup_steps=0, schedule="constant",
                  total_steps=10, max_grad_norm=1.0)


def _bf16_actor(model):
    return LocalActor(model, OPT, dtype="bf16")


def _last_hidden(model, ids):
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True, use_cache=False)
    return out.hidden_states[-1][0, -1].float()  # [H] after the final norm


def test_bf16_greedy_equals_fp32_on_a_near_tie():
    """Two tokens whose logits (~20) differ by 0.016, far below bf16's spacing there (0.125):
    bf16 logits round both to one value and greedy picks the lower index; fp32 logits pick b."""
    model, tok = load_model("tiny", dtype="fp32")
    prompt = tok.encode("hi: 1+2=")
    a, b = tok.convert_tokens_to_ids("Q"), tok.convert_tokens_to_ids("Z")  # not in the prompt
    assert a < b and a not in prompt and b not in prompt
    actor = _bf16_actor(model)
    h = _last_hidden(actor.module, prompt)  # the bf16 model's own final hidden state (fp32 out)
    j = int(h.abs().argmax())
    with torch.no_grad():
        row = h.bfloat16().float().clone()
        row[j] = 0.0
        row = row * (19.992 / float(row @ h))
        row = row.bfloat16().float()  # exactly representable: bf16 copy == fp32 master
        eps = 2.0 ** round(float(torch.log2(torch.tensor(0.016 / abs(float(h[j]))))))
        row_b = row.clone()
        row_b[j] = eps * float(torch.sign(h[j]))
        for m in actor.master:
            if m.shape[0] == len(tok) and m.dim() == 2:
                m[a], m[b] = row, row_b
        for m, p in zip(actor.master, actor.params):
            p.copy_(m)
    h = _last_hidden(actor.module, prompt)
    W = actor.module.get_output_embeddings().weight
    old = torch.nn.functional.linear(h.bfloat16(), W)  # [V] what a bf16 head returns
    assert old[a] == old[b] and int(old.argmax()) == a  # the constructed tie (precondition)
    fp32 = (W[b].float() - W[a].float()) @ h
    assert 0 < fp32 < 0.0625
    params = SamplingParams(max_new_tokens=1, temperature=0.0)
    kw = dict(eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
    got = generate(actor.module, [prompt], params, **kw).response_ids[0, 0]
    ref_model, _ = load_model("tiny", dtype="fp32")
    ref_model.load_state_dict(actor.full_state_dict())
    ref = generate(ref_model, [prompt], params, **kw).response_ids[0, 0]
    assert int(ref) == b
    assert int(got) == int(ref)


def _rollout(model, tok, n=4):
    prompts = [tok.encode("hello there, how are you"), tok.encode("what is 2+2? think")]
    params = SamplingParams(max_new_tokens=24, n=n, temperature=1.0)
    g = torch.Generator().manual_seed(0)
    return generate(model, prompts, params, eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id,
                    generator=g)


def test_bf16_logits_are_fp32_and_logprobs_close_to_fp32_on_tiny():
    ref, tok = load_model("tiny", dtype="fp32")
    actor = _bf16_actor(load_model("tiny", dtype="fp32")[0])
    ro = _rollout(ref, tok)
    mask = ro.response_mask.bool()
    with torch.no_grad():
        lp32, _ = response_logprobs(ref, ro.prompt_ids, ro.response_ids, pad_id=tok.pad_token_id, temperature=1.0)
        lp16, _ = response_logprobs(actor.module, ro.prompt_ids, ro.response_ids, pad_id=tok.pad_token_id,
                                    temperature=1.0)
    diff = (lp32 - lp16)[mask].abs()
    assert diff.mean() < 1e-3, diff.mean()
    # The logits themselves: the fp32 product of the final hidden state and the fp32 master head
    # (a bf16 head's output is on the bf16 grid, up to 2^-9 relative off).
    prompt = ro.prompt_ids[0]
    with torch.no_grad():
        out = actor.module(input_ids=torch.tensor([prompt]), output_hidden_states=True, use_cache=False)
        h = out.hidden_states[-1][0, -1]
        assert h.dtype == torch.float32 and out.logits.dtype == torch.float32
        head = actor.module.get_output_embeddings()
        assert isinstance(head, FP32Head) and head.weight.dtype == torch.bfloat16
        master = {id(p): m for p, m in zip(actor.params, actor.master)}[id(head.weight)]
        exact = master @ h
        torch.testing.assert_close(out.logits[0, -1], exact, rtol=1e-5, atol=1e-6)


def test_sampler_logprobs_match_the_trainer_in_bf16():
    """The rollout engine returns per-token log-probs of the sampled tokens; in bf16 they agree
    with the training forward's (both fp32 logits from the same weights)."""
    _, tok = load_model("tiny", dtype="fp32")
    actor = _bf16_actor(load_model("tiny", dtype="fp32")[0])
    ro = _rollout(actor.module, tok)
    mask = ro.response_mask.bool()
    with torch.no_grad():
        lp, _ = response_logprobs(actor.module, ro.prompt_ids, ro.response_ids, pad_id=tok.pad_token_id,
                                  temperature=1.0)
    assert ro.logprobs.shape == ro.response_ids.shape
    assert (ro.logprobs - lp)[mask].abs().max() < 2e-3


def test_bf16_gradients_accumulate_in_fp32_masters_and_head_stays_tied():
    model, tok = load_model("tiny", dtype="fp32")
    actor = _bf16_actor(model)
    ro = _rollout(actor.module, tok, n=2)
    for _ in range(2):  # two micro-batches
        lp, _ = response_logprobs(actor.module, ro.prompt_ids, ro.response_ids, pad_id=tok.pad_token_id,
                                  temperature=1.0)
        actor.backward(-(lp * ro.response_mask).sum())
    assert all(p.grad is None for p in actor.params)  # moved into the masters
    assert all(m.grad is not None and m.grad.dtype == torch.float32 for m in actor.master)
    emb = actor.module.get_input_embeddings().weight
    assert actor.module.get_output_embeddings().weight is emb
    before = [m.detach().clone() for m in actor.master]
    actor.step()
    assert any(not torch.equal(b, m) for b, m in zip(before, actor.master))
    master = {id(p): m for p, m in zip(actor.params, actor.master)}[id(emb)]
    # the compute copy is a bf16 neighbour of the master (stochastic rounding: within one ulp)
    assert ((emb.float() - master).abs() <= master.abs() * 2.0 ** -7 + 1e-30).all()


def test_stochastic_rounding_is_unbiased_and_stays_on_neighbours():
    from rltrain.engine.actor import stochastic_round_bf16

    x = torch.full((100_000,), 0.05 + 1e-5)  # between the bf16 neighbours 0.049805 and 0.050049
    lo, hi = 0.0498046875, 0.050048828125
    r = stochastic_round_bf16(x, torch.Generator().manual_seed(0)).float()
    assert set(r.unique().tolist()) == {lo, hi}
    p_hi = (x[0].item() - lo) / (hi - lo)
    assert abs((r == hi).float().mean().item() - p_hi) < 0.01  # nearest rounding would give 0 or 1
    y = torch.tensor([1.0, -2.5, float("inf"), float("-inf")])
    torch.testing.assert_close(stochastic_round_bf16(y, torch.Generator()).float(), y)  # exact values stay


def test_lora_bf16_frozen_head_uses_an_fp32_copy():
    from rltrain.engine.lora import apply_lora

    model, tok = load_model("tiny", dtype="fp32")
    model = apply_lora(model, r=4, alpha=8, dropout=0.0, target_modules=["all-linear"])
    actor = _bf16_actor(model)
    ro = _rollout(actor.module, tok, n=2)
    lp, _ = response_logprobs(actor.module, ro.prompt_ids, ro.response_ids, pad_id=tok.pad_token_id,
                              temperature=1.0)
    actor.backward(-(lp * ro.response_mask).sum())
    actor.step()
    assert lp.dtype == torch.float32


def test_auto_dtype_reason_and_probe_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RLTRAIN_CACHE", str(tmp_path))
    assert choose_dtype("fp32") == ("fp32", "set explicitly")
    probe = cpu_bf16_probe()
    assert probe["fp32_s"] > 0 and probe["bf16_s"] > 0
    assert (tmp_path / "dtype_probe.json").exists()
    assert cpu_bf16_probe() == probe  # cached: not re-measured
    dtype, why = choose_dtype("auto")
    assert dtype in ("fp32", "bf16") and why.startswith("auto:")


def test_auto_picks_bf16_on_a_cpu_only_where_the_probe_says_it_is_faster(monkeypatch):
    """auto on a CPU: fp32 without native bf16; with it, bf16 only when the probe's bf16/fp32 time ratio
    is at most PROBE_MARGIN (and the eight-seed parity holds: CPU_BF16_TRAINS_LIKE_FP32); the reason
    names the measured times either way."""
    from rltrain.engine import model as m

    monkeypatch.setattr(m.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(m, "fast_bf16", lambda: False)
    assert m.choose_dtype("auto") == ("fp32", "auto: CPU without avx512_bf16/AMX (bf16 would be emulated)")
    monkeypatch.setattr(m, "fast_bf16", lambda: True)
    for ratio, parity, expected in [(0.36, True, "bf16"), (0.8, True, "bf16"), (0.81, True, "fp32"),
                                    (0.36, False, "fp32")]:
        monkeypatch.setattr(m, "cpu_bf16_probe", lambda: {"fp32_s": 0.0137, "bf16_s": 0.0137 * ratio,
                                                          "ratio": ratio, "key": "k"})
        monkeypatch.setattr(m, "CPU_BF16_TRAINS_LIKE_FP32", parity)
        dtype, why = m.choose_dtype("auto")
        assert dtype == expected, (ratio, parity)
        assert why.startswith("auto: CPU matmul probe bf16") and f"fp32 13.7 ms (ratio {ratio}" in why
        assert ("model.dtype=bf16 to use it" in why) == (ratio <= 0.8 and not parity)
