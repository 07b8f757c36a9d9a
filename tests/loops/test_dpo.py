"""DPO on model=tiny: tokenisation rules (EOS, truncation), the concatenated forward, the on-disk
reference cache, offline DPO through the real CLI (loss starts at ln 2, preference accuracy rises,
resume reproduces the run), and iterative DPO (pairs are best vs worst, the reference follows
``algo.reference``, a run resumed mid-round trains on the same pairs)."""
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from rltrain import launch
from rltrain.cli import compose_or_explain, to_run_config
from rltrain.config import register_configs
from rltrain.engine.dist import Dist
from rltrain.engine.model import load_model
from rltrain.loops import dpo
from rltrain.loops.pairs import Encoded, encode_examples, pair_logps, response_tokens, token_logps, truncate
from tests.cli import run_inprocess
from tests.toy_rewards import contains_seven

REPO = Path(__file__).resolve().parents[2]
LN2 = math.log(2)
register_configs()


def metrics(run_dir):
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "event" not in r], [r for r in rows if "event" in r]


def comparable(rows):
    return [{k: v for k, v in r.items() if not (k.startswith("time/") or k == "wall_time")} for r in rows]


def assert_same_rows(a, b):
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(comparable(a), comparable(b)):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-6), (ra["step"], k)


def resume_copy(run_dir, dst, drop_after: int):
    """A copy of a finished run whose checkpoints after step ``drop_after`` are gone, resumed."""
    shutil.copytree(run_dir, dst)
    for ckpt in (dst / "checkpoints").glob("step_*"):
        if int(ckpt.name.split("_")[1]) > drop_after:
            shutil.rmtree(ckpt)
    cfg = launch.load_config(dst)
    cfg.run_dir = str(dst)
    launch.launch(cfg)


# --------------------------------------------------------------------------- tokenisation


def test_truncation_cuts_the_prompt_first_then_the_responses():
    prompt, resp = list(range(10)), [[100] * 6, [200] * 3]
    p, r = truncate(prompt, resp, max_length=12, max_prompt_length=4, mode="keep_end")
    assert p == [6, 7, 8, 9] and r == [[100] * 6, [200] * 3]  # 4 + 6 ≤ 12: responses untouched
    p, r = truncate(prompt, resp, max_length=12, max_prompt_length=4, mode="keep_start")
    assert p == [0, 1, 2, 3]
    p, r = truncate(prompt, [[1] * 20, [2] * 3], max_length=12, max_prompt_length=4, mode="keep_end")
    assert p == [6, 7, 8, 9] and r == [[1] * 8, [2] * 3]  # responses cut to 12 - 4
    p, r = truncate([1, 2], [[3, 4]], max_length=12, max_prompt_length=4, mode="keep_end")
    assert (p, r) == ([1, 2], [[3, 4]])  # short enough: nothing changes


def test_responses_end_with_exactly_one_eos():
    _, tok = load_model("tiny")
    eos = tok.eos_token_id
    assert response_tokens(tok, "42", [eos]) == tok("42", add_special_tokens=False).input_ids + [eos]
    # A chat template's end-of-turn token already ends the response; what follows it is dropped.
    assert response_tokens(tok, "42</s>\n", [eos]) == tok("42", add_special_tokens=False).input_ids + [eos]
    enc = encode_examples(tok, [("What is 1 + 1?", "2", "3")], eos_ids=[eos], system_prompt=None,
                          use_chat_template=True, max_length=512, max_prompt_length=256, truncation="keep_end")[0]
    assert tok.decode(enc.prompt).endswith("assistant: ") and "What is 1 + 1?" in tok.decode(enc.prompt)
    assert [r[-1] for r in enc.responses] == [eos, eos]
    assert tok.decode(enc.responses[0][:-1]).startswith("2") and tok.decode(enc.responses[1][:-1]).startswith("3")


def test_concatenated_forward_equals_separate_forwards():
    model, _ = load_model("tiny", seed=1)
    batch = [Encoded([5, 6, 7], [[10, 11, 2], [12, 2]]), Encoded([8, 9], [[13, 2], [14, 15, 16, 2]])]
    chosen, rejected = pair_logps(model, batch, pad_id=0)
    for i, e in enumerate(batch):
        for r, got in zip(e.responses, (chosen[i], rejected[i])):
            lp, mask = token_logps(model, [e.prompt], [r], pad_id=0)
            assert got.item() == pytest.approx(lp.sum().item(), abs=1e-4)


def test_reference_cache_is_computed_once_and_keyed_by_the_lengths(tmp_path, monkeypatch):
    cfg = to_run_config(compose_or_explain(["algo=dpo", "model=tiny", "data=synthetic_prefs",
                                            f"algo.ref_cache_dir={tmp_path}"]))
    model, _ = load_model("tiny")
    pairs = [Encoded([5, 6], [[7, 2], [8, 9, 2]]), Encoded([10], [[11, 2], [12, 2]]), Encoded([13], [[14, 2], [2]])]
    table = dpo.cached_reference_logps(cfg, Dist(), lambda: model, pairs, [0, 2], 0, "train")
    assert math.isnan(table[1, 0]) and not table[[0, 2]].isnan().any()
    assert len(list((tmp_path / "ref_logps").glob("train-*.pt"))) == 1

    def no_forward(*args, **kwargs):
        raise AssertionError("cached reference log-probs were recomputed")

    monkeypatch.setattr(dpo, "batched_pair_logps", no_forward)
    torch.testing.assert_close(dpo.cached_reference_logps(cfg, Dist(), lambda: model, pairs, [0, 2], 0, "train"),
                               table, equal_nan=True)
    cfg.algo.max_length = 64  # other truncation → another cache entry → computed again
    with pytest.raises(AssertionError, match="recomputed"):
        dpo.cached_reference_logps(cfg, Dist(), lambda: model, pairs, [0, 2], 0, "train")


def test_reference_cache_key_changes_when_the_weights_at_the_same_path_are_rewritten(tmp_path):
    model, tok = load_model("tiny", seed=0)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    cfg = to_run_config(compose_or_explain(["algo=dpo", "model=tiny", f"model.path={tmp_path / 'm'}",
                                            "data=synthetic_prefs"]))
    before = dpo.cache_key(cfg, "train")
    assert dpo.cache_key(cfg, "train") == before  # stable while nothing changes
    load_model("tiny", seed=1)[0].save_pretrained(tmp_path / "m")  # other weights, same path
    assert dpo.cache_key(cfg, "train") != before
    assert dpo.weight_files_stamp("HuggingFaceTB/SmolLM2-135M-Instruct") == []  # a hub id: no local files


# --------------------------------------------------------------------------- offline DPO, real CLI


OFFLINE = ["algo=dpo", "data=synthetic_prefs", "model=tiny", "data.n_train=16", "data.n_test=16", "eval.size=16",
           "eval.max_new_tokens=4", "train.steps=8", "train.prompts_per_step=16", "train.micro_batch_size=8",
           "train.lr=3e-3", "algo.beta=0.5", "checkpoint.every=4", "checkpoint.keep=3",
           "launch.threads_per_rank=1", "log.console=false"]


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("dpo") / "run"
    run_inprocess(OFFLINE, run_dir)
    return run_dir


def test_dpo_loss_starts_at_ln2_and_preference_accuracy_rises(offline_run):
    rows, events = metrics(offline_run)
    assert [r["step"] for r in rows] == list(range(1, 9))
    # Policy = reference at the first step: every log-ratio is 0 and the loss is ln 2.
    assert rows[0]["dpo/loss"] == pytest.approx(LN2, abs=1e-4)
    assert abs(rows[0]["rewards/margin"]) < 1e-4
    assert sum(r["rewards/accuracy"] for r in rows[-3:]) / 3 >= 0.9
    assert rows[-1]["dpo/loss"] < 0.3 and rows[-1]["rewards/margin"] > 1.0
    assert rows[-1]["rewards/chosen"] > rows[-1]["rewards/rejected"]
    before, after = events[0], events[-1]
    assert before["pref_accuracy"] == 0.0 and after["pref_n"] == 16 and "accuracy" in after  # greedy eval ran
    assert len(list((offline_run / "ref_logps").glob("*.pt"))) == 2  # train and test reference log-probs


def test_offline_dpo_resumed_from_a_checkpoint_reproduces_the_run(offline_run, tmp_path):
    resume_copy(offline_run, tmp_path / "resumed", drop_after=4)
    a, _ = metrics(offline_run)
    b, events = metrics(tmp_path / "resumed")
    assert_same_rows(a, b)
    assert [e["step"] for e in events] == [0, 8]


# --------------------------------------------------------------------------- iterative DPO


def iterative_cfg(run_dir, *extra):
    cfg = to_run_config(compose_or_explain([
        "algo=dpo", "algo.iterative=true", "algo.rounds=2", "model=tiny", "data=arith", "data.n_train=32",
        "data.n_test=4", "eval.size=4", "eval.max_new_tokens=4", "reward=python",
        "reward.fn=tests.toy_rewards:contains_seven", "rollout.max_new_tokens=16", "train.steps=4",
        "train.prompts_per_step=4", "train.samples_per_prompt=8", "train.micro_batch_size=8", "train.lr=3e-3",
        "algo.beta=0.5", "checkpoint.every=1", "checkpoint.keep=4", "launch.threads_per_rank=1",
        "log.console=false", *extra]))
    cfg.run_dir = str(run_dir)
    return cfg


@pytest.fixture(scope="module")
def iterative_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("idpo") / "run"
    launch.launch(iterative_cfg(run_dir, "algo.reference=previous_iterate"))
    return run_dir


def test_iterative_dpo_pairs_best_against_worst_and_resets_the_reference_each_round(iterative_run):
    rows, _ = metrics(iterative_run)
    assert [r["round"] for r in rows] == [0, 0, 1, 1]
    _, tok = load_model("tiny")
    for r in range(2):
        saved = torch.load(iterative_run / "iterative" / f"round_{r:03d}.rank0.pt", weights_only=False)
        assert saved["pairs"], "no pairs sampled"
        for _prompt, (chosen, rejected) in saved["pairs"]:
            c, j = tok.decode(chosen, skip_special_tokens=True), tok.decode(rejected, skip_special_tokens=True)
            assert contains_seven(None, [c]) == [1.0] and contains_seven(None, [j]) == [0.0]  # ties skipped
        assert saved["metrics"]["round/pairs"] == len(saved["pairs"])
    # previous_iterate: the reference is the policy at the start of the round → ln 2 at each round start.
    for i in (0, 2):
        assert rows[i]["dpo/pairs"] > 0 and rows[i]["dpo/loss"] == pytest.approx(LN2, abs=1e-4)
        assert "reward/mean" in rows[i] and "round/tied_frac" in rows[i]
    assert rows[1]["dpo/loss"] != pytest.approx(LN2, abs=1e-3)  # the policy moved within the round


def test_iterative_dpo_initial_reference_stays_the_starting_policy(tmp_path):
    cfg = iterative_cfg(tmp_path / "run", "train.steps=2", "algo.rounds=2")  # one step per round
    launch.launch(cfg)
    rows, _ = metrics(tmp_path / "run")
    assert rows[0]["dpo/loss"] == pytest.approx(LN2, abs=1e-4)
    assert rows[1]["rewards/margin"] != pytest.approx(0.0, abs=1e-3)  # round 2 is measured against π_0


def test_iterative_dpo_resumed_mid_round_trains_on_the_same_pairs(iterative_run, tmp_path):
    resume_copy(iterative_run, tmp_path / "resumed", drop_after=3)  # step 4 is the 2nd step of round 1
    a, _ = metrics(iterative_run)
    b, _ = metrics(tmp_path / "resumed")
    assert_same_rows(a, b)
