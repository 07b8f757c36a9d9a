"""``reward=judge``: a generative reward model ("Crossing the Reward Bridge", Su et al., 2025,
arXiv 2503.23829; docs/algorithms.md §7).

A causal LM reads the question, the final part of the response and the reference answer and
is asked for YES or NO. One forward pass, no sampling: at the first output position,

    soft   = P(YES) / (P(YES) + P(NO))          (default; decision 8 in docs/algorithms.md)
    binary = 1 if P(YES) > P(NO) else 0          (argmax over the two answers)
    raw    = P(YES)                              (the paper's unnormalised form)

where P(YES) sums the next-token probabilities of the first tokens of every spelling in
``yes_strings`` (likewise NO). The soft score is computed in log space,
``sigmoid(logsumexp(yes logits) − logsumexp(no logits))``, so it never underflows.

Deviations and choices:
- The paper's judge is a distilled Qwen2.5-7B; any causal LM works here (``smollm2_135m`` is
  the offline default for tests; it is a weak judge).
- Spellings are scored by their first token only (one forward pass). With SmolLM2's
  tokenizer "YES" is "Y"+"ES", so the "Y" token stands for it. First tokens that a YES and a
  NO spelling share (e.g. a leading space in a character-level tokenizer) are dropped as
  ambiguous; a side with no token left is an error at construction.
- Binary mode takes the argmax over {YES, NO} rather than over the whole vocabulary: with
  a small judge the overall argmax is often neither, which would make every score 0.
- The prompt is the configurable ``template`` (placeholders ``{question}``, ``{response}``,
  ``{reference}``), wrapped as one user turn in the judge's chat template when it has one.
  The response is cut to its last ``tail_chars`` characters ("final step only").
- Batches are left-padded with explicit position ids, so a prompt's score does not depend on
  the batch it is in. Under DeepSpeed ZeRO-3 pass the engine's module as ``model``.
"""
from __future__ import annotations

import inspect
import string
from typing import Any, Sequence

import torch

from rltrain.types import RewardOutput, Sample

MODES = ("soft", "binary", "raw")

DEFAULT_TEMPLATE = """\
You are checking a solution against a reference answer. Decide whether the final answer of the \
solution below (which may be incomplete) matches the reference answer. The reference answer \
may be an option letter, a number, an expression, a list, or text in any language; judge the \
meaning, not the wording or the language.
Reply with exactly YES if the final answer matches the reference answer, and NO otherwise, \
including when the solution is unclear or incomplete or gives no final answer.

Question: {question}

Solution Process (Final Step Only): {response}

Reference Answer: {reference}

Output:"""


def _check_template(template: str) -> None:
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    required = {"question", "response", "reference"}
    if fields - required:
        raise ValueError(
            f"reward.template has unknown placeholder(s) {sorted(fields - required)}; "
            "use {question}, {response} and {reference} (write {{ and }} for literal braces)"
        )
    if "response" not in fields:
        raise ValueError("reward.template must contain {response}")


def first_token_ids(tokenizer: Any, yes_strings: Sequence[str], no_strings: Sequence[str]) -> tuple[list[int], list[int]]:
    """Token ids standing for YES and for NO (first token of each spelling, shared ones dropped).

    Raises:
        ValueError: a side is left without any token.
    """
    def first(words: Sequence[str]) -> set[int]:
        ids = set()
        for word in words:
            tokens = tokenizer.encode(word, add_special_tokens=False)
            if tokens:
                ids.add(tokens[0])
        return ids

    yes, no = first(yes_strings), first(no_strings)
    shared = yes & no
    yes, no = sorted(yes - shared), sorted(no - shared)
    if not yes or not no:
        raise ValueError(
            f"judge answer tokens are ambiguous: yes_strings={list(yes_strings)} and "
            f"no_strings={list(no_strings)} leave no distinct first token for "
            f"{'YES' if not yes else 'NO'} with this tokenizer"
        )
    return yes, no


class JudgeReward:
    """Generative judge reward.

    Args:
        model_path: what to load lazily with ``rltrain.engine.model.load_model``:
            ``smollm2_135m``, ``tiny``, or a hub id / local directory. Give either this or
            ``model`` + ``tokenizer``.
        model: an already-built causal LM (a string is taken as ``model_path``).
        tokenizer: the model's tokenizer (with ``model``).
        template: judge prompt with ``{question}``, ``{response}``, ``{reference}``.
        mode: ``soft`` | ``binary`` | ``raw`` (see the module docstring).
        tail_chars: only the last ``tail_chars`` characters of the response are shown.
        batch_size: prompts per forward pass.
        dtype: ``fp32`` | ``bf16`` | ``fp16`` when loading ``model_path``.
        yes_strings, no_strings: spellings of the two answers.
        use_chat_template: wrap the prompt in the tokenizer's chat template if it has one.
    """

    def __init__(
        self,
        model_path: str | None = None,
        *,
        model: Any = None,
        tokenizer: Any = None,
        template: str = DEFAULT_TEMPLATE,
        mode: str = "soft",
        tail_chars: int = 1000,
        batch_size: int = 8,
        dtype: str = "fp32",
        yes_strings: Sequence[str] = ("YES", "Yes", " YES", " Yes"),
        no_strings: Sequence[str] = ("NO", "No", " NO", " No"),
        use_chat_template: bool = True,
    ):
        if isinstance(model, str):
            model_path, model = model, None
        if (model_path is None) == (model is None):
            raise ValueError("reward=judge needs exactly one of reward.model_path or a built model")
        if model is not None and tokenizer is None:
            raise ValueError("reward=judge: a built model needs its tokenizer")
        if mode not in MODES:
            raise ValueError(f"reward.mode must be one of {', '.join(MODES)}, got {mode!r}")
        if tail_chars < 1 or batch_size < 1:
            raise ValueError(f"reward.tail_chars and reward.batch_size must be >= 1, got {tail_chars}, {batch_size}")
        _check_template(template)
        self.model_path, self.dtype = model_path, dtype
        self.template, self.mode = template, mode
        self.tail_chars, self.batch_size = tail_chars, batch_size
        self.yes_strings, self.no_strings = tuple(yes_strings), tuple(no_strings)
        self.use_chat_template = use_chat_template
        self._model, self._tokenizer = model, tokenizer
        self._ids: tuple[list[int], list[int]] | None = None
        # Set by ``shard_judge`` (ZeRO-3): every forward is collective, so each call runs as many
        # batches on every rank as on the busiest one.
        self.lockstep = None
        if tokenizer is not None:
            self._ids = first_token_ids(tokenizer, self.yes_strings, self.no_strings)

    # -- model ---------------------------------------------------------------------------

    def _load(self) -> None:
        if self._model is not None:
            return
        from rltrain.engine.model import load_model

        if self.model_path in ("smollm2_135m", "tiny"):
            model, tokenizer = load_model(self.model_path, dtype=self.dtype)
        else:
            model, tokenizer = load_model("hf", self.model_path, dtype=self.dtype)
        model.eval()
        self._model, self._tokenizer = model, tokenizer
        self._ids = first_token_ids(tokenizer, self.yes_strings, self.no_strings)

    @property
    def model(self):
        self._load()
        return self._model

    @property
    def tokenizer(self):
        self._load()
        return self._tokenizer

    @property
    def answer_token_ids(self) -> tuple[list[int], list[int]]:
        """``(yes_ids, no_ids)`` read at the first output position."""
        self._load()
        return self._ids

    # -- prompts -------------------------------------------------------------------------

    def build_prompt(self, sample: Sample, completion: str) -> str:
        """The exact text the judge reads for one completion (chat template applied)."""
        tail = completion[-self.tail_chars:]
        text = self.template.format(question=sample.question, response=tail.strip(), reference=sample.answer)
        tok = self.tokenizer
        if self.use_chat_template and getattr(tok, "chat_template", None):
            return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                           add_generation_prompt=True)
        return text

    # -- scoring -------------------------------------------------------------------------

    @torch.no_grad()
    def answer_logits(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For each prompt, at the first output position: ``(lse_yes, lse_no, lse_all)``, each
        ``[N]`` float32: log-sum-exp of the logits of the YES ids, the NO ids and the vocabulary."""
        model, tok = self.model, self.tokenizer
        yes_ids, no_ids = self.answer_token_ids
        device = next(model.parameters()).device
        chat = self.use_chat_template and bool(getattr(tok, "chat_template", None))
        keep_last = "logits_to_keep" in inspect.signature(model.forward).parameters
        if tok.pad_token_id is None:
            raise ValueError("the judge tokenizer has no pad token; set one (e.g. the EOS token)")
        out = ([], [], [])
        old_side = tok.padding_side
        tok.padding_side = "left"
        starts = list(range(0, len(prompts), self.batch_size))
        n_batches = len(starts)
        if self.lockstep is not None:  # pad with batches whose results are dropped
            n_batches = int(self.lockstep.max(torch.tensor([float(n_batches)])).item())
        try:
            for b in range(n_batches):
                start = starts[b] if b < len(starts) else None
                batch = prompts[start:start + self.batch_size] if start is not None else ["."]
                enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=not chat)
                input_ids = enc["input_ids"].to(device)  # [B, T]
                mask = enc["attention_mask"].to(device)  # [B, T]
                position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, T], 0 at the first real token
                kwargs = {"logits_to_keep": 1} if keep_last else {}
                logits = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                               use_cache=False, **kwargs).logits[:, -1, :].float()  # [B, V]
                if start is None:
                    continue
                out[0].append(torch.logsumexp(logits[:, yes_ids], dim=-1))
                out[1].append(torch.logsumexp(logits[:, no_ids], dim=-1))
                out[2].append(torch.logsumexp(logits, dim=-1))
        finally:
            tok.padding_side = old_side
        if not out[0]:  # no prompts on this rank (it only kept the others company)
            return tuple(torch.zeros(0) for _ in out)
        return tuple(torch.cat(parts).cpu() for parts in out)

    def __call__(self, samples: Sequence[Sample], completions: Sequence[str]) -> RewardOutput:
        if len(samples) != len(completions):
            raise ValueError(f"{len(samples)} samples for {len(completions)} completions")
        if not completions:
            return RewardOutput(scores=[], info={})
        prompts = [self.build_prompt(s, c) for s, c in zip(samples, completions)]
        lse_yes, lse_no, lse_all = self.answer_logits(prompts)
        soft = torch.sigmoid(lse_yes - lse_no)  # [N] = P(YES) / (P(YES) + P(NO))
        p_yes, p_no = torch.exp(lse_yes - lse_all), torch.exp(lse_no - lse_all)  # [N]
        if self.mode == "soft":
            scores = soft
        elif self.mode == "binary":
            scores = (lse_yes > lse_no).float()
        else:
            scores = p_yes
        info = {
            "correct": (lse_yes > lse_no).tolist(),
            "judge/soft": soft.tolist(),
            "judge/p_yes": p_yes.tolist(),
            "judge/p_no": p_no.tolist(),
        }
        return RewardOutput(scores=scores.tolist(), info=info)
