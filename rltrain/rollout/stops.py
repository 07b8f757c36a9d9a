"""Stop-string detection by incremental decoding of each response's tail."""
from __future__ import annotations

import torch


class StopStrings:
    """Finds responses whose decoded text has just come to contain a stop string.

    Checked after every sampled token, so an occurrence is found at the token that completes it;
    only the last ``window`` tokens are decoded. A stop string of b UTF-8 bytes spans at most b
    tokens (byte-level and byte-fallback vocabularies never use less than one byte per token), and
    two more tokens of margin keep it away from the window's first token, whose decoded text can
    differ from the full decode (a dropped leading space, a split multi-byte character).
    """

    def __init__(self, stop_strings: tuple[str, ...], tokenizer):
        if stop_strings and tokenizer is None:
            raise ValueError("SamplingParams.stop_strings needs generate(..., tokenizer=...)")
        if any(not s for s in stop_strings):
            raise ValueError("SamplingParams.stop_strings must not contain an empty string")
        self.stop_strings = tuple(stop_strings)
        self.tokenizer = tokenizer
        self.window = max((len(s.encode("utf-8")) for s in stop_strings), default=0) + 2

    def __bool__(self) -> bool:
        return bool(self.stop_strings)

    def hits(self, history: torch.Tensor, length: int) -> torch.Tensor:
        """Rows whose response ``history[:, :length]`` ends with a completed stop string.

        Args:
            history: ``[B, >=length]`` long, the response tokens so far of every row.
            length: number of valid columns (the same for every row).

        Returns:
            ``[B]`` bool.
        """
        tails = history[:, max(0, length - self.window) : length].tolist()
        texts = self.tokenizer.batch_decode(tails, skip_special_tokens=False)
        return torch.tensor([any(s in t for s in self.stop_strings) for t in texts], dtype=torch.bool)
