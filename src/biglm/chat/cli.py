"""``biglm chat`` (terminal chat); ``model_args`` and ``load`` are shared with ``biglm serve``
(``biglm.serve.cli``).

    biglm chat --ckpt runs/instruct                 # type a message; /reset, /settings [k=v ...], /quit
    biglm chat --ckpt runs/instruct --strategy blocks --block-size 8 --commit threshold
    echo "reverse a b c" | biglm chat --ckpt runs/instruct
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from biglm.errors import BiglmError
from biglm.generate.options import ParallelOptions, add_parallel_args

HELP = ("commands: /reset (forget the conversation), /settings (show), /settings key=value ... (change), "
        "/quit; type \\n for a line break")


def model_args(p: argparse.ArgumentParser) -> None:
    """The options that load a chat model and set its default reply settings (``load``)."""
    p.add_argument("--ckpt", required=True, help="checkpoint or run folder (a fine-tuning run: its best/)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="longest reply (default: the fine-tune's)")
    p.add_argument("--steps", type=int, default=None, help="Mask-Predict passes (default: the fine-tune's)")
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--system", default=None, help="system prompt put first in every conversation")
    p.add_argument("--strategy", default=None,
                   help="masked models: mask-predict (default), threshold or blocks; autoregressive: greedy or sample")
    add_parallel_args(p, "parallel strategies of masked models (threshold, blocks); unset: the strategy's default")


def register(subparsers: Any) -> None:
    text = "chat with a model in the terminal (the reply forms in place)"
    p = subparsers.add_parser("chat", help=text, description=text)
    model_args(p)
    p.add_argument("--plain", action="store_true",
                   help="print every pass on its own line (default when stdout is not a terminal)")
    p.set_defaults(func=run_chat)


def load(args: argparse.Namespace) -> Any:
    from biglm.chat.session import ChatModel
    from biglm.devices import resolve_device

    resolve_device(args.device, "--device")
    chat = ChatModel.load(args.ckpt, device=args.device)
    changes = {k: v for k, v in (("max_new_tokens", args.max_new_tokens), ("steps", args.steps),
                                 ("temperature", args.temperature), ("seed", args.seed),
                                 ("system_prompt", args.system), ("strategy", args.strategy)) if v is not None}
    chat.settings = chat.settings.updated(**changes, **ParallelOptions.of(args).as_strategy_options())
    chat.check_settings(chat.settings)  # against the model too: its family's strategies and their options
    return chat


def run_chat(args: argparse.Namespace) -> int:
    chat = load(args)
    live = sys.stdout.isatty() and not args.plain
    return chat_loop(chat, sys.stdin, sys.stdout, live)


def chat_loop(chat: Any, stdin: TextIO, out: TextIO, live: bool) -> int:
    """Read messages from ``stdin`` until EOF or /quit; show each reply forming (``live``: in place on one
    line; else one line per pass or token) and then the reply."""
    import dataclasses

    from biglm.chat.session import ReplyUpdate

    messages: list[dict[str, str]] = []
    settings = chat.settings
    kind = "passes" if chat.decoder == "mask-predict" else "tokens"
    print(f"biglm chat: {chat.family} model, {chat.model.config.max_seq_len}-token context; the reply forms over its "
          f"{kind}. {HELP}", file=out)

    def show(update: ReplyUpdate) -> None:
        label = f"pass {update.index}" if update.kind == "pass" else f"token {update.index}"
        if live:
            out.write(f"\r\x1b[KAssistant ({label}): {update.text}")
        else:
            out.write(f"  [{label}] {update.text}\n")
        out.flush()

    if hasattr(stdin, "reconfigure"):  # bytes that are not UTF-8 arrive as surrogates: said, not fatal
        stdin.reconfigure(errors="surrogateescape")
    for line in stdin:
        text = line.strip().replace("\\n", "\n")  # a literal \n in the line is a line break
        if not text:
            continue
        bad = next((c for c in text if "\udc80" <= c <= "\udcff"), None)
        if bad is not None:
            print(f"error: that line is not UTF-8 text (byte 0x{ord(bad) - 0xdc00:02x}); not sent", file=out)
            continue
        if text in ("/quit", "/exit"):
            break
        if text == "/reset":
            messages = []
            print("(conversation reset)", file=out)
            continue
        if text.startswith("/settings"):
            try:
                pairs = dict(p.split("=", 1) for p in text.split()[1:])
                changed = settings.updated(**pairs)
                chat.check_settings(changed)
                settings = changed
            except (BiglmError, ValueError) as e:
                print(f"error: {e if isinstance(e, BiglmError) else 'expected key=value pairs'}", file=out)
            print("settings: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(settings).items()), file=out)
            continue
        if text.startswith("/"):
            print(f"unknown command {text.split()[0]}; {HELP}", file=out)
            continue
        messages.append({"role": "user", "content": text})
        try:
            reply = chat.reply(messages, settings, show)
        except Exception as e:  # a failed turn is said; the session and the conversation go on
            messages.pop()
            what = e if isinstance(e, BiglmError) else f"the reply failed ({type(e).__name__}: {str(e)[:200]})"
            print(f"\nerror: {what}", file=out)
            continue
        if live:
            out.write("\r\x1b[K")
        if reply.dropped_turns:
            print(f"(history cut to the context: the {reply.dropped_turns} oldest turn(s) left out)", file=out)
        print(f"Assistant: {reply.text if reply.text else '(empty reply)'}", file=out)
        out.flush()
        messages.append({"role": "assistant", "content": reply.text or "-"})
    return 0
