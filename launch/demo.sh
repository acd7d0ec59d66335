#!/usr/bin/env bash
# Install the runtime package into .venv and run the main job (offline, CPU is enough).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -c launch/constraints-cpu.txt -e .
mini-o3 demo --out "${DEMO_OUT:-runs/demo}" "$@"
