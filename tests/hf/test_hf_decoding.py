"""``BiGLMForMaskedLM.generate_parallel`` (``biglm/hf/decoding_biglm.py``, remote code): an exported masked model,
loaded with transformers, decodes token for token as biglm's engine (``generate_ids``, greedy) for every strategy,
commit rule and ``eos_exit``, on a batch of prompts of different lengths (one left-truncated), with either suffix
position mode; its forward passes are the engine's without the prefix cache. Bad options are one-line errors, the
same as biglm's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from biglm import BiGLM, BiglmError, ModelConfig
from biglm.checkpoint import load_model, model_state_dict, write_checkpoint
from biglm.generate import generate_ids
from biglm.generate.specials import banned_ids, special_ids
from biglm.hf import BiGLMForMaskedLM
from biglm.hf.convert import export_hf
from test_hf import make_tokenizer, randomize

L = 9
MAX_SEQ_LEN = 40
PROMPTS = [[5, 6, 7], [8], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19], list(range(5, 21)) * 2]  # the last truncated
CASES = [
    ("mask-predict", 1, {}), ("mask-predict", 4, {}), ("mask-predict", L, {}),
    ("threshold", 3, {}), ("threshold", 5, {"threshold": 0.5}), ("threshold", L, {"threshold": 0.3}),
    ("blocks", 4, {"block_size": 4}), ("blocks", 2, {"block_size": 3}), ("blocks", L, {"block_size": 2}),
    ("threshold", 5, {"commit": "factor"}), ("threshold", L, {"commit": "factor", "factor": 0.3}),
    ("threshold", 4, {"commit": "margin"}), ("threshold", L, {"commit": "margin", "margin": 0.8}),
    ("blocks", 6, {"block_size": 4, "commit": "threshold", "threshold": 0.6}),
    ("blocks", 5, {"block_size": 5, "commit": "factor", "factor": 2.0}),
    ("blocks", L, {"block_size": 3, "commit": "margin", "margin": 0.3}),
]


def export(root: Path, **overrides: Any) -> tuple[Any, BiGLMForMaskedLM]:
    """A micro masked model with random weights and a 64-row vocabulary (most of it padding), exported;
    (biglm's LoadedModel, the transformers model)."""
    config = ModelConfig.from_preset("micro", vocab_size=64, max_seq_len=MAX_SEQ_LEN, **overrides)
    model = BiGLM(config)
    randomize(model, 3)
    words = len(make_tokenizer())
    with torch.no_grad():  # confident predictions (p from 0.35 to 1) so that the commit rules decide
        model.model.embed_tokens.weight[:words] *= 3
        model.model.embed_tokens.weight[words:] = 0  # vocabulary padding: as unlikely as after training
    ckpt = write_checkpoint(root / "ckpt", model_state_dict(model), config, make_tokenizer(), step=1)
    out = export_hf(ckpt, root / "hf")
    return load_model(ckpt), BiGLMForMaskedLM.from_pretrained(str(out)).eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, BiGLMForMaskedLM]]:
    root = tmp_path_factory.mktemp("hfdec")
    return {**{mode: export(root / mode, suffix_positions=mode) for mode in ("continue", "aligned")},
            "folder": root / "continue" / "hf"}


def engine(loaded: Any, prompts: list[list[int]], steps: int, strategy: str, prefix_cache: bool = False,
           eos: int | None = None, **options: Any) -> Any:
    """biglm's greedy decoding of ``prompts`` (by default with full recompute, as the exported model does)."""
    tok, vocab = loaded.tokenizer, loaded.config.vocab_size
    ids = special_ids(tok)
    eos = ids["eos"] if eos is None else eos
    return generate_ids(loaded.model.eval(), prompts, bos_token_id=ids["bos"], eos_token_id=eos,
                        mask_token_id=ids["mask"], pad_token_id=ids["pad"], max_new_tokens=L, steps=steps,
                        strategy=strategy, banned_token_ids=banned_ids(tok, vocab), prefix_cache=prefix_cache,
                        **options)


@pytest.mark.parametrize("mode", ["continue", "aligned"])
def test_tokens_equal_biglm_engine(models: dict[str, Any], mode: str) -> None:
    loaded, hf = models[mode]
    passes = set()
    for strategy, steps, options in CASES:
        ref = engine(loaded, PROMPTS, steps, strategy, **options)
        out = hf.generate_parallel(PROMPTS, max_new_tokens=L, steps=steps, strategy=strategy, **options)
        what = f"{mode} {strategy} T={steps} {options}"
        assert out.sequences.tolist() == ref.full_token_ids, what
        assert out.token_ids == ref.token_ids and out.forward_passes == ref.forward_passes, what
        cached = engine(loaded, PROMPTS, steps, strategy, prefix_cache=True, **options)  # biglm's default
        assert out.sequences.tolist() == cached.full_token_ids and out.forward_passes == cached.forward_passes - 1
        passes.add((strategy, steps, out.forward_passes))
    # the rules did decide: threshold stopped early somewhere, Mask-Predict ran its T passes
    assert any(s == "threshold" and n < t for s, t, n in passes) and ("mask-predict", 4, 4) in passes


EOS_CASES = [("threshold", L, {}), ("threshold", 6, {"commit": "factor"}), ("threshold", L, {"commit": "margin"}),
             ("blocks", L, {"block_size": 3}), ("blocks", 6, {"block_size": 2, "commit": "threshold"})]


def test_eos_exit_equals_biglm_engine(models: dict[str, Any], tmp_path: Path) -> None:
    loaded, _ = models["continue"]
    eos = 13  # the word these random weights write most plays EOS, so that rows end early
    hf = BiGLMForMaskedLM.from_pretrained(str(models["folder"]), eos_token_id=eos).eval()
    saved = []
    for strategy, steps, options in EOS_CASES:
        ref = engine(loaded, PROMPTS, steps, strategy, eos=eos, eos_exit=True, **options)
        out = hf.generate_parallel(PROMPTS, max_new_tokens=L, steps=steps, strategy=strategy, eos_exit=True, **options)
        what = f"eos_exit {strategy} T={steps} {options}"
        assert out.sequences.tolist() == ref.full_token_ids and out.forward_passes == ref.forward_passes, what
        plain = hf.generate_parallel(PROMPTS, max_new_tokens=L, steps=steps, strategy=strategy, **options)
        saved.append(plain.forward_passes - out.forward_passes)
    assert max(saved) > 0  # the exit did stop rows early


def test_inputs_tensor_text_and_banned_ids(models: dict[str, Any]) -> None:
    loaded, hf = models["continue"]
    tok = loaded.tokenizer
    ref = hf.generate_parallel(PROMPTS[:3], max_new_tokens=L, steps=3)
    width = max(len(p) for p in PROMPTS[:3])
    left = torch.tensor([[0] * (width - len(p)) + p for p in PROMPTS[:3]])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in PROMPTS[:3]])
    assert torch.equal(hf.generate_parallel(left, mask, max_new_tokens=L, steps=3).sequences, ref.sequences)
    assert hf.generate_parallel(PROMPTS[1], max_new_tokens=L, steps=3).token_ids == ref.token_ids[1:2]
    text = "the cat sat on"
    by_text = hf.generate_parallel(tokenizer=tok, text=[text], max_new_tokens=L, steps=3)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert by_text.sequences.tolist() == engine(loaded, [ids], 3, "mask-predict").full_token_ids
    assert by_text.texts == [tok.decode(by_text.token_ids[0], skip_special_tokens=True)]
    # the export records the banned ids (vocabulary padding included): none is ever emitted
    assert hf.config.banned_token_ids == banned_ids(tok, 64)
    assert not set(ref.sequences.flatten().tolist()) & set(banned_ids(tok, 64))
    free = hf.generate_parallel(PROMPTS[:3], max_new_tokens=L, steps=3, banned_token_ids=[])
    assert not torch.equal(free.sequences, ref.sequences)  # [PAD] (id 0) would be chosen


@pytest.mark.parametrize(("options", "message"), [
    ({"strategy": "beam"}, "unknown strategy 'beam': expected one of mask-predict, threshold, blocks"),
    ({"strategy": "mask-predict", "threshold": 0.5},
     "strategy 'mask-predict' has no option 'threshold' (options: none)"),
    ({"strategy": "mask-predict", "eos_exit": True}, "strategy 'mask-predict' has no option 'eos_exit'"),
    ({"strategy": "threshold", "block_size": 4}, "strategy 'threshold' has no option 'block_size' (options: commit, "
                                                 "eos_exit, factor, margin, threshold)"),
    ({"strategy": "threshold", "commit": "vote"},
     "unknown commit rule 'vote': expected one of threshold, factor, margin"),
    ({"strategy": "threshold", "threshold": 1.5}, "threshold=1.5: must be in (0, 1]"),
    ({"strategy": "threshold", "commit": "margin", "margin": -0.1}, "margin=-0.1: must be in [0, 1]"),
    ({"strategy": "threshold", "factor": 2.0}, "option 'factor' is the parameter of commit rule 'factor' (this "
                                               "decoding commits by 'threshold')"),
    ({"strategy": "blocks", "threshold": 0.5}, "option 'threshold' needs a commit rule (commit='threshold')"),
    ({"strategy": "blocks", "block_size": 0}, "block_size=0: must be an integer > 0"),
    ({"strategy": "blocks", "eos_exit": "yes"}, "eos_exit=yes: must be true or false"),
    ({"steps": 10}, "steps=10: must be in 1..max_new_tokens=9"),
    ({"strategy": "blocks", "commit": "vote"}, "unknown commit rule 'vote': expected one of mask-predict, threshold,"),
    ({"cache": "dual"}, "unknown option 'cache' (the exported model recomputes the whole sequence"),
])
def test_bad_options_are_one_line_errors(models: dict[str, Any], options: dict[str, Any], message: str) -> None:
    """One line each, and biglm's own message where biglm's engine takes the same option."""
    loaded, hf = models["continue"]
    with pytest.raises(ValueError) as info:
        hf.generate_parallel(PROMPTS[:1], **{"max_new_tokens": L, **options})
    assert message in str(info.value) and "\n" not in str(info.value)
    if (options.get("commit") == "vote" and options["strategy"] == "blocks") or "cache" in options:
        return  # blocks also commit by mask-predict (biglm's message names the rules only); biglm has caches
    with pytest.raises(BiglmError) as ours:
        engine(loaded, PROMPTS[:1], options.pop("steps", 3), options.pop("strategy", "mask-predict"), **options)
    assert str(ours.value) == str(info.value)
