"""The autoregressive objectives: direction markers, reversal, the R2L share, the family rule, and a
micro model that learns a synthetic language both ways through the trainer."""

from __future__ import annotations

import json
import math

import pytest
import torch

from biglm import BiGLM, ModelConfig
from biglm.errors import ConfigError
from biglm.objectives import IGNORE_INDEX, ObjectiveConfig, build_objective
from biglm.train.config import RunConfig
from biglm.train.setup import setup
from biglm.train.streams import SyntheticRows, synthetic_data

PAD, BOS, EOS, MASK = 0, 1, 2, 4
SPECIALS = {"pad": PAD, "bos": BOS, "eos": EOS, "mask": MASK}


def objective(name: str = "bidirectional-ar", **section):
    cfg = ObjectiveConfig.from_preset(name)
    for k, v in section.items():
        setattr(cfg.section, k, v)
    return build_objective(cfg, MASK, 64, SPECIALS)


def packed(*docs: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([t for d in docs for t in d])[None]
    doc_ids = torch.tensor([i for i, d in enumerate(docs) for _ in d], dtype=torch.int32)[None]
    return ids, doc_ids


def test_causal_is_next_token_prediction_inside_each_document():
    # A piece that continues a document from the previous row gets a BOS in front (no loss right after it);
    # the tail of the row loses one token for it.
    ids, docs = packed([10, 11, 12, EOS], [BOS, 20, 21, 22, EOS], [BOS, 30, 31])
    b = objective("causal")(ids, docs, torch.Generator().manual_seed(0))
    assert b.input_ids.tolist() == [[BOS, 10, 11, 12, EOS, BOS, 20, 21, 22, EOS, BOS, 30]]
    assert b.labels.tolist() == [[IGNORE_INDEX, 11, 12, EOS, IGNORE_INDEX, 20, 21, 22, EOS, IGNORE_INDEX, 30,
                                  IGNORE_INDEX]]
    assert b.layout.kind == "causal" and b.layout.regions.sum() == 0
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]]


def test_r2l_pieces_are_the_mirror_image():
    ids, docs = packed([BOS, 20, 21, 22, EOS], [BOS, 30, 31, 32])
    b = objective(r2l_fraction=1.0)(ids, docs, torch.Generator().manual_seed(0))
    # Whole document: EOS 22 21 20 BOS; the cut one: EOS inserted, its first prediction left out.
    assert b.input_ids.tolist() == [[EOS, 22, 21, 20, BOS, EOS, 32, 31, 30]]
    assert b.labels.tolist() == [[22, 21, 20, BOS, IGNORE_INDEX, IGNORE_INDEX, 31, 30, IGNORE_INDEX]]
    assert b.layout.regions.tolist() == [[1] * 9]


def test_r2l_share_is_systematic_per_row():
    obj = objective(r2l_fraction=0.3)
    # 500 rows of 1 to 12 pieces: each row gets floor or ceil of 0.3 × its pieces, and every piece is
    # R2L with probability 0.3 whatever its place in the row.
    counts = torch.randint(1, 13, (500,), generator=torch.Generator().manual_seed(0))
    row = torch.repeat_interleave(torch.arange(500), counts)
    flags = obj.directions(row, 500, torch.Generator().manual_seed(1))
    per_row = torch.zeros(500, dtype=torch.long).index_add_(0, row, flags.long())
    assert ((per_row >= torch.floor(0.3 * counts)) & (per_row <= torch.ceil(0.3 * counts))).all()
    first = torch.ones_like(row, dtype=torch.bool)
    first[1:] = row[1:] != row[:-1]
    assert abs(flags[first].float().mean().item() - 0.3) < 0.06  # the first piece is not favoured
    # In real batches: the share of R2L pieces over packed synthetic rows.
    rows, g, r2l, total = SyntheticRows(128, 64, doc_len=(8, 40)), torch.Generator(), 0, 0
    for i in range(100):
        ids, docs = rows.row(i)
        b = obj(ids[None], docs[None], g.manual_seed(i))
        d = b.layout.document_ids[0]
        starts = torch.cat([torch.ones(1, dtype=torch.bool), d[1:] != d[:-1]]) & (d >= 0)
        r2l += int(b.layout.regions[0][starts].sum())
        total += int(starts.sum())
    assert abs(r2l / total - 0.3) < 0.03, r2l / total


def test_r2l_prediction_depends_only_on_later_tokens():
    torch.manual_seed(0)
    model = BiGLM(ModelConfig.from_preset("micro", vocab_size=64, family="bidirectional-ar")).eval()
    obj = objective(r2l_fraction=1.0)
    doc = [BOS, *range(20, 36), EOS]
    t = 8  # the document token whose R2L prediction we watch (doc[t])
    def logit_for_token_t(d):
        ids, docs = packed(d)
        b = obj(ids, docs, torch.Generator())
        where = (b.labels[0] == d[t]).nonzero()[:, 0]
        assert where.numel() == 1
        with torch.no_grad():
            out = model(b.input_ids, b.layout, b.position_ids).logits[0, where[0]]
        return out
    base = logit_for_token_t(doc)
    before = list(doc)
    before[3] = 50  # a token before t: R2L must not see it
    torch.testing.assert_close(logit_for_token_t(before), base, atol=1e-6, rtol=0)
    after = list(doc)
    after[t + 2] = 51  # a token after t changes the prediction
    assert (logit_for_token_t(after) - base).abs().max() > 1e-3


def test_checkpoints_without_a_family_load_as_masked(tmp_path):
    # A checkpoint's model_config.yaml written before the field existed (load_model reads it with from_file).
    from biglm.configurable import save_yaml

    config = ModelConfig.from_preset("micro", vocab_size=64, family="causal")
    save_yaml(config, tmp_path / "model_config.yaml")
    text = (tmp_path / "model_config.yaml").read_text()
    (tmp_path / "old.yaml").write_text("".join(x for x in text.splitlines(True) if not x.startswith("family")))
    assert ModelConfig.from_file(tmp_path / "model_config.yaml").family == "causal"
    assert ModelConfig.from_file(tmp_path / "old.yaml").family == "masked"


def test_family_follows_the_objective_or_is_checked():
    cfg = RunConfig.from_dict({"objective": {"preset": "bidirectional-ar"}})
    assert cfg.model.family == "bidirectional-ar"
    assert RunConfig.from_dict({"objective": {"name": "causal"}}).model.family == "causal"
    assert RunConfig.from_dict({"model": {"family": "bidirectional-ar"},
                                "objective": {"name": "causal"}}).model.family == "bidirectional-ar"
    with pytest.raises(ConfigError, match=r"model\.family='masked' does not fit objective 'causal'"):
        RunConfig.from_dict({"model": {"family": "masked"}, "objective": {"preset": "causal"}})
    with pytest.raises(ConfigError, match=r"r2l_fraction=1\.5"):
        RunConfig.from_dict({"objective": {"preset": "bidirectional-ar", "bidirectional_ar": {"r2l_fraction": 1.5}}})
    with pytest.raises(ConfigError, match="BOS"):
        build_objective(ObjectiveConfig.from_preset("causal"), MASK, 64, {"eos": EOS})


def test_micro_model_learns_a_synthetic_language_both_ways(tmp_path):
    # Documents repeat a random 2-4 token motif over 64 token types: the unigram level is about ln 64 =
    # 4.16 nats in either direction; only reading the motif back (forwards or backwards) gets below it.
    base = {"steps": 150, "global_batch_size": 8, "lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 10, "log_every": 10,
            "save_every": 0, "eval_batches": 2, "progress": False, "tensorboard": False, "peak_flops": 1e11,
            "prefetch": 0, "schedule": "cosine"}
    cfg = RunConfig.from_dict({"model": {"preset": "micro"}, "objective": {"preset": "bidirectional-ar"},
                               "data": {"seq_len": 64}, "train": base})
    trainer = setup(cfg, tmp_path / "run", data=synthetic_data(vocab_size=72, motif_len=(2, 4)))
    trainer.fit()
    trainer.close()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    unigram = math.log(64)
    first, last = rows[0], rows[-1]
    assert first["loss_l2r"] > 0.9 * unigram and first["loss_r2l"] > 0.9 * unigram, first
    assert last["loss_l2r"] < 0.5 * unigram and last["loss_r2l"] < 0.5 * unigram, last
    print(f"unigram {unigram:.3f}; L2R {first['loss_l2r']:.3f} -> {last['loss_l2r']:.3f}; "
          f"R2L {first['loss_r2l']:.3f} -> {last['loss_r2l']:.3f}")
