"""data=qa: any question / reference-answer columns, for judge-scored free-form QA."""
import json

import pytest

from rltrain.data.base import DataError
from rltrain.data.qa import qa


def test_custom_columns_lists_and_meta(tmp_path):
    rows = [
        {"prompt": "Which organ produces insulin?", "ref": "the pancreas", "subject": "medicine"},
        {"prompt": "Name a noble gas.", "ref": ["helium", "neon", "argon"], "subject": "chemistry"},
        {"prompt": "What is 2 + 2?", "ref": 4, "subject": "math"},
    ]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    splits = qa(path=str(path), test_path=str(path), question_key="prompt", answer_key="ref",
                meta_keys=["subject"], instruction="")
    assert [s.question for s in splits.train] == [r["prompt"] for r in rows]
    assert [s.answer for s in splits.train] == ["the pancreas", "helium OR neon OR argon", "4"]
    assert [s.meta["subject"] for s in splits.train] == ["medicine", "chemistry", "math"]
    held_out = qa(path=str(path), question_key="prompt", answer_key="ref", test_fraction=0.34)
    assert len(held_out.train) == 2 and len(held_out.test) == 1
    assert held_out.train[0].question.endswith("on the last line.")


def test_missing_column_names_the_row_and_the_option(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text(json.dumps([{"question": "q1", "answer": "a1"}, {"question": "q2"}]))
    with pytest.raises(DataError, match=r"qa\.json, row 1: missing field 'answer'.*data\.answer_key"):
        qa(path=str(path), test_path=str(path))


def test_registered_as_data_qa(tmp_path):
    from rltrain.data import build_dataset

    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    assert build_dataset("qa", path=str(path), test_path=str(path)).train[0].answer == "a"
