"""Training data generated on the fly from synthetic puzzles: `data.synthetic` in a training config.

`configs/sft_tiny.py` and `configs/rl_tiny.py` use these so that `mini-o3 sft|rl --config configs/*_tiny.py`
runs as is, with no download and no file to write first: SFT on scripted-expert trajectories, RL on fresh
puzzles of a `toy.scene.PRESETS` scene (`toy`: the one the packaged demo model was trained on). The seeds
are the toy recipe's (`recipe.SEED_SFT`, `recipe.SEED_RL`), disjoint from its held-out evaluation puzzles.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mini_o3_jax.agent.trajectory import Trajectory
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.processing.chat import Tokenizer
from mini_o3_jax.processing.image import ImageProcessor
from mini_o3_jax.rl.loop import RLData
from mini_o3_jax.sft.loop import SFTData
from mini_o3_jax.toy.expert import expert_trajectory
from mini_o3_jax.toy.puzzles import make_puzzle
from mini_o3_jax.toy.scene import PRESETS, SceneConfig

# as many examples as a run can ask for: each is generated from its index when loaded
STREAM_LENGTH = 1_000_000


def scene(preset: str) -> SceneConfig:
    """The `toy.scene.PRESETS` scene named `preset`; a ConfigError lists the names."""
    if preset not in PRESETS:
        raise ConfigError(f"data.synthetic = {preset!r}: expected a synthetic scene preset, one of "
                          f"{sorted(PRESETS)} (or '' to read data.path)")
    return PRESETS[preset]()


def _levels(config: SceneConfig, data: SFTData | RLData) -> tuple[str, ...]:
    levels = data.synthetic_levels or config.levels
    unknown = [lv for lv in levels if lv not in config.levels]
    if unknown:
        raise ConfigError(f"data.synthetic_levels = {list(levels)}: {unknown} not among the "
                          f"{data.synthetic!r} scene's levels {list(config.levels)}")
    return levels


def rl_prompts(data: RLData) -> Sequence:
    """RL prompts (`data.records.Record`s) of the `data.synthetic` scene, `data.synthetic_levels` in turn
    (empty: all), generated as they are read; the answer is scored with `reward.kind = "exact"`."""
    from mini_o3_jax.toy.recipe import SEED_RL, PuzzlePrompts

    config = scene(data.synthetic)
    return PuzzlePrompts(config, SEED_RL, n=STREAM_LENGTH, levels=_levels(config, data))


def sft_examples(data: SFTData, tokenizer: Tokenizer, processor: ImageProcessor
                 ) -> tuple[Callable[[Sequence[int]], list[Trajectory]], int]:
    """(load(indices) -> trajectories, count) for `sft.loop.run_sft`: the scripted expert's correct
    multi-turn trajectories on puzzles of the `data.synthetic` scene (reasoning patterns drawn with the
    weights `data.synthetic_patterns`), shown within `data.min_pixels` .. `data.max_pixels`, with the expert's
    system turn (the released tool_crop prompt) only when `data.system_prompt` is true (the packaged demo model was trained without one)."""
    from mini_o3_jax.sft.data import conversation_trajectory
    from mini_o3_jax.toy.recipe import SEED_SFT

    config = scene(data.synthetic)
    levels = _levels(config, data)
    system = data.system_prompt
    weights = dict(data.synthetic_patterns) or None  # None: toy.expert.DEFAULT_PATTERN_WEIGHTS

    def load(indices: Sequence[int]) -> list[Trajectory]:
        out = []
        for i in indices:
            puzzle = make_puzzle(SEED_SFT + i, levels[i % len(levels)], config)
            traj = expert_trajectory(puzzle, seed=i, weights=weights)
            conv = [m for m in traj.conversations if system or m["from"] != "system"]
            out.append(conversation_trajectory(conv, traj.images, tokenizer, processor, min_pixels=data.min_pixels,
                                               max_pixels=data.max_pixels, name=f"synthetic {data.synthetic}[{i}]"))
        return out

    return load, STREAM_LENGTH
