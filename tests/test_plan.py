"""`mini-o3 plan` compiles the trainer's real SFT and GRPO step functions for a TPU slice on this CPU
(libtpu's compiler through `jax.experimental.topologies`), with the splash attention kernel really compiled
(Mosaic custom calls in the program), and reports per-chip memory and FLOPs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from mini_o3_jax.config_files import load_config
from mini_o3_jax.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r'''
import dataclasses, json, sys
from mini_o3_jax.config_files import load_config
from mini_o3_jax.train.plan import format_rows, plan, write_results
rows = []
for name, loss in (("sft_tiny", "sft"), ("rl_tiny", "ppo")):
    cfg = load_config(name)
    cfg.train.micro_batch = 4  # one row per chip of a v5p:2x2x1 (4 chips)
    rows.append(plan(cfg, loss, "v5p:2x2x1", length=256))  # a multiple of 128: the splash kernel applies
write_results(rows, "tiny", sys.argv[1])
from mini_o3_jax.rl.plan import rollout_plan, write_rollout_results
cfg = load_config("rl_tiny")
ro = [rollout_plan(cfg, "v5p:2x2x1", preset="tiny", extend_tokens=128)]
write_rollout_results(ro, "rl_tiny", sys.argv[1])
cfg.rollout.pages = 4 * 10**9
ro.append(rollout_plan(cfg, "v5p:2x2x1", preset="tiny"))
print("ROLLOUT " + json.dumps([dict(dataclasses.asdict(r), fits=r.fits, episodes=r.episodes) for r in ro]))
print("RESULT " + json.dumps([dict(dataclasses.asdict(r), peak=r.peak_bytes, frac=r.hbm_fraction,
                                    seconds=r.step_seconds, mfu=r.mfu) for r in rows]))
'''


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("libtpu is not installed (launch/test.sh installs it with the [tpu] extra)")
    results = str(tmp_path_factory.mktemp("plan") / "RESULTS.md")
    with open(results, "w", encoding="utf-8") as f:
        f.write("# Benchmark results\n\nkept\n")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
    run = subprocess.run([sys.executable, "-c", SCRIPT, results], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads([x for x in run.stdout.splitlines() if x.startswith("RESULT ")][-1][len("RESULT "):])
    rollout = json.loads([x for x in run.stdout.splitlines() if x.startswith("ROLLOUT ")][-1][len("ROLLOUT "):])
    with open(results, encoding="utf-8") as f:
        return rows, f.read(), rollout


def test_the_rollout_plan_sizes_the_pool_per_chip_and_compiles_decode_and_extend(planned):
    """rl_tiny on a v5p:2x2x1 host: 8 slots over 4 chips, the pool every slot's 6144 tokens (it fits easily), the
    decode and extend programs compiled for the 4 chips with the cache split over them (decode through the paged
    prefix kernel); a pool larger than the chip
    is refused without compiling."""
    row, too_big = planned[2]
    assert row["chips"] == row["chips_per_host"] == 4 and row["slots_per_chip"] == 2
    assert row["pages_per_chip"] == 2 * (6144 // 64) + 1 and row["episodes"] == 2.0 and row["fits"]
    assert row["error"] is None and row["decode_workspace"] > 0 and row["extend_workspace"] > 0
    assert row["kernels"] == 1  # decode reads the pages with the Pallas TPU prefix kernel, compiled by Mosaic
    assert 0 < row["weights_bytes"] < 2**30 and row["trainer_bytes"] > 0
    assert not too_big["fits"] and too_big["error"].startswith("rollout.pages = 4000000000:")
    assert "mini-o3 plan --rollout:rl_tiny:begin" in planned[1] and "| v5p:2x2x1 | 4 (4) | 2 |" in planned[1]


def test_tiny_sft_and_grpo_steps_compile_for_a_v5p_slice_with_splash(planned):
    rows, _, _ = planned
    assert [r["loss"] for r in rows] == ["sft", "ppo"]
    for r in rows:
        assert r["chips"] == 4 and r["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
        assert r["kernels"] > 0  # Mosaic custom calls: the Pallas kernels were compiled for the TPU
        assert 0 < r["grads_bytes"] < r["capacity"] and r["opt_state_bytes"] > 0 and r["apply_bytes"] > 0
        assert r["capacity"] == 95 * 2**30 and 0 < r["frac"] < 0.01  # a tiny model on a 95 GiB chip
        # the program executes more than the model FLOPs (the rematerialised forward, the ViT's attention)
        assert 0 < r["model_flops"] < r["executed_flops"] and r["seconds"] > 0
        assert r["mfu"] == pytest.approx(r["efficiency"] * r["model_flops"] / r["executed_flops"])
        assert 0 < r["cost_model_efficiency"] <= 1  # libtpu's cost model of a matmul on the chip
    assert rows[0]["logprob_bytes"] == 0 and rows[1]["logprob_bytes"] > rows[1]["opt_state_bytes"]  # RL's pass


def test_results_section_is_written_and_the_rest_kept(planned):
    _, text, _ = planned
    assert text.startswith("# Benchmark results\n\nkept\n")
    assert "<!-- mini-o3 plan:tiny:begin -->" in text and "| v5p:2x2x1 | 4 | 1, 4, 1 | sft |" in text
    assert "| v5p:2x2x1 | 4 | 1, 4, 1 | ppo |" in text


def test_unknown_target_is_one_clear_error():
    from mini_o3_jax.train.plan import plan

    with pytest.raises(ConfigError, match="plan target 'h100:8'"):
        plan(load_config("sft_tiny"), "sft", "h100:8")


def test_per_chip_memory_is_read_from_the_buffer_assignment():
    """What a program reserves: every allocation of XLA's buffer assignment (libtpu's memory_analysis temp
    overstates large programs). Here: a 4 MiB argument, two 4 MiB temporaries, a 4 MiB output."""
    import jax
    import jax.numpy as jnp

    from mini_o3_jax.train.plan import _compile

    def f(x):
        y = jnp.sin(x @ x)
        return jnp.cos(y @ y) @ y

    _, reserved, source = _compile(jax.jit(f).lower(jax.ShapeDtypeStruct((1024, 1024), jnp.float32)))
    assert source == "buffer assignment" and reserved == 16 * 2**20
