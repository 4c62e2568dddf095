"""The network and its attention layouts: invariants, exact caching, presets, config errors."""

import pytest
import torch

from biglm import AttentionLayout, BiGLM, ConfigError, ModelConfig
from biglm.attention import attention_mask
from biglm.config import PRESETS


def micro(**kw) -> BiGLM:
    torch.manual_seed(0)
    return BiGLM(ModelConfig.from_preset("micro", **kw)).eval()


def two_doc_row(T=48, split=(10, 20), boundary=30):
    """One row holding document 0 (X = [0, split0) , Y = [split0, boundary)) and document 1."""
    docs = torch.zeros(1, T, dtype=torch.int32)
    docs[:, boundary:] = 1
    regions = torch.zeros(1, T, dtype=torch.int8)
    regions[:, split[0]:boundary] = 1
    regions[:, boundary + split[1] - 10:] = 1
    return AttentionLayout("prefix_blind", docs, regions)


def test_prefix_outputs_ignore_suffix_and_other_documents():
    model = micro()
    layout = two_doc_row()
    ids = torch.randint(0, 512, (1, 48))
    base = model(ids, layout).logits
    prefix0 = (layout.document_ids == 0) & (layout.regions == 0)
    suffix0 = (layout.document_ids == 0) & (layout.regions == 1)

    changed = ids.clone()
    changed[suffix0] = torch.randint(0, 512, (int(suffix0.sum()),))
    changed[layout.document_ids == 1] = torch.randint(0, 512, (int((layout.document_ids == 1).sum()),))
    out = model(changed, layout).logits
    assert (out[prefix0] - base[prefix0]).abs().max() <= 1e-6

    # ...while suffix outputs depend on the prefix.
    changed = ids.clone()
    changed[prefix0] = (ids[prefix0] + 1) % 512
    out = model(changed, layout).logits
    assert (out[suffix0] - base[suffix0]).abs().max() > 1e-3


def test_documents_in_a_row_do_not_see_each_other_in_every_layout():
    model = micro()
    for kind in ("bidirectional", "prefix_blind", "prefix_lm", "causal"):
        layout = AttentionLayout(kind, two_doc_row().document_ids, two_doc_row().regions)
        ids = torch.randint(0, 512, (1, 48))
        base = model(ids, layout).logits
        changed = ids.clone()
        changed[:, 30:] = torch.randint(0, 512, (18,))
        assert (model(changed, layout).logits[:, :30] - base[:, :30]).abs().max() <= 1e-6, kind


def test_causal_and_prefix_lm_rules():
    model = micro()
    T = 24
    ids = torch.randint(0, 512, (1, T))
    causal = AttentionLayout("causal")
    base = model(ids, causal).logits
    changed = ids.clone()
    changed[:, 12:] = torch.randint(0, 512, (T - 12,))
    assert (model(changed, causal).logits[:, :12] - base[:, :12]).abs().max() <= 1e-6
    # prefix_lm: part A (first 8) is bidirectional over A; B token j sees A and B tokens <= j.
    regions = torch.zeros(1, T, dtype=torch.int8)
    regions[:, 8:] = 1
    plm = AttentionLayout("prefix_lm", None, regions)
    mask = attention_mask(plm, 1, T)[0, 0]
    assert mask[:8, :8].all() and not mask[:8, 8:].any()
    assert torch.equal(mask[8:, 8:], torch.ones(T - 8, T - 8, dtype=torch.bool).tril())
    assert mask[8:, :8].all()


def test_prefix_cache_equals_full_forward_for_ragged_batch():
    model = micro()
    prompt_lens, L = [7, 13], 9
    P = max(prompt_lens)
    prompts = torch.randint(0, 512, (2, P))
    # Left-pad prompts; pad tokens get document id -1 so no real token attends them.
    docs = torch.zeros(2, P, dtype=torch.int32)
    for i, n in enumerate(prompt_lens):
        docs[i, : P - n] = -1
    positions = (torch.arange(P)[None] - (P - torch.tensor(prompt_lens))[:, None]).clamp(min=0)
    cache = model(prompts, AttentionLayout("prefix_blind", docs, torch.zeros(2, P, dtype=torch.int8)),
                  positions, use_cache=True).cache
    suffix = torch.randint(0, 512, (2, L))
    suffix_pos = torch.tensor(prompt_lens)[:, None] + torch.arange(L)
    ones = torch.ones(2, L, dtype=torch.int8)
    cached = model(suffix, AttentionLayout("prefix_blind", torch.zeros(2, L, dtype=torch.int32), ones),
                   suffix_pos, past=cache).logits
    for i, n in enumerate(prompt_lens):  # reference: each row alone, unpadded, full sequence
        ids = torch.cat([prompts[i, P - n:], suffix[i]])[None]
        regions = torch.cat([torch.zeros(n), torch.ones(L)]).to(torch.int8)[None]
        full = model(ids, AttentionLayout("prefix_blind", None, regions)).logits[0, n:]
        assert (cached[i] - full).abs().max() <= 1e-5


def test_logits_at_selected_positions_match_full_logits():
    model = micro()
    ids = torch.randint(0, 512, (2, 16))
    select = torch.rand(2, 16) < 0.3
    full = model(ids).logits
    assert torch.allclose(model(ids, logits_mask=select).logits, full[select], atol=1e-6)


def test_length_head_pools_the_prefix():
    model = micro(length_head=True, max_target_length=32)
    ids = torch.randint(0, 512, (2, 16))
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, :6] = True
    out = model(ids, length_mask=mask)
    assert out.length_logits.shape == (2, 32)


def test_paper_136m_size_and_every_preset_builds_on_meta():
    assert abs(ModelConfig.from_preset("biglm-136m").num_parameters() - 135e6) <= 0.01 * 135e6
    expected = {"biglm-360m": 360e6, "biglm-1.3b": 1.3e9, "biglm-3.5b": 3.5e9, "biglm-124m": 124e6}
    for name, total in expected.items():
        assert abs(ModelConfig.from_preset(name).num_parameters() - total) <= 0.02 * total, name
    for name in PRESETS:
        with torch.device("meta"):
            model = BiGLM(ModelConfig.from_preset(name))
        assert all(p.device.type == "meta" for p in model.parameters())
        assert model.num_parameters() == model.config.num_parameters()


def test_meta_model_materialises_like_a_normal_one():
    config = ModelConfig.from_preset("micro")
    with torch.device("meta"):
        model = BiGLM(config)
    model.to_empty(device="cpu")
    torch.manual_seed(1)
    model.init_weights()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.isfinite(model(torch.randint(0, 512, (1, 8))).logits).all()
    assert model.model.embed_tokens.weight.std().item() == pytest.approx(0.02, rel=0.1)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"hidden_size": 0}, "hidden_size"),
        ({"num_layers": -1}, "num_layers"),
        ({"num_heads": 7}, "num_heads"),
        ({"num_kv_heads": 3}, "num_kv_heads"),
        ({"rotary_fraction": 0.0}, "rotary_fraction"),
        ({"norm": "batchnorm"}, "norm"),
        ({"dropout": 1.5}, "dropout"),
    ],
)
def test_invalid_model_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError) as err:
        ModelConfig.from_preset("micro", **overrides)
    message = str(err.value)
    assert field in message and "\n" not in message


def test_unknown_preset_and_unknown_key():
    with pytest.raises(ConfigError, match=r"unknown model preset 'biglm-137m'.*biglm-136m"):
        ModelConfig.from_preset("biglm-137m")
    with pytest.raises(ConfigError, match=r"unknown config key 'model.hiden_size'.*hidden_size"):
        ModelConfig.from_dict({"preset": "micro", "hiden_size": 64})
