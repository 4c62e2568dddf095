#!/usr/bin/env bash
# Set up (if needed), lint, and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
ruff check src tests bench
lint-imports --no-cache  # the layers of docs/explanation/architecture.md ([tool.importlinter] in pyproject.toml)
python -m pytest -q "$@"
