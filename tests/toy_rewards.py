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
