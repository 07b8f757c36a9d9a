"""A cache for the evaluation of the untrained model.

Every run of the embedded default starts by evaluating the same base model on the same held-out
questions with the same greedy settings: ~50 s on a 2-core CPU, a quarter of the run. The result
is a function of (the weights, the evaluation prompts and references, the decoding settings, the
reward, the library versions), so it is stored under a key made of exactly those and reused.
The key hashes the model's parameters themselves (not a path): a fine-tuned checkpoint, a LoRA
init or another dtype gets its own entry. A hit is announced in the log, and the entry records
where it came from; ``eval.cache_base=false`` turns the cache off.

Files: ``<cache_dir>/evals/<key>.json`` (``$RLTRAIN_CACHE`` or ``~/.cache/rltrain``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from rltrain.engine.model import cache_dir

VERSION = 1  # bump when what evaluate() computes changes


def weights_digest(module: torch.nn.Module) -> str:
    """blake2b of every parameter and buffer (name, dtype, shape, bytes); tied tensors once.
    SmolLM2-135M: ~0.5 s on one core."""
    h = hashlib.blake2b(digest_size=16)
    seen: set[int] = set()
    for name, t in sorted(module.state_dict(keep_vars=False).items()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        flat = t.detach().contiguous().view(-1)
        h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return h.hexdigest()


def _jsonable(x):
    if dataclasses.is_dataclass(x):
        return {f.name: _jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    return x if isinstance(x, (str, int, float, bool, type(None))) else repr(x)


def eval_key(module: torch.nn.Module, samples, prompt_ids, *, settings: dict) -> str:
    """The key of one evaluation: weights, prompts (token ids: template and tokenizer included),
    references, ``settings`` (decoding, reward, world size), library versions."""
    import transformers

    import rltrain

    h = hashlib.blake2b(digest_size=16)
    payload = {
        "version": VERSION, "rltrain": getattr(rltrain, "__version__", "0"), "torch": torch.__version__,
        "transformers": transformers.__version__, "weights": weights_digest(module),
        "prompts": [list(p) for p in prompt_ids],
        "samples": [_jsonable(s) for s in samples],
        "settings": _jsonable(settings),
    }
    h.update(json.dumps(payload, sort_keys=True).encode())
    return h.hexdigest()


def _path(key: str) -> Path:
    return cache_dir() / "evals" / f"{key}.json"


def load(key: str) -> dict | None:
    """The cached result, or None (also for an unreadable entry: it is recomputed and rewritten)."""
    try:
        entry = json.loads(_path(key).read_text())
    except (OSError, ValueError):
        return None
    result = entry.get("result") if isinstance(entry, dict) else None
    return result if isinstance(result, dict) else None


def store(key: str, result: dict, *, source: str) -> None:
    """Write atomically (a crash never leaves a half-written entry)."""
    path = _path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump({"result": result, "source": source}, f)
    os.replace(tmp, path)
