from rltrain.rewards.shaping import BREVITY_CHARS, brevity


def test_brevity_is_linear_in_length_and_floored_at_zero():
    out = brevity([None] * 4, ["", " 12 ", "x" * (BREVITY_CHARS // 4), "y" * (2 * BREVITY_CHARS)])
    assert out.scores == [1.0, 1.0 - 2 / BREVITY_CHARS, 0.75, 0.0]
