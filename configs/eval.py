"""Mini-o3's released evaluation (spec §5): Avg@32 at T=1.0, top-p 1, 12 turns, 32k context.

    mini-o3 data prepare --benchmark vstar --source ~/data/vstar_bench --data-dir data/tfds
    mini-o3 eval --config configs/eval.py --config.model_path=ckpt/mini-o3-7b \
        --config.benchmarks=visualprobe_hard,vstar --config.data_dir=data/tfds

A benchmark not yet prepared is prepared from `sources.<name>` (the downloaded folder). Re-running
the same command resumes: finished questions are kept. `eval.max_turns=32` with
`eval.turn_limits=(4,8,12,16,24,32)` gives the paper's turn-scaling curve from one run.
"""

import dataclasses

import ml_collections

from mini_o3_jax.data.benchmarks import BENCHMARKS
from mini_o3_jax.eval.run import EvalConfig

PAPER_BENCHMARKS = "visualprobe_hard,visualprobe_medium,visualprobe_easy,vstar,hrbench_4k,hrbench_8k,mme_realworld"


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model_path = ""  # HF or Orbax checkpoint directory (tokenizer + preprocessor files beside it)
    c.dtype = ""  # "" = the checkpoint's; "bfloat16" for 7B on one accelerator
    c.label = ""  # the row name in results.md; "" = the checkpoint folder's name
    c.out_dir = "runs/eval"
    c.data_dir = "data/tfds"  # prepared TFDS datasets (mini-o3 data prepare)
    c.benchmarks = PAPER_BENCHMARKS  # comma-separated registry names
    c.sources = ml_collections.ConfigDict({name: "" for name in BENCHMARKS})  # downloaded folders
    c.image_root = ""  # $BASE_IMAGE_DIR for Mini-o3 JSON files whose image paths are relative to it
    c.eval = ml_collections.ConfigDict(
        {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(EvalConfig()).items()})
    c.eval.system_prompt = c.eval.system_prompt or ""
    c.judge = ml_collections.ConfigDict()  # JudgeConfig overrides when eval.scorer == "judge"
    return c
