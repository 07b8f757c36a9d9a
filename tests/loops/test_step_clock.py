"""StepClock: which steps a loop runs under train.steps and train.time_budget_s."""
import json

from omegaconf import OmegaConf

from rltrain.engine.dist import Dist
from rltrain.loops.lifecycle import StepClock, TrainState, _older_checkpoint, end_step


def _cfg(run_dir, steps=10, budget=0.0, every=0, save_every=0):
    return OmegaConf.create({"run_dir": str(run_dir), "train": {"steps": steps, "time_budget_s": budget},
                             "eval": {"every": every}, "checkpoint": {"every": save_every, "save_final": True}})


def test_without_budget_runs_every_step_and_the_last_is_train_steps(tmp_path):
    clock = StepClock(_cfg(tmp_path, steps=4), Dist(), TrainState(step=1))
    assert list(clock.steps()) == [1, 2, 3]
    assert [clock.finish(d, 1e6) for d in (2, 3, 4)] == [False, False, True]


def test_budget_ends_at_the_step_that_reaches_it(tmp_path):
    clock = StepClock(_cfg(tmp_path, budget=10.0), Dist(), TrainState())
    assert [clock.finish(d, 3.0) for d in (1, 2, 3, 4)] == [False, False, False, True]  # 12 s ≥ 10 s
    assert clock.step == 4 and clock.spent == 12.0


def test_resume_counts_the_saved_step_time(tmp_path):
    clock = StepClock(_cfg(tmp_path, budget=10.0), Dist(), TrainState(step=2, spent_s=8.0))
    assert clock.spent == 8.0 and list(clock.steps()) == list(range(2, 10))
    assert clock.finish(3, 1.0) is False and clock.finish(4, 1.0) is True
    spent = StepClock(_cfg(tmp_path, budget=8.0), Dist(), TrainState(step=2, spent_s=8.0))
    assert list(spent.steps()) == []


def test_a_checkpoint_from_before_train_state_reads_the_log(tmp_path):
    """Older trainer.pt files hold the step and the loop's extras; the step time and the evaluation
    before training come from metrics.jsonl, rows logged after the checkpoint ignored."""
    rows = [{"step": 0, "event": "eval", "accuracy": 0.1}, {"step": 1, "time/step": 4.0},
            {"step": 2, "time/step": 4.0}, {"event": "eval", "step": 2, "x": 1},
            {"step": 3, "time/step": 100.0}]  # step 3 was logged after the step-2 checkpoint: not counted
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    ts = _older_checkpoint(_cfg(tmp_path), {"step": 2, "kl_coef": 0.1, "actor": {}})
    assert ts == TrainState(step=2, spent_s=8.0, eval_before={"accuracy": 0.1}, loop={"kl_coef": 0.1})


def test_end_step_evaluates_logs_and_saves_on_schedule_and_at_the_budget_stop(tmp_path):
    cfg = _cfg(tmp_path, steps=10, budget=5.0, every=2, save_every=3)
    clock = StepClock(cfg, Dist(), TrainState())
    saved, evals, logged = [], [], []

    class Log:
        def log(self, step, m):
            logged.append((step, dict(m)))

        def samples(self, step, kind, rows):  # samples.jsonl rows: none here
            pass

    def go(done):
        return end_step(cfg, None, Dist(), clock, done, {"time/step": 2.0}, logger=Log(), save=lambda: saved.append(clock.step),
                        evaluate=lambda: evals.append(done) or {"accuracy": 0.5})

    assert [go(d) for d in (1, 2, 3)] == [False, False, True]  # 6 s ≥ 5 s after step 3
    assert evals == [2]                      # every 2; not at the last step (final_eval covers it)
    assert saved == [3]                      # every 3, and the final save at the stop (once)
    assert logged[1][1]["eval/accuracy"] == 0.5 and [s for s, _ in logged] == [1, 2, 3]


def test_train_state_round_trips_the_loops_objects_through_trainer_pt(tmp_path):
    """SPO-tree's replay buffer holds Edge objects (with tensors): a checkpoint must give them back
    as Edges, not as dicts."""
    import torch

    from rltrain.loops.spo import Edge

    edge = Edge("q", 3, [1, 2], [3], 0.5, torch.tensor([-0.1]))
    ts = TrainState(step=4, spent_s=9.5, eval_before={"accuracy": 0.25}, loop={"replay": [edge], "kl_coef": 0.2})
    torch.save({"train_state": ts.state_dict()}, tmp_path / "trainer.pt")
    back = TrainState(**torch.load(tmp_path / "trainer.pt", weights_only=False)["train_state"])
    assert (back.step, back.spent_s, back.eval_before, back.loop["kl_coef"]) == (4, 9.5, {"accuracy": 0.25}, 0.2)
    got = back.loop["replay"][0]
    assert isinstance(got, Edge) and (got.question, got.step, got.advantage) == ("q", 3, 0.5)
    assert torch.equal(got.old_logp, edge.old_logp)
