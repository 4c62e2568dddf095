"""``biglm expand``: grow a checkpoint in width (function-preserving initialisation) and/or depth (stacking).

    biglm expand --ckpt runs/small --out ckpts/wide --hidden-size 2x                 # exact
    biglm expand --ckpt runs/small --out ckpts/deep --num-layers 2x                  # progressive stacking
    biglm expand --ckpt runs/small --out ckpts/deep --num-layers 2x --depth-init zero   # exact
    biglm pretrain --config ... --train.init_from ckpts/deep --model.num_layers 8     # continue training
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from biglm.errors import BiglmError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("expand", help="grow a checkpoint: width by FPI, depth by stacking",
                              description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="source checkpoint or run folder (newest checkpoint)")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    size = "an integer, or a multiple of the source's such as 2x"
    p.add_argument("--hidden-size", help=f"new hidden size ({size}); heads grow with it (same head size)")
    p.add_argument("--num-layers", help=f"new number of layers ({size})")
    p.add_argument("--intermediate-size", help=f"new SwiGLU inner size ({size}; default: scaled with the width)")
    p.add_argument("--num-heads", type=int, help="new query heads (default: hidden size / head size)")
    p.add_argument("--num-kv-heads", type=int, help="new key/value heads (default: keeps the query heads per group)")
    p.add_argument("--mapping", choices=("balanced", "random"), default="balanced",
                   help="which units new units copy: balanced (exact for whole multiples) or random (the paper's "
                        "uniform draws)")
    p.add_argument("--depth-order", choices=("stack", "interleave"), default="stack",
                   help="stack: a copy of the whole stack on top (StackBERT); interleave: each layer repeated")
    p.add_argument("--depth-init", choices=("copy", "zero"), default="copy",
                   help="copy: progressive stacking; zero: new layers' output projections start at zero (exact)")
    p.add_argument("--noise", type=float, default=0.0,
                   help="relative size of zero-sum symmetry-breaking noise on the split weights (stays exact)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check-text", help="measure max |Δlogits| on the first documents of this .jsonl/.txt "
                                        "(default: random token ids)")
    p.add_argument("--check-rows", type=int, default=8, help="rows of the function check (default 8)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run)


def parse_size(value: str | None, source: int, name: str) -> int | None:
    """``None``, an integer, or ``<k>x`` (k times ``source``, rounded)."""
    if value is None:
        return None
    text = str(value).strip().lower()
    try:
        return round(float(text[:-1]) * source) if text.endswith(("x", "×")) else int(text)
    except ValueError:
        raise BiglmError(f"--{name} {value!r}: expected an integer or a multiple such as 2x") from None


def run(args: argparse.Namespace) -> int:
    from biglm.checkpoint import resolve_checkpoint
    from biglm.config import ModelConfig
    from biglm.grow import ExpandSpec, expand_checkpoint

    src = ModelConfig.from_file(resolve_checkpoint(args.ckpt) / "model_config.yaml")
    spec = ExpandSpec(hidden_size=parse_size(args.hidden_size, src.hidden_size, "hidden-size"),
                      num_layers=parse_size(args.num_layers, src.num_layers, "num-layers"),
                      intermediate_size=parse_size(args.intermediate_size, src.intermediate_size, "intermediate-size"),
                      num_heads=args.num_heads, num_kv_heads=args.num_kv_heads, mapping=args.mapping,
                      depth_order=args.depth_order, depth_init=args.depth_init, noise=args.noise, seed=args.seed)
    report = expand_checkpoint(args.ckpt, args.out, spec, check_text=args.check_text, check_rows_n=args.check_rows,
                               force=args.force)
    print(report.line())
    t = report.target_shape
    print("continue training with: --train.init_from " + args.out + " " +
          " ".join(f"--model.{k} {v}" for k, v in t.items() if v != report.source_shape[k]))
    print(json.dumps(report.change))
    return 0
