"""Multi-host start-up: the env -> initialize() decision table, a real 2-process CPU run, launch scripts."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mini_o3_jax.errors import ConfigError
from mini_o3_jax.parallel.distributed import ProcessInfo, distributed_args, initialize

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
OFF = "deactivate"
EXPLICIT = {"MINI_O3_COORDINATOR": "10.0.0.1:1234", "MINI_O3_NUM_PROCESSES": "4", "MINI_O3_PROCESS_ID": "3"}
EXPLICIT_ARGS = {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3, "cluster_detection_method": OFF}
JAX_ENV = {"JAX_COORDINATOR_ADDRESS": "h0:9999", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}
SLURM_STEP = {
    "SLURM_JOB_ID": "77",
    "SLURM_STEP_NODELIST": "gpu[01-02]",
    "SLURM_NTASKS": "2",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "0",
}

CASES = {
    "empty": ({}, None),
    "laptop noise": ({"HOME": "/root", "CUDA_VISIBLE_DEVICES": "0"}, None),
    "explicit": (EXPLICIT, EXPLICIT_ARGS),
    "explicit, device ids": (
        {**EXPLICIT, "MINI_O3_LOCAL_DEVICE_IDS": "0,1"},
        {**EXPLICIT_ARGS, "local_device_ids": [0, 1]},
    ),
    "explicit beats slurm": ({**SLURM_STEP, **EXPLICIT}, EXPLICIT_ARGS),
    "explicit beats jax vars": ({**JAX_ENV, **EXPLICIT}, EXPLICIT_ARGS),
    "explicit beats auto": ({**EXPLICIT, "MINI_O3_DISTRIBUTED": "auto"}, EXPLICIT_ARGS),
    "off beats everything": ({**EXPLICIT, **SLURM_STEP, "MINI_O3_DISTRIBUTED": "off"}, None),
    "IPv6 coordinator": (
        {**EXPLICIT, "MINI_O3_COORDINATOR": "[fe80::1]:8476"},
        {**EXPLICIT_ARGS, "coordinator_address": "[fe80::1]:8476"},
    ),
    "jax vars translated": (
        JAX_ENV,
        {"coordinator_address": "h0:9999", "num_processes": 2, "process_id": 0, "cluster_detection_method": OFF},
    ),
    "jax vars + JAX_LOCAL_DEVICE_IDS": (
        {**JAX_ENV, "JAX_LOCAL_DEVICE_IDS": "3"},
        {
            "coordinator_address": "h0:9999",
            "num_processes": 2,
            "process_id": 0,
            "cluster_detection_method": OFF,
            "local_device_ids": [3],
        },
    ),
    "auto": ({"MINI_O3_DISTRIBUTED": "auto"}, {}),
    "slurm step": (SLURM_STEP, {}),
    "slurm step, coordinator override": ({**SLURM_STEP, "JAX_COORDINATOR_ADDRESS": "gpu01:6000"}, {}),
    "slurm step, 1 task/node with 8 gpus": (
        {**SLURM_STEP, "SLURM_STEP_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "8"},
        {"local_device_ids": list(range(8))},
    ),
    "slurm step, 8 tasks/node": (
        {**SLURM_STEP, "SLURM_NTASKS": "16", "SLURM_STEP_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "8"},
        {},
    ),
    "slurm single task": ({**SLURM_STEP, "SLURM_NTASKS": "1"}, None),
    "slurm batch shell, off": ({"SLURM_JOB_ID": "77", "SLURM_NTASKS": "2", "MINI_O3_DISTRIBUTED": "off"}, None),
    "tpu gke hostnames": ({"TPU_WORKER_HOSTNAMES": "t-0,t-1,t-2,t-3", "TPU_WORKER_ID": "2"}, {}),
    "tpu process addresses": ({"TPU_PROCESS_ADDRESSES": "10.0.0.2:8476,10.0.0.3:8476"}, {}),
    "tpu single host": ({"TPU_WORKER_HOSTNAMES": "localhost"}, None),
    "tpu multislice": ({"MEGASCALE_COORDINATOR_ADDRESS": "10.1.0.2", "MEGASCALE_NUM_SLICES": "2"}, {}),
    "open mpi": ({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "1", "OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:5"}, {}),
    "open mpi single rank": ({"OMPI_COMM_WORLD_SIZE": "1"}, None),
    "k8s pod alone is not a cluster": ({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, None),
}

ERRORS = {
    "partial explicit": ({"MINI_O3_COORDINATOR": "h:1"}, "MINI_O3_NUM_PROCESSES, MINI_O3_PROCESS_ID missing"),
    "partial explicit 2": (
        {"MINI_O3_NUM_PROCESSES": "2", "MINI_O3_PROCESS_ID": "0"},
        "MINI_O3_COORDINATOR missing",
    ),
    "no port": ({**EXPLICIT, "MINI_O3_COORDINATOR": "10.0.0.1"}, "MINI_O3_COORDINATOR='10.0.0.1'"),
    "bad port": ({**EXPLICIT, "MINI_O3_COORDINATOR": "h:99999"}, "host:port"),
    "count not int": ({**EXPLICIT, "MINI_O3_NUM_PROCESSES": "two"}, "MINI_O3_NUM_PROCESSES='two'"),
    "count zero": ({**EXPLICIT, "MINI_O3_NUM_PROCESSES": "0"}, ">= 1"),
    "id out of range": ({**EXPLICIT, "MINI_O3_PROCESS_ID": "4"}, "MINI_O3_PROCESS_ID=4 must be < MINI_O3_NUM_PROCESSES=4"),
    "negative id": ({**EXPLICIT, "MINI_O3_PROCESS_ID": "-1"}, ">= 0"),
    "bad device ids": ({**EXPLICIT, "MINI_O3_LOCAL_DEVICE_IDS": "0,x"}, "MINI_O3_LOCAL_DEVICE_IDS"),
    "partial jax vars": ({"JAX_NUM_PROCESSES": "2"}, "JAX_COORDINATOR_ADDRESS, JAX_PROCESS_ID missing"),
    "lonely jax coordinator": ({"JAX_COORDINATOR_ADDRESS": "h:1"}, "no cluster was detected"),
    "bad switch": ({"MINI_O3_DISTRIBUTED": "yes"}, "MINI_O3_DISTRIBUTED='yes'"),
    "slurm batch shell": ({"SLURM_JOB_ID": "77", "SLURM_NTASKS": "2"}, "launch through `srun`"),
    "open mpi 5": ({"OMPI_COMM_WORLD_SIZE": "2"}, "OMPI_MCA_orte_hnp_uri"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_distributed_args(name):
    env, expected = CASES[name]
    assert distributed_args(env) == expected


@pytest.mark.parametrize("name", list(ERRORS))
def test_distributed_args_errors(name):
    env, message = ERRORS[name]
    with pytest.raises(ConfigError) as info:
        distributed_args(env)
    assert message in str(info.value)


def test_initialize_single_process_is_idempotent():
    first = initialize({})
    assert isinstance(first, ProcessInfo)
    assert first == initialize({})
    assert (first.process_index, first.process_count, first.is_main) == (0, 1, True)
    assert first.global_devices == first.local_devices


_CHILD = """
import json
from mini_o3_jax.parallel.distributed import initialize
first = initialize()
info = initialize()  # second call must be a no-op
assert info == first
import jax.numpy as jnp
from jax.experimental import multihost_utils
gathered = multihost_utils.process_allgather(jnp.array([info.process_index])).ravel().tolist()
print(json.dumps({"index": info.process_index, "count": info.process_count,
                  "global": len(info.global_devices), "local": len(info.local_devices), "gathered": gathered}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_on_cpu():
    """Two real processes meet at a local coordinator: topology and one cross-process allgather."""
    port = _free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MINI_O3_", "JAX_", "SLURM_", "OMPI_"))}
    procs = []
    for rank in range(2):
        env = {
            **base,
            "JAX_PLATFORMS": "cpu",
            "MINI_O3_COORDINATOR": f"127.0.0.1:{port}",
            "MINI_O3_NUM_PROCESSES": "2",
            "MINI_O3_PROCESS_ID": str(rank),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _CHILD], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    reports = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err[-3000:]
            reports.append(json.loads(out.strip().splitlines()[-1]))  # gloo chats on stdout before us
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert sorted(r["index"] for r in reports) == [0, 1]
    for r in reports:
        assert (r["count"], r["global"], r["local"], r["gathered"]) == (2, 2, 1, [0, 1])


@pytest.mark.parametrize("script", ["tpu_pod.sh", "slurm_gpu.sbatch"])
def test_launch_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(LAUNCH / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_tpu_pod_help():
    result = subprocess.run(["bash", str(LAUNCH / "tpu_pod.sh"), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "Usage: launch/tpu_pod.sh TPU_NAME ZONE" in result.stdout


_FAKE_GCLOUD = r"""#!/usr/bin/env bash
# Stand-in for `gcloud compute tpus tpu-vm {scp,ssh}` on a 2-worker pod: each worker is a directory
# used as $HOME; scp copies into it, ssh runs --command there (into --output-directory/<w>.log).
set -euo pipefail
echo "$*" >>"$FAKE_POD/gcloud.log"
[[ "$1 $2 $3" == "compute tpus tpu-vm" ]] || exit 64
sub=$4; shift 4
cmd=""; outdir=""; pos=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --command) cmd=$2; shift 2 ;;
        --output-directory) outdir=$2; shift 2 ;;
        --zone | --project) shift 2 ;;
        --worker=*) shift ;;
        *) pos+=("$1"); shift ;;
    esac
done
for w in 0 1; do
    home="$FAKE_POD/worker$w"
    mkdir -p "$home"
    if [[ $sub == scp ]]; then
        cp "${pos[0]}" "$home/${pos[1]#*:}"
    elif [[ -n $outdir ]]; then
        (cd "$home" && HOME="$home" bash -c "$cmd") >"$outdir/$w.log" 2>&1
    else
        (cd "$home" && HOME="$home" bash -c "$cmd")
    fi
done
"""


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_tpu_pod_flow_with_fake_gcloud(tmp_path):
    """Ship (incl. uncommitted edits), skip the install by marker, run with argument quoting intact."""
    repo, pod, bin_dir = tmp_path / "repo", tmp_path / "pod", tmp_path / "bin"
    for d in (repo / "launch", pod, bin_dir):
        d.mkdir(parents=True)
    for name in ("launch/tpu_pod.sh", "setup.py", "pyproject.toml"):
        shutil.copy(ROOT / name, repo / name)
    (repo / "NOTE.txt").write_text("committed\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "init")
    (repo / "NOTE.txt").write_text("edited\n")  # tracked but uncommitted: must still ship
    digest = subprocess.run(
        "cat setup.py pyproject.toml | sha256sum | cut -d' ' -f1", shell=True, cwd=repo, capture_output=True, text=True
    ).stdout.strip()
    for w in (0, 1):  # already installed: the marker matches, so no pip runs
        venv = pod / f"worker{w}" / "mini_o3_jax" / ".venv"
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "activate").write_text("")
        (venv / ".mini_o3_installed").write_text(digest + "\n")
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(_FAKE_GCLOUD)
    gcloud.chmod(0o755)
    env = {**os.environ, "FAKE_POD": str(pod), "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}"}
    probe = "import os, sys; print('ARGS', sys.argv[1:], os.environ['MINI_O3_DISTRIBUTED'])"
    cmd = ["bash", str(repo / "launch/tpu_pod.sh"), "my-tpu", "zone-a", "--project", "proj", "--logs", str(tmp_path / "logs")]
    result = subprocess.run(
        [*cmd, "--", "python", "-c", probe, "a b", "$HOME", "it's"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("already installed") == 2
    (run_dir,) = (tmp_path / "logs" / "my-tpu").iterdir()
    for w in (0, 1):
        assert (pod / f"worker{w}" / "mini_o3_jax" / "NOTE.txt").read_text() == "edited\n"
        assert not (pod / f"worker{w}" / "mini_o3_jax.tar.gz").exists()
        assert "ARGS ['a b', '$HOME', \"it's\"] auto" in (run_dir / f"{w}.log").read_text()
    calls = (pod / "gcloud.log").read_text().splitlines()
    assert [c.split()[3] for c in calls] == ["scp", "ssh", "ssh"]
    assert all("--worker=all" in c and "--zone zone-a" in c and "--project proj" in c for c in calls)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
@pytest.mark.parametrize("script", ["tpu_pod.sh", "slurm_gpu.sbatch"])
def test_launch_scripts_shellcheck(script):
    result = subprocess.run(["shellcheck", str(LAUNCH / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_slurm_help():
    result = subprocess.run(["bash", str(LAUNCH / "slurm_gpu.sbatch"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "sbatch launch/slurm_gpu.sbatch rl --config" in result.stdout


def test_slurm_xla_flags_known_to_jaxlib():
    """Every --xla_* flag in the sbatch file (set or suggested) parses: XLA aborts on unknown flags."""
    flags = sorted(set(re.findall(r"--xla_\w+=[^\s\"']+", (LAUNCH / "slurm_gpu.sbatch").read_text())))
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in flags
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": " ".join(flags)}
    code = "import jax.numpy as jnp; print(float(jnp.ones(3).sum()))"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "3.0", result.stderr[-2000:]


_FAKE_SCONTROL = """#!/usr/bin/env bash
# `scontrol show hostnames LIST` -> one host per task; both "nodes" are this machine.
for _ in $(seq "$SLURM_NTASKS"); do echo 127.0.0.1; done
"""

_FAKE_SRUN = """#!/usr/bin/env bash
# Start SLURM_NTASKS copies of the command at once with SLURM_PROCID set; fail if any fails.
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
    SLURM_PROCID=$i SLURM_LOCALID=0 "$@" >"$FAKE_SLURM_OUT/task$i.out" 2>&1 &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
"""

_FAKE_MINI_O3 = """#!/usr/bin/env bash
# Stands in for the `mini-o3` entry point: initialise from the env, report topology and argv.
exec python -c '
import json, sys
from mini_o3_jax.parallel.distributed import initialize
info = initialize()
print(json.dumps({"index": info.process_index, "count": info.process_count,
                  "global": len(info.global_devices), "argv": sys.argv[1:]}))
' "$@"
"""


def test_slurm_script_two_tasks_with_fake_slurm(tmp_path):
    """The sbatch body wires coordinator/count/id so that two srun tasks really meet (CPU, localhost)."""
    bin_dir, venv_bin, out = tmp_path / "bin", tmp_path / "venv" / "bin", tmp_path / "out"
    for d in (bin_dir, venv_bin, out):
        d.mkdir(parents=True)
    for path, text in ((bin_dir / "scontrol", _FAKE_SCONTROL), (bin_dir / "srun", _FAKE_SRUN), (venv_bin / "mini-o3", _FAKE_MINI_O3)):
        path.write_text(text)
        path.chmod(0o755)
    (venv_bin / "activate").write_text(f'PATH="{venv_bin}:$PATH"\n')
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MINI_O3_", "JAX_", "SLURM_", "OMPI_"))}
    env = {
        **base,
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "JAX_PLATFORMS": "cpu",
        "FAKE_SLURM_OUT": str(out),
        "MINI_O3_VENV": str(tmp_path / "venv"),
        "MINI_O3_PORT": str(_free_port()),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "node[1-2]",
        "SLURM_NTASKS": "2",
        "SLURM_SUBMIT_DIR": str(ROOT),
    }
    args = ["rl", "--config", "configs/rl_grpo.py", "--note", "two words"]
    result = subprocess.run(
        ["bash", str(LAUNCH / "slurm_gpu.sbatch"), *args], env=env, capture_output=True, text=True, timeout=90
    )
    logs = {p.name: p.read_text() for p in out.iterdir()}
    assert result.returncode == 0, result.stdout + result.stderr + str(logs)
    assert "coordinator 127.0.0.1:" in result.stdout
    reports = [json.loads(logs[f"task{i}.out"].strip().splitlines()[-1]) for i in range(2)]
    assert [r["index"] for r in reports] == [0, 1]
    assert all((r["count"], r["global"], r["argv"]) == (2, 2, args) for r in reports)
