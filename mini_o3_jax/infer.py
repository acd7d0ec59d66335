"""Image + question -> answer, with the whole visual-search trajectory (what `mini-o3 infer` runs).

    from mini_o3_jax.infer import infer
    trajs = infer("ckpt/mini-o3-7b", "photo.jpg", "What is written on the sign?", out_dir="runs/infer")
    print(trajs[0].answer)        # runs/infer/report.html shows every zoom
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Callable

import PIL.Image

from mini_o3_jax.agent.environment import EnvConfig, StepResult
from mini_o3_jax.agent.report import write_report
from mini_o3_jax.agent.settings import AGENT_KEYS, resolve_agent
from mini_o3_jax.agent.trajectory import Trajectory
from mini_o3_jax.data.records import Record
from mini_o3_jax.model.weights import load_model
from mini_o3_jax.processing.chat import Tokenizer
from mini_o3_jax.processing.image import ImageProcessor, ImageSource
from mini_o3_jax.rollout.engine import EngineConfig, RolloutEngine
from mini_o3_jax.rollout.sampler import Sampling

# The toy recipe's GRPO model (`mini-o3 demo`, seed 0, from the packaged base; docs/demo.md "Status"), exported
# with `mini-o3 export --dtype float32` (4 MB): what `mini-o3 infer` runs without --model, on `sample_puzzle()`
# without --image.
DEMO_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "demo_model")
# The perception model `mini-o3 demo` starts from (its stand-in for a pretrained Qwen2.5-VL): the perception stages
# of configs/demo.py run from scratch, exported the same way (docs/demo.md, "The packaged base").
DEMO_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "demo_base")
# The cold-start SFT model `mini-o3 demo --turn-scaling` trains both GRPO arms from (configs/turn_scaling.py's SFT
# stage, ~18 min on 2 CPU cores, exported the same way; docs/demo.md, "Turn scaling").
TURN_SCALING_SFT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "turn_scaling_sft")
# The sample `mini-o3 infer` runs without --image: `SAMPLE_PUZZLE + ".png"` and `+ ".json"` (question, answer).
SAMPLE_PUZZLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "sample_puzzle")


@dataclasses.dataclass(frozen=True)
class SamplePuzzle:
    """The packaged sample: a toy puzzle the packaged demo model was trained on the like of."""

    image: PIL.Image.Image  # RGB, the toy scene's full resolution
    question: str
    answer: str
    level: str


def sample_puzzle() -> SamplePuzzle:
    """The packaged sample puzzle (`SAMPLE_PUZZLE`.png/.json, written by `toy.writers.write_sample_puzzle`).

    Why an asset: `infer` is production code, and the toy generator sits above it (mini_o3_jax/toy/).
    """
    with open(f"{SAMPLE_PUZZLE}.json", encoding="utf-8") as f:
        meta = json.load(f)
    with PIL.Image.open(f"{SAMPLE_PUZZLE}.png") as im:
        image = im.convert("RGB")
    return SamplePuzzle(image, meta["question"], meta["answer"], meta["level"])


def toy_model_warning(model: str | os.PathLike, image: ImageSource) -> str | None:
    """One line warning that the packaged toy model is being run on an image unlike its toy puzzles, or None.

    Why: the packaged model (4 MB) has only ever seen the toy preset's scenes, 448x448 synthetic
    grids of coloured squares; on a photo it still answers, and the answer means nothing. A toy scene
    always has the preset's size (the packaged sample's), so an image of another size is not one (a
    448x448 photo goes unwarned).
    An image that cannot be read gives None here: `infer` then reports it.
    """
    if os.path.realpath(os.path.expanduser(os.fspath(model))) != os.path.realpath(DEMO_MODEL):
        return None
    try:
        if isinstance(image, PIL.Image.Image):
            size = image.size
        else:
            binary = isinstance(image, bytes | bytearray | memoryview)
            source = io.BytesIO(image) if binary else os.path.expanduser(os.fspath(image))
            with PIL.Image.open(source) as im:
                size = im.size
    except (OSError, SyntaxError, ValueError, TypeError):
        return None
    with PIL.Image.open(f"{SAMPLE_PUZZLE}.png") as sample:
        width, height = sample.size
    if size == (width, height):
        return None
    return (f"warning: the packaged toy demo model only knows the toy puzzles ({width}x{height} synthetic "
            f"scenes, `mini-o3 data synthetic --preset toy`); on this {size[0]}x{size[1]} image its answer means "
            "nothing. Pass --model a real checkpoint (e.g. a converted Mini-o3-7B, docs/eval.md).")


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
    env = EnvConfig(**{k: agent[k] for k in (*AGENT_KEYS, "context_guard") if k != "max_turn_tokens"})
    cfg = EngineConfig(
        slots=samples, max_len=agent["max_context"], decode_chunk=decode_chunk, max_turn_tokens=agent["max_turn_tokens"],
        sampling=Sampling(temperature=temperature, top_k=top_k, top_p=top_p), env=env,
    )
    engine = RolloutEngine(net, tokenizer, processor, cfg)
    try:
        asked = Record(image=image, problem=question)
        trajs = engine.run([asked], samples=samples, seed=seed,
                           on_turn=None if on_turn is None else (lambda e, s, step: on_turn(s, step)))
    finally:
        engine.close()
    if out_dir is not None:
        write_report(trajs, os.path.join(os.fspath(out_dir), "report.html"), question=question)
    return trajs
