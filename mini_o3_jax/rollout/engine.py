"""The host loop: many episodes over a fixed set of cache slots, tools between decode chunks.

    engine = RolloutEngine(model, tokenizer, processor, EngineConfig(slots=16))
    trajectories = engine.run(records, samples=16, seed=0)  # anything with .image and .problem

Each slot holds one episode. A decode call advances every live slot by up to `decode_chunk`
tokens on device; then, on the host, every slot whose turn ended is handed to its
`VisualSearchEnv` (parse, crop, resize, patchify: in a thread pool, since PIL releases the GIL),
and slots that continue queue their pending token + the observation. Finished slots are refilled
from the queue (continuous batching); the n samples of one prompt share one prefill. All queued
chunks (new prompts and observations) are written by one batched extend per length bucket, their
crops through one ViT call, before the next decode. With `prefill_chunk` set, a chunk longer than that
is written one piece per host visit (an image's tokens never split), interleaved with the decode calls
of the other slots: no extend call is longer than a piece, and decoding slots wait for one piece, not
a whole 32K prompt.

The KV cache is paged by default (`rollout/pages.py`): a slot holds the pages its tokens fill, a
group shares its prompt's pages, and an episode's pages return to the pool when it ends. A pool
sized below every slot's `max_len` (`EngineConfig.pages`) holds more slots in the same memory; a
slot it cannot serve waits for pages, and a run where every episode waits is refused with the
numbers.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec

from mini_o3_jax.agent.environment import EnvConfig, StepResult, VisualSearchEnv
from mini_o3_jax.agent.prompts import STOP_STRING
from mini_o3_jax.agent.trajectory import Trajectory
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.model.qwen2_5_vl import Qwen25VL, TextInputs
from mini_o3_jax.processing.chat import Tokenizer
from mini_o3_jax.processing.image import ImageProcessor, ImageSource, ProcessedImages
from mini_o3_jax.processing.inputs import build_inputs
from mini_o3_jax.processing.positions import bucket, count_windows
from mini_o3_jax.rollout.cache import copy_slots, init_cache, init_paged_cache, page_bytes
from mini_o3_jax.rollout.pages import PagePool, PoolExhausted, copy_pages, device_free_bytes, pool_pages
from mini_o3_jax.rollout.sampler import Cache, Sampling, decode, extend, kv_window, sample_tokens
from mini_o3_jax.rollout.serving import serving_for
from mini_o3_jax.rollout.stops import stop_table, truncate_at_stop


class Question(Protocol):
    """What the engine reads of a question (a `data.records.Record` is one): its image and its text."""

    @property
    def image(self) -> ImageSource: ...

    @property
    def problem(self) -> str: ...


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    slots: int = 8
    max_len: int = 32768  # tokens a slot may hold (paged: rounded up to whole pages); keep >= env.max_context
    # KV cache pages of page_size tokens in one pool, a slot holding only the pages it fills and a group's
    # samples sharing their prompt's (0: a dense max_len row per slot). `pages` sizes the pool, the null page
    # of each device included (0: every slot's max_len, or as many pages as fit in 90% of the free memory);
    # fewer pages than that hold more slots in the same memory, and a slot the pool cannot serve waits for
    # pages that finished episodes release. A pool that cannot fit is refused before allocation.
    page_size: int = 64
    pages: int = 0
    decode_chunk: int = 64  # tokens per decode call between host visits
    # chunked prefill: at most this many tokens of a slot's prompt or observation per extend call, one piece per
    # host visit, between decode calls (an image's tokens stay in one piece); 0: each chunk in one call
    prefill_chunk: int = 0
    max_turn_tokens: int = 8192  # per assistant turn (the released max_response_length)
    sampling: Sampling = Sampling()
    env: EnvConfig = EnvConfig()
    workers: int = 4
    # keep each trajectory's patch rows (in the model's dtype) for training to reuse: RL sets it; evaluation
    # does not (a 2-Mpx image is ~24 MB of bf16 patches)
    keep_patches: bool = False


@dataclasses.dataclass
class EngineStats:
    """Where the wall time of the last `run` went (device calls include their host->device sync)."""

    wall_s: float = 0.0
    decode_s: float = 0.0  # decode calls, until their tokens are on the host
    extend_s: float = 0.0  # prefill/extend calls, input building included
    decode_calls: int = 0
    extend_calls: int = 0
    sampled_tokens: int = 0
    longest_extend: int = 0  # most tokens one extend call wrote for one slot (chunked prefill bounds it)
    reshard_s: float = 0.0  # moving the weights into the serving layout (at the last `set_model`)
    peak_pages: int = 0  # most KV pages in use at once (paged cache)
    page_waits: int = 0  # times a slot's extend or decode waited for pages
    cache_sharding: str = ""  # where the cache's keys lived (a PartitionSpec over the mesh; "" on one device)

    @property
    def host_s(self) -> float:
        """Everything else: environments (parse, crop, resize, patchify), bookkeeping, Python."""
        return self.wall_s - self.decode_s - self.extend_s


@dataclasses.dataclass
class _Slot:
    env: VisualSearchEnv
    question: int
    sample: int
    turn: list[int]  # ids sampled in the current turn (the last one is pending)


@dataclasses.dataclass
class _Chunk:
    """Tokens (and an image) waiting to be written after a slot's content: a group's prompt (its other samples,
    `followers`, fork the prefill) or a turn's unwritten tail plus the observation."""

    slot: int
    ids: np.ndarray
    image: ProcessedImages | None
    followers: list[int] = dataclasses.field(default_factory=list)
    last: bool = True  # the chunk's last piece: its sampled token opens the turn (chunked prefill)


def split_piece(chunk: _Chunk, limit: int, vision_start: int, vision_end: int) -> tuple[_Chunk, _Chunk | None]:
    """The first piece of `chunk` (at most `limit` tokens, cut outside every image's vision_start..vision_end
    span; longer only when one image is) and the rest, or (chunk, None) when it fits whole."""
    ids = chunk.ids
    if not limit or len(ids) <= limit:
        return chunk, None
    starts, ends = np.flatnonzero(ids == vision_start), np.flatnonzero(ids == vision_end)
    cut = limit
    for a, b in zip(starts, ends):  # an image span [a, b] the cut would enter: cut before it, or after it
        if a < cut <= b:
            cut = int(a) if a > 0 else int(b) + 1
            break
    if cut >= len(ids):
        return chunk, None
    head, tail = None, chunk.image
    images = int((starts < cut).sum())
    if images and chunk.image is not None:  # the images the piece holds, with their patch rows
        grids = chunk.image.grid_thw
        rows = int(np.prod(grids[:images], axis=1).sum())
        head = ProcessedImages(chunk.image.pixel_values[:rows], grids[:images])
        tail = None if images == len(grids) else ProcessedImages(chunk.image.pixel_values[rows:], grids[images:])
    piece = _Chunk(chunk.slot, ids[:cut], head, last=False)
    return piece, _Chunk(chunk.slot, ids[cut:], tail, chunk.followers, chunk.last)


def _rows_bucket(n: int, most: int) -> int:
    """Rows of a batched extend: 1, or n rounded up to a power of 4, at most `most` (few compiled variants per
    chunk length: padding rows cost little next to a compile)."""
    rows = 1
    while rows < n:
        rows *= 4
    return min(rows, most)


class _SlotTable:
    """One run's device state and its host mirror: the KV cache (paged, with its `PagePool`, or dense rows), a
    sampling key per slot, each slot's episode (question, sample, environment), length, rope delta, pending
    token, turn budget and stop-automaton state, the chunks waiting to be written and the queue of (question,
    sample) pairs not yet started. Its methods are the engine's moves between decode calls.
    """

    def __init__(self, engine: RolloutEngine, questions: Sequence[Question], samples: int, seed: int,
                 seeds: Sequence[int] | None):
        cfg, n = engine.config, engine.config.slots
        self.engine, self.questions, self.seeds = engine, questions, seeds
        text, dtype = engine.model.config.text, engine.model.dtype
        serving, ways = engine.serving, engine.ways
        self.pool: PagePool | None = None
        # checked against the devices' free memory before anything is allocated
        free, where = device_free_bytes(list(jax.tree.leaves(engine.state)[0].devices()))
        if cfg.page_size:
            per_slot = -(-cfg.max_len // cfg.page_size)
            pages = pool_pages(cfg.pages, n, per_slot, ways, page_bytes(text, cfg.page_size, dtype), free, where)
            self.pool = PagePool(pages, cfg.page_size, n, per_slot, ways)
            self.cache: Cache = init_paged_cache(text, n, self.pool.num_pages, cfg.page_size, per_slot, dtype,
                                                 self._sharding(None, None, "rows"))
        else:
            need = n // ways * cfg.max_len * page_bytes(text, 1, dtype)
            if need > 0.9 * free:
                raise ConfigError(f"a dense KV cache of {n // ways} slots x {cfg.max_len} tokens per device needs "
                                  f"{need / 2**30:.2f} GiB; {free / 2**30:.2f} GiB is free on {where}: use the paged "
                                  "cache (rollout.page_size > 0) or fewer slots")
            self.cache = init_cache(text, n, cfg.max_len, dtype, self._sharding(None, "rows"))
        self.root = jax.random.key(seed)
        self.keys = jax.random.split(self.root, n)
        if serving is not None:  # every per-slot array split like the slots
            rows = self._sharding("rows")
            self.cache = self.cache._replace(length=jax.device_put(self.cache.length, rows),
                                             delta=jax.device_put(self.cache.delta, rows))
            self.keys = jax.device_put(self.keys, rows)
        self._sync_table()
        self.queue = [(e, s) for e in range(len(questions)) for s in range(samples)]
        self.queue.reverse()
        self.slots: list[_Slot | None] = [None] * n
        self.host_len, self.host_delta = [0] * n, [0] * n
        self.pending = np.zeros(n, np.int32)
        self.budget = np.zeros(n, np.int32)
        self.stop_state = np.zeros(n, np.int32)
        self.stops = np.asarray(engine.stop_table)
        self.done_early: set[int] = set()  # slots whose turn ended on the token sampled by extend
        self.waiting: list[_Chunk] = []  # chunks not yet written (the pool may make them wait for pages)
        self.wrote = False  # whether the last flush wrote anything (a run where nothing can move is stuck)

    @property
    def busy(self) -> bool:
        return any(s is not None for s in self.slots)

    def _sharding(self, *spec: str | None) -> jax.sharding.Sharding | None:
        """Where an array whose axes are `spec` ("rows": split like the slots) lives; None on one device."""
        serving = self.engine.serving
        if serving is None:
            return None
        return serving.sharding(PartitionSpec(*(serving.rows if a == "rows" else a for a in spec)))

    def _sync_table(self) -> None:
        """Send the host's page table with the next call (after every reservation or fork)."""
        if self.pool is not None:
            table = self.pool.table
            self.cache = self.cache._replace(table=jnp.asarray(table) if self.engine.serving is None
                                             else jax.device_put(table, self._sharding("rows")))
            self.engine.stats.peak_pages = max(self.engine.stats.peak_pages, self.pool.used_pages)

    def _pages_needed(self, chunk: _Chunk) -> int:
        """New pages writing `chunk` takes (and forking its followers' partly filled last page)."""
        pool, end = self.pool, self.host_len[chunk.slot] + len(chunk.ids)
        tails = len(chunk.followers) if end % pool.page_size else 0
        return pool.pages_for(end) - int(pool.held[chunk.slot]) + tails

    def flush(self) -> bool:
        """Write every waiting chunk (its next piece, with `prefill_chunk`) the pool has pages for: batched
        extends (rows of similar length together, images through one ViT call), then forks to each group's
        followers. Returns whether anything was written."""
        ready, free = [], None if self.pool is None else self.pool.free_by_part()
        eng = self.engine
        for whole in list(self.waiting):
            chunk, rest = split_piece(whole, eng.config.prefill_chunk, eng.tokenizer.vision_start_id,
                                      eng.tokenizer.vision_end_id)
            if self.pool is not None:
                need, part = self._pages_needed(chunk), self.pool.part(chunk.slot)
                if need > free[part]:
                    eng.stats.page_waits += 1
                    continue
                free[part] -= need
                self.pool.reserve(chunk.slot, self.host_len[chunk.slot] + len(chunk.ids))
            ready.append(chunk)
            self.waiting[self.waiting.index(whole)] = rest  # None: written whole (removed below)
        self.waiting = [c for c in self.waiting if c is not None]
        self.wrote = bool(ready)
        if not ready:
            return False
        self._sync_table()
        ready.sort(key=lambda c: len(c.ids))
        by_length: dict[int, list[_Chunk]] = {}
        for chunk in ready:
            by_length.setdefault(bucket(len(chunk.ids), 16), []).append(chunk)
        for group in by_length.values():
            firsts, logits = self._extend(group)
            for row, chunk in enumerate(group):
                if not chunk.last:  # an earlier piece: its sampled token is not used
                    continue
                self.start_turn(chunk.slot, firsts[row])
                if chunk.followers:
                    self._fork(chunk, logits[row])
        return True

    def _extend(self, chunks: list[_Chunk]) -> tuple[list[int], jax.Array]:
        """One extend call writing `chunks`, padded with rows that write nothing to a power-of-two row count (per
        device: with a serving layout, row block d holds device d's slots, each row's images in its own windows)."""
        eng = self.engine
        t0 = time.perf_counter()
        ways, per_part = eng.ways, self.cache.num_slots // eng.ways
        by_part: list[list[_Chunk]] = [[] for _ in range(ways)]
        for c in chunks:
            by_part[c.slot // per_part].append(c)
        width = _rows_bucket(max(len(b) for b in by_part), per_part)
        layout: list[_Chunk | None] = [c for b in by_part for c in b + [None] * (width - len(b))]
        # padding rows name the slot past the device's last (writes dropped or to the null page)
        slots = [per_part if c is None else c.slot % per_part for c in layout]
        images = [None if c is None else c.image for c in layout]
        pad = np.full(1, eng.tokenizer.endoftext_id, np.int32)
        grids = [None if im is None else im.grid_thw for im in images]
        windows = None
        if ways > 1 and any(g is not None for g in grids):
            cfg = eng.model.config.vision
            windows = bucket(max(count_windows(np.asarray(g).reshape(-1, 3), cfg.spatial_merge_size,
                                               cfg.window_merged) for g in grids if g is not None), 4)
        batch = build_inputs([pad if c is None else c.ids for c in layout],
                             [None if im is None else im.pixel_values for im in images], grids, eng.model.config,
                             pad_id=eng.tokenizer.endoftext_id, windows_per_row=windows,
                             starts=[0 if c is None else self.host_len[c.slot] + self.host_delta[c.slot]
                                     for c in layout])
        text = TextInputs(*(jnp.asarray(a) for a in batch.text))
        vision = None if batch.vision is None else jax.tree.map(jnp.asarray, batch.vision)
        deltas = [0 if c is None else int(batch.rope_deltas[r]) - self.host_len[c.slot] for r, c in enumerate(layout)]
        keys = self.keys[jnp.asarray([0 if c is None else c.slot for c in layout])]
        # attend over the filled prefix only (every row ends within it), not each slot's whole max_len
        need = max(self.host_len[c.slot] + len(c.ids) for c in chunks)
        self.cache, tok, logits = extend(eng.graphdef, eng.state, self.cache, text, vision, jnp.asarray(slots),
                                         jnp.asarray(deltas), keys, eng.sampling, serving=eng.serving,
                                         kv_len=kv_window(need, self.cache.max_len))
        tok = np.asarray(tok)
        row = {c.slot: r for r, c in enumerate(layout) if c is not None}
        for c in chunks:
            self.host_len[c.slot] += len(c.ids)
            self.host_delta[c.slot] = deltas[row[c.slot]]
        eng.stats.extend_s += time.perf_counter() - t0
        eng.stats.extend_calls += 1
        eng.stats.longest_extend = max(eng.stats.longest_extend, max(len(c.ids) for c in chunks))
        return [int(tok[row[c.slot]]) for c in chunks], logits[jnp.asarray([row[c.slot] for c in chunks])]

    def _fork(self, chunk: _Chunk, logits: jax.Array) -> None:
        """The followers of a prompt share its prefill (paged: its whole pages by reference) and each draw
        their own first token from its logits."""
        eng, lead = self.engine, chunk.slot
        rest = jnp.asarray(chunk.followers)
        if self.pool is not None:
            copies = [c for i in chunk.followers for c in self.pool.fork(lead, i, self.host_len[lead])]
            k, v = self.cache.k, self.cache.v
            if copies:
                src, dst = (jnp.asarray(x, jnp.int32) for x in zip(*copies))
                k, v = copy_pages(k, src, dst), copy_pages(v, src, dst)
            self.cache = self.cache._replace(k=k, v=v, length=self.cache.length.at[rest].set(self.host_len[lead]),
                                             delta=self.cache.delta.at[rest].set(self.host_delta[lead]))
            self._sync_table()
        else:
            self.cache = copy_slots(self.cache, jnp.full(len(chunk.followers), lead), rest)
        firsts = sample_tokens(jnp.repeat(logits[None], len(chunk.followers), axis=0),
                               jax.vmap(jax.random.fold_in)(self.keys[rest], self.cache.length[rest]), eng.sampling)
        env = self.slots[lead].env
        for i, f in zip(chunk.followers, np.asarray(firsts)):
            self.slots[i].env = env.copy()
            self.host_len[i], self.host_delta[i] = self.host_len[lead], self.host_delta[lead]
            self.start_turn(i, int(f))

    def start_turn(self, slot: int, first: int) -> None:
        """Open a turn whose first sampled token is `first` (pending: the next call writes it)."""
        self.pending[slot], self.budget[slot] = first, self.engine.config.max_turn_tokens - 1
        self.stop_state[slot] = self.stops[0, first] if first < self.stops.shape[1] else 0
        self.slots[slot].turn = [first]
        if first in self.engine.stop_ids or self.stop_state[slot] == self.stops.shape[0] - 1:
            self.done_early.add(slot)

    def refill(self) -> None:
        """Start queued samples in the free slots; the samples of one question share its prefill (queued
        with the turns' chunks and written by the next `flush`)."""
        free = [i for i in range(len(self.slots)) if self.slots[i] is None]
        while free and self.queue:
            e, s = self.queue.pop()
            group = [s]
            while self.queue and self.queue[-1][0] == e and len(group) < len(free):
                group.append(self.queue.pop()[1])
            mine, free = free[: len(group)], free[len(group):]
            self._start(e, group, mine)

    def _start(self, e: int, samples: list[int], mine: list[int]) -> None:
        eng = self.engine
        question = self.questions[e]  # read once: `questions` may load lazily from disk
        env = VisualSearchEnv(question.image, question.problem, eng.tokenizer, eng.processor, eng.config.env,
                              patch_dtype=jnp.dtype(eng.model.dtype) if eng.config.keep_patches else None)
        base = jax.random.fold_in(self.root, e) if self.seeds is None else jax.random.key(self.seeds[e])
        for i, s in zip(mine, samples):
            self.keys = self.keys.at[i].set(jax.random.fold_in(base, s))
            self.slots[i] = _Slot(env if i == mine[0] else None, e, s, [])
            self.host_len[i] = self.host_delta[i] = 0
        self.cache = self.cache._replace(length=self.cache.length.at[jnp.asarray(mine)].set(0))
        # one prefill per device the group spans (a fork shares pages only within a device's partition)
        per_part = self.cache.num_slots // eng.ways
        for k, part in enumerate(sorted({i // per_part for i in mine})):
            here = [i for i in mine if i // per_part == part]
            if k:
                self.slots[here[0]].env = env.copy()
            self.waiting.append(_Chunk(here[0], env.prompt_ids, env.prompt_pixels, here[1:]))

    def decode(self) -> tuple[list[int], dict[int, bool]]:
        """One decode call over every live slot; returns the slots whose turn ended, each with
        whether it ran out of budget (rather than stopping)."""
        eng, cfg = self.engine, self.engine.config
        waiting = {i for c in self.waiting for i in (c.slot, *c.followers)}
        live = np.array([s is not None and i not in self.done_early and i not in waiting
                         for i, s in enumerate(self.slots)])
        max_len = self.cache.max_len
        if self.pool is not None:  # pages for this call's tokens; a slot the pool cannot serve sits it out
            for i in np.flatnonzero(live):
                try:
                    self.pool.reserve(int(i), min(self.host_len[i] + cfg.decode_chunk, max_len))
                except PoolExhausted:
                    live[i] = False
                    eng.stats.page_waits += 1
            self._sync_table()
        ended = sorted(self.done_early)
        hit_limit = dict.fromkeys(ended, False)
        self.done_early.clear()
        if not live.any():
            if not ended and self.busy and not self.wrote:
                pool = self.pool
                raise PoolExhausted(
                    f"every live episode waits for KV pages: {pool.used_pages} of {pool.num_pages - 1} pages of "
                    f"{pool.page_size} tokens are held by {sum(s is not None for s in self.slots)} episodes; "
                    f"raise rollout.pages (or lower rollout.slots)")
            return ended, hit_limit
        # the longest live slot after this call: its pending token and decode_chunk - 1 more are written
        need = max(self.host_len[i] for i in np.flatnonzero(live)) + cfg.decode_chunk
        t0 = time.perf_counter()
        self.cache, toks, pend, still, stopped, state = decode(
            eng.graphdef, eng.state, self.cache, jnp.asarray(self.pending), jnp.asarray(live),
            jnp.asarray(self.budget), jnp.asarray(eng.stop_ids), self.keys, eng.sampling, cfg.decode_chunk,
            eng.stop_table, jnp.asarray(self.stop_state), kv_len=kv_window(need, max_len), serving=eng.serving)
        toks, still, stopped = np.asarray(toks), np.asarray(still), np.asarray(stopped)
        self.pending[:], self.stop_state[:] = np.asarray(pend), np.asarray(state)
        eng.stats.decode_s += time.perf_counter() - t0
        eng.stats.decode_calls += 1
        eng.stats.sampled_tokens += int((toks >= 0).sum())
        for i in np.flatnonzero(live):
            new = toks[i][toks[i] >= 0]
            self.slots[i].turn.extend(int(t) for t in new)
            self.budget[i] -= len(new)
            self.host_len[i] += len(new)  # decode wrote the previous pending token and all but the last
            if not still[i]:
                ended.append(i)
                hit_limit[i] = not bool(stopped[i])
        return ended, hit_limit

    def next_turn(self, slot: int, kept: np.ndarray, step: StepResult) -> None:
        """Queue the rest of a continuing slot's turn as kept, then the observation (the next `flush` writes it)."""
        written = len(self.slots[slot].turn) - 1  # every sampled id but the pending one is in the cache
        tail = np.concatenate([kept[written:], step.append_ids]).astype(np.int32)
        self.waiting.append(_Chunk(slot, tail, step.image))

    def finish(self, slot: int) -> Trajectory:
        """Free the slot (and its pages); returns its episode's trajectory."""
        traj = self.slots[slot].env.trajectory()
        self.slots[slot] = None
        if self.pool is not None:
            self.pool.release(slot)
        return traj


class RolloutEngine:
    def __init__(self, model: Qwen25VL, tokenizer: Tokenizer, processor: ImageProcessor, config: EngineConfig):
        self.model, self.tokenizer, self.processor, self.config = model, tokenizer, processor, config
        self.reshard_s = 0.0
        self.serving = None
        self.set_model(model)
        vocab = model.config.text.vocab_size
        self.stop_table = jnp.asarray(stop_table(tokenizer, STOP_STRING, vocab))
        self.stop_ids = np.asarray([tokenizer.im_end_id, tokenizer.endoftext_id], np.int32)
        vision_ids = (tokenizer.image_pad_id, tokenizer.video_pad_id, tokenizer.vision_start_id, tokenizer.vision_end_id)
        self.sampling = dataclasses.replace(config.sampling, max_token_id=tokenizer.vocab_size - 1,
                                            banned_ids=tuple(sorted({int(i) for i in vision_ids if i is not None})))
        if config.max_turn_tokens < 2:
            raise ValueError(f"EngineConfig.max_turn_tokens = {config.max_turn_tokens}; expected >= 2")
        if config.prefill_chunk < 0:
            raise ValueError(f"EngineConfig.prefill_chunk = {config.prefill_chunk}; expected >= 0 (0: whole chunks)")
        self.pool = concurrent.futures.ThreadPoolExecutor(config.workers)
        self.stats = EngineStats()

    def close(self) -> None:
        self.pool.shutdown()

    @property
    def ways(self) -> int:
        """Devices the slots split over (1 without a serving layout)."""
        return 1 if self.serving is None else self.serving.ways

    def set_model(self, model: Qwen25VL) -> None:
        """Sample from new weights (the RL loop calls this after each update; same shapes, no recompile). Weights
        on a mesh move once into the serving layout (`rollout/serving.py`); `reshard_s` is what that took."""
        self.model = model
        self.graphdef, self.state = nnx.split(model)
        self.serving = serving_for(self.state)
        self.reshard_s = 0.0
        if self.serving is not None:
            if self.config.slots % self.serving.ways:
                raise ConfigError(f"rollout.slots = {self.config.slots} does not split over the "
                                  f"{self.serving.ways} devices of mesh axes {'x'.join(self.serving.axes)}")
            if self.config.pages % self.serving.ways:
                raise ConfigError(f"rollout.pages = {self.config.pages} does not split over the "
                                  f"{self.serving.ways} devices of mesh axes {'x'.join(self.serving.axes)}")
            self.state, self.reshard_s = self.serving.reshard(self.state)

    def run(
        self,
        questions: Sequence[Question],
        samples: int = 1,
        seed: int = 0,
        seeds: Sequence[int] | None = None,
        on_turn: Callable[[int, int, StepResult], None] | None = None,
        on_trajectory: Callable[[int, int, Trajectory], None] | None = None,
        collect: bool = True,
    ) -> list[Trajectory]:
        """All `samples` rollouts of every question, in order [question 0 sample 0, 0/1, ..., 1/0, ...].

        Question e's samples draw from key(seeds[e]) when `seeds` is given, else from `seed` and e:
        evaluation gives one per question so that a resumed run samples exactly what the first would.
        `on_turn(question, sample, step)` sees each finished turn; `on_trajectory(question, sample,
        trajectory)` each finished episode, as it finishes (evaluation streams results to disk).
        `collect=False` keeps nothing and returns []: a long evaluation need not hold every image.
        """
        if seeds is not None and len(seeds) != len(questions):
            raise ValueError(f"{len(seeds)} seeds for {len(questions)} questions")
        self.stats = EngineStats(reshard_s=self.reshard_s)
        table = _SlotTable(self, questions, samples, seed, seeds)
        results: dict[tuple[int, int], Trajectory] = {}
        t_run = time.perf_counter()
        table.refill()
        table.flush()
        while table.busy:
            ended, hit_limit = table.decode()
            turns = {i: truncate_at_stop(np.asarray(table.slots[i].turn), self.tokenizer, STOP_STRING) for i in ended}
            steps = dict(zip(ended, self.pool.map(lambda i, t=turns, h=hit_limit: table.slots[i].env.step(t[i], h[i]),
                                                  ended)))
            for i in ended:
                slot, step = table.slots[i], steps[i]
                if on_turn is not None:
                    on_turn(slot.question, slot.sample, step)
                if not step.done:
                    table.next_turn(i, turns[i], step)
                    continue
                traj = table.finish(i)
                if collect:
                    results[(slot.question, slot.sample)] = traj
                if on_trajectory is not None:
                    on_trajectory(slot.question, slot.sample, traj)
            table.refill()
            table.flush()
        self.stats.wall_s = time.perf_counter() - t_run
        sharding = table.cache.k.sharding
        self.stats.cache_sharding = str(sharding.spec) if self.serving is not None else ""
        if not collect:
            return []
        return [results[(e, s)] for e in range(len(questions)) for s in range(samples)]
