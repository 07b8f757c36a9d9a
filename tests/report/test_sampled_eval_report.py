"""The sampled-evaluation table of rltrain-report: which evals it shows, column order, missing cells."""
from rltrain.report import cli
from rltrain.report.runs import load_runs, sampled_eval_keys, sampled_eval_table


def test_keys_are_ordered_mean_pass_maj_then_by_k():
    ev = {"accuracy": 0.1, "maj@4": 0.2, "pass@16": 0.3, "pass@2": 0.4, "mean@16": 0.1, "maj@1": 0.0, "n": 8,
          "pass@best": 1.0}
    assert sampled_eval_keys(ev) == ["mean@16", "pass@2", "pass@16", "maj@1", "maj@4"]
    assert sampled_eval_keys({"accuracy": 0.5, "score": 0.5, "length": 3.0, "n": 8, "time_s": 1.0}) == []


def test_table_shows_first_and_last_sampled_eval_of_each_run(tmp_path, make_run, config):
    steps = lambda: [{"step": s, "wall_time": float(s), "reward/mean": 0.1} for s in range(1, 11)]  # noqa: E731
    rows = steps()
    rows[4]["eval/mean@4"] = 0.9  # an inline eval between start and end: neither first nor last
    sampled = lambda m, p1, p4, j4: {"accuracy": m, "mean@4": m, "pass@1": p1, "pass@4": p4, "maj@4": j4}  # noqa: E731
    make_run(tmp_path / "a", config(), rows, [{"step": 0, **sampled(0.25, 0.25, 0.5, 0.125)},
                                              {"step": 10, **sampled(0.5, 0.5, 0.75, 0.625)}])
    make_run(tmp_path / "b", config(name="kl_cov"), steps(),
             [{"step": 0, "accuracy": 0.1}, {"step": 10, "accuracy": 0.2}])  # greedy only: no row
    make_run(tmp_path / "c", config(name="clip_cov"), steps(),
             [{"step": 10, "accuracy": 0.3, "mean@8": 0.3, "pass@8": 0.5}])  # one sampled eval: one row
    runs = load_runs([tmp_path / "a", tmp_path / "b", tmp_path / "c"], dir_labels=True)
    head, table = sampled_eval_table(runs)
    assert head == ["run", "step", "mean@4", "mean@8", "pass@1", "pass@4", "pass@8", "maj@4"]
    assert table == [["a", "0", "25.0%", "-", "25.0%", "50.0%", "-", "12.5%"],
                     ["a", "10", "50.0%", "-", "50.0%", "75.0%", "-", "62.5%"],
                     ["c", "10", "-", "30.0%", "-", "-", "50.0%", "-"]]

    assert cli.main([str(tmp_path / "a"), str(tmp_path / "b"), "--no-plots", "--dir-labels",
                     "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "comparison.md").read_text()
    assert "## Sampled evaluation" in md and "| a | 10 | 50.0% | 50.0% | 75.0% | 62.5% |" in md


def test_no_section_without_sampled_evals(tmp_path, make_run, config):
    rows = [{"step": 1, "wall_time": 1.0, "reward/mean": 0.1}]
    make_run(tmp_path / "g", config(), rows, [{"step": 0, "accuracy": 0.1}, {"step": 1, "accuracy": 0.2}])
    assert sampled_eval_table(load_runs([tmp_path / "g"])) == (["run", "step"], [])
    assert cli.main([str(tmp_path / "g"), "--no-plots", "--out", str(tmp_path / "rep")]) == 0
    assert "Sampled evaluation" not in (tmp_path / "rep" / "comparison.md").read_text()
