"""The scripted expert: solves a toy puzzle by zooming, in one of Mini-o3's reasoning patterns.

It crops exactly as `VisualSearchEnv` would, so its trajectories replay through the environment.

    expert = expert_trajectory(make_puzzle(7, "hard", SceneConfig.demo()), seed=0)  # grid boxes, terse thoughts
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

from mini_o3_jax.agent import protocol
from mini_o3_jax.agent.prompts import OBSERVATION_TEMPLATE, SYSTEM_PROMPT_TOOL_CROP
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.processing.chat import DATASET_IMAGE_PLACEHOLDER, IM_END, IM_START, IMAGE_PLACEHOLDER
from mini_o3_jax.toy.puzzles import Puzzle
from mini_o3_jax.toy.rng import Rng
from mini_o3_jax.toy.scene import (
    CROP_MARGIN,
    LEGIBLE_STROKE,
    POSITIONS,
    WINDOW_OFFSETS,
    SceneObject,
    box_gap,
    glyph_legible,
    level_geometry,
    view_scale,
)
from mini_o3_jax.toy.shapes import TEXTURES

__all__ = ["DEFAULT_PATTERN_WEIGHTS", "GIVE_UP", "GIVE_UP_WORDS", "PATTERNS", "Expert", "ExpertTrajectory", "expert_trajectory",
           "observation_text"]

PATTERNS = ("direct", "trial_and_error", "depth_first", "goal_maintenance")
# Not a way to solve: on the hard level's look-alike search the expert stops after a random number of misses
# and guesses the label. A cold-start model that sometimes answers early is what over-turn masking acts on
# (`mini-o3 demo --turn-scaling`): without it GRPO prefers a guess to running out of turns. Weight 0 unless
# asked for; elsewhere (other levels, a target checked first) it is "direct".
GIVE_UP = "give_up"
GIVE_UP_WORDS = "too many left to check"  # in every give-up turn's thought (both phrase books): how reports count them
_KNOWN = (*PATTERNS, GIVE_UP)
DEFAULT_PATTERN_WEIGHTS: Mapping[str, float] = {
    "direct": 0.4, "trial_and_error": 0.2, "depth_first": 0.2, "goal_maintenance": 0.2}


def observation_text(action: int) -> str:
    """The human turn the environment appends after zoom `action` (0-based), in the sharegpt form:
    the user content of `OBSERVATION_TEMPLATE` with the dataset `<image>` placeholder."""
    full = OBSERVATION_TEMPLATE.format(action=action, observation=action + 1)
    content = full.split(f"{IM_START}user\n", 1)[1].split(IM_END, 1)[0]
    return content.replace(IMAGE_PLACEHOLDER, DATASET_IMAGE_PLACEHOLDER)


@dataclasses.dataclass
class ExpertTrajectory:
    """A solved puzzle in the cold-start format, with the images the environment would produce."""

    conversations: list[dict[str, str]]  # system, human question, then gpt / human-observation turns
    images: list[Image.Image]  # the original, then each raw full-resolution crop in order
    pattern: str
    boxes: list[tuple[tuple[float, float, float, float], str]]  # per zoom: relative box as written, source

    @property
    def gpt_turns(self) -> list[str]:
        return [m["value"] for m in self.conversations if m["from"] == "gpt"]


@dataclasses.dataclass
class _View:
    image: Image.Image
    ox: int  # offset of this observation in the original image (raw crops keep the pixel scale)
    oy: int
    cells: tuple[int, int, int, int] | None = None  # grid layout: the cells it shows (x0, y0, x1, y1), x1 excl.

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.ox, self.oy, self.ox + self.image.width, self.oy + self.image.height)


class Expert:
    """Plans zooms on the puzzle and writes the turns; crops exactly as `VisualSearchEnv` would."""

    def __init__(self, puzzle: Puzzle, rng: Rng):
        self.p, self.rng, self.cfg = puzzle, rng, puzzle.config
        self.views = [_View(puzzle.image, 0, 0)]
        self.turns: list[str] = []  # gpt turn texts
        self.boxes: list[tuple[tuple[float, float, float, float], str]] = []
        t = puzzle.target_object
        self.color, self.shape, self.kind = t.color, t.shape, puzzle.kind
        self.desc = puzzle.description
        self.goal = f"the {self.kind} on the {self.desc}"
        g = level_geometry(self.cfg)[puzzle.level]
        if g.cell:
            self.views[0].cells = (0, 0, puzzle.image.width // g.cell, puzzle.image.height // g.cell)
        self.decimals = g.decimals

    # -- geometry -----------------------------------------------------------------------------------

    def _crop(self, src: int, want: Sequence[float], decimals: int) -> tuple[str, tuple[float, ...], tuple]:
        """`want` (original coords) snapped outward to `decimals` on view `src`: (text, values, pixel box
        in original coords)."""
        v = self.views[src]
        sw, sh = v.image.size
        q = 10**decimals
        rel = ((want[0] - v.ox) / sw, (want[1] - v.oy) / sh, (want[2] - v.ox) / sw, (want[3] - v.oy) / sh)
        snapped = (math.floor(rel[0] * q), math.floor(rel[1] * q), math.ceil(rel[2] * q), math.ceil(rel[3] * q))
        return self._written(src, [f"{min(max(n, 0), q) / q:.{decimals}f}" for n in snapped])

    def _written(self, src: int, texts: Sequence[str]) -> tuple[str, tuple[float, ...], tuple]:
        v = self.views[src]
        values = tuple(float(x) for x in texts)  # what the environment parses
        pb = protocol.pixel_box(values, v.image.size)
        return ", ".join(texts), values, (pb[0] + v.ox, pb[1] + v.oy, pb[2] + v.ox, pb[3] + v.oy)

    def _zoom(self, src: int, want: Sequence[float], accept) -> tuple[str, int] | None:
        """Snap `want` (original coords) to a box on view `src`; None unless `accept(pixel box)`."""
        for decimals in dict.fromkeys((self.cfg.box_decimals, 3)):
            text, values, box = self._crop(src, want, decimals)
            if accept(box):
                return self._commit(src, text, values, box)
        return None

    def _commit(self, src: int, text: str, values: tuple[float, ...], box: tuple,
                cells: tuple[int, int, int, int] | None = None) -> tuple[str, int]:
        v = self.views[src]
        source = protocol.ORIGINAL_IMAGE if src == 0 else f"observation_{src}"
        local = (box[0] - v.ox, box[1] - v.oy, box[2] - v.ox, box[3] - v.oy)
        self.views.append(_View(v.image.crop(local), box[0], box[1], cells))
        self.boxes.append((values, source))  # type: ignore[arg-type]
        call = f'<grounding>{{"bbox_2d": [{text}], "source": "{source}"}}</grounding>'
        return call, len(self.views) - 1

    def _inside(self, obj: SceneObject, box: Sequence[int], pad: int = 1) -> bool:
        return (box[0] + pad <= obj.box[0] and box[1] + pad <= obj.box[1]
                and obj.box[2] + pad <= box[2] and obj.box[3] + pad <= box[3])

    def tight(self, obj: SceneObject, src: int) -> tuple[str, int]:
        """A zoom around `obj` whose view shows its glyph (and dot) legibly and no other look-alike."""
        v = self.views[src]
        vx0, vy0, vx1, vy1 = v.box
        c, budget = self.cfg.glyph_cell, self.cfg.view_pixels
        others = [self.p.objects[i] for i in self.p.candidates if self.p.objects[i] is not obj]

        def accept(box: Sequence[int]) -> bool:
            scale = view_scale(box[2] - box[0], box[3] - box[1], budget)
            return (self._inside(obj, box) and glyph_legible(c, scale)
                    and (self.p.level != "hard" or self.cfg.mark_px * scale >= LEGIBLE_STROKE)
                    and all(box_gap(box, o.box) > 0 for o in others))

        limit = level_geometry(self.cfg)[self.p.level].tight_side
        for attempt in range(8):
            shrink = 1.0 - 0.1 * attempt
            side = min(limit * shrink, obj.size * self.rng.uniform(1.6, 3.5))
            side = max(side, obj.size * (1 + 2 * CROP_MARGIN))
            slack = max(0.0, (side - obj.size) / 2 - obj.size * CROP_MARGIN)
            cx = obj.center[0] + self.rng.uniform(-slack, slack) * shrink
            cy = obj.center[1] + self.rng.uniform(-slack, slack) * shrink
            want = self._fit((cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2), (vx0, vy0, vx1 - 1, vy1 - 1))
            found = self._zoom(src, want, accept)
            if found:
                return found
        raise AssertionError(f"{self.p.doc_id}: no legible zoom on {obj} from view {src}")  # a bug, not bad input

    def wide(self, obj: SceneObject, src: int) -> tuple[str, int] | None:
        """A zoom around `obj` too large to read it (goal maintenance zooms out-of-reach first)."""
        v = self.views[src]
        c, budget = self.cfg.glyph_cell, self.cfg.view_pixels
        base = math.isqrt(budget * c * c // 4)

        def accept(box: Sequence[int]) -> bool:
            scale = view_scale(box[2] - box[0], box[3] - box[1], budget)
            return self._inside(obj, box, pad=2) and not glyph_legible(c, scale)

        for attempt in range(6):
            side = min(base * self.rng.uniform(1.5, 2.2), 0.9 * min(v.image.size)) * (1 + 0.05 * attempt)
            slack = max(0.0, side / 2 - obj.size)
            cx = obj.center[0] + self.rng.uniform(-slack, slack) * 0.5
            cy = obj.center[1] + self.rng.uniform(-slack, slack) * 0.5
            want = self._fit((cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2),
                             (v.ox, v.oy, v.box[2] - 1, v.box[3] - 1))
            found = self._zoom(src, want, accept)
            if found:
                return found
        return None

    def window(self, src: int, obj: SceneObject | None = None, avoid: SceneObject | None = None,
               prefer: Sequence[SceneObject] = ()) -> tuple[str, int, str]:
        """A half-size window of view `src` that holds `obj` (best centred), or that misses `avoid`."""
        options = []
        for j, oy in enumerate(WINDOW_OFFSETS):
            for i, ox in enumerate(WINDOW_OFFSETS):
                written = self._written(src, [f"{x:.2f}" for x in (ox, oy, ox + 0.5, oy + 0.5)])
                box = written[2]
                if obj is not None and self._inside(obj, box, pad=2):
                    room = min(obj.box[0] - box[0], obj.box[1] - box[1], box[2] - obj.box[2], box[3] - obj.box[3])
                    options.append((-room, self.rng.random(), written, POSITIONS[j][i]))
                elif obj is None and avoid is not None and box_gap(box, avoid.box) > 0:
                    score = -sum(self._inside(o, box) for o in prefer)
                    options.append((score, self.rng.random(), written, POSITIONS[j][i]))
        if not options:
            raise AssertionError(f"{self.p.doc_id}: no window for {obj or avoid}")  # a bug, not bad input
        _, _, written, name = min(options)
        call, k = self._commit(src, *written)
        return call, k, name

    def block(self, src: int, span: tuple[int, int], obj: SceneObject | None = None,
              avoid: SceneObject | None = None, prefer: Sequence[SceneObject] = ()) -> tuple[str, int]:
        """Grid layout: zoom the `span` (cells per side) block of view `src`, aligned to `span` within it,
        that holds `obj`, or (obj None) one that misses `avoid`, most `prefer` objects first."""
        v = self.views[src]
        assert v.cells is not None, "grid zooms need a cell-aligned source"
        x0, y0, x1, y1 = v.cells
        options = []
        for by in range(y0, y1, span[1]):
            for bx in range(x0, x1, span[0]):
                cells = (bx, by, bx + span[0], by + span[1])
                ids = {id(o) for o in self.p.objects
                       if o.cell and cells[0] <= o.cell[0] < cells[2] and cells[1] <= o.cell[1] < cells[3]}
                if obj is not None and id(obj) in ids:
                    options.append((0, 0.0, cells))
                elif obj is None and id(avoid) not in ids:
                    options.append((-sum(id(o) in ids for o in prefer), self.rng.random(), cells))
        _, _, cells = min(options)
        d, nx, ny = self.decimals, x1 - x0, y1 - y0
        rel = ((cells[0] - x0) / nx, (cells[1] - y0) / ny, (cells[2] - x0) / nx, (cells[3] - y0) / ny)
        if span == (1, 1) and self.cfg.zoom == "centre":  # the cell's central half: a quarter cell in from each side
            mx, my = 0.25 / nx, 0.25 / ny
            rel = (rel[0] + mx, rel[1] + my, rel[2] - mx, rel[3] - my)
            d = next(k for k in range(d, 9) if all(abs(round(r, k) - r) < 1e-12 for r in rel))
        text, values, box = self._written(src, [f"{r:.{d}f}" for r in rel])
        if obj is not None and not self._inside(obj, box):
            raise AssertionError(f"{self.p.doc_id}: {obj} is not inside the block {box}")  # a bug, not bad input
        if span == (1, 1) and any(box_gap(box, o.box) <= 0 for o in self.p.objects if o is not obj):
            raise AssertionError(f"{self.p.doc_id}: the cell zoom {box} shows a second object")
        return self._commit(src, text, values, box, cells)

    def cell(self, obj: SceneObject, src: int) -> str:
        """Grid layout: the zoom onto `obj`'s cell (or its central half, `zoom="centre"`), seen at least
        1:1 (glyph and dot legible, nothing else)."""
        return self.block(src, (1, 1), obj)[0]

    def half(self, src: int, obj: SceneObject | None = None, **kw: Any) -> tuple[str, int]:
        """Grid layout: a quadrant of view `src` (the one holding `obj`)."""
        x0, y0, x1, y1 = self.views[src].cells  # type: ignore[misc]
        return self.block(src, ((x1 - x0) // 2, (y1 - y0) // 2), obj, **kw)

    def phrase(self, kind: str, **fields: Any) -> str:
        """Grid layout: the thought of one step kind, terse or verbose as the config says."""
        book = _TERSE if self.cfg.thoughts == "terse" else _VERBOSE_GRID
        t = self.p.target_object
        base = dict(d=f"{t.color} {t.shape}", c=t.color, s=t.shape, k=self.kind, goal=self.goal, ink=self.p.ink,
                    n=len(self.p.candidates), g=t.glyph, mark=self.cfg.mark)
        return self.say(*book[kind]).format(**{**base, **fields})

    def decoy(self, d: SceneObject) -> tuple[str, str]:
        """Grid trial and error: the thought and call that zoom decoy `d` first."""
        return self.phrase("decoy" if d.color == self.color else "decoy_shape"), self.cell(d, 0)

    def not_it(self, d: SceneObject) -> str:
        """... and the reaction to what the zoom showed."""
        if d.color == self.color:
            return self.phrase("not", wrong=d.shape)
        return self.phrase("not_color", wrong=d.color)

    @staticmethod
    def _fit(box: Sequence[float], bounds: Sequence[float]) -> tuple[float, float, float, float]:
        """Shift (then clip) `box` into `bounds`."""
        x0, y0, x1, y1 = box
        dx = max(0.0, bounds[0] - x0) - max(0.0, x1 - bounds[2])
        dy = max(0.0, bounds[1] - y0) - max(0.0, y1 - bounds[3])
        return (max(bounds[0], x0 + dx), max(bounds[1], y0 + dy), min(bounds[2], x1 + dx), min(bounds[3], y1 + dy))

    def where(self, obj: SceneObject) -> str:
        cx, cy = obj.center
        w, h = self.p.image.size
        return POSITIONS[min(int(3 * cy / h), 2)][min(int(3 * cx / w), 2)]

    # -- text ---------------------------------------------------------------------------------------

    def say(self, *variants: str) -> str:
        return self.rng.choice(variants)

    def turn(self, thought: str, call: str) -> None:
        self.turns.append(f"<think>{thought}</think>\n{call}")

    def answer(self, reaction: str, answer: str | None = None) -> None:
        a = self.p.answer if answer is None else answer
        self.turns.append(f"<think>{reaction}</think>\n<answer>{a}</answer>")

    def read(self, obj: SceneObject) -> str:
        if self.p.level == "hard":
            m = self.cfg.mark
            return self.say(f"This {self.color} {self.shape} has a {self.p.ink} {m}, and its {self.kind} is "
                            f"{obj.glyph}.", f"Found it: this {self.color} {self.shape} has the {self.p.ink} {m}. "
                            f"The {self.kind} on it is {obj.glyph}.")
        return self.say(f"Now I can read it: the {self.kind} on the {self.desc} is {obj.glyph}.",
                        f"The {self.desc} shows the {self.kind} {obj.glyph}.")

    def still(self) -> str:
        return self.say(f"I still need {self.goal}.", f"My goal is still {self.goal}.")


def expert_trajectory(puzzle: Puzzle, seed: int = 0, pattern: str | None = None,
                      weights: Mapping[str, float] | None = None) -> ExpertTrajectory:
    """A correct multi-turn trajectory for `puzzle`: think, zoom (one or more times), answer.

    `pattern` (default: drawn with `weights`, `DEFAULT_PATTERN_WEIGHTS` if None):
    "direct" zooms straight at the target (medium: a coarse window, then into observation_1);
    "trial_and_error" first zooms a wrong place (a same-colour decoy, or a window without the target)
    and says so; "depth_first" zooms a coarse window, then into it (medium: one level deeper);
    "goal_maintenance" zooms too wide first, then tight from the same source, restating the goal.
    Hard puzzles check the look-alikes in turn (seeded order) until the one with the dot. `GIVE_UP` (never
    drawn by default) is the one incorrect trajectory: a hard search that stops after a random number of misses
    and guesses (right by chance only).

    Raises:
        ConfigError: unknown pattern or bad weights.
    """
    if pattern is None:
        weights = dict(DEFAULT_PATTERN_WEIGHTS if weights is None else weights)
        if not puzzle.decoys:  # nothing to mistake for the target
            weights.pop("trial_and_error", None)
        if set(weights) - set(_KNOWN) or any(x < 0 for x in weights.values()) or sum(weights.values()) <= 0:
            raise ConfigError(f"pattern weights {weights}; expected non-negative weights over {_KNOWN}")
        names = [p for p in _KNOWN if weights.get(p, 0) > 0]
        pattern = Rng("pattern", puzzle.doc_id, puzzle.seed, seed).weighted(names, [weights[p] for p in names])
    if pattern not in _KNOWN:
        raise ConfigError(f"pattern = {pattern!r}; expected one of {_KNOWN}")
    if pattern == "trial_and_error" and not puzzle.decoys:
        raise ConfigError(f"{puzzle.doc_id}: pattern 'trial_and_error' needs a decoy; this scene has none "
                          "(SceneConfig.decoy=False)")
    ex = Expert(puzzle, Rng("expert", puzzle.doc_id, puzzle.seed, seed, pattern))
    if puzzle.config.layout == "grid":
        _solve_grid(ex, pattern)
    else:
        {"easy": _solve_easy, "medium": _solve_medium, "hard": _solve_hard}[puzzle.level](ex, pattern)
    conv = [{"from": "system", "value": SYSTEM_PROMPT_TOOL_CROP}, {"from": "human", "value": puzzle.problem}]
    for i, text in enumerate(ex.turns):
        conv.append({"from": "gpt", "value": text})
        if i < len(ex.turns) - 1:
            conv.append({"from": "human", "value": observation_text(i)})
    if len(ex.turns) > puzzle.config.max_expert_turns:
        raise AssertionError(f"{puzzle.doc_id}: {len(ex.turns)} turns > {puzzle.config.max_expert_turns}")
    return ExpertTrajectory(conv, [v.image for v in ex.views], pattern, ex.boxes)


def _solve_easy(ex: Expert, pattern: str) -> None:
    p, t = ex.p, ex.p.target_object
    pos = ex.where(t)
    if pattern == "trial_and_error":
        d = p.objects[p.decoys[0]]
        call, _ = ex.tight(d, 0)
        ex.turn(ex.say(f"I need {ex.goal}. There is a {ex.color} object at the {ex.where(d)}; let me check it.",
                       f"I am looking for the {ex.desc}. Let me zoom in on the {ex.color} object at the "
                       f"{ex.where(d)}."), call)
        call, _ = ex.tight(t, 0)
        ex.turn(f"This is a {ex.color} {d.shape}, not a {ex.color} {ex.shape}. {ex.still()} The {ex.desc} is at "
                f"the {pos}. Let me zoom in there.", call)
    elif pattern == "depth_first":
        call, k, region = ex.window(0, t)
        ex.turn(ex.say(f"I need {ex.goal}. It is in the {region} region; let me zoom in on that region first.",
                       f"The {ex.desc} is somewhere in the {region} region. Let me look at that region."), call)
        call, _ = ex.tight(t, k)
        ex.turn(f"I can see the {ex.desc} here, but the {ex.kind} is still too small. Let me zoom in on it.", call)
    elif pattern == "goal_maintenance" and (wide := ex.wide(t, 0)) is not None:
        call, k = wide
        ex.turn(f"I need {ex.goal}. Let me zoom in on the area around the {ex.desc} at the {pos}.", call)
        call, _ = ex.tight(t, 0)
        ex.turn(f"The {ex.desc} is here, but its {ex.kind} is still too small to read. {ex.still()} Let me zoom in "
                "closer on the original image.", call)
    else:
        call, _ = ex.tight(t, 0)
        ex.turn(ex.say(f"I need {ex.goal}. The {ex.desc} is at the {pos}, but its {ex.kind} is too small to read. "
                       "Let me zoom in on it.",
                       f"I can see the {ex.desc} at the {pos}. Let me zoom in to read its {ex.kind}."), call)
    ex.answer(ex.read(t))


def _solve_medium(ex: Expert, pattern: str) -> None:
    p, t = ex.p, ex.p.target_object
    first = f"I need {ex.goal}. It is too small to make out here"
    if pattern == "trial_and_error":
        decoys = [p.objects[i] for i in p.decoys]
        call, _, wrong = ex.window(0, avoid=t, prefer=decoys)
        ex.turn(f"{first}; it may be in the {wrong} region. Let me zoom in there.", call)
        seen = [d for d in decoys if ex._inside(d, ex.views[-1].box)]
        call, k, region = ex.window(0, t)
        miss = (f"There is only a {ex.color} {seen[0].shape} here, not a {ex.color} {ex.shape}." if seen
                else f"There is no {ex.color} {ex.shape} in this region.")
        ex.turn(f"{miss} {ex.still()} It may be in the {region} region instead. Let me zoom in there.", call)
    else:
        call, k, region = ex.window(0, t)
        ex.turn(ex.say(f"{first}; it seems to be in the {region} region. Let me zoom in there first.",
                       f"{first}. Let me zoom in on the {region} region, where it seems to be."), call)
    seen = f"I can see the {ex.desc} in this region, but the {ex.kind} is still too small to read."
    if pattern == "depth_first":
        call, k2, _ = ex.window(k, t)
        ex.turn(f"{seen} Let me zoom in on the part of this view around it.", call)
        call, _ = ex.tight(t, k2)
        ex.turn(f"The {ex.desc} is bigger now, but I need to zoom in once more to read it.", call)
    elif pattern == "goal_maintenance" and (wide := ex.wide(t, k)) is not None:
        call, _ = wide
        ex.turn(f"{seen} {ex.still()} Let me zoom in around it.", call)
        call, _ = ex.tight(t, k)
        ex.turn(f"It is still too small to read. {ex.still()} Let me zoom in closer on observation {k}.", call)
    else:
        call, _ = ex.tight(t, k)
        ex.turn(f"{seen} Let me zoom in on it.", call)
    ex.answer(ex.read(t))


def _solve_hard(ex: Expert, pattern: str) -> None:
    p = ex.p
    order = ex.rng.shuffle(list(p.candidates))
    visits = [p.objects[i] for i in order[: order.index(p.target) + 1]]
    n = len(p.candidates)
    plural = f"{n} {ex.color} {ex.shape}s"
    reaction = ""
    if pattern == "trial_and_error":
        d = p.objects[p.decoys[0]]
        call, _ = ex.tight(d, 0)
        ex.turn(f"I need {ex.goal}. Let me start with the {ex.color} object at the {ex.where(d)}.", call)
        reaction = f"This is a {ex.color} {d.shape}, not a {ex.color} {ex.shape}. {ex.still()} I see {plural}."
    for j, obj in enumerate(visits):
        pos = ex.where(obj)
        if j == 0 and pattern == "depth_first":
            call, k, region = ex.window(0, obj)
            ex.turn(f"I need {ex.goal}. I see {plural}, and the dots are too small to see here. Let me first zoom "
                    f"in on the {region} region.", call)
            call, _ = ex.tight(obj, k)
            ex.turn(f"There is a {ex.color} {ex.shape} in this region. Let me zoom in on it to look for the dot.",
                    call)
        else:
            call, _ = ex.tight(obj, 0)
            if j == 0 and not reaction:
                intent = ex.say(f"I need {ex.goal}. I see {plural}, and the dots are too small to see here. Let me "
                                f"check the one at the {pos} first.",
                                f"There are {plural}. I need the one with a {p.ink} dot. Let me check the one at the "
                                f"{pos} first.")
            else:
                intent = f"Let me check the {ex.color} {ex.shape} at the {pos}."
            ex.turn(f"{reaction} {intent}".strip(), call)
        if obj is not p.target_object:
            reaction = f"This {ex.color} {ex.shape} has no {p.ink} dot; it shows {obj.glyph}."
            if pattern == "goal_maintenance" or ex.rng.random() < 0.5:
                reaction += f" {ex.still()}"
    ex.answer(ex.read(p.target_object))


# Grid-layout thoughts, one entry per step kind ("this cell" / "this part" name the box that follows).
# Fields: d "red circle", c colour, s shape, k "number"/"letter", goal "the number on the red circle
# [with a white dot]", n look-alikes, ink the mark's colour, mark "dot"/"border", g the glyph, wrong the
# decoy's shape.
_TERSE: Mapping[str, tuple[str, ...]] = {
    "cell": ("The {d} is in this cell. Zoom in.",),  # zoom the target's cell
    "part": ("The {d} is in this part. Zoom in.",),  # depth first: a quadrant that holds it
    "hidden": ("The {d} is too small here. Zoom in on this part.",),  # medium: the quadrant first
    "decoy": ("A {c} object is in this cell. Check it.",),  # trial and error: a same-colour decoy
    "decoy_shape": ("A {s} is in this cell. Check it.",),  # ... or (unique_colors) a same-shape one
    "not_color": ("This {s} is {wrong}, not {c}.",),
    "not": ("This is a {c} {wrong}, not a {c} {s}.",),  # ... and the reaction to it
    "none": ("No {d} here. Try this part.",),  # medium trial and error: the wrong quadrant
    "goal": ("Goal: {goal}. Zoom in on this part.",),  # goal maintenance: too wide first
    "still": ("Still too small. Goal: {goal}. Zoom in on this cell.",),  # ... then tight, same source
    "many": ("There are {n} {d}s. Find the one with a {ink} {mark}. Check this one.",),  # hard: first look-alike
    "many_part": ("There are {n} {d}s. Find the one with a {ink} {mark}. Zoom in on this part.",),
    "one": ("A {d} is in this cell. Zoom in.",),  # hard depth first: the look-alike inside the part
    "nodot": ("No {mark} here. Check the next {d}.",),
    "nodot_goal": ("No {mark} here. Goal: {goal}. Check the next {d}.",),
    "dot": ("It has the {mark}. It shows {g}.",),
    "give_up": ("No {mark} here. Too many left to check. Guess {guess}.",),  # GIVE_UP: a guess, not a reading
    "read": ("It shows {g}.",),
}
_VERBOSE_GRID: Mapping[str, tuple[str, ...]] = {
    "cell": ("The {d} is in this cell, but its {k} is too small to read. Let me zoom in on it.",
             "I can see the {d} in this cell. Let me zoom in to read its {k}."),
    "part": ("The {d} is in this part of the image. Let me zoom in on that part first.",),
    "hidden": ("I need {goal}. It is too small to make out here; let me zoom in on this part first.",
               "The {d} is too small to see here. Let me zoom in on the part where it seems to be."),
    "decoy": ("I need {goal}. There is a {c} object in this cell; let me check it.",),
    "decoy_shape": ("I need {goal}. There is a {s} in this cell; let me check it.",),
    "not_color": ("This {s} is {wrong}, not {c}.",),
    "not": ("This is a {c} {wrong}, not a {c} {s}.",),
    "none": ("There is no {d} in this part. I still need {goal}. Let me try this part instead.",),
    "goal": ("I need {goal}. Let me zoom in on the area around the {d}.",),
    "still": ("The {d} is here, but its {k} is still too small to read. I still need {goal}. Let me zoom in on "
              "its cell.",),
    "many": ("I need {goal}. I see {n} {d}s, and the {mark}s are too small to see here. Let me check this one first.",),
    "many_part": ("I need {goal}. I see {n} {d}s, and the {mark}s are too small to see here. Let me first zoom in "
                  "on this part.",),
    "one": ("There is a {d} in this cell. Let me zoom in on it to look for the {mark}.",),
    "nodot": ("This {d} has no {ink} {mark}. Let me check the next one.",),
    "nodot_goal": ("This {d} has no {ink} {mark}. I still need {goal}. Let me check the next one.",),
    "dot": ("This {d} has a {ink} {mark}, and its {k} is {g}.",),
    "give_up": ("This {d} has no {ink} {mark}. There are too many left to check; I will guess that the {k} is "
                "{guess}.",),
    "read": ("Now I can read it: the {k} on the {d} is {g}.", "The {d} shows the {k} {g}."),
}


def _solve_grid(ex: Expert, pattern: str) -> None:
    """Grid layout: every zoom is a quadrant of its source, a quarter of one, or an object's cell."""
    p, t = ex.p, ex.p.target_object
    cells = ex.views[0].cells
    assert cells is not None
    quarter = (cells[2] // 4, cells[3] // 4)  # a 2x2-cell block on an 8x8 grid: too wide to read
    if p.level == "hard":
        if ex.cfg.search_order == "reading":  # row by row, left to right
            order = sorted(p.candidates, key=lambda i: p.objects[i].cell[::-1])
        else:
            order = ex.rng.shuffle(list(p.candidates))
        visits = [p.objects[i] for i in order[: order.index(p.target) + 1]]
        guess = None
        if pattern == GIVE_UP and len(visits) > 1:  # stop after 1 .. all misses and guess
            visits = visits[: ex.rng.randint(1, len(visits) - 1)]
            guess = ex.rng.choice(list(TEXTURES) if p.config.label == "texture" else list(p.config.glyphs))
        lead = ""
        if pattern == "trial_and_error":
            d = p.objects[p.decoys[0]]
            ex.turn(*ex.decoy(d))
            lead = ex.not_it(d) + " "
        for j, obj in enumerate(visits):
            if j == 0 and pattern == "depth_first":
                call, k = ex.half(0, obj)
                ex.turn(lead + ex.phrase("many_part"), call)
                ex.turn(ex.phrase("one"), ex.cell(obj, k))
            elif j == 0:
                ex.turn(lead + ex.phrase("many"), ex.cell(obj, 0))
            else:
                ex.turn(ex.phrase("nodot_goal" if pattern == "goal_maintenance" else "nodot"), ex.cell(obj, 0))
        if guess is None:
            ex.answer(ex.phrase("dot"))
        else:
            ex.answer(ex.phrase("give_up", guess=guess), guess)
        return
    k = 0  # the view the final cell zoom is cut from
    if p.level == "easy":
        if pattern == "trial_and_error":
            d = p.objects[p.decoys[0]]
            ex.turn(*ex.decoy(d))
            ex.turn(ex.not_it(d) + " " + ex.phrase("cell"), ex.cell(t, 0))
        elif pattern == "depth_first":
            call, k = ex.half(0, t)
            ex.turn(ex.phrase("part"), call)
        elif pattern == "goal_maintenance":
            ex.turn(ex.phrase("goal"), ex.block(0, quarter, t)[0])
    else:
        if pattern == "trial_and_error":
            ex.turn(ex.phrase("hidden"), ex.half(0, avoid=t, prefer=[p.objects[i] for i in p.decoys])[0])
            call, k = ex.half(0, t)
            ex.turn(ex.phrase("none"), call)
        else:
            call, k = ex.half(0, t)
            ex.turn(ex.phrase("hidden"), call)
        if pattern == "depth_first":
            call, k = ex.half(k, t)
            ex.turn(ex.phrase("part"), call)
        elif pattern == "goal_maintenance":
            ex.turn(ex.phrase("goal"), ex.half(k, t)[0])  # a quarter of the quadrant, then its cell from k
    if not (p.level == "easy" and pattern == "trial_and_error"):
        ex.turn(ex.phrase("still" if pattern == "goal_maintenance" else "cell"), ex.cell(t, k))
    ex.answer(ex.phrase("read"))
