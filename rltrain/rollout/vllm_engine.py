"""vLLM as the rollout engine (``rollout.engine=vllm``), colocated with the trainer (docs/vllm.md).

The engine lives inside the trainer's process (vLLM's in-process engine core, uniprocess executor:
no worker process to leak), beside the policy it samples for, as TRL's colocate mode does. It is
started once from the policy's config and tokenizer with dummy weights, and every set of weights it
samples with is pushed into it from the trainer's live parameters (``push``): at start (after a
resume) and after each training step's optimizer steps. ``generate`` has the own engine's contract
(``rollout.engine.generate``): rows i*n .. i*n+n-1 answer prompt i, EOS kept in the response, and
the sampled tokens' log-probs under ``softmax(logits / temperature)``.

Departures from rltrain's engine (``rollout/engine.py``), all deliberate:
- Random streams: each sequence is its own vLLM request with a seed drawn from (the step's generator,
  global prompt position, sample index), so samples do not depend on the batch or the rank count,
  but they are not the own engine's samples for the same seed (another sampler).
- Log-probs are vLLM's ``processed_logprobs``: after temperature *and* top-k/top-p, so with
  ``rollout.top_p < 1`` or ``rollout.top_k > 0`` a kept token's log-prob is that of the truncated
  distribution (the own engine returns the untruncated one); the mismatch metrics show it.
- No per-token entropies (``Rollout.entropies`` is None): the update computes the logged entropy.
- One push per training step, after all of its optimizer steps: the weights are only read by the
  next rollout. LoRA is pushed merged (``W + (alpha/r)·B·A``, the base model's names); a tied LM
  head is pushed as ``lm_head.weight`` too, since vLLM on a CPU keeps a packed copy of it.
- Several ranks (``launch.nproc_per_node`` > 1, DeepSpeed): one engine per rank, each sampling its own
  slice of the prompts, started in vLLM's ``external_launcher`` mode on the trainer's process group
  (each rank its own tensor-parallel group of one). Under ZeRO-3 the push gathers one parameter at a
  time (every rank pushes: the gathers are collectives).
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator

import torch

from rltrain.engine.lora import is_lora, merged_state_dict
from rltrain.rollout.engine import Rollout, SamplingParams
from rltrain.rollout.sampling import draw_base_seed

# vLLM's CPU attention kernels take these head sizes (vllm/v1/attention/backends/cpu_attn.py).
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
VLLM_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}

log = logging.getLogger(__name__)


def sequence_seed(base: int, prompt_position: int, sample: int) -> int:
    """The vLLM seed of one sequence: a function of the call's draw and the sequence's global place."""
    return hash((base, prompt_position, sample)) % 2**63


def policy_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights vLLM needs, under the HF model's names: LoRA merged, a tied head included
    (a module whose parameters are whole: not ZeRO-3-partitioned, or inside a gather)."""
    sd = module.state_dict()  # keeps lm_head.weight of a tied head (named_parameters would drop it)
    if is_lora(module):
        sd = merged_state_dict(sd, module.rltrain_lora_scaling)
    return {k: v.detach() for k, v in sd.items()}


def is_partitioned(module: torch.nn.Module) -> bool:
    """Whether ``module``'s parameters are ZeRO-3 partitions (DeepSpeed tags them with ``ds_id``)."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


def pushed_weights(module: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of ``policy_state``, produced as vLLM loads them. Under ZeRO-3 each
    parameter is gathered in turn, copied and released (a LoRA policy is gathered whole, to merge):
    a collective, in the state dict's order on every rank; memory beyond the partitions is one
    parameter (vLLM copies each tensor into its own weights as it reads it)."""
    if not is_partitioned(module):
        yield from policy_state(module).items()
        return
    import deepspeed

    if is_lora(module):
        with deepspeed.zero.GatheredParameters(list(module.parameters())):
            state = {k: v.clone() for k, v in policy_state(module).items()}
        yield from state.items()
        return
    params = dict(module.named_parameters(remove_duplicate=False))  # a tied head: both names, one parameter
    for name, value in module.state_dict(keep_vars=True).items():
        p = params.get(name)
        gather = deepspeed.zero.GatheredParameters([p]) if p is not None and hasattr(p, "ds_id") \
            else contextlib.nullcontext()
        with gather:
            yield name, value.detach().clone()


class VLLMEngine:
    """A vLLM engine in this process that samples with the weights last ``push``-ed.

    Args:
        module: the trainer's policy (an HF ``*ForCausalLM``, LoRA-injected or not); its config,
            generation config and dtype define the engine; its weights are pushed at once.
        tokenizer: the policy's tokenizer (written beside the config for vLLM).
        dtype: "fp32" or "bf16", the trainer's compute dtype.
        max_model_len: longest prompt + response the engine must hold (tokens).
        kv_cache_gb: memory reserved for vLLM's KV cache, GiB (``rollout.vllm_kv_cache_gb``).
        seed: vLLM's global seed (the sequences carry their own).
        threads: CPU cores the engine's OpenMP threads are bound to (this process's first ones).

    With ``torch.distributed`` initialised (DeepSpeed, several ranks) every rank must construct its
    engine at the same point (vLLM builds its groups on the trainer's) and call ``push`` together.
    """

    def __init__(self, module: torch.nn.Module, tokenizer, *, dtype: str, max_model_len: int, kv_cache_gb: float,
                 seed: int = 0, threads: int | None = None):
        config = module.config
        head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        on_gpu = torch.cuda.is_available()
        if not on_gpu and head not in CPU_HEAD_SIZES:
            raise ValueError(f"rollout.engine=vllm: vLLM's CPU attention has no kernel for head size {head}; "
                             f"sizes {CPU_HEAD_SIZES} work (model=tiny: model.tiny_hidden_size=128)")
        # In-process engine core: the weights iterator of a push is passed by reference, and there is
        # no engine process that could outlive the trainer.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        bind = {}  # set while the engine starts (its worker binds then), not left to later engines or children
        if not on_gpu and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
            # "auto" leaves one thread on a 2-core machine; bind to the cores this rank computes on:
            # local rank r of the machine takes the r-th block of its threads-per-rank cores.
            n, allowed = threads or torch.get_num_threads(), sorted(os.sched_getaffinity(0))
            first = int(os.environ.get("LOCAL_RANK", "0")) * n % len(allowed)
            cores = (allowed + allowed)[first:first + min(n, len(allowed))]
            bind["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in cores)
        from vllm import LLM

        placement = {}  # where it runs: the GPU share, the trainer's process group
        if on_gpu:
            # vLLM refuses to start unless gpu_memory_utilization × the device's memory is free; beside a
            # trainer that already holds its share, ask for 90% of what is free now (the KV cache itself
            # is kv_cache_gb, as on a CPU).
            free, total = torch.cuda.mem_get_info()
            placement["gpu_memory_utilization"] = 0.9 * free / total
        if torch.distributed.is_initialized():
            # The trainer's process group (ranks, DeepSpeed's single-rank one) is the world: vLLM's
            # external_launcher mode builds on it, one tensor-parallel group of one per rank.
            rank = torch.distributed.get_rank()
            os.environ["RANK"] = str(rank)
            os.environ.setdefault("LOCAL_RANK", str(rank))
            placement["distributed_executor_backend"] = "external_launcher"
        self._on_trainer_group = "distributed_executor_backend" in placement
        self._dir = tempfile.TemporaryDirectory(prefix="rltrain-vllm-")
        config.save_pretrained(self._dir.name)  # config + tokenizer only; the weights come by push
        tokenizer.save_pretrained(self._dir.name)
        if getattr(module, "generation_config", None) is not None:
            module.generation_config.save_pretrained(self._dir.name)
        t0 = time.time()
        with _environ(bind):
            self.llm = LLM(model=self._dir.name, dtype=VLLM_DTYPES[dtype], load_format="dummy", seed=seed,
                           enforce_eager=True,  # torch.compile: 60-90 s more start-up on a CPU, its cache never loads
                           kv_cache_memory_bytes=int(kv_cache_gb * 2**30), max_model_len=max_model_len,
                           logprobs_mode="processed_logprobs", enable_prefix_caching=True,
                           # A prompt is never split over engine steps: a request whose prefill is chunked has its
                           # seeded generator rewound after the step (set_offset), which a CPU generator cannot do
                           # (vLLM 0.32 raises "CPU Generator does not use offset"; seen with SPO-chain's many
                           # continuations). Unchunked, a step holds up to this many tokens, a prompt at least.
                           enable_chunked_prefill=False, max_num_batched_tokens=max(max_model_len, 8192), **placement)
        self.start_s = time.time() - t0
        self._closed = False
        atexit.register(self.close)  # a run that raises still shuts the engine down
        push_s = self.push(module)
        log.info("vLLM engine started in %.1f s (%s, KV cache %.2f GiB, max_model_len %d); first push %.2f s",
                 self.start_s, dtype, kv_cache_gb, max_model_len, push_s)

    def push(self, module: torch.nn.Module) -> float:
        """Replace the engine's weights with ``module``'s current ones; returns the seconds it took."""
        t0 = time.time()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": pushed_weights(module)})
        self.llm.reset_prefix_cache()  # cached prompt keys/values belong to the old weights
        return time.time() - t0

    def generate(self, prompts: list[list[int]], params: SamplingParams, *, eos_token_ids: list[int],
                 pad_token_id: int, generator: torch.Generator | None = None,
                 first_prompt_index: int = 0, max_new_per_prompt: list[int] | None = None) -> Rollout:
        """``params.n`` responses to each prompt, as ``rollout.engine.generate`` returns them
        (``entropies`` None). Each sequence is one request; prefix caching encodes a prompt once.
        ``max_new_per_prompt``: each prompt's own token budget (at most ``params.max_new_tokens``;
        SPO-chain's continuations from a cut state)."""
        from vllm import SamplingParams as VLLMParams

        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("VLLMEngine.generate: every prompt needs at least one token")
        base = draw_base_seed(generator)
        requests, sampling = [], []
        for i, p in enumerate(prompts):
            for j in range(params.n):
                requests.append({"prompt_token_ids": list(p)})
                sampling.append(VLLMParams(
                    n=1, max_tokens=params.max_new_tokens if max_new_per_prompt is None else max_new_per_prompt[i],
                    temperature=params.temperature, top_p=params.top_p,
                    top_k=params.top_k, stop_token_ids=list(eos_token_ids), stop=list(params.stop_strings) or None,
                    include_stop_str_in_output=True, detokenize=bool(params.stop_strings), logprobs=0,
                    seed=sequence_seed(base, first_prompt_index + i, j)))
        outs = self.llm.generate(requests, sampling, use_tqdm=False)
        done = [o.outputs[0] for o in outs]
        N, T = len(done), max(1, max(len(c.token_ids) for c in done))
        tokens = torch.full((N, T), pad_token_id, dtype=torch.long)
        logprobs = torch.zeros((N, T), dtype=torch.float32)
        for r, c in enumerate(done):
            ids = list(c.token_ids)
            tokens[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            logprobs[r, :len(ids)] = torch.tensor([c.logprobs[t][tok].logprob for t, tok in enumerate(ids)])
        lengths = torch.tensor([len(c.token_ids) for c in done], dtype=torch.long)  # [N]
        mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).float()  # [N, T]
        prompt_index = torch.arange(len(prompts)).repeat_interleave(params.n)  # [N]
        return Rollout(prompt_ids=[list(prompts[i]) for i in prompt_index.tolist()], response_ids=tokens,
                       response_mask=mask, logprobs=logprobs, entropies=None, lengths=lengths,
                       finish_reasons=["length" if c.finish_reason == "length" else "stop" for c in done],
                       prompt_index=prompt_index)

    def close(self) -> None:
        """Shut the engine down and free its memory (idempotent; also run at interpreter exit)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        with _trainer_group_kept(self._on_trainer_group):
            self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        self._dir.cleanup()


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    """``values`` set in ``os.environ`` inside the block and removed after it. The thread binding of an engine
    is read while it starts; left set, it would bind a later engine of the process, and every process started
    from it (a test's runs, several ranks), to this engine's cores."""
    os.environ.update(values)
    try:
        yield
    finally:
        for k in values:
            os.environ.pop(k, None)


@contextlib.contextmanager
def _trainer_group_kept(keep: bool):
    """vLLM's in-process shutdown ends with ``destroy_distributed_environment``, which destroys the default
    process group too: when that group is the trainer's (``external_launcher``), only vLLM's own groups
    are destroyed, and the trainer's collectives go on working after ``close``."""
    if not keep:
        yield
        return
    from vllm.distributed import parallel_state as ps

    def destroy_vllm_groups_only():
        if ps._WORLD:
            ps._WORLD.destroy()  # vLLM's world groups (new_group), not the default one
        ps._WORLD = ps._NODE_COUNT = None

    real = ps.destroy_distributed_environment
    ps.destroy_distributed_environment = destroy_vllm_groups_only
    try:
        yield
    finally:
        ps.destroy_distributed_environment = real


def colocated(cfg, module: torch.nn.Module, tokenizer, *, max_model_len: int, dist) -> VLLMEngine:
    """The ``rollout.engine=vllm`` engine of a run on this rank (``max_model_len``: its longest prompt +
    response), bound to the rank's cores."""
    from rltrain.engine.model import resolve_dtype

    return VLLMEngine(module, tokenizer, dtype=resolve_dtype(cfg.model.dtype), seed=cfg.seed + dist.rank,
                      max_model_len=max_model_len, kv_cache_gb=cfg.rollout.vllm_kv_cache_gb)
