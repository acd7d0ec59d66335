"""Mini-o3 stage 1: cold-start SFT with the released hyperparameters (spec §3).

    mini-o3 sft --config configs/sft_coldstart.py \
        --config.model_path=checkpoints/qwen2_5_vl_7b --config.data.path=data/Mini-o3-Coldstart.json

Released (LLaMA-Factory): full fine-tuning of the LLM, vision tower and merger frozen, lr 1e-5
cosine with 10% warmup, 3 epochs, bf16, cutoff 32768, per-device batch 1 x grad-accum 4 on an
unstated number of GPUs. Set `train.batch_size` to 4 x your device count to match.

The train block is train.settings.SFTTrain and optim is OptimConfig (`config_files.from_block`): a
misspelt key is an error naming the closest one.

The `tiny` local mode runs at toy scale on a CPU (about a minute), nothing to download:

    mini-o3 sft --config configs/sft_coldstart.py:tiny     # -> runs/sft_tiny/final
    mini-o3 rl --config configs/rl_grpo.py:tiny --config.model_path=runs/sft_tiny/final

It fine-tunes the packaged toy demo model (`mini-o3 infer`'s default, 4 MB) on the scripted expert's
multi-turn trajectories over fresh `toy` puzzles, generated as they are read (`data.synthetic`). It reads a
file instead when `data.path` is set (e.g. `data/synthetic/coldstart/Mini-o3-Coldstart.json` from `mini-o3
data synthetic --preset toy`), and starts from another checkpoint with `--config.model_path=DIR`;
`--config.model_path=` (empty) trains a random `tiny` model of the `model` block instead, which needs
`--config.tokenizer_path` (a Qwen tokenizer directory). `configs/sft_tiny.py` is the same config.
"""

import ml_collections

from mini_o3_jax.config_files import to_block
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.infer import DEMO_MODEL
from mini_o3_jax.model.presets import preset
from mini_o3_jax.train.optim import OptimConfig
from mini_o3_jax.train.settings import SHAPES_7B, TOY_SHAPES, CheckpointConfig, SFTTrain


def get_config(mode: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model_path = ""  # HF or `mini-o3 convert` directory of Qwen2.5-VL-7B-Instruct
    c.tokenizer_path = ""  # default: model_path
    c.dtype = "bfloat16"
    c.remat = "full"  # recompute each layer in the backward pass (32k-token sequences)
    c.unroll_layers = False  # True: layer loops as straight-line code (faster for a few small layers on a CPU)
    c.seed = 0
    c.out_dir = "runs/sft_coldstart"
    c.log_every = 1
    c.mesh = {"data": 1, "fsdp": -1, "tensor": 1}
    c.sharding = {}  # overrides of parallel/rules.py's table, {logical axis: mesh axis | [axes] | None}
    c.attention = "auto"  # attention kernels: "auto" (splash on TPU, cuDNN on GPU, XLA on CPU), "xla", ...
    c.compile_cache = "auto"  # persistent compiled programs: "auto" = $JAX_COMPILATION_CACHE_DIR or <out_dir>/compile_cache, "" = off

    c.data = ml_collections.ConfigDict()
    c.data.path = ""  # Mini-o3-Coldstart.json (LLaMA-Factory sharegpt: conversations + images)
    c.data.image_root = ""  # default: the JSON file's folder, then its parent (as `mini-o3 data prepare`)
    c.data.allow_absolute_images = False  # True: also read absolute image paths outside image_root
    # set to read the prepared TFDS copy (then `path` may be the downloaded Mini-o3-Coldstart-Dataset
    # folder with its parquet files; it is prepared on first use)
    c.data.tfds_dir = ""
    c.data.min_pixels = 40_000
    c.data.max_pixels = 2_000_000

    # train.settings.SFTTrain: 3 epochs (steps 0: derived from them), 32 sequences an optimizer step (4 per GPU
    # on 8 GPUs) in micro-batches of 1, token-mean loss; cutoff_len 32768; the LLM alone is trained
    # (freeze_vision_tower + freeze_multi_modal_projector)
    c.train = to_block(SFTTrain(trainable="language_model", max_length=32768, min_length=1024, logits_chunk=1024,
                                **SHAPES_7B))
    # OptimConfig with LLaMA-Factory's values: lr 1e-5 cosine with 10% warmup, no weight decay (the HF Trainer
    # default); betas, eps and clip 1.0 are OptimConfig's
    c.optim = to_block(OptimConfig(lr=1e-5, schedule="cosine", warmup_ratio=0.1, weight_decay=0.0))

    # train.settings.CheckpointConfig: every 100 steps, the newest 3 kept, saved in the background
    c.checkpoint = to_block(CheckpointConfig())
    if mode == "tiny":
        tiny(c)
    elif mode is not None:
        raise ConfigError(f"sft_coldstart.py:{mode}: unknown mode; expected sft_coldstart.py or sft_coldstart.py:tiny")
    return c


def tiny(c: ml_collections.ConfigDict) -> None:
    """The toy-scale local mode (the module docstring), in place."""
    c.model_path = DEMO_MODEL  # the packaged toy demo model (its tokenizer and preprocessor come with it)
    c.model = preset("tiny")  # used when model_path is empty
    c.dtype = "float32"
    c.remat = "none"
    c.out_dir = "runs/sft_tiny"
    # generated training data when data.path is empty: a `toy.scene.PRESETS` scene ("" = read data.path)
    c.data.synthetic = "toy"
    c.data.synthetic_levels = []  # the levels in turn; empty: all of the scene's
    # the expert's reasoning patterns and their weights (toy.expert.PATTERNS; empty: its default mix); the
    # packaged model was trained on the direct one only
    c.data.synthetic_patterns = {"direct": 1.0}
    c.data.system_prompt = False  # keep the expert's system turn (tool_crop); the packaged model has none
    c.data.min_pixels = 3136  # the toy scene's view budget (56x56 .. 112x112 pixels), as the model was trained
    c.data.max_pixels = 12_544
    c.train.update(steps=6, batch_size=2, micro_batch=-1, min_length=64, max_length=4096, logits_chunk=256,
                   **TOY_SHAPES)
    c.optim.lr = 1e-4
    c.checkpoint.every = 3
    c.checkpoint.async_save = False
