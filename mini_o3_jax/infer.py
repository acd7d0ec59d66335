"""Image + question -> answer, with the whole visual-search trajectory (what `mini-o3 infer` runs).

    from mini_o3_jax.infer import infer
    trajs = infer("ckpt/mini-o3-7b", "photo.jpg", "What is written on the sign?", out_dir="runs/infer")
    print(trajs[0].answer)        # runs/infer/report.html shows every zoom
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from mini_o3_jax.agent.environment import EnvConfig, StepResult
from mini_o3_jax.agent.report import write_report
from mini_o3_jax.agent.trajectory import Trajectory
from mini_o3_jax.model.weights import load_model
from mini_o3_jax.processing.chat import Tokenizer
from mini_o3_jax.processing.image import ImageProcessor, ImageSource
from mini_o3_jax.rollout.engine import EngineConfig, Episode, RolloutEngine
from mini_o3_jax.rollout.sampler import Sampling

AGENT_FILE = "agent.json"
# The toy recipe's GRPO model (`mini-o3 demo` at commit 802eafe, exported with `mini-o3 export --dtype
# float32`, 4 MB): what `mini-o3 infer` runs without --model, on `sample_puzzle()` without --image.
DEMO_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "demo_model")
_AGENT_KEYS = ("min_pixels", "max_pixels", "system_prompt", "max_turns", "max_context", "max_turn_tokens")


def sample_puzzle(level: str = "easy", seed: int = 0):
    """A `toy` puzzle the packaged demo model was trained on the like of (`synthetic.SceneConfig.toy`)."""
    from mini_o3_jax.data import synthetic

    return synthetic.make_puzzle(seed, level, synthetic.SceneConfig.toy())


def agent_settings(model: str | os.PathLike) -> dict[str, Any]:
    """The environment a checkpoint was trained with (`agent.json` beside its weights), if it says.

    A model trained with another pixel budget or without the system prompt (the toy recipe's) only
    behaves when run the same way; the released Mini-o3 needs no such file (the defaults are its).
    """
    path = os.path.join(os.fspath(model), AGENT_FILE)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return _checked(json.load(f), path)


def _checked(settings: Any, where: str) -> dict[str, Any]:
    if not isinstance(settings, dict):
        raise ValueError(f"{where}: expected a JSON object with keys among {_AGENT_KEYS}")
    unknown = sorted(set(settings) - set(_AGENT_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; expected keys among {_AGENT_KEYS}")
    return settings


def write_agent_settings(model: str | os.PathLike, **settings: Any) -> str:
    path = os.path.join(os.fspath(model), AGENT_FILE)
    _checked(settings, path)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=1)
    return path


def infer(
    model: str | os.PathLike,
    image: ImageSource,
    question: str,
    *,
    max_turns: int | None = None,
    samples: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    max_context: int | None = None,
    max_turn_tokens: int | None = None,
    decode_chunk: int = 64,
    dtype: str | None = None,
    out_dir: str | os.PathLike | None = None,
    on_turn: Callable[[int, StepResult], None] | None = None,
) -> list[Trajectory]:
    """Run `samples` Mini-o3 episodes on one image (the released eval: 12 turns, temperature 1.0).

    `model` is a HF or Orbax checkpoint directory with tokenizer and preprocessor files. Limits left
    at None come from the checkpoint's `agent.json` if it has one, else the released eval's
    (12 turns, 32k context, 8k tokens a turn, Mini-o3's pixel budget and system prompt).
    `on_turn(sample, step)` is called as each turn finishes. With `out_dir`, writes report.html.
    """
    path = os.fspath(model)
    agent = agent_settings(path)
    max_turns = max_turns or agent.get("max_turns", 12)
    max_context = max_context or agent.get("max_context", 32768)
    max_turn_tokens = max_turn_tokens or agent.get("max_turn_tokens", 8192)
    net = load_model(path, dtype=dtype)
    tokenizer, processor = Tokenizer.from_pretrained(path), ImageProcessor.from_pretrained(path)
    pixels = {k: agent[k] for k in ("min_pixels", "max_pixels", "system_prompt") if k in agent}
    env = EnvConfig(max_turns=max_turns, max_context=max_context, context_guard=min(2000, max_context // 4), **pixels)
    cfg = EngineConfig(
        slots=samples, max_len=max_context, decode_chunk=decode_chunk, max_turn_tokens=max_turn_tokens,
        sampling=Sampling(temperature=temperature, top_k=top_k, top_p=top_p), env=env,
    )
    engine = RolloutEngine(net, tokenizer, processor, cfg)
    try:
        trajs = engine.run([Episode(image, question)], samples=samples, seed=seed,
                           on_turn=None if on_turn is None else (lambda e, s, step: on_turn(s, step)))
    finally:
        engine.close()
    if out_dir is not None:
        write_report(trajs, os.path.join(os.fspath(out_dir), "report.html"), question=question)
    return trajs
