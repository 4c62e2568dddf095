"""The ``biglm`` command line: a thin dispatcher over the Python API.

Each verb lives in the package it belongs to and exposes ``register(subparsers)``, which adds its
sub-parser and sets ``func``; only the chosen verb's module is imported, so the CLI starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from biglm.errors import BiglmError

# verb -> (module with register(), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("biglm.train.cli", "pretrain a model from a YAML config"),
    "plot": ("biglm.train.cli", "plot a run's loss and learning-rate curves to PNG"),
    "consolidate": ("biglm.train.cli", "write model.safetensors of a sharded training checkpoint"),
    "tokenizer": ("biglm.data.cli", "train a byte-level BPE tokenizer"),
    "prepare-data": ("biglm.data.cli", "fetch the bundled demo corpus"),
    "finetune": ("biglm.finetune.cli", "fine-tune: cloze, extractive QA, seq2seq, instruction, reward, dpo"),
    "predict": ("biglm.finetune.cli", "predict with a fine-tuned checkpoint"),
    "reward": ("biglm.finetune.cli", "score responses with a reward model (finetune --task reward)"),
    "generate": ("biglm.generate.cli", "generate text (Mask-Predict, or autoregressive with the KV cache)"),
    "chat": ("biglm.chat.cli", "chat with a model in the terminal (the reply forms in place)"),
    "serve": ("biglm.serve.cli", "serve a model: OpenAI-compatible API and a live web page"),
    "annotate": ("biglm.annotate.cli", "judge pairs of responses on a local web page (preference data)"),
    "judge": ("biglm.annotate.cli", "AI feedback: a judge model labels pairs of responses (preference data)"),
    "evaluate": ("biglm.finetune.evaluate_cli", "zero-shot evaluation through lm-evaluation-harness"),
    "export-hf": ("biglm.hf.cli", "export a checkpoint as a transformers model folder (masked or causal LM)"),
    "import-hf": ("biglm.hf.cli", "import a transformers (BiGLM or Llama) folder as a checkpoint"),
    "compare": ("biglm.compare.cli", "train and score several recipes side by side (table + plot)"),
    "expand": ("biglm.grow.cli", "grow a checkpoint: width by function-preserving init, depth by stacking"),
    "align": ("biglm.align.cli", "align a policy with a reward or judged pairs: PPO (KL + λ_PT), GRPO, DPO"),
}


def build_parser(verbs: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="biglm", description="Bidirectional general language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    registered: set[str] = set()
    for verb in verbs:
        module_name, _ = COMMANDS[verb]
        if module_name in registered:
            continue
        registered.add(module_name)
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"biglm: unknown command '{argv[0]}'; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        print("usage: biglm COMMAND [options]\n\ncommands:")
        for verb, (_, text) in COMMANDS.items():
            print(f"  {verb:<14}{text}")
        print("\nbiglm COMMAND --help shows a command's options.")
        return 0
    args, rest = build_parser([argv[0]]).parse_known_args(argv)
    if rest and not getattr(args, "accepts_overrides", False):
        print(f"biglm {argv[0]}: unrecognised arguments: {' '.join(rest)}", file=sys.stderr)
        return 2
    if rest:
        args.overrides = rest
    try:
        return int(args.func(args) or 0)
    except BiglmError as e:
        print(f"biglm {argv[0]}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"biglm {argv[0]}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
