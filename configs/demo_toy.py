"""The toy recipe on the `toy` scene with perception stages (docs/demo.md, "The toy scene"):

    mini-o3 demo --config configs/demo_toy.py --out runs/demo_toy

`configs/demo.py` with texture labels and red targets (`SceneConfig.toy()`), two perception stages before
the baseline and SFT (300 steps of "What pattern is on the red square?" answered with the expert's zoom
turn alone, then 200 steps of zoom / read turns), and an expert that only uses the direct pattern (with
every pattern mixed, 250 SFT steps left turns garbled at T=1.0). About 7.5 minutes on a 2-core CPU.
Measured: every model answers in the right format, but none reads the zoom in context (docs/demo.md), so
the default stays `configs/demo.py`.
"""

import os

import ml_collections

from mini_o3_jax.config_files import load_config

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config() -> ml_collections.ConfigDict:
    c = load_config(os.path.join(HERE, "demo.py"))
    c.out_dir = "runs/demo_toy"
    c.scene = "toy"
    c.perception_locate.train.steps = 300
    c.perception.train.steps = 200
    c.perception.skills = ["locate", "locate", "read"]
    for name in c.perception_stages:  # answered with the expert's own turns: no format shift for SFT
        c[name].style = "expert"
    c.baseline.optim.lr = 5e-3  # a perception model re-learns a new answer format slowly at 2e-3
    c.sft.patterns = {"direct": 1.0}  # one reasoning pattern: well-formed turns within the budget
    c.sft.train.steps = 250
    c.rl.train.steps = 5
    return c
