import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # Test models are tiny: one thread is as fast as two, keeps floating-point reductions reproducible,
    # and avoids OpenMP spin-waiting when another process shares the two cores.
    torch.set_num_threads(1)
    yield


SYMBOLS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
WORDS = ["yes", "no", "maybe", "way", "so", "?", "@", "find"]


def word_tokenizer():
    """A whitespace word-level tokenizer over a..z and a few words, with [PAD] [BOS] [EOS] [MASK] [UNK]."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[BOS]": 1, "[EOS]": 2, "[MASK]": 3, "[UNK]": 4}
    vocab |= {w: 8 + i for i, w in enumerate(SYMBOLS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]",
                                   mask_token="[MASK]", unk_token="[UNK]")


def make_checkpoint(folder, layers: int = 2, hidden: int = 64, max_seq_len: int = 64, seed: int = 0,
                    family: str = "masked"):
    """A randomly initialised checkpoint (word tokenizer, 64-token vocabulary) to fine-tune from."""
    from biglm import BiGLM, ModelConfig
    from biglm.checkpoint import model_state_dict, write_checkpoint

    torch.manual_seed(seed)
    cfg = ModelConfig("test", 64, hidden, layers, 4, 2, 2 * hidden, max_seq_len=max_seq_len, family=family)
    return write_checkpoint(folder, model_state_dict(BiGLM(cfg)), cfg, word_tokenizer())


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run where CUDA is; elsewhere they are skipped, saying why."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
