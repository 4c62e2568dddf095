"""Expanding a model or a checkpoint, and measuring how much its function changed."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from biglm.attention import AttentionLayout
from biglm.checkpoint import load_model, model_state_dict, resolve_checkpoint, verify_model, write_checkpoint
from biglm.data.records import Record, json_object, text_lines
from biglm.errors import BiglmError
from biglm.families import get_family
from biglm.grow.expand import ExpandSpec, Plan, expand_state, make_plan
from biglm.model import BiGLM
from biglm.outputs import CHECKPOINT, check_output


def family_layout(family: str, rows: Tensor) -> AttentionLayout:
    """The family's layout (``Family.layout``) over ``rows`` (B, T), where the function check runs: with
    regions (prefix-blind, prefix-LM), the second half is the suffix / part B."""
    kind = get_family(family).layout
    if kind in ("prefix_blind", "prefix_lm"):
        regions = torch.zeros(rows.shape, dtype=torch.int8)
        regions[:, rows.shape[1] // 2:] = 1
        return AttentionLayout(kind, None, regions.to(rows.device))
    return AttentionLayout(kind)


def expand_model(model: BiGLM, spec: ExpandSpec) -> tuple[BiGLM, Plan]:
    """A new model of ``plan.target``'s shape whose weights come from ``model`` (see ``biglm.grow.expand``)."""
    plan = make_plan(model.config, spec)
    state = expand_state(model_state_dict(model), plan)
    with torch.device("meta"):
        grown = BiGLM(plan.target)
    grown.load_state_dict(state, strict=False, assign=True)
    grown.tie_weights()
    grown.model.rotary.inv_freq = grown.model.rotary._inv_freq()
    return grown.to(next(model.parameters()).device).train(model.training), plan


@torch.no_grad()
def max_logit_change(source: BiGLM, expanded: BiGLM, rows: Tensor) -> dict[str, float]:
    """Max |Δlogits| between the two models on ``rows`` (B, T) token ids, the source's largest |logit|
    for scale, and the largest change of a next-token probability."""
    layout = family_layout(source.config.family, rows)
    was = source.training, expanded.training
    source.eval()
    expanded.eval()
    try:
        a = source(rows, layout).logits.double()
        b = expanded(rows, layout).logits.double()
    finally:
        source.train(was[0])
        expanded.train(was[1])
    return {"max_abs_dlogits": float((a - b).abs().max()), "max_abs_logit": float(a.abs().max()),
            "max_abs_dprob": float((a.softmax(-1) - b.softmax(-1)).abs().max())}


def check_rows(tokenizer: Any, vocab_size: int, text_file: str | None, rows: int = 8, length: int = 128,
               seed: int = 0) -> Tensor:
    """Token rows for the function check: the first documents of ``text_file`` (``.jsonl`` with a ``text``
    field, or plain text lines), each as ``BOS text``, concatenated and cut into ``rows`` rows of
    ``length`` tokens (fewer if the file is short); seeded random ids when no file is given."""
    if text_file is None or tokenizer is None:
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, vocab_size, (rows, length), generator=g)
    path = Path(text_file)
    if not path.is_file():
        raise BiglmError(f"{path}: check text file not found")
    stream: list[int] = []
    for lineno, line in text_lines(path):
        if line.strip():
            where = f"{path}:{lineno}"
            text = Record(json_object(line, where), where).get("text") if path.suffix == ".jsonl" else line
            stream += [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]
        if len(stream) >= rows * length:
            break
    if len(stream) < 2:
        raise BiglmError(f"{path}: no text to check with")
    length = min(length, len(stream))
    n = min(rows, len(stream) // length)
    return torch.tensor(stream[:n * length]).view(n, length)


@dataclass
class ExpandReport:
    source: str
    out: str
    exact_claimed: bool
    change: dict[str, float]
    source_shape: dict[str, int]
    target_shape: dict[str, int]
    spec: dict[str, Any]

    def line(self) -> str:
        s, t = self.source_shape, self.target_shape
        shape = lambda c: f"{c['num_layers']}×{c['hidden_size']} ({c['num_heads']}/{c['num_kv_heads']} heads, " \
                          f"{c['intermediate_size']} SwiGLU)"
        claim = "exact (function preserving)" if self.exact_claimed else "not function preserving"
        return (f"expanded {shape(s)} -> {shape(t)}: {claim}; max |Δlogits| {self.change['max_abs_dlogits']:.3g} "
                f"(max |logit| {self.change['max_abs_logit']:.3g}, max |Δp| {self.change['max_abs_dprob']:.3g})")


_SHAPE = ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "intermediate_size")


def expand_checkpoint(src: str | Path, out: str | Path, spec: ExpandSpec, check_text: str | None = None,
                      check_rows_n: int = 8, force: bool = False) -> ExpandReport:
    """Expand the checkpoint (or a run folder's newest) ``src`` into a normal checkpoint ``out`` (start a
    run from it with ``pretrain --train.init_from``); the report's change is measured on ``check_text``. An
    existing checkpoint at ``out`` is replaced only with ``force`` (``biglm.outputs.check_output``)."""
    folder = resolve_checkpoint(src, check=verify_model)
    out = check_output(out, CHECKPOINT, [src, folder, check_text], force=force)
    loaded = load_model(folder)
    grown, plan = expand_model(loaded.model, spec)
    length = min(128, loaded.config.max_seq_len)
    rows = check_rows(loaded.tokenizer, loaded.config.vocab_size, check_text, check_rows_n, length, spec.seed)
    change = max_logit_change(loaded.model, grown, rows)
    report = ExpandReport(str(loaded.path), str(out), plan.exact, change,
                          {k: getattr(plan.source, k) for k in _SHAPE}, {k: getattr(plan.target, k) for k in _SHAPE},
                          asdict(spec))
    meta = {"expanded_from": str(loaded.path), "expand": asdict(report), "source_step": loaded.meta.get("step", 0)}
    write_checkpoint(out, model_state_dict(grown), plan.target, loaded.tokenizer, step=0, meta=meta)
    return report
