"""Mini-o3 stage 2: GRPO with over-turn masking, the released settings (spec §4.2-§4.4).

    mini-o3 rl --config configs/rl_grpo.py --config.model_path=runs/sft_coldstart/final \
        --config.data.path=data/VisualProbe_train/train.json --config.data.image_root=$BASE_IMAGE_DIR

Released: 256 prompts x 16 rollouts per step, 8 mini-batch updates of 32 prompts, AdamW lr 1e-6
constant, wd 0.01, clip 1.0, clip-higher 0.2/0.3, no KL, no entropy, 6 turns, 12 images, 32k
context with a 2,000-token guard, dynamic sampling, LLM-judge reward (gpt-4o via
API_KEY/END_POINT/API_VERSION or MINI_O3_JUDGE_URL for any OpenAI-compatible server).

Each block is one typed dataclass (`config_files.from_block`): env -> EnvConfig, rollout -> rl.loop.RLRollout
(the engine's settings, `rollout.sampling` -> Sampling), train -> train.settings.RLTrain, ppo -> PPOConfig,
optim -> OptimConfig; a misspelt key is an error naming the closest one.

The `tiny` local mode runs at toy scale on a CPU (about a minute), nothing to download:

    mini-o3 rl --config configs/rl_grpo.py:tiny    # 3 GRPO steps on fresh hard toy puzzles -> runs/rl_tiny/final

It starts from the packaged demo model (`mini-o3 infer`'s default, trained by `mini-o3 demo` without a
system prompt, at the toy scene's pixel budget), which answers fresh `toy` puzzles of the hard level,
generated as they are read, about a third of them right within 3 turns, so a group of 4 samples usually
scores unevenly and GRPO has something to learn from; the reward is exact match with the one-word answer.
It reads prompts from `data.path` or `data.sets` instead when set, and starts from another checkpoint with
`--config.model_path=DIR` (e.g. runs/sft_tiny/final). `configs/rl_tiny.py` is the same config.
"""

import ml_collections

from mini_o3_jax.agent.environment import EnvConfig
from mini_o3_jax.config_files import to_block
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.infer import DEMO_MODEL
from mini_o3_jax.model.presets import preset
from mini_o3_jax.rl.loop import RLRollout
from mini_o3_jax.scoring.judge_config import config_defaults
from mini_o3_jax.train.losses import PPOConfig
from mini_o3_jax.train.optim import OptimConfig
from mini_o3_jax.train.settings import SHAPES_7B, TOY_SHAPES, CheckpointConfig, RLTrain


def get_config(mode: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model_path = ""  # the SFT checkpoint (e.g. runs/sft_coldstart/final or Mini-o3/Mini-o3-7B-SFT)
    c.tokenizer_path = ""  # default: model_path
    c.dtype = "bfloat16"
    c.remat = "full"  # recompute each layer in the backward pass; the ViT (trained in RL) also in groups of blocks
    c.unroll_layers = False  # True: layer loops as straight-line code (faster for a few small layers on a CPU)
    c.seed = 0
    c.out_dir = "runs/rl_grpo"
    c.log_every = 1
    c.mesh = {"data": 1, "fsdp": -1, "tensor": 1}
    c.sharding = {}  # overrides of parallel/rules.py's table, {logical axis: mesh axis | [axes] | None}
    c.attention = "auto"  # attention kernels: "auto" (splash on TPU, cuDNN on GPU, XLA on CPU), "xla", ...
    c.compile_cache = "auto"  # persistent compiled programs: "auto" = $JAX_COMPILATION_CACHE_DIR or <out_dir>/compile_cache, "" = off

    c.data = ml_collections.ConfigDict()
    c.data.path = ""  # released JSON: images / problem / solution / data_source / doc_id
    c.data.image_root = ""  # $BASE_IMAGE_DIR
    c.data.allow_absolute_images = False  # True: also read absolute image paths outside image_root
    # or prepared datasets (mini-o3 data prepare), read lazily; the released mix is
    # "visualprobe_train,deepeyes_train_4k" (4,000 + 4,000 prompts)
    c.data.sets = ""
    c.data.tfds_dir = "data/tfds"

    # EnvConfig's defaults are the released training limits: 6 turns, 12 images, 32k context with a 2,000-token
    # guard, 40k-2M pixels, images as stored (no EXIF rotation), the `tool_crop` system prompt (spec 1.1; ""
    # or False / None for none, as a model trained without one needs); the vocabulary limit is the tokenizer's
    c.env = to_block(EnvConfig(), skip=("max_token_id",))
    # rl.loop.RLRollout: 16 rollouts per prompt (one GRPO group), sampled at T=1.0, top_p 1, top_k off; the
    # sampling temperature is also the one the trainer's log-probs (old and new) are computed at (a disagreeing
    # `train.temperature` is an error). The engine's environment is the env block; 64 episodes decode
    # together per host, with 8 environment workers. The KV cache is paged (64-token pages; a group shares its
    # prompt's pages) in a pool sized to 90 % of the free device memory (rollout.pages = 0), split over the
    # host's chips with the weights whole on each: `mini-o3 plan --config rl_grpo --rollout` shows the fit
    # (v5p:2x4x4: every slot's 32K at once; v6e:8x8: 7.8 whole 32K episodes per chip, 15,900 tokens per slot).
    # Prompts and observations are written 8,192 tokens at a time between decode calls (chunked prefill): no
    # extend's activations outgrow the plan's, and decoding slots never wait for a whole 32K prefill
    c.rollout = to_block(RLRollout(slots=64, workers=8, prefill_chunk=8192),
                         skip=("env", "sampling.max_token_id", "sampling.banned_ids"))

    c.reward = ml_collections.ConfigDict()
    c.reward.kind = "judge"  # or "choice" / "exact" / "numeric" (rule-based, no judge)
    # JudgeConfig: url / model / api_key / api_version "" = from the environment (MINI_O3_JUDGE_URL or the
    # released Azure API_KEY/END_POINT/API_VERSION); system_prompt / user_prompt = the released prompts;
    # timeout_s bounds each request end to end, max_reply_bytes caps a reply (e.g. --config.reward.judge.timeout_s=30)
    c.reward.judge = ml_collections.ConfigDict(config_defaults())

    # train.settings.RLTrain: 100 steps of 256 prompts, 8 mini-batch updates of 32 prompts, dynamic sampling,
    # over-turn masking, seq-mean-token-mean, the vision tower trained too; sequences up to 32k + 8k tokens
    c.train = to_block(RLTrain(min_length=1024, logits_chunk=1024,
                               **SHAPES_7B), skip=("temperature",))
    # PPOConfig's defaults are the released objective: clip-higher 0.2/0.3, no KL, no entropy bonus
    c.ppo = to_block(PPOConfig())
    # OptimConfig's defaults are the released actor's AdamW: lr 1e-6 constant, wd 0.01, clip 1.0
    c.optim = to_block(OptimConfig())

    # train.settings.CheckpointConfig: every 25 steps, the newest 3 kept, saved in the background
    c.checkpoint = to_block(CheckpointConfig(every=25))
    if mode == "tiny":
        tiny(c)
    elif mode is not None:
        raise ConfigError(f"rl_grpo.py:{mode}: unknown mode; expected rl_grpo.py or rl_grpo.py:tiny")
    return c


def tiny(c: ml_collections.ConfigDict) -> None:
    """The toy-scale local mode (the module docstring), in place."""
    c.model_path = DEMO_MODEL  # the packaged toy demo model (its tokenizer and preprocessor come with it)
    c.model = preset("tiny")  # used when model_path is empty
    c.dtype = "float32"
    c.remat = "none"
    c.out_dir = "runs/rl_tiny"
    # generated prompts when data.path and data.sets are empty: a `toy.scene.PRESETS` scene ("" = read data.path)
    c.data.synthetic = "toy"
    c.data.synthetic_levels = ["hard"]  # the levels in turn (empty: all): where the model is right a third of the time
    c.env.system_prompt = ""  # as the packaged model was trained (agent.json: "system_prompt": null)
    c.env.max_turns = 3  # the demo's training limit, below its test limit of 6 (over-turn masking)
    c.env.max_context = 6000
    c.env.context_guard = 500
    c.env.min_pixels = 3136  # the toy scene's view budget (56x56 .. 112x112 pixels), as the model was trained
    c.env.max_pixels = 12_544
    c.rollout.update(samples=4, slots=8, max_len=6144, decode_chunk=16, max_turn_tokens=128, workers=2)
    c.reward.kind = "exact"
    c.train.update(steps=3, prompts_per_step=2, mini_batch_prompts=1, max_gen_batches=4)
    # one micro-batch of one length and image-window bucket per group: the update compiles once, not per shape
    c.train.update(micro_batch=4, max_length=8192, min_length=512, min_windows=16, logits_chunk=256, **TOY_SHAPES)
    c.optim.lr = 1e-4
    c.checkpoint.every = 1
    c.checkpoint.async_save = False
