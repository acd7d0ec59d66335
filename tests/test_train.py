"""Trainers end to end on a tiny random Qwen2.5-VL (CPU): SFT learns, log-probs are the model's,
micro-batching does not change gradients, and GRPO runs, logs and checkpoints."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mini_o3_jax.config_files import load_config
from mini_o3_jax.data.direct import read_prompts, read_sharegpt
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.model.qwen2_5_vl import Qwen25VL, forward_logits
from mini_o3_jax.model.weights import load_model
from mini_o3_jax.processing.image import ImageProcessor
from mini_o3_jax.rl.loop import run_rl
from mini_o3_jax.sft.data import conversation_trajectory, sharegpt_trajectories
from mini_o3_jax.sft.loop import run_sft, step_indices
from mini_o3_jax.train.batch import BatchSpec, examples_from_trajectories, micro_batches
from mini_o3_jax.train.metrics import read_jsonl_metrics, read_tensorboard_scalars
from mini_o3_jax.train.optim import OptimConfig, make_optimizer
from mini_o3_jax.train.step import StepConfig, Trainer
from tests.helpers import small_model_config, small_tokenizer, write_prompts, write_sharegpt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("sftdata"))
    tok = small_tokenizer()
    proc = ImageProcessor(min_pixels=3136, max_pixels=60_000)
    records = read_sharegpt(write_sharegpt(d, 4))
    trajs = list(sharegpt_trajectories(records, tok, proc, min_pixels=3136, max_pixels=60_000))
    return tok, proc, trajs, small_model_config(tok)


def test_sft_data_masks_exactly_the_assistant_turns(parts):
    tok, _, trajs, _ = parts
    multi = trajs[0]
    assert len(multi.images) == 2 and multi.grids.shape == (2, 3) and multi.answer == "A"
    trained = tok.decode(multi.token_ids[multi.loss_mask == 1])
    assert trained == (
        '<think>look closer</think> <grounding>{"bbox_2d": [0.1, 0.2, 0.5, 0.6], "source": "original_image"}'
        "</grounding><|im_end|>\n<think>it is A</think> <answer>A</answer><|im_end|>\n"
    )
    untrained = tok.decode(multi.token_ids[multi.loss_mask == 0])
    assert "the the zoom-in image (Observation 1)" in untrained and "<|image_pad|>" in untrained
    assert (multi.token_ids == tok.image_pad_id).sum() == int((multi.grids.prod(1) // 4).sum())


def test_sft_data_mask_history_trains_the_last_turn_only(parts, tmp_path):
    tok, proc, trajs, _ = parts
    record = read_sharegpt(write_sharegpt(str(tmp_path), 4))[0]
    last = conversation_trajectory(record.conversations, record.images, tok, proc, min_pixels=3136,
                                   max_pixels=60_000, mask_history=True)
    assert np.array_equal(last.token_ids, trajs[0].token_ids)  # same sequence, only the mask differs
    assert tok.decode(last.token_ids[last.loss_mask == 1]) == "<think>it is A</think> <answer>A</answer><|im_end|>\n"


def test_sft_data_with_the_real_qwen_tokenizer(tmp_path):
    # LLaMA-Factory encodes message by message; the pieces must join into exactly the ids the chat
    # template gives for the whole conversation (the boundaries fall on special tokens)
    from mini_o3_jax.processing.chat import Tokenizer, encode_chat, replace_image_placeholders
    from tests.hf_reference import qwen_tokenizer_dir

    tok = Tokenizer.from_pretrained(qwen_tokenizer_dir())
    proc = ImageProcessor(min_pixels=3136, max_pixels=60_000)
    record = read_sharegpt(write_sharegpt(str(tmp_path), 1))[0]
    traj = next(sharegpt_trajectories([record], tok, proc, min_pixels=3136, max_pixels=60_000))
    conv = json.loads(json.dumps(record.conversations))
    roles = {"system": "system", "human": "user", "gpt": "assistant"}
    messages = [{"role": roles[m["from"]], "content": replace_image_placeholders(m["value"])} for m in conv]
    whole = encode_chat(tok, messages, traj.grids, add_generation_prompt=False)
    np.testing.assert_array_equal(traj.token_ids, whole)
    assert tok.decode(traj.token_ids[traj.loss_mask == 1]).endswith("<answer>A</answer><|im_end|>\n")


def test_logprobs_equal_the_full_forward_log_softmax(parts):
    tok, proc, trajs, mcfg = parts
    model = Qwen25VL(mcfg, rngs=nnx.Rngs(3))
    trainer = Trainer(model, make_optimizer(OptimConfig(lr=1e-3), 10), StepConfig(logits_chunk=48))
    examples = examples_from_trajectories(trajs, proc, agg="token-mean")
    batches, rows = micro_batches(examples, model.config, BatchSpec(micro_batch=2, min_length=16,
                                                                    pad_id=tok.endoftext_id))
    for b in batches:
        lp = np.asarray(trainer.logprobs(b))
        ref = jax.nn.log_softmax(forward_logits(model, b.text, b.vision), axis=-1)
        ref = np.take_along_axis(np.asarray(ref), np.asarray(b.targets)[..., None], -1)[..., 0]
        real = np.asarray(b.mask) > 0
        np.testing.assert_allclose(lp[real], ref[real], atol=2e-5)
    assert sorted(i for r in rows for i in r if i >= 0) == [0, 1, 2, 3]


def test_gradients_do_not_depend_on_micro_batch_size(parts):
    tok, proc, trajs, mcfg = parts
    for loss, agg in (("sft", "token-mean"), ("ppo", "seq-mean-token-mean")):
        model = Qwen25VL(mcfg, rngs=nnx.Rngs(4))
        trainer = Trainer(model, make_optimizer(OptimConfig(), 10), StepConfig(loss=loss, trainable="language_model"))
        examples = examples_from_trajectories(trajs, proc, agg=agg, advantages=[1.0, -0.5, 0.3, -1.2])
        results = []
        for micro in (1, 4):
            spec = BatchSpec(micro_batch=micro, min_length=16, pad_id=tok.endoftext_id)
            batches, _ = micro_batches(examples, model.config, spec)
            if loss == "ppo":  # behaviour policy = a perturbed copy, so ratios are not all 1
                batches = [b._replace(old_logprobs=np.asarray(trainer.logprobs(b)) - 0.05) for b in batches]
            results.append(trainer.grads(batches))
        (g1, m1), (g4, m4) = results
        assert m1["loss"] == pytest.approx(m4["loss"], rel=1e-5)
        for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g4)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-4)
        assert "visual" not in g1  # frozen vision tower and merger get no gradient at all


@pytest.fixture(scope="module")
def sft_run(parts, tmp_path_factory):
    tok, proc, trajs, mcfg = parts
    cfg = load_config(os.path.join(REPO, "configs/sft_tiny.py"))
    cfg.model_path = ""  # a random model of the `model` block, not the config's packaged demo model
    cfg.model = mcfg.to_config_dict()
    cfg.out_dir = str(tmp_path_factory.mktemp("sft_run"))
    cfg.train.steps = 16
    cfg.optim.lr = 2e-2
    cfg.optim.schedule = "constant"
    cfg.checkpoint.every = 8
    lines: list[str] = []
    # sample 0 is flagged as cut to the cutoff (same tokens), so the truncation count has something to count
    flagged = [dataclasses.replace(t, truncated=i == 0) for i, t in enumerate(trajs)]
    metrics = run_sft(cfg, lambda idx: [flagged[i] for i in idx], len(trajs), proc, console=lines.append,
                      pad_id=tok.endoftext_id)
    return cfg, metrics, lines, mcfg


def test_sft_drives_the_assistant_token_loss_down(sft_run):
    cfg, metrics, _, mcfg = sft_run
    logged = read_jsonl_metrics(os.path.join(cfg.out_dir, "logs"))
    assert [r["step"] for r in logged] == list(range(1, 17))
    first = np.mean([r["loss"] for r in logged[:2]])
    last = np.mean([r["loss"] for r in logged[-2:]])
    # a random init predicts uniformly: ln(vocab) nats per token
    assert first == pytest.approx(np.log(mcfg.text.vocab_size), rel=0.05) and last < 0.5 * first, (first, last)
    tb = read_tensorboard_scalars(os.path.join(cfg.out_dir, "logs"))
    assert len(tb["loss"]) == 16 and tb["loss"][-1][1] == pytest.approx(logged[-1]["loss"], rel=1e-5)
    for key in ("grad_norm", "lr", "tokens_per_s", "step_time_s"):
        assert key in logged[-1]
    steps = sorted(int(s) for s in os.listdir(os.path.join(cfg.out_dir, "checkpoints")) if s.isdigit())
    assert steps == [8, 16]
    final = load_model(os.path.join(cfg.out_dir, "final"))
    assert final.config == mcfg


def test_sft_reports_truncated_samples(sft_run):
    cfg, _, lines, _ = sft_run
    logged = read_jsonl_metrics(os.path.join(cfg.out_dir, "logs"))
    expected = [step_indices(4, step, cfg.train.batch_size, cfg.seed).count(0) for step in range(16)]
    assert [r["truncated"] for r in logged] == expected and 0 < sum(expected) < 16
    assert f"sft: {sum(expected)} of the 32 samples trained on in this run were truncated to max_length=4096 tokens" in lines


def test_rl_smoke_grpo_steps_log_and_checkpoint(parts, tmp_path):
    tok, proc, _, mcfg = parts
    # warm start: SFT on one-line answers "A"/"B" to near-identical questions, so that sampling at
    # T=1 answers either letter and rule-based rewards vary within a group
    records = read_sharegpt(write_sharegpt(str(tmp_path / "sft"), 4, multi_turn=False))
    answers = list(sharegpt_trajectories(records, tok, proc, min_pixels=3136, max_pixels=60_000))
    sft = load_config(os.path.join(REPO, "configs/sft_tiny.py"))
    sft.model_path = ""  # a random model of the `model` block, not the config's packaged demo model
    sft.model = mcfg.to_config_dict()
    sft.out_dir = str(tmp_path / "sft_out")
    sft.train.steps, sft.optim.lr, sft.optim.schedule, sft.checkpoint.every = 30, 3e-2, "constant", 100
    sft.train.batch_size = sft.train.micro_batch = 4
    run_sft(sft, lambda idx: [answers[i] for i in idx], len(answers), proc, console=None, pad_id=tok.endoftext_id)
    cfg = load_config(os.path.join(REPO, "configs/rl_tiny.py"))
    cfg.model_path = os.path.join(sft.out_dir, "final")
    cfg.out_dir = str(tmp_path / "rl")
    cfg.train.steps = 2
    cfg.env.system_prompt = None  # as the warm-start data: the chat template's default system turn
    cfg.rollout.samples = 8
    cfg.train.max_gen_batches = 6
    cfg.ppo.kl_coef = 0.05  # k3 KL to the reference policy: the model RL started from
    # Small steps, so the KL bound below holds on any machine: Adam moves each weight by ~lr per update whatever
    # the gradient, and KL grows with the square of that move. At lr 1e-4 this warm start (30 steps at 3e-2, whose
    # sharpness depends on the machine's float rounding) read KL 2e-4 on one machine and 0.0196 on another.
    cfg.optim.lr = 1e-5
    # the settings this warm start was made for (rl_tiny.py itself is tuned for the packaged toy model)
    cfg.env.update(min_pixels=3136, max_pixels=60_000)
    cfg.rollout.max_turn_tokens = 24
    cfg.reward.kind = "choice"
    cfg.train.update(micro_batch=1, min_length=64, min_windows=0)
    prompts = read_prompts(write_prompts(str(tmp_path / "prompts"), 4))
    lines: list[str] = []
    metrics = run_rl(cfg, prompts, tok, proc, console=lines.append)
    logged = read_jsonl_metrics(os.path.join(cfg.out_dir, "logs"))
    assert [r["step"] for r in logged] == [1, 2]
    # KL to the start after a few 1e-5 updates: ~1e-6..2e-4 (at most 0.0196 x (1e-5 / 1e-4)^2 by the worst machine
    # seen at lr 1e-4), 50x under the bound; against all-zero reference log-probs, as when the loop did not compute
    # them, it read 0.4-0.5, which depends on the policy's token probabilities, not on the learning rate
    assert all(0.0 <= r["kl"] < 0.01 for r in logged), [r["kl"] for r in logged]
    for key in ("reward_mean", "accuracy", "turns_mean", "over_turn_rate", "pg_loss", "clip_frac", "grad_norm", "kl",
                "rollout_tokens_per_s", "train_tokens_per_s", "step_time_s", "valid_groups"):
        assert key in metrics and np.isfinite(metrics[key]), key
    assert 0.0 < metrics["reward_mean"] < 1.0  # the SFT model answers A or B: rewards vary
    steps = sorted(int(s) for s in os.listdir(os.path.join(cfg.out_dir, "checkpoints")) if s.isdigit())
    assert steps == [2, 4]  # mini_batch_prompts=1 of 2 prompts: two updates per RL step
    assert os.path.isdir(os.path.join(cfg.out_dir, "final"))
    before = load_model(cfg.model_path)
    after = load_model(os.path.join(cfg.out_dir, "final"))
    moved = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(nnx.state(before)),
                                                         jax.tree.leaves(nnx.state(after)))]
    assert max(moved) > 0  # the policy was updated, vision tower included (trainable="all")
    # the RL step count lives in the checkpoint: a finished run, started again, has nothing left to do
    assert run_rl(cfg, prompts, tok, proc, console=None) == {}
    assert [r["step"] for r in read_jsonl_metrics(os.path.join(cfg.out_dir, "logs"))] == [1, 2]


def test_bf16_model_trains_on_fp32_masters_like_an_fp32_adamw(parts):
    """At lr 1e-6 an AdamW step moves a weight by ~1e-6, under half a bf16 ulp of nearly every weight: a
    bf16-only update leaves them unchanged (issue 19). The trainer keeps fp32 masters and moments and sums
    gradients in fp32, so 8 updates must equal a numpy fp32 AdamW fed the same gradients."""
    tok, proc, trajs, mcfg = parts
    model = Qwen25VL(mcfg, dtype="bfloat16", rngs=nnx.Rngs(5))
    opt = OptimConfig(lr=1e-6, grad_clip=0.0, weight_decay=0.01)
    trainer = Trainer(model, make_optimizer(opt, 8), StepConfig(trainable="language_model"))
    examples = examples_from_trajectories(trajs, proc, agg="token-mean")
    batches, _ = micro_batches(examples, model.config, BatchSpec(micro_batch=2, min_length=16,
                                                                 pad_id=tok.endoftext_id))
    assert len(batches) == 2  # so gradients are accumulated across micro-batches
    flat = lambda tree: [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]  # noqa: E731
    p0 = flat(trainer.params)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(trainer.params))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(trainer.opt_state) if x.ndim)
    ref, m, v = [x.copy() for x in p0], [np.zeros_like(x) for x in p0], [np.zeros_like(x) for x in p0]
    for t in range(1, 9):
        grads, _ = trainer.grads(batches)
        assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
        for i, g in enumerate(flat(grads)):
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.999 * v[i] + 0.001 * g * g
            step = (m[i] / (1 - 0.9 ** t)) / (np.sqrt(v[i] / (1 - 0.999 ** t)) + 1e-8)
            ref[i] = ref[i] - 1e-6 * (step + 0.01 * ref[i])
        trainer.train_step(batches)
    got = flat(trainer.params)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)  # a few fp32 ulps over 8 steps
    moved = sum(int((a != b).sum()) for a, b in zip(got, p0)) / sum(a.size for a in p0)
    assert moved > 0.9
    # what a bf16-only update keeps: the reference rounded back to bf16 is mostly the starting weights
    bf16_moved = sum(int((np.asarray(jnp.asarray(a, jnp.bfloat16), np.float64) != b).sum())
                     for a, b in zip(ref, p0)) / sum(a.size for a in p0)
    assert bf16_moved < 0.5
    assert trainer.model().dtype == jnp.bfloat16


def test_fixed_shape_sets_pick_sizes_from_the_config_and_count_programs(parts):
    """`lengths`/`windows`/`bands` (the released configs' shape sets): every micro-batch takes the smallest size
    that holds it, the gradients equal those of bucketed sizes (padding and a wider band change nothing), the
    trainer counts one program per (function, shape), and a micro-batch beyond the largest size is refused."""
    tok, proc, trajs, mcfg = parts
    examples = examples_from_trajectories(trajs, proc, agg="token-mean")
    longest = max(len(e.token_ids) for e in examples)
    fixed = BatchSpec(micro_batch=2, pad_id=tok.endoftext_id, lengths=(longest + 3, 4 * longest),
                      windows=(50, 200), bands=(9, 40))
    batches, _ = micro_batches(examples, mcfg, fixed)
    assert {b.targets.shape[1] for b in batches} == {longest + 3}
    assert {b.vision.pixels.shape[0] // 64 for b in batches} == {2 * 50}
    assert {b.vision.band.shape[0] for b in batches} == {9}
    bucketed, _ = micro_batches(examples, mcfg, BatchSpec(micro_batch=2, min_length=16, pad_id=tok.endoftext_id))
    assert all(b.vision.band.shape[0] < 9 for b in bucketed)
    model = Qwen25VL(mcfg, rngs=nnx.Rngs(5))
    trainer = Trainer(model, make_optimizer(OptimConfig(), 10), StepConfig())
    (g_fixed, m_fixed), (g_bucketed, m_bucketed) = trainer.grads(batches), trainer.grads(bucketed)
    assert m_fixed["loss"] == pytest.approx(m_bucketed["loss"], rel=1e-5)
    for a, b in zip(jax.tree.leaves(g_fixed), jax.tree.leaves(g_bucketed)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-4)
    # one init, one grads program for the fixed shape, one per distinct bucketed shape, one gradient sum
    bucketed_shapes = {(b.targets.shape, b.vision.pixels.shape, b.vision.band.shape) for b in bucketed}
    assert trainer.compiled_programs == 1 + 1 + len(bucketed_shapes) + 1
    assert trainer.train_step(batches)["compiled_programs"] == trainer.compiled_programs == 4 + len(bucketed_shapes)
    with pytest.raises(ConfigError, match=r"needs \d+ tokens, more than the largest of train.lengths = \[8\]"):
        micro_batches(examples, mcfg, dataclasses.replace(fixed, lengths=(8,)))
    with pytest.raises(ConfigError, match="train.bands"):
        micro_batches(examples, mcfg, dataclasses.replace(fixed, bands=(1,)))
