"""Seq2seq fine-tuning and decoding of biglm against transformers' same-shape ``LlamaForCausalLM``.

(1) **Fine-tuning step** (random weights, fp32): biglm's seq2seq step (the task's own batcher and criterion,
    ``biglm.finetune.tasks.seq2seq``: ``BOS source | target`` rows, the target masked at a ratio ~U(0,1),
    logits only at the masked positions, plus the length head's loss at weight 0.1) against Llama (sdpa) on
    ``BOS source SEP target`` rows with the causal-LM loss on the target tokens only: as transformers
    computes it (logits at every position, ``labels`` -100 elsewhere) and with logits only at the target
    positions (``logits_to_keep``), the cheapest the peer can do. Forward, backward, clipping at 1.0 and
    AdamW (the trainer's parameter groups) on the same rows; tokens/s counts source + target tokens of the
    rows, the same for both (the BOS and SEP each model adds are not counted). Steps alternate; the best step
    of each is reported (medians in the JSON).
(2) **Decoding latency** (random weights: speed only): Mask-Predict (``biglm.generate.generate_ids``, T = 10,
    exact prefix cache) of L target tokens after a source, with the fixed length L and with the length
    head's top 3 candidates (random weights: the head's bias is set so that they are L, L-1 and L-2, the
    costliest case), against Llama's greedy ``generate()`` with a KV cache and exactly L new tokens; same
    prompts. Forward passes are counted with a forward hook.
(3) **Quality side by side**: a 2-layer model fine-tuned with ``biglm.finetune`` and a same-shape Llama trained
    by a plain loop (same examples, batch size, steps, optimizer, schedule and clipping; loss on the target
    and EOS) on copying and on reversing 3-8 symbols; exact match, output-length accuracy, latency at batch
    1 and 32 and passes per token of Mask-Predict with the length head's top 3 (both ``length_rule``s), of
    EOS padding (a second fine-tuning run with ``task.seq2seq.length: eos``), each at T = 10 and 4, and of
    Llama's greedy ``generate()``.

Timings take the minimum over interleaved repeats (``common.best_of``); the load average is printed and
stored, so that readers can judge the noise of a shared machine.

    python bench/finetune.py            # full run: tiny and 136M shapes (20 minutes on 2 shared CPU cores)
    python bench/finetune.py --quick    # tiny shape only, fewer repeats, 300 training steps (5 minutes)
    python bench/finetune.py --parts quality --quality-tasks copy    # one part, one task

Prints Markdown tables and writes ``bench/results/finetune.json`` (``finetune_quick.json`` with --quick).
"""

from __future__ import annotations

import os

# Spinning OpenMP workers make timings swing on a shared machine (see bench/generate.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from biglm import BiGLM, ModelConfig
from biglm.finetune import load_finetune_config, load_predictor, setup_finetune
from biglm.finetune.config import FinetuneConfig, Seq2SeqConfig, TaskConfig
from biglm.finetune.setup import read_split
from biglm.finetune.tasks.seq2seq import Seq2SeqExample, Seq2SeqTask
from biglm.generate import generate_ids
from biglm.metrics import generation_metrics
from biglm.train.batches import RowSeeds
from biglm.train.optim import build_optimizer, set_learning_rate
from biglm.train.schedule import learning_rate
from common import PassCounter, best_of, llama_like, machine_info, make_step

PAD, BOS, EOS, MASK, SEP = 0, 1, 2, 3, 5  # SEP: Llama's source/target separator (biglm needs none)
IGNORE = -100
STEPS = 10
RESULTS = Path(__file__).parent / "results"


def seq2seq_task(max_seq_len: int, **options: Any) -> Seq2SeqTask:
    """The library's seq2seq task with these options, for random token ids (no tokenizer needed)."""
    cfg = FinetuneConfig(task=TaskConfig(kind="seq2seq", seq2seq=Seq2SeqConfig(**options)))
    ids = SimpleNamespace(bos_token_id=BOS, eos_token_id=EOS, mask_token_id=MASK, pad_token_id=PAD)
    return Seq2SeqTask(cfg, ids, max_seq_len)


def random_ids(rows: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(8, vocab - 64, (rows, length), generator=g).tolist()


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- (1) fine-tuning step -------------------------------------------------------------------------------------
def causal_rows(pairs: Sequence[tuple[list[int], list[int]]], eos: bool = False) -> tuple[torch.Tensor, ...]:
    """Llama's rows ``BOS source SEP target [EOS]``, right-padded: (input_ids, attention_mask, labels), the
    labels -100 except on the target (and EOS)."""
    rows = [([BOS, *s, SEP, *t, *([EOS] if eos else [])], len(s) + 2) for s, t in pairs]
    width = max(len(r) for r, _ in rows)
    ids = torch.full((len(rows), width), PAD)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE)
    for i, (r, start) in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
        labels[i, start:len(r)] = ids[i, start:len(r)]
    return ids, mask, labels


def bench_train_step(shape: str, batch: int, source_len: int, target_len: int, steps: int) -> dict[str, Any]:
    base = ModelConfig.from_preset(shape)
    task = seq2seq_task(base.max_seq_len, max_target_length=target_len)
    cfg = task.model_config(base)  # + the length head
    sources = random_ids(batch, source_len, cfg.vocab_size, 1)
    targets = random_ids(batch, target_len, cfg.vocab_size, 2)
    examples = [Seq2SeqExample(str(i), s, t, None, "bench") for i, (s, t) in enumerate(zip(sources, targets))]
    b = task.batcher()(examples, RowSeeds(0, 0))
    criterion = task.criterion()
    # The trainer's reduction: each term divided by its count in the batch, times its weight.
    scales = {k: criterion.weights[k] / max(c, 1.0) for k, c in criterion.counts(b).items()}
    device = torch.device("cpu")
    torch.manual_seed(0)
    ours = BiGLM(cfg)

    def ours_loss() -> torch.Tensor:
        parts = criterion(ours, b)
        return sum(parts.terms[k] * scales[k] for k in parts.terms)

    ids, _, labels = causal_rows(list(zip(sources, targets)))
    target = ids[:, -target_len:]
    torch.manual_seed(0)
    llama = llama_like(base, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)

    def llama_target_logits() -> torch.Tensor:
        # Logits at SEP and the target tokens but the last: the positions that predict the target.
        logits = llama(input_ids=ids, logits_to_keep=target_len + 1).logits[:, :-1]
        return F.cross_entropy(logits.float().flatten(0, 1), target.flatten())

    fns = {"biglm": make_step(ours, ours_loss, device),
           "llama": make_step(llama, lambda: llama(input_ids=ids, labels=labels).loss, device),
           "llama_target_logits": make_step(llama, llama_target_logits, device)}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(steps + 1):  # the first round warms up and is not timed
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            if i:
                times[key].append(time.perf_counter() - start)
    tokens = batch * (source_len + target_len)
    out: dict[str, Any] = dict(shape=shape, params=ours.num_parameters(), batch=batch, source=source_len,
                               target=target_len, tokens_per_step=tokens, masked_targets=b.num_targets,
                               row_tokens={"biglm": b.input_ids.shape[1], "llama": ids.shape[1]})
    for key, ts in times.items():
        out[key] = dict(step_s=min(ts), tokens_per_s=tokens / min(ts),
                        median_tokens_per_s=tokens / statistics.median(ts), step_times=ts)
    out["speedup"] = out["biglm"]["tokens_per_s"] / out["llama"]["tokens_per_s"]
    out["speedup_vs_target_logits"] = out["biglm"]["tokens_per_s"] / out["llama_target_logits"]["tokens_per_s"]
    print(f"  {shape:10s} biglm {out['biglm']['tokens_per_s']:7.0f} tok/s  llama {out['llama']['tokens_per_s']:7.0f}"
          f"  llama (target logits) {out['llama_target_logits']['tokens_per_s']:7.0f}  load {load()}", flush=True)
    return out


# --- (2) decoding latency -------------------------------------------------------------------------------------
def counted(fn: Callable[[], Any], counters: Sequence[PassCounter]) -> Callable[[], tuple[Any, int]]:
    """``fn`` returning also the forward passes its run made (the hooks' count)."""
    def run() -> tuple[Any, int]:
        before = sum(c.count for c in counters)
        result = fn()
        return result, sum(c.count for c in counters) - before
    return run


def bench_decode(shape: str, plan: list[tuple[int, int, bool]], source_len: int, new: int) -> list[dict[str, Any]]:
    """Latency per (batch, timed repeats, warm-up) of ``plan``."""
    base = ModelConfig.from_preset(shape)
    cfg = seq2seq_task(base.max_seq_len, max_target_length=new).model_config(base)
    torch.manual_seed(0)
    model = BiGLM(cfg).eval()
    with torch.no_grad():  # random weights: make the head's top 3 lengths L, L-1, L-2 (the costliest case)
        model.length_head.bias[new - 2:new + 1] += torch.tensor([50.0, 51.0, 52.0])
    torch.manual_seed(0)
    llama = llama_like(base, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD).eval()
    ours, theirs = PassCounter(model), PassCounter(llama)
    kw = dict(bos_token_id=BOS, eos_token_id=None, mask_token_id=MASK, pad_token_id=PAD, max_new_tokens=new,
              steps=STEPS)
    rows = []
    for batch, repeats, warmup in plan:
        prompts = random_ids(batch, source_len, cfg.vocab_size, 1234)
        ids = torch.tensor([[BOS, *p] for p in prompts])

        def ar(ids: torch.Tensor = ids) -> torch.Tensor:
            with torch.inference_mode():
                return llama.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                      min_new_tokens=new, do_sample=False, use_cache=True, pad_token_id=PAD)

        timing = best_of({
            "fixed": counted(lambda p=prompts: generate_ids(model, p, **kw), [ours]),
            "top3": counted(lambda p=prompts: generate_ids(model, p, length="predict", length_candidates_k=3,
                                                           **kw), [ours]),
            "ar": counted(ar, [theirs])}, repeats, warmup)
        (t_fixed, (fixed, p_fixed)), (t_top3, (top3, p_top3)), (t_ar, (seq, p_ar)) = (
            timing["fixed"], timing["top3"], timing["ar"])
        assert seq.shape[1] - ids.shape[1] == new and fixed.lengths[0] == new
        assert all(c == [new, new - 1, new - 2] for c in top3.candidates), top3.candidates
        top3_tokens = statistics.mean(top3.lengths)
        row = dict(shape=shape, batch=batch, source=source_len, L=new, T=STEPS,
                   fixed_s=t_fixed, fixed_passes=p_fixed, fixed_passes_per_token=p_fixed / new,
                   top3_s=t_top3, top3_passes=p_top3, top3_passes_per_token=p_top3 / top3_tokens,
                   top3_candidates=top3.candidates[0], top3_chosen=top3.lengths,
                   ar_s=t_ar, ar_passes=p_ar, ar_passes_per_token=p_ar / new,
                   fixed_vs_ar=t_fixed / t_ar, top3_vs_ar=t_top3 / t_ar, repeats=repeats, warmup=warmup, load=load())
        rows.append(row)
        print(f"  {shape:10s} batch {batch:2d}  fixed {t_fixed:7.3f}s  top-3 {t_top3:7.3f}s  autoregressive "
              f"{t_ar:7.3f}s  load {row['load']}", flush=True)
    return rows


# --- (3) quality side by side ---------------------------------------------------------------------------------
LETTERS = [chr(c) for c in range(ord("a"), ord("p") + 1)]


def task_rows(task: str, n: int, seed: int) -> list[dict[str, str]]:
    """``n`` examples of copying or reversing 3-8 symbols of 16."""
    r = random.Random(seed)
    rows = []
    for i in range(n):
        s = [r.choice(LETTERS) for _ in range(r.randint(3, 8))]
        t = s[::-1] if task == "reverse" else s
        rows.append({"id": f"{seed}-{i}", "source": " ".join(s), "target": " ".join(t)})
    return rows


def train_peer(model_cfg: ModelConfig, train_cfg: Any, pairs: list[tuple[list[int], list[int]]],
               seed: int) -> torch.nn.Module:
    """A same-shape Llama trained by a plain loop: epochs of shuffled examples, ``global_batch_size`` rows a
    step, ``steps`` steps, biglm's AdamW groups, schedule and clipping; loss on the target and EOS."""
    torch.manual_seed(seed)
    llama = llama_like(model_cfg, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD).train()
    opt = build_optimizer(llama, train_cfg)
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    for step in range(train_cfg.steps):
        while len(order) < train_cfg.global_batch_size:
            order += torch.randperm(len(pairs), generator=g).tolist()
        take, order = order[:train_cfg.global_batch_size], order[train_cfg.global_batch_size:]
        ids, mask, labels = causal_rows([pairs[i] for i in take], eos=True)
        set_learning_rate(opt, learning_rate(step, train_cfg))
        llama(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        torch.nn.utils.clip_grad_norm_(llama.parameters(), train_cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return llama.eval()


def peer_predict(llama: torch.nn.Module, sources: Sequence[list[int]], max_new: int,
                 batch: int) -> list[list[int]]:
    """Greedy ``generate()`` with a KV cache over left-padded ``BOS source SEP`` prompts, cut at EOS."""
    out: list[list[int]] = []
    for i in range(0, len(sources), batch):
        chunk = [[BOS, *s, SEP] for s in sources[i:i + batch]]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[PAD] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        with torch.inference_mode():
            seq = llama.generate(ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                                 use_cache=True, eos_token_id=EOS, pad_token_id=PAD)
        for row in seq[:, width:].tolist():
            out.append(row[:row.index(EOS)] if EOS in row else row)
    return out


def train_side_by_side(args: argparse.Namespace, task: str, work: Path) -> dict[str, Any]:
    """Fine-tune biglm twice (length head; EOS padding) and train the Llama peer on the same examples."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_checkpoint  # the tests' random checkpoint with a word-level tokenizer (a..z)

    init = make_checkpoint(work / "init", layers=2, hidden=128)
    valid_rows = task_rows(task, 200, 1)
    for name, rows in {"train": task_rows(task, 4000, 0), "valid": valid_rows}.items():
        (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    steps = str(args.quality_steps)
    options = ["--init", str(init), "--data.train", str(work / "train.jsonl"), "--data.valid",
               str(work / "valid.jsonl"), "--task.kind", "seq2seq", "--task.seq2seq.max_target_length", "10",
               "--task.seq2seq.metrics", "[exact_match]", "--train.global_batch_size", "32", "--train.lr", "3e-3",
               "--train.warmup_steps", "20", "--train.steps", steps, "--train.eval_every", steps,
               "--train.save_every", steps, "--train.progress", "false", "--train.tensorboard", "false"]
    out: dict[str, Any] = {"valid_rows": valid_rows, "train_s": {}, "predictors": {}}
    for mode in ("head", "eos"):
        start = time.perf_counter()
        trainer = setup_finetune(load_finetune_config(None, [*options, "--task.seq2seq.length", mode]), work / mode)
        trainer.fit()
        trainer.close()
        out["train_s"][mode] = time.perf_counter() - start
        out["predictors"][mode] = load_predictor(work / mode)
        out["train_cfg"] = trainer.tcfg
        print(f"  {task}: biglm ({mode}) trained in {out['train_s'][mode]:.0f}s", flush=True)
    head = out["predictors"]["head"]
    assert SEP not in head.loaded.tokenizer.get_vocab().values()  # Llama's separator is a free id
    train = read_split(head.cfg, "train", head.task)
    out["valid"] = read_split(head.cfg, "valid", head.task)
    start = time.perf_counter()
    out["llama"] = train_peer(head.loaded.config, out["train_cfg"], [(ex.source, ex.target) for ex in train], seed=0)
    out["train_s"]["llama"] = time.perf_counter() - start
    out["train_examples"] = len(train)
    print(f"  {task}: llama trained in {out['train_s']['llama']:.0f}s", flush=True)
    return out


VARIANTS: list[tuple[str, str, dict[str, Any]]] = [
    ("Mask-Predict T=10, length head top-3, average rule", "head", dict(steps=10, length_rule="average")),
    ("Mask-Predict T=10, length head top-3, joint rule", "head", dict(steps=10, length_rule="joint")),
    ("Mask-Predict T=4, length head top-3, average rule", "head", dict(steps=4, length_rule="average")),
    ("Mask-Predict T=4, length head top-3, joint rule", "head", dict(steps=4, length_rule="joint")),
    ("Mask-Predict T=10, EOS padding to 10", "eos", dict(steps=10)),
    ("Mask-Predict T=4, EOS padding to 10", "eos", dict(steps=4)),
    ("transformers Llama, greedy generate() with KV cache", "llama", {}),
]


def bench_quality(args: argparse.Namespace, task: str) -> dict[str, Any]:
    """Exact match, latency at batch 1 and 32 and forward passes per output token of each decoding method."""
    with tempfile.TemporaryDirectory(prefix="biglm-bench-finetune-") as work:
        trained = train_side_by_side(args, task, Path(work))
    predictors, llama = trained["predictors"], trained["llama"]
    head = predictors["head"]
    examples = trained["valid"]
    refs = [ex.target_text for ex in examples]
    counters = {mode: PassCounter(p.loaded.model) for mode, p in predictors.items()}
    counters["llama"] = PassCounter(llama)
    n1 = args.latency_examples

    def run(mode: str, options: dict[str, Any], batch: int, items: Sequence[Seq2SeqExample]) -> Callable[[], Any]:
        """Predictions of ``items`` decoded ``batch`` at a time: the task's dicts, or Llama's token ids."""
        def biglm() -> list[dict[str, Any]]:
            p = predictors[mode]
            for k, v in options.items():
                setattr(p.task.options, k, v)
            p.task.batch_size = batch
            return p.task.predict(p.loaded.model, items)

        def peer() -> list[list[int]]:
            return peer_predict(llama, [ex.source for ex in items], 11, batch)  # 10 tokens + EOS
        return counted(peer if mode == "llama" else biglm, [counters[mode]])

    def scored(mode: str, preds: list[Any], items: Sequence[Seq2SeqExample]) -> tuple[list[str], list[int], dict]:
        """Texts, generated tokens (EOS excluded) and scores of predictions from ``run``."""
        if mode != "llama":
            task = predictors[mode].task
            return [x["prediction"] for x in preds], [x["length"] for x in preds], task.score(items, preds)
        texts = [t.strip() for t in head.loaded.tokenizer.batch_decode(preds, skip_special_tokens=True)]
        return texts, [len(x) for x in preds], generation_metrics(["exact_match"], texts, refs[:len(items)])

    fns: dict[str, Callable[[], Any]] = {}
    for name, mode, options in VARIANTS:
        fns[f"{name}|1"] = run(mode, options, 1, examples[:n1])
        fns[f"{name}|32"] = run(mode, options, 32, examples)
    timing = best_of(fns, args.quality_repeats)
    rows = []
    for name, mode, _ in VARIANTS:
        (t1, (preds1, passes1)), (t32, (preds, _)) = timing[f"{name}|1"], timing[f"{name}|32"]
        texts, lengths, scores = scored(mode, preds, examples)
        diff = [n - len(ex.target) for n, ex in zip(lengths, examples)]
        texts1, lengths1, _ = scored(mode, preds1, examples[:n1])
        rows.append(dict(
            method=name, exact_match=scores["exact_match"], length_accuracy=scores.get("length_accuracy"),
            output_length_right=100 * sum(d == 0 for d in diff) / len(diff),
            output_shorter=sum(d < 0 for d in diff), output_longer=sum(d > 0 for d in diff),
            batch1_ms_per_example=1000 * t1 / n1, batch32_s=t32, batch32_ms_per_example=1000 * t32 / len(refs),
            # Model calls per generated token at batch 1 (EOS not counted as a token).
            passes_per_token=passes1 / max(sum(lengths1), 1),
            batch1_same_predictions=texts1 == texts[:n1],
            samples=[{**r, "prediction": t} for r, t in zip(trained["valid_rows"][:3], texts)]))
    return dict(task=f"{task} 3-8 symbols of 16", train_examples=trained["train_examples"],
                valid_examples=len(examples), steps=args.quality_steps, batch_size=32,
                model=head.loaded.config.to_dict(), train_seconds=trained["train_s"], latency_examples=n1,
                rows=rows, load=load())


# --- report ---------------------------------------------------------------------------------------------------
def print_tables(r: dict[str, Any]) -> None:
    env = r["env"]
    print(f"\nmachine: {env['machine']}, {env['cpu_count']} cores, {env['threads']} threads, torch {env['torch']}, "
          f"transformers {env['transformers']}; load average (1/5/15 min) at start {env['load_average']}, "
          f"at end {env['load_average_end']}")
    if "train_step" in r:
        print_train(r["train_step"])
    if "decode" in r:
        print_decode(r["decode"])
    for q in r.get("quality", []):
        print_quality(q)
    print_goals(r["goals"])


def print_train(rows: list[dict[str, Any]]) -> None:
    print("\n(1) Fine-tuning step, fp32, forward + backward + clip + AdamW (tokens/s = source + target tokens)\n")
    print("| shape | params | rows × (source + target) | biglm tok/s | Llama tok/s | speedup | Llama, target "
          "logits only, tok/s | speedup | load |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---|")
    for x in rows:
        print(f"| {x['shape']} | {x['params'] / 1e6:.1f}M | {x['batch']} × ({x['source']} + {x['target']}) | "
              f"{x['biglm']['tokens_per_s']:.0f} | {x['llama']['tokens_per_s']:.0f} | {x['speedup']:.2f}× | "
              f"{x['llama_target_logits']['tokens_per_s']:.0f} | {x['speedup_vs_target_logits']:.2f}× | "
              f"{x['load'][0]} |")


def print_decode(rows: list[dict[str, Any]]) -> None:
    print("\n(2) Decoding latency: Mask-Predict T=10 (fixed L / length head top-3) vs greedy generate() with KV "
          "cache, L new tokens\n")
    print("| shape | batch | source | L | fixed L s | passes/token | top-3 s | passes/token | AR s | passes/token "
          "| fixed/AR | top-3/AR | load |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for x in rows:
        print(f"| {x['shape']} | {x['batch']} | {x['source']} | {x['L']} | {x['fixed_s']:.3f} | "
              f"{x['fixed_passes_per_token']:.3f} | {x['top3_s']:.3f} | {x['top3_passes_per_token']:.3f} | "
              f"{x['ar_s']:.3f} | {x['ar_passes_per_token']:.3f} | {x['fixed_vs_ar']:.2f} | {x['top3_vs_ar']:.2f} | "
              f"{x['load'][0]} |")


def print_quality(q: dict[str, Any]) -> None:
    print(f"\n(3) Quality: {q['task']}, {q['train_examples']} training examples, {q['steps']} steps of "
          f"{q['batch_size']}, {q['valid_examples']} validation examples; model "
          f"{q['model']['num_layers']} × {q['model']['hidden_size']}; trained in "
          + ", ".join(f"{k} {v:.0f}s" for k, v in q["train_seconds"].items()) + "\n")
    print(f"| method | exact match % | length head top-1 % | output length right % (shorter/longer) | "
          f"ms/example, batch 1 (first {q['latency_examples']}) | ms/example, batch 32 | passes/token, batch 1 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for x in q["rows"]:
        acc = f"{x['length_accuracy']:.1f}" if x["length_accuracy"] is not None else "–"
        print(f"| {x['method']} | {x['exact_match']:.1f} | {acc} | {x['output_length_right']:.1f} "
              f"({x['output_shorter']}/{x['output_longer']}) | {x['batch1_ms_per_example']:.1f} | "
              f"{x['batch32_ms_per_example']:.2f} | {x['passes_per_token']:.2f} |")
    print(f"load average after: {q['load']}")


def goals(r: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals, judged on this run: step tokens/s ≥ 1.1× Llama's; batch-1 latency ≤ ½ of AR's."""
    out: dict[str, Any] = {}
    for x in r.get("train_step", []):
        out[f"train_step_{x['shape']}"] = dict(goal="speedup >= 1.1", speedup=round(x["speedup"], 3),
                                               met=x["speedup"] >= 1.1,
                                               vs_target_logits=round(x["speedup_vs_target_logits"], 3),
                                               met_vs_target_logits=x["speedup_vs_target_logits"] >= 1.1)
    for x in r.get("decode", []):
        if x["batch"] == 1:
            out[f"latency_batch1_{x['shape']}"] = dict(
                goal="latency / AR <= 0.5", fixed=round(x["fixed_vs_ar"], 3), fixed_met=x["fixed_vs_ar"] <= 0.5,
                top3=round(x["top3_vs_ar"], 3), top3_met=x["top3_vs_ar"] <= 0.5)
    return out


def print_goals(g: dict[str, Any]) -> None:
    print("\nGoals")
    for name, x in g.items():
        if name.startswith("train_step"):
            print(f"- {name}: biglm / Llama = {x['speedup']:.2f}× (≥ 1.1×: {'met' if x['met'] else 'NOT met'}); "
                  f"vs Llama with target logits only {x['vs_target_logits']:.2f}× "
                  f"({'met' if x['met_vs_target_logits'] else 'NOT met'})")
        else:
            print(f"- {name}: fixed L {x['fixed']:.2f} of AR ({'met' if x['fixed_met'] else 'NOT met'}), "
                  f"length head top-3 {x['top3']:.2f} of AR ({'met' if x['top3_met'] else 'NOT met'}) (goal ≤ 0.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shape only, fewer repeats, shorter training")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parts", default="train,decode,quality", help="comma-separated subset to run")
    parser.add_argument("--quality-steps", type=int, default=None, help="training steps in (3) (500; 300 quick)")
    parser.add_argument("--quality-tasks", default="copy,reverse", help="tasks of (3): copy, reverse or both")
    parser.add_argument("--out", default=None, help="JSON file (default bench/results/finetune[_quick].json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    q = args.quick
    args.quality_steps = args.quality_steps or (300 if q else 500)
    args.quality_repeats = 1 if q else 2
    args.latency_examples = 20 if q else 50
    results: dict[str, Any] = {"env": machine_info()}
    if "train" in parts:
        print("(1) fine-tuning step", flush=True)
        shapes = [("tiny", 4, 2 if q else 6)] + ([] if q else [("biglm-136m", 4, 2)])
        results["train_step"] = [{**bench_train_step(s, b, 384, 64, n), "load": load()} for s, b, n in shapes]
    if "decode" in parts:
        print("(2) decoding latency", flush=True)
        # 136M at batch 8 runs minutes per call: timed once, without a warm-up run.
        plans = {"tiny": [(1, 1 if q else 3, True), (8, 1 if q else 3, True)]}
        if not q:
            plans["biglm-136m"] = [(1, 2, True), (8, 1, False)]
        results["decode"] = [row for s, plan in plans.items() for row in bench_decode(s, plan, 384, 64)]
    if "quality" in parts:
        print("(3) quality", flush=True)
        results["quality"] = [bench_quality(args, task) for task in args.quality_tasks.split(",")]
    results["env"]["load_average_end"] = load()
    results["env"]["quick"] = q
    results["goals"] = goals(results)
    print_tables(results)
    out = Path(args.out or RESULTS / ("finetune_quick.json" if q else "finetune.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
