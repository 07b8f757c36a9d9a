"""The entropy-law fit R = −a·exp(H) + b (Cui et al. 2025): closed-form least squares recovers known
coefficients, reports R² ≈ 1, and the fit-on-the-start forecast error separates runs that follow
the law from runs that do not."""
import math

import numpy as np
import pytest

from rltrain.report.entropy_law import fit_entropy_law, forecast, moving_average, pairs_from_rows


def law(H, a, b):
    return -a * np.exp(H) + b


def test_two_points_by_hand():
    # H = 0, ln 2 → x = e^H = 1, 2; R = 0.5, 0.3. The line through (1, 0.5), (2, 0.3) has slope −0.2
    # and intercept 0.7, so a = 0.2, b = 0.7, ceiling b − a = 0.5 (= R at H = 0), R² = 1.
    fit = fit_entropy_law([0.0, math.log(2.0)], [0.5, 0.3])
    assert fit.a == pytest.approx(0.2) and fit.b == pytest.approx(0.7)
    assert fit.ceiling == pytest.approx(0.5) and fit.r2 == pytest.approx(1.0) and fit.n == 2


def test_recovers_known_coefficients_from_noisy_data():
    rng = np.random.default_rng(0)
    H = np.linspace(1.6, 0.1, 60)  # entropy falls during training
    a, b = 0.25, 1.1
    R = law(H, a, b) + rng.normal(0.0, 0.003, size=H.shape)
    fit = fit_entropy_law(H, R)
    assert fit.a == pytest.approx(a, abs=0.005) and fit.b == pytest.approx(b, abs=0.01)
    assert fit.ceiling == pytest.approx(b - a, abs=0.01)
    assert fit.r2 > 0.995
    assert np.allclose(fit.predict(H), law(H, fit.a, fit.b))


def test_noiseless_fit_is_exact():
    H = np.linspace(2.0, 0.3, 25)
    fit = fit_entropy_law(H, law(H, 0.4, 1.5))
    assert fit.a == pytest.approx(0.4, rel=1e-9) and fit.b == pytest.approx(1.5, rel=1e-9)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)


def test_forecast_error_small_when_law_holds_large_when_violated():
    H = np.linspace(1.8, 0.2, 100)
    good = law(H, 0.3, 1.0)
    fc = forecast(H, good, 0.3)
    assert (fc.n_fit, fc.n_test) == (30, 70)
    assert fc.rmse < 1e-9 and fc.fit.r2 == pytest.approx(1.0)
    # Violated: the law holds for the first 30 points, then accuracy collapses while entropy keeps falling.
    bad = good.copy()
    bad[30:] -= np.linspace(0.0, 0.5, 70)
    fc_bad = forecast(H, bad, 0.3)
    assert fc_bad.fit.r2 == pytest.approx(1.0)  # the early part alone fits perfectly ...
    assert fc_bad.rmse > 0.2  # ... but the prediction of the rest is far off


def test_bad_inputs_fail_with_a_reason():
    with pytest.raises(ValueError, match="at least 2"):
        fit_entropy_law([0.5], [0.1])
    with pytest.raises(ValueError, match="all entropies are equal"):
        fit_entropy_law([0.5, 0.5, 0.5], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="equal length"):
        fit_entropy_law([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="fit_fraction"):
        forecast(np.linspace(1, 0, 10), np.zeros(10), 1.0)
    with pytest.raises(ValueError, match="leaves 1 to fit"):
        forecast(np.linspace(1, 0, 10), np.zeros(10), 0.1)


def test_constant_reward_has_undefined_r2():
    fit = fit_entropy_law([0.1, 0.5, 0.9], [0.2, 0.2, 0.2])
    assert fit.a == pytest.approx(0.0, abs=1e-12) and fit.b == pytest.approx(0.2) and math.isnan(fit.r2)


def test_pairs_from_rows_train_and_eval():
    steps = [{"step": s, "actor/entropy": 1.0 / s, "reward/accuracy": 0.1 * s, "reward/mean": 9.0} for s in (1, 2, 3)]
    steps.append({"step": 4, "reward/accuracy": 0.4})  # no entropy logged: skipped
    H, R, what = pairs_from_rows(steps, [], "train")
    assert what == "train reward/accuracy" and H.tolist() == [1.0, 0.5, 1 / 3]
    assert R.tolist() == pytest.approx([0.1, 0.2, 0.3])
    # Without accuracy the training reward stands in.
    H, R, what = pairs_from_rows([{"step": 1, "actor/entropy": 0.7, "reward/mean": 0.25}], [], "train")
    assert what == "train reward/mean" and R.tolist() == [0.25]
    # An eval after step n measured the policy that sampled step n + 1; the final one pairs with the last step.
    evals = [{"step": 0, "accuracy": 0.05}, {"step": 2, "accuracy": 0.3}, {"step": 3, "accuracy": 0.4}]
    H, R, _ = pairs_from_rows(steps[:3], evals, "eval")
    assert H.tolist() == [1.0, 1 / 3, 1 / 3] and R.tolist() == [0.05, 0.3, 0.4]
    with pytest.raises(ValueError, match="valid: train, eval"):
        pairs_from_rows(steps, evals, "test")


def test_moving_average():
    assert moving_average([1, 2, 3, 4], 2).tolist() == [1.5, 2.5, 3.5]
    assert moving_average([1, 2], 1).tolist() == [1, 2]
    assert moving_average([1, 2], 3).size == 0
