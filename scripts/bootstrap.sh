#!/usr/bin/env bash
# Creates .venv and installs the pinned project into it (torch 2.13.0 is the CPU build).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)-${1:-run}
if [ ! -f "$stamp" ]; then
  echo "==> installing pinned dependencies (first run only)"
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first and alone: the pinned 2.13.0 is the CPU build; nothing later may pull a CUDA one.
  .venv/bin/python -m pip install -q torch==2.13.0
  if [ "${1:-run}" = dev ]; then
    .venv/bin/python -m pip install -q -e '.[dev]'
  else
    .venv/bin/python -m pip install -q -e .
  fi
  touch "$stamp"
fi
