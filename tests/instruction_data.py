"""Synthetic instruction data for the tests: three task kinds (reverse, uppercase, answer from context), each
asked with several phrasings built from shared words, and a word-level tokenizer that knows them all."""

from __future__ import annotations

import random

LOWER = [chr(c) for c in range(ord("a"), ord("l") + 1)]  # 12 content symbols
UPPER = [c.upper() for c in LOWER]
KEYS = ["k1", "k2", "k3", "k4", "k5"]
FIELDS = KEYS[:3]
KEYWORDS = {"reverse": ["reverse", "backwards", "invert"], "upper": ["uppercase", "capitalize", "caps"],
            "answer": ["answer", "lookup", "find"]}
FRAMES = ["please {k} the letters", "{k} this", "now {k} it", "{k} the input please"]
FRAME_WORDS = ["please", "the", "letters", "this", "now", "it", "input", "context", "question", "=", ";"]
ROLE_WORDS = ["System:", "User:", "Assistant:", "be", "helpful"]


def instruction_tokenizer():
    """Whitespace word-level tokenizer over the symbols, keys, instruction words and role labels."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = LOWER + UPPER + KEYS + [w for ws in KEYWORDS.values() for w in ws] + FRAME_WORDS + ROLE_WORDS
    vocab = {"[PAD]": 0, "[BOS]": 1, "[EOS]": 2, "[MASK]": 3, "[UNK]": 4} | {w: 5 + i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]",
                                   mask_token="[MASK]", unk_token="[UNK]")


def instructions(kind: str, held_out: bool) -> list[str]:
    """The phrasings of ``kind``: 12 = 3 keywords x 4 frames; ``held_out`` gives the 3 kept out of training
    (keyword i with frame i), else the other 9."""
    out = []
    for i, k in enumerate(KEYWORDS[kind]):
        for j, frame in enumerate(FRAMES):
            if (i == j) == held_out:
                out.append(frame.format(k=k))
    return out


def example(kind: str, instruction: str, r: random.Random, lengths: tuple[int, int] = (4, 4)) -> tuple[str, str]:
    """(input, output) of one example of ``kind`` (``lengths``: the range of an input's symbol count)."""
    if kind == "answer":  # a record of three fields (always in this order); the question names one
        values = [r.choice(LOWER) for _ in FIELDS]
        ask = r.randrange(len(FIELDS))
        context = " ; ".join(f"{k} = {v}" for k, v in zip(FIELDS, values))
        return f"context {context} question {FIELDS[ask]}", values[ask]
    s = [r.choice(LOWER) for _ in range(r.randint(*lengths))]
    out = list(reversed(s)) if kind == "reverse" else [c.upper() for c in s]
    return " ".join(s), " ".join(out)


def rows(n: int, seed: int, held_out: bool = False, chat_share: float = 0.5,
         lengths: tuple[int, int] = (4, 4), max_turns: int = 1) -> list[dict]:
    """``n`` records over the three kinds: FLAN-style, or (``chat_share`` of them) ``messages`` lists of 1 to
    ``max_turns`` exchanges (earlier ones of any kind, with seen phrasings; the last one of the record's kind)."""
    r = random.Random(seed)
    out = []
    for i in range(n):
        kind = ("reverse", "upper", "answer")[i % 3]
        instruction = r.choice(instructions(kind, held_out))
        source, target = example(kind, instruction, r, lengths)
        if r.random() < chat_share:
            history = []
            for _ in range(r.randint(1, max_turns) - 1):
                k = r.choice(list(KEYWORDS))
                ins = r.choice(instructions(k, False))
                src, tgt = example(k, ins, r, lengths)
                history += [{"role": "user", "content": f"{ins}\n\n{src}"}, {"role": "assistant", "content": tgt}]
            out.append({"id": f"{seed}-{i}", "kind": kind, "messages": [
                *history, {"role": "user", "content": f"{instruction}\n\n{source}"},
                {"role": "assistant", "content": target}]})
        else:
            out.append({"id": f"{seed}-{i}", "kind": kind, "instruction": instruction, "input": source,
                        "output": target})
    return out
