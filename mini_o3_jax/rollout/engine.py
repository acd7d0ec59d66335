"""The host loop: many episodes over a fixed set of cache slots, tools between decode chunks.

    engine = RolloutEngine(model, tokenizer, processor, EngineConfig(slots=16))
    trajectories = engine.run(records, samples=16, seed=0)  # anything with .image and .problem

Each slot holds one episode. A decode call advances every live slot by up to `decode_chunk`
tokens on device; then, on the host, every slot whose turn ended is handed to its
`VisualSearchEnv` (parse, crop, resize, patchify: in a thread pool, since PIL releases the GIL),
and slots that continue are extended with their pending token + the observation. Finished slots
are refilled from the queue (continuous batching); the n samples of one prompt share one prefill.
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

from mini_o3_jax.agent.environment import EnvConfig, StepResult, VisualSearchEnv
from mini_o3_jax.agent.prompts import STOP_STRING
from mini_o3_jax.agent.trajectory import Trajectory
from mini_o3_jax.model.qwen2_5_vl import Qwen25VL, TextInputs
from mini_o3_jax.processing.chat import Tokenizer
from mini_o3_jax.processing.image import ImageProcessor, ImageSource, ProcessedImages
from mini_o3_jax.processing.inputs import build_inputs
from mini_o3_jax.rollout.cache import KVCache, copy_slots, init_cache
from mini_o3_jax.rollout.sampler import Sampling, decode, extend, kv_window, sample_tokens
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
    max_len: int = 32768  # cache row length; keep >= env.max_context
    decode_chunk: int = 64  # tokens per decode call between host visits
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


class _SlotTable:
    """One run's device state and its host mirror: the KV cache, a sampling key per slot, each slot's
    episode (question, sample, environment), length, rope delta, pending token, turn budget and
    stop-automaton state, and the queue of (question, sample) pairs not yet started. Its methods are
    the engine's moves between decode calls.
    """

    def __init__(self, engine: RolloutEngine, questions: Sequence[Question], samples: int, seed: int,
                 seeds: Sequence[int] | None):
        cfg, n = engine.config, engine.config.slots
        self.engine, self.questions, self.seeds = engine, questions, seeds
        self.cache: KVCache = init_cache(engine.model.config.text, n, cfg.max_len, engine.model.dtype)
        self.root = jax.random.key(seed)
        self.keys = jax.random.split(self.root, n)
        self.queue = [(e, s) for e in range(len(questions)) for s in range(samples)]
        self.queue.reverse()
        self.slots: list[_Slot | None] = [None] * n
        self.host_len, self.host_delta = [0] * n, [0] * n
        self.pending = np.zeros(n, np.int32)
        self.budget = np.zeros(n, np.int32)
        self.stop_state = np.zeros(n, np.int32)
        self.stops = np.asarray(engine.stop_table)
        self.done_early: set[int] = set()  # slots whose turn ended on the token sampled by extend

    @property
    def busy(self) -> bool:
        return any(s is not None for s in self.slots)

    def prefill(self, slot: int, ids: np.ndarray, image: ProcessedImages | None) -> tuple[int, jax.Array]:
        """Write `ids` (and the image's patches) after the slot's content; returns the sampled token and logits."""
        eng = self.engine
        t0 = time.perf_counter()
        start = self.host_len[slot] + self.host_delta[slot]
        batch = build_inputs([ids], [None if image is None else image.pixel_values],
                             [None if image is None else image.grid_thw], eng.model.config,
                             pad_id=eng.tokenizer.endoftext_id, starts=[start])
        text = TextInputs(*(jnp.asarray(a) for a in batch.text))
        vision = None if batch.vision is None else jax.tree.map(jnp.asarray, batch.vision)
        delta = int(batch.rope_deltas[0]) - self.host_len[slot]
        self.cache, tok, logits = extend(eng.graphdef, eng.state, self.cache, text, vision, jnp.array([slot]),
                                         jnp.array([delta]), self.keys[slot][None], eng.sampling)
        self.host_len[slot] += len(ids)
        self.host_delta[slot] = delta
        first = int(tok[0])
        eng.stats.extend_s += time.perf_counter() - t0
        eng.stats.extend_calls += 1
        return first, logits

    def start_turn(self, slot: int, first: int) -> None:
        """Open a turn whose first sampled token is `first` (pending: the next call writes it)."""
        self.pending[slot], self.budget[slot] = first, self.engine.config.max_turn_tokens - 1
        self.stop_state[slot] = self.stops[0, first] if first < self.stops.shape[1] else 0
        self.slots[slot].turn = [first]
        if first in self.engine.stop_ids or self.stop_state[slot] == self.stops.shape[0] - 1:
            self.done_early.add(slot)

    def refill(self) -> None:
        """Start queued samples in the free slots; the samples of one question share its prefill."""
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
        lead = mine[0]
        self.cache = self.cache._replace(length=self.cache.length.at[lead].set(0))
        first, logits = self.prefill(lead, env.prompt_ids, env.prompt_pixels)
        self.start_turn(lead, first)
        if len(mine) > 1:  # the other samples copy the prefill and draw their own first token
            rest = jnp.asarray(mine[1:])
            self.cache = copy_slots(self.cache, jnp.full(len(mine) - 1, lead), rest)
            firsts = sample_tokens(jnp.repeat(logits, len(mine) - 1, axis=0),
                                   jax.vmap(jax.random.fold_in)(self.keys[rest], self.cache.length[rest]),
                                   eng.sampling)
            for i, f in zip(mine[1:], np.asarray(firsts)):
                self.slots[i].env = env.copy()
                self.host_len[i], self.host_delta[i] = self.host_len[lead], self.host_delta[lead]
                self.start_turn(i, int(f))

    def decode(self) -> tuple[list[int], dict[int, bool]]:
        """One decode call over every live slot; returns the slots whose turn ended, each with
        whether it ran out of budget (rather than stopping)."""
        eng, cfg = self.engine, self.engine.config
        live = np.array([s is not None and i not in self.done_early for i, s in enumerate(self.slots)])
        # the longest live slot after this call: its pending token and decode_chunk - 1 more are written
        need = max((self.host_len[i] for i in np.flatnonzero(live)), default=0) + cfg.decode_chunk
        t0 = time.perf_counter()
        self.cache, toks, pend, still, stopped, state = decode(
            eng.graphdef, eng.state, self.cache, jnp.asarray(self.pending), jnp.asarray(live),
            jnp.asarray(self.budget), jnp.asarray(eng.stop_ids), self.keys, eng.sampling, cfg.decode_chunk,
            eng.stop_table, jnp.asarray(self.stop_state), kv_len=kv_window(need, cfg.max_len))
        toks, still, stopped = np.asarray(toks), np.asarray(still), np.asarray(stopped)
        self.pending[:], self.stop_state[:] = np.asarray(pend), np.asarray(state)
        eng.stats.decode_s += time.perf_counter() - t0
        eng.stats.decode_calls += 1
        eng.stats.sampled_tokens += int((toks >= 0).sum())
        ended = sorted(self.done_early)
        hit_limit = dict.fromkeys(ended, False)
        self.done_early.clear()
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
        """Extend a continuing slot with the rest of its turn as kept, then the observation."""
        written = len(self.slots[slot].turn) - 1  # every sampled id but the pending one is in the cache
        tail = np.concatenate([kept[written:], step.append_ids]).astype(np.int32)
        first, _ = self.prefill(slot, tail, step.image)
        self.start_turn(slot, first)

    def finish(self, slot: int) -> Trajectory:
        """Free the slot; returns its episode's trajectory."""
        traj = self.slots[slot].env.trajectory()
        self.slots[slot] = None
        return traj


class RolloutEngine:
    def __init__(self, model: Qwen25VL, tokenizer: Tokenizer, processor: ImageProcessor, config: EngineConfig):
        self.model, self.tokenizer, self.processor, self.config = model, tokenizer, processor, config
        self.graphdef, self.state = nnx.split(model)
        vocab = model.config.text.vocab_size
        self.stop_table = jnp.asarray(stop_table(tokenizer, STOP_STRING, vocab))
        self.stop_ids = np.asarray([tokenizer.im_end_id, tokenizer.endoftext_id], np.int32)
        vision_ids = (tokenizer.image_pad_id, tokenizer.video_pad_id, tokenizer.vision_start_id, tokenizer.vision_end_id)
        self.sampling = dataclasses.replace(config.sampling, max_token_id=tokenizer.vocab_size - 1,
                                            banned_ids=tuple(sorted({int(i) for i in vision_ids if i is not None})))
        if config.max_turn_tokens < 2:
            raise ValueError(f"EngineConfig.max_turn_tokens = {config.max_turn_tokens}; expected >= 2")
        self.pool = concurrent.futures.ThreadPoolExecutor(config.workers)
        self.stats = EngineStats()

    def close(self) -> None:
        self.pool.shutdown()

    def set_model(self, model: Qwen25VL) -> None:
        """Sample from new weights (the RL loop calls this after each update; same shapes, no recompile)."""
        self.model = model
        self.graphdef, self.state = nnx.split(model)

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
        self.stats = EngineStats()
        table = _SlotTable(self, questions, samples, seed, seeds)
        results: dict[tuple[int, int], Trajectory] = {}
        t_run = time.perf_counter()
        table.refill()
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
        self.stats.wall_s = time.perf_counter() - t_run
        if not collect:
            return []
        return [results[(e, s)] for e in range(len(questions)) for s in range(samples)]
