"""StepClock: which steps a loop runs under train.steps and train.time_budget_s."""
import json

from omegaconf import OmegaConf

from rltrain.engine.dist import Dist
from rltrain.loops.common import StepClock, end_step


def _cfg(run_dir, steps=10, budget=0.0, every=0, save_every=0):
    return OmegaConf.create({"run_dir": str(run_dir), "train": {"steps": steps, "time_budget_s": budget},
                             "eval": {"every": every}, "checkpoint": {"every": save_every, "save_final": True}})


def test_without_budget_runs_every_step_and_the_last_is_train_steps(tmp_path):
    clock = StepClock(_cfg(tmp_path, steps=4), Dist(), start=1)
    assert list(clock.steps()) == [1, 2, 3]
    assert [clock.finish(d, 1e6) for d in (2, 3, 4)] == [False, False, True]


def test_budget_ends_at_the_step_that_reaches_it(tmp_path):
    clock = StepClock(_cfg(tmp_path, budget=10.0), Dist(), start=0)
    assert [clock.finish(d, 3.0) for d in (1, 2, 3, 4)] == [False, False, False, True]  # 12 s ≥ 10 s
    assert clock.step == 4 and clock.spent == 12.0


def test_resume_counts_the_logged_step_time_and_ignores_later_rows(tmp_path):
    rows = [{"step": 1, "time/step": 4.0}, {"step": 2, "time/step": 4.0}, {"event": "eval", "step": 2, "x": 1},
            {"step": 3, "time/step": 100.0}]  # step 3 was logged after the step-2 checkpoint: not counted
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    clock = StepClock(_cfg(tmp_path, budget=10.0), Dist(), start=2)
    assert clock.spent == 8.0 and list(clock.steps()) == list(range(2, 10))
    assert clock.finish(3, 1.0) is False and clock.finish(4, 1.0) is True
    spent = StepClock(_cfg(tmp_path, budget=8.0), Dist(), start=2)
    assert list(spent.steps()) == []


def test_end_step_evaluates_logs_and_saves_on_schedule_and_at_the_budget_stop(tmp_path):
    cfg = _cfg(tmp_path, steps=10, budget=5.0, every=2, save_every=3)
    clock = StepClock(cfg, Dist(), start=0)
    saved, evals, logged = [], [], []

    class Log:
        def log(self, step, m):
            logged.append((step, dict(m)))

    def go(done):
        return end_step(cfg, None, Dist(), clock, done, {"time/step": 2.0}, logger=Log(), save=saved.append,
                        evaluate=lambda: evals.append(done) or {"accuracy": 0.5})

    assert [go(d) for d in (1, 2, 3)] == [False, False, True]  # 6 s ≥ 5 s after step 3
    assert evals == [2]                      # every 2; not at the last step (final_eval covers it)
    assert saved == [3]                      # every 3, and the final save at the stop (once)
    assert logged[1][1]["eval/accuracy"] == 0.5 and [s for s, _ in logged] == [1, 2, 3]
