"""RL settings that must agree: the rollout's sampling temperature is the temperature of the trainer's
log-probs (the release samples and recomputes old log-probs at T=1.0, spec §4.2), one setting."""

from __future__ import annotations

import os

import pytest

from mini_o3_jax.config_files import load_config
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.rl.loop import run_rl
from mini_o3_jax.train.session import logprob_temperature, step_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RL_GRPO = os.path.join(REPO, "configs", "rl_grpo.py")


def test_one_temperature_for_sampling_and_log_probs() -> None:
    cfg = load_config(RL_GRPO)
    assert "temperature" not in cfg.train  # one setting: rollout.sampling.temperature
    assert cfg.rollout.sampling.temperature == 1.0 and step_config(cfg, "ppo").temperature == 1.0
    warm = load_config(RL_GRPO, ["rollout.sampling.temperature=0.7"])
    assert logprob_temperature(warm, "ppo") == 0.7
    assert step_config(warm, "ppo").temperature == 0.7  # the trainer follows the sampler
    with pytest.raises(ConfigError, match="temperature"):
        load_config(RL_GRPO, ["train.temperature=0.7"])  # no second setting to get out of step


def test_a_disagreeing_train_temperature_stops_rl_before_loading_anything() -> None:
    cfg = load_config(RL_GRPO)
    cfg.train.temperature = 0.5  # an older config file that still sets it
    with pytest.raises(ConfigError, match=r"train.temperature = 0.5 but rollout.sampling.temperature = 1.0"):
        logprob_temperature(cfg, "ppo")
    # run_rl checks it first: no model, tokenizer or prompts are needed to get the error
    with pytest.raises(ConfigError, match="train.temperature"):
        run_rl(cfg, [], None, None, console=None)
    cfg.train.temperature = 1.0  # agreeing is fine
    assert logprob_temperature(cfg, "ppo") == 1.0


def test_greedy_rollouts_are_refused_for_rl() -> None:
    cfg = load_config(RL_GRPO, ["rollout.sampling.temperature=0.0"])
    with pytest.raises(ConfigError, match="positive sampling temperature"):
        logprob_temperature(cfg, "ppo")


def test_sft_trains_at_temperature_one() -> None:
    cfg = load_config(os.path.join(REPO, "configs", "sft_coldstart.py"))
    assert logprob_temperature(cfg, "sft") == 1.0 and step_config(cfg, "sft").temperature == 1.0
