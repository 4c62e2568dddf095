"""Sharded checkpoints (torch.distributed.checkpoint): resume = uninterrupted on one process and on 2 gloo
ranks under FSDP2, resharding 2 → 1 ranks, damaged shards never used, and consolidation to one file."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from biglm.checkpoint import load_model, verify_checkpoint
from biglm.cli import main as cli_main
from biglm.errors import BiglmError
from biglm.train.sharded import is_sharded_checkpoint, read_sharded_model_state
from test_train_distributed import free_port, worker
from test_train_loop import final_weights, micro_config, one_thread, read_rows, train  # noqa: F401

KEYS = ("loss", "loss_x", "loss_y", "grad_norm")


def assert_same_rows(got: list[dict], want: list[dict], what: str) -> None:
    for key in KEYS:
        assert [r[key] for r in got] == pytest.approx([r[key] for r in want], rel=1e-5, abs=1e-5), (what, key)


def test_sharded_resume_equals_uninterrupted_and_consolidates(tmp_path, capsys):
    cfg = micro_config(steps=6, save_every=2, checkpoint_format="sharded")
    full = train(cfg, tmp_path / "full")
    train(cfg, tmp_path / "split", until=4)
    step4 = tmp_path / "split" / "checkpoints" / "step_00000004"
    assert is_sharded_checkpoint(step4) and not (step4 / "model.safetensors").exists()
    assert train(cfg, tmp_path / "split", resume=True) == full

    # Inference needs the single file: a one-line error first, then `biglm consolidate` writes it.
    newest = tmp_path / "split" / "checkpoints" / "step_00000006"
    with pytest.raises(BiglmError, match="biglm consolidate"):
        load_model(newest)
    assert cli_main(["consolidate", str(tmp_path / "split")]) == 0
    assert is_sharded_checkpoint(newest) and verify_checkpoint(newest)["step"] == 6  # still whole, resumable
    loaded = load_model(tmp_path / "split")
    reference = micro_config(steps=6, save_every=2)  # the same run with full checkpoints
    train(reference, tmp_path / "ref")
    want = final_weights(tmp_path / "ref")
    got = {k: v for k, v in loaded.model.state_dict().items() if k != "lm_head.weight"}
    assert set(got) == set(want)
    for name, w in want.items():
        torch.testing.assert_close(got[name], w, rtol=0, atol=0, msg=name)
    assert cli_main(["consolidate", str(tmp_path / "ref")]) == 2  # a full checkpoint: one-line error
    assert "not a sharded checkpoint" in capsys.readouterr().err
    assert cli_main(["consolidate", str(newest), "--out", str(tmp_path / "export")]) == 0
    assert set(load_file(str(tmp_path / "export" / "model.safetensors"))) == set(want)


def test_async_save_resumes_exactly(tmp_path):
    """Shards written in the background while training goes on; the folder is completed at the next save."""
    cfg = micro_config(steps=6, save_every=2, checkpoint_format="sharded", async_checkpoint=True)
    full = train(cfg, tmp_path / "full")
    train(cfg, tmp_path / "split", until=4)
    names = sorted(p.name for p in (tmp_path / "split" / "checkpoints").iterdir())
    assert names == ["step_00000002", "step_00000004"]  # both completed, no .tmp- left behind
    verify_checkpoint(tmp_path / "split" / "checkpoints" / "step_00000004")
    assert train(cfg, tmp_path / "split", resume=True) == full


def test_damaged_shard_is_never_used(tmp_path, capsys):
    cfg = micro_config(steps=6, save_every=2, keep_last=3, checkpoint_format="sharded")
    train(cfg, tmp_path / "run", until=4)
    step4 = tmp_path / "run" / "checkpoints" / "step_00000004"
    shard = next((step4 / "state").glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(BiglmError, match="distcp does not match its checksum"):
        verify_checkpoint(step4)
    (tmp_path / "run" / "checkpoints" / ".tmp-step_00000006").mkdir()  # a save killed half-way
    full = train(cfg, tmp_path / "full")
    assert train(cfg, tmp_path / "run", resume=True) == full  # resumed from step 2, redoing 3..6
    err = capsys.readouterr().err
    assert "skipping damaged checkpoint step_00000004" in err and "resuming from step_00000002" in err


@pytest.mark.slow
def test_two_ranks_save_one_and_two_resume(tmp_path):
    # FSDP2 on 2 gloo ranks saves sharded (asynchronously) at step 2; the run goes on to step 4 on 2 ranks,
    # and a copy of it resumes on 1 rank (unsharded). Both equal one uninterrupted process, same global batch.
    common = dict(steps=4, global_batch_size=4, eval_every=2, save_every=2, checkpoint_format="sharded")
    two = micro_config(micro_batch_size=1, parallel="fsdp", async_checkpoint=True, **common).to_dict()
    run2 = str(tmp_path / "two")
    mp.spawn(worker, args=(2, free_port(), [(two, run2, 2, False), (two, run2, None, True)]), nprocs=2, join=True)
    step2 = tmp_path / "two" / "checkpoints" / "step_00000002"
    assert sorted(p.name for p in (step2 / "state").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    shutil.copytree(tmp_path / "two", tmp_path / "one")  # the run as it was at step 2 (metrics cut on resume)
    shutil.rmtree(tmp_path / "one" / "checkpoints" / "step_00000004")
    # (2 rows per micro-batch on 1 rank: the same validation rows as 2 ranks × 1)
    train(micro_config(micro_batch_size=2, parallel="fsdp", **common), tmp_path / "one", resume=True)
    train(micro_config(micro_batch_size=2, **common), tmp_path / "single")
    want = read_rows(tmp_path / "single")
    for name in ("two", "one"):
        assert_same_rows(read_rows(tmp_path / name), want, name)
        assert [r["val_loss"] for r in read_rows(tmp_path / name) if "val_loss" in r] == \
            pytest.approx([r["val_loss"] for r in want if "val_loss" in r], abs=1e-5), name
    weights = [read_sharded_model_state(tmp_path / n / "checkpoints" / "step_00000004", micro_config().model)
               for n in ("two", "one")]
    for key, w in weights[0].items():
        torch.testing.assert_close(weights[1][key], w, atol=1e-5, rtol=1e-4, msg=key)
