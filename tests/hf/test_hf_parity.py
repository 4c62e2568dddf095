"""``biglm/hf/modeling_biglm.py`` is a self-contained copy of ``biglm/model.py`` (remote code): exported through
``export_hf``, every family (masked, causal, bidirectional-ar, glm) under every position encoding (rope, rope-2d,
learned-2d) gives biglm's outputs in every attention layout it takes (bidirectional, padded, prefix-blind,
prefix-LM with 2D positions, causal, causal with left padding and with the KV cache). Micro models with random
weights; a change to one file that the other does not follow fails here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM

import biglm.hf.modeling_biglm as remote
from biglm import AttentionLayout, BiGLM, ModelConfig
from biglm.checkpoint import load_model, model_state_dict, write_checkpoint
from biglm.data.tokenizer import ensure_glm_tokens
from biglm.hf.convert import export_hf, import_hf
from test_hf import make_tokenizer, randomize

TOL = 1e-5
CASES = [(family, encoding, {}) for family in ("masked", "causal", "bidirectional-ar", "glm")
         for encoding in ("rope", "rope-2d", "learned-2d") if (family, encoding) != ("glm", "rope")]
# an autoregressive model with plain RoPE exports as Llama; with half the dimensions rotated, as remote code
CASES += [(family, "rope", {"rotary_fraction": 0.5}) for family in ("causal", "bidirectional-ar")]
HF_DIR = Path(remote.__file__).parent


def export(root: Path, family: str, encoding: str, **overrides: Any) -> tuple[BiGLM, Any]:
    """A micro checkpoint of ``family`` / ``encoding`` with random weights, exported; (biglm model, hf model)."""
    tok = make_tokenizer()
    if family == "glm":
        ensure_glm_tokens(tok)
    heads = {"length_head": True, "max_target_length": 16} if family == "masked" else {}
    config = ModelConfig.from_preset("micro", vocab_size=64, family=family, position_encoding=encoding, **heads,
                                     **overrides)
    model = BiGLM(config)
    randomize(model, 11)
    ckpt = write_checkpoint(root / "ckpt", model_state_dict(model), config, tok, step=1)
    out = export_hf(ckpt, root / "hf")
    arch = json.loads((out / "config.json").read_text())["architectures"][0]
    if arch == "LlamaForCausalLM":
        return load_model(ckpt).model.eval(), LlamaForCausalLM.from_pretrained(str(out)).eval()
    for name in ("modeling_biglm.py", "configuration_biglm.py", "decoding_biglm.py"):  # the remote code is these files
        assert (out / name).read_bytes() == (HF_DIR / name).read_bytes(), name
    cls = getattr(remote, arch)
    return load_model(ckpt).model.eval(), cls.from_pretrained(str(out)).eval()


def batch() -> dict[str, torch.Tensor]:
    """3 rows of 12 tokens: padding (right for bidirectional rows, left for causal ones), regions (7 in X / part
    A, 5 in Y / part B) and GLM-style 2D positions (part B at its blank's position 3, inside-span 1..5)."""
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(5, 64, (3, 12), generator=gen)
    right = torch.ones(3, 12, dtype=torch.long)
    right[1, 8:], right[2, 5:] = 0, 0
    regions = torch.zeros(3, 12, dtype=torch.int8)
    regions[:, 7:] = 1
    pos2d = torch.stack([torch.cat([torch.arange(7), torch.full((5,), 3)]),
                         torch.cat([torch.zeros(7, dtype=torch.long), torch.arange(1, 6)])], -1).expand(3, -1, -1)
    return {"ids": ids, "right": right, "left": right.flip(1), "regions": regions, "pos2d": pos2d}


def close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert a.shape == b.shape, what
    diff = float((a - b).abs().max())
    assert diff <= TOL, f"{what}: max difference {diff:.3g}"


def check_bidirectional(model: BiGLM, hf: Any, family: str, two_d: bool) -> None:
    x = batch()
    ids, real, regions = x["ids"], x["right"].bool(), x["regions"]
    docs = torch.where(real, 0, -1)
    region_kind = "prefix_lm" if family == "glm" else "prefix_blind"
    prefix = (regions == 0) & real
    ref = model(ids, length_mask=prefix if model.config.length_head else None)
    close(hf(ids).logits, ref.logits, "no mask")
    close(hf(ids, attention_mask=x["right"]).logits, model(ids, AttentionLayout("bidirectional", docs)).logits,
          "padding")
    ref = model(ids, AttentionLayout(region_kind, docs, regions), length_mask=prefix)
    got = hf(ids, attention_mask=x["right"], regions=regions, length_mask=prefix)
    close(got.logits, ref.logits, f"{region_kind} regions")
    if model.config.length_head:
        close(got.length_logits, ref.length_logits, "length head")
    if two_d:
        ref = model(ids, AttentionLayout(region_kind, None, regions), x["pos2d"]).logits
        close(hf(ids, regions=regions, position_ids=x["pos2d"]).logits, ref, f"{region_kind} with 2D positions")


def check_causal(model: BiGLM, hf: Any) -> None:
    x = batch()
    ids, real = x["ids"], x["left"].bool()
    close(hf(ids).logits, model(ids, AttentionLayout("causal")).logits, "causal")
    pos = (x["left"].cumsum(1) - 1).clamp_min(0)  # each row counts from its first real token, pads at 0
    got = hf(ids, attention_mask=x["left"], position_ids=pos).logits
    ref = model(ids, AttentionLayout("causal", torch.where(real, 0, -1)), pos).logits
    close(got[real], ref[real], "causal, left padding")
    head = hf(ids[:, :-1], use_cache=True)
    cache = getattr(head, "past_key_values", None) or head.cache
    step = hf(ids[:, -1:], past_key_values=cache, use_cache=True).logits[:, -1]
    close(step, model(ids, AttentionLayout("causal")).logits[:, -1], "causal, one step on the KV cache")


@pytest.mark.parametrize("family, encoding, overrides", CASES,
                         ids=[f"{f}-{e}" + "".join(f"-{k}" for k in o) for f, e, o in CASES])
@torch.no_grad()
def test_export_gives_biglm_outputs(tmp_path: Path, family: str, encoding: str, overrides: dict) -> None:
    model, hf = export(tmp_path, family, encoding, **overrides)
    if model.config.is_autoregressive:
        check_causal(model, hf)
    else:
        check_bidirectional(model, hf, family, encoding != "rope")


def test_every_family_and_encoding_is_covered() -> None:
    from biglm.config import MODEL_FAMILIES, POSITION_ENCODINGS

    remote_code = {(f, e) for f, e, o in CASES if f == "glm" or f == "masked" or e != "rope" or o}
    assert {f for f, _ in remote_code} == set(MODEL_FAMILIES)
    assert {e for _, e in remote_code} == set(POSITION_ENCODINGS)


def test_autoregressive_models_llama_cannot_express_ship_the_remote_code(tmp_path: Path) -> None:
    for family in ("causal", "bidirectional-ar"):
        for encoding in ("rope-2d", "learned-2d"):
            root = tmp_path / family / encoding
            model, hf = export(root, family, encoding)
            assert isinstance(hf, remote.BiGLMForCausalLM), (family, encoding)
            assert load_model(import_hf(root / "hf", root / "back")).config == model.config, (family, encoding)
