"""Preference pairs, SFT pairs and prompt rendering."""
import json
import re

import pytest

from rltrain.data import (
    PREFERENCE_DATASETS,
    DataError,
    PreferencePair,
    build_dataset,
    render_pair,
    render_prompt,
    to_sft_pairs,
)
from rltrain.data.arith import arith
from rltrain.rewards.math import MathReward, extract_boxed
from rltrain.types import Sample


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_preference_rows_text_and_messages(tmp_path):
    rows = [
        {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},
        {"prompt": [{"role": "user", "content": "2+2?"}],
         "chosen": [{"role": "assistant", "content": "4"}],
         "rejected": [{"role": "assistant", "content": "5"}]},
    ]
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    splits = build_dataset("preference", path=path, test_path=path)
    first, second = splits.train
    assert (first.prompt, first.chosen, first.rejected, first.id) == ("Say hi.", "Hi!", "No.", "train-0")
    assert second.prompt == [{"role": "user", "content": "2+2?"}]
    assert second.rejected == [{"role": "assistant", "content": "5"}]


def test_conversations_without_prompt_split_off_the_shared_prefix(tmp_path):
    user = {"role": "user", "content": "2+2?"}
    rows = [{"chosen": [user, {"role": "assistant", "content": "4"}],
             "rejected": [user, {"role": "assistant", "content": "5"}]}]
    path = write_jsonl(tmp_path / "hh.jsonl", rows)
    pair = build_dataset("preference", path=path, test_path=path).train[0]
    assert pair.prompt == [user]
    assert pair.chosen == [{"role": "assistant", "content": "4"}]
    assert pair.rejected == [{"role": "assistant", "content": "5"}]


@pytest.mark.parametrize(
    "bad_row, message",
    [
        ({"prompt": "p", "chosen": "c"}, r"line 2: missing field 'rejected'.*data\.rejected_key"),
        ({"chosen": "c", "rejected": "r"}, r"line 2: missing field 'prompt'"),
        ({"prompt": "p", "chosen": "c", "rejected": [{"role": "bot", "content": "x"}]},
         r"line 2: field 'rejected' message 0 must be"),
        ({"prompt": "p", "chosen": 3, "rejected": "r"}, r"line 2: field 'chosen' must be text"),
        ({"prompt": "p", "chosen": " ", "rejected": "r"}, r"line 2: field 'chosen' is empty"),
    ],
)
def test_bad_preference_rows_name_file_and_line(tmp_path, bad_row, message):
    path = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}, bad_row])
    with pytest.raises(DataError, match=message) as info:
        build_dataset("preference", path=path, test_path=path)
    assert "prefs.jsonl" in str(info.value)


def test_preference_needs_a_source():
    with pytest.raises(DataError, match=r"data\.path=.*data\.hub_id="):
        build_dataset("preference")


def test_synthetic_prefs_correct_chosen_wrong_rejected():
    splits = build_dataset("synthetic_prefs", difficulty=4, n_train=60, n_test=10, seed=2)
    questions = arith(difficulty=4, n_train=60, n_test=10, seed=2)
    assert [p.prompt for p in splits.train] == [s.question for s in questions.train]
    reward = MathReward(use_math_verify=False)
    for pair, sample in zip(splits.train + splits.test, questions.train + questions.test):
        assert extract_boxed(pair.chosen) == sample.answer == pair.meta["answer"]
        assert extract_boxed(pair.rejected) != sample.answer
        assert int(extract_boxed(pair.rejected)) >= 0
        assert reward.score(pair.chosen, sample.answer) == 1.0
        assert reward.score(pair.rejected, sample.answer) == 0.0
    assert {"preference", "synthetic_prefs"} == PREFERENCE_DATASETS


def test_sft_pairs_from_arith_and_missing_solutions():
    samples = arith(n_train=3, n_test=0).train
    pairs = to_sft_pairs(samples)
    assert [(p.prompt, p.response) for p in pairs] == [(s.question, s.solution) for s in samples]
    with pytest.raises(DataError, match=r"1 of 2 samples have no worked solution \(first: 'b'\)"):
        to_sft_pairs([Sample(id="a", question="q", solution="s"), Sample(id="b", question="q")])


# -- prompt rendering with a real (locally built) tokenizer --------------------------------------

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    tok.chat_template = TEMPLATE
    return tok


def test_render_prompt_applies_chat_template_with_generation_prompt(tokenizer):
    assert render_prompt(tokenizer, "What is 1 + 2?") == "<|user|>What is 1 + 2?<|end|>\n<|assistant|>"
    assert render_prompt(tokenizer, "Q", system_prompt="Be brief.") == (
        "<|system|>Be brief.<|end|>\n<|user|>Q<|end|>\n<|assistant|>"
    )
    assert render_prompt(tokenizer, "Q", system_prompt="S", use_chat_template=False) == "S\n\nQ"


def test_render_prompt_without_template_is_plain_text(tokenizer):
    tokenizer_without = type("Plain", (), {"chat_template": None})()
    assert render_prompt(tokenizer_without, "Q") == "Q"
    assert render_prompt(tokenizer_without, "Q", system_prompt="S") == "S\n\nQ"


def test_render_pair_responses_are_what_follows_the_prompt(tokenizer):
    pair = PreferencePair(prompt="2+2?", chosen="4", rejected="5", id="x")
    prompt, chosen, rejected = render_pair(tokenizer, pair)
    assert prompt == "<|user|>2+2?<|end|>\n<|assistant|>"
    assert (chosen, rejected) == ("4<|end|>\n", "5<|end|>\n")
    assert render_pair(tokenizer, pair, use_chat_template=False) == ("2+2?", "4", "5")


def test_render_pair_rejects_templates_that_rewrite_the_prompt(tokenizer):
    tokenizer.chat_template = re.sub(r"<\|assistant\|>\{% endif %\}", "<|gen|>{% endif %}", TEMPLATE)
    try:
        with pytest.raises(ValueError, match="use_chat_template=false"):
            render_pair(tokenizer, PreferencePair(prompt="q", chosen="a", rejected="b"))
    finally:
        tokenizer.chat_template = TEMPLATE
