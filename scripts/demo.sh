#!/usr/bin/env bash
# README command 1: install, start the embedded service, run a real distillation through the API.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh run
exec .venv/bin/distill demo "$@"
