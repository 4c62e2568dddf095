"""``biglm annotate`` (the annotation page) and ``biglm judge`` (AI feedback), over the Python API.

    biglm annotate --pairs pairs.jsonl --out prefs.jsonl                  # a file of pairs
    biglm annotate --prompts prompts.txt --ckpt runs/sft --out prefs.jsonl # one checkpoint sampled twice
    biglm annotate --prompts p.jsonl --ckpt runs/a --ckpt-b runs/b --out prefs.jsonl
    biglm judge --pairs pairs.jsonl --out ai.jsonl --judge-url http://host/v1 --judge-model NAME
    biglm judge --pairs pairs.jsonl --out ai.jsonl --judge-ckpt runs/judge [--template my-template.txt]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from biglm.errors import BiglmError
from biglm.serve.cli import network_args


def _source_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pairs (a file of pairs, or prompts answered by one or two checkpoints)")
    g.add_argument("--out", required=True, help="answers file (JSONL, biglm's preference format); appended to")
    g.add_argument("--pairs", help="JSONL of pairs: prompt, response_a, response_b (model_a/model_b optional)")
    g.add_argument("--prompts", help=".txt (one per line) or JSONL (prompt / instruction / messages) of prompts")
    g.add_argument("--ckpt", help="checkpoint that answers the prompts (alone: sampled twice, two seeds)")
    g.add_argument("--ckpt-b", help="a second checkpoint: response B from it")
    g.add_argument("--pairs-cache", help="where sampled pairs are kept (default: OUT's name + .pairs.jsonl)")
    g.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of response A (0.7)")
    g.add_argument("--temperature-b", type=float, default=None, help="of response B (default: --temperature)")
    g.add_argument("--seed", type=int, default=1, help="sampling seed of response A (1)")
    g.add_argument("--seed-b", type=int, default=2, help="sampling seed of response B (2)")
    g.add_argument("--max-new-tokens", type=int, default=None, help="longest response (default: the fine-tune's)")
    g.add_argument("--steps", type=int, default=None, help="Mask-Predict passes (default: the fine-tune's)")
    g.add_argument("--batch", type=int, default=8, help="prompts sampled together (8)")
    g.add_argument("--no-shuffle", action="store_true",
                   help="keep the first sampler's response as A (default: a seeded coin per prompt picks the side)")
    g.add_argument("--device", default="cpu", help="torch device of the checkpoints (cpu)")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("annotate", help="judge pairs of responses on a local web page",
                              description="The annotation page: two responses to one instruction, the four "
                              "helpfulness and four acceptability buttons, keyboard shortcuts, progress and undo; "
                              "every answer is appended to --out at once.")
    _source_args(p)
    network_args(p, api_key=False)
    p.add_argument("--annotator", default="", help="pre-fill the page's name field")
    p.add_argument("--instructions", default="", help="guidance shown above the pairs")
    p.set_defaults(func=run_annotate)

    p = subparsers.add_parser("judge", help="AI feedback: a judge model labels pairs like the annotation page",
                              description="Ask a judge (a biglm checkpoint or an OpenAI-compatible endpoint) about "
                              "each pair through a prompt template; answers go to --out as annotator ai:<model>.")
    _source_args(p)
    g = p.add_argument_group("judge")
    g.add_argument("--judge-ckpt", help="a biglm checkpoint as the judge")
    g.add_argument("--judge-url", help="an OpenAI-compatible API base URL (e.g. http://127.0.0.1:8000/v1)")
    g.add_argument("--judge-model", default=None, help="the endpoint's model name (the judge's name in the file)")
    g.add_argument("--api-key", default=None, help="endpoint key (default: $OPENAI_API_KEY, else none)")
    g.add_argument("--template", default=None, help="prompt template file with {prompt}, {response_a}, "
                   "{response_b} (default: biglm's, biglm/annotate/judge_template.txt)")
    g.add_argument("--judge-max-tokens", type=int, default=64, help="longest judge answer (64)")
    g.add_argument("--concurrency", type=int, default=4, help="endpoint requests in flight (4)")
    g.add_argument("--both-orders", action="store_true",
                   help="ask each pair with A and B swapped too; keep only verdicts both orders agree on")
    p.set_defaults(func=run_judge)


def _load(ckpt: str, args: argparse.Namespace) -> Any:
    from biglm.chat.session import ChatModel
    from biglm.devices import resolve_device

    resolve_device(args.device, "--device")
    return ChatModel.load(ckpt, device=args.device)


def input_paths(args: argparse.Namespace) -> list[str | None]:
    """Every file or checkpoint the arguments read: what the answers file and the pairs cache must not be."""
    return [args.pairs, args.prompts, args.ckpt, args.ckpt_b, getattr(args, "judge_ckpt", None),
            getattr(args, "template", None)]


def pool_from_args(args: argparse.Namespace, background: bool) -> Any:
    """The pairs the arguments name: read from --pairs, or sampled for --prompts (cached)."""
    from biglm.annotate.pairs import PairPool, chat_sampler, read_pairs, read_prompts, sampled_pool
    from biglm.outputs import ANSWERS, check_output

    if bool(args.pairs) == bool(args.prompts):
        raise BiglmError("give either --pairs FILE or --prompts FILE with --ckpt (and optionally --ckpt-b)")
    if args.pairs:
        if args.ckpt or args.ckpt_b:
            raise BiglmError("--pairs takes its responses from the file; --ckpt/--ckpt-b go with --prompts")
        return PairPool(read_pairs(args.pairs))
    if not args.ckpt:
        raise BiglmError("--prompts needs --ckpt (and optionally --ckpt-b) to answer them")
    prompts = read_prompts(args.prompts)
    models = [_load(args.ckpt, args)] + ([_load(args.ckpt_b, args)] if args.ckpt_b else [])
    changes = {k: v for k, v in (("max_new_tokens", args.max_new_tokens), ("steps", args.steps)) if v is not None}
    t_b = args.temperature if args.temperature_b is None else args.temperature_b
    settings = [models[0].settings.updated(**changes, temperature=args.temperature, seed=args.seed),
                models[-1].settings.updated(**changes, temperature=t_b, seed=args.seed_b)]
    if args.ckpt_b:
        names = (args.ckpt, args.ckpt_b)
    else:
        if (args.seed == args.seed_b and t_b == args.temperature) or (args.temperature == 0 and t_b == 0):
            raise BiglmError("one checkpoint sampled twice with the same seed (or greedily) gives the same response "
                             "twice: set --seed-b or --temperature above 0")
        names = (f"{args.ckpt}[seed={args.seed},temperature={args.temperature}]",
                 f"{args.ckpt}[seed={args.seed_b},temperature={t_b}]")
    out = Path(args.out)
    cache = args.pairs_cache or out.with_name(out.name.removesuffix(".jsonl") + ".pairs.jsonl")
    check_output(cache, ANSWERS, [*input_paths(args), out], flag="--pairs-cache")
    signature = {"prompts": str(args.prompts), "ckpt_a": args.ckpt, "ckpt_b": args.ckpt_b or args.ckpt,
                 "settings_a": dataclasses.asdict(settings[0]), "settings_b": dataclasses.asdict(settings[1]),
                 "shuffle": not args.no_shuffle}
    print(f"annotate: {len(prompts)} prompts; sampled pairs kept in {cache}", file=sys.stderr)
    return sampled_pool(prompts, chat_sampler(models, settings), names, cache, signature, batch=max(1, args.batch),
                        shuffle=not args.no_shuffle, seed=args.seed, background=background)


def run_annotate(args: argparse.Namespace) -> int:
    from biglm.annotate.app import Annotation, annotation_app, annotator_of
    from biglm.annotate.store import AnswerStore
    from biglm.outputs import ANSWERS, check_output
    from biglm.serve.cli import network_of
    from biglm.serve.server import Server
    from biglm.serve.validation import HTTPError

    if args.annotator:  # a bad name fails here, not on the page
        try:
            annotator_of(args.annotator)
        except HTTPError as e:
            raise BiglmError(f"--annotator {args.annotator!r}: {e.message}") from None
    security, limits = network_of(args, "the annotation page (answer and undo as any annotator they make up)")
    server = Server(None, args.host, args.port, limits)
    store = AnswerStore(check_output(args.out, ANSWERS, input_paths(args)))
    try:
        pool = pool_from_args(args, background=True)
        server.set_app(annotation_app(Annotation(store, pool, args.instructions), security, limits))
        query = f"?annotator={args.annotator}" if args.annotator else ""
        return server.run_until_stopped(lambda url: f"biglm annotate: {pool.total} pairs at {url}/{query} ; "
                                        f"answers appended to {store.path}; Ctrl-C stops")
    finally:
        server.stop()
        store.close()


def run_judge(args: argparse.Namespace) -> int:
    from biglm.annotate.judge import CheckpointJudge, EndpointJudge, judge_pairs, load_template
    from biglm.annotate.store import AnswerStore
    from biglm.outputs import ANSWERS, check_output

    if bool(args.judge_ckpt) == bool(args.judge_url):
        raise BiglmError("give one judge: --judge-ckpt CKPT or --judge-url URL (with --judge-model)")
    out = check_output(args.out, ANSWERS, input_paths(args))
    template = load_template(args.template)
    if args.judge_url:
        if not args.judge_model:
            raise BiglmError("--judge-url needs --judge-model (the endpoint's model name)")
        judge: Any = EndpointJudge(args.judge_url, args.judge_model, api_key=args.api_key,
                                   max_tokens=args.judge_max_tokens, concurrency=args.concurrency)
    else:
        judge = CheckpointJudge(_load(args.judge_ckpt, args), args.judge_ckpt, max_tokens=args.judge_max_tokens)
    store = AnswerStore(out)
    try:
        pool = pool_from_args(args, background=False)
        report = judge_pairs(pool.pairs, judge, store, template, both_orders=args.both_orders,
                             on_progress=lambda r, n: print(f"judge: {r.pairs} of {n} pairs asked, {r.saved} saved",
                                                            file=sys.stderr, flush=True))
    finally:
        store.close()
    if report.no_verdict:  # every request failed or was unreadable: not a success
        raise BiglmError(report.failure_line())
    print(report.summary(), file=sys.stderr)
    return 0


__all__ = ["pool_from_args", "register"]
