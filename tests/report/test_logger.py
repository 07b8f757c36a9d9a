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
    from rltrain.loops.common import StepClock
    from rltrain.report.logger import RunLogger

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "time/step": 20.0}\n')  # an earlier process's step
    log = RunLogger(tmp_path, total_steps=100, console=False, start_step=1)
    cfg = OmegaConf.create({"run_dir": str(tmp_path), "train": {"steps": 100, "time_budget_s": 60.0}})
    clock = StepClock(cfg, Dist(), start=1, logger=log)
    log.t0 -= 30.0  # 30 s per step so far: 98 more steps would take ~49 min
    clock.finish(2, 30.0)
    log.log(2, {"time/step": 30.0})
    assert log._eta(2) == "00:10"  # 60 − 20 − 30 s of budget left
    log.close()
