"""``reward=classifier``: a scalar reward model (``AutoModelForSequenceClassification``).

The model reads the question and the completion (as a user/assistant exchange in its chat
template when it has one, else ``question + "\\n\\n" + completion``) and its logit is the
reward. Inputs longer than ``max_length`` tokens are cut from the left, so the end of the
response, where the answer is, always stays; batches are right-padded and the model pools
its last non-pad token (the Hugging Face convention, which needs ``config.pad_token_id``).

Normalisation (``normalize``):
- ``none``: the raw logit.
- ``running``: z-score against the running mean and standard deviation of every raw score
  seen so far, this batch included (Welford; the std is taken as 1 until two scores exist).
  The statistics are per process; they are not synchronised across ranks.
- ``fixed``: ``(raw - bias) / scale`` with constants measured offline.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from rltrain.types import RewardOutput, Sample

NORMALIZE = ("none", "running", "fixed")


class RunningMoments:
    """Running mean and (population) variance of a stream of floats (Welford)."""

    def __init__(self):
        self.count, self.mean, self._m2 = 0, 0.0, 0.0

    def update(self, values: Sequence[float]) -> None:
        for x in values:
            self.count += 1
            delta = x - self.mean
            self.mean += delta / self.count
            self._m2 += delta * (x - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self._m2 / self.count) if self.count >= 2 else 1.0


class ClassifierReward:
    """Scalar reward model.

    Args:
        model_path: hub id or local directory of an ``AutoModelForSequenceClassification``
            (loaded on first use); or give ``model`` + ``tokenizer``.
        model, tokenizer: an already-built reward model and its tokenizer.
        normalize: ``none`` | ``running`` | ``fixed``.
        bias, scale: the ``fixed`` normalisation ``(raw - bias) / scale``.
        label_index: which logit is the reward when the model has several labels
            (required then; a one-label model uses its only logit).
        batch_size: sequences per forward pass.
        max_length: longest input in tokens (cut from the left).
        dtype: ``fp32`` | ``bf16`` | ``fp16`` when loading ``model_path``.
        use_chat_template: format as a chat exchange when the tokenizer has a template.
        eps: added to the running std.
    """

    def __init__(
        self,
        model_path: str | None = None,
        *,
        model: Any = None,
        tokenizer: Any = None,
        normalize: str = "none",
        bias: float = 0.0,
        scale: float = 1.0,
        label_index: int | None = None,
        batch_size: int = 8,
        max_length: int = 2048,
        dtype: str = "fp32",
        use_chat_template: bool = True,
        eps: float = 1e-6,
    ):
        if (model_path is None) == (model is None):
            raise ValueError("reward=classifier needs exactly one of reward.model_path or a built model")
        if model is not None and tokenizer is None:
            raise ValueError("reward=classifier: a built model needs its tokenizer")
        if normalize not in NORMALIZE:
            raise ValueError(f"reward.normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}")
        if normalize == "fixed" and scale <= 0:
            raise ValueError(f"reward.scale must be > 0, got {scale}")
        if batch_size < 1 or max_length < 1:
            raise ValueError("reward.batch_size and reward.max_length must be >= 1")
        self.model_path, self.dtype = model_path, dtype
        self.normalize, self.bias, self.scale, self.eps = normalize, bias, scale, eps
        self.label_index = label_index
        self.batch_size, self.max_length = batch_size, max_length
        self.use_chat_template = use_chat_template
        self.moments = RunningMoments()
        self._model, self._tokenizer = model, tokenizer
        if model is not None:
            self._prepare(model, tokenizer)

    def _prepare(self, model, tokenizer) -> None:
        num_labels = model.config.num_labels
        if num_labels > 1 and self.label_index is None:
            raise ValueError(f"the reward model has {num_labels} labels; set reward.label_index")
        if self.label_index is not None and not -num_labels <= self.label_index < num_labels:
            raise ValueError(f"reward.label_index={self.label_index} is out of range for {num_labels} labels")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if model.config.pad_token_id is None:  # needed to find each sequence's last token
            model.config.pad_token_id = tokenizer.pad_token_id
        model.eval()

    @property
    def model(self):
        if self._model is None:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            from rltrain.engine.model import DTYPES

            tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            model = AutoModelForSequenceClassification.from_pretrained(self.model_path, dtype=DTYPES[self.dtype])
            self._prepare(model, tokenizer)
            self._model, self._tokenizer = model, tokenizer
        return self._model

    @property
    def tokenizer(self):
        self.model  # noqa: B018 - loads both
        return self._tokenizer

    def format(self, sample: Sample, completion: str) -> str:
        """The text the reward model reads for one completion."""
        tok = self.tokenizer
        if self.use_chat_template and getattr(tok, "chat_template", None):
            messages = [{"role": "user", "content": sample.question}, {"role": "assistant", "content": completion}]
            return tok.apply_chat_template(messages, tokenize=False)
        return f"{sample.question}\n\n{completion}"

    @torch.no_grad()
    def raw_scores(self, texts: list[str]) -> list[float]:
        """The reward model's logit for each text."""
        model, tok = self.model, self.tokenizer
        device = next(model.parameters()).device
        chat = self.use_chat_template and bool(getattr(tok, "chat_template", None))
        scores: list[float] = []
        sides = tok.padding_side, tok.truncation_side
        tok.padding_side, tok.truncation_side = "right", "left"
        try:
            for start in range(0, len(texts), self.batch_size):
                enc = tok(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                          truncation=True, max_length=self.max_length, add_special_tokens=not chat)
                logits = model(input_ids=enc["input_ids"].to(device),
                               attention_mask=enc["attention_mask"].to(device)).logits.float()  # [B, labels]
                column = 0 if self.label_index is None else self.label_index
                scores += logits[:, column].tolist()
        finally:
            tok.padding_side, tok.truncation_side = sides
        return scores

    def __call__(self, samples: Sequence[Sample], completions: Sequence[str]) -> RewardOutput:
        if len(samples) != len(completions):
            raise ValueError(f"{len(samples)} samples for {len(completions)} completions")
        raw = self.raw_scores([self.format(s, c) for s, c in zip(samples, completions)])
        if self.normalize == "running":
            self.moments.update(raw)
            mean, std = self.moments.mean, self.moments.std
            scores = [(r - mean) / (std + self.eps) for r in raw]
        elif self.normalize == "fixed":
            scores = [(r - self.bias) / self.scale for r in raw]
        else:
            scores = list(raw)
        return RewardOutput(scores=scores, info={"classifier/raw": raw})
