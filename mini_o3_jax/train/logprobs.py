"""`logprobs(model, batch)`: the log-probability of every next token, shared by SFT, RL and the
old-log-prob pass, so trainer and sampler cannot disagree on positions, images or masks.

The LM head runs over length chunks inside a rematerialised loop: full (B, L, V) fp32 logits for
a 32k-token Qwen sequence would take ~20 GB; per chunk they take L/chunk times less, and the
backward pass recomputes each chunk's logits instead of storing them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mini_o3_jax.model.layers import matmul_fp32
from mini_o3_jax.model.qwen2_5_vl import Qwen25VL
from mini_o3_jax.train.batch import TrainBatch


def logprobs(
    model: Qwen25VL,
    batch: TrainBatch,
    *,
    chunk: int = 512,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[jax.Array, jax.Array | None]:
    """(B, L) log p(targets[b, t] | tokens <= t) at `temperature`, and optionally the (B, L) entropy
    of the full next-token distribution. Positions without a target hold garbage: weight them 0."""
    hidden = model(batch.text, batch.vision)
    return head_logprobs(model, hidden, batch.targets, chunk=chunk, temperature=temperature,
                         with_entropy=with_entropy)


def head_logprobs(
    model: Qwen25VL,
    hidden: jax.Array,
    targets: jax.Array,
    *,
    chunk: int = 512,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[jax.Array, jax.Array | None]:
    b, length, d = hidden.shape
    chunk = min(chunk, length)
    n = -(-length // chunk)
    pad = n * chunk - length
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    hs = hidden.reshape(b, n, chunk, d).swapaxes(0, 1)
    ts = targets.reshape(b, n, chunk).swapaxes(0, 1)

    cfg = model.text.cfg
    kernel = model.text.embed[...].T if cfg.tie_word_embeddings else model.text.lm_head[...]

    def one(args):
        h, t = args
        if not with_entropy:
            lp = target_logprobs(h, kernel, t, temperature)
            return lp, jnp.zeros_like(lp)
        logits = model.text.logits(h, jnp.float32)
        if temperature != 1.0:
            logits = logits / temperature
        lse = jax.nn.logsumexp(logits, axis=-1)
        lp = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0] - lse
        p = jnp.exp(logits - lse[..., None])
        ent = lse - jnp.sum(p * logits, axis=-1)
        return lp, ent

    if n > 1:  # one chunk holds the same logits with or without remat: recomputing them would be pure cost
        one = jax.checkpoint(one)
    lp, ent = jax.lax.map(one, (hs, ts))
    lp = lp.swapaxes(0, 1).reshape(b, n * chunk)[:, :length]
    ent = ent.swapaxes(0, 1).reshape(b, n * chunk)[:, :length]
    return lp, (ent if with_entropy else None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def target_logprobs(hidden: jax.Array, kernel: jax.Array, targets: jax.Array, temperature: float = 1.0) -> jax.Array:
    """log softmax(hidden @ kernel / T)[targets], fp32 logits; (B, C, D) x (D, V) -> (B, C).

    A hand-written gradient: autodiff of logsumexp + gather walks the (B, C, V) logits ~5 times (a
    one-hot scatter, softmax, adds); d logits = g * (onehot - softmax) needs one pass. On a 2-core
    CPU this makes the head's gradient 1.7x faster (2 x 512 tokens, 152k vocabulary).
    """
    return _target_logprobs_fwd(hidden, kernel, targets, temperature)[0]


def _logits(hidden, kernel, temperature):
    logits = matmul_fp32("bcd,dv->bcv", hidden, kernel)
    return logits / temperature if temperature != 1.0 else logits


def _target_logprobs_fwd(hidden, kernel, targets, temperature):
    logits = _logits(hidden, kernel, temperature)
    lse = jax.nn.logsumexp(logits, axis=-1)
    lp = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] - lse
    return lp, (hidden, kernel, targets, logits, lse)


def _target_logprobs_bwd(temperature, residuals, g):
    hidden, kernel, targets, logits, lse = residuals
    d = -g[..., None] * jnp.exp(logits - lse[..., None])
    b, c = targets.shape
    d = d.at[jnp.arange(b)[:, None], jnp.arange(c)[None, :], targets].add(g)
    if temperature != 1.0:
        d = d / temperature
    d = d.astype(hidden.dtype)  # what autodiff of the fp32-accumulated einsum feeds its transposes
    d_hidden = jnp.einsum("bcv,dv->bcd", d, kernel.astype(hidden.dtype), preferred_element_type=jnp.float32)
    d_kernel = jnp.einsum("bcd,bcv->dv", hidden, d, preferred_element_type=jnp.float32)
    return d_hidden.astype(hidden.dtype), d_kernel.astype(kernel.dtype), np.zeros(targets.shape, jax.dtypes.float0)


target_logprobs.defvjp(_target_logprobs_fwd, _target_logprobs_bwd)
