import pytest

from rltrain.rewards.math import MathReward


@pytest.fixture(scope="session")
def math_reward():
    """One MathReward for the session, so its worker processes start once."""
    reward = MathReward()
    yield reward
    reward.close()
