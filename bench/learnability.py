"""Learnability probes for the toy recipe (docs/demo.md): can the demo's from-scratch model learn one
perception skill, in how many steps?

Each probe trains the demo model (configs/demo.py, random init) on single-question examples and
reports, every `--every` steps, the share of held-out examples whose answer tokens all get p > 0.5
(teacher-forced, so no sampling noise):

    python bench/learnability.py locate --grid 4              # one red square on a 112x112 image
    python bench/learnability.py locate --grid 4 --plain      # ... without the position-coded background
    python bench/learnability.py locate --distractors 4       # red among 4 squares of other colours
    python bench/learnability.py locate --colors red,green,blue,yellow,purple,cyan   # the colour varies
    python bench/learnability.py read --glyph-cell 6          # one centred glyph, 30x42 px
    python bench/learnability.py read --glyph-cell 3 --jitter 8
    python bench/learnability.py scene-read --preset grid4    # the reading zoom of real puzzles
    python bench/learnability.py scene-locate --preset grid4  # "Where is the <object>?" on real puzzles
    python bench/learnability.py scene-read --preset toy      # texture labels: known at step 75
    python bench/learnability.py scene-locate --preset toy --lr 3e-3 --steps 550   # 69 % at step 550
    python bench/learnability.py scene-locate --preset toy --scene distractors=0   # any SceneConfig field
    python bench/learnability.py traj-read --preset toy --crop-only   # a trajectory's reading turn, on the crop
    python bench/learnability.py traj-read --preset toy --init runs/demo/perception/final --lr 1e-3 \
        --batch 8 --steps 1000 --every 100                   # whole easy trajectories: read at ~600-700

Minutes each on a 2-core CPU. Not a test: it measures, it does not assert.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mini_o3_jax.config_files import load_config  # noqa: E402
from mini_o3_jax.sft.data import conversation_trajectory  # noqa: E402
from mini_o3_jax.toy.expert import expert_trajectory  # noqa: E402
from mini_o3_jax.toy.perception import perception_question  # noqa: E402
from mini_o3_jax.toy.puzzles import make_puzzle  # noqa: E402
from mini_o3_jax.toy.recipe import Recipe  # noqa: E402
from mini_o3_jax.toy.scene import SceneConfig  # noqa: E402
from mini_o3_jax.toy.shapes import COLORS, glyph_bitmap  # noqa: E402
from mini_o3_jax.train.batch import BatchSpec, examples_from_trajectories, micro_batches  # noqa: E402
from mini_o3_jax.train.session import open_session  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GREEN = (30, 160, 60)
DISTRACTOR_COLORS = ("green", "blue", "yellow", "purple", "cyan")


def position_background(size: int) -> np.ndarray:
    """The `background="position"` code of toy/render.py on a square image."""
    a = np.full((size, size, 3), 128, np.float32)
    ramp = 80 + 96 * np.arange(size) / (size - 1)
    a[..., 0], a[..., 2] = ramp[None, :], ramp[:, None]
    return a


def fmt(v: float) -> str:
    return f"{v:.4f}".rstrip("0").rstrip(".") if v not in (0.0, 1.0) else f"{v:.1f}"


def task(args, scene: SceneConfig) -> Callable[[int], tuple[list, list[Image.Image]]]:
    """seed -> (conversation, images) for the chosen probe."""
    size = 112

    def locate(seed):
        r = np.random.default_rng(seed)
        g = args.grid
        i, j = (int(x) for x in r.integers(g, size=2))
        a = np.full((size, size, 3), 128, np.float32) if args.plain else position_background(size)
        c, m = size // g, size // g // 4
        names = args.colors.split(",")  # the square's colour, drawn per image (the question names it)
        name = names[int(r.integers(len(names)))]
        a[j * c + m:(j + 1) * c - m, i * c + m:(i + 1) * c - m] = COLORS[name]
        others = [k for k in range(g * g) if k != j * g + i]
        for k in r.permutation(others)[: args.distractors]:  # squares of colours the question never names
            ii, jj = k % g, k // g
            other = DISTRACTOR_COLORS[int(r.integers(len(DISTRACTOR_COLORS)))]
            a[jj * c + m:(jj + 1) * c - m, ii * c + m:(ii + 1) * c - m] = COLORS[other]
        box = ", ".join(fmt(v) for v in (i / g, j / g, (i + 1) / g, (j + 1) / g))
        if args.decimals:
            box = ", ".join(f"{v:.{args.decimals}f}" for v in (i / g, j / g, (i + 1) / g, (j + 1) / g))
        im = Image.fromarray(a.astype(np.uint8))
        if args.scale > 1:  # drawn larger; the processor shrinks it back to the 112x112 view
            im = im.resize((size * args.scale, size * args.scale), Image.NEAREST)
        return ([{"from": "human", "value": f"<image>\nWhere is the {name} square?"}, {"from": "gpt", "value": f"[{box}]"}],
                [im])

    def read(seed):
        r = np.random.default_rng(seed)
        d = scene.glyphs[int(r.integers(len(scene.glyphs)))]
        a = np.zeros((size, size, 3), np.uint8) + np.array(GREEN, np.uint8)
        bitmap = glyph_bitmap(d, args.glyph_cell)
        h, w = bitmap.shape
        dy, dx = (int(x) for x in r.integers(-args.jitter, args.jitter + 1, size=2)) if args.jitter else (0, 0)
        y0, x0 = (size - h) // 2 + dy, (size - w) // 2 + dx
        a[y0:y0 + h, x0:x0 + w][bitmap] = 255
        return ([{"from": "human", "value": "<image>\nWhat is written on it?"}, {"from": "gpt", "value": d}],
                [Image.fromarray(a)])

    def scene_task(seed):
        p = make_puzzle(seed, "easy", scene)
        e = expert_trajectory(p, seed=seed, pattern="direct")
        if args.probe == "scene-read":  # the image the expert reads from, the question about its object
            return ([{"from": "human", "value": f"<image>\nWhat is written on the {p.description}?"},
                     {"from": "gpt", "value": p.answer}], [e.images[-1]])
        box = e.gpt_turns[0].split('"bbox_2d": ')[1].split("]")[0] + "]"  # the reading zoom, as the expert wrote it
        return ([{"from": "human", "value": f"<image>\nWhere is the {p.description}?"}, {"from": "gpt", "value": box}],
                [p.image])

    def traj_read(seed):  # an easy puzzle's whole direct trajectory: locate, zoom, read the observation
        p = make_puzzle(seed, "easy", scene)
        e = expert_trajectory(p, seed=seed, pattern="direct")
        conv = [m for m in e.conversations if m["from"] != "system"]
        if args.untrained_zoom:  # control: the zoom turn says nothing about where (no box to learn)
            conv[1] = {"from": "gpt", "value": "<think>Zoom in.</think>"}
        if args.zoom_text:  # control: the zoom turn is this text ('{think}' and '{call}': the expert's parts)
            think, call = conv[1]["value"].split("\n", 1)
            conv[1] = {"from": "gpt", "value": args.zoom_text.replace("\\n", "\n").format(think=think, call=call)}
        if args.bare_observation:  # the observation turn without the protocol's text around its image
            conv[2] = {"from": "human", "value": "<image>" + (f"\n{p.question}" if args.repeat_question else "")}
        if args.no_original:  # control: a text-only first turn, then the observation in the second turn
            return ([{"from": "human", "value": p.question}, {"from": "gpt", "value": "<think>Zoom in.</think>"},
                     {"from": "human", "value": "<image>"}, conv[-1]], e.images[-1:])
        if args.two_images:  # control: the original and the observation in one human turn, in the given order
            ims = {"crop": e.images[-1], "original": e.images[0]}
            return ([{"from": "human", "value": f"<image>\n<image>\n{p.question}"}, conv[-1]],
                    [ims[k] for k in args.two_images.split(",")])
        if args.crop_only:  # control: the reading turn on the observation alone (no original, no first turn)
            return [{"from": "human", "value": f"<image>\n{p.question}"}, conv[-1]], e.images[-1:]
        return conv, e.images

    def perception(seed):  # the recipe's perception stage: its skills in turn
        skills = args.skills.split(",")
        return perception_question(seed, skills[seed % len(skills)], scene, args.style)

    return {"locate": locate, "read": read, "scene-read": scene_task, "scene-locate": scene_task,
            "traj-read": traj_read, "perception": perception}[args.probe]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("probe", choices=["locate", "read", "scene-read", "scene-locate", "traj-read", "perception"])
    ap.add_argument("--init", default="", help="start from this checkpoint of a recipe run (<run>/<stage>/final; "
                    "the run's tokenizer is used) instead of random init")
    ap.add_argument("--text", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a field of the model's text config (repeatable), e.g. --text num_hidden_layers=6")
    ap.add_argument("--mask-history", action="store_true", help="train on the last assistant turn only")
    ap.add_argument("--vision", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a field of the model's vision config (repeatable)")
    ap.add_argument("--warm", default="", help="traj-read curriculum: a control flag (e.g. untrained-zoom) for the "
                    "first --warm-steps steps")
    ap.add_argument("--warm-steps", type=int, default=0)
    ap.add_argument("--verbose", action="store_true", help="traj-read: print two examples' token probabilities")
    ap.add_argument("--two-images", default="", help="traj-read control: 'crop,original' or 'original,crop'")
    ap.add_argument("--untrained-zoom", action="store_true", help="traj-read control: the zoom turn is 'Zoom in.'")
    ap.add_argument("--zoom-text", default="", help="traj-read control: the zoom turn, e.g. '{think}' or '{call}'")
    ap.add_argument("--no-original", action="store_true", help="traj-read control: text first turn, then the crop")
    ap.add_argument("--crop-only", action="store_true", help="traj-read control: the observation alone")
    ap.add_argument("--repeat-question", action="store_true", help="traj-read, bare: the question after the image")
    ap.add_argument("--bare-observation", action="store_true", help="traj-read: the observation is its image alone")
    ap.add_argument("--skills", default="locate,locate,read,dot", help="perception: the skills in turn")
    ap.add_argument("--style", default="short", help="perception: 'short' answers or the expert's own turns "
                    "(then only the last turn is scored)")
    ap.add_argument("--preset", default="grid4", help="synthetic SceneConfig preset (scene probes, glyph set)")
    ap.add_argument("--scene", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a SceneConfig field of the preset (repeatable), e.g. --scene distractors=2")
    ap.add_argument("--grid", type=int, default=4)
    ap.add_argument("--plain", action="store_true", help="locate: grey background instead of the position code")
    ap.add_argument("--colors", default="red", help="locate: the square's colours, comma-separated, one per image")
    ap.add_argument("--distractors", type=int, default=0, help="locate: squares of other colours")
    ap.add_argument("--scale", type=int, default=1, help="locate: draw the image this many times larger")
    ap.add_argument("--decimals", type=int, default=0, help="locate: fixed decimals in the box (0: shortest)")
    ap.add_argument("--glyph-cell", type=int, default=6)
    ap.add_argument("--jitter", type=int, default=0)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--held-out", type=int, default=32)
    args = ap.parse_args()

    cfg = load_config(os.path.join(REPO, "configs", "demo.py"))
    # with --init, the recipe run it came from (its tokenizer.json) is the working directory
    cfg.out_dir = os.path.dirname(os.path.dirname(os.path.abspath(args.init))) if args.init \
        else tempfile.mkdtemp(prefix="learnability_")
    cfg.scene = args.preset
    for part, pairs in (("text", args.text), ("vision", args.vision)):  # the model's size, e.g. --text num_hidden_layers=6
        for k, v in (kv.split("=", 1) for kv in pairs):
            cfg.model[part][k] = ast.literal_eval(v)
    cfg.model["vision"]["out_hidden_size"] = cfg.model["text"]["hidden_size"]  # the merger feeds the decoder
    recipe = Recipe(cfg, console=None)
    fields = {f.name: f.type for f in dataclasses.fields(SceneConfig)}
    overrides = dict(kv.split("=", 1) for kv in args.scene)
    recipe.scene = dataclasses.replace(recipe.scene, **{k: ast.literal_eval(v) if fields[k] != "str" else v
                                                        for k, v in overrides.items()})
    tok, proc = recipe.tokenizer()
    scene = recipe.scene
    t = cfg.sft.copy_and_resolve_references()
    init = args.init or recipe.init_model(tok)
    t.model_path, t.tokenizer_path = init, recipe.tok_dir
    t.out_dir = tempfile.mkdtemp(prefix="learnability_run_")
    t.train.update(steps=args.steps, batch_size=args.batch, micro_batch=args.batch, min_length=64)
    t.optim.update(lr=args.lr)
    trainer = open_session(t, "sft", args.steps, console=None).trainer
    spec = BatchSpec(micro_batch=args.batch, min_length=64, max_length=1024, min_windows=16, pad_id=tok.endoftext_id)
    make = task(args, scene)
    # a curriculum: the first --warm-steps steps train on the --warm variant of the probe (held-out: the probe)
    warm = make if args.warm in ("", "mask-history") else task(argparse.Namespace(**{
        **vars(args), args.warm.replace("-", "_"): "original,crop" if args.warm == "two-images" else True}), scene)

    def trajectories(seeds, maker=make, mask_history=False):
        out = []
        for s in seeds:
            conv, images = maker(int(s))
            out.append(conversation_trajectory(conv, images, tok, proc, min_pixels=scene.min_pixels,
                                               max_pixels=scene.view_pixels, mask_history=mask_history))
        return out

    held = micro_batches(examples_from_trajectories(trajectories(range(10**7, 10**7 + args.held_out)), proc,
                                                    agg="token-mean"), trainer.model_config, spec)
    # each held-out example's assistant turns as tokens, encoded once (a turn's text, then <|im_end|> and a
    # newline are trained): traj-read scores the first (zoom) and last (reading) turn, expert style every one
    turns = {i: [tok.encode(m["value"]) for m in make(10**7 + i)[0] if m["from"] == "gpt"]
             for i in range(args.held_out)} if args.probe == "traj-read" or args.style == "expert" else {}

    def weak(batch, j: int, lp: np.ndarray, at: int, n: int) -> list[tuple[str, float]]:
        """The tokens of trained positions at..at+n that the model gives p < 0.9, with their p."""
        ids = np.asarray(batch.targets[j])[np.asarray(batch.mask[j]) > 0][at:at + n]
        return [(tok.decode([int(x)]), round(float(np.exp(v)), 2)) for x, v in zip(ids, lp[at:at + n])
                if v < np.log(0.9)]

    def known() -> str:
        ok: dict[str, list[bool]] = {}
        for batch, rows in zip(*held):
            lp, mask = np.asarray(trainer.logprobs(batch)), np.asarray(batch.mask)
            for j, idx in enumerate(rows):
                if idx >= 0:  # the answer's tokens, not the closing <|im_end|> and newline
                    skill = args.skills.split(",")[(10**7 + idx) % len(args.skills.split(","))] \
                        if args.probe == "perception" else args.probe
                    answer = lp[j][mask[j] > 0][:-2]
                    if args.probe == "perception" and args.style == "expert":  # every turn, then the last
                        ok.setdefault(f"{skill}/all", []).append(bool(np.all(answer > np.log(0.5))))
                        trained, at = lp[j][mask[j] > 0], 0
                        for t, n in enumerate(len(x) for x in turns[idx][:-1]):  # the turns before the last
                            ok.setdefault(f"turn{t + 1}", []).append(bool(np.all(trained[at:at + n] > np.log(0.5))))
                            if args.verbose and idx < 12 and t > 0:
                                print("   ", idx, t, weak(batch, j, trained, at, n))
                            at += n + 2
                        answer = answer[-len(turns[idx][-1]):]
                        if args.verbose and idx < 12:  # the last turn's weak tokens
                            last = len(trained) - 2 - len(answer)
                            print("   ", idx, "last", weak(batch, j, trained, last, len(answer)))
                    if args.probe == "traj-read":  # the reading turn only: its tokens after the last <|im_end|>
                        first, last = len(turns[idx][0]), turns[idx][-1]  # and the zoom turn: the first trained tokens
                        ok.setdefault("zoom", []).append(bool(np.all(lp[j][mask[j] > 0][:first] > np.log(0.5))))
                        answer = answer[-len(last):]
                        if args.verbose and idx < 2:
                            print("   ", [tok.decode([int(x)]) for x in last], np.round(np.exp(answer), 2).tolist())
                    ok.setdefault(skill, []).append(bool(np.all(answer > np.log(0.5))))
        return "  ".join(f"{k} {np.mean(v):.0%}" for k, v in ok.items())

    print(f"probe {args.probe}: {vars(args)}", flush=True)
    t0 = time.time()
    for step in range(args.steps):
        warming = step < args.warm_steps
        batch = trajectories(range(step * args.batch, (step + 1) * args.batch), warm if warming else make,
                             args.mask_history or (warming and args.warm == "mask-history"))
        metrics = trainer.train_step(micro_batches(examples_from_trajectories(batch, proc, agg="token-mean"),
                                                   trainer.model_config, spec)[0])
        if (step + 1) % args.every == 0:
            print(f"step {step + 1:5d}  {time.time() - t0:6.0f} s  loss {metrics['loss']:.3f}  "
                  f"answers known: {known()}", flush=True)


if __name__ == "__main__":
    main()
