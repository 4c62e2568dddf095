#!/usr/bin/env bash
# Set up (if needed), lint, and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
ruff check src tests bench docs
lint-imports --no-cache  # the layers of docs/explanation/architecture.md ([tool.importlinter] in pyproject.toml)
# The documentation site (mkdocs.yml): a broken link or anchor, a missing page or snippet, an unknown API name fails
# it. Built into a temporary folder; its log is shown only on failure (--quiet would hide the warnings --strict
# counts). The two variables silence the MkDocs 1.x / Material end-of-life banners.
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
if ! log=$(NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true mkdocs build --strict --site-dir "$site" 2>&1); then
  echo "$log"
  exit 1
fi
python -m pytest -q "$@"
