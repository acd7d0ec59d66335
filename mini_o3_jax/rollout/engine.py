"""The host loop: many episodes over a fixed set of cache slots, tools between decode chunks.

    engine = RolloutEngine(model, tokenizer, processor, EngineConfig(slots=16))
    trajectories = engine.run([Episode(image, question), ...], samples=16, seed=0)

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

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mini_o3_jax.agent.environment import EnvConfig, StepResult, VisualSearchEnv
from mini_o3_jax.agent.prompts import STOP_STRING
from mini_o3_jax.agent.trajectory import Trajectory
from mini_o3_jax.model.qwen2_5_vl import Qwen25VL, TextInputs
from mini_o3_jax.processing.chat import Tokenizer
from mini_o3_jax.processing.image import ImageProcessor, ImageSource
from mini_o3_jax.processing.inputs import build_inputs
from mini_o3_jax.rollout.cache import KVCache, copy_slots, init_cache
from mini_o3_jax.rollout.sampler import Sampling, decode, extend, kv_window, sample_tokens
from mini_o3_jax.rollout.stops import stop_table, truncate_at_stop


@dataclasses.dataclass(frozen=True)
class Episode:
    image: ImageSource
    question: str
    # Samples draw from key(seed) when set, else from the run's seed and the episode's position:
    # evaluation sets it per question so that a resumed run samples exactly what the first one would.
    seed: int | None = None


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    slots: int = 8
    max_len: int = 32768  # cache row length; keep >= env.max_context
    decode_chunk: int = 64  # tokens per decode call between host visits
    max_turn_tokens: int = 8192  # per assistant turn (the released max_response_length)
    sampling: Sampling = Sampling()
    env: EnvConfig = EnvConfig()
    workers: int = 4


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
    episode: int
    sample: int
    key: jax.Array
    turn: list[int]  # ids sampled in the current turn (the last one is pending)


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
        episodes: Sequence[Episode],
        samples: int = 1,
        seed: int = 0,
        on_turn: Callable[[int, int, StepResult], None] | None = None,
        on_trajectory: Callable[[int, int, Trajectory], None] | None = None,
        collect: bool = True,
    ) -> list[Trajectory]:
        """All `samples` rollouts of every episode, in order [episode 0 sample 0, 0/1, ..., 1/0, ...].

        `on_turn(episode, sample, step)` sees each finished turn; `on_trajectory(episode, sample,
        trajectory)` each finished episode, as it finishes (evaluation streams results to disk).
        `collect=False` keeps nothing and returns []: a long evaluation need not hold every image.
        """
        cfg, n_slots = self.config, self.config.slots
        cache = init_cache(self.model.config.text, n_slots, cfg.max_len, self.model.dtype)
        root = jax.random.key(seed)
        queue = [(e, s) for e in range(len(episodes)) for s in range(samples)]
        queue.reverse()
        slots: list[_Slot | None] = [None] * n_slots
        host_len, host_delta = [0] * n_slots, [0] * n_slots
        pending = np.zeros(n_slots, np.int32)
        budget = np.zeros(n_slots, np.int32)
        stop_state = np.zeros(n_slots, np.int32)
        keys = jax.random.split(root, n_slots)
        results: dict[tuple[int, int], Trajectory] = {}
        stats = self.stats = EngineStats()
        t_run = time.perf_counter()

        def chunk(slot: int, ids: np.ndarray, image) -> tuple[KVCache, int, jax.Array]:
            nonlocal cache
            t0 = time.perf_counter()
            start = host_len[slot] + host_delta[slot]
            batch = build_inputs([ids], [None if image is None else image.pixel_values],
                                 [None if image is None else image.grid_thw], self.model.config,
                                 pad_id=self.tokenizer.endoftext_id, starts=[start])
            text = TextInputs(*(jnp.asarray(a) for a in batch.text))
            vision = None if batch.vision is None else jax.tree.map(jnp.asarray, batch.vision)
            delta = int(batch.rope_deltas[0]) - host_len[slot]
            cache, tok, logits = extend(self.graphdef, self.state, cache, text, vision, jnp.array([slot]),
                                        jnp.array([delta]), keys[slot][None], self.sampling)
            host_len[slot] += len(ids)
            host_delta[slot] = delta
            first = int(tok[0])
            stats.extend_s += time.perf_counter() - t0
            stats.extend_calls += 1
            return cache, first, logits

        table = np.asarray(self.stop_table)
        matched = table.shape[0] - 1
        done_early: set[int] = set()  # slots whose turn ended on the token sampled by extend

        def start_turn(slot: int, first: int) -> None:
            pending[slot], budget[slot] = first, cfg.max_turn_tokens - 1
            stop_state[slot] = table[0, first] if first < table.shape[1] else 0
            slots[slot].turn = [first]
            if first in self.stop_ids or stop_state[slot] == matched:
                done_early.add(slot)

        def refill() -> None:
            nonlocal cache, keys
            free = [i for i in range(n_slots) if slots[i] is None]
            while free and queue:
                e, s = queue.pop()
                group = [(e, s)]
                while queue and queue[-1][0] == e and len(group) < len(free):
                    group.append(queue.pop())
                mine, free = free[: len(group)], free[len(group):]
                episode = episodes[e]  # read once: `episodes` may load lazily from disk
                env = VisualSearchEnv(episode.image, episode.question, self.tokenizer, self.processor, cfg.env)
                for i, (ee, ss) in zip(mine, group):
                    base = jax.random.fold_in(root, ee) if episode.seed is None else jax.random.key(episode.seed)
                    k = jax.random.fold_in(base, ss)
                    keys = keys.at[i].set(k)
                    slots[i] = _Slot(env if i == mine[0] else None, ee, ss, k, [])
                    host_len[i] = host_delta[i] = 0
                lead = mine[0]
                cache = cache._replace(length=cache.length.at[lead].set(0))
                image = env.prompt_pixels
                cache, first, logits = chunk(lead, env.prompt_ids, image)
                start_turn(lead, first)
                if len(mine) > 1:  # the other samples copy the prefill and draw their own first token
                    rest = jnp.asarray(mine[1:])
                    cache = copy_slots(cache, jnp.full(len(mine) - 1, lead), rest)
                    firsts = sample_tokens(jnp.repeat(logits, len(mine) - 1, axis=0),
                                           jax.vmap(jax.random.fold_in)(keys[rest], cache.length[rest]), self.sampling)
                    for i, f in zip(mine[1:], np.asarray(firsts)):
                        slots[i].env = env.copy()
                        host_len[i], host_delta[i] = host_len[lead], host_delta[lead]
                        start_turn(i, int(f))

        refill()
        while any(s is not None for s in slots):
            live = np.array([s is not None and i not in done_early for i, s in enumerate(slots)])
            # the longest live slot after this call: its pending token and decode_chunk - 1 more are written
            need = max((host_len[i] for i in np.flatnonzero(live)), default=0) + cfg.decode_chunk
            t0 = time.perf_counter()
            cache, toks, pend, still, stopped, state = decode(
                self.graphdef, self.state, cache, jnp.asarray(pending), jnp.asarray(live), jnp.asarray(budget),
                jnp.asarray(self.stop_ids), keys, self.sampling, cfg.decode_chunk, self.stop_table, jnp.asarray(stop_state),
                kv_len=kv_window(need, cfg.max_len))
            toks, still, stopped = np.asarray(toks), np.asarray(still), np.asarray(stopped)
            pending[:], stop_state[:] = np.asarray(pend), np.asarray(state)
            stats.decode_s += time.perf_counter() - t0
            stats.decode_calls += 1
            stats.sampled_tokens += int((toks >= 0).sum())
            ended = sorted(done_early)
            hit_limit = dict.fromkeys(ended, False)
            done_early.clear()
            for i in np.flatnonzero(live):
                new = toks[i][toks[i] >= 0]
                slots[i].turn.extend(int(t) for t in new)
                budget[i] -= len(new)
                host_len[i] += len(new)  # decode wrote the previous pending token and all but the last
                if not still[i]:
                    ended.append(i)
                    hit_limit[i] = not bool(stopped[i])
            turns = {i: truncate_at_stop(np.asarray(slots[i].turn), self.tokenizer, STOP_STRING) for i in ended}
            steps = dict(zip(ended, self.pool.map(lambda i, t=turns, h=hit_limit: slots[i].env.step(t[i], h[i]), ended)))
            for i in ended:
                slot, step = slots[i], steps[i]
                if on_turn is not None:
                    on_turn(slot.episode, slot.sample, step)
                if step.done:
                    traj = slot.env.trajectory()
                    if collect:
                        results[(slot.episode, slot.sample)] = traj
                    slots[i] = None
                    if on_trajectory is not None:
                        on_trajectory(slot.episode, slot.sample, traj)
                    continue
                kept = turns[i]
                written = len(slot.turn) - 1  # every sampled id but the pending one is in the cache
                tail = np.concatenate([kept[written:], step.append_ids]).astype(np.int32)
                cache, first, _ = chunk(i, tail, step.image)
                start_turn(i, first)
            refill()
        stats.wall_s = time.perf_counter() - t_run
        if not collect:
            return []
        return [results[(e, s)] for e in range(len(episodes)) for s in range(samples)]
