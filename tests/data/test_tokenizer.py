"""Tokenizer training, loading, special tokens and vocabulary padding (no network)."""

from __future__ import annotations

import json
import logging
import random

import pytest

from biglm.data.tokenizer import (
    TokenizerInfo,
    load_tokenizer,
    padded_vocab_size,
    tokenizer_fingerprint,
    train_tokenizer,
)
from biglm.errors import BiglmError

ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def make_text(n_docs: int, seed: int = 0) -> list[str]:
    """Pseudo-English: a few hundred random words with Zipf-ish frequencies, punctuation, newlines."""
    rng = random.Random(seed)
    words = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 9))) for _ in range(400)]
    docs = []
    for _ in range(n_docs):
        n = rng.randint(5, 120)
        ws = [words[min(int(rng.paretovariate(1.1)) - 1, len(words) - 1)] for _ in range(n)]
        text = " ".join(ws).capitalize() + rng.choice([".", "!", "?", "\n\nThe end."])
        docs.append(text)
    return docs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in make_text(600)))
    (root / "extra.txt").write_text("Über naïve café – 日本語 text.\n\tTabs and  double  spaces.\n")
    tok = train_tokenizer([str(corpus), str(root / "extra.txt")], vocab_size=512, out_dir=root / "bpe")
    return root, tok


def test_trained_tokenizer_loads_with_autotokenizer(trained):
    from transformers import AutoTokenizer

    root, _ = trained
    tok = AutoTokenizer.from_pretrained(str(root / "bpe"))
    assert tok.mask_token == "[MASK]" and tok.bos_token == "[BOS]" and tok.eos_token == "[EOS]"
    assert tok.pad_token == "[PAD]"
    assert len(tok) == 512
    ids = tok.encode("[MASK]", add_special_tokens=False)
    assert ids == [tok.mask_token_id]
    assert len({tok.mask_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 4


@pytest.mark.parametrize("text", [
    "Hello world, this is a test.",
    "  leading spaces and trailing  ",
    "Über naïve café – 日本語 text.\n\tTabs and  double  spaces.\n",
    "Punctuation ( spaced ) , like . this ; and 'quotes' isn't it ?",
])
def test_round_trip_decode(trained, text):
    _, tok = trained
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text


def test_no_special_tokens_added_on_encode(trained):
    _, tok = trained
    assert tok("abc")["input_ids"] == tok.encode("abc", add_special_tokens=False)


def test_padded_vocab_size_counts_added_tokens(trained):
    root, _ = trained
    tok = load_tokenizer(root / "bpe")
    assert padded_vocab_size(tok) == 512 and padded_vocab_size(tok) % 64 == 0
    tok.add_tokens(["<extra_token>"])
    assert len(tok) == 513
    assert padded_vocab_size(tok) == 576
    assert padded_vocab_size(tok, multiple=128) == 640


def test_tokenizer_info(trained):
    _, tok = trained
    info = TokenizerInfo.from_tokenizer(tok)
    assert info.mask_token_id == tok.mask_token_id and info.pad_token_id == tok.pad_token_id
    assert info.vocab_size == 512 and info.n_tokens == 512
    assert info.fingerprint == tokenizer_fingerprint(tok)


def _gpt2_style(path):
    """A byte-level BPE whose only special token is <|endoftext|> (bos = eos = unk), like GPT-2/SmolLM."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(make_text(100), trainer)
    PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            unk_token="<|endoftext|>").save_pretrained(str(path))


def test_load_adds_missing_mask_and_pad(tmp_path, caplog):
    _gpt2_style(tmp_path / "gpt2ish")
    with caplog.at_level(logging.WARNING, logger="biglm.data"):
        tok = load_tokenizer(tmp_path / "gpt2ish")
    assert "has no mask token: added [MASK]" in caplog.text
    assert "has no pad token: added [PAD]" in caplog.text
    assert "bos" not in caplog.text  # bos/eos exist already (both <|endoftext|>)
    assert len(tok) == 302
    assert tok.encode("[MASK]", add_special_tokens=False) == [tok.mask_token_id]
    assert tok.bos_token_id == tok.eos_token_id
    assert padded_vocab_size(tok) == 320
    before = tokenizer_fingerprint(tok)
    tok.add_tokens(["zzz_new"])
    assert tokenizer_fingerprint(tok) != before


def test_load_errors(tmp_path):
    with pytest.raises(BiglmError, match="tokenizer folder not found"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(BiglmError, match="no tokenizer given"):
        load_tokenizer("")


def test_train_rejects_tiny_vocab(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(BiglmError, match="vocab_size"):
        train_tokenizer([str(tmp_path / "a.txt")], vocab_size=100, out_dir=tmp_path / "t")


def test_missing_relative_folder_is_not_tried_on_the_hub(tmp_path, monkeypatch):
    import transformers

    calls: list[str] = []

    def offline(name, *args, **kwargs):
        calls.append(str(name))
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    # data/ exists here: data/x is a local path that is missing, reported at once without any hub request.
    with pytest.raises(BiglmError, match=r"^data/x: tokenizer folder not found \(no .*data/x; not tried as a Hugging "
                                         r"Face Hub name"):
        load_tokenizer("data/x")
    assert calls == []
    # Nothing local by that name: tried on the hub, and the error says both.
    with pytest.raises(BiglmError, match=r"^someorg/sometok: no local folder .*someorg/sometok, and no Hugging Face "
                                         r"Hub tokenizer of that name could be loaded \(We couldn't connect"):
        load_tokenizer("someorg/sometok")
    assert calls == ["someorg/sometok"]
