"""GRPO end to end on model=tiny: it learns a toy reward with every policy loss, estimator and
correction of the menu (in process, ``tests.cli.run_inprocess``), and through the real command a
run killed with SIGKILL and resumed ends with the same metrics as an uninterrupted run."""
import re
import signal
import time

import pytest

from tests.cli import TINY, events, metrics, run_inprocess, start_cli


def test_grpo_learns_toy_reward(tmp_path, capsys):
    from rltrain.engine.model import fast_bf16
    from rltrain.launch import load_config

    run_inprocess(TINY + ["train.steps=12", "train.lr=1e-2", "reward.fn=tests.toy_rewards:contains_seven",
                          "model.dtype=auto"], tmp_path)
    # auto is this machine's choice: fp32, or bf16 on a CPU whose probe finds bf16 matmuls faster
    # (docs/results.md); config.yaml's first line records it with the probe's numbers, and the config loads back
    head = (tmp_path / "config.yaml").read_text().splitlines()[0]
    m = re.fullmatch(r"# model\.dtype=auto -> (fp32|bf16): auto: CPU matmul probe bf16 [\d.]+ ms vs fp32 [\d.]+ ms "
                     r"\(ratio ([\d.]+), bf16 needs <= 0\.8; .*", head)
    if not fast_bf16():
        assert head == "# model.dtype=auto -> fp32: auto: CPU without avx512_bf16/AMX (bf16 would be emulated)", head
        chosen = "fp32"
    else:
        assert m, head
        chosen = m.group(1)
        assert (chosen == "bf16") == (float(m.group(2)) <= 0.8), head
    assert load_config(tmp_path).model.dtype == chosen
    out = capsys.readouterr().out
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 13))
    first = sum(r["reward/mean"] for r in rows[:3]) / 3
    last = sum(r["reward/mean"] for r in rows[-3:]) / 3
    # A random tiny model puts a '7' in ~8% of its 8-character responses; GRPO must push it up.
    assert last > 0.5 and last > 3 * first, (first, last)
    # Rollout vs trainer log-probs, logged every step: in fp32 they agree closely; a bf16 body rounds
    # the KV-cached decode and the full forward differently (fp32 head: ~1e-3 per token on tiny).
    tol = (1e-3, 1.01) if chosen == "fp32" else (2e-2, 1.2)
    assert all(r["mismatch/abs_dlogp_mean"] < tol[0] and r["mismatch/ratio_max"] < tol[1] for r in rows)
    assert any(r["mismatch/tokens"] > 0 for r in rows)
    assert "rollout↔trainer mean |Δlogp|" in out
    ckpt = tmp_path / "checkpoints" / "step_000012"
    assert (ckpt / "COMPLETE").exists() and (ckpt / "policy" / "config.json").exists()


DETERMINISTIC = ["time/", "perf/", "wall_time"]


def _comparable(rows):
    return [{k: v for k, v in r.items() if not any(k.startswith(d) for d in DETERMINISTIC)} for r in rows]


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    args = TINY + ["train.steps=6", "train.lr=1e-3", "checkpoint.every=2", "train.minibatches_per_step=2",
                   "eval.at_start=false"]
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    p = start_cli(args, ref_dir)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out

    p = start_cli(args, cut_dir)
    deadline = time.time() + 600
    while time.time() < deadline:  # kill right after step 3 is logged (checkpoint 2 exists)
        if (cut_dir / "metrics.jsonl").exists() and any(r["step"] >= 3 for r in metrics(cut_dir)):
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (cut_dir / "checkpoints" / "step_000006").exists()
    p = start_cli(args + ["resume=auto"], cut_dir)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    a, b = _comparable(metrics(ref_dir)), _comparable(metrics(cut_dir))
    assert [r["step"] for r in b] == list(range(1, 7))
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-7), (ra["step"], k)


@pytest.mark.parametrize("extra,check", [
    (["token_selection=high_entropy"], lambda r: abs(r["actor/token_select_frac"] - 0.2) < 0.02),
    (["policy_loss=clip_cov", "policy_loss.select_ratio=0.05", "train.minibatches_per_step=2"],
     lambda r: 0 <= r["actor/selected_frac"] <= 0.05 + 1e-6),  # at most ⌊0.05·N⌋ tokens (≥ 1 of a minibatch)
    (["policy_loss=kl_cov", "policy_loss.select_ratio=0.05"], lambda r: 0 < r["actor/selected_frac"] < 0.2),
])
def test_token_selection_and_policy_losses_run_in_grpo(tmp_path, extra, check):
    """Each orthogonal group works inside the GRPO loop: high_entropy keeps ⌈0.2·N⌉ of the batch's
    tokens; the covariance losses select their fraction of tokens."""
    run_inprocess(TINY + ["train.steps=2", "eval.at_start=false"] + extra, tmp_path)
    rows = metrics(tmp_path)
    assert len(rows) == 2 and all(check(r) for r in rows), rows


def test_time_budget_ends_training_early_and_resume_keeps_it(tmp_path):
    """A budget smaller than one step: the run stops after step 1 of 6, evaluates and saves the
    final checkpoint there; resuming it runs no further step."""
    args = TINY + ["train.steps=6", "train.time_budget_s=0.001", "eval.at_start=false"]
    run_inprocess(args, tmp_path)
    assert [r["step"] for r in metrics(tmp_path)] == [1]
    assert [(e["event"], e["step"]) for e in events(tmp_path)] == [("eval", 1)]
    assert (tmp_path / "checkpoints" / "step_000001" / "COMPLETE").exists()
    run_inprocess(args + ["resume=auto"], tmp_path)
    assert [r["step"] for r in metrics(tmp_path)] == [1]


@pytest.mark.parametrize("loss", ["policy_loss=gspo", "policy_loss=cispo", "policy_loss=sapo", "policy_loss=gmpo",
                                  "algo.adv_estimator=rloo",
                                  "rollout.correction=tis", "rollout.correction=icepop",
                                  "algo.adv_estimator=reinforce_pp algo.kl_coef=0.01",
                                  "algo.adv_estimator=reinforce_pp_baseline"])
def test_menu_policy_losses_learn_toy_reward(tmp_path, loss):
    """The 2026 policy losses inside the GRPO loop (2 minibatches: the second is off-policy, so the
    sequence ratio / weight cap / gate act) push the toy reward up like the clip."""
    run_inprocess(TINY + ["train.steps=12", "train.lr=1e-2", "reward.fn=tests.toy_rewards:contains_seven",
                          "train.minibatches_per_step=2", "eval.at_start=false", *loss.split()], tmp_path)
    rows = metrics(tmp_path)
    first = sum(r["reward/mean"] for r in rows[:3]) / 3
    last = sum(r["reward/mean"] for r in rows[-3:]) / 3
    assert last > 0.7 and last > first + 0.3, (first, last)  # the random model: ~8% of responses
    assert any(r["actor/ratio_max"] > 1.0 for r in rows)  # the second minibatch saw π_θ ≠ π_old
    if "correction" in loss:  # fp32 sampler and trainer agree: IcePop keeps (and TIS weighs) ~every token
        assert all(r["actor/correction_kept_frac"] > 0.99 for r in rows if "actor/correction_kept_frac" in r)
        assert any("actor/correction_kept_frac" in r for r in rows)


def test_gdpo_normalises_each_component_and_learns(tmp_path):
    """reward=combined with normalize=then_sum: the score the advantages see is a sum of
    group-normalised components, so its batch mean is 0 (the raw weighted sum is ≥ 0.3 here), while
    each component's raw mean is logged and the main one is pushed up."""
    comps = ('[{name: python, kwargs: {fn: "tests.toy_rewards:contains_seven"}, label: seven}, '
             '{name: python, weight: 0.5, kwargs: {fn: "tests.toy_rewards:mean_char_code"}, label: chars}]')
    args = [a for a in TINY if not a.startswith("reward")] + [
        "reward=combined", f"reward.components={comps}", "reward.normalize=then_sum", "train.steps=12",
        "train.lr=1e-2", "eval.at_start=false"]
    run_inprocess(args, tmp_path)
    rows = metrics(tmp_path)
    assert all(abs(r["reward/mean"]) < 1e-5 for r in rows)
    assert all(0 < r["reward/chars"] < 1 for r in rows)
    first = sum(r["reward/seven"] for r in rows[:3]) / 3
    last = sum(r["reward/seven"] for r in rows[-3:]) / 3
    assert last > 0.6 and last > first + 0.3, (first, last)
