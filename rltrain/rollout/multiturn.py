"""Multi-turn episodes, token in / token out: the model's sampled ids are kept as sampled, and each
environment message is appended as the chat template's delta only.

One episode: ``reset`` → prompt ids; then per turn: sample an assistant turn (``generate``) →
``env.step(decoded text)`` → the environment's message, tokenised as the difference between the
conversation rendered with and without it (``ChatDelta``) → appended to the episode's tokens with
loss mask 0. The episode's "response" is everything after the first prompt: model tokens (mask 1,
with their sampling log-probs and entropies) interleaved with environment tokens (mask 0, log-prob
0), so the training forward (``rollout.forward``) sees exactly the tokens that were sampled from,
and the loss, the rollout↔trainer mismatch metrics and TIS/IcePop see the model's tokens only.

Why deltas and not re-rendering the whole conversation each turn: decoding the model's ids and
encoding the text again does not give the same ids (BPE merges across the boundary, normalised
whitespace), so the trainer would score tokens the model never sampled. A template that renders
earlier turns differently once a message is added (e.g. drops an earlier turn's reasoning) breaks
the prefix property: ``ChatDelta`` refuses it with one line naming the model.

KV cache: the live episodes' cache is carried from turn to turn (``rollout/turn_cache.py``): a turn
prefills only the environment's message (and the previous turn's last sampled token), not the whole
context. ``carry_cache=False`` makes each turn one ``generate`` call on the whole context instead
(the recompute path: the same tokens, the log-probs up to float rounding; tested). The cost is
measured per episode (``env/prefill_tokens`` against ``env/episode_tokens``).

Limits (``Limits``): assistant turns, tokens per episode (prompt excluded), tokens of one tool
message (middle cut, said in the message). The tool call's own time and size bounds are the
environment's (``rltrain.envs``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rltrain.rollout.engine import SamplingParams, generate
from rltrain.rollout.sampling import draw_base_seed
from rltrain.rollout.turn_cache import TurnCache

_PROBE = "\u2063probe-assistant-text\u2063"


class TemplateError(ValueError):
    """A chat template whose renderings are not prefix extensions of each other."""


class ChatDelta:
    """Token ids of the first prompt and of each environment message, from the model's template.

    Args:
        tokenizer: the policy's tokenizer (with a chat template).
        model_name: named in errors.
    """

    def __init__(self, tokenizer, model_name: str):
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError(f"model {model_name} has no chat template; multi-turn environments render "
                                "each message with one")
        self.tok, self.model = tokenizer, model_name
        probe = self.render([{"role": "user", "content": "x"}, {"role": "assistant", "content": _PROBE}], False)
        if _PROBE not in probe:
            raise TemplateError(f"model {model_name}: its chat template does not render an assistant message's text")
        # What the template writes after an assistant message's text (SmolLM2: "<|im_end|>\n").
        self.closing = probe[probe.rindex(_PROBE) + len(_PROBE):]
        self.eos_text = tokenizer.eos_token or ""

    def render(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The first prompt: the reset messages and the assistant's generation prompt."""
        return self.encode(self.render(messages, True))

    def env_ids(self, messages: list[dict], new: dict, *, ended_with_eos: bool) -> list[int]:
        """Ids to append after the last assistant turn (``messages[-1]``, sampled) for ``new``: the rest of
        that turn's closing (what the model did not sample of it) and the delta of ``new`` plus the next
        generation prompt.

        Raises:
            TemplateError: the conversation with ``new`` does not start with the conversation without it,
                or the last assistant turn does not end with the template's usual closing.
        """
        before, after = self.render(messages, False), self.render(messages + [new], True)
        if not after.startswith(before) or not before.endswith(self.closing):
            raise TemplateError(
                f"model {self.model}: its chat template renders earlier turns differently once a "
                f"{new['role']} message is added, so the tokens sampled so far would not be what the model "
                "is trained on; multi-turn needs a template whose renderings only append")
        closing = self.closing
        if ended_with_eos and closing.startswith(self.eos_text):
            closing = closing[len(self.eos_text):]  # the model sampled the end-of-turn token itself
        return self.encode(closing + after[len(before):])


@dataclass
class Limits:
    """Per-episode limits.

    Attributes:
        max_turns: assistant turns (≥ 1); the last one is the answer (the environment does not step on it).
        max_episode_tokens: tokens after the first prompt (model and environment); a turn gets at most
            what is left, and an environment message that would leave no room ends the episode.
        max_tool_output_tokens: an environment message longer than this is cut in the middle (said).
    """

    max_turns: int
    max_episode_tokens: int
    max_tool_output_tokens: int


@dataclass
class Episodes:
    """N episodes (n per prompt, rows i*n .. i*n+n-1 for prompt i), padded to T tokens.

    Attributes:
        prompt_ids: per episode, the first prompt's ids (the group's shared reset).
        response_ids: ``[N, T]`` everything after the prompt; pad after ``lengths``.
        mask: ``[N, T]`` float, 1 on sampled tokens, 0 on environment tokens and padding.
        logprobs / entropies: ``[N, T]`` at sampled tokens, 0 elsewhere.
        lengths: ``[N]`` tokens after the prompt (model + environment).
        finished: ``[N]`` bool, the last turn ended by EOS / stop string (not cut by a token limit).
        final_texts: the last assistant turn's text (what a reward scores).
        messages: each episode's conversation (the assistant turns as decoded text).
        stats: per-episode numbers, each a list of N (``turns``, ``tool_calls``, ``called_tool``,
            ``invalid_calls``, ``truncations``, ``masked_tokens``, ``prefill_tokens``, ``episode_tokens``).
    """

    prompt_ids: list[list[int]]
    response_ids: torch.Tensor
    mask: torch.Tensor
    logprobs: torch.Tensor
    entropies: torch.Tensor
    lengths: torch.Tensor
    finished: torch.Tensor
    final_texts: list[str]
    messages: list[list[dict]]
    stats: dict[str, list[float]] = field(default_factory=dict)


STATS = ("turns", "tool_calls", "called_tool", "invalid_calls", "truncations", "masked_tokens", "prefill_tokens",
         "episode_tokens")


@dataclass
class _Turn:
    """One turn's samples, row per live episode (the fields of ``Rollout`` that ``run_episodes`` reads)."""

    response_ids: torch.Tensor  # [K, budget]
    logprobs: torch.Tensor  # [K, budget]
    entropies: torch.Tensor  # [K, budget]
    lengths: torch.Tensor  # [K]
    finish_reasons: list[str]

    @staticmethod
    def of(level) -> "_Turn":
        return _Turn(level.tokens.cpu(), level.logprobs.cpu(), level.entropies.cpu(), level.lengths.cpu(),
                     level.finish)


def cut_tokens(delta: ChatDelta, content: str, max_tokens: int) -> tuple[str, bool]:
    """``content`` with its middle cut to ``max_tokens`` tokens (a note says how many were cut)."""
    ids = delta.encode(content)
    if len(ids) <= max_tokens:
        return content, False
    head, tail = max_tokens // 2, max_tokens - max_tokens // 2
    cut = len(ids) - max_tokens
    return (delta.tok.decode(ids[:head]) + f"\n[... {cut} tokens cut from the middle of this output ...]\n"
            + delta.tok.decode(ids[len(ids) - tail:])), True


def run_episodes(model, tokenizer, delta: ChatDelta, envs: list, samples: list, params: SamplingParams,
                 limits: Limits, *, eos_token_ids: list[int], pad_token_id: int, generator: torch.Generator,
                 first_prompt_index: int = 0, carry_cache: bool = True) -> Episodes:
    """Play ``params.n`` episodes of each of ``samples``.

    Args:
        envs: ``len(samples) * params.n`` fresh environments (``rltrain.envs.ToolEnv``), row order.
        samples: the prompts; every episode of a group is reset from the same sample and must get the
            same first prompt (GRPO compares them from one initial state).
        params: sampling of each turn; ``max_new_tokens`` caps one turn.
        generator: draws one base seed per turn (the first turn draws exactly what the single-turn
            rollout draws); ``first_prompt_index`` as in ``generate``. A later turn's random stream is
            keyed by the episode's global position, so the episodes do not depend on how the prompts
            are split over ranks or calls (a rank whose episodes have all ended stops drawing).
        carry_cache: keep the episodes' KV cache from turn to turn (``TurnCache``); False: each turn
            prefills the whole context again (the recompute path, for comparison).
    """
    n, N = params.n, len(envs)
    if N != len(samples) * n:
        raise ValueError(f"run_episodes: {N} environments for {len(samples)} samples x {n}")
    messages = [env.reset(samples[i // n]) for i, env in enumerate(envs)]
    prompt_ids = [delta.prompt_ids(m) for m in messages]
    for i in range(N):
        if prompt_ids[i] != prompt_ids[i - i % n]:
            raise ValueError(f"the environment's reset gave different first prompts for sample {samples[i // n].id}; "
                             "the episodes of one group must start from the same state")
    toks = [[] for _ in range(N)]
    mask, logp, ent = [[] for _ in range(N)], [[] for _ in range(N)], [[] for _ in range(N)]
    stats = {k: [0.0] * N for k in STATS}
    finished, final = [False] * N, [""] * N
    active = list(range(N))
    eos = set(eos_token_ids)
    cache = TurnCache(model, params, eos_token_ids=eos_token_ids, pad_token_id=pad_token_id,
                      tokenizer=tokenizer) if carry_cache else None
    last_active: list[int] = []  # the episodes of the last turn, in the order of its rows
    for turn in range(limits.max_turns):
        if not active:
            break
        caps = [min(params.max_new_tokens, limits.max_episode_tokens - len(toks[i])) for i in active]
        positions = [first_prompt_index * n + i for i in active]  # a later turn's random stream (see Args)
        if turn == 0:  # one prompt per group, n samples: the single-turn rollout's call
            groups = list(range(first_prompt_index, first_prompt_index + len(samples)))
            if cache is not None:
                ro = _Turn.of(cache.first_turn(prompt_ids[::n], groups, caps[::n], draw_base_seed(generator)))
            else:
                ro = generate(model, prompt_ids[::n], params, eos_token_ids=eos_token_ids, pad_token_id=pad_token_id,
                              tokenizer=tokenizer, generator=generator, first_prompt_index=first_prompt_index,
                              max_new_per_prompt=caps[::n])
            for i in range(N):
                stats["prefill_tokens"][i] += len(prompt_ids[i]) / n
        elif cache is not None:
            row_of = {i: r for r, i in enumerate(last_active)}
            rows = [row_of[i] for i in active]
            level, prefilled = cache.next_turn(rows, [prompt_ids[i] + toks[i] for i in active], positions, caps,
                                               draw_base_seed(generator))
            ro = _Turn.of(level)
            for i, k in zip(active, prefilled):
                stats["prefill_tokens"][i] += k
        else:
            contexts = [prompt_ids[i] + toks[i] for i in active]
            ro = generate(model, contexts, SamplingParams(**{**vars(params), "n": 1}), eos_token_ids=eos_token_ids,
                          pad_token_id=pad_token_id, tokenizer=tokenizer, generator=generator,
                          first_prompt_index=positions, max_new_per_prompt=caps)
            for i, c in zip(active, contexts):
                stats["prefill_tokens"][i] += len(c)
        last_active = active
        still = []
        for row, i in enumerate(active):
            L = int(ro.lengths[row])
            ids = ro.response_ids[row, :L].tolist()
            toks[i] += ids
            mask[i] += [1.0] * L
            logp[i] += ro.logprobs[row, :L].tolist()
            ent[i] += ro.entropies[row, :L].tolist()
            text = tokenizer.decode(ids, skip_special_tokens=True)
            messages[i].append({"role": "assistant", "content": text})
            stats["turns"][i] += 1
            final[i] = text
            if ro.finish_reasons[row] != "stop":  # cut by a token limit: the episode ends
                stats["truncations"][i] += 1
                finished[i] = False
                continue
            finished[i] = True
            if turn == limits.max_turns - 1:  # the last turn allowed: its text is the answer, no step
                continue
            res = envs[i].step(text)
            for k in ("tool_calls", "invalid_calls"):
                stats[k][i] += res.info.get(k, 0.0)
            stats["called_tool"][i] = float(stats["tool_calls"][i] > stats["invalid_calls"][i])
            if res.done or res.message is None:
                continue
            msg = res.message
            content, cut = cut_tokens(delta, str(msg["content"]), limits.max_tool_output_tokens)
            stats["truncations"][i] += float(cut)
            msg = {**msg, "content": content}
            env_ids = delta.env_ids(messages[i], msg, ended_with_eos=bool(ids) and ids[-1] in eos)
            if len(toks[i]) + len(env_ids) >= limits.max_episode_tokens:  # no room left for an answer
                stats["truncations"][i] += 1
                finished[i] = False
                continue
            messages[i].append(msg)
            toks[i] += env_ids
            mask[i] += [0.0] * len(env_ids)
            logp[i] += [0.0] * len(env_ids)
            ent[i] += [0.0] * len(env_ids)
            stats["masked_tokens"][i] += len(env_ids)
            still.append(i)
        active = still
    T = max(1, max(map(len, toks)))

    def padded(rows, value, dtype):
        return torch.tensor([r + [value] * (T - len(r)) for r in rows], dtype=dtype)  # [N, T]

    for i in range(N):
        stats["episode_tokens"][i] = float(len(prompt_ids[i]) + len(toks[i]))
    return Episodes(prompt_ids=prompt_ids, response_ids=padded(toks, pad_token_id, torch.long),
                    mask=padded(mask, 0.0, torch.float32), logprobs=padded(logp, 0.0, torch.float32),
                    entropies=padded(ent, 0.0, torch.float32),
                    lengths=torch.tensor([len(t) for t in toks], dtype=torch.long),
                    finished=torch.tensor(finished), final_texts=final, messages=messages, stats=stats)
