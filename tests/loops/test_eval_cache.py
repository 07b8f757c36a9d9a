"""The base-model evaluation cache: the key changes with anything the result depends on (weights,
prompts, references, settings) and nothing else; entries round-trip; a broken entry is a miss."""
import pytest
import torch

from rltrain.loops import eval_cache
from rltrain.types import Sample


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RLTRAIN_CACHE", str(tmp_path))


def _model(seed=0):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10))
    return m


SAMPLES = [Sample(id="t-0", question="1+1", answer="2"), Sample(id="t-1", question="2+2", answer="4")]
PROMPTS = [[1, 2, 3], [1, 4, 5]]
SETTINGS = {"max_new_tokens": 64, "temperature": 0.0, "reward": {"name": "math"}}


def test_key_is_stable_and_sensitive():
    m = _model()
    k = eval_cache.eval_key(m, SAMPLES, PROMPTS, settings=SETTINGS)
    assert k == eval_cache.eval_key(_model(), SAMPLES, PROMPTS, settings=dict(SETTINGS))  # same inputs, same key
    with torch.no_grad():
        m[1].bias[0] += 1e-6  # one weight, one ulp-scale change
    assert eval_cache.eval_key(m, SAMPLES, PROMPTS, settings=SETTINGS) != k
    m = _model()
    assert eval_cache.eval_key(m, SAMPLES, [[1, 2, 3], [1, 4, 6]], settings=SETTINGS) != k
    other = [SAMPLES[0], Sample(id="t-1", question="2+2", answer="5")]
    assert eval_cache.eval_key(m, other, PROMPTS, settings=SETTINGS) != k
    assert eval_cache.eval_key(m, SAMPLES, PROMPTS, settings={**SETTINGS, "max_new_tokens": 32}) != k
    assert eval_cache.eval_key(m.to(torch.float64), SAMPLES, PROMPTS, settings=SETTINGS) != k


def test_store_load_and_broken_entries(tmp_path):
    assert eval_cache.load("abc") is None
    eval_cache.store("abc", {"accuracy": 0.1, "n": 200}, source="run x")
    assert eval_cache.load("abc") == {"accuracy": 0.1, "n": 200}
    (tmp_path / "evals" / "abc.json").write_text("{not json")
    assert eval_cache.load("abc") is None
    assert not list((tmp_path / "evals").glob(".tmp-*"))  # atomic writes leave no temp files
