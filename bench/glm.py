"""GLM against transformers' Llama of the same shape, in the same run: the training step and blank generation.

* **Training step** (forward, backward, clipping, AdamW; fp32): biglm's GLM batch made by the ``glm``
  objective from packed rows (each row grows by two positions per span: its blank in part A and its
  [sop] in part B), the prefix-LM layout with 2D RoPE, logits only at the part-B targets; Llama runs its
  causal-LM loss over the same rows (``attn_implementation="sdpa"``, logits at every position). Tokens/s
  count the rows' tokens (the same data for both). Steps alternate so machine load hits both alike;
  best step reported (medians in the JSON).
* **Blank generation**: a GLM model fills one ``[gMASK]`` after a prompt of ``--prompt`` tokens with exactly
  ``--new`` tokens (greedy, KV cache; part A encoded once), at batch 1 and 8; transformers' ``generate()``
  continues the same prompts with a ``LlamaForCausalLM`` of the same shape (KV cache, greedy, exactly
  ``--new`` tokens). Both decode one token per forward pass; the weights differ (GLM's 2D RoPE is not
  Llama's), so only the speed is compared. Best of interleaved repeats.

    python bench/glm.py            # tiny and 136M shapes
    python bench/glm.py --quick    # tiny only
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ar_train_throughput import rows_for
from biglm.config import ModelConfig
from biglm.generate.autoregressive import AROptions
from biglm.generate.glm import GLMTokens, infill_ids
from biglm.model import BiGLM
from biglm.objectives import ObjectiveConfig, build_criterion, build_objective
from biglm.train.batches import ObjectiveBatcher, RowSeeds
from biglm.train.metrics import flops_per_token
from common import best_of, generation_args, llama_like, machine_info, make_step, tokens_per_second

RESULTS = Path(__file__).parent / "results" / "glm.json"
SPECIALS = {"pad": 0, "mask": 1, "bos": 2, "eos": 3, "smask": 4, "gmask": 5, "sop": 6, "eop": 7}


def glm_config(shape: str) -> ModelConfig:
    return ModelConfig.from_preset(shape, family="glm", position_encoding="rope-2d", max_seq_len=2048)


def bench_train(shape: str, batch: int, seq_len: int, steps: int) -> dict[str, Any]:
    cfg = glm_config(shape)
    torch.manual_seed(0)
    raw = rows_for(cfg, batch, seq_len)
    objective = build_objective(ObjectiveConfig.from_preset("glm"), 1, cfg.vocab_size, SPECIALS)
    t = time.perf_counter()
    for _ in range(5):
        b = ObjectiveBatcher(objective)(raw, RowSeeds(0, 0))
    transform_s = (time.perf_counter() - t) / 5
    model = BiGLM(cfg)
    criterion = build_criterion(ObjectiveConfig.from_preset("glm"))
    cpu = torch.device("cpu")
    fns = {"glm": make_step(model, lambda: criterion(model, b).terms["blank_infilling"] / b.num_targets, cpu)}
    ids = raw["input_ids"]
    llama = llama_like(cfg)
    fns["llama"] = make_step(llama, lambda: llama(input_ids=ids, labels=ids).loss, cpu)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(steps + 1):  # the first round warms up
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            if i:
                times[key].append(time.perf_counter() - start)
    tokens = batch * seq_len
    out = {"model": shape, "batch": batch, "seq_len": seq_len, "glm_width": b.input_ids.shape[1],
           "glm_target_fraction": b.num_targets / b.input_ids.numel(), "glm_transform_s": transform_s}
    for key, ts in times.items():
        out[key] = {"step_s": min(ts), "tokens_per_s": tokens / min(ts),
                    "median_tokens_per_s": tokens / statistics.median(ts), "step_times": ts}
    out["glm"]["flops_per_token"] = flops_per_token(cfg, b.input_ids.shape[1], out["glm_target_fraction"])
    out["speedup_vs_llama"] = out["glm"]["tokens_per_s"] / out["llama"]["tokens_per_s"]
    return out


def bench_generate(shape: str, batches: list[int], prompt: int, new: int, repeats: int) -> list[dict[str, Any]]:
    cfg = glm_config(shape)
    torch.manual_seed(0)
    ours = BiGLM(cfg).eval()
    llama = llama_like(cfg, bos_token_id=2, eos_token_id=3, pad_token_id=0).eval()
    llama.load_state_dict({k: v for k, v in ours.state_dict().items() if "rotary" not in k}, strict=False)
    llama.tie_weights()
    tokens = GLMTokens(**SPECIALS)
    rows = []
    for batch in batches:
        g = torch.Generator().manual_seed(batch)
        prompts = torch.randint(8, cfg.vocab_size - 64, (batch, prompt), generator=g).tolist()
        ids = torch.tensor([[2, *p, 5] for p in prompts])  # the same length as GLM's part A (BOS ... [gMASK])
        forced = AROptions(max_new_tokens=new, min_new_tokens=new)

        def glm_fill(prompts=prompts, forced=forced) -> list[list[int]]:
            return [f[0] for f in infill_ids(ours, prompts, tokens, options=forced).fills]

        def hf_greedy(ids=ids) -> list[list[int]]:
            with torch.inference_mode():
                out = llama.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                     min_new_tokens=new, do_sample=False, use_cache=True, pad_token_id=0)
            return out[:, ids.shape[1]:].tolist()

        timing = best_of({"biglm_glm": glm_fill, "transformers": hf_greedy}, repeats)
        row = {"shape": shape, "batch": batch, "prompt": prompt, "new": new,
               "glm_tokens_per_row": [len(t) for t in timing["biglm_glm"][1]]}
        rows.append(tokens_per_second(row, timing, batch * new, "biglm_glm"))
        print(f"  {shape:<11} batch {batch:2d}: GLM infill {row['biglm_glm_tok_s']:8.1f} tok/s, transformers "
              f"{row['transformers_tok_s']:8.1f} tok/s ({row['speedup']:.2f}×)", flush=True)
    return rows


def main() -> None:
    args = generation_args(__doc__.splitlines()[0], RESULTS)
    shapes = [("tiny", 4, 512, 3 if args.quick else 8)] + ([] if args.quick else [("biglm-136m", 2, 512, 4)])
    train = [bench_train(*s) for s in shapes]
    print(f"load {os.getloadavg()[0]:.1f}, {args.threads} threads")
    print(f"{'shape':<12}{'B×T':>9}{'GLM width':>11}{'B targets':>11}{'GLM tok/s':>11}{'Llama tok/s':>13}"
          f"{'GLM/Llama':>11}")
    for r in train:
        print(f"{r['model']:<12}{r['batch']:>4}×{r['seq_len']:<4}{r['glm_width']:>11}{r['glm_target_fraction']:>11.2f}"
              f"{r['glm']['tokens_per_s']:>11.0f}{r['llama']['tokens_per_s']:>13.0f}{r['speedup_vs_llama']:>10.2f}×")
    gen = [r for s, *_ in shapes for r in bench_generate(s, [1, 8], args.prompt, args.new, 2 if args.quick else 3)]
    print(f"\n{'shape':<11}{'batch':>6}{'GLM infill tok/s':>18}{'transformers tok/s':>20}{'GLM/HF':>9}")
    for r in gen:
        print(f"{r['shape']:<11}{r['batch']:>6}{r['biglm_glm_tok_s']:>18.1f}{r['transformers_tok_s']:>20.1f}"
              f"{r['speedup']:>8.2f}×")
    report = {**machine_info(), "train": train, "generate": gen}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
