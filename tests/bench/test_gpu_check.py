"""The GPU check's code path on CPU (``--dry-run``): FSDP2 on one rank, both attention backends, the MFU and
block-skip figures, and the flex-vs-reference equality checks, all passing; on CUDA (marked ``gpu``) the same
with the fused kernels and bf16, at a small shape."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_check(tmp_path, *args: str) -> tuple[dict, str]:
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), *args, "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return json.loads(out.read_text()), res.stdout


@pytest.mark.gpu
def test_gpu_check_on_cuda(tmp_path):
    report, stdout = run_check(tmp_path, "--presets", "micro", "--seq", "512", "--steps", "2")
    assert "tokens/s" in stdout
    for r in report["throughput"]:
        assert "error" not in r, r
        assert r["tokens_per_s"] > 0 and math.isfinite(r["last_loss"])
    assert all(c["ok"] for c in report["equality"]), report["equality"]


def test_gpu_check_dry_run(tmp_path):
    report, stdout = run_check(tmp_path, "--dry-run")
    rows = report["throughput"]
    assert [(r["preset"], r["backend"]) for r in rows] == [("micro", "sdpa"), ("micro", "flex")]
    for r in rows:
        assert "error" not in r, r
        assert r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 and math.isfinite(r["last_loss"])
        assert 0 < r["skipped_blocks"] < 1  # packed documents: some blocks are skipped
    assert abs(rows[0]["first_loss"] - rows[1]["first_loss"]) < 1e-4  # same weights, same batch
    checks = {c["check"]: c for c in report["equality"]}
    assert {"train bidirectional", "train prefix_blind", "train prefix_lm", "train causal",
            "mask-predict cached pass", "autoregressive greedy, KV cache"} <= set(checks)
    assert all(c["ok"] for c in checks.values()), checks
    assert "flex == sdpa" in stdout and "tokens/s" in stdout
