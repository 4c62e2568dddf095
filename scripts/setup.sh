#!/usr/bin/env bash
# One-time set-up: a virtual environment in .venv with PyTorch pinned FIRST, then biglm and its
# dependencies. Installing torch first matters: a package that pulls plain `torch` would otherwise
# fetch a multi-gigabyte CUDA build. On a GPU machine, set TORCH_SPEC (e.g. "torch==2.13.0") to the
# build you want, or install torch yourself into .venv beforehand.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
  echo "[setup] installing $TORCH_SPEC"
  python -m pip install -q "$TORCH_SPEC"
fi
if ! python -c "import biglm, lm_eval, pytest, ruff, selenium, openai, hypothesis, filelock, importlinter, fastapi, uvicorn, pydantic, prometheus_client, schemathesis, httpx, mkdocs, material, mkdocstrings, mkdocstrings_handlers.python, mkdocs_gen_files, matplotlib
assert int(filelock.__version__.split('.')[0]) >= 4" 2>/dev/null; then
  echo "[setup] installing biglm and its dependencies"
  python -m pip install -q -e ".[eval,dev]"
fi
# lm-eval 0.4 reads no plugin entry points: a one-line .pth hook registers `--model biglm`. A wheel
# (`pip install biglm`) installs it itself; this editable install does not carry it, so write it here.
python -m biglm.evaluate.plugin install >/dev/null
python -c "import torch, biglm; print(f'[setup] biglm {biglm.__version__}, torch {torch.__version__}')"
