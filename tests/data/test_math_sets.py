"""gsm8k / math builders on small local files; error messages name file + line/row or key."""
import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rltrain.data import DataError, build_dataset
from rltrain.data.gsm8k import parse_gsm8k_answer

GSM_ROWS = [
    {"question": "Tom has 3 boxes of 4 pens. How many pens?",
     "answer": "He has 3*4=<<3*4=12>>12 pens.\n#### 12"},
    {"question": "A car costs $1,200 plus $34 tax. Total?",
     "answer": "1200+34=<<1200+34=1234>>1234\n#### 1,234"},
    {"question": "What is 10 - 3?", "answer": "10-3=7\n#### 7"},
]
MATH_ROWS = [
    {"problem": "Compute $1/2 + 0$.", "solution": "It is $\\boxed{\\frac{1}{2}}$.",
     "level": "Level 1", "type": "Algebra"},
    {"problem": "Find $x$.", "solution": "Try $\\boxed{1}$ first; then $x=\\boxed{\\sqrt{\\frac{3}{4}}}$."},
    {"problem": "Name it.", "solution": "Long text.", "answer": "\\text{(B)}"},
]


def write(path, rows, fmt):
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    else:  # parquet has one schema: every row gets every column (None where absent)
        keys = list(dict.fromkeys(k for r in rows for k in r))
        pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows]), path)
    return str(path)


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_gsm8k_local_files(tmp_path, fmt):
    train = write(tmp_path / f"train.{fmt}", GSM_ROWS, fmt)
    test = write(tmp_path / f"test.{fmt}", GSM_ROWS[:1], fmt)
    splits = build_dataset("gsm8k", path=train, test_path=test)
    assert [s.answer for s in splits.train] == ["12", "1234", "7"]
    assert [s.id for s in splits.train] == ["train-0", "train-1", "train-2"]
    assert len(splits.test) == 1 and splits.test[0].id == "test-0"
    first = splits.train[0]
    assert first.question == GSM_ROWS[0]["question"] + "\n\nGive the final answer as \\boxed{N}."
    assert first.solution == "He has 3*4=12 pens.\nThe final answer is \\boxed{12}."


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_math_local_files(tmp_path, fmt):
    train = write(tmp_path / f"train.{fmt}", MATH_ROWS, fmt)
    splits = build_dataset("math", path=train, test_path=train, instruction="")
    answers = [s.answer for s in splits.train]
    assert answers == ["\\frac{1}{2}", "\\sqrt{\\frac{3}{4}}", "\\text{(B)}"]  # last box, nested
    assert splits.train[0].meta == {"level": "Level 1", "type": "Algebra"}
    assert splits.train[0].question == "Compute $1/2 + 0$."
    assert splits.train[0].solution == MATH_ROWS[0]["solution"]


def test_json_file_holding_json_lines_is_read(tmp_path):
    path = write(tmp_path / "train.json", GSM_ROWS, "jsonl")
    splits = build_dataset("gsm8k", path=path, test_path=path)
    assert len(splits.train) == 3


def test_test_fraction_split_is_seeded_and_disjoint(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(20)]
    path = write(tmp_path / "all.jsonl", rows, "jsonl")
    a = build_dataset("gsm8k", path=path, test_fraction=0.25, seed=1)
    b = build_dataset("gsm8k", path=path, test_fraction=0.25, seed=1)
    c = build_dataset("gsm8k", path=path, test_fraction=0.25, seed=2)
    assert len(a.train) == 15 and len(a.test) == 5
    assert a == b and a.test != c.test
    assert sorted(int(s.answer) for s in a.train + a.test) == list(range(20))


def test_column_names_and_caps_are_configurable(tmp_path):
    rows = [{"q": f"question {i}", "a": f"#### {i}"} for i in range(6)]
    path = write(tmp_path / "t.jsonl", rows, "jsonl")
    splits = build_dataset("gsm8k", path=path, test_path=path, question_key="q", answer_key="a",
                           n_train=4, n_test=2)
    assert [s.answer for s in splits.train] == ["0", "1", "2", "3"]
    assert len(splits.test) == 2


def test_bare_number_gsm8k_answer_and_commas():
    assert parse_gsm8k_answer("1,234") == ("1234", None)
    answer, solution = parse_gsm8k_answer("a\nb <<1+1=2>>2\n#### -5")
    assert answer == "-5" and solution == "a\nb 2\nThe final answer is \\boxed{-5}."


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GSM_ROWS[0]) + "\n\n" + "{not json\n")
    with pytest.raises(DataError, match=r"bad\.jsonl, line 3: not valid JSON"):
        build_dataset("gsm8k", path=str(path), test_path=str(path))


@pytest.mark.parametrize(
    "bad_row, message",
    [
        ({"answer": "#### 3"}, r"line 2: missing field 'question'.*data\.question_key"),
        ({"question": "q", "answer": "three"}, r"line 2: no '#### <answer>'"),
        ({"question": "q", "answer": ["#### 3"]}, r"line 2: field 'answer' must be a string"),
        ({"question": "", "answer": "#### 3"}, r"line 2: field 'question' is empty"),
        ([1, 2], r"line 2: expected a JSON object"),
    ],
)
def test_malformed_gsm8k_rows_name_the_line(tmp_path, bad_row, message):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(GSM_ROWS[0]) + "\n" + json.dumps(bad_row) + "\n")
    with pytest.raises(DataError, match=message) as info:
        build_dataset("gsm8k", path=str(path), test_path=str(path))
    assert str(path) in str(info.value)


@pytest.mark.parametrize("fmt", ["json", "parquet"])
def test_malformed_math_rows_name_the_row(tmp_path, fmt):
    rows = [MATH_ROWS[0], {"problem": "p", "solution": "no box here", "answer": None}]
    path = write(tmp_path / f"train.{fmt}", rows, fmt)
    with pytest.raises(DataError, match=rf"train\.{fmt}, row 1: no \\boxed"):
        build_dataset("math", path=path, test_path=path)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_dataset("gsm8k", path=str(tmp_path / "nope.jsonl"))
    csv = tmp_path / "train.csv"
    csv.write_text("question,answer\n")
    with pytest.raises(DataError, match=r"unsupported data file type '\.csv'"):
        build_dataset("gsm8k", path=str(csv))
    with pytest.raises(DataError, match="data.path"):
        build_dataset("gsm8k", test_path=str(csv))


def test_unreachable_hub_fails_fast_naming_data_path(monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("ALL_PROXY", raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    start = time.monotonic()
    with pytest.raises(DataError, match=r"data\.hub_id='openai/gsm8k'.*set data\.path=") as info:
        build_dataset("gsm8k")
    assert time.monotonic() - start < 5
    assert "unreachable" in str(info.value)


def test_hf_offline_mode_failure_is_rewritten_naming_data_path(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(DataError, match=r"data\.hub_id='rltrain-tests/no-such-set'.*set data\.path="):
        build_dataset("math", hub_id="rltrain-tests/no-such-set")
    assert time.monotonic() - start < 10
