"""Mini-o3 stage 1: cold-start SFT with the released hyperparameters (spec §3).

    mini-o3 sft --config configs/sft_coldstart.py \
        --config.model_path=checkpoints/qwen2_5_vl_7b --config.data.path=data/Mini-o3-Coldstart.json

Released (LLaMA-Factory): full fine-tuning of the LLM, vision tower and merger frozen, lr 1e-5
cosine with 10% warmup, 3 epochs, bf16, cutoff 32768, per-device batch 1 x grad-accum 4 on an
unstated number of GPUs. Set `train.batch_size` to 4 x your device count to match.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
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

    c.data = ml_collections.ConfigDict()
    c.data.path = ""  # Mini-o3-Coldstart.json (LLaMA-Factory sharegpt: conversations + images)
    c.data.image_root = ""  # default: the JSON file's folder, then its parent (as `mini-o3 data prepare`)
    c.data.allow_absolute_images = False  # True: also read absolute image paths outside image_root
    # set to read the prepared TFDS copy (then `path` may be the downloaded Mini-o3-Coldstart-Dataset
    # folder with its parquet files; it is prepared on first use)
    c.data.tfds_dir = ""
    c.data.min_pixels = 40_000
    c.data.max_pixels = 2_000_000

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 3.0
    c.train.steps = 0  # 0: derived from epochs
    c.train.batch_size = 32  # sequences per optimizer step (4 per GPU on 8 GPUs)
    c.train.micro_batch = 1  # sequences per forward/backward (gradient accumulation over the rest)
    c.train.loss_agg = "token-mean"
    c.train.trainable = "language_model"  # freeze_vision_tower + freeze_multi_modal_projector
    c.train.max_length = 32768  # cutoff_len
    c.train.min_length = 1024  # smallest length bucket
    c.train.logits_chunk = 1024

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-5
    c.optim.schedule = "cosine"
    c.optim.warmup_ratio = 0.1
    c.optim.weight_decay = 0.0  # LLaMA-Factory / HF Trainer default
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.grad_clip = 1.0

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 100
    c.checkpoint.keep = 3
    c.checkpoint.async_save = True
    return c
