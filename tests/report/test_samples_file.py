"""samples.jsonl (``rltrain.report.samples``): the rows built from a step's rollouts (advantage = its
mean over the response's tokens, by hand), the size cap and the text cut, truncation on resume, and
``rltrain-report RUN --samples``: a step's best, worst and a random rollout, evaluation verdicts,
the model's control characters escaped before they reach the terminal."""
import json

import pytest
import torch

from rltrain.loops.episodes import Scored
from rltrain.report import cli as report_cli
from rltrain.report import samples as S
from rltrain.types import RewardOutput, Sample


def scored() -> Scored:
    """Two prompts × two responses; lengths 3, 1, 2, 0 tokens (T = 3)."""
    q = [Sample(id="train-7", question="What is 3 + 4?", answer="7"),
         Sample(id="train-2", question="1 + 1?", answer="2")]
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.float32)
    return Scored(prompt_ids=[[1], [1], [2], [2]], response_ids=torch.zeros(4, 3, dtype=torch.long), mask=mask,
                  logprobs=torch.zeros(4, 3), lengths=mask.sum(1).long(),
                  finished=torch.tensor([True, False, True, False]),
                  samples=[q[0], q[0], q[1], q[1]], completions=["\\boxed{7}", "8", "2\x1b[31m", ""],
                  scores=torch.tensor([1.0, 0.0, 1.0, 0.0]),
                  reward=RewardOutput([1.0, 0.0, 1.0, 0.0], {"correct": [True, False, True, False],
                                                             "extracted": ["7", "8", "2", None],
                                                             "reward/format": [torch.tensor(0.5), 0.0, 1.0, 0.0]}))


def test_rollout_rows_carry_each_rollouts_reward_info_and_mean_token_advantage():
    # [4, 3]; the 9s and the 7 sit on padding
    adv = torch.tensor([[1.0, 2.0, 3.0], [-4.0, 9.0, 9.0], [0.5, 1.5, 7.0], [5.0, 5.0, 5.0]])
    rows = S.rollout_rows(scored(), adv, limit=3)
    assert len(rows) == 3  # limit
    assert [r["advantage"] for r in rows] == [2.0, -4.0, 1.0]  # (1+2+3)/3, −4/1, (0.5+1.5)/2
    assert [r["reward"] for r in rows] == [1.0, 0.0, 1.0] and [r["length"] for r in rows] == [3, 1, 2]
    assert [r["finished"] for r in rows] == [True, False, True]
    assert rows[0]["prompt"] == "What is 3 + 4?" and rows[0]["answer"] == "7" and rows[0]["id"] == "train-7"
    assert rows[0]["info"] == {"correct": True, "extracted": "7", "reward/format": 0.5}  # the tensor as a number
    assert rows[2]["completion"] == "2\x1b[31m"  # stored as the model wrote it (escaped by JSON on disk)
    assert "advantage" not in S.rollout_rows(scored(), None, limit=1)[0]
    assert S.rollout_rows(scored(), adv, limit=0) == []
    assert S.rollout_rows(scored(), None, limit=0) == []
    assert len(S.rollout_rows(scored(), None, limit=99)) == 4


def test_eval_rows_carry_the_verdict_and_which_sample():
    rows = S.eval_rows(scored(), [True, False, True, False], 2, limit=3)
    assert [(r["correct"], r["sample"], r["extracted"]) for r in rows] == [(True, 0, "7"), (False, 1, "8"),
                                                                           (True, 0, "2")]
    assert rows[1]["kind"] == "eval" and rows[1]["reward"] == 0.0 and rows[1]["answer"] == "7"


def test_samples_file_stops_at_its_cap_with_one_warning_and_cuts_long_text(tmp_path, caplog):
    long = "x" * (S.MAX_TEXT_CHARS + 5)
    tiny = S.SamplesFile(tmp_path / "tiny.jsonl", max_mb=2000 / 2**20)  # a 2,000-byte cap
    assert tiny.write(1, [{"kind": "train", "completion": long}]) == []  # cut to 8,000 characters: still too big
    assert not (tmp_path / "tiny.jsonl").exists()
    f = S.SamplesFile(tmp_path / "samples.jsonl", max_mb=20_000 / 2**20)
    row, = f.write(1, [{"kind": "train", "completion": long, "info": {"error": long}}])
    assert row["completion"] == "x" * S.MAX_TEXT_CHARS + "…[+5 chars]" and row["info"]["error"] == row["completion"]
    small = [{"kind": "train", "completion": "y" * 1000}] * 30
    n = sum(len(f.write(step, small)) for step in range(2, 6))
    f.close()
    size = (tmp_path / "samples.jsonl").stat().st_size
    line = len(json.dumps({"step": 2, **small[0]})) + 1
    assert size <= 20_000 and n == (20_000 - len(json.dumps(row)) - 1) // line  # every row that fits, no more
    warnings = [r.getMessage() for r in caplog.records if "samples.jsonl reached log.samples_max_mb" in r.getMessage()]
    assert len(warnings) == 2 and "at step 2" in warnings[1]  # once per file, at the step it filled
    text = (tmp_path / "samples.jsonl").read_text()
    assert text.isascii() and "\\u2026" in text  # every non-ASCII character (and control character) escaped


def test_samples_file_is_cut_back_to_the_checkpoint_on_resume(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps({"step": s, "kind": "train"}) + "\n" for s in (0, 1, 2, 3)) + '{"step": 4, "ki')
    f = S.SamplesFile(path, max_mb=1, start_step=2)
    f.write(3, [{"kind": "train", "completion": "again"}])
    f.close()
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [0, 1, 2, 3]


def test_printable_escapes_what_a_terminal_would_act_on():
    hostile = "ok\x1b[2J\x1b]0;title\x07\rback\x08\u202eevil\u200b\u2028\x9b31m\nnext\tline"
    out = S.printable(hostile)
    assert out == "ok\\x1b[2J\\x1b]0;title\\x07\\rback\\x08\\u202eevil\\u200b\\u2028\\x9b31m\nnext\tline"
    assert S.printable("2 + 2 = 4, é, 数学, [bold]x[/]") == "2 + 2 = 4, é, 数学, [bold]x[/]"


def _run_dir(tmp_path):
    rows = [{"step": 0, "kind": "eval", "id": "test-0", "prompt": "2+2?", "answer": "4", "completion": "4",
             "reward": 1.0, "correct": True, "length": 1, "finished": True, "sample": 0},
            {"step": 0, "kind": "eval", "id": "test-1", "prompt": "3+3?", "answer": "6", "completion": "five",
             "reward": 0.0, "correct": False, "length": 1, "finished": True, "sample": 0}]
    for step in (1, 2):
        for i, r in enumerate([0.0, 1.0, 0.25, 0.5]):
            rows.append({"step": step, "kind": "train", "id": f"train-{step}", "prompt": "What is 3 + 4?",
                         "answer": "7",
                         "completion": f"step {step} reward {r} [bold]markup[/bold]\x1b[2J\rgone",
                         "reward": r, "advantage": r - 0.4375, "length": 9, "finished": i != 0,
                         "info": {"correct": r == 1.0}})
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_report_samples_shows_a_steps_best_worst_and_random(tmp_path, capsys):
    run = _run_dir(tmp_path)
    assert report_cli.main([str(run), "--samples", "--step", "1"]) == 0
    out = capsys.readouterr().out
    assert "train samples of step 1 (4 rows, reward mean 0.4375, 25.0% correct" in out
    best, worst, rand = out.split("── ")[1:]
    assert best.startswith("best: reward 1, correct, advantage +0.562") and "step 1 reward 1.0" in best
    assert worst.startswith("worst: reward 0, wrong, advantage -0.438, 9 tokens, cut at the limit")
    assert rand.startswith("random: ") and ("reward 0.25" in rand or "reward 0.5" in rand)
    assert "\x1b" not in out and "\r" not in out and "\\x1b[2J\\rgone" in out
    assert "[bold]markup[/bold]" in out  # the model's text is not rich markup
    assert report_cli.main([str(run), "--samples"]) == 0  # default: the last step
    assert "train samples of step 2" in capsys.readouterr().out
    assert report_cli.main([str(run), "--samples", "--kind", "eval"]) == 0
    out = capsys.readouterr().out
    assert "eval samples of step 0 (2 rows, reward mean 0.5, 50.0% correct" in out
    assert out.index("── wrong: reward 0, wrong") < out.index("── right: reward 1, correct")
    with pytest.raises(SystemExit, match="no train samples at step 5; steps with train samples: 1, 2"):
        report_cli.main([str(run), "--samples", "--step", "5"])
    with pytest.raises(SystemExit, match="give exactly one RUN_DIR"):
        report_cli.main([str(run), str(run), "--samples"])
