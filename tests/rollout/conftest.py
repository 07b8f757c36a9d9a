"""A tiny random Llama (GQA, fp32) and a character-level tokenizer, built locally (no downloads)."""
import pytest
import torch

PAD, BOS, EOS = 0, 1, 2


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    # Multi-character tokens so that stop strings can end inside a token and span several tokens.
    pieces = [a + b for a in "abcdefgh" for b in "xyz \n"][:32]
    vocab = {t: i for i, t in enumerate(specials + chars + pieces)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="session")
def tokenizer():
    return _tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        # Larger weights than the default init give peaked, input-dependent distributions, so
        # greedy/sampled outputs are sensitive to any mistake in positions, masks or the cache.
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.mul_(8.0)
    return model.eval()


@pytest.fixture
def prompts():
    """Prompts of different lengths (so batches are left-padded)."""
    return [[BOS, 40, 41, 42, 43, 44], [BOS, 50], [BOS, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69]]


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny model's matmuls are microseconds: a second OpenMP thread only adds
    synchronisation, which is very slow on a loaded shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
