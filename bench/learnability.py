"""Learnability probes for the toy recipe (docs/demo.md): can the demo's from-scratch model learn one
perception skill, in how many steps?

Each probe trains the demo model (configs/demo.py, random init) on single-question examples and
reports, every `--every` steps, the share of held-out examples whose answer tokens all get p > 0.5
(teacher-forced, so no sampling noise):

    python bench/learnability.py locate --grid 4              # one red square on a 112x112 image
    python bench/learnability.py locate --grid 4 --plain      # ... without the position-coded background
    python bench/learnability.py read --glyph-cell 6          # one centred glyph, 30x42 px
    python bench/learnability.py read --glyph-cell 3 --jitter 8
    python bench/learnability.py scene-read --preset grid4    # the reading zoom of real puzzles
    python bench/learnability.py scene-locate --preset grid4  # "Where is the <object>?" on real puzzles

Minutes each on a 2-core CPU. Not a test: it measures, it does not assert.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mini_o3_jax.config_files import load_config  # noqa: E402
from mini_o3_jax.data import synthetic  # noqa: E402
from mini_o3_jax.recipe import Recipe  # noqa: E402
from mini_o3_jax.sft.data import conversation_trajectory  # noqa: E402
from mini_o3_jax.train.batch import BatchSpec, examples_from_trajectories, micro_batches  # noqa: E402
from mini_o3_jax.train.session import open_session  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RED, GREEN = (215, 38, 38), (30, 160, 60)


def position_background(size: int) -> np.ndarray:
    """The `background="position"` code of synthetic.py on a square image."""
    a = np.full((size, size, 3), 128, np.float32)
    ramp = 80 + 96 * np.arange(size) / (size - 1)
    a[..., 0], a[..., 2] = ramp[None, :], ramp[:, None]
    return a


def fmt(v: float) -> str:
    return f"{v:.4f}".rstrip("0").rstrip(".") if v not in (0.0, 1.0) else f"{v:.1f}"


def task(args, scene: synthetic.SceneConfig) -> Callable[[int], tuple[list, list[Image.Image]]]:
    """seed -> (conversation, images) for the chosen probe."""
    size = 112

    def locate(seed):
        r = np.random.default_rng(seed)
        g = args.grid
        i, j = (int(x) for x in r.integers(g, size=2))
        a = np.full((size, size, 3), 128, np.float32) if args.plain else position_background(size)
        c, m = size // g, size // g // 4
        a[j * c + m:(j + 1) * c - m, i * c + m:(i + 1) * c - m] = RED
        box = ", ".join(fmt(v) for v in (i / g, j / g, (i + 1) / g, (j + 1) / g))
        return ([{"from": "human", "value": "<image>\nWhere is the red square?"}, {"from": "gpt", "value": f"[{box}]"}],
                [Image.fromarray(a.astype(np.uint8))])

    def read(seed):
        r = np.random.default_rng(seed)
        d = scene.glyphs[int(r.integers(len(scene.glyphs)))]
        a = np.zeros((size, size, 3), np.uint8) + np.array(GREEN, np.uint8)
        bitmap = synthetic._glyph_bitmap(d, args.glyph_cell)
        h, w = bitmap.shape
        dy, dx = (int(x) for x in r.integers(-args.jitter, args.jitter + 1, size=2)) if args.jitter else (0, 0)
        y0, x0 = (size - h) // 2 + dy, (size - w) // 2 + dx
        a[y0:y0 + h, x0:x0 + w][bitmap] = 255
        return ([{"from": "human", "value": "<image>\nWhat is written on it?"}, {"from": "gpt", "value": d}],
                [Image.fromarray(a)])

    def scene_task(seed):
        p = synthetic.make_puzzle(seed, "easy", scene)
        e = synthetic.expert_trajectory(p, seed=seed, pattern="direct")
        if args.probe == "scene-read":  # the image the expert reads from, the question about its object
            return ([{"from": "human", "value": f"<image>\nWhat is written on the {p.description}?"},
                     {"from": "gpt", "value": p.answer}], [e.images[-1]])
        box = e.gpt_turns[0].split('"bbox_2d": ')[1].split("]")[0] + "]"  # the reading zoom, as the expert wrote it
        return ([{"from": "human", "value": f"<image>\nWhere is the {p.description}?"}, {"from": "gpt", "value": box}],
                [p.image])

    return {"locate": locate, "read": read, "scene-read": scene_task, "scene-locate": scene_task}[args.probe]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("probe", choices=["locate", "read", "scene-read", "scene-locate"])
    ap.add_argument("--preset", default="grid4", help="synthetic SceneConfig preset (scene probes, glyph set)")
    ap.add_argument("--grid", type=int, default=4)
    ap.add_argument("--plain", action="store_true", help="locate: grey background instead of the position code")
    ap.add_argument("--glyph-cell", type=int, default=6)
    ap.add_argument("--jitter", type=int, default=0)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--held-out", type=int, default=32)
    args = ap.parse_args()

    cfg = load_config(os.path.join(REPO, "configs", "demo.py"))
    cfg.out_dir = tempfile.mkdtemp(prefix="learnability_")
    cfg.scene = args.preset
    recipe = Recipe(cfg, console=None)
    tok, proc = recipe.tokenizer()
    scene = recipe.scene
    t = cfg.sft.copy_and_resolve_references()
    t.model_path, t.tokenizer_path, t.out_dir = recipe.init_model(tok), recipe.tok_dir, os.path.join(cfg.out_dir, "run")
    t.train.update(steps=args.steps, batch_size=args.batch, micro_batch=args.batch, min_length=64)
    t.optim.update(lr=args.lr)
    trainer = open_session(t, "sft", args.steps, console=None).trainer
    spec = BatchSpec(micro_batch=args.batch, min_length=64, max_length=1024, min_windows=16, pad_id=tok.endoftext_id)
    make = task(args, scene)

    def trajectories(seeds):
        out = []
        for s in seeds:
            conv, images = make(int(s))
            out.append(conversation_trajectory(conv, images, tok, proc, min_pixels=scene.min_pixels,
                                               max_pixels=scene.view_pixels))
        return out

    held = micro_batches(examples_from_trajectories(trajectories(range(10**7, 10**7 + args.held_out)), proc,
                                                    agg="token-mean"), trainer.model_config, spec)

    def known() -> float:
        ok = []
        for batch, rows in zip(*held):
            lp, mask = np.asarray(trainer.logprobs(batch)), np.asarray(batch.mask)
            for j, idx in enumerate(rows):
                if idx >= 0:  # the answer's tokens, not the closing <|im_end|> and newline
                    ok.append(bool(np.all(lp[j][mask[j] > 0][:-2] > np.log(0.5))))
        return float(np.mean(ok))

    print(f"probe {args.probe}: {vars(args)}", flush=True)
    t0 = time.time()
    for step in range(args.steps):
        batch = trajectories(range(step * args.batch, (step + 1) * args.batch))
        metrics = trainer.train_step(micro_batches(examples_from_trajectories(batch, proc, agg="token-mean"),
                                                   trainer.model_config, spec)[0])
        if (step + 1) % args.every == 0:
            print(f"step {step + 1:5d}  {time.time() - t0:6.0f} s  loss {metrics['loss']:.3f}  "
                  f"answers known {known():.0%}", flush=True)


if __name__ == "__main__":
    main()
