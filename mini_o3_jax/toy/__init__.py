"""The toy world: procedurally generated VisualProbe-style puzzles, a scripted expert, and the recipe
that trains on them at toy scale on a CPU (`mini-o3 demo`).

Why: tests, benchmarks, notebooks and the CPU demo need visual-search data whose difficulty is known
by construction, that a tiny model can learn in minutes, and that needs no download. A scene is a
textured background with many coloured shapes, some carrying a glyph; the question asks for the
glyph on one of them ("What number is written on the red triangle?" -> "7").

It sits on top of the production packages: nothing under `mini_o3_jax/` imports it except the CLI's
demo and synthetic-data commands (lazily). Its modules, bottom up:

    rng, shapes      seeded draws; colours, shapes, the 5x7 font, textures as pixel masks
    scene            SceneConfig, its presets and the level rules (docs/synthetic.md)
    render, puzzles  a scene's pixels; make_puzzle and check_geometry
    expert           the scripted expert's trajectories (Mini-o3's reasoning patterns)
    perception       single-skill questions (dense perception supervision)
    writers          files in Mini-o3's released formats (`mini-o3 data synthetic`)
    tokenizer        a small Qwen-style BPE trained on the protocol and the puzzles' texts
    sources          generated training data for `data.synthetic` in a training config
    recipe           the whole recipe at toy scale (configs/demo.py)
    roundtrip        a tiny checkpoint through every format it can be read or written in

    puzzle = make_puzzle(7, "medium", SceneConfig.tiny())           # toy.puzzles, toy.scene
    expert = expert_trajectory(puzzle, seed=0)                       # toy.expert
    write_benchmark("data", "hard", 100, seed=0, config=SceneConfig.tiny())  # toy.writers
"""
