"""Sequence scores of a Mask-Predict policy measured against each other, and DPO with each.

A micro masked policy (2 layers, hidden 64, the tests' word-level tokenizer) is first fine-tuned with the
``seq2seq`` kind (length head) on prompts of k+1 to k+4 distinct letters and '?', answered half of the time with
the preferred answer (the prompt's last k letters, last first) and half of the time with the dispreferred one
(its first k letters, in order): an ambivalent policy. k = 2 and 4 (``--answer-tokens``). Then, on that policy:

(1) **Agreement**: ``chain`` against ``elbo`` (16 samples) on the responses of 200 held-out pairs: Pearson
    correlation of the scores and of the pairs' margins (chosen - rejected), and the share of pairs both rank
    the same way.
(2) **Noise**: the ELBO estimate's standard deviation over 10 seeds, by number of samples (mean over responses).
(3) **Cost**: suffix rows and tokens per pair (chosen + rejected) of each score, on these answers and on random
    16- and 64-token responses (a random model: cost only), and the time of one scoring call.
(4) **DPO with each score** (``task.dpo.score``: chain, elbo, one-step; β = 0.5, lr 1e-3): the held-out
    implicit-reward margin and pairwise accuracy, and what matters: the share of held-out prompts the
    Mask-Predict policy answers with the preferred answer (length head's top 3 candidates, T = k + 2), before
    and after.

    python bench/masked_dpo.py            # about 12 minutes on 2 shared CPU cores
    python bench/masked_dpo.py --quick    # fewer steps

Prints Markdown tables and writes ``bench/results/masked_dpo.json`` (``masked_dpo_quick.json`` with --quick).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from biglm.checkpoint import load_model
from biglm.data.tokenizer import TokenIds
from biglm.evaluate.sequence_score import masked_sequence_scores
from biglm.finetune import load_finetune_config, setup_finetune
from biglm.generate.engine import generate_ids
from common import machine_info

LETTERS = [chr(c) for c in range(ord("a"), ord("p") + 1)]
COMMON = ["--train.progress", "false", "--train.tensorboard", "false", "--train.global_batch_size", "32"]


def items(n: int, seed: int, k: int) -> list[dict[str, Any]]:
    """Prompt, preferred answer (last k letters, last first), dispreferred one (first k letters)."""
    r = random.Random(seed)
    out = []
    for i in range(n):
        p = r.sample(LETTERS, r.randint(k + 1, k + 4))
        out.append({"id": i, "prompt": " ".join(p) + " ?", "good": " ".join(p[::-1][:k]), "bad": " ".join(p[:k])})
    return out


def write(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def pairs(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    r = random.Random(seed)
    out = []
    for x in rows:
        a_good = r.random() < 0.5
        out.append({"id": x["id"], "prompt": x["prompt"], "response_a": x["good"] if a_good else x["bad"],
                    "response_b": x["bad"] if a_good else x["good"], "choice": "A" if a_good else "B"})
    return out


def fit(args: list[str], run: Path) -> float:
    start = time.perf_counter()
    trainer = setup_finetune(load_finetune_config(None, args), run)
    trainer.fit()
    trainer.close()
    return time.perf_counter() - start


def answers(ckpt: Path, held: list[dict[str, Any]], k: int) -> dict[str, float]:
    """Share of held-out prompts answered exactly with the preferred / the dispreferred answer (Mask-Predict)."""
    loaded = load_model(ckpt)
    model, tok = loaded.model.eval(), loaded.tokenizer
    prompts = [tok(x["prompt"], add_special_tokens=False)["input_ids"] for x in held]
    with torch.no_grad():
        out = generate_ids(model, prompts, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                           mask_token_id=tok.mask_token_id, pad_token_id=tok.pad_token_id, max_new_tokens=k + 2,
                           steps=k + 2, length="predict", length_candidates_k=3)
    texts = [t.strip() for t in tok.batch_decode(out.token_ids, skip_special_tokens=True)]
    good = sum(t == x["good"] for t, x in zip(texts, held)) / len(held)
    bad = sum(t == x["bad"] for t, x in zip(texts, held)) / len(held)
    return {"preferred": good, "dispreferred_shown": bad}


def pearson(a: list[float], b: list[float]) -> float:
    return statistics.correlation(a, b)


def score_study(ckpt: Path, held: list[dict[str, Any]]) -> dict[str, Any]:
    loaded = load_model(ckpt)
    model, tok = loaded.model.eval(), loaded.tokenizer
    ids = TokenIds(tok.bos_token_id, tok.eos_token_id, tok.mask_token_id, tok.pad_token_id)
    enc = lambda texts: tok(texts, add_special_tokens=False)["input_ids"]
    prompts = enc([x["prompt"] for x in held])
    good, bad = enc([" " + x["good"] for x in held]), enc([" " + x["bad"] for x in held])
    P, R = prompts + prompts, good + bad
    out: dict[str, Any] = {}
    with torch.no_grad():
        chain = masked_sequence_scores(model, P, R, ids, method="chain").logps.tolist()
        elbo = masked_sequence_scores(model, P, R, ids, method="elbo", samples=16,
                                      generator=torch.Generator().manual_seed(0)).logps.tolist()
        n = len(held)
        m_chain = [chain[i] - chain[n + i] for i in range(n)]
        m_elbo = [elbo[i] - elbo[n + i] for i in range(n)]
        out["agreement"] = {"corr_scores": pearson(chain, elbo), "corr_margins": pearson(m_chain, m_elbo),
                            "same_ranking": sum((a > 0) == (b > 0) for a, b in zip(m_chain, m_elbo)) / n,
                            "mean_chain": statistics.fmean(chain), "mean_elbo": statistics.fmean(elbo)}
        sd = {}
        sub_p, sub_r = P[:100], R[:100]
        for S in (1, 2, 4, 8, 16):
            runs = torch.stack([masked_sequence_scores(model, sub_p, sub_r, ids, method="elbo", samples=S,
                                                       generator=torch.Generator().manual_seed(seed)).logps
                                for seed in range(10)])
            sd[S] = float(runs.std(0).mean())
        out["elbo_sd_by_samples"] = sd
        cost: dict[str, Any] = {}
        for label, (pp, rr) in {f"answers ({len(R[0])} tokens)": (P, R)}.items():
            for method, S in (("chain", 1), ("elbo", 4), ("one-step", 4)):
                start = time.perf_counter()
                s = masked_sequence_scores(model, pp, rr, ids, method=method, samples=S,
                                           generator=torch.Generator().manual_seed(0))
                cost[f"{label} / {method}"] = {"rows_per_pair": 2 * s.rows / len(pp),
                                               "tokens_per_pair": 2 * s.tokens / len(pp),
                                               "seconds": time.perf_counter() - start}
    big = load_model(ckpt).model.eval()  # longer random responses: cost only
    g = torch.Generator().manual_seed(0)
    for L in (16, 64):
        if big.config.max_seq_len < L + 8:
            continue
        rr = [torch.randint(8, 40, (L,), generator=g).tolist() for _ in range(32)]
        pp = [prompts[i] for i in range(32)]
        with torch.no_grad():
            for method, S in (("chain", 1), ("elbo", 4), ("one-step", 4)):
                start = time.perf_counter()
                s = masked_sequence_scores(big, pp, rr, ids, method=method, samples=S, length=False,
                                           generator=torch.Generator().manual_seed(0))
                cost[f"random {L} tokens / {method}"] = {"rows_per_pair": 2 * s.rows / len(pp),
                                                         "tokens_per_pair": 2 * s.tokens / len(pp),
                                                         "seconds": time.perf_counter() - start}
    out["cost"] = cost
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--answer-tokens", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    results = {str(k): run_config(k, a.quick) for k in a.answer_tokens}
    out = Path(a.out or Path(__file__).parent / "results" / f"masked_dpo{'_quick' if a.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine_info(), "answer_tokens": results}, indent=1))
    for k, r in results.items():
        print(f"\n## answers of {k} tokens")
        report(r)
    print(f"wrote {out}")


def run_config(k: int, quick: bool) -> dict[str, Any]:
    """SFT, the score study and DPO with each score, for answers of ``k`` tokens."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_checkpoint  # the tests' random checkpoint with a word-level tokenizer (a..z)

    sft_epochs, dpo_epochs = (6, 3) if quick else (20, 8)
    train, held = items(1000, 0, k), items(200, 1, k)
    sft_rows = [{"source": x["prompt"], "target": x["good"] if i % 2 else x["bad"]} for i, x in enumerate(train)]
    result: dict[str, Any] = {"machine": machine_info(), "sft_epochs": sft_epochs, "dpo_epochs": dpo_epochs}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        init = make_checkpoint(tmp / "init", max_seq_len=96)
        sft_args = ["--init", str(init), "--task.kind", "seq2seq", "--data.train", write(tmp / "sft.jsonl", sft_rows),
                    "--task.seq2seq.max_target_length", str(k + 2), "--task.seq2seq.metrics", "[exact_match]",
                    "--train.lr", "3e-3", "--train.warmup_steps", "20", "--train.epochs", str(sft_epochs), *COMMON]
        result["sft_seconds"] = fit(sft_args, tmp / "sft")
        sft = tmp / "sft"
        result["before"] = answers(sft, held, k)
        print(f"SFT policy: {result['before']}", file=sys.stderr)
        result.update(score_study(sft, held))
        train_pairs = write(tmp / "pairs.jsonl", pairs(items(600, 2, k), 3))
        valid_pairs = write(tmp / "valid_pairs.jsonl", pairs(held, 4))
        result["dpo"] = {}
        for score in ("chain", "elbo", "one-step"):
            run = tmp / f"dpo_{score}"
            args = ["--init", str(sft), "--task.kind", "dpo", "--data.train", train_pairs, "--data.valid", valid_pairs,
                    "--task.dpo.score", score, "--task.dpo.samples", "4", "--task.dpo.beta", "0.5",
                    "--train.lr", "1e-3", "--train.warmup_steps", "10", "--train.epochs", str(dpo_epochs), *COMMON]
            seconds = fit(args, run)
            evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            evals = [e for e in evals if "val_margin" in e]
            result["dpo"][score] = {"seconds": seconds, "val_margin": evals[-1]["val_margin"],
                                    "val_accuracy": evals[-1]["val_accuracy"],
                                    "val_chosen_shift": evals[-1]["val_chosen_shift"],
                                    "curve": [(e["step"], e["val_margin"], e["val_accuracy"]) for e in evals],
                                    **answers(run, held, k)}
            print(f"DPO {score}: {result['dpo'][score]}", file=sys.stderr)
    return result


def report(r: dict[str, Any]) -> None:
    ag = r["agreement"]
    print(f"\nload average {r['machine'].get('load_average')}\n")
    print("| chain vs elbo (16 samples), 400 held-out responses of the SFT policy | value |\n|---|---|")
    print(f"| Pearson r of the scores | {ag['corr_scores']:.3f} |\n| Pearson r of the pair margins | "
          f"{ag['corr_margins']:.3f} |\n| pairs ranked the same way | {ag['same_ranking']:.3f} |\n"
          f"| mean score chain / elbo | {ag['mean_chain']:.3f} / {ag['mean_elbo']:.3f} |")
    print("\n| elbo samples | SD of the estimate (nats) |\n|---|---|")
    for S, v in r["elbo_sd_by_samples"].items():
        print(f"| {S} | {v:.3f} |")
    print("\n| responses / score | suffix rows per pair | tokens per pair | seconds per call |\n|---|---|---|---|")
    for k, v in r["cost"].items():
        print(f"| {k} | {v['rows_per_pair']:.1f} | {v['tokens_per_pair']:.0f} | {v['seconds']:.3f} |")
    print("\n| policy | held-out margin | held-out accuracy | preferred answer generated | dispreferred one | "
          "train s |\n|---|---|---|---|---|---|")
    b = r["before"]
    print(f"| SFT (start) | 0 | - | {b['preferred']:.3f} | {b['dispreferred_shown']:.3f} | {r['sft_seconds']:.0f} |")
    for score, d in r["dpo"].items():
        print(f"| DPO, {score} | {d['val_margin']:.3f} | {d['val_accuracy']:.3f} | {d['preferred']:.3f} | "
              f"{d['dispreferred_shown']:.3f} | {d['seconds']:.0f} |")


if __name__ == "__main__":
    main()
