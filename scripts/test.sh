#!/usr/bin/env bash
# README command 2: install, make sure PostgreSQL and Redis run on 127.0.0.1, lint, type-check,
# and run the default test suite (slow and gpu markers excluded; `-m slow` runs those).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh dev
bash scripts/services.sh
echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy"
.venv/bin/mypy api models workers ml
echo "==> pytest"
set +e
.venv/bin/python -m pytest -p no:cacheprovider "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$status"
