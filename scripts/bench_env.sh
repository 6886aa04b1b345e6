#!/usr/bin/env bash
# A separate virtual environment for the benchmarks that compare against other libraries (TRL):
# the service's own venv (.venv, used by tests and CI) does not grow. torch is installed first,
# pinned to the service's version, and the bench extra is then checked not to replace it.
#
#   bash scripts/bench_env.sh          # creates .venv-bench (git-ignored)
#   .venv-bench/bin/python -m bench.trl_compare
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=.venv-bench
TORCH_PIN=$(grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet "$TORCH_PIN"
# The dry run lists what the bench extra would install; torch must not be among the changes.
plan=$("$VENV/bin/pip" install --dry-run --quiet --report - -e '.[bench]' 2>/dev/null |
  "$VENV/bin/python" -c 'import json,sys; print(" ".join(i["metadata"]["name"]+"=="+i["metadata"]["version"] for i in json.load(sys.stdin)["install"]))')
if echo "$plan" | tr ' ' '\n' | grep -qi '^torch=='; then
  echo "refusing: the bench extra would replace $TORCH_PIN: $plan" >&2
  exit 1
fi
"$VENV/bin/pip" install --quiet -e '.[bench]'
"$VENV/bin/python" -c 'import torch, trl, transformers; print("torch", torch.__version__, "trl", trl.__version__, "transformers", transformers.__version__)'
