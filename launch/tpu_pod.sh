#!/usr/bin/env bash
# Run a mini-o3 command on every worker of a Cloud TPU VM (pod slice), e.g. a v5p-64 (8 hosts).
#
# Why this shape: a TPU pod is N hosts that must all run the *same* program at the same time; JAX
# then discovers the slice itself (GCE metadata) when `jax.distributed.initialize()` is called with
# no arguments, which is what mini_o3_jax.parallel.distributed.initialize() does here because we
# export MINI_O3_DISTRIBUTED=auto. So the job is: ship the same code everywhere, install it once,
# start the command on all workers at once, keep each worker's output.
#
# Steps (all idempotent, so re-running just relaunches):
#   1. `git archive` of HEAD plus uncommitted changes to tracked files (`git stash create`);
#      untracked files are NOT shipped (commit or `git add` them first).
#   2. `gcloud compute tpus tpu-vm scp --worker=all` of that tarball, extracted over ~/REMOTE_DIR
#      (never deleted: checkpoints/runs written there survive).
#   3. `pip install -e ".[tpu,cloud]"` into ~/REMOTE_DIR/.venv, skipped while the marker file
#      .venv/.mini_o3_installed matches the hash of setup.py + pyproject.toml.
#   4. `gcloud compute tpus tpu-vm ssh --worker=all --command ...` with one log per worker in
#      runs/tpu/<TPU_NAME>/<UTC time>/<worker>.log here; worker 0's log is followed on stdout.
#
# Run it from tmux/screen: if this ssh session dies the remote processes get SIGHUP.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: launch/tpu_pod.sh TPU_NAME ZONE [options] -- COMMAND [ARGS...]

Copy this repository to every worker of a Cloud TPU VM, install it (once) with the tpu extra and
run COMMAND on all workers at the same time.

Options:
  --project P        GCP project (default: gcloud's configured project)
  --remote-dir DIR   checkout directory on the workers, relative to $HOME (default: mini_o3_jax)
  --logs DIR         local log root (default: runs/tpu); one file per worker per run
  --no-sync          skip copy + install (relaunch the code already on the workers)
  --dry-run          print every local command and what each worker runs, run nothing (no gcloud needed)
  -h, --help         show this help

Example (v5p-64 = 8 workers x 4 chips):
  launch/tpu_pod.sh my-v5p-64 us-east5-a --project my-proj -- \
      mini-o3 rl --config configs/rl_grpo.py --config.model_path=/path/on/every/worker/sft-ckpt

Environment for the command: prefix it with `env`, e.g.
  launch/tpu_pod.sh my-tpu us-east5-a -- env LIBTPU_INIT_ARGS=--xla_tpu_enable_latency_hiding_scheduler=true mini-o3 ...
EOF
}

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MARKER=.venv/.mini_o3_installed

# --- modes run on the workers (via the copy of this script shipped in the tarball) --------------

remote_setup() {
    # Create the venv and install the package unless the marker says this exact setup is there.
    cd "$REPO_ROOT"
    local want
    want="$(cat setup.py pyproject.toml | sha256sum | cut -d' ' -f1)"
    if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$want" ]]; then
        echo "[$(hostname)] mini_o3_jax already installed in $REPO_ROOT/.venv"
        return 0
    fi
    if [[ ! -x .venv/bin/python ]]; then
        "${PYTHON:-python3}" -m venv .venv || {
            echo "[$(hostname)] python3 -m venv failed; try: sudo apt-get install -y python3-venv" >&2
            return 1
        }
    fi
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[tpu,cloud]"
    echo "$want" >"$MARKER"
    echo "[$(hostname)] installed mini_o3_jax into $REPO_ROOT/.venv"
}

# What every worker runs, the same everywhere: JAX reads the worker's index and the coordinator from the TPU
# metadata (MINI_O3_DISTRIBUTED=auto -> jax.distributed.initialize() with no arguments).
WORKER_ENV=(MINI_O3_DISTRIBUTED=auto PYTHONUNBUFFERED=1)

remote_run() {
    cd "$REPO_ROOT"
    # shellcheck disable=SC1091  # exists on the workers after remote_setup
    . .venv/bin/activate
    export "${WORKER_ENV[@]}"
    echo "[$(hostname)] $(date -u +%FT%TZ) jax $(python -c 'import jax; print(jax.__version__)'): $*"
    exec "$@"
}

case "${1:-}" in
    --remote-setup) remote_setup; exit ;;
    --remote-run) shift; [[ "${1:-}" == "--" ]] && shift; remote_run "$@" ;;
    -h | --help) usage; exit 0 ;;
esac

# --- local side ----------------------------------------------------------------------------------

if [[ $# -lt 2 ]]; then
    usage >&2
    exit 2
fi
TPU="$1"
ZONE="$2"
shift 2
PROJECT_ARGS=()
REMOTE_DIR=mini_o3_jax
LOG_ROOT=runs/tpu
SYNC=1
DRY=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --project) PROJECT_ARGS=(--project "${2:?--project needs a value}"); shift 2 ;;
        --remote-dir) REMOTE_DIR="${2:?--remote-dir needs a value}"; shift 2 ;;
        --logs) LOG_ROOT="${2:?--logs needs a value}"; shift 2 ;;
        --no-sync) SYNC=0; shift ;;
        --dry-run) DRY=1; shift ;;
        -h | --help) usage; exit 0 ;;
        --) shift; break ;;
        *) echo "unknown option: $1 (the command goes after --)" >&2; usage >&2; exit 2 ;;
    esac
done
if [[ $# -eq 0 ]]; then
    echo "no command given after --" >&2
    usage >&2
    exit 2
fi
if [[ "$DRY" == 0 ]]; then
    command -v gcloud >/dev/null || { echo "gcloud not found: install the Google Cloud SDK" >&2; exit 1; }
fi

# Run a command, or print it (shell-quoted, one line, after "+ ") in a dry run.
x() {
    if [[ "$DRY" == 1 ]]; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}
# ${arr[@]+...}: an empty array under `set -u` is an error in bash < 4.4 (macOS ships 3.2).
gc() { x gcloud compute tpus tpu-vm "$@" --zone "$ZONE" ${PROJECT_ARGS[@]+"${PROJECT_ARGS[@]}"}; }
RDIR="$(printf '%q' "$REMOTE_DIR")"
[[ "$DRY" == 1 ]] && echo "== dry run: nothing is copied, installed or started"

if [[ "$SYNC" == 1 ]]; then
    TMP="$(mktemp -d)"
    trap 'rm -rf "$TMP"' EXIT
    cd "$REPO_ROOT"
    REF="$(git stash create)"  # empty when the tree is clean
    x git archive --format=tar.gz -o "$TMP/mini_o3_jax.tar.gz" "${REF:-HEAD}"
    echo "== copying $(git rev-parse --short HEAD)${REF:+ + local changes} to all workers of $TPU"
    gc scp "$TMP/mini_o3_jax.tar.gz" "$TPU:mini_o3_jax.tar.gz" --worker=all  # relative: into $HOME
    echo "== installing (skipped where already done)"
    gc ssh "$TPU" --worker=all --command \
        "mkdir -p $RDIR && tar -xzf mini_o3_jax.tar.gz -C $RDIR && rm mini_o3_jax.tar.gz && bash $RDIR/launch/tpu_pod.sh --remote-setup"
    cd - >/dev/null
fi

LOG_DIR="$LOG_ROOT/$TPU/$(date -u +%Y%m%dT%H%M%SZ)"
REMOTE_CMD="bash $RDIR/launch/tpu_pod.sh --remote-run -- $(printf '%q ' "$@")"
if [[ "$DRY" == 1 ]]; then
    echo "== running on all workers of $TPU; logs: $LOG_DIR/<worker>.log"
    gc ssh "$TPU" --worker=all --output-directory "$LOG_DIR" --command "$REMOTE_CMD"
    echo "== on every worker, in ~/$REMOTE_DIR (the same command: each learns its index from the TPU metadata):"
    printf 'cd ~/%q && . .venv/bin/activate && exec env' "$REMOTE_DIR"
    printf ' %q' "${WORKER_ENV[@]}" "$@"
    printf '\n'
    exit 0
fi
mkdir -p "$LOG_DIR"
echo "== running on all workers of $TPU; logs: $LOG_DIR/<worker>.log (following worker 0)"
: >"$LOG_DIR/0.log"
tail -F -n +1 "$LOG_DIR/0.log" 2>/dev/null &
TAIL_PID=$!
STATUS=0
gc ssh "$TPU" --worker=all --output-directory "$LOG_DIR" --command "$REMOTE_CMD" || STATUS=$?
sleep 1
kill "$TAIL_PID" 2>/dev/null || true
echo "== finished with status $STATUS; per-worker logs in $LOG_DIR"
exit "$STATUS"
