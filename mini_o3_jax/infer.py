"""Image + question -> answer, with the whole visual-search trajectory (what `mini-o3 infer` runs).

    from mini_o3_jax.infer import infer
    trajs = infer("ckpt/mini-o3-7b", "photo.jpg", "What is written on the sign?", out_dir="runs/infer")
    print(trajs[0].answer)        # runs/infer/report.html shows every zoom
"""

from __future__ import annotations

import os
from collections.abc import Callable

from mini_o3_jax.agent.environment import EnvConfig, StepResult
from mini_o3_jax.agent.report import write_report
from mini_o3_jax.agent.trajectory import Trajectory
from mini_o3_jax.model.weights import load_model
from mini_o3_jax.processing.chat import Tokenizer
from mini_o3_jax.processing.image import ImageProcessor, ImageSource
from mini_o3_jax.rollout.engine import EngineConfig, Episode, RolloutEngine
from mini_o3_jax.rollout.sampler import Sampling


def infer(
    model: str | os.PathLike,
    image: ImageSource,
    question: str,
    *,
    max_turns: int = 12,
    samples: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    max_context: int = 32768,
    max_turn_tokens: int = 8192,
    decode_chunk: int = 64,
    dtype: str | None = None,
    out_dir: str | os.PathLike | None = None,
    on_turn: Callable[[int, StepResult], None] | None = None,
) -> list[Trajectory]:
    """Run `samples` Mini-o3 episodes on one image (the released eval: 12 turns, temperature 1.0).

    `model` is a HF or Orbax checkpoint directory with tokenizer and preprocessor files.
    `on_turn(sample, step)` is called as each turn finishes. With `out_dir`, writes report.html.
    """
    path = os.fspath(model)
    net = load_model(path, dtype=dtype)
    tokenizer, processor = Tokenizer.from_pretrained(path), ImageProcessor.from_pretrained(path)
    env = EnvConfig(max_turns=max_turns, max_context=max_context, context_guard=min(2000, max_context // 4))
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
