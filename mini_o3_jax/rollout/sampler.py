"""Jitted rollout steps over a donated KV cache: extend (prefill is extend at length 0) and decode.

Every slot carries one *pending* token: sampled, returned to the host, not yet in the cache. The
next call writes it first: `decode` feeds it back, and after a tool call the host's `extend` chunk
starts with it, followed by the environment's observation tokens. So a turn's ids are exactly what
was sampled, and nothing is ever re-prefilled.

`decode` runs many steps in one `lax.while_loop` (no Python per token); a slot stops on a stop token, on
its per-turn budget, or when its cache row is full.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from mini_o3_jax.model.qwen2_5_vl import TextInputs
from mini_o3_jax.model.vision import VisionInputs
from mini_o3_jax.rollout.cache import KVCache, PagedKVCache
from mini_o3_jax.rollout.serving import Serving, cache_specs

Cache = KVCache | PagedKVCache


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Static sampling settings (a new combination compiles once). temperature 0 is greedy.

    Mini-o3 trains and evaluates at temperature 1.0, top_p 1, top_k off (recipe spec §1.3, §5).
    """

    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    # Never sample ids above this (the model's padded vocabulary past the tokenizer's last id; the
    # released engine dropped such ids from the turn instead, which would desync a KV cache).
    max_token_id: int | None = None
    # Never sample these: the vision placeholders (<|image_pad|>, <|vision_start|>, ...) only the image
    # processor may place; one sampled into a turn would misalign every image after it.
    banned_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"{self}: expected temperature >= 0, top_k >= 0, 0 < top_p <= 1")


def sample_tokens(logits: jax.Array, keys: jax.Array, sampling: Sampling) -> jax.Array:
    """One token per row of fp32 `logits` (B, V); `keys` (B,) are per-row PRNG keys."""
    neg = jnp.finfo(jnp.float32).min
    if sampling.max_token_id is not None:
        logits = jnp.where(jnp.arange(logits.shape[-1]) > sampling.max_token_id, neg, logits)
    if sampling.banned_ids:
        logits = logits.at[:, jnp.asarray(sampling.banned_ids)].set(neg)
    if sampling.temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / sampling.temperature
    if sampling.top_k:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if sampling.top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (the top token always stays)
        drop_sorted = (jnp.cumsum(probs, axis=-1) - probs) >= sampling.top_p
        drop = jnp.zeros_like(drop_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
        logits = jnp.where(drop, neg, logits)
    return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)


def _step_keys(slot_keys: jax.Array, counter: jax.Array) -> jax.Array:
    # A slot's randomness depends only on its episode key and its own position: batching and slot
    # placement do not change what an episode samples.
    return jax.vmap(jax.random.fold_in)(slot_keys, counter)


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling", "serving", "kv_len"), donate_argnames=("cache",))
def extend(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    cache: Cache,
    text: TextInputs,
    vision: VisionInputs | None,
    slots: jax.Array,
    deltas: jax.Array,
    slot_keys: jax.Array,
    sampling: Sampling,
    serving: Serving | None = None,
    kv_len: int | None = None,
) -> tuple[Cache, jax.Array, jax.Array]:
    """Append a (B, C) chunk to slots `slots` at their current lengths; sample each slot's next token.

    `text.positions` must continue each slot (built with `starts = length + delta`); `deltas` (B,)
    are the slots' new rope deltas. A row whose slot is past the cache's (`num_slots`: padding to a bucketed
    batch) writes nothing. Returns (cache, pending tokens (B,), their logits (B, V) fp32).

    With `serving` the rows split over its devices in equal blocks, block d writing device d's slots: `slots`
    then count from the device's first slot, and the vision inputs are laid out per row
    (`build_inputs(windows_per_row=...)`). `kv_len` (static, `kv_window`): attend over the cache's first kv_len
    positions, which must hold every row's end (default: the whole row).
    """
    fn = functools.partial(_extend, graphdef, sampling=sampling, kv_len=kv_len)
    if serving is None:
        return fn(state, cache, text, vision, slots, deltas, slot_keys)
    r = serving.rows
    rows = P(r)
    text_spec = TextInputs(rows, P(None, r), rows, rows)
    vision_spec = None if vision is None else VisionInputs(rows, rows, rows, rows, P(), rows)
    specs = (jax.tree.map(lambda _: P(), state), cache_specs(cache, r), text_spec, vision_spec, rows, rows, rows)
    return serving.run(fn, specs, (cache_specs(cache, r), rows, rows))(
        state, cache, text, vision, slots, deltas, slot_keys)


def _extend(graphdef, state, cache, text, vision, slots, deltas, slot_keys, *, sampling, kv_len):
    model = nnx.merge(graphdef, state)
    starts = cache.length[slots]
    hidden, k, v = model.cached(text, vision, cache.k, cache.v, starts, slots, kv_len=kv_len, table=_table(cache))
    n = text.segment_ids.sum(axis=-1).astype(jnp.int32)
    last = jnp.take_along_axis(hidden, (n - 1)[:, None, None], axis=1)[:, 0]
    logits = model.text.logits(last)
    length = cache.length.at[slots].add(n)
    tokens = sample_tokens(logits, _step_keys(slot_keys, length[slots]), sampling)
    return cache._replace(k=k, v=v, length=length, delta=cache.delta.at[slots].set(deltas)), tokens, logits


def _table(cache: Cache) -> jax.Array | None:
    return cache.table if isinstance(cache, PagedKVCache) else None


def kv_window(need: int, max_len: int, minimum: int = 256) -> int:
    """The cache prefix a decode call attends over: the smallest power of two >= `need` (and >=
    `minimum`), at most `max_len`. Powers of two keep the compiled variants few (log2(max_len / minimum));
    reading only the filled prefix keeps a long `max_len` from costing every decoded token."""
    n = max(int(need), minimum, 1)
    return min(1 << (n - 1).bit_length(), max_len)


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling", "steps", "kv_len", "serving"),
                   donate_argnames=("cache",))
def decode(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    cache: Cache,
    pending: jax.Array,
    live: jax.Array,
    budget: jax.Array,
    stop_ids: jax.Array,
    slot_keys: jax.Array,
    sampling: Sampling,
    steps: int,
    stop_table: jax.Array | None = None,
    stop_state: jax.Array | None = None,
    kv_len: int | None = None,
    serving: Serving | None = None,
) -> tuple[Cache, jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """Up to `steps` tokens for every live slot, all slots together.

    pending (S,): each slot's sampled-but-unwritten token; live (S,) bool: slots to advance;
    budget (S,): tokens each slot may still sample this turn; stop_ids (K,): tokens that end a turn;
    stop_table (m + 1, V) / stop_state (S,): a stop string's automaton (rollout/stops.py) and each
    slot's state in it (0 at the start of a turn; carried across calls within a turn).
    kv_len (static): attend over the cache's first kv_len positions (`kv_window`); every live slot must
    end within them after `steps` more tokens (default: the whole row).
    Returns (cache, tokens (S, steps) with -1 where a slot did not sample, pending (S,),
    live (S,) still running, stopped (S,) ended on a stop token or string, stop_state (S,)).
    With `serving` each device decodes its own block of slots, its loop ending when its slots have.
    """
    if stop_table is None:
        stop_table = jnp.zeros((2, 1), jnp.int32)  # a string that is never matched
    if stop_state is None:
        stop_state = jnp.zeros_like(pending)
    fn = functools.partial(_decode, graphdef, sampling=sampling, steps=steps, kv_len=kv_len)
    args = (state, cache, pending, live, budget, stop_ids, slot_keys, stop_table, stop_state)
    if serving is None:
        return fn(*args)
    rows = P(serving.rows)
    cache_spec = cache_specs(cache, serving.rows)
    specs = (jax.tree.map(lambda _: P(), state), cache_spec, rows, rows, rows, P(), rows, P(), rows)
    return serving.run(fn, specs, (cache_spec, rows, rows, rows, rows, rows))(*args)


def _decode(graphdef, state, cache, pending, live, budget, stop_ids, slot_keys, stop_table, stop_state, *,
            sampling, steps, kv_len):
    model = nnx.merge(graphdef, state)
    max_len = cache.max_len
    matched = stop_table.shape[0] - 1
    vocab = stop_table.shape[1]

    def step(carry):
        i, out_buf, cache, tok, live, stopped, budget, state = carry
        pos = cache.length + cache.delta
        text = TextInputs(
            input_ids=tok[:, None],
            positions=jnp.broadcast_to(pos[None, :, None], (3, pos.shape[0], 1)),
            segment_ids=live[:, None].astype(jnp.int32),
            image_rows=jnp.full((tok.shape[0], 1), -1, jnp.int32),
        )
        hidden, k, v = model.cached(text, None, cache.k, cache.v, cache.length, kv_len=kv_len, table=_table(cache))
        logits = model.text.logits(hidden[:, 0])
        length = cache.length + live.astype(jnp.int32)
        nxt = sample_tokens(logits, _step_keys(slot_keys, length), sampling)
        moved = jnp.where(nxt < vocab, stop_table[state, jnp.clip(nxt, 0, vocab - 1)], state)
        state = jnp.where(live, moved, state)
        hit_stop = jnp.isin(nxt, stop_ids) | (state == matched)
        budget = budget - live.astype(jnp.int32)
        out = jnp.where(live, nxt, -1)
        tok = jnp.where(live, nxt, tok)
        stopped = stopped | (live & hit_stop)
        live = live & ~hit_stop & (budget > 0) & (length < max_len)
        out_buf = jax.lax.dynamic_update_slice(out_buf, out[:, None], (0, i))
        return i + 1, out_buf, cache._replace(k=k, v=v, length=length), tok, live, stopped, budget, state

    # A while loop, not a scan: it ends as soon as every slot has stopped.
    tokens = jnp.full((pending.shape[0], steps), -1, jnp.int32)
    init = (jnp.int32(0), tokens, cache, pending, live, jnp.zeros_like(live), budget, stop_state)
    _, tokens, cache, pending, live, stopped, _, stop_state = jax.lax.while_loop(
        lambda c: (c[0] < steps) & c[4].any(), step, init)
    return cache, tokens, pending, live, stopped, stop_state
