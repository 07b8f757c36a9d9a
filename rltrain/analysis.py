"""The model-running half of ``rltrain-report``: the token-entropy analysis (Wang et al. 2025,
"Beyond the 80/20 Rule"; ``rltrain.report.token_entropy`` holds the definitions, statistics and
outputs), and the ``rltrain-report`` entry point, which sends ``--token-entropy`` here and
everything else (run directories: tables, plots, the entropy-law fit) to ``rltrain.report.cli``.

It sits above ``report/`` (like ``cli.py``): it loads a model (``engine``), samples with the
rollout engine and scores with the training forward (``rollout``), so that ``report/`` itself only
reads files and plots.

    rltrain-report --token-entropy --model smollm2_135m --data arith --n 64
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import yaml
from rich.console import Console

from rltrain.data import build_dataset, render_prompt
from rltrain.engine.model import eos_token_ids, load_model
from rltrain.report import cli as report_cli
from rltrain.report import token_entropy as TE
from rltrain.rollout import SamplingParams, generate
from rltrain.rollout.forward import response_logprobs


@torch.no_grad()
def score_responses(model, tokenizer, prompt_ids: list[list[int]], response_ids: torch.Tensor,
                    mask: torch.Tensor, *, micro_batch_size: int = 8) -> torch.Tensor:
    """Per-token entropies ``[N, T]`` of given responses (teacher-forced, T = 1); 0 on padding."""
    out = []
    for s in range(0, len(prompt_ids), micro_batch_size):
        _, ent = response_logprobs(model, prompt_ids[s:s + micro_batch_size], response_ids[s:s + micro_batch_size],
                                   pad_id=tokenizer.pad_token_id, temperature=1.0, with_entropy=True)
        out.append(ent.float())
    return torch.cat(out) * mask.float()


def sample_responses(model, tokenizer, prompts: list[str], *, max_new_tokens: int, temperature: float,
                     seed: int, batch_size: int = 16) -> TE.Responses:
    """Sample one response per prompt with the rollout engine, then score its token entropies."""
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, n=1)
    eos = eos_token_ids(model, tokenizer)
    ents, masks, ids, comps = [], [], [], []
    for s in range(0, len(prompts), batch_size):
        p_ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts[s:s + batch_size]]
        ro = generate(model, p_ids, params, eos_token_ids=eos, pad_token_id=tokenizer.pad_token_id,
                      tokenizer=tokenizer, generator=torch.Generator().manual_seed(seed + s))
        ents.append(score_responses(model, tokenizer, ro.prompt_ids, ro.response_ids, ro.response_mask))
        masks.append(ro.response_mask)
        ids.append(ro.response_ids)
        comps += [tokenizer.decode(r[: int(n)], skip_special_tokens=True) for r, n in zip(ro.response_ids, ro.lengths)]
    T = max(e.shape[1] for e in ents)
    pad = lambda x, v: torch.nn.functional.pad(x, (0, T - x.shape[1]), value=v)  # noqa: E731
    return TE.Responses(entropy=torch.cat([pad(e, 0.0) for e in ents]), mask=torch.cat([pad(m, 0.0) for m in masks]),
                     response_ids=torch.cat([pad(i, tokenizer.pad_token_id) for i in ids]),
                     prompts=list(prompts), completions=comps)


def given_responses(model, tokenizer, rows: list[dict], *, use_chat_template: bool = True) -> TE.Responses:
    """Score ``{"prompt", "response"}`` rows: the prompt rendered as in training (chat template),
    the response tokenized as is."""
    prompts = [render_prompt(tokenizer, r["prompt"], use_chat_template=use_chat_template) for r in rows]
    p_ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    r_ids = [tokenizer(r["response"], add_special_tokens=False).input_ids for r in rows]
    if any(not p for p in p_ids) or any(not r for r in r_ids):
        raise ValueError("every row needs a non-empty prompt and response")
    T = max(len(r) for r in r_ids)
    resp = torch.full((len(rows), T), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T))
    for i, r in enumerate(r_ids):
        resp[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1.0
    ent = score_responses(model, tokenizer, p_ids, resp, mask)
    return TE.Responses(entropy=ent, mask=mask, response_ids=resp, prompts=prompts,
                     completions=[r["response"] for r in rows])


def load_prompts(data: str, n: int, split: str, data_args: dict, tokenizer, use_chat_template: bool) -> list[str]:
    splits = build_dataset(data, **data_args)
    samples = getattr(splits, split)
    if len(samples) < n:
        raise ValueError(f"data={data} split {split} has {len(samples)} prompts, fewer than --n {n}")
    return [render_prompt(tokenizer, s.question, use_chat_template=use_chat_template) for s in samples[:n]]


def report_token_entropy(args, console: Console) -> int:
    """``rltrain-report --token-entropy``: sample (or score ``--texts``), then write the statistics."""
    out = args.out or Path("report") / "token_entropy"
    model, tok = load_model(args.model, args.model_path, dtype=args.dtype, seed=args.seed)
    torch.manual_seed(args.seed)
    chat = not args.no_chat_template
    if args.texts is not None:
        rows = [json.loads(line) for line in args.texts.read_text().splitlines() if line.strip()]
        res = given_responses(model, tok, rows, use_chat_template=chat)
        title = f"{args.model}: {len(rows)} given responses from {args.texts.name}"
    else:
        data_args = {}
        for kv in args.data_arg:
            if "=" not in kv:
                raise SystemExit(f"--data-arg expects KEY=VALUE, got {kv!r}")
            k, v = kv.split("=", 1)
            data_args[k] = yaml.safe_load(v)
        prompts = load_prompts(args.data, args.n, args.split, data_args, tok, chat)
        res = sample_responses(model, tok, prompts, max_new_tokens=args.max_new_tokens,
                               temperature=args.temperature, seed=args.seed)
        title = (f"{args.model} on {args.data} ({args.split}, n={args.n}, T={args.temperature}, "
                 f"max {args.max_new_tokens} new tokens, {args.dtype})")
    stats = TE.token_entropy_stats(res.entropy, res.mask, res.response_ids, top_ratio=args.top_ratio, k=args.top_k,
                                   decode=lambda t: TE.token_text(tok, t))
    console.print(TE.stats_rich(stats, title))
    files = TE.write_outputs(stats, res, out, title)
    console.print("wrote " + ", ".join(str(f) for f in files))
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``rltrain-report`` command."""
    args = report_cli.parse_args(argv)
    if args.token_entropy:
        return report_token_entropy(args, report_cli.console())
    return report_cli.report(args)


if __name__ == "__main__":
    sys.exit(main())
