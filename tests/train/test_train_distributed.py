"""Two processes (gloo, CPU) equal one process with the same global batch, for DDP and FSDP2."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from biglm.train.config import RunConfig
from test_train_loop import final_weights, micro_config, one_thread, read_rows, train  # noqa: F401


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int) -> None:
    """What torchrun gives a worker process: its rank and the rendezvous address (one CPU thread each)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)


def worker(rank: int, world: int, port: int, jobs: list[tuple[dict, str, int | None, bool]]) -> None:
    rank_env(rank, world, port)
    import torch.distributed as dist

    from biglm.train.setup import setup
    from biglm.train.streams import synthetic_data

    try:
        for cfg_dict, run_dir, until, resume in jobs:  # one process group for all (saves start-ups)
            trainer = setup(RunConfig.from_dict(cfg_dict), run_dir, resume=resume, data=synthetic_data())
            trainer.fit(until)
            trainer.close()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    # One process: 4 rows as 2 micro-batches of 2. Two ranks: 2 rows each as 2 micro-batches of 1
    # (so the no-sync path of gradient accumulation is exercised too). DDP, then FSDP2 stopped after
    # step 2 and resumed (sharded save: gathered full state; resume: rank 0 reads and broadcasts).
    modes = ("ddp", "fsdp")
    common = {m: dict(steps=4, global_batch_size=4, eval_every=2, save_every=2, parallel=m) for m in modes}
    cfgs = {m: micro_config(micro_batch_size=1, **common[m]).to_dict() for m in modes}
    jobs = [(cfgs["ddp"], str(tmp_path / "ddp-2"), None, False), (cfgs["fsdp"], str(tmp_path / "fsdp-2"), 2, False),
            (cfgs["fsdp"], str(tmp_path / "fsdp-2"), None, True)]
    mp.spawn(worker, args=(2, free_port(), jobs), nprocs=2, join=True)
    for m in modes:
        train(micro_config(micro_batch_size=2, **common[m]), tmp_path / f"{m}-1")
        multi, single = read_rows(tmp_path / f"{m}-2"), read_rows(tmp_path / f"{m}-1")
        for key in ("loss", "loss_x", "loss_y", "grad_norm"):
            assert [r[key] for r in multi] == pytest.approx([r[key] for r in single], rel=1e-5, abs=1e-5), (m, key)
        assert [r["val_loss"] for r in multi if "val_loss" in r] == \
            pytest.approx([r["val_loss"] for r in single if "val_loss" in r], abs=1e-5), m
        want, got = final_weights(tmp_path / f"{m}-1"), final_weights(tmp_path / f"{m}-2")
        assert set(got) == set(want), m
        for name, w in want.items():
            torch.testing.assert_close(got[name], w, atol=1e-5, rtol=1e-4, msg=lambda e, m=m: f"{m}: {e}")
