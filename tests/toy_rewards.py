"""Deterministic toy rewards for end-to-end tests on model=tiny (imported by reward=python)."""


def sevens(samples, completions):
    """Fraction of the completion's characters that are '7' (0 for an empty completion)."""
    return [c.count("7") / len(c) if c else 0.0 for c in completions]


def explode_on_x(samples, completions):
    """Raises for completions containing 'x' (a crashing reward), else scores 1."""
    out = []
    for c in completions:
        if "x" in c:
            raise RuntimeError("toy reward cannot score an 'x'")
        out.append(1.0)
    return out


def contains_seven(samples, completions):
    """1 if the completion contains a '7', else 0 (PPO/iterative-DPO tests)."""
    return [float("7" in c) for c in completions]


def prompt_has_seven(samples, completions):
    """1 if the *question* contains a '7': a return the critic can predict from the prompt alone."""
    return [float("7" in s.question) for s in samples]


def explode_on_odd(samples, completions):
    """Raises for about half of the completions (odd character-code sum), else scores 1."""
    out = []
    for c in completions:
        if sum(map(ord, c)) % 2:
            raise RuntimeError("toy reward failed on purpose")
        out.append(1.0)
    return out


def mean_char_code(samples, completions):
    """Mean character code / 128: distinct completions almost never tie (iterative DPO always gets pairs)."""
    return [sum(map(ord, c)) / len(c) / 128 if c else 0.0 for c in completions]


def char_sum_parity(samples, completions):
    """1 if the completion's character codes sum to an even number: two samples tie half the time
    (iterative DPO keeps a varying number of pairs per prompt set)."""
    return [float(sum(map(ord, c)) % 2 == 0) for c in completions]
