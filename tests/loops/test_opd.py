"""On-policy distillation (algo=opd) through the real CLI on model=tiny: the teacher is a tiny
checkpoint trained by GRPO on the toy reward; the untrained student's per-token reverse KL to it
falls, and the student picks up the teacher's behaviour (the toy reward rises) without being
trained on that reward (reward_weight 0)."""
import json

from tests.cli import TINY, metrics, run_inprocess

BASE = TINY + ["reward.fn=tests.toy_rewards:contains_seven", "train.lr=1e-2", "eval.at_start=false"]
_run = run_inprocess


def test_student_reverse_kl_to_a_trained_teacher_falls(tmp_path):
    _run(BASE + ["train.steps=8"], tmp_path / "teacher")
    teacher_rows = metrics(tmp_path / "teacher")
    assert teacher_rows[-1]["reward/mean"] > 0.6  # the teacher learned to put a 7 in its answers
    _run(BASE + ["algo=opd", f"algo.teacher_path={tmp_path / 'teacher'}", "train.steps=8"], tmp_path / "student")
    rows = metrics(tmp_path / "student")
    kl = [r["opd/reverse_kl"] for r in rows]
    assert kl[0] > 0.5 and kl[-1] < 0.4 * kl[0], kl
    assert sum(r["reward/mean"] for r in rows[-3:]) / 3 > sum(r["reward/mean"] for r in rows[:3]) / 3 + 0.3
    saved = json.loads((tmp_path / "student" / "metrics.jsonl").read_text().splitlines()[0])
    assert "time/teacher" in saved


def test_missing_teacher_is_a_one_line_error_before_loading(tmp_path):
    from tests.test_cli_errors import assert_user_error, cli

    r = cli(BASE + ["algo=opd", f"algo.teacher_path={tmp_path / 'nope'}"], tmp_path / "run")
    assert_user_error(r, tmp_path / "run", "model", "algo.teacher_path=", "does not exist")
