"""Multi-host SFT with real processes: 2 processes x 4 CPU devices joined by `jax.distributed` on 127.0.0.1
train like one process with 8 devices, each building only its own rows; checkpoints are shared (a bucket on a
GCS server on 127.0.0.1, as pod workers share one); a kill of both, or SIGTERM to one, resumes to the same
parameters; only process 0 prints progress and metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from mini_o3_jax.train.metrics import read_jsonl_metrics
from tests.compile_flags import xla_flags
from tests.helpers import (
    REPO,
    FakeGCS,
    Reply,
    grade,
    host_env,
    read_text,
    start_hosts,
    wait_all,
    write_sharegpt,
    write_small_checkpoint,
)

STEPS = 8  # enough steps after each interruption that the next one lands mid-run
MESH = ["--config.mesh.fsdp=4", "--config.mesh.tensor=2", "--config.train.batch_size=4",
        "--config.checkpoint.every=2", "--config.optim.schedule='cosine'"]


def _sft(data: str, model: str, out: str) -> list[str]:
    return [sys.executable, "-m", "mini_o3_jax.cli", "sft", "--config", os.path.join(REPO, "configs/sft_tiny.py"),
            f"--config.data.path={data}", f"--config.out_dir={out}", f"--config.model_path={model}",
            f"--config.train.steps={STEPS}", *MESH]


def _in_bucket(gcs: FakeGCS, prefix: str) -> list[str]:
    """Object names under `prefix` of the test bucket, straight from the server (no client listing cache)."""
    with urllib.request.urlopen(f"{gcs.url}/storage/v1/b/{gcs.bucket}/o?prefix={prefix}", timeout=30) as r:
        return [item["name"] for item in json.load(r).get("items", [])]


def _when_saved(gcs: FakeGCS, run: str, procs: list[subprocess.Popen], step: int = 2) -> None:
    """Block until checkpoint `step` of gs://bucket/`run` is committed (the run is then past it, mid-way)."""
    deadline = time.time() + 300
    while not _in_bucket(gcs, f"{run}/checkpoints/{step}/commit_success.txt"):
        assert all(p.poll() is None for p in procs), "a host ended before it could be interrupted"
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.1)


def _final(out: str) -> list[np.ndarray]:
    import jax
    from flax import nnx

    from mini_o3_jax.model.weights import load_model

    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(load_model(f"{out}/final")))]


@pytest.fixture(scope="module")
def gcs():
    server = FakeGCS()
    server.activate()  # this process reads the hosts' final model and metrics from the bucket too
    yield server
    server.close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Data, a small model and the reference: one process with 8 devices, the same mesh."""
    d = tmp_path_factory.mktemp("multihost")
    data, model = write_sharegpt(str(d / "data"), 4), write_small_checkpoint(str(d / "model"))
    one = str(d / "one")
    run = subprocess.run(_sft(data, model, one), env=host_env(
        XLA_FLAGS=xla_flags(8)), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return d, data, model, _final(one)


def _resume_and_compare(setup, gcs: FakeGCS, run: str, logs: str) -> None:
    d, data, model, expected = setup
    out = f"gs://{gcs.bucket}/{run}"
    assert not _in_bucket(gcs, f"{run}/final/")
    codes = wait_all(start_hosts(_sft(data, model, out), logs, envs=(gcs.env, gcs.env)))
    assert codes == [0, 0], read_text(f"{logs}.1.err")[-3000:]
    assert "resumed from" in read_text(f"{logs}.0")
    got = _final(out)
    assert len(got) == len(expected) > 20
    # each host built half of every micro-batch; the sums run in another order: equal to fp32 rounding
    assert max(float(np.abs(a - b).max()) for a, b in zip(got, expected)) <= 1e-6
    logged = read_jsonl_metrics(f"{out}/logs")
    assert {m["step"] for m in logged} == set(range(1, STEPS + 1))
    assert all(m["tokens"] == logged[0]["tokens"] for m in logged)  # the whole batch every step, both halves
    # process 0 alone shows progress and metrics; the other is silent unless something goes wrong
    assert f"step {STEPS}:" in read_text(f"{logs}.0") and "sft:" in read_text(f"{logs}.0.err")
    assert "step " not in read_text(f"{logs}.1") and "sft:" not in read_text(f"{logs}.1.err")


def test_preempted_then_killed_hosts_resume_to_the_one_process_result(setup, gcs, tmp_path):
    """Two hosts train into a bucket (gs://). SIGTERM reaches one host: both save the same step and exit 0.
    The rerun is killed (SIGKILL, both hosts) after its next checkpoint; the third run finishes. The
    parameters equal the one-process run's."""
    d, data, model, _ = setup
    run, logs = "sft", str(tmp_path / "log")
    cmd = _sft(data, model, f"gs://{gcs.bucket}/{run}")
    procs = start_hosts(cmd, logs, envs=(gcs.env, gcs.env))
    _when_saved(gcs, run, procs)
    procs[1].send_signal(signal.SIGTERM)  # the signal reaches one host only
    assert wait_all(procs) == [0, 0], read_text(f"{logs}.0.err")[-3000:]
    said = read_text(f"{logs}.0")
    saved = int(said.split("preempted on another host: saved step ")[1].split(",")[0])
    assert 2 <= saved < STEPS and _in_bucket(gcs, f"{run}/checkpoints/{saved}/commit_success.txt")

    procs = start_hosts(cmd, logs, envs=(gcs.env, gcs.env))
    _when_saved(gcs, run, procs, saved + 2 - saved % 2)  # the next checkpoint (every 2 steps) after the resume
    for p in procs:
        p.send_signal(signal.SIGKILL)
    assert wait_all(procs) == [-signal.SIGKILL] * 2
    _resume_and_compare(setup, gcs, run, logs)


def test_an_out_dir_the_hosts_do_not_share_is_refused_on_every_host(setup, tmp_path):
    """Process 1 runs in a mount namespace with an empty tmpfs over `out_dir`: it cannot see what process 0
    writes there, as with a host-local disk on a pod. Both hosts refuse with one line naming out_dir."""
    d, data, model, _ = setup
    out, logs = tmp_path / "local", str(tmp_path / "log")
    out.mkdir()
    private = ["unshare", "--mount", "--map-root-user", "sh", "-c", f'mount -t tmpfs tmpfs "{out}" && exec "$0" "$@"']
    if subprocess.run(private + ["true"], capture_output=True).returncode != 0:
        pytest.skip("no mount namespaces here (unshare --mount --map-root-user)")
    codes = wait_all(start_hosts(_sft(data, model, str(out)), logs, wrap=private))
    assert codes == [2, 2]
    for rank in (0, 1):
        error = [line for line in read_text(f"{logs}.{rank}.err").splitlines() if line.startswith("error: ")]
        assert error == [f"error: out_dir = {out}: process 1 cannot see a file process 0 wrote there; a multi-host "
                         "run needs a directory every host shares (NFS, a bucket: gs://..., a GCS FUSE mount): "
                         "checkpoints on each host's own disk would never restore"], read_text(f"{logs}.{rank}.err")[-2000:]
    assert os.listdir(out) == []  # the probe is cleaned up


def test_rl_hosts_take_one_decision_when_one_hosts_judge_times_out(server, tmp_path):
    """A GRPO step on the toy config over 2 hosts, each rolling out and judging its own prompt group: the
    judge times out on every request of host 1 (its own endpoint path). Both hosts see every group's scores,
    so both drop host 1's group, update on host 0's and finish; each answer is judged once, by the host that
    owns it."""
    server.script = lambda req, n: Reply(delay=3.0) if req.path.startswith("/slow") else grade(req, n)
    out, logs = str(tmp_path / "rl"), str(tmp_path / "log")
    cmd = [sys.executable, "-m", "mini_o3_jax.cli", "rl", "--config", os.path.join(REPO, "configs/rl_tiny.py"),
           f"--config.out_dir={out}", "--config.mesh.fsdp=4", "--config.mesh.tensor=2", "--config.train.steps=1",
           "--config.train.max_gen_batches=1", "--config.train.dynamic_sampling=False", "--config.reward.kind=judge",
           "--config.reward.judge.timeout_s=1", "--config.reward.judge.attempts=1", "--config.reward.judge.api_key=k",
           "--config.reward.judge.model=m"]
    envs = ({"MINI_O3_JUDGE_URL": f"{server.url}/v1"}, {"MINI_O3_JUDGE_URL": f"{server.url}/slow/v1"})
    codes = wait_all(start_hosts(cmd, logs, envs=envs))
    assert codes == [0, 0], read_text(f"{logs}.0.err")[-3000:] + read_text(f"{logs}.1.err")[-3000:]
    logged = read_jsonl_metrics(f"{out}/logs")
    assert [m["step"] for m in logged] == [1]
    for m in logged:  # host 0 reports host 1's failures: the decision was taken on every host's scores
        assert m["valid_groups"] == 1 and m["judge_failed"] >= 1, m
    slow = [r for r in server.requests if r.path.startswith("/slow")]
    assert slow and len(slow) < len(server.requests) <= 2 * 4  # groups x samples: each answer asked once
    assert os.path.isdir(os.path.join(out, "final"))
