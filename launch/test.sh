#!/usr/bin/env bash
# Install the package with its test extra into .venv and run the test suite.
# CPU torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
# the TPU compiler (libtpu) too: `mini-o3 plan` and its test compile the steps for TPU slices on this CPU
python -m pip install -q -c launch/constraints-cpu.txt -e ".[test,tpu]"
ruff check .
# whole files per worker: a module-scoped fixture (an 8-device subprocess, a trained model) then runs once
exec python -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
