"""Demonstrations of ``env=calculator`` episodes, for an SFT warm start before GRPO (docs/environments.md).

SmolLM2-135M never writes a tool call on its own, so GRPO on ``env=calculator`` sees every reward 0. A
short SFT stage on demonstrations teaches the format first. Each arithmetic question gives two examples,
one per assistant turn of the episode the environment would play:

1. the first prompt (the environment's system message with the tool, the question) → a Hermes call
   ``<tool_call>{"name": "calculate", "arguments": {"expression": "352 - 178"}}</tool_call>``;
2. that conversation plus the call and the tool's result (the ``tool`` message the rollout appends) →
   ``The final answer is \\boxed{174}.``

Prompts are the chat template's rendering of exactly the messages ``ToolEnv`` and the rollout build
(``ToolEnv.reset``, a ``tool`` message, the generation prompt), and the tool's result is the calculator's
own; the tool's message is in the prompt, never a target. The rows are preference rows (``prompt``,
``chosen``: the demonstration, ``rejected``: an answer without the tool, off by one) with the prompt
already rendered, for ``algo=sft data=preference data.use_chat_template=false``: the SFT loop then scores
the tokens the template puts after the generation prompt, the end-of-turn token included.

    python -m rltrain.envs.demos --out demos.jsonl --n 64 --difficulty 2 --seed 0
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from rltrain.envs.base import ToolEnv
from rltrain.envs.calculator import Calculator
from rltrain.types import Sample

_QUESTION = re.compile(r"What is (.+?)\?")


def expression_of(question: str) -> str:
    """The arithmetic of an ``arith`` question ("What is 352 - 178? ..." → "352 - 178").

    Raises:
        ValueError: the question is not of the form "What is <expression>?" (word problems).
    """
    m = _QUESTION.search(question)
    if not m:
        raise ValueError(f"not an arith expression question: {question[:80]!r}")
    return m.group(1).replace("×", "*")


def tool_call_text(expression: str) -> str:
    """The Hermes call of the calculator the system message describes."""
    return "<tool_call>" + json.dumps({"name": "calculate", "arguments": {"expression": expression}}) + "</tool_call>"


def _split(tokenizer, messages: list[dict], reply: str) -> tuple[str, str]:
    """(the rendered prompt up to the generation prompt, what the template adds for ``reply``)."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": reply}], tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template does not render the prompt as a prefix of the conversation")
    return prompt, full[len(prompt):]


def calculator_rows(tokenizer, samples: list[Sample], *, system_prompt: str | None = None) -> list[dict]:
    """Two preference rows per sample (the module docstring): the call turn, then the answer turn."""
    rows = []
    for s in samples:
        env = ToolEnv(Calculator(), system_prompt=system_prompt, tool_timeout_s=5.0, max_tool_output_chars=2000,
                      max_invalid_tool_calls=0)
        messages = env.reset(s)
        call = tool_call_text(expression_of(s.question))
        result = env.step(call)
        if result.message is None or result.info.get("invalid_calls"):
            raise ValueError(f"the demonstration's call did not run: {call}")
        final = f"The final answer is \\boxed{{{s.answer}}}."
        wrong = f"The final answer is \\boxed{{{int(s.answer) + 1}}}."
        prompt, chosen = _split(tokenizer, messages, call)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": _split(tokenizer, messages, wrong)[1],
                     "answer": s.answer, "turn": 1})
        followed = messages + [{"role": "assistant", "content": call}, result.message]
        prompt, chosen = _split(tokenizer, followed, final)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": _split(tokenizer, followed, wrong)[1],
                     "answer": s.answer, "turn": 2})
    return rows


def main(argv: list[str] | None = None) -> None:
    from rltrain.data.arith import arith
    from rltrain.engine.model import resolve_path
    from transformers import AutoTokenizer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="the jsonl file to write (its folder is made)")
    p.add_argument("--n", type=int, default=64, help="training questions (2 rows each)")
    p.add_argument("--difficulty", type=int, default=2, help="data.difficulty of data=arith")
    p.add_argument("--seed", type=int, default=0, help="which training questions (data=arith's own split stays "
                   "the one of data.seed=0: its held-out questions are never demonstrated)")
    p.add_argument("--n-test", type=int, default=200, help="data.n_test of the GRPO run (questions to avoid)")
    p.add_argument("--model", default="smollm2_135m", help="model name (its tokenizer's chat template)")
    p.add_argument("--model-path", default=None)
    args = p.parse_args(argv)
    import random

    train = arith(difficulty=args.difficulty, n_train=1000, n_test=args.n_test).train
    samples = random.Random(args.seed).sample(train, args.n)
    tok = AutoTokenizer.from_pretrained(resolve_path(args.model, args.model_path))
    rows = calculator_rows(tok, samples)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} rows ({args.n} questions) -> {out}")


if __name__ == "__main__":
    main()
