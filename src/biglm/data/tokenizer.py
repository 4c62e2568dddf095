"""Tokenizers: load any Hugging Face tokenizer with the special tokens BiGLM needs, or train a BPE one.

The objectives need a single-id mask token, BOS/EOS to frame documents and PAD for ragged batches.
``load_tokenizer`` adds whichever is missing (``[MASK]``, ``[BOS]``, ``[EOS]``, ``[PAD]``) and says so in
one log line; ``padded_vocab_size`` gives the embedding rows (added tokens included, rounded up).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biglm.data.config import SourceConfig
from biglm.data.sources import iter_documents
from biglm.errors import BiglmError, check
from biglm.families.glm import GLM

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

log = logging.getLogger("biglm.data")

# Attribute -> token string added when a loaded tokenizer lacks it (order fixes the new ids).
DEFAULT_SPECIALS = {"bos_token": "[BOS]", "eos_token": "[EOS]", "pad_token": "[PAD]", "mask_token": "[MASK]"}
TRAINED_SPECIALS = ["[PAD]", "[BOS]", "[EOS]", "[UNK]", "[MASK]"]
# GLM's extra tokens (added only for GLM models): sentence and generation blanks, and the start / end of a
# span in part B (the paper's [START] / [END]; the authors' code calls them sop / eop).
GLM_SPECIALS = dict(GLM.special_tokens)
SENTENCE_END_CHARS = ".!?"


def padded_vocab_size(tokenizer: PreTrainedTokenizerFast, multiple: int = 64) -> int:
    """``len(tokenizer)`` (which counts added tokens) rounded up to a multiple of ``multiple``."""
    check(multiple > 0, f"padded_vocab_size: multiple={multiple} must be > 0")
    return -(-len(tokenizer) // multiple) * multiple


def ensure_special_tokens(tokenizer: PreTrainedTokenizerFast) -> list[str]:
    """Add the special tokens in ``DEFAULT_SPECIALS`` that ``tokenizer`` lacks; return what was added."""
    missing = {attr: tok for attr, tok in DEFAULT_SPECIALS.items() if getattr(tokenizer, attr, None) is None}
    if missing:
        tokenizer.add_special_tokens(missing)
        name = tokenizer.name_or_path or "(in memory)"
        for attr, tok in missing.items():
            log.warning("tokenizer %s has no %s token: added %s", name, attr.removesuffix("_token"), tok)
    return list(missing.values())


def ensure_glm_tokens(tokenizer: PreTrainedTokenizerFast) -> list[str]:
    """Add GLM's special tokens (``GLM_SPECIALS``) that ``tokenizer`` lacks, after the existing ones (so the
    ids of every other token stay as they are); return what was added."""
    have = set(tokenizer.get_vocab())
    missing = [t for t in GLM_SPECIALS.values() if t not in have]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    return missing


def special_ids(tokenizer: Any) -> dict[str, int]:
    """BOS, EOS, [MASK] and PAD ids of ``tokenizer``; one clear error when one is missing (PAD: EOS if absent)."""
    ids = {}
    for name in ("bos", "eos", "mask"):
        value = getattr(tokenizer, f"{name}_token_id", None)
        if value is None:
            raise BiglmError(f"tokenizer has no {name} token; generation needs BOS, EOS and [MASK] "
                             "(load it with biglm.data.tokenizer.load_tokenizer)")
        ids[name] = int(value)
    pad = getattr(tokenizer, "pad_token_id", None)
    ids["pad"] = int(pad) if pad is not None else ids["eos"]
    return ids


@dataclass
class TokenIds:
    """The special token ids that fine-tuning, alignment and sequence scores need (from the checkpoint's
    tokenizer)."""

    bos: int
    eos: int
    mask: int
    pad: int

    @classmethod
    def of(cls, tokenizer: Any) -> TokenIds:
        """The ids of ``tokenizer`` (one clear error when BOS, EOS or [MASK] is missing)."""
        return cls(**special_ids(tokenizer))


def glm_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """Ids of GLM's special tokens (``smask``, ``gmask``, ``sop``, ``eop``); one-line error when absent."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in GLM_SPECIALS.values() if t not in vocab]
    check(not missing, f"tokenizer {tokenizer.name_or_path} lacks GLM's special tokens {', '.join(missing)} "
          "(a glm model's checkpoint carries them; add them with biglm.data.tokenizer.ensure_glm_tokens)",
          BiglmError)
    return {name: int(vocab[tok]) for name, tok in GLM_SPECIALS.items()}


def sentence_end_ids(tokenizer: PreTrainedTokenizerFast) -> tuple[int, ...]:
    """Ids of the tokens that end a sentence (their text ends with ``.``, ``!`` or ``?``), for GLM's
    sentence blanks; byte-level and WordPiece token strings keep these characters as they are."""
    specials = set(tokenizer.all_special_tokens)
    return tuple(sorted(i for t, i in tokenizer.get_vocab().items()
                        if t not in specials and t.rstrip().endswith(tuple(SENTENCE_END_CHARS))))


def load_tokenizer(name_or_path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load a (fast) Hugging Face tokenizer from a local folder or hub name and add missing specials.

    Raises ``BiglmError`` with one line when it cannot be loaded.
    """
    from transformers import AutoTokenizer

    name = str(name_or_path)
    check(bool(name), "no tokenizer given (set data.tokenizer to a Hugging Face name or a folder)", BiglmError)
    local = Path(name).expanduser()
    # The local path is checked first. Hub ids look like "org/name" or "name"; a path that starts like a
    # local one, has more parts, or whose first part exists here is a missing folder, not a hub id (trying
    # the hub without a network costs most of a minute of retries).
    if not local.exists():
        first = Path(name).parts[0] if Path(name).parts else name
        if name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name or \
                (name.count("/") == 1 and Path(first).exists()):
            raise BiglmError(f"{name}: tokenizer folder not found (no {local.absolute()}; not tried as a Hugging "
                             "Face Hub name since it is a local path)")
    try:
        tok = AutoTokenizer.from_pretrained(str(local) if local.exists() else name)
    except Exception as e:  # OSError, ValueError, hub errors: one line for the user
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if local.exists():
            raise BiglmError(f"{name}: could not load the tokenizer in this folder ({msg})") from None
        raise BiglmError(f"{name}: no local folder {local.absolute()}, and no Hugging Face Hub tokenizer of that "
                         f"name could be loaded ({msg})") from None
    if not getattr(tok, "is_fast", False):
        raise BiglmError(f"{name}: not a fast (Rust `tokenizers`) tokenizer; convert it to tokenizer.json first")
    ensure_special_tokens(tok)
    return tok


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """A short hash of the vocabulary, merges, normalisation and added tokens (not padding/truncation)."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec.pop("padding", None)
    spec.pop("truncation", None)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TokenizerInfo:
    """The ids and sizes the rest of biglm needs, without carrying the tokenizer itself."""

    name: str
    vocab_size: int
    """Padded vocabulary size (a multiple of 64, counting added tokens): the embedding rows."""
    n_tokens: int
    """``len(tokenizer)``: real token count, added tokens included."""
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int
    mask_token_id: int
    fingerprint: str

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerFast, multiple: int = 64) -> TokenizerInfo:
        """Read the ids from ``tokenizer`` (which must have BOS, EOS, PAD and MASK; see ``load_tokenizer``)."""
        ids = {}
        for attr in DEFAULT_SPECIALS:
            i = getattr(tokenizer, f"{attr}_id", None)
            check(i is not None, f"tokenizer {tokenizer.name_or_path} has no {attr}; load it with load_tokenizer",
                  BiglmError)
            ids[f"{attr}_id"] = int(i)
        return cls(name=str(tokenizer.name_or_path), vocab_size=padded_vocab_size(tokenizer, multiple),
                   n_tokens=len(tokenizer), fingerprint=tokenizer_fingerprint(tokenizer), **ids)


def _texts(files: Sequence[str | os.PathLike], text_field: str) -> Iterator[str]:
    for f in files:
        yield from iter_documents(SourceConfig(path=str(f), text_field=text_field))


def train_tokenizer(files: Sequence[str | os.PathLike], vocab_size: int, out_dir: str | os.PathLike,
                    min_frequency: int = 2, text_field: str = "text") -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``files`` and save it as a Hugging Face tokenizer folder.

    ``files`` are paths or globs of ``.txt``/``.jsonl``/``.json``/``.parquet`` (read as in
    ``biglm.data.sources``). ``vocab_size`` includes the special tokens ``[PAD] [BOS] [EOS] [UNK]
    [MASK]`` and the 256 byte symbols. Byte-level BPE never needs ``[UNK]`` and decodes any text back
    exactly. The result loads with ``AutoTokenizer.from_pretrained(out_dir)``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    check(vocab_size >= 256 + len(TRAINED_SPECIALS),
          f"train_tokenizer: vocab_size={vocab_size} must be at least {256 + len(TRAINED_SPECIALS)} "
          "(256 bytes + special tokens)")
    check(len(files) > 0, "train_tokenizer: no input files", BiglmError)
    bpe = Tokenizer(models.BPE())
    # No prefix space: decoding then reproduces the text exactly, leading space or not.
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=TRAINED_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(_texts(files, text_field), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="[BOS]", eos_token="[EOS]",
                                  pad_token="[PAD]", mask_token="[MASK]", unk_token="[UNK]",
                                  clean_up_tokenization_spaces=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out))
    return load_tokenizer(out)
