"""Image + question -> answer, with the whole visual-search trajectory (what `mini-o3 infer` runs).

    from mini_o3_jax.infer import infer
    trajs = infer("ckpt/mini-o3-7b", "photo.jpg", "What is written on the sign?", out_dir="runs/infer")
    print(trajs[0].answer)        # runs/infer/report.html shows every zoom
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from mini_o3_jax.agent.environment import EnvConfig, StepResult
from mini_o3_jax.agent.report import write_report
from mini_o3_jax.agent.trajectory import Trajectory
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.model.weights import load_model
from mini_o3_jax.processing.chat import Tokenizer
from mini_o3_jax.processing.image import MINI_O3_MAX_PIXELS, MINI_O3_MIN_PIXELS, ImageProcessor, ImageSource
from mini_o3_jax.rollout.engine import EngineConfig, Episode, RolloutEngine
from mini_o3_jax.rollout.sampler import Sampling

AGENT_FILE = "agent.json"
# The toy recipe's GRPO model (`mini-o3 demo`, seed 0, from the packaged base; docs/demo.md "Status"), exported
# with `mini-o3 export --dtype float32` (4 MB): what `mini-o3 infer` runs without --model, on `sample_puzzle()`
# without --image.
DEMO_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "demo_model")
# The perception model `mini-o3 demo` starts from (its stand-in for a pretrained Qwen2.5-VL): the perception stages
# of configs/demo.py run from scratch, exported the same way (docs/demo.md, "The packaged base").
DEMO_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "demo_base")
_AGENT_KEYS = ("min_pixels", "max_pixels", "system_prompt", "max_turns", "max_context", "max_turn_tokens")
# What a checkpoint without agent.json runs with: the released eval (spec §1, §5) and Mini-o3's pixel budget.
RELEASED_AGENT: dict[str, Any] = {
    "min_pixels": MINI_O3_MIN_PIXELS, "max_pixels": MINI_O3_MAX_PIXELS, "system_prompt": EnvConfig.system_prompt,
    "max_turns": 12, "max_context": 32768, "max_turn_tokens": 8192,
}


def sample_puzzle(level: str = "easy", seed: int = 0):
    """A `toy` puzzle the packaged demo model was trained on the like of (`synthetic.SceneConfig.toy`)."""
    from mini_o3_jax.data import synthetic

    return synthetic.make_puzzle(seed, level, synthetic.SceneConfig.toy())


def toy_model_warning(model: str | os.PathLike, image: ImageSource) -> str | None:
    """One line warning that the packaged toy model is being run on an image unlike its toy puzzles, or None.

    Why: the packaged model (4 MB) has only ever seen `SceneConfig.toy()` scenes, 448x448 synthetic
    grids of coloured squares; on a photo it still answers, and the answer means nothing. A toy scene
    always has the preset's size, so an image of another size is not one (a 448x448 photo goes unwarned).
    An image that cannot be read gives None here: `infer` then reports it.
    """
    if os.path.realpath(os.path.expanduser(os.fspath(model))) != os.path.realpath(DEMO_MODEL):
        return None
    from PIL import Image

    from mini_o3_jax.data import synthetic

    try:
        if isinstance(image, Image.Image):
            size = image.size
        else:
            binary = isinstance(image, bytes | bytearray | memoryview)
            source = io.BytesIO(image) if binary else os.path.expanduser(os.fspath(image))
            with Image.open(source) as im:
                size = im.size
    except (OSError, SyntaxError, ValueError, TypeError):
        return None
    toy = synthetic.SceneConfig.toy()
    if size == (toy.width, toy.height):
        return None
    return (f"warning: the packaged toy demo model only knows the toy puzzles ({toy.width}x{toy.height} synthetic "
            f"scenes, `mini-o3 data synthetic --preset toy`); on this {size[0]}x{size[1]} image its answer means "
            "nothing. Pass --model a real checkpoint (e.g. a converted Mini-o3-7B, docs/eval.md).")


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


def resolve_agent(model: str | os.PathLike | None, explicit: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The agent settings to run `model` with, as `mini-o3 infer` and `mini-o3 eval` both do.

    Each of `_AGENT_KEYS` comes from `explicit` when it holds the key (what the caller or the user set; a
    `system_prompt` of None there means none), else from the checkpoint's `agent.json`, else from
    `RELEASED_AGENT`. `context_guard` is `explicit`'s, else min(2000, max_context // 4), so that a small
    context keeps room for a turn. A bad agent.json is a ConfigError naming the file.
    """
    explicit = explicit or {}
    unknown = sorted(set(explicit) - {*_AGENT_KEYS, "context_guard"})
    if unknown:
        raise ConfigError(f"resolve_agent: unknown setting(s) {unknown}; expected keys among {_AGENT_KEYS}")
    try:
        agent = agent_settings(model) if model is not None else {}
    except ValueError as e:  # a bad agent.json (a JSON error names no file on its own)
        where = os.path.join(os.fspath(model), AGENT_FILE)
        raise ConfigError(e if where in str(e) else f"{where}: {e}") from None
    out = {k: explicit[k] if k in explicit else agent.get(k, RELEASED_AGENT[k]) for k in _AGENT_KEYS}
    out["context_guard"] = explicit.get("context_guard", min(2000, out["max_context"] // 4))
    return out


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
    A leading `~` in the model, image and out_dir paths is expanded.
    """
    path = os.path.expanduser(os.fspath(model))
    if isinstance(image, str | os.PathLike):
        image = os.path.expanduser(os.fspath(image))
    if out_dir is not None:
        out_dir = os.path.expanduser(os.fspath(out_dir))
    given = {"max_turns": max_turns, "max_context": max_context, "max_turn_tokens": max_turn_tokens}
    agent = resolve_agent(path, {k: v for k, v in given.items() if v})
    net = load_model(path, dtype=dtype)
    tokenizer, processor = Tokenizer.from_pretrained(path), ImageProcessor.from_pretrained(path)
    env = EnvConfig(**{k: agent[k] for k in (*_AGENT_KEYS, "context_guard") if k != "max_turn_tokens"})
    cfg = EngineConfig(
        slots=samples, max_len=agent["max_context"], decode_chunk=decode_chunk, max_turn_tokens=agent["max_turn_tokens"],
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
