"""The models ``bench/decode_frontier.py`` measures, trained by the project's own recipes and cached.

- the data: the bundled corpus (``biglm.data.fetch_demo_corpus``, as ``biglm prepare-data``) and the demo
  tokenizer (``biglm.data.train_tokenizer``, 8,192 tokens, as ``scripts/demo.sh``), each skipped when present;
- ``pretrained``: a run of ``configs/demo.yaml`` with an objective preset (``biglm`` for the masked model,
  ``causal`` for the generative-perplexity judge, the ``compare`` causal recipe) and a reduced step budget;
- ``copy_model``: a Mask-Predict seq2seq model fine-tuned from random weights of the demo shape on copying
  8-16 real words (``biglm.data.builders.make_wordtasks --words 8 16``), EOS padding to 32 target tokens
  (``task.seq2seq.length: eos``), lr 3e-3, batch 32 (docs/results/learning.md's recipe).

A run folder holding an intact checkpoint is reused as it is; folders are named with their step budget
(``runs/frontier/masked_600``), so a quick run never stands in for a full one. ``describe`` reads back what a
folder was trained with (steps, final validation loss) for the results JSON.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from biglm.checkpoint import is_intact, model_state_dict, newest_intact, write_checkpoint
from biglm.configurable import load_yaml

SEQ2SEQ_TARGET = 32
"""Target tokens of the copy model (EOS-padded): L of the seq2seq measurements."""
COPY_WORDS = (8, 16)


def ensure_data(data: Path) -> dict[str, Any]:
    """The bundled corpus and the demo tokenizer in ``data`` (what ``scripts/demo.sh`` makes), made if missing."""
    from biglm.data import fetch_demo_corpus, train_tokenizer

    made: dict[str, Any] = {}
    tic = time.perf_counter()
    if not (data / "wiki.jsonl").is_file():
        fetch_demo_corpus(data)
        made["corpus_s"] = round(time.perf_counter() - tic, 1)
    if not (data / "tokenizer" / "tokenizer.json").is_file():
        tic = time.perf_counter()
        sources = [str(p) for p in (data / "wiki.jsonl", data / "shakespeare.jsonl") if p.is_file()]
        train_tokenizer(sources, 8192, data / "tokenizer")
        made["tokenizer_s"] = round(time.perf_counter() - tic, 1)
    return made


def trained(run: Path) -> bool:
    """Whether ``run`` (a run folder) holds an intact checkpoint to reuse."""
    return newest_intact(run)[0] is not None


def describe(run: Path, seconds: float | None = None) -> dict[str, Any]:
    """What ``run`` was trained with: its folder, objective, steps, last logged losses (and training time)."""
    cfg = load_yaml(run / "config.yaml") if (run / "config.yaml").is_file() else {}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()] \
        if (run / "metrics.jsonl").is_file() else []
    val = [r for r in rows if "val_loss" in r]
    out: dict[str, Any] = {"run": str(run), "steps": (cfg.get("train") or {}).get("steps"),
                           "objective": (cfg.get("objective") or {}).get("name"),
                           "trained_now": seconds is not None}
    if val:
        out["val_loss"] = round(val[-1]["val_loss"], 4)
    if seconds is not None:
        out["train_s"] = round(seconds, 1)
    return out


def data_overrides(data: Path) -> list[str]:
    """``configs/demo.yaml``'s data section pointed at ``data`` (its paths are relative to the repository)."""
    sources = [{"path": str(data / "wiki.jsonl"), "weight": 0.8}]
    if (data / "shakespeare.jsonl").is_file():
        sources.append({"path": str(data / "shakespeare.jsonl"), "weight": 0.2})
    return ["--data.tokenizer", str(data / "tokenizer"), "--data.sources", json.dumps(sources),
            "--data.cache_dir", str(data.parent / "cache")]


def quiet(steps: int) -> list[str]:
    """Overrides of a bench training run: ``steps`` steps, one evaluation and checkpoint at the end, no progress
    bar or TensorBoard."""
    return ["--train.steps", str(steps), "--train.eval_every", str(steps), "--train.save_every", str(steps),
            "--train.progress", "false", "--train.tensorboard", "false"]


def fit(trainer: Any, run: Path) -> dict[str, Any]:
    """Train ``trainer`` to the end and describe ``run`` with the seconds it took."""
    tic = time.perf_counter()
    trainer.fit()
    trainer.close()
    return describe(run, time.perf_counter() - tic)


def pretrained(run: Path, config: Path, preset: str, steps: int, data: Path, extra: list[str] = ()) -> dict[str, Any]:
    """``run``: ``config`` pretrained with objective ``preset`` for ``steps`` steps, unless already there."""
    if trained(run):
        return describe(run)
    from biglm.train.config import load_run_config
    from biglm.train.setup import setup

    cfg = load_run_config(config, ["--objective.preset", preset, *quiet(steps), *data_overrides(data), *extra])
    print(f"  pretraining {run} ({preset}, {steps} steps)", flush=True)
    return fit(setup(cfg, run), run)


def copy_data(data: Path, out: Path, sizes: tuple[int, int, int]) -> Path:
    """Copy tasks of 8-16 real words from the corpus (train / valid / test), made once into ``out``."""
    from biglm.data.builders.make_wordtasks import main as make_wordtasks

    if not (out / "copy_test.jsonl").is_file():
        code = make_wordtasks([str(data / "wiki.jsonl"), "--out", str(out), "--words", *map(str, COPY_WORDS),
                               "--sizes", *map(str, sizes), "--number-sizes", "20", "10", "10"])
        if code:
            raise SystemExit(f"make_wordtasks failed ({code})")
    return out


def random_init(folder: Path, preset: str, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A randomly initialised masked model of ``preset``'s shape with the demo tokenizer."""
    from biglm import BiGLM, ModelConfig
    from biglm.data import load_tokenizer

    if is_intact(folder):
        return folder
    tok = load_tokenizer(tokenizer_dir)
    torch.manual_seed(seed)
    cfg = ModelConfig.from_preset(preset, vocab_size=-(-len(tok) // 64) * 64)
    return write_checkpoint(folder, model_state_dict(BiGLM(cfg)), cfg, tok)


def copy_model(run: Path, data: Path, tasks: Path, steps: int, preset: str = "demo") -> dict[str, Any]:
    """``run``: a masked seq2seq model fine-tuned from random ``preset`` weights to copy 8-16 words."""
    if trained(run):
        return describe(run)
    from biglm.finetune import load_finetune_config, setup_finetune

    init = random_init(run.parent / f"{run.name}_init", preset, data / "tokenizer")
    cfg = load_finetune_config(None, [
        "--init", str(init), "--task.kind", "seq2seq", "--task.seq2seq.length", "eos",
        "--task.seq2seq.max_target_length", str(SEQ2SEQ_TARGET), "--task.seq2seq.metrics", "[exact_match]",
        "--data.train", str(tasks / "copy_train.jsonl"), "--data.valid", str(tasks / "copy_valid.jsonl"),
        "--data.test", str(tasks / "copy_test.jsonl"), "--train.global_batch_size", "32", "--train.lr", "3e-3",
        "--train.warmup_steps", "30", "--train.keep_last", "1", *quiet(steps)])
    print(f"  fine-tuning {run} (copy {COPY_WORDS[0]}-{COPY_WORDS[1]} words, {steps} steps)", flush=True)
    return fit(setup_finetune(cfg, run), run)
