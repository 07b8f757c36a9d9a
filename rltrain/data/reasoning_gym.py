"""``data=reasoning_gym``: procedurally generated tasks from the ``reasoning-gym`` package (offline; about
100 tasks, each item ``{question, answer, metadata}``), one or several tasks mixed by weight.

``data.tasks`` lists task names, or ``{name, weight, config}`` entries (``config``: the task's own
generator options, e.g. ``{min_terms: 2, max_terms: 3}`` for ``chain_sum``). Each task draws
``round(size * weight / total weight)`` training items from a seed derived from ``data.seed`` and the
task, and ``n_test`` held-out items per task from another; a held-out question never appears in
training. The item's metadata rides in ``Sample.meta["entry"]`` for the reward
(``rltrain.rewards.reasoning_gym``), which scores with the task's own ``score_answer``. Its ``solution``
is the answer in the tags (``<answer>42</answer>``): ``algo=sft data=reasoning_gym`` teaches the format.
"""
from __future__ import annotations

import zlib
from typing import Any

from rltrain.data.base import DataError, DatasetSplits
from rltrain.types import Sample

INSTRUCTION = "Put the final answer alone between <answer> and </answer>."


def _tasks(tasks: list) -> list[tuple[str, float, dict]]:
    out = []
    for i, t in enumerate(tasks):
        if isinstance(t, str):
            out.append((t, 1.0, {}))
        elif isinstance(t, dict) and isinstance(t.get("name"), str):
            unknown = set(t) - {"name", "weight", "config"}
            if unknown:
                raise DataError(f"data.tasks[{i}] has unknown keys {sorted(unknown)}; use name, weight, config")
            out.append((t["name"], float(t.get("weight", 1.0)), dict(t.get("config") or {})))
        else:
            raise DataError(f"data.tasks[{i}] must be a task name or {{name, weight, config}}, got {t!r}")
    if not out:
        raise DataError("data.tasks is empty; name at least one reasoning-gym task (e.g. data.tasks=[chain_sum])")
    if any(w <= 0 for _, w, _ in out):
        raise DataError("data.tasks: every weight must be > 0")
    return out


def _items(name: str, size: int, seed: int, config: dict) -> list[dict[str, Any]]:
    import reasoning_gym

    try:
        ds = reasoning_gym.create_dataset(name, size=size, seed=seed, **config)
    except Exception as exc:  # noqa: BLE001 - an unknown task or option: one line naming data.tasks
        raise DataError(f"data.tasks: reasoning-gym task {name!r} with config {config}: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    return [ds[i] for i in range(size)]


def reasoning_gym(*, tasks: list, size: int = 1000, n_test: int = 100, seed: int = 0,
                  instruction: str = INSTRUCTION) -> DatasetSplits[Sample]:
    """Train and held-out ``Sample``s of the given reasoning-gym tasks (see the module docstring)."""
    try:
        import reasoning_gym  # noqa: F401
    except ImportError:
        raise DataError("data=reasoning_gym needs the reasoning-gym package: pip install reasoning-gym") from None
    specs = _tasks(list(tasks))
    total = sum(w for _, w, _ in specs)
    train, test = [], []
    for name, weight, config in specs:
        key = zlib.crc32(name.encode())
        held = _items(name, n_test, seed * 1_000_003 + key + 1, config) if n_test else []
        seen = {x["question"] for x in held}
        n = round(size * weight / total)
        items = [x for x in _items(name, n + len(seen), seed * 1_000_003 + key, config)
                 if x["question"] not in seen][:n]
        for split, rows in (("train", items), ("test", held)):
            out = train if split == "train" else test
            out += [Sample(id=f"{split}-{name}-{i}", question=f"{x['question']}\n\n{instruction}",
                           answer=str(x["answer"]), solution=f"<answer>{x['answer']}</answer>",
                           meta={"task": name, "entry": x}) for i, x in enumerate(rows)]
    return DatasetSplits(train=train, test=test)
