"""The plain-pip install path: the wheel alone makes ``lm_eval --model biglm`` work.

The wheel is built from a copy of the source tree and installed with ``--no-deps`` into a fresh virtual
environment whose dependencies come from this environment's import path through plain path lines in a
``.pth`` file. A path line adds the folder to ``sys.path`` but runs none of the ``.pth`` files in it, so
this environment's editable biglm and its own lm-eval hook stay inert: only the wheel's files and the
wheel's hook are exercised. Then the stock lm-eval command line scores a shipped task (``--limit 5``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(argv: list[str], env: dict[str, str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(argv)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def make_checkpoint(folder: Path) -> Path:
    """A micro model (random weights) with a tokenizer trained on the shipped cloze task's text."""
    from biglm import BiGLM, ModelConfig
    from biglm.checkpoint import model_state_dict, write_checkpoint
    from biglm.data import padded_vocab_size, train_tokenizer
    from biglm.evaluate import TASKS_DIR

    texts = folder / "texts.jsonl"
    folder.mkdir(parents=True)
    with open(texts, "w") as f:
        for line in (TASKS_DIR / "biglm_cloze.jsonl").read_text().splitlines():
            item = json.loads(line)
            f.write(json.dumps({"text": item["context"] + item["target"]}) + "\n")
    tokenizer = train_tokenizer([texts], 300, folder / "tok")
    config = ModelConfig.from_preset("micro", vocab_size=padded_vocab_size(tokenizer))
    return write_checkpoint(folder / "ckpt", model_state_dict(BiGLM(config)), config, tokenizer, step=1)


@pytest.mark.slow
def test_wheel_alone_makes_lm_eval_model_biglm_work(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")

    # 1. Build the wheel from a copy of the tree (the build writes build/ and *.egg-info beside the sources).
    src = tmp_path / "src-copy"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "src", src / "src", ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
         str(src)], env, tmp_path)
    (wheel,) = (tmp_path / "dist").glob("biglm-*.whl")

    # 2. A fresh environment: the wheel alone, dependencies seen through a plain path line.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], env, tmp_path)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env,
                    tmp_path).stdout.strip())
    # Every folder this interpreter imports from (its site-packages and any they chain to), but none that
    # holds a biglm package (the source tree, an editable install's path entry).
    deps = [p for p in sys.path if p and Path(p).is_dir() and not (Path(p) / "biglm").exists()]
    (site / "_deps_from_main_env.pth").write_text("".join(f"{p}\n" for p in deps))
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        env, tmp_path)
    assert (site / "biglm_lm_eval.pth").is_file(), "the wheel installs the hook into site-packages"
    where = run([str(python), "-c", "import biglm; print(biglm.__file__)"], env, tmp_path).stdout.strip()
    assert Path(where).is_relative_to(site), f"biglm imported from {where}, not from the installed wheel"

    # 3. The stock lm-eval command line, a task shipped inside the wheel, five examples.
    ckpt = make_checkpoint(tmp_path / "model")
    out = run([str(python), "-m", "lm_eval", "--model", "biglm", "--model_args", f"pretrained={ckpt}",
               "--tasks", "biglm_cloze", "--include_path", str(site / "biglm" / "evaluate" / "tasks"),
               "--limit", "5", "--device", "cpu", "--batch_size", "8"], env, tmp_path)
    table = [line for line in out.stdout.splitlines() if line.startswith("|biglm_cloze")]
    assert table and "perplexity" in out.stdout and "acc" in out.stdout, out.stdout[-2000:]

    # Without the wheel's hook the same command does not know the model (the check is not vacuous).
    (site / "biglm_lm_eval.pth").unlink()
    probe = "import lm_eval.models, lm_eval.api.registry as r; print('biglm' in r.model_registry)"
    assert run([str(python), "-c", probe], env, tmp_path).stdout.strip() == "False"
