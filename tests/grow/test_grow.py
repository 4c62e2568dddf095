"""biglm expand: width by function-preserving initialisation (head-wise, GQA groups kept), depth by stacking
or zero-initialised layers, for every model family; exact where claimed, the change reported otherwise."""

from __future__ import annotations

import json

import pytest
import torch

from biglm import BiGLM, ModelConfig
from biglm.checkpoint import load_model, model_state_dict, write_checkpoint
from biglm.cli import main as cli_main
from biglm.errors import BiglmError
from biglm.grow import ExpandSpec, expand_model, expand_optimizer_state, make_plan, max_logit_change
from biglm.grow.api import family_layout

FAMILIES = ["masked", "causal", "bidirectional-ar"]
VARIANTS = {"rms-tied": {}, "ln-untied-lengthhead": {"norm": "layernorm", "tie_embeddings": False,
                                                     "length_head": True, "max_target_length": 16}}
EXACT = 1e-4  # float32 rounding on logits of size ~5


def trained_like(family: str, seed: int = 0, **over) -> BiGLM:
    """A micro model (4 query heads sharing 2 key/value heads) with weights far from their init."""
    torch.manual_seed(seed)
    model = BiGLM(ModelConfig.from_preset("micro", vocab_size=64, family=family, **over))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


ROWS = torch.randint(0, 64, (4, 40), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_exact_expansions(family, variant):
    model = trained_like(family, **VARIANTS[variant])
    for spec in (ExpandSpec(hidden_size=128, num_layers=4, depth_init="zero", noise=0.05),  # 2× width, stacked
                 ExpandSpec(hidden_size=192, intermediate_size=300, num_layers=3, depth_init="zero",
                            depth_order="interleave")):  # 3× heads and hidden, SwiGLU by an uneven 2.3×
        grown, plan = expand_model(model, spec)
        assert plan.exact
        change = max_logit_change(model, grown, ROWS)
        assert change["max_abs_dlogits"] < EXACT, (spec, change)
        if model.config.length_head:
            mask = torch.ones(ROWS.shape, dtype=torch.bool)
            with torch.no_grad():
                a = model(ROWS, family_layout(family, ROWS), length_mask=mask).length_logits
                b = grown(ROWS, family_layout(family, ROWS), length_mask=mask).length_logits
            assert (a - b).abs().max() < EXACT


@pytest.mark.parametrize("family", FAMILIES)
def test_approximate_expansions_are_reported(family):
    model = trained_like(family)
    for spec in (ExpandSpec(hidden_size=96), ExpandSpec(hidden_size=128, mapping="random", seed=3),
                 ExpandSpec(num_layers=4)):
        grown, plan = expand_model(model, spec)
        assert not plan.exact
        assert max_logit_change(model, grown, ROWS)["max_abs_dlogits"] > 1e-2, spec


def test_heads_grow_by_whole_gqa_groups_and_layers_stack():
    model = trained_like("causal")
    plan = make_plan(model.config, ExpandSpec(hidden_size=192, num_layers=5))
    t, d, group = plan.target, model.config.head_dim, 2
    assert (t.num_heads, t.num_kv_heads, t.head_dim) == (12, 6, d)
    q_heads = plan.maps["q"][::d] // d
    kv_heads = plan.maps["kv"][::d] // d
    for h in range(t.num_heads):  # query head h reads kv head h // group: its source must read the source's
        assert q_heads[h] // group == kv_heads[h // group]
    assert plan.layers == [0, 1, 0, 1, 0] and plan.new_layer == [False, False, True, True, True]
    grown, _ = expand_model(model, ExpandSpec(num_layers=4))
    for j in range(4):
        assert torch.equal(grown.model.layers[j].mlp.up_proj.weight, model.model.layers[j % 2].mlp.up_proj.weight)
    zero, _ = expand_model(model, ExpandSpec(num_layers=4, depth_init="zero"))
    assert zero.model.layers[3].self_attn.o_proj.weight.abs().sum() == 0
    assert zero.model.layers[3].mlp.up_proj.weight.abs().sum() > 0  # only the output projections start at zero


def test_noise_breaks_symmetry_and_keeps_the_function():
    model = trained_like("bidirectional-ar")
    plain, plan = expand_model(model, ExpandSpec(hidden_size=128))
    noisy, _ = expand_model(model, ExpandSpec(hidden_size=128, noise=0.05))
    j = int(plan.maps["hidden"][64])  # new unit 64 copies source unit j
    w_plain, w_noisy = plain.model.layers[0].mlp.up_proj.weight, noisy.model.layers[0].mlp.up_proj.weight
    assert torch.equal(w_plain[:, j], w_plain[:, 64])  # copies are identical without noise
    assert not torch.allclose(w_noisy[:, j], w_noisy[:, 64])
    torch.testing.assert_close(w_noisy[:, j] + w_noisy[:, 64], w_plain[:, j] + w_plain[:, 64])


def test_optimizer_moments_follow_the_gradient_rule():
    model = trained_like("causal")
    plan = make_plan(model.config, ExpandSpec(hidden_size=128, num_layers=4))
    name = "model.layers.1.mlp.up_proj.weight"  # rows: SwiGLU units (copy), columns: hidden (split)
    m, v = torch.randn(128, 64), torch.rand(128, 64)
    state = {"state": {name: {"exp_avg": m, "exp_avg_sq": v, "step": torch.tensor(7.0)}},
             "param_groups": [{"params": [name], "lr": 1.0}]}
    out = expand_optimizer_state(state, plan)
    rows, cols = plan.maps["inter"], plan.maps["hidden"]
    c = plan.counts["inter"].float()[:, None]
    for layer in (1, 3):  # layer 3 is the stacked copy of layer 1
        got = out["state"][f"model.layers.{layer}.mlp.up_proj.weight"]
        torch.testing.assert_close(got["exp_avg"], m[rows][:, cols] / c)
        torch.testing.assert_close(got["exp_avg_sq"], v[rows][:, cols] / c**2)
        assert float(got["step"]) == 7.0
    assert out["param_groups"][0]["params"] == [name, "model.layers.3.mlp.up_proj.weight"]


def test_expand_cli_writes_a_checkpoint_training_continues(tmp_path):
    from biglm.train.config import RunConfig
    from biglm.train.setup import setup
    from biglm.train.streams import synthetic_data
    from test_hf import make_tokenizer

    model = trained_like("bidirectional-ar")
    src = write_checkpoint(tmp_path / "src", model_state_dict(model), model.config, make_tokenizer(), step=9)
    text = tmp_path / "check.jsonl"
    text.write_text("\n".join(json.dumps({"text": " ".join(["the cat sat on the mat"] * 8)}) for _ in range(3)))
    assert cli_main(["expand", "--ckpt", str(src), "--out", str(tmp_path / "big"), "--hidden-size", "2x",
                     "--num-layers", "2x", "--depth-init", "zero", "--check-text", str(text), "--check-rows", "2"]) == 0
    big = load_model(tmp_path / "big")
    assert (big.config.hidden_size, big.config.num_layers, big.config.family) == (128, 4, "bidirectional-ar")
    report = big.meta["expand"]
    assert report["exact_claimed"] and report["change"]["max_abs_dlogits"] < EXACT
    base = {"steps": 2, "global_batch_size": 2, "log_every": 1, "save_every": 0, "progress": False,
            "tensorboard": False, "peak_flops": 1e11, "prefetch": 0, "init_from": str(tmp_path / "big")}
    cfg = lambda model: RunConfig.from_dict({"model": {"preset": "micro", "vocab_size": 64, **model},
                                             "objective": {"preset": "bidirectional-ar"},
                                             "data": {"seq_len": 32}, "train": base})
    with pytest.raises(BiglmError, match=r"--model\.hidden_size 128"):
        setup(cfg({}), tmp_path / "run0", data=synthetic_data(vocab_size=64))
    trainer = setup(cfg({"hidden_size": 128, "num_layers": 4, "num_heads": 8, "num_kv_heads": 4,
                         "intermediate_size": 256}), tmp_path / "run", data=synthetic_data(vocab_size=64))
    trainer.fit()
    trainer.close()
    assert (tmp_path / "run" / "checkpoints").is_dir()
    with pytest.raises(BiglmError, match="must be a multiple of the head size"):
        expand_model(model, ExpandSpec(hidden_size=100))
