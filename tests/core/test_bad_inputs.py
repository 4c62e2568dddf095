"""Bad input through the command line, as a new user types it: each case exits with status 2 and ONE line on
stderr naming the file, option or value and what was expected (no traceback), or, where the input is
legitimate after all, works."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from biglm.cli import main
from test_train_cli import CONFIGS, corpus  # noqa: F401  (fixture re-used)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, corpus) -> dict[str, Path]:  # noqa: F811
    """Files the cases refer to: the corpus, its tokenizer, a trained micro run, a binary file, a JSONL
    with the text under another field."""
    data, tok = corpus
    root = tmp_path_factory.mktemp("bad")
    run = root / "run"
    assert main(["pretrain", "--config", str(CONFIGS / "micro.yaml"), "--out", str(run), "--data.tokenizer", str(tok),
                 "--data.sources", f"[{data}]", "--data.cache_dir", str(root / "cache"), "--train.steps", "2",
                 "--train.progress", "false"]) == 0
    (root / "photo.txt").write_bytes(bytes(range(256)) * 100)
    with open(root / "posts.jsonl", "w") as f:
        for i in range(50):
            f.write(json.dumps({"id": i, "body": "the cat sat on the mat " * 8}) + "\n")
    return {"root": root, "data": data, "tok": tok, "run": run}


def pretrain_args(c: dict[str, Path], *extra: str) -> list[str]:
    return ["pretrain", "--config", str(CONFIGS / "micro.yaml"), "--out", str(c["root"] / "new"), "--data.tokenizer",
            str(c["tok"]), "--data.sources", f"[{c['data']}]", "--data.cache_dir", str(c["root"] / "cache"),
            "--train.progress", "false", "--train.steps", "2", *extra]


def gen(c: dict[str, Path], *extra: str) -> list[str]:
    return ["generate", "--ckpt", str(c["run"]), *extra]


def ev(c: dict[str, Path], *extra: str) -> list[str]:
    return ["evaluate", "--ckpt", str(c["run"]), "--tasks", "biglm_cloze", "--out", str(c["root"] / "eval"), *extra]


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")

# (case, argv from ctx, expected exit status, expected text on stderr (stdout for status 0)[, marks])
CASES = [
    ("binary file as a text source", lambda c: pretrain_args(c, "--data.sources", f"[{c['root'] / 'photo.txt'}]"),
     2, "photo.txt: binary data (NUL bytes in its first 64 KiB), not UTF-8 text"),
    ("jsonl without the text field", lambda c: pretrain_args(c, "--data.sources", f"[{c['root'] / 'posts.jsonl'}]"),
     2, "posts.jsonl: no record has a string field 'text' (50 records; the first has fields: id, body)"),
    ("missing relative tokenizer folder", lambda c: pretrain_args(c, "--data.tokenizer", str(c["root"]) + "/x"),
     2, "x: tokenizer folder not found"),
    ("misspelt section", lambda c: pretrain_args(c, "--trian.steps", "5"),
     2, "--trian.steps: unknown config key 'trian.steps'; did you mean 'train.steps'?"),
    ("option without its value", lambda c: pretrain_args(c, "--train.steps", "--train.lr", "1e-3"),
     2, "--train.steps: missing value (the next argument is the option --train.lr)"),
    ("infinite learning rate", lambda c: pretrain_args(c, "--train.lr", ".inf"),
     2, "train.lr=inf: expected a finite number"),
    ("negative learning rate", lambda c: pretrain_args(c, "--train.lr", "-1e-3"),
     2, "train.lr=-0.001: must be a finite number > 0"),
    ("unknown non-finite policy", lambda c: pretrain_args(c, "--train.nonfinite", "ignore"),
     2, "train.nonfinite='ignore': expected one of 'skip', 'stop'"),
    ("device name that is no device", lambda c: pretrain_args(c, "--train.device", "gpu0"),
     2, "train.device 'gpu0': not a device name"),
    ("pretrain on cuda without CUDA", lambda c: pretrain_args(c, "--train.device", "cuda"),
     2, "train.device cuda: this PyTorch", NO_CUDA),
    ("resume of a folder that is no run", lambda c: ["pretrain", "--out", str(c["root"] / "nothing"), "--resume"],
     2, "nothing/config.yaml: missing, and"),
    ("generate on cuda without CUDA", lambda c: gen(c, "--prompt", "the", "--device", "cuda"),
     2, "--device cuda: this PyTorch", NO_CUDA),
    ("generate on a device that is no device", lambda c: gen(c, "--prompt", "the", "--device", "cdua"),
     2, "--device 'cdua': not a device name"),
    ("whitespace-only prompt", lambda c: gen(c, "--prompt", "   "),
     2, "prompt 0 is blank (only whitespace): give some text to continue"),
    ("empty prompt", lambda c: gen(c, "--prompt", ""), 2, "prompt 0 is empty"),
    ("more steps than tokens", lambda c: gen(c, "--prompt", "the", "--max-new-tokens", "8", "--steps", "20"),
     2, "steps=20: must be in 1..max_new_tokens=8"),
    ("short output without --steps", lambda c: gen(c, "--prompt", "the", "--max-new-tokens", "8"), 0, ""),
    ("evaluate --limit 0", lambda c: ev(c, "--limit", "0"),
     2, "--limit 0: expected a number of examples per task (1, 2, ...) or a fraction in (0, 1)"),
    ("evaluate negative --limit", lambda c: ev(c, "--limit", "-5"), 2, "--limit -5: expected a number"),
    ("evaluate fractional --limit above 1", lambda c: ev(c, "--limit", "2.5"), 2, "--limit 2.5: expected a number"),
    ("evaluate on cuda without CUDA", lambda c: ev(c, "--device", "cuda"), 2, "--device cuda: this PyTorch", NO_CUDA),
    ("evaluate --limit 5", lambda c: ev(c, "--limit", "5", "--scoring", "single-pass"), 0, "biglm_cloze"),
]


@pytest.mark.parametrize("case, argv, status, text", [pytest.param(*c[:4], id=c[0], marks=c[4:]) for c in CASES])
def test_bad_input(ctx, capsys, caplog, case, argv, status, text):
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger="biglm"):
        assert main(argv(ctx)) == status, case
    out, err = capsys.readouterr()
    if status == 0:
        assert text in out, out
        return
    lines = [line for line in err.strip().splitlines() if not line.startswith("note: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert text in lines[0], lines[0]
    # Log warnings would reach the terminal as extra lines next to the error.
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("biglm")], caplog.text
