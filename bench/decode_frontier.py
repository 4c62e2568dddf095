"""The speed-quality frontier of parallel decoding, on models trained by the project.

Every setting of ``frontier_settings.SETTINGS`` (Mask-Predict at several T; the threshold strategy with the
threshold, factor and margin commit rules; blocks of 8/16/32 tokens × suffix cache prefix/blocks/dual × commit
Mask-Predict or a rule) is compared with the reference, full recompute at one token per pass (threshold 1.0,
T = L), on the same inputs:

- quality (``frontier_quality``): exact match of a Mask-Predict seq2seq model fine-tuned from random demo-shape
  weights to copy 8-16 real words (EOS-padded targets of L = 32, so EOS early exit counts, on for the settings
  that have it); generative perplexity under a separately pre-trained causal model of the same size, distinct-2
  and repetition rate of continuations of held-out Wikipedia prompts (24 tokens, 64 new, greedy, EOS banned) by
  the demo-size masked model, with the causal model's own greedy and sampled continuations as reference rows;
- cost (``frontier_cost``): forward passes per token, tokens/s and latency generating 64 tokens at batch 1 and
  8, at the demo shape (trained weights) and the ``biglm-136m`` shape (random weights, each setting at the pass
  count the trained model needed, committing evenly: see ``frontier_cost``), against transformers'
  ``generate()`` of the same-shape Llama and biglm's causal decoder, same prompts, best of interleaved repeats;
  and at 136M the limit analysis (FLOPs and bytes of a pass against an autoregressive step).

``best`` lists per shape and batch the fastest setting within the quality tolerance: exact match at most 1 point
below the reference's, generative perplexity at most 5% above the reference's (a lower one counts as within: the
settings that lower it here also raise distinct-2), and a repetition rate at most 0.05 above the reference's (so
that degenerate, repetitive text cannot pass by being likely). The models come
from ``frontier_models`` (trained when missing, cached under ``runs/frontier``): the masked and causal runs
given (``--masked runs/demo``, ``--causal runs/demo-causal``) when they exist, else configs/demo.yaml at
``--pretrain-steps``.

    python bench/decode_frontier.py            # full: 12 minutes from a fresh clone on 2 CPU cores (busy: 16)
    python bench/decode_frontier.py --quick    # demo shape, batch 1, few settings and prompts, tiny budgets (2)

Prints Markdown tables; writes ``bench/results/decode_frontier[_quick].json`` and (full) the plot
``docs/results/decode_frontier.png``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench/generate.py

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

import frontier_cost as cost
import frontier_models as fm
from biglm.checkpoint import load_model
from biglm.errors import BiglmError
from biglm.finetune.predict import load_predictor
from biglm.finetune.setup import read_split
from common import llama_like, machine_info
from frontier_quality import Continuation, CopyTask, held_out_prompts
from frontier_report import best_settings, goal, plot, print_report
from frontier_settings import REFERENCE, SETTINGS, Setting, readable

ROOT = Path(__file__).resolve().parent.parent
EM_TOLERANCE, PPL_TOLERANCE, REPETITION_TOLERANCE = 1.0, 0.05, 0.05
COPY_EM_WANTED = 80.0
"""The copy model's exact match at full recompute that makes its deltas meaningful."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="demo shape, batch 1, few settings and prompts")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", type=Path, default=ROOT / "data/demo", help="the corpus and tokenizer (made if missing)")
    p.add_argument("--config", type=Path, default=ROOT / "configs/demo.yaml", help="pretraining recipe")
    p.add_argument("--runs", type=Path, default=ROOT / "runs/frontier", help="where trained models are cached")
    p.add_argument("--masked", type=Path, default=ROOT / "runs/demo", help="masked run to use if it exists")
    p.add_argument("--causal", type=Path, default=ROOT / "runs/demo-causal", help="causal run to use if it exists")
    p.add_argument("--pretrain-steps", type=int, help="steps of a missing masked / causal run (600; quick 100)")
    p.add_argument("--copy-steps", type=int, help="fine-tuning steps of the copy model (1000; quick 200)")
    p.add_argument("--copy-sizes", type=int, nargs=3, help="copy examples train / valid / test (3000 200 200)")
    p.add_argument("--init-preset", default="demo", help="the copy model's shape")
    p.add_argument("--shapes", help="timed shapes, the first the trained one (demo,biglm-136m; quick demo)")
    p.add_argument("--batches", help="timed batch sizes (1,8; quick 1)")
    p.add_argument("--prompts", type=int, help="held-out prompts for the continuation quality (32; quick 8)")
    p.add_argument("--prompt-tokens", type=int, default=24)
    p.add_argument("--new", type=int, default=64, help="new tokens of the continuations and timings")
    p.add_argument("--copy-batch1", type=int, help="copy examples decoded one at a time for passes (5)")
    p.add_argument("--repeats", type=int, default=2, help="timed interleaved runs, the best kept (larger shapes "
                                                          "at batch > 1: one)")
    p.add_argument("--candidates", type=int, default=1, help="settings timed at the larger shapes per batch")
    p.add_argument("--out", type=Path, help="JSON (default bench/results/decode_frontier[_quick].json)")
    p.add_argument("--plot", type=Path, help="PNG (default docs/results/decode_frontier.png; quick: none)")
    a = p.parse_args(argv)
    q = a.quick
    a.pretrain_steps = a.pretrain_steps or (100 if q else 600)
    a.copy_steps = a.copy_steps or (200 if q else 1000)
    a.copy_sizes = tuple(a.copy_sizes or (3000, 200, 200))
    a.shapes = (a.shapes or ("demo" if q else "demo,biglm-136m")).split(",")
    a.batches = [int(b) for b in (a.batches or ("1" if q else "1,8")).split(",")]
    a.prompts = a.prompts or (8 if q else 32)
    a.copy_batch1 = a.copy_batch1 if a.copy_batch1 is not None else 5
    a.out = a.out or ROOT / "bench/results" / ("decode_frontier_quick.json" if q else "decode_frontier.json")
    if a.plot is None and not q:
        a.plot = ROOT / "docs/results/decode_frontier.png"
    torch.set_num_threads(a.threads)
    return a


def get_models(a: argparse.Namespace) -> dict[str, Any]:
    """The three models (trained into ``a.runs`` when missing) and what each was trained with."""
    made = fm.ensure_data(a.data)
    runs: dict[str, Path] = {}
    info: dict[str, Any] = {"data": {"folder": str(a.data), **made}}
    for family, preset, given in (("masked", "biglm", a.masked), ("causal", "causal", a.causal)):
        run = given if fm.trained(given) else a.runs / f"{family}_{a.pretrain_steps}"
        info[family] = fm.pretrained(run, a.config, preset, a.pretrain_steps, a.data)
        runs[family] = run
    sizes = "_".join(map(str, a.copy_sizes))
    runs["tasks"] = tasks = fm.copy_data(a.data, a.runs / f"copy_tasks_{sizes}", a.copy_sizes)
    runs["seq2seq"] = a.runs / f"copy_{a.init_preset}_{a.copy_steps}"
    info["seq2seq"] = {**fm.copy_model(runs["seq2seq"], a.data, tasks, a.copy_steps, a.init_preset),
                       "task": f"copy {fm.COPY_WORDS[0]}-{fm.COPY_WORDS[1]} real words, EOS padding to "
                               f"{fm.SEQ2SEQ_TARGET} tokens, from random {a.init_preset} weights"}
    return {"runs": runs, "info": info}


def measure_quality(settings: list[Setting], cont: Continuation, copy: CopyTask, a: argparse.Namespace
                    ) -> dict[str, dict[str, Any]]:
    """Each setting's continuation and copy quality (``unsupported`` when the engine refuses it)."""
    rows: dict[str, dict[str, Any]] = {}
    for s in settings:
        row: dict[str, Any] = {**s.as_dict(), "kwargs": s.kwargs(a.new)}
        try:
            row["continuation"] = cont.measure(s.kwargs(a.new))
            row["copy"] = copy.measure(s.kwargs(fm.SEQ2SEQ_TARGET, eos_exit=True), a.copy_batch1)
            row["copy"]["kwargs"] = s.kwargs(fm.SEQ2SEQ_TARGET, eos_exit=True)
        except BiglmError as e:
            row = {**s.as_dict(), "unsupported": str(e)}
            print(f"  {s.name}: unsupported ({e})", flush=True)
            rows[s.name] = row
            continue
        rows[s.name] = row
        print(f"  {s.name:44s} gen-ppl {row['continuation']['gen_ppl']:8.1f}  EM {row['copy']['exact_match']:5.1f}  "
              f"passes {row['continuation']['passes_all']:3d}", flush=True)
    ref = rows[REFERENCE]
    for row in rows.values():
        if "unsupported" in row:
            continue
        d_em = row["copy"]["exact_match"] - ref["copy"]["exact_match"]
        d_ppl = row["continuation"]["gen_ppl"] / ref["continuation"]["gen_ppl"] - 1
        row["quality_delta"] = {"exact_match_points": round(d_em, 2), "gen_ppl_relative": round(d_ppl, 4)}
        d_rep = row["continuation"]["repetition_4"] - ref["continuation"]["repetition_4"]
        row["quality_delta"]["repetition_4"] = round(d_rep, 4)
        row["within_tolerance"] = d_em >= -EM_TOLERANCE and d_ppl <= PPL_TOLERANCE and d_rep <= REPETITION_TOLERANCE
    return rows


def measure_cost(a: argparse.Namespace, quality: dict[str, dict[str, Any]], masked: Any, causal: Any,
                 prompts: list[list[int]], ids: dict[str, int], banned: list[int]) -> tuple[list[dict], dict]:
    """Timed rows per shape and batch; the limit analysis at the largest shape (``{}`` when only one)."""
    measured = [SETTINGS_BY_NAME[n] for n, r in quality.items() if "unsupported" not in r]
    rows: list[dict[str, Any]] = []
    limit: dict[str, Any] = {}
    trained_shape = a.shapes[0]
    for shape in a.shapes:
        if shape == trained_shape:
            model, judge, config = masked.model, causal.model, masked.config
        else:
            model, judge, config = cost.random_models(shape)
        peers = cost.Peers(config, judge, ids, banned, a.new)
        for batch in a.batches:
            batch_prompts = (prompts * batch)[:batch]
            fns = peers.fns(batch_prompts)
            big = shape != trained_shape
            if big:  # the fastest within tolerance at the trained shape, at the pass counts it needed there
                chosen = candidates(rows, trained_shape, batch, a.candidates, a.new)
            else:  # every setting at batch 1 (the plot); those within tolerance at larger batches
                chosen = {s.name: s.kwargs(a.new) for s in measured
                          if batch == a.batches[0] or quality[s.name]["within_tolerance"]}
            for name, kwargs in chosen.items():
                fns[name] = cost.masked_fn(model, batch_prompts, ids, banned, a.new, kwargs)
            repeats = 1 if big and batch > 1 else a.repeats
            print(f"  timing {shape} batch {batch}: {len(fns)} runs × {repeats}", flush=True)
            timed = cost.timed_rows(shape, batch, fns, a.new, repeats)
            for r in timed:
                r["kwargs"] = chosen.get(r["setting"])
                r["load_average"] = [round(x, 2) for x in os.getloadavg()]
                if r["setting"] in quality:
                    q = quality[r["setting"]]
                    r["quality_delta"], r["within_tolerance"] = q["quality_delta"], q["within_tolerance"]
                    how = f"run at the {trained_shape} model's pass count: " if big else ""
                    r["readable"] = f"{r['setting']} ({how}{readable(r['kwargs'])})"
            rows += timed
        if shape != trained_shape and shape == a.shapes[-1]:
            step = {r["setting"]: r["latency_s"] / a.new for r in rows if r["shape"] == shape and r["batch"] == 1
                    and r["kwargs"] is None}
            limit = cost.limit_analysis(model, config, prompts[:1], ids, a.new, step, a.repeats)
            limit["shape"] = shape
    return rows, limit


def candidates(rows: list[dict[str, Any]], shape: str, batch: int, k: int, new: int) -> dict[str, dict[str, Any]]:
    """The ``k`` fastest settings within the quality tolerance at ``shape`` and ``batch``, as they run at a
    larger shape: the pass count they needed there, committing evenly (``Setting.even``)."""
    ok = [r for r in rows if r["shape"] == shape and r["batch"] == batch and r.get("within_tolerance")]
    ok.sort(key=lambda r: -r["tok_s"])
    return {r["setting"]: SETTINGS_BY_NAME[r["setting"]].even(r["passes"] - 1, new) for r in ok[:k]}


def measure_copy_cost(a: argparse.Namespace, quality: dict[str, dict[str, Any]], copy: CopyTask,
                      examples: list[Any], ids: dict[str, int]) -> list[dict[str, Any]]:
    """The copy task's cost (``frontier_cost.copy_timing``) per shape and batch: at the trained shape every setting
    within the exact-match tolerance; at a larger shape (random weights) the ``a.candidates`` fastest of them at the
    pass count each needed on the trained model."""
    ok = {n: q for n, q in quality.items() if "unsupported" not in q and q["quality_delta"]["exact_match_points"]
          >= -EM_TOLERANCE}
    rows: list[dict[str, Any]] = []
    for shape in a.shapes:
        trained = shape == a.shapes[0]
        model = copy.model if trained else cost.random_models(shape)[0]
        torch.manual_seed(0)
        llama = llama_like(model.config, bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                           pad_token_id=ids["pad"]).eval()
        for batch in a.batches:
            chosen = examples[:max(a.copy_batch1, batch) * (1 if batch == 1 else 2)]
            if trained:
                settings = {n: q["copy"]["kwargs"] for n, q in ok.items()}
            else:
                fastest = sorted((r for r in rows if r["shape"] == a.shapes[0] and r["batch"] == batch
                                  and r["setting"] in ok), key=lambda r: -r["tok_s"])[:a.candidates]
                settings = {r["setting"]: SETTINGS_BY_NAME[r["setting"]].even(round(r["passes_per_example"]) - 1,
                                                                             fm.SEQ2SEQ_TARGET) for r in fastest}
            print(f"  copy timing {shape} batch {batch}: {len(settings) + 1} runs", flush=True)
            rows += cost.copy_timing(shape, batch, model, llama, [ex.source for ex in chosen],
                                     [len(ex.target) for ex in chosen], ids, copy.banned, fm.SEQ2SEQ_TARGET, settings,
                                     1 if not trained and batch > 1 else a.repeats)
    for r in rows:
        if r["setting"] in ok:
            r["quality_delta"] = {"exact_match_points": ok[r["setting"]]["quality_delta"]["exact_match_points"]}
            r["within_tolerance"] = True
            r["readable"] = f"{r['setting']} ({readable(r['kwargs'])})"
    return rows


SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    tic = time.perf_counter()
    env = machine_info()
    print("models", flush=True)
    models = get_models(a)
    t_models = time.perf_counter() - tic
    masked, causal = load_model(models["runs"]["masked"]), load_model(models["runs"]["causal"])
    if masked.tokenizer.get_vocab() != causal.tokenizer.get_vocab():
        raise BiglmError("the masked and causal runs have different tokenizers: generative perplexity needs one")
    predictor = load_predictor(models["runs"]["seq2seq"])
    predictor.cfg.data.test = str(models["runs"]["tasks"] / "copy_test.jsonl")
    examples = read_split(predictor.cfg, "test", predictor.task)
    prompts = held_out_prompts(models["runs"]["masked"], a.data / "wiki.jsonl", masked.tokenizer, a.prompts,
                               a.prompt_tokens)
    cont = Continuation(masked, causal, prompts, a.new)
    copy = CopyTask(predictor, examples, fm.SEQ2SEQ_TARGET)
    settings = [s for s in SETTINGS if s.quick or not a.quick]
    print(f"quality: {len(settings)} settings, {len(prompts)} prompts, {len(examples)} copy examples", flush=True)
    quality = measure_quality(settings, cont, copy, a)
    ar_quality = {"causal greedy": cont.measure_autoregressive(False),
                  "causal sampled (T=1, seed 0)": cont.measure_autoregressive(True)}
    t_quality = time.perf_counter() - tic - t_models
    tok = masked.tokenizer
    ids = {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "mask": tok.mask_token_id, "pad": tok.pad_token_id}
    print("cost", flush=True)
    timing, limit = measure_cost(a, quality, masked, causal, prompts, ids, cont.banned)
    copy_timing = measure_copy_cost(a, quality, copy, examples, ids)
    results: dict[str, Any] = {
        "env": {**env, "quick": a.quick, "load_average_end": [round(x, 2) for x in os.getloadavg()],
                "seconds": {"models": round(t_models, 1), "quality": round(t_quality, 1),
                            "total": round(time.perf_counter() - tic, 1)}},
        "models": models["info"], "tolerance": {"exact_match_points": EM_TOLERANCE, "gen_ppl_relative": PPL_TOLERANCE,
                                                "repetition_4": REPETITION_TOLERANCE},
        "reference": REFERENCE, "prompts": len(prompts), "prompt_tokens": a.prompt_tokens, "new_tokens": a.new,
        "copy_examples": len(examples), "copy_target_tokens": fm.SEQ2SEQ_TARGET,
        "quality": list(quality.values()), "ar_quality": ar_quality, "timing": timing, "copy_timing": copy_timing,
        "limit_analysis": limit}
    ref_em = quality[REFERENCE]["copy"]["exact_match"]
    results["copy_reference_exact_match"] = ref_em
    results["copy_reference_ok"] = ref_em >= COPY_EM_WANTED
    if ref_em < COPY_EM_WANTED:
        print(f"note: the copy model's exact match at full recompute is {ref_em:.1f}% (< {COPY_EM_WANTED}%): "
              "too few --copy-steps for its deltas to mean much", flush=True)
    results["best"] = best_settings(timing, "continuation") + best_settings(copy_timing, "copy")
    results["goal"] = goal(results["best"], a.shapes, results["copy_reference_ok"])
    results["env"]["seconds"]["total"] = round(time.perf_counter() - tic, 1)
    print_report(results)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=1, ensure_ascii=False))
    print(f"\nwrote {a.out}")
    if a.plot:
        plot(results, a.plot)
        print(f"wrote {a.plot}")
    return results


if __name__ == "__main__":
    main()
