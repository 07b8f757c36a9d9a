"""``arith``: seeded synthetic arithmetic problems with integer answers (offline, instant).

Difficulty levels (``data.difficulty``):

    0  addition of two numbers from 1 to 20   "What is 7 + 16?"    (400 questions in all)
    1  two-digit addition                     "What is 37 + 48?"   (the default task)
    2  three-digit addition or subtraction    "What is 352 - 178?"
    3  three terms, + and -, up to 3 digits   "What is 45 + 378 - 23?"
    4  three terms with one product           "What is 45 + 23 × 7 - 12?"
    5  three-step word problems (buy, give away, packs of m)

Answers and every running total are non-negative. Each sample carries a worked ``solution``
ending in ``\\boxed{N}`` (SFT data and the "chosen" side of ``synthetic_prefs``). The test split
is drawn from its own seeded stream and the train split skips every test question, so the
test set does not change with ``n_train`` and no question appears in both.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from rltrain.data.base import DEFAULT_INSTRUCTION, DatasetSplits, with_instruction
from rltrain.types import Sample

_NAMES = ("Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hiro", "Isla", "Jonas",
          "Kira", "Liam", "Maya", "Noah", "Omar", "Priya")
# Give up after this many consecutive repeats: the level has run out of distinct questions.
_MAX_REJECTS = 20_000
_ITEMS = ("apples", "marbles", "stickers", "books", "coins", "pencils", "shells", "cards")


@dataclass(frozen=True)
class _Level:
    n_terms: int  # operands of an expression problem, or steps of a word problem
    lo: int  # smallest operand
    hi: int  # largest operand
    ops: str  # allowed operators between terms
    product: bool  # one term is a product a × b (b in 2..12)
    words: bool  # word problem instead of an expression


# Level 0 is where the untrained SmolLM2-135M-Instruct samples about a quarter right (T = 0.7; 0.26 over
# 32 questions × 8 samples, against 0.11 at level 1): issue 17's denser-signal SPO comparison.
LEVELS: dict[int, _Level] = {
    0: _Level(n_terms=2, lo=1, hi=20, ops="+", product=False, words=False),
    1: _Level(n_terms=2, lo=10, hi=99, ops="+", product=False, words=False),
    2: _Level(n_terms=2, lo=100, hi=999, ops="+-", product=False, words=False),
    3: _Level(n_terms=3, lo=10, hi=999, ops="+-", product=False, words=False),
    4: _Level(n_terms=3, lo=10, hi=99, ops="+-", product=True, words=False),
    5: _Level(n_terms=3, lo=10, hi=99, ops="+-", product=True, words=True),
}


@dataclass(frozen=True)
class Problem:
    """A generated problem before the instruction is appended.

    ``steps`` are the lines of the worked solution: ``(text, value)`` renders as
    ``"text = value."``, ``(text, None)`` as ``"text."``; the last value is the answer.
    """

    question: str
    steps: tuple[tuple[str, int | None], ...]

    @property
    def answer(self) -> int:
        return next(v for _, v in reversed(self.steps) if v is not None)

    def solution(self, final: int | None = None) -> str:
        """The worked solution; ``final`` replaces the last result (a wrong solution for DPO)."""
        final = self.answer if final is None else final
        lines = [f"{text}." if value is None else f"{text} = {value}." for text, value in self.steps[:-1]]
        lines.append(f"{self.steps[-1][0]} = {final}.")
        lines.append(f"The final answer is \\boxed{{{final}}}.")
        return "\n".join(lines)


def _expression(level: _Level, rng: random.Random) -> Problem | None:
    product_at = rng.randrange(level.n_terms) if level.product else -1
    steps: list[tuple[str, int | None]] = []
    terms: list[tuple[str, int]] = []  # (text, value) of each term
    for i in range(level.n_terms):
        a = rng.randint(level.lo, level.hi)
        if i == product_at:
            b = rng.randint(2, 12)
            terms.append((f"{a} × {b}", a * b))
            steps.append((f"{a} × {b}", a * b))
        else:
            terms.append((str(a), a))
    ops = [rng.choice(level.ops) for _ in range(level.n_terms - 1)]
    total = terms[0][1]
    for op, (_, value) in zip(ops, terms[1:]):
        new = total + value if op == "+" else total - value
        if new < 0:
            return None  # keep every running total non-negative
        steps.append((f"{total} {op} {value}", new))
        total = new
    text = terms[0][0] + "".join(f" {op} {term}" for op, (term, _) in zip(ops, terms[1:]))
    return Problem(question=f"What is {text}?", steps=tuple(steps))


def _word_problem(level: _Level, rng: random.Random) -> Problem:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    total = rng.randint(level.lo, level.hi)
    sentences = [f"{name} has {total} {item}."]
    steps: list[tuple[str, int | None]] = [(f"{name} starts with {total} {item}", None)]
    for _ in range(level.n_terms):
        kind = rng.choice(("buy", "give", "packs") if total > 2 else ("buy", "packs"))
        if kind == "buy":
            b = rng.randint(2, level.hi)
            sentences.append(f"{name} buys {b} more {item}.")
            steps.append((f"After buying {b} more: {total} + {b}", total + b))
            total += b
        elif kind == "give":
            b = rng.randint(1, total - 1)
            sentences.append(f"{name} gives {b} {item} to a friend.")
            steps.append((f"After giving away {b}: {total} - {b}", total - b))
            total -= b
        else:
            k, m = rng.randint(2, 9), rng.randint(2, 12)
            sentences.append(f"{name} buys {k} packs with {m} {item} in each pack.")
            steps.append((f"The packs hold {k} × {m}", k * m))
            steps.append((f"{total} + {k * m}", total + k * m))
            total += k * m
    sentences.append(f"How many {item} does {name} have now?")
    return Problem(question=" ".join(sentences), steps=tuple(steps))


def generate_problems(
    difficulty: int, n: int, rng: random.Random, exclude: set[str] | frozenset[str] = frozenset()
) -> list[Problem]:
    """``n`` distinct problems whose questions are not in ``exclude``.

    Raises:
        ValueError: unknown difficulty, or the level has too few distinct questions.
    """
    if difficulty not in LEVELS:
        raise ValueError(f"data.difficulty must be one of {sorted(LEVELS)}, got {difficulty}")
    level = LEVELS[difficulty]
    seen = set(exclude)
    problems: list[Problem] = []
    rejects = 0  # consecutive draws that gave nothing new
    while len(problems) < n and rejects < _MAX_REJECTS:
        problem = _word_problem(level, rng) if level.words else _expression(level, rng)
        if problem is None or problem.question in seen:
            rejects += 1
            continue
        rejects = 0
        seen.add(problem.question)
        problems.append(problem)
    if len(problems) < n:
        raise ValueError(
            f"arith difficulty={difficulty} gave only {len(problems)} of {n} distinct questions "
            f"({_MAX_REJECTS} draws in a row repeated earlier ones); lower data.n_train / "
            "data.n_test"
        )
    return problems


def arith_problems(difficulty: int, n_train: int, n_test: int, seed: int) -> tuple[list[Problem], list[Problem]]:
    """Disjoint train and test problems; the test set depends only on (difficulty, n_test, seed)."""
    if n_train < 0 or n_test < 0:
        raise ValueError(f"data.n_train and data.n_test must be >= 0, got {n_train}, {n_test}")
    test = generate_problems(difficulty, n_test, random.Random(f"arith-test-{difficulty}-{seed}"))
    train = generate_problems(
        difficulty, n_train, random.Random(f"arith-train-{difficulty}-{seed}"),
        exclude={p.question for p in test},
    )
    return train, test


def arith(
    *,
    difficulty: int = 1,
    n_train: int = 1000,
    n_test: int = 200,
    seed: int = 0,
    instruction: str = DEFAULT_INSTRUCTION,
) -> DatasetSplits[Sample]:
    """Synthetic arithmetic problems (see the module docstring for the levels).

    Args:
        difficulty: 1 (two-digit addition) … 5 (word problems).
        n_train: number of training problems.
        n_test: number of held-out problems (never also in train).
        seed: generator seed; the same arguments always give the same samples.
        instruction: appended to each question after a space ("" = none).
    """
    train, test = arith_problems(difficulty, n_train, n_test, seed)

    def to_samples(problems: list[Problem], split: str) -> list[Sample]:
        return [
            Sample(
                id=f"{split}-{i}",
                question=with_instruction(p.question, instruction, sep=" "),
                answer=str(p.answer),
                solution=p.solution(),
                meta={"difficulty": difficulty},
            )
            for i, p in enumerate(problems)
        ]

    return DatasetSplits(train=to_samples(train, "train"), test=to_samples(test, "test"))
