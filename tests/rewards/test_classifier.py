"""reward=classifier: a scalar reward model loaded from a directory, batched, normalised."""
import statistics

import pytest
import torch

from rltrain.engine.model import build_tiny_tokenizer
from rltrain.rewards.classifier import ClassifierReward, RunningMoments
from rltrain.types import Sample

SAMPLES = [Sample("a", "What is 2 + 2?"), Sample("b", "Say hi."), Sample("c", "A longer question, with more words?")]
COMPLETIONS = ["4", "Hello there, nice to meet you!", "Yes."]


@pytest.fixture(autouse=True)
def one_thread():
    """Small forward passes: one thread. On an oversubscribed 2-core machine OpenMP barrier
    spinning made a SmolLM2 forward 20x slower with 2 threads (10.6 s vs 0.5 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    """A tiny random LlamaForSequenceClassification (one label) and its tokenizer on disk."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = build_tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, num_labels=1,
                         pad_token_id=tok.pad_token_id, max_position_embeddings=512)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    path = tmp_path_factory.mktemp("rm")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_scores_match_unbatched_forward_passes(rm_dir):
    reward = ClassifierReward(rm_dir, batch_size=2)
    out = reward(SAMPLES, COMPLETIONS)
    model, tok = reward.model, reward.tokenizer
    for i, (s, c) in enumerate(zip(SAMPLES, COMPLETIONS)):
        text = reward.format(s, c)
        assert text.startswith("user: ") and "assistant: " in text  # chat template applied
        ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            expected = model(input_ids=ids).logits[0, 0].item()
        assert out.scores[i] == pytest.approx(expected, abs=1e-5)
    assert out.info["classifier/raw"] == out.scores
    assert len(set(out.scores)) == 3


def test_long_inputs_keep_their_end(rm_dir):
    reward = ClassifierReward(rm_dir, max_length=8, use_chat_template=False)
    a = reward([Sample("x", "q" * 100)], ["the end"]).scores[0]
    b = reward([Sample("x", "z" * 100)], ["the end"]).scores[0]
    c = reward([Sample("x", "z" * 100)], ["the End"]).scores[0]
    assert a == pytest.approx(b, abs=1e-6)  # only the last 8 tokens ("\nthe end") are read
    assert c != pytest.approx(b, abs=1e-6)


def test_running_and_fixed_normalisation(rm_dir):
    raw = ClassifierReward(rm_dir)(SAMPLES, COMPLETIONS).scores
    running = ClassifierReward(rm_dir, normalize="running", eps=0.0)
    first = running(SAMPLES[:1], COMPLETIONS[:1]).scores
    assert first == [pytest.approx(0.0)]  # one score: mean = itself, std taken as 1
    rest = running(SAMPLES[1:], COMPLETIONS[1:]).scores
    mean, std = statistics.fmean(raw), statistics.pstdev(raw)
    assert rest == pytest.approx([(r - mean) / std for r in raw[1:]], abs=1e-5)
    fixed = ClassifierReward(rm_dir, normalize="fixed", bias=0.5, scale=2.0)(SAMPLES, COMPLETIONS)
    assert fixed.scores == pytest.approx([(r - 0.5) / 2.0 for r in raw], abs=1e-6)
    assert fixed.info["classifier/raw"] == pytest.approx(raw, abs=1e-6)


def test_running_moments():
    m = RunningMoments()
    m.update([1.0, 2.0, 3.0, 10.0])
    assert m.mean == pytest.approx(4.0) and m.std == pytest.approx(statistics.pstdev([1, 2, 3, 10]))


def test_options_are_validated(rm_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with pytest.raises(ValueError, match="normalize"):
        ClassifierReward(rm_dir, normalize="batch")
    with pytest.raises(ValueError, match="exactly one"):
        ClassifierReward()
    two = AutoModelForSequenceClassification.from_pretrained(rm_dir, num_labels=2, ignore_mismatched_sizes=True)
    tok = AutoTokenizer.from_pretrained(rm_dir)
    with pytest.raises(ValueError, match="label_index"):
        ClassifierReward(model=two, tokenizer=tok)
    assert len(ClassifierReward(model=two, tokenizer=tok, label_index=1)(SAMPLES, COMPLETIONS).scores) == 3
