"""`logprobs(model, batch)`: the log-probability of every next token, shared by SFT, RL and the
old-log-prob pass, so trainer and sampler cannot disagree on positions, images or masks.

The LM head runs over length chunks inside a rematerialised loop: full (B, L, V) fp32 logits for
a 32k-token Qwen sequence would take ~20 GB; per chunk they take L/chunk times less, and the
backward pass recomputes each chunk's logits instead of storing them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

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

    def one(args):
        h, t = args
        logits = model.text.logits(h, jnp.float32)
        if temperature != 1.0:
            logits = logits / temperature
        lse = jax.nn.logsumexp(logits, axis=-1)
        lp = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0] - lse
        if not with_entropy:
            return lp, jnp.zeros_like(lp)
        p = jnp.exp(logits - lse[..., None])
        ent = lse - jnp.sum(p * logits, axis=-1)
        return lp, ent

    if n > 1:  # one chunk holds the same logits with or without remat: recomputing them would be pure cost
        one = jax.checkpoint(one)
    lp, ent = jax.lax.map(one, (hs, ts))
    lp = lp.swapaxes(0, 1).reshape(b, n * chunk)[:, :length]
    ent = ent.swapaxes(0, 1).reshape(b, n * chunk)[:, :length]
    return lp, (ent if with_entropy else None)
