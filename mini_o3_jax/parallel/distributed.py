"""Multi-host start-up: decide from the environment whether (and how) to call `jax.distributed.initialize`.

The decision is a pure function of the environment (`distributed_args`) so every launcher (our
SLURM/TPU scripts, a hand-written `torchrun`-style loop, a cluster JAX detects by itself) can be
tested as a table, without starting a runtime. `initialize` then applies it once, before anything
touches a JAX backend.

Sources, first match wins (docs/training.md has the same table with the reasons):

* ``MINI_O3_DISTRIBUTED=off`` -> None: single process, even inside a cluster job.
* ``MINI_O3_COORDINATOR`` + ``MINI_O3_NUM_PROCESSES`` + ``MINI_O3_PROCESS_ID`` (optional
  ``MINI_O3_LOCAL_DEVICE_IDS``) -> explicit kwargs; a partial set is a ``ConfigError``.
* ``JAX_COORDINATOR_ADDRESS`` + ``JAX_NUM_PROCESSES`` + ``JAX_PROCESS_ID`` -> explicit kwargs: jax 0.10
  reads only the address (and ``JAX_LOCAL_DEVICE_IDS``) from the environment, never the other two.
* ``MINI_O3_DISTRIBUTED=auto`` -> ``{}``: JAX's own detection (GCE TPU metadata, K8s, ...), which the
  environment alone cannot reveal.
* SLURM step with ``SLURM_NTASKS`` > 1 -> ``{}`` (+ ``local_device_ids`` for one task per node).
* ``TPU_WORKER_HOSTNAMES``/``TPU_PROCESS_ADDRESSES`` with > 1 host, or ``MEGASCALE_*`` -> ``{}``.
* Open MPI with ``OMPI_COMM_WORLD_SIZE`` > 1 -> ``{}``.
* anything else -> None.

Explicit kwargs carry ``cluster_detection_method="deactivate"``: without it jax 0.10 still runs its
cluster detection whenever ``local_device_ids`` is unset and, inside SLURM or Open MPI, pins every
process to the single GPU ``local_device_ids=[local rank]`` -- wrong for one process per 8-GPU node.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax

from mini_o3_jax.errors import ConfigError

log = logging.getLogger(__name__)

EXPLICIT_VARS = ("MINI_O3_COORDINATOR", "MINI_O3_NUM_PROCESSES", "MINI_O3_PROCESS_ID")
JAX_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
# What jax's SlurmCluster.is_env_present() requires; they exist only inside an `srun` step.
SLURM_STEP_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
SWITCH = "MINI_O3_DISTRIBUTED"


def _int(env: Mapping[str, str], name: str, minimum: int) -> int:
    raw = env[name].strip()
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected an integer >= {minimum}") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r}: expected an integer >= {minimum}")
    return value


def _device_ids(env: Mapping[str, str], name: str) -> list[int] | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        ids = [int(x) for x in raw.split(",")]
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected comma-separated device ordinals, e.g. 0,1,2,3") from None
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise ConfigError(f"{name}={raw!r}: device ordinals must be distinct and >= 0")
    return ids


def _explicit(env: Mapping[str, str], names: Sequence[str], device_ids_var: str) -> dict[str, Any] | None:
    """kwargs from a (coordinator, count, id) triple of variables; None if none of them is set."""
    present = [n for n in names if env.get(n, "").strip()]
    if not present:
        return None
    missing = [n for n in names if n not in present]
    if missing:
        raise ConfigError(
            f"multi-host start-up: {', '.join(present)} set but {', '.join(missing)} missing; "
            f"set all of {', '.join(names)} (or none)"
        )
    coord_var, count_var, id_var = names
    coordinator = env[coord_var].strip()
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{coord_var}={coordinator!r}: expected host:port, e.g. 10.0.0.1:1234")
    num_processes = _int(env, count_var, 1)
    process_id = _int(env, id_var, 0)
    if process_id >= num_processes:
        raise ConfigError(f"{id_var}={process_id} must be < {count_var}={num_processes}")
    args: dict[str, Any] = {
        "coordinator_address": coordinator,
        "num_processes": num_processes,
        "process_id": process_id,
        "cluster_detection_method": "deactivate",
    }
    ids = _device_ids(env, device_ids_var)
    if ids is not None:
        args["local_device_ids"] = ids
    return args


def _count(env: Mapping[str, str], name: str) -> int:
    """Lenient integer for scheduler variables we only sniff (0 when absent or malformed)."""
    try:
        return int(env.get(name, "").strip())
    except ValueError:
        return 0


def _slurm(env: Mapping[str, str]) -> dict[str, Any] | None:
    if not env.get("SLURM_JOB_ID") or _count(env, "SLURM_NTASKS") <= 1:
        return None
    missing = [v for v in SLURM_STEP_VARS if v not in env]
    if missing:
        # The batch script itself (outside `srun`) sees SLURM_NTASKS of the job but is one process.
        raise ConfigError(
            f"SLURM job with SLURM_NTASKS={env['SLURM_NTASKS']} but {', '.join(missing)} unset: "
            "launch through `srun` (or set MINI_O3_DISTRIBUTED=off for a single-process run)"
        )
    args: dict[str, Any] = {}
    nodes = _count(env, "SLURM_STEP_NUM_NODES") or _count(env, "SLURM_NNODES")
    gpus = _count(env, "SLURM_GPUS_ON_NODE")
    if nodes and nodes == _count(env, "SLURM_NTASKS") and gpus > 1:
        # One task per node: JAX would pin it to GPU [SLURM_LOCALID] = [0]; give it the whole node.
        args["local_device_ids"] = list(range(gpus))
    return args


def _tpu(env: Mapping[str, str]) -> bool:
    hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
    multi_host = len([h for h in hosts.split(",") if h.strip()]) > 1
    return multi_host or any(k.startswith("MEGASCALE_") and env[k] for k in env)


def _ompi(env: Mapping[str, str]) -> bool:
    if _count(env, "OMPI_COMM_WORLD_SIZE") <= 1:
        return False
    if "OMPI_MCA_orte_hnp_uri" not in env:
        # jax's OmpiCluster finds the coordinator only through ORTE (Open MPI <= 4).
        raise ConfigError(
            f"Open MPI run with OMPI_COMM_WORLD_SIZE={env['OMPI_COMM_WORLD_SIZE']} but no OMPI_MCA_orte_hnp_uri "
            f"(Open MPI 5?): jax cannot find a coordinator; set {', '.join(EXPLICIT_VARS)}"
        )
    return True


def distributed_args(env: Mapping[str, str]) -> dict[str, Any] | None:
    """kwargs for `jax.distributed.initialize`, `{}` for JAX's auto-detection, or None (one process).

    Pure: reads only `env`, so launchers are testable without a runtime. Raises `ConfigError` for a
    half-configured environment, which would otherwise hang at start-up or silently train alone.
    """
    switch = env.get(SWITCH, "").strip().lower()
    if switch not in ("", "auto", "off"):
        raise ConfigError(f"{SWITCH}={env[SWITCH]!r}: expected 'auto', 'off' or unset")
    if switch == "off":
        return None
    explicit = _explicit(env, EXPLICIT_VARS, "MINI_O3_LOCAL_DEVICE_IDS")
    if explicit is not None:
        return explicit
    jax_partial = [n for n in JAX_VARS[1:] if env.get(n, "").strip()]
    if jax_partial:
        return _explicit(env, JAX_VARS, "JAX_LOCAL_DEVICE_IDS")
    if switch == "auto":
        return {}
    detected = _slurm(env)
    if detected is None and (_tpu(env) or _ompi(env)):
        detected = {}
    if detected is None and env.get("JAX_COORDINATOR_ADDRESS", "").strip():
        raise ConfigError(
            f"JAX_COORDINATOR_ADDRESS is set but {', '.join(JAX_VARS[1:])} are not and no cluster was "
            f"detected; set them (or {SWITCH}=auto to let JAX detect the cluster)"
        )
    return detected


@dataclass(frozen=True)
class ProcessInfo:
    """Where this process sits: what trainers need to shard data and decide who writes logs."""

    process_index: int
    process_count: int
    local_devices: tuple[jax.Device, ...]
    global_devices: tuple[jax.Device, ...]
    platform: str

    @property
    def is_main(self) -> bool:
        return self.process_index == 0


def initialize(env: Mapping[str, str] | None = None) -> ProcessInfo:
    """Start the multi-host runtime if the environment asks for it, then describe the topology.

    Must run before any JAX computation or `jax.devices()` call (JAX raises otherwise). Calling it
    again is a no-op apart from re-reading the topology. `{}` defers to JAX, which reads the real
    `os.environ` and cloud metadata, whatever `env` was given.
    """
    env = os.environ if env is None else env
    args = distributed_args(env)
    if args is not None and not jax.distributed.is_initialized():
        jax.distributed.initialize(**args)
    info = ProcessInfo(
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        local_devices=tuple(jax.local_devices()),
        global_devices=tuple(jax.devices()),
        platform=jax.default_backend(),
    )
    how = "single process" if args is None else ("jax auto-detect" if not args else args["coordinator_address"])
    log.info(
        "process %d/%d on %s: %d local / %d global devices (%s)",
        info.process_index,
        info.process_count,
        info.platform,
        len(info.local_devices),
        len(info.global_devices),
        how,
    )
    return info
