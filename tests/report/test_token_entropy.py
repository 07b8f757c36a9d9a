"""Token-entropy statistics ("80/20" analysis) on a hand-made logits tensor, and the analysis run
end to end on the tiny model (sampled and given responses)."""
import json
import math

import pytest
import torch

from rltrain.algos.core import token_entropy
from rltrain import analysis
from rltrain.report import cli
from rltrain.report.token_entropy import token_entropy_stats

NEG = -1e4  # exp(NEG) underflows to 0: the token is impossible


def uniform_over(k: int, V: int = 4) -> list[float]:
    return [0.0] * k + [NEG] * (V - k)


def test_stats_on_hand_made_logits():
    # Entropies by construction: one-hot → 0, uniform over k tokens → ln k.
    logits = torch.tensor([
        [[30.0, NEG, NEG, NEG], uniform_over(4), uniform_over(2), uniform_over(4)],  # 0, ln4, ln2, ln4
        [uniform_over(3), [NEG, 25.0, NEG, NEG], uniform_over(2), uniform_over(4)],  # ln3, 0, ln2, (padding)
    ])  # [B=2, T=4, V=4]
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    ids = torch.tensor([[5, 5, 9, 5], [7, 9, 8, 5]])
    ent = token_entropy(logits)  # [2, 4]
    ln = math.log
    expected = torch.tensor([[0.0, ln(4), ln(2), ln(4)], [ln(3), 0.0, ln(2), ln(4)]])
    assert torch.allclose(ent, expected, atol=1e-6)

    st = token_entropy_stats(ent, mask, ids, top_ratio=0.25, k=5, decode=lambda t: f"<{t}>")
    # 7 valid tokens, sorted: 0, 0, ln2, ln2, ln3, ln4, ln4 (the padded ln4 is excluded).
    assert st.n_tokens == 7
    assert st.frac_below == pytest.approx(2 / 7)
    assert st.mean == pytest.approx((2 * math.log(2) + math.log(3) + 2 * math.log(4)) / 7, abs=1e-6)
    # torch.quantile, linear: position 0.8·(7−1) = 4.8 → ln3 + 0.8·(ln4 − ln3).
    assert st.p80 == pytest.approx(math.log(3) + 0.8 * (math.log(4) - math.log(3)), abs=1e-6)
    # ⌈0.25·7⌉ = 2 high-entropy tokens: both ln4 positions of row 0, token 5 each time; token 5 is
    # emitted 3 times among valid tokens (its padded occurrence does not count).
    assert st.n_high == 2 and st.high_threshold == pytest.approx(math.log(4), abs=1e-6)
    (top,) = st.top_tokens
    assert (top.token_id, top.text, top.count, top.share, top.total) == (5, "<5>", 2, 1.0, 3)
    assert top.mean_entropy == pytest.approx(math.log(4), abs=1e-6)

    # With ρ = 0.6: ⌈4.2⌉ = 5 tokens, all but the two zero-entropy ones; 9 and 8 sit at the ln2 positions.
    st = token_entropy_stats(ent, mask, ids, top_ratio=0.6)
    assert st.n_high == 5
    assert [(t.token_id, t.count) for t in st.top_tokens] == [(5, 2), (7, 1), (8, 1), (9, 1)]


def test_stats_reject_bad_input():
    with pytest.raises(ValueError, match="no valid"):
        token_entropy_stats(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="must all be"):
        token_entropy_stats(torch.zeros(1, 2), torch.ones(1, 3), torch.zeros(1, 2, dtype=torch.long))


@pytest.mark.slow
def test_cli_on_tiny_model_sampled_and_given(tmp_path):
    out = tmp_path / "te"
    assert analysis.main(["--token-entropy", "--model", "tiny", "--dtype", "fp32", "--data", "arith", "--n", "4",
                     "--max-new-tokens", "6", "--top-k", "3", "--out", str(out)]) == 0
    got = json.loads((out / "token_entropy.json").read_text())
    # A random tiny model never ends early: 4 prompts × 6 tokens, entropies near ln(vocab).
    assert got["n_tokens"] == 24 and got["n_high"] == 5 and got["frac_below"] == 0.0
    assert 0 < len(got["top_tokens"]) <= 3 and (out / "token_entropy_hist.png").read_bytes()[:4] == b"\x89PNG"
    assert "80th percentile" in (out / "token_entropy.md").read_text()

    texts = tmp_path / "rows.jsonl"
    texts.write_text("\n".join(json.dumps({"prompt": f"What is {i} + 1?", "response": "The answer is 2."})
                               for i in range(3)))
    assert analysis.main(["--token-entropy", "--model", "tiny", "--dtype", "fp32", "--texts", str(texts),
                     "--out", str(out)]) == 0
    got = json.loads((out / "token_entropy.json").read_text())
    assert got["n_tokens"] % 3 == 0 and got["n_tokens"] > 0


def test_report_cli_alone_refuses_the_model_running_analysis(tmp_path):
    """report/ reads files only: its own main sends --token-entropy to the rltrain-report command."""
    with pytest.raises(SystemExit, match="rltrain.analysis"):
        cli.main(["--token-entropy", "--model", "tiny", "--out", str(tmp_path)])
