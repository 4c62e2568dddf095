"""A micro GLM learns blank infilling through the trainer: documents count upwards (each token the next id),
so every blank's contents and length follow from part A; after 300 steps greedy infilling of held-out
documents (blanks of 1-5 tokens) must be exact, length included (the model must emit [eop] in time)."""

from __future__ import annotations

import json

import pytest
import torch

from biglm.generate.autoregressive import AROptions
from biglm.generate.glm import GLMTokens, infill_ids
from biglm.train.config import RunConfig
from biglm.train.setup import setup
from biglm.train.streams import SYNTHETIC_SPECIALS, DataBundle, SyntheticRows

V = 72  # ids 8..71 count round (ids below 8 are the special tokens)


class CountingRows(SyntheticRows):
    def row(self, index: int, phase: str = "main") -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index * 2 + (phase == "anneal"))
        ids = torch.empty(self.seq_len, dtype=torch.long)
        docs = torch.empty(self.seq_len, dtype=torch.int32)
        pos = doc = 0
        while pos < self.seq_len:
            n = min(int(torch.randint(16, 41, (), generator=g)), self.seq_len - pos)
            start = int(torch.randint(0, V - 8, (), generator=g))
            ids[pos:pos + n] = 8 + (start + torch.arange(n)) % (V - 8)
            docs[pos:pos + n] = doc
            pos, doc = pos + n, doc + 1
        return ids, docs


def counting_data(cfg, env, micro) -> DataBundle:
    common = dict(seq_len=cfg.data.seq_len, vocab_size=V, rank=env.rank, world_size=env.world_size)
    return DataBundle(CountingRows(seed=0, **common), CountingRows(seed=9, num_rows=16, **common), mask_token_id=1,
                      vocab_size=128, n_tokens=V, anneal=True, special_ids=dict(SYNTHETIC_SPECIALS))


@pytest.mark.slow  # learns: hundreds of steps
def test_micro_glm_learns_to_fill_blanks(tmp_path):
    torch.set_num_threads(1)
    train = {"steps": 300, "global_batch_size": 16, "lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 20, "log_every": 25,
             "save_every": 0, "eval_batches": 2, "progress": False, "tensorboard": False, "peak_flops": 1e11,
             "prefetch": 0, "schedule": "cosine"}
    cfg = RunConfig.from_dict({"model": {"preset": "micro"}, "objective": {"preset": "glm"}, "data": {"seq_len": 64},
                               "train": train})
    assert cfg.model.position_encoding == "rope-2d"
    trainer = setup(cfg, tmp_path / "run", data=counting_data)
    trainer.fit()
    trainer.close()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["loss"] > 2.5 and rows[-1]["loss"] < 0.3, (rows[0]["loss"], rows[-1]["loss"])
    g = torch.Generator().manual_seed(123)
    prompts, answers = [], []
    for _ in range(50):
        start, at, length = (int(torch.randint(lo, hi, (), generator=g)) for lo, hi in ((0, V - 8), (3, 12), (1, 6)))
        doc = [8 + (start + k) % (V - 8) for k in range(24)]
        prompts.append([*doc[:at], SYNTHETIC_SPECIALS["mask"], *doc[at + length:]])
        answers.append(doc[at:at + length])
    result = infill_ids(trainer.model.eval(), prompts, GLMTokens(**SYNTHETIC_SPECIALS),
                        options=AROptions(max_new_tokens=8))
    exact = sum(f[0] == a for f, a in zip(result.fills, answers))
    print(f"loss {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f}; exact infills {exact}/50")
    assert exact >= 45
