"""``biglm generate``: generation from a checkpoint on the command line; the model's family decides how
(Mask-Predict and parallel strategies for masked models, KV-cached autoregressive decoding for causal and
bidirectional-ar ones).

    biglm generate --ckpt runs/tiny --prompt "The cat" --max-new-tokens 32 --steps 10
    biglm generate --ckpt runs/ar --prompt "The cat" --num-beams 4 --no-repeat-ngram-size 3
    biglm generate --ckpt runs/ar --prompt "and the story ends here." --direction r2l
    biglm generate --ckpt runs/tiny --prompts-file prompts.txt --strategy threshold --threshold 0.8
    biglm generate --ckpt runs/tiny --prompt "The cat" --strategy blocks --block-size 16 --commit threshold
    echo "Once upon a time" | biglm generate --ckpt runs/tiny --prompts-file - --show-steps
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from biglm.errors import BiglmError
from biglm.generate.autoregressive import DIRECTIONS
from biglm.generate.options import ParallelOptions, add_parallel_args


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("generate", help="generate text (Mask-Predict, or autoregressive with the KV cache)",
                              description="Generate a continuation of each prompt. Masked models: L [MASK] "
                                          "tokens after the prompt, refined over T passes. Causal and "
                                          "bidirectional-ar models: token by token with the KV cache "
                                          "(--direction r2l writes the text before the prompt).")
    p.add_argument("--ckpt", required=True, help="checkpoint folder or run folder (newest checkpoint)")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for a batch)")
    p.add_argument("--prompts-file", help="one prompt per line (blank lines skipped); '-' reads stdin")
    p.add_argument("--max-new-tokens", type=int, default=32,
                   help="suffix length L (the largest candidate with --length predict)")
    p.add_argument("--steps", type=int, default=None, help="refinement passes T (1..L; default min(10, L))")
    p.add_argument("--strategy", default=None,
                   help="masked: mask-predict (default), threshold or blocks; autoregressive: greedy (default), "
                        "sample or beam")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most probable tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0 = off)")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling (same seed, same text)")
    p.add_argument("--no-prefix-cache", "--no-cache", dest="no_prefix_cache", action="store_true",
                   help="re-encode the prompt (autoregressive: the whole sequence) at every pass "
                        "(same output, slower; for checking)")
    p.add_argument("--length", choices=("fixed", "predict"), default="fixed",
                   help="fixed L, or candidates from the model's length head")
    p.add_argument("--length-candidates", type=int, default=3, help="length candidates decoded in parallel")
    p.add_argument("--length-rule", choices=("average", "joint"), default="joint",
                   help="winner among length candidates: best average token log-prob, or log p(length) + sum")
    p.add_argument("--show-steps", action="store_true",
                   help="print the partly decoded text of every pass (▢ = still masked)")
    add_parallel_args(p, "parallel strategies of masked models (threshold, blocks); unset: the strategy's default")
    ar = p.add_argument_group("autoregressive models (causal, bidirectional-ar)")
    ar.add_argument("--direction", choices=DIRECTIONS, default="l2r",
                    help="l2r: continue the prompt; r2l (bidirectional-ar): write the text that comes before it")
    ar.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams (default 1)")
    ar.add_argument("--length-penalty", type=float, default=1.0,
                    help="beam score = sum log p / length ** this (default 1.0)")
    ar.add_argument("--no-repeat-ngram-size", type=int, default=0, help="never repeat an n-gram of this size")
    ar.add_argument("--min-new-tokens", type=int, default=0, help="no stop token before this many tokens")
    ar.add_argument("--early-stopping", action="store_true",
                    help="beam search: stop as soon as num_beams hypotheses are finished")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(func=run)


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file:
        if args.prompts_file == "-":
            text = sys.stdin.read()
        else:
            path = Path(args.prompts_file)
            if not path.is_file():
                raise BiglmError(f"{path}: prompts file not found")
            text = path.read_text(encoding="utf-8")
        prompts += [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise BiglmError("no prompt: give --prompt TEXT or --prompts-file FILE (or - for stdin)")
    return prompts


def run(args: argparse.Namespace) -> int:
    from biglm.devices import resolve_device
    from biglm.generate.api import MASK_SYMBOL, generate

    resolve_device(args.device, "--device")
    prompts = read_prompts(args)
    options = ParallelOptions.of(args).as_strategy_options()
    start = time.perf_counter()
    result = generate(args.ckpt, prompts, max_new_tokens=args.max_new_tokens, steps=args.steps,
                      strategy=args.strategy, temperature=args.temperature, top_k=args.top_k,
                      top_p=args.top_p, seed=args.seed, prefix_cache=not args.no_prefix_cache,
                      length=args.length, length_candidates=args.length_candidates, length_rule=args.length_rule,
                      return_trajectory=True, device=args.device, direction=args.direction,
                      num_beams=args.num_beams, length_penalty=args.length_penalty,
                      no_repeat_ngram_size=args.no_repeat_ngram_size, min_new_tokens=args.min_new_tokens,
                      early_stopping=args.early_stopping, **options)
    elapsed = time.perf_counter() - start
    mask = f"\x1b[2m{MASK_SYMBOL}\x1b[0m" if sys.stdout.isatty() else MASK_SYMBOL
    for i, (prompt, text) in enumerate(zip(prompts, result.texts)):
        if len(prompts) > 1:
            short = prompt if len(prompt) <= 60 else prompt[:57] + "..."
            print(f"=== [{i}] {short}")
        if args.show_steps and result.steps:
            for t, step in enumerate(result.steps[i][:-1]):
                print(f"  step {t}: {step.replace(MASK_SYMBOL, mask)}")
            print(f"  final ({result.output.lengths[i]} tokens): {result.steps[i][-1]}")
        # An empty sample is a real outcome (EOS decoded first); say so rather than print a blank line.
        stop = "BOS" if args.direction == "r2l" else "EOS"
        print(text if text.strip() else f"(empty: the model put {stop} first)")
    print(f"biglm generate: {len(prompts)} prompt(s), {result.forward_passes} forward passes, "
          f"{elapsed:.2f} s", file=sys.stderr)
    return 0
