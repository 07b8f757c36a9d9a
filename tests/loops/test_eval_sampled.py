"""Sampled evaluation (eval.n, eval.k): the numbers evaluate() reports against a recomputation from
the very samples it scored, reproducible and the same on 1 or 2 ranks; config errors that name the
key; the base-eval cache keyed on the sampling settings; and the real CLI on model=tiny
(metrics.jsonl, the summary table, rltrain-report)."""
import contextlib
import itertools
import json
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rltrain.cli import compose_or_explain, to_run_config
from rltrain.config import ConfigError, register_configs, validate
from rltrain.engine.dist import Dist
from rltrain.engine.model import load_model
from rltrain.loops.lifecycle import cached_base_eval, evaluate
from rltrain.report import cli as report_cli
from rltrain.types import RewardOutput, Sample

register_configs()


def first_char_mod3(samples, completions):
    """Toy reward with an answer string: the answer is the completion's first character code mod 3
    ("0", "1" or "2"; None when empty), correct when it is "0". Three answers make real majorities
    and ties among 4 samples; equal answers always get the same verdict, as with a rule-based reward."""
    extracted = [str(ord(c[0]) % 3) if c else None for c in completions]
    correct = [a == "0" for a in extracted]
    return RewardOutput(scores=[float(x) for x in correct], info={"correct": correct, "extracted": extracted})


class Recording:
    """first_char_mod3 that also records what it scored, in call order: (sample id, answer, correct)."""

    def __init__(self):
        self.rows = []

    def __call__(self, samples, completions):
        out = first_char_mod3(samples, completions)
        self.rows += list(zip([s.id for s in samples], out.info["extracted"], out.info["correct"]))
        return out


class OneRankOf(Dist):
    """Rank ``rank`` of ``world_size`` without a process group: sums stay local (this rank's part)."""

    def sum(self, t):
        return t


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model, tok = load_model("tiny", dtype="fp32", seed=0)
    # equal-length prompts: no left padding, so a batch's composition cannot change any logit
    samples = [Sample(id=f"q{i}", question=f"{10 + i}+{20 + i}=", answer="") for i in range(6)]
    prompt_ids = [tok(s.question)["input_ids"] for s in samples]
    return model, tok, samples, prompt_ids


def cfg_with(*over):
    cfg = to_run_config(compose_or_explain(["model=tiny", "eval.max_new_tokens=6", *over]))
    validate(cfg)
    return cfg


SAMPLED = ("eval.n=4", "eval.k=[1,2,4]", "eval.temperature=1.0")


def per_question(rows):
    """{sample id: [(answer, correct) of its samples, in sample order]}."""
    out = {}
    for qid, answer, ok in rows:
        out.setdefault(qid, []).append((answer, ok))
    return out


def brute_pass_at_k(flags, k):
    subsets = list(itertools.combinations(flags, k))
    return Fraction(sum(any(s) for s in subsets), len(subsets))


def first_majority_correct(pairs):
    """Oracle of maj@k on (answer, correct) pairs: most votes, ties to the earliest, None abstains."""
    answers = [a for a, _ in pairs if a is not None]
    if not answers:
        return False
    best = max(answers.count(a) for a in answers)
    winner = next(a for a in answers if answers.count(a) == best)
    return next(ok for a, ok in pairs if a == winner)


def test_sampled_metrics_match_a_recomputation_from_the_scored_samples(tiny):
    model, tok, samples, prompt_ids = tiny
    reward = Recording()
    # batch_size=8 sequences: 2 questions per generate call, so the grouping across calls is exercised
    ev = evaluate(model, tok, samples, prompt_ids, reward, cfg_with(*SAMPLED), Dist(), batch_size=8)
    groups = per_question(reward.rows)
    assert list(groups) == [s.id for s in samples] and all(len(g) == 4 for g in groups.values())
    flags = [[ok for _, ok in g] for g in groups.values()]
    assert 0 < sum(map(sum, flags)) < 24, "the toy reward should give a mix of right and wrong"
    assert ev["maj@4"] != ev["maj@1"], "some vote should overturn the first sample's answer (test power)"
    assert set(ev) == {"accuracy", "score", "length", "n", "time_s", "mean@4", "pass@1", "pass@2", "pass@4",
                       "maj@1", "maj@2", "maj@4"}
    assert ev["n"] == 6
    assert ev["accuracy"] == ev["mean@4"] == pytest.approx(sum(map(sum, flags)) / 24, abs=1e-12)
    for k in (1, 2, 4):
        want = sum(brute_pass_at_k(f, k) for f in flags) / len(flags)
        assert ev[f"pass@{k}"] == pytest.approx(float(want), abs=1e-12), k
        maj = sum(first_majority_correct(g[:k]) for g in groups.values()) / len(groups)
        assert ev[f"maj@{k}"] == pytest.approx(maj, abs=1e-12), k


def test_sampled_eval_is_reproducible_seeded_and_the_same_on_two_ranks(tiny):
    model, tok, samples, prompt_ids = tiny
    cfg = cfg_with(*SAMPLED)
    one, again = Recording(), Recording()
    evaluate(model, tok, samples, prompt_ids, one, cfg, Dist())
    evaluate(model, tok, samples, prompt_ids, again, cfg, Dist())
    assert one.rows == again.rows
    two = Recording()  # rank 0 then rank 1 of 2: each samples its own block of questions
    for rank in (0, 1):
        evaluate(model, tok, samples, prompt_ids, two, cfg, OneRankOf(rank=rank, world_size=2))
    assert per_question(two.rows) == per_question(one.rows)
    other = Recording()
    evaluate(model, tok, samples, prompt_ids, other, cfg_with(*SAMPLED, "eval.seed=1"), Dist())
    assert per_question(other.rows) != per_question(one.rows)


def test_greedy_default_keeps_its_keys_and_meaning(tiny):
    model, tok, samples, prompt_ids = tiny
    reward = Recording()
    ev = evaluate(model, tok, samples, prompt_ids, reward, cfg_with(), Dist())
    assert set(ev) == {"accuracy", "score", "length", "n", "time_s"}
    groups = per_question(reward.rows)
    assert all(len(g) == 1 for g in groups.values()) and len(groups) == 6
    assert ev["accuracy"] == pytest.approx(sum(g[0][1] for g in groups.values()) / 6, abs=1e-12)


@pytest.mark.parametrize("over,key", [
    (["eval.n=4", "eval.temperature=1", "eval.k=[1,8]"], "eval.k"),
    (["eval.k=[2]"], "eval.k"),  # k ≤ n with the default n=1
    (["eval.n=4", "eval.temperature=1", "eval.k=[0]"], "eval.k"),
    (["eval.n=0"], "eval.n"),
    (["eval.n=4"], "eval.temperature"),  # several samples need temperature > 0
    (["eval.temperature=-0.5"], "eval.temperature"),
    (["eval.n=2", "eval.temperature=1", "eval.top_p=0"], "eval.top_p"),
])
def test_config_errors_are_one_line_and_name_the_key(over, key):
    with pytest.raises(ConfigError) as e:
        validate(to_run_config(compose_or_explain(over)))
    msg = str(e.value)
    assert f"{key}=" in msg and "\n" not in msg, msg


def test_one_sample_at_a_temperature_is_allowed():
    assert cfg_with("eval.temperature=0.7").eval.n == 1


# --------------------------------------------------------------------------- the real CLI

TINY = ["model=tiny", "data.n_train=16", "data.n_test=6", "eval.size=6", "eval.max_new_tokens=6",
        "reward=python", "reward.fn=tests.loops.test_eval_sampled:first_char_mod3", "eval.cache_base=false",
        "rollout.max_new_tokens=6", "train.steps=1", "train.prompts_per_step=2", "train.samples_per_prompt=2",
        "train.micro_batch_size=4", "launch.threads_per_rank=1", "log.console=false"]


from tests.cli import run_cli  # noqa: E402


def eval_events(run_dir):
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("event") == "eval"]


def test_cli_sampled_eval_is_logged_consistently_and_reported(tmp_path):
    r = run_cli(TINY + list(SAMPLED), tmp_path / "run")
    assert r.returncode == 0, r.stderr[-3000:]
    events = eval_events(tmp_path / "run")
    assert [e["step"] for e in events] == [0, 1]
    for e in events:
        assert {"mean@4", "pass@1", "pass@2", "pass@4", "maj@1", "maj@2", "maj@4"} <= set(e), e
        assert e["n"] == 6
        assert all(0.0 <= e[k] <= 1.0 for k in ("accuracy", "mean@4", "pass@1", "pass@2", "pass@4", "maj@4"))
        assert e["pass@1"] == pytest.approx(e["mean@4"], abs=1e-9) and e["accuracy"] == e["mean@4"]
        assert e["pass@4"] >= e["pass@2"] >= e["pass@1"]
    out = r.stdout + r.stderr
    assert "held-out accuracy (mean@4, T=1)" in out and "held-out pass@4" in out and "held-out maj@2" in out

    assert report_cli.main([str(tmp_path / "run"), "--no-plots", "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "comparison.md").read_text()
    assert "## Sampled evaluation" in md
    last = events[-1]
    assert f"| 1 | {last['mean@4']:.1%} | {last['pass@1']:.1%} | {last['pass@2']:.1%} | {last['pass@4']:.1%} |" in md


def test_cli_greedy_default_eval_event_keys_are_unchanged(tmp_path):
    r = run_cli(TINY, tmp_path / "run")
    assert r.returncode == 0, r.stderr[-3000:]
    for e in eval_events(tmp_path / "run"):
        assert set(e) == {"step", "event", "accuracy", "score", "length", "n", "time_s"}, e
    assert "held-out accuracy (greedy)" in r.stdout + r.stderr


def test_cli_k_larger_than_n_is_one_line_naming_the_key(tmp_path):
    r = run_cli(TINY + ["eval.n=2", "eval.temperature=1", "eval.k=[4]"], tmp_path / "run")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("rltrain: config error: ") and "eval.k=[4]" in lines[0] and "eval.n=2" in lines[0]


def test_base_eval_cache_keys_on_the_sampling_settings(tiny, tmp_path, monkeypatch):
    """A cached greedy result is never served for a sampled evaluation, nor one seed's for another's."""
    monkeypatch.setenv("RLTRAIN_CACHE", str(tmp_path))
    model, tok, samples, prompt_ids = tiny
    ctx = SimpleNamespace(actor=SimpleNamespace(module=model, gathered=contextlib.nullcontext), tok=tok,
                          test=samples, test_ids=prompt_ids, reward=first_char_mod3, sampler=None)

    def base_eval(*over):
        cfg = cfg_with(*over)
        cfg.run_dir = str(tmp_path / "run")
        return cached_base_eval(ctx, cfg, Dist())

    greedy = base_eval()
    assert "cached" not in greedy and base_eval()["cached"] == 1
    sampled = base_eval(*SAMPLED)
    assert "cached" not in sampled and "pass@4" in sampled
    again = base_eval(*SAMPLED)
    assert again["cached"] == 1 and again["pass@4"] == sampled["pass@4"]
    assert "cached" not in base_eval(*SAMPLED, "eval.seed=1")
    assert "cached" not in base_eval(*SAMPLED, "eval.top_p=0.9")
