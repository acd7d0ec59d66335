"""Mini-o3 stage 2: GRPO with over-turn masking, the released settings (spec §4.2-§4.4).

    mini-o3 rl --config configs/rl_grpo.py --config.model_path=runs/sft_coldstart/final \
        --config.data.path=data/VisualProbe_train/train.json --config.data.image_root=$BASE_IMAGE_DIR

Released: 256 prompts x 16 rollouts per step, 8 mini-batch updates of 32 prompts, AdamW lr 1e-6
constant, wd 0.01, clip 1.0, clip-higher 0.2/0.3, no KL, no entropy, 6 turns, 12 images, 32k
context with a 2,000-token guard, dynamic sampling, LLM-judge reward (gpt-4o via
API_KEY/END_POINT/API_VERSION or MINI_O3_JUDGE_URL for any OpenAI-compatible server).
"""

import ml_collections

from mini_o3_jax.agent.prompts import SYSTEM_PROMPT_TOOL_CROP
from mini_o3_jax.rl.rewards import config_defaults


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model_path = ""  # the SFT checkpoint (e.g. runs/sft_coldstart/final or Mini-o3/Mini-o3-7B-SFT)
    c.tokenizer_path = ""  # default: model_path
    c.dtype = "bfloat16"
    c.remat = "full"
    c.unroll_layers = False  # True: layer loops as straight-line code (faster for a few small layers on a CPU)
    c.seed = 0
    c.out_dir = "runs/rl_grpo"
    c.log_every = 1
    c.mesh = {"data": 1, "fsdp": -1, "tensor": 1}

    c.data = ml_collections.ConfigDict()
    c.data.path = ""  # released JSON: images / problem / solution / data_source / doc_id
    c.data.image_root = ""  # $BASE_IMAGE_DIR
    c.data.allow_absolute_images = False  # True: also read absolute image paths outside image_root
    # or prepared datasets (mini-o3 data prepare), read lazily; the released mix is
    # "visualprobe_train,deepeyes_train_4k" (4,000 + 4,000 prompts)
    c.data.sets = ""
    c.data.tfds_dir = "data/tfds"

    c.env = ml_collections.ConfigDict()
    c.env.max_turns = 6
    c.env.max_images = 12
    c.env.max_context = 32768
    c.env.context_guard = 2000
    c.env.min_pixels = 40_000
    c.env.max_pixels = 2_000_000
    c.env.observation_numbering = "released"
    c.env.exif_transpose = False  # as stored, as the release (spec 2); True rotates photos by their EXIF tag
    # the system turn of every episode: the released `tool_crop` prompt (spec 1.1); "" (or False / None) for
    # none, as a model trained without one needs (the packaged demo model: its agent.json says so)
    c.env.system_prompt = SYSTEM_PROMPT_TOOL_CROP

    c.rollout = ml_collections.ConfigDict()
    c.rollout.samples = 16  # n rollouts per prompt (one GRPO group)
    # the sampling temperature, and the one the trainer's log-probs (old and new) are computed at: one setting,
    # as the release samples and recomputes old log-probs at T=1.0 (a disagreeing `train.temperature` is an error)
    c.rollout.temperature = 1.0
    c.rollout.top_k = 0
    c.rollout.top_p = 1.0
    c.rollout.slots = 64  # episodes decoding together per host
    c.rollout.max_len = 32768
    c.rollout.decode_chunk = 64
    c.rollout.max_turn_tokens = 8192
    c.rollout.workers = 8

    c.reward = ml_collections.ConfigDict()
    c.reward.kind = "judge"  # or "choice" / "exact" / "numeric" (rule-based, no judge)
    # JudgeConfig: url / model / api_key / api_version "" = from the environment (MINI_O3_JUDGE_URL or the
    # released Azure API_KEY/END_POINT/API_VERSION); system_prompt / user_prompt = the released prompts;
    # timeout_s bounds each request end to end, max_reply_bytes caps a reply (e.g. --config.reward.judge.timeout_s=30)
    c.reward.judge = ml_collections.ConfigDict(config_defaults())

    c.train = ml_collections.ConfigDict()
    c.train.steps = 100
    c.train.prompts_per_step = 256
    c.train.mini_batch_prompts = 32  # 8 updates per RL step
    c.train.micro_batch = 1
    c.train.dynamic_sampling = True
    c.train.max_gen_batches = 256
    c.train.mask_exceeded = True  # over-turn masking (actor.ignore_exceed)
    c.train.loss_agg = "seq-mean-token-mean"
    c.train.trainable = "all"  # the RL actor trains the vision tower too
    c.train.max_length = 32768 + 8192
    c.train.min_length = 1024
    c.train.logits_chunk = 1024

    c.ppo = ml_collections.ConfigDict()
    c.ppo.clip_low = 0.2
    c.ppo.clip_high = 0.3
    c.ppo.log_ratio_clamp = 20.0
    c.ppo.kl_coef = 0.0
    c.ppo.kl_type = "k3"
    c.ppo.entropy_coef = 0.0

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-6
    c.optim.schedule = "constant"
    c.optim.warmup_ratio = 0.0
    c.optim.weight_decay = 0.01
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.grad_clip = 1.0

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 25
    c.checkpoint.keep = 3
    c.checkpoint.async_save = True
    return c
