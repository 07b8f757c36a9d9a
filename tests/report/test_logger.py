"""The console line shows each loop's own headline metrics and phases, and nothing it lacks."""
import json

from rltrain.report.logger import RunLogger


def test_plain_line_shows_the_loops_own_metrics(tmp_path, capsys):
    log = RunLogger(tmp_path, total_steps=3, console=False)
    log.log(1, {"dpo/loss": 0.6931, "rewards/accuracy": 0.75, "rewards/margin": 0.01, "time/update": 2.0})
    log.log(2, {"reward/mean": 0.5, "critic/value_loss": 0.25, "critic/explained_var": 0.4,
                "time/rollout": 3.0, "time/mc_values": 4.0, "time/critic": 1.5})
    dpo, ppo = capsys.readouterr().out.strip().splitlines()
    assert "dpo_loss=0.6931" in dpo and "pref_acc=0.75" in dpo and "update=2.0s" in dpo
    assert "reward=" not in dpo and "v_loss" not in dpo
    assert "v_loss=0.25" in ppo and "expl_var=0.4" in ppo and "mc_values=4.0s" in ppo and "critic=1.5s" in ppo
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["dpo/loss"] == 0.6931


def test_live_table_has_a_column_per_logged_headline_metric(tmp_path):
    log = RunLogger(tmp_path, total_steps=3, console=False)
    table = log._table({"sft/nll": 1.25, "time/update": 1.0}, 1)
    assert [c.header for c in table.columns] == ["nll"]
    assert "update 1.0s" in table.caption


def test_eta_never_exceeds_the_time_budget_left(tmp_path):
    from omegaconf import OmegaConf

    from rltrain.engine.dist import Dist
    from rltrain.loops.lifecycle import StepClock, TrainState
    from rltrain.report.logger import RunLogger

    log = RunLogger(tmp_path, total_steps=100, console=False, start_step=1)
    cfg = OmegaConf.create({"run_dir": str(tmp_path), "train": {"steps": 100, "time_budget_s": 60.0}})
    clock = StepClock(cfg, Dist(), TrainState(step=1, spent_s=20.0), logger=log)  # an earlier process's step
    log.steps_t0 -= 30.0  # 30 s per step so far: 98 more steps would take ~49 min
    clock.finish(2, 30.0)
    log.log(2, {"time/step": 30.0})
    assert log._eta(2) == "00:10"  # 60 − 20 − 30 s of budget left
    log.close()


def test_phase_times_reach_the_step_line_and_the_summary_split(tmp_path, capsys):
    """Phases timed through rltrain.report.progress land in the step's metrics (exclusive: the
    nested phase's time is not counted in the outer one) and in the summary's time split."""
    import time

    from rltrain.report import progress

    log = RunLogger(tmp_path, total_steps=2, console=False)
    with progress.phase("setup"):  # before the initial eval event: not step 1's time
        time.sleep(0.05)
    log.event(0, "eval", {"accuracy": 0.1, "time_s": 2.0})
    with progress.phase("rollout", total=4) as p:
        time.sleep(0.2)
        with progress.phase("reward"):
            time.sleep(0.1)
        p.advance(4)
    log.log(1, {"time/step": 0.4, "time/update": 0.05})  # a time the loop logs itself is kept
    with progress.phase("rollout"):
        time.sleep(0.1)
    log.log(2, {"time/step": 0.2, "time/rollout": 0.15})  # the loop's own key wins
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"event"' not in x]
    assert "time/setup" not in rows[0]
    assert 0.19 <= rows[0]["time/rollout"] < 0.29, rows[0]  # 0.2 s without the nested 0.1 s
    assert 0.09 <= rows[0]["time/reward"] < 0.19
    assert rows[0]["time/update"] == 0.05 and rows[1]["time/rollout"] == 0.15
    out = capsys.readouterr().out
    assert "rollout=0.2s" in out and "reward=0.1s" in out
    split = log.time_split()
    cells = {split.columns[0]._cells[i]: split.columns[1]._cells[i] for i in range(len(split.rows))}
    assert float(cells["rollout"]) == round((rows[0]["time/rollout"] + 0.15) / 2, 1)
    assert cells["[bold]step[/]"] == "0.3"  # (0.4 + 0.2) / 2
    assert split.caption.startswith("evaluations 2.0 s")
    log.close()
    assert progress.active() is not log.progress


def test_a_long_phase_prints_periodic_plain_lines_off_a_terminal(capsys):
    from rltrain.report.progress import Progress

    prog = Progress(interval_s=0.05)
    import time

    with prog.phase("eval", total=3, unit="questions") as p:
        for _ in range(3):
            time.sleep(0.06)
            p.advance(1)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("[eval] 1/3 (33%) questions") and "eta" in lines[0]
    assert lines[-1].startswith("[eval] 3/3 (100%) questions") and lines[-1].endswith("done")
    assert sum("3/3" in line for line in lines) == 1, lines  # the end is printed once, as the "done" line
    quiet = Progress(quiet=True)
    with quiet.phase("eval", total=1) as p:
        time.sleep(0.01)
        p.advance(1)
    assert capsys.readouterr().out == "" and quiet.take_times()["time/eval"] >= 0.01


def test_live_display_shows_a_steps_bar_and_a_bar_per_open_phase(tmp_path):
    """On a terminal the steps bar and the open phase's bar (count and ETA) are drawn."""
    import io

    from rich.console import Console

    from rltrain.report import progress

    log = RunLogger(tmp_path, total_steps=4, console=False)
    log.bars = progress.rich_bars()  # what a terminal gets (stdout is not one under pytest)
    log._steps_task = log.bars.add_task("steps", total=4, completed=0, eta="")
    log.progress.bars = log.bars
    with progress.phase("eval", total=200) as p:
        p.advance(50)
        buf = io.StringIO()
        Console(file=buf, width=120, force_terminal=False).print(log._renderable())
    text = buf.getvalue()
    assert "steps" in text and "0/4" in text
    assert "eval" in text and "50/200" in text and "eta" in text
    log.close()


def test_phase_update_is_a_progress_callback(capsys):
    """Phase.update(done, total) sets the count (the rollout engine's on_position callback form)."""
    from rltrain.report.progress import Progress

    prog = Progress(interval_s=0.0)
    with prog.phase("mc_values", unit="positions") as p:
        p.update(16, 64)
        assert (p.done, p.total) == (16, 64)
        p.update(32)
        assert (p.done, p.total) == (32, 64)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("[mc_values] 16/64 (25%) positions") and "eta" in lines[0]
    assert lines[1].startswith("[mc_values] 32/64 (50%) positions")


def test_eta_uses_the_rate_after_the_first_item(monkeypatch):
    """A phase that pays 100 s before its first item (a prefill) and then does an item a second
    estimates the rest at one second per item, not at (100 + k) / k."""
    from rltrain.report import progress as prog_mod

    now = [0.0]
    monkeypatch.setattr(prog_mod.time, "perf_counter", lambda: now[0])
    p = prog_mod.Progress(quiet=True)
    with p.phase("mc_values", total=64, unit="positions") as ph:
        now[0] = 100.0
        ph.update(1)
        assert ph.eta() == 100.0 / 1 * 63  # one item seen: the only rate there is
        now[0] = 110.0
        ph.update(11)
        assert ph.eta() == 53.0  # 10 items in 10 s since the first: 53 left
