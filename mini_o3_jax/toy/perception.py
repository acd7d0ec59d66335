"""Single-skill questions on toy scenes: dense perception supervision before the search is learnt."""

from __future__ import annotations

import itertools

from PIL import Image

from mini_o3_jax.errors import ConfigError
from mini_o3_jax.processing.chat import DATASET_IMAGE_PLACEHOLDER
from mini_o3_jax.toy.expert import Expert, expert_trajectory
from mini_o3_jax.toy.puzzles import make_puzzle
from mini_o3_jax.toy.rng import Rng, derive
from mini_o3_jax.toy.scene import SceneConfig

__all__ = ["PERCEPTION_SKILLS", "perception_question"]

PERCEPTION_SKILLS = ("locate", "locate_hard", "read", "dot", "search", "search_hard", "check")


def perception_question(seed: int, skill: str, config: SceneConfig,
                        style: str = "short") -> tuple[list[dict[str, str]], list[Image.Image]]:
    """One question that exercises one perception skill the search needs, as a (human, gpt) conversation
    with its image, on a grid-layout puzzle's scene. Why: a model trained from random init must learn to
    see before it can learn to search (Qwen2.5-VL's pretraining plays this part for Mini-o3), and a
    trajectory spends ~400 tokens for one box and one answer; here every answer token is informative.

    "locate": the original and the target -> the expert's zoom box onto the target's cell (easy puzzles:
        a hard target differs from its look-alikes only by its dot).
    "locate_hard": a hard puzzle's original and question -> the expert's first turn, the zoom onto the
        first look-alike it checks (expert style: its own turn; short: the box).
    "check": a hard puzzle's direct expert trajectory up to its reaction to the first zoom ("expert" only):
        the first look-alike's box, then, on its zoom, either "it has the mark, it shows X" and the answer
        or "no mark" and the next look-alike's box. The first look-alike is the target half of the time.
        Why: in whole hard trajectories a from-scratch model told the mark at chance in context after
        150-300 steps; here every example carries one balanced mark decision on two images.
    "read": the cell zoom of one labelled object and a question about it -> its label.
    "dot": the cell zoom of one of a hard puzzle's look-alikes -> whether it carries the dot ("short" only).
    "search": an easy puzzle's whole direct expert trajectory: locate, zoom, read the observation ("expert"
        only). Why: a model that locates and reads alone still read a trajectory's observation at chance
        for ~600 steps of 8 and then at 100 % (`bench/learnability.py traj-read`, docs/demo.md); easy
        trajectories are ~3x cheaper a step than the hard level's, so the chaining is learnt on them.
    "search_hard": a hard puzzle's whole direct expert trajectory: check the look-alikes in turn for the
        mark, read the one that has it ("expert" only).
    The zooms are the crops the environment makes from the expert's boxes.

    `style="short"`: bare answers ("Where is the red square?" -> "[0.250, 0.500, 0.500, 0.750]", "What
    pattern is on the green square?" -> "bars", "Does the red square have a white dot?" -> "yes").
    `style="expert"`: the puzzle's own question type, answered with the very turn the expert would write
    at that point (`<think>...</think>` and its grounding call, or its answer), so that a model trained
    on them needs no new output format for the trajectories that follow (after 500 steps of short answers
    a model re-learned the trajectory format slowly, docs/demo.md).

    Raises:
        ConfigError: unknown skill or style, a free-layout config, or no hard level ("dot").
    """
    if skill not in PERCEPTION_SKILLS or style not in ("short", "expert") or (skill, style) in (
            ("dot", "expert"), ("search", "short"), ("search_hard", "short"), ("check", "short")):
        raise ConfigError(f"skill = {skill!r}, style = {style!r}; expected one of {PERCEPTION_SKILLS} and "
                          "'short' or 'expert' ('search', 'search_hard', 'check' are 'expert' only: the expert's trajectories; "
                          "'dot' is 'short' only: the expert's turn after a look-alike "
                          "without the dot zooms the next one, on an original this question does not show)")
    hard = skill in ("dot", "search_hard", "locate_hard", "check")
    if config.layout != "grid" or (hard and "hard" not in config.levels):
        raise ConfigError(f"perception_question({skill!r}) needs a grid-layout SceneConfig"
                          + (" with the hard level" if hard else ""))
    p = make_puzzle(seed, "hard" if hard else "easy", config)
    if skill == "check":  # puzzles drawn until one whose first look-alike checked is (not) the target
        first_is_target = Rng("perception", seed, skill).random() < 0.5
        for n in itertools.count():
            p = make_puzzle(derive("check", seed, n), "hard", config) if n else p
            e = expert_trajectory(p, seed=seed, pattern="direct")
            if (len(e.gpt_turns) == 2) == first_is_target:
                conv = [m for m in e.conversations if m["from"] != "system"]
                return conv[:4], e.images[:2]
    if skill.startswith("search"):
        e = expert_trajectory(p, seed=seed, pattern="direct")
        return [m for m in e.conversations if m["from"] != "system"], e.images
    rng = Rng("perception", seed, skill)
    ex = Expert(p, rng)
    expert = style == "expert"

    def conversation(question: str, answer: str, image: Image.Image):
        return [{"from": "human", "value": f"{DATASET_IMAGE_PLACEHOLDER}\n{question}"},
                {"from": "gpt", "value": answer}], [image]

    def box(call: str) -> str:  # a call's box as the expert wrote it: "[0.250, 0.500, 0.500, 0.750]"
        return call.split('"bbox_2d": ', 1)[1].split("]", 1)[0] + "]"

    if skill == "locate":
        call = ex.cell(p.target_object, 0)
        if expert:
            return conversation(p.question, f"<think>{ex.phrase('cell')}</think>\n{call}", p.image)
        return conversation(f"Where is the {p.description}?", box(call), p.image)
    if skill == "locate_hard":
        first = expert_trajectory(p, seed=seed, pattern="direct").gpt_turns[0]
        if expert:
            return conversation(p.question, first, p.image)
        t = p.target_object
        return conversation(f"Where is the first {t.color} {t.shape} to check?", box(first), p.image)
    if skill == "dot":
        obj = p.objects[rng.choice(p.candidates)]
        ex.cell(obj, 0)
        return conversation(f"Does the {obj.color} {obj.shape} have a {p.ink} {config.mark}?", "yes" if obj.mark else "no",
                            ex.views[-1].image)
    obj = rng.choice([o for o in p.objects if o.glyph is not None])
    what = "What pattern is on" if config.label == "texture" else "What is written on"
    question = f"{what} the {obj.color} {obj.shape}?"
    ex.cell(obj, 0)
    answer = f"<think>{ex.phrase('read', g=obj.glyph)}</think>\n<answer>{obj.glyph}</answer>" if expert \
        else str(obj.glyph)
    return conversation(question, answer, ex.views[-1].image)
