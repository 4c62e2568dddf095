"""A synthetic alignment task that runs in seconds on a laptop: prompts, a rule reward, a pretraining corpus and a
micro "instruction-tuned" start policy (used by the tests, ``bench/align.py``, ``bench/rlhf.py`` and the commands
of docs/how-to/align.md).

A prompt is 3-6 distinct letters of a..p and ``?`` (half of the prompts hold the letter a); the right answer is
``yes`` when a is among the letters, else ``no``. The pretraining documents are prompts followed by ``yes`` or ``no``
at random, so a policy pre-trained on them answers in the right form and is right half of the time (mean reward
about 0.6); the reward needs it to attend to one token type (no copying), and its pretraining loss on held-out
documents rises as it stops answering at random — the drift the λ_PT term holds back.

    python -m biglm.align.synthetic data/align [--family causal|bidirectional-ar|masked] [--steps 100]

writes ``prompts.jsonl``, ``valid.jsonl``, ``pretrain.jsonl``, ``pretrain-valid.jsonl`` and a pre-trained micro
policy ``policy-<family>/`` (a word-level tokenizer over a..z and a few words) into the folder.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from biglm.align.config import load_align_config
from biglm.align.setup import POLICIES, build_parts, read_prompts
from biglm.checkpoint import load_model
from biglm.data.packing import pack_documents
from biglm.families import FAMILIES, get_family
from biglm.finetune.data import ExampleStream
from biglm.finetune.tasks.base import TokenIds
from biglm.generate.engine import cut_at_eos
from biglm.train.config import RunConfig
from biglm.train.setup import setup
from biglm.train.streams import DataBundle

LETTERS = [chr(c) for c in range(ord("a"), ord("p") + 1)]
WORDS = ["yes", "no", "maybe", "way", "so", "?", "@", "find"]
REWARD = "py:biglm.align.synthetic:contains_a"


def right_answer(prompt: str) -> str:
    return "yes" if "a" in prompt.split()[:-1] else "no"


def contains_a(prompts: list[str], responses: list[str]) -> list[float]:
    """The rule reward: 1 for the right answer alone, 0.5 for a response that starts with it, else 0."""
    out = []
    for prompt, response in zip(prompts, responses):
        words, right = response.split(), right_answer(prompt)
        out.append(1.0 if words == [right] else 0.5 if words[:1] == [right] else 0.0)
    return out


JUDGE_SEPARATOR = "\n<<>>\n"
JUDGE_TEMPLATE = "{prompt}" + JUDGE_SEPARATOR + "{response_a}" + JUDGE_SEPARATOR + "{response_b}"
"""The template to ask ``RuleJudge`` with (``biglm.annotate.judge.judge_pairs``)."""


class RuleJudge:
    """An oracle AI judge of the task: each response's rule reward, answered in the three lines of biglm's judge
    template (acceptable when the reward is above 0; the better one by reward; equal rewards are both good at 1,
    else both not good). Stands where a judge model would, to test the loop pairs -> judge -> reward model."""

    name = "rule"

    def ask(self, questions: list[str]) -> list[str]:
        replies = []
        for q in questions:
            prompt, a, b = q.split(JUDGE_SEPARATOR)
            ra, rb = contains_a([prompt, prompt], [a, b])
            best = "A" if ra > rb else "B" if rb > ra else "both good" if ra == 1.0 else "both not good"
            replies.append(f"A: {'acceptable' if ra > 0 else 'unacceptable'}\n"
                           f"B: {'acceptable' if rb > 0 else 'unacceptable'}\nHelpfulness: {best}")
        return replies


def sample_pairs(init: str | Path, prompts_file: str, seeds: tuple[int, int],
                 max_new_tokens: int = 2) -> list[tuple[str, str, str]]:
    """(prompt, response A, response B) for every prompt of ``prompts_file``: the policy ``init`` sampled with
    two seeds (temperature 1, as ``biglm align`` samples it)."""

    cfg = load_align_config(None, ["--init", str(init), "--reward", REWARD,
                                   "--rollout.max_new_tokens", str(max_new_tokens)])
    parts = build_parts(cfg)
    model = load_model(init).model.eval()
    prompts = read_prompts(prompts_file, parts.cfg, parts.tokenizer, parts.policy)
    eos = parts.tokenizer.eos_token_id
    texts = []
    with torch.no_grad():
        for seed in seeds:
            responses = parts.policy.sample(model, [p.ids for p in prompts], seed, 1.0)
            texts.append([parts.tokenizer.decode(cut_at_eos(r, eos), skip_special_tokens=True).strip() or "(empty)"
                          for r in responses])
    return [(p.value, a, b) for p, a, b in zip(prompts, *texts)]


def letter_prompt(r: random.Random) -> list[str]:
    """3-6 distinct letters of a..p, half of the prompts with the letter a."""
    letters = r.sample(LETTERS[1:], r.randint(3, 6))
    if r.random() < 0.5:
        letters[r.randrange(len(letters))] = "a"
    return letters


def prompts(n: int, seed: int) -> list[dict[str, str]]:
    r = random.Random(seed)
    return [{"prompt": " ".join(letter_prompt(r)) + " ?"} for _ in range(n)]


def corpus(n: int, seed: int) -> list[dict[str, str]]:
    """Pretraining documents: a prompt, '?', and "yes" or "no" at random."""
    r = random.Random(seed)
    return [{"text": " ".join(letter_prompt(r)) + " ? " + r.choice(["yes", "no"])} for _ in range(n)]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_task(folder: str | Path) -> dict[str, str]:
    """The task's files in ``folder``: {name: path}."""
    folder = Path(folder)
    return {"prompts": write_jsonl(folder / "prompts.jsonl", prompts(256, 1)),
            "valid": write_jsonl(folder / "valid.jsonl", prompts(64, 2)),
            "pretrain": write_jsonl(folder / "pretrain.jsonl", corpus(2000, 3)),
            "pretrain_valid": write_jsonl(folder / "pretrain-valid.jsonl", corpus(200, 4))}


def tokenizer() -> Any:
    """A whitespace word-level tokenizer over a..z and a few words, with [PAD] [BOS] [EOS] [MASK] [UNK]."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[BOS]": 1, "[EOS]": 2, "[MASK]": 3, "[UNK]": 4}
    vocab |= {w: 8 + i for i, w in enumerate([chr(c) for c in range(ord("a"), ord("z") + 1)] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]",
                                   mask_token="[MASK]", unk_token="[UNK]")


class _Rows:
    """Packed rows as a pre-training row stream."""

    def __init__(self, rows: list) -> None:

        self.examples = ExampleStream(rows, None, 0)

    def batches(self, batch_size: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        for part in self.examples.batches(batch_size):
            yield {"input_ids": torch.stack([r[0] for r in part]), "document_ids": torch.stack([r[1] for r in part])}

    def state_dict(self) -> dict[str, Any]:
        return self.examples.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.examples.load_state_dict(state)

    def set_phase(self, phase: str) -> None:
        """No anneal phase."""


def pretrain_policy(folder: str | Path, family: str = "causal", steps: int = 100, lr: float = 1e-2) -> Path:
    """A micro policy (2 layers, width 64) pre-trained on the corpus with its family's objective, on the shared
    trainer; returns its run folder."""
    import dataclasses


    tok = tokenizer()
    ids = TokenIds.of(tok)
    docs = tok([d["text"] for d in corpus(2000, 0)], add_special_tokens=False)["input_ids"]
    rows = pack_documents(docs, 32, ids.bos, ids.eos, ids.pad)
    objective = get_family(family).objectives[0]  # the family's default objective
    # the documents are short: BiGLM's objective takes a loss on pieces of 4 tokens and more
    sections = {"biglm": {"min_loss_tokens": 4}} if objective == "biglm" else {}
    model = {"name": "align-demo", "vocab_size": 64, "hidden_size": 64, "num_layers": 2, "num_heads": 4,
             "num_kv_heads": 2, "intermediate_size": 128, "max_seq_len": 32, "family": family}
    train = {"steps": steps, "global_batch_size": 16, "lr": lr, "min_lr": lr / 10, "warmup_steps": 10,
             "log_every": 50, "save_every": 0, "eval_batches": 1, "progress": False, "tensorboard": False,
             "prefetch": 0, "schedule": "cosine", "device": "cpu"}
    cfg = RunConfig.from_dict({"model": model, "objective": {"name": objective, **sections}, "data": {"seq_len": 32},
                               "train": train})
    data = lambda c, env, micro: DataBundle(_Rows(rows), None, mask_token_id=ids.mask, vocab_size=64,
                                            n_tokens=len(tok), tokenizer=tok, special_ids=dataclasses.asdict(ids))
    out = Path(folder) / f"policy-{family}"
    trainer = setup(cfg, out, data=data)
    trainer.fit()
    trainer.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m biglm.align.synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--family", default="causal", choices=[name for name, fam in FAMILIES.items()
                                                           if fam.decoder in POLICIES])
    p.add_argument("--steps", type=int, default=100, help="pre-training steps of the start policy")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    files = write_task(args.folder)
    policy = pretrain_policy(args.folder, args.family, args.steps)
    print(json.dumps({**files, "policy": str(policy), "reward": REWARD}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
