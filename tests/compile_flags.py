"""The suite's XLA flags, for this process (conftest) and every process the tests start.

The suite's time is XLA's CPU compile time, not run time (tiny models, hundreds of programs): LLVM's cheapest code
generation compiles ~30 % faster. The HLO passes (fusion, layouts, sharding) are unchanged, so every program
computes what it does under the defaults. No jax import here: conftest sets the environment before jax loads.
"""

from __future__ import annotations

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def xla_flags(devices: int | None = None) -> str:
    """`XLA_FLAGS` for a child process: fast compiles, and `devices` simulated CPU devices when given."""
    return FAST_COMPILE + (f" --xla_force_host_platform_device_count={devices}" if devices else "")
