"""Reading run directories: the comparison table's values, labels from the configs, tolerance of
missing keys and cut lines, and the PNG / markdown files of ``rltrain-report``."""
import math

import numpy as np
import pytest

from rltrain.report import cli
from rltrain.report.runs import expand_run_dirs, load_runs, markdown_table, summarize

PNG = b"\x89PNG\r\n\x1a\n"


def clip_run_rows(n=10):
    """A run that follows the entropy law exactly: acc = −0.2·e^H + 0.9 with falling entropy."""
    rows = []
    for s in range(1, n + 1):
        H = 1.2 - 0.1 * s
        rows.append({"step": s, "wall_time": 2.0 * s, "reward/mean": 0.05 * s,
                     "reward/accuracy": -0.2 * math.exp(H) + 0.9, "actor/kl": 0.01 * s, "actor/entropy": H,
                     "actor/entropy_lt_0.01": 0.5, "actor/entropy_p80": 1.0, "actor/clipfrac": 0.02,
                     "response/length_mean": 30.0 - s, "perf/tokens_per_s": 100.0 * s, "time/step": 1.0 + 0.1 * s,
                     "time/rollout": 0.5, "time/update": 0.4})
    rows[4]["eval/accuracy"] = 0.3  # an eval between start and end is logged inline
    return rows


@pytest.fixture
def two_runs(tmp_path, make_run, config):
    a = make_run(tmp_path / "sweep" / "0", config(), clip_run_rows(),
                 [{"step": 0, "accuracy": 0.1, "score": 0.1, "length": 40.0},
                  {"step": 10, "accuracy": 0.5, "score": 0.5, "length": 20.0}],
                 overrides=["policy_loss=clip", "train.steps=10"], trailing='{"step": 11, "wall_ti')
    # A sparser run: no time/step (step time from wall_time spacing), no clipfrac, no tokens/s, no evals.
    rows = [{"step": s, "wall_time": 3.0 * s, "reward/mean": 0.1, "actor/entropy": 0.8} for s in (1, 2, 3)]
    b = make_run(tmp_path / "sweep" / "1", config(name="kl_cov", select_ratio=2e-4), rows, [])
    return a, b


def test_table_values_and_labels(two_runs):
    runs = load_runs([str(p) for p in two_runs])
    assert [r.label for r in runs] == ["grpo policy_loss=clip", "grpo policy_loss=kl_cov"]
    a, b = runs
    assert [r["step"] for r in a.steps] == list(range(1, 11))  # the cut last line is skipped
    assert [e["step"] for e in a.evals] == [0, 5, 10] and a.evals[1]["accuracy"] == 0.3
    sa, sb = summarize(a), summarize(b)
    assert (sa.steps, sa.acc_before, sa.acc_after) == (10, 0.1, 0.5)
    assert sa.step_time == pytest.approx(np.mean([1.0 + 0.1 * s for s in range(1, 11)]))
    assert sa.tokens_per_s == pytest.approx(550.0)
    assert sa.final_entropy == pytest.approx(0.2) and sa.final_reward == pytest.approx(0.5) and sa.wall_time == 20.0
    assert (sb.acc_before, sb.acc_after, sb.tokens_per_s) == (None, None, None)
    assert sb.step_time == pytest.approx(3.0) and sb.final_entropy == 0.8
    md = markdown_table([sa, sb])
    assert "| grpo policy_loss=clip | 10 | 10.0% | 50.0% | 1.55 | 550 | 0.200 | 0.500 | 20 |" in md
    assert "| grpo policy_loss=kl_cov | 3 | - | - | 3.00 | - | 0.800 | 0.100 | 9 |" in md


def test_sweep_folder_expands_to_its_runs(two_runs, tmp_path):
    assert expand_run_dirs([tmp_path / "sweep"]) == list(two_runs)
    with pytest.raises(FileNotFoundError):
        expand_run_dirs([tmp_path / "nope"])


def test_single_run_label_from_its_group_overrides(two_runs):
    (run,) = load_runs([two_runs[0]])
    assert run.label == "grpo policy_loss=clip"


def test_cli_writes_plots_table_and_entropy_law(two_runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert cli.main([str(p) for p in two_runs] + ["--out", str(out), "--entropy-law", "--fit-fraction", "0.5"]) == 0
    for name in ("metrics_vs_step.png", "metrics_vs_wall_time.png", "entropy_law_0_grpo_policy_loss_clip_train.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
    md = (out / "comparison.md").read_text()
    assert "| grpo policy_loss=clip | 10 | 10.0% | 50.0% |" in md
    # The synthetic run follows acc = −0.2·e^H + 0.9 exactly: a, b, R² = 1, ceiling 0.7, zero forecast error.
    line = next(l for l in md.splitlines() if l.startswith("| grpo policy_loss=clip | train reward/accuracy"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2:8] == ["10", "0.2", "0.9", "1.000", "0.7", "5/5"] and float(cells[8]) < 1e-9, cells
    # The other run has no accuracy (reward/mean stands in) and a flat entropy: no fit, and the reason.
    assert "| grpo policy_loss=kl_cov | train reward/mean | 3 | - |" in md and "all entropies are equal" in md
    assert "| grpo policy_loss=kl_cov | eval accuracy (greedy, held-out) | 0 |" in md and "set eval.every" in md
    printed = capsys.readouterr().out
    assert "grpo policy_loss=clip" in printed and "entropy law" in printed


def test_cli_errors_name_the_problem(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        cli.main([str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="fit-fraction"):
        cli.main([str(tmp_path), "--fit-fraction", "1.5"])


def test_labels_show_a_field_that_differs_within_one_option_and_dir_labels(tmp_path, make_run, config):
    """Three runs: clip with clip_high 0.2 and 0.28, and kl_cov. The group's option differs, so it
    names the group; clip_high differs between the two clip runs, so it is shown for them."""
    rows = [{"step": 1, "wall_time": 1.0, "reward/mean": 0.1}]
    a = make_run(tmp_path / "a", config(name="clip", clip_high=0.2), rows, [])
    b = make_run(tmp_path / "b", config(name="clip", clip_high=0.28), rows, [])
    c = make_run(tmp_path / "c", config(name="kl_cov", select_ratio=2e-4), rows, [])
    assert [r.label for r in load_runs([a, b, c])] == [
        "grpo policy_loss=clip, policy_loss.clip_high=0.2", "grpo policy_loss=clip, policy_loss.clip_high=0.28",
        "grpo policy_loss=kl_cov"]
    assert [r.label for r in load_runs([a, b, c], dir_labels=True)] == ["a", "b", "c"]
