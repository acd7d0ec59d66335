"""Helpers shared by several test modules: synthetic images, model inputs, small training data and
checkpoints on disk, a fake LLM-judge HTTP server, and the toy puzzles' pixel digest and expert replay.
Fixtures built on them live in conftest.py."""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
from PIL import Image

from mini_o3_jax.agent.prompts import SYSTEM_PROMPT_TOOL_CROP
from mini_o3_jax.model.qwen2_5_vl import forward_logits
from mini_o3_jax.processing.inputs import build_inputs
from tests.compile_flags import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------ simulated devices
def run_on_devices(script: str, *args: str, devices: int = 8, timeout: int = 300) -> dict:
    """Run `script` in a fresh Python with `devices` simulated CPU devices (XLA reads the count once, at
    start-up, so a multi-device check cannot share this process) and return the JSON it printed on its
    last `RESULT ` line."""
    env = {**os.environ, "XLA_FLAGS": xla_flags(devices), "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": REPO, "TOKENIZERS_PARALLELISM": "false", "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, "-c", script, *args], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=timeout)
    lines = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")]
    assert run.returncode == 0 and lines, f"rc={run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    return json.loads(lines[-1][len("RESULT "):])


# ------------------------------------------------------------------------------------ several hosts
def host_env(**extra: str) -> dict:
    """This environment without its XLA / JAX / mini-o3 settings (the shared compilation cache kept), for a
    process that plays one host."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XLA_", "MINI_O3_", "JAX_")) or k == "JAX_COMPILATION_CACHE_DIR"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO, TOKENIZERS_PARALLELISM="false", XLA_FLAGS=xla_flags())
    env.update(extra)
    return env


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_hosts(cmd: list[str], logs: str, *, hosts: int = 2, devices: int = 4, wrap: list[str] | None = None,
                envs: tuple[dict, ...] = ()) -> list[subprocess.Popen]:
    """The same command on `hosts` processes of `devices` CPU devices each, meeting at a coordinator on
    127.0.0.1 (`wrap` prefixes the command of every process but 0; `envs[i]` adds to process i's environment).
    Process i writes `{logs}.{i}` and `{logs}.{i}.err`."""
    port, procs = free_port(), []
    for rank in range(hosts):
        env = host_env(XLA_FLAGS=xla_flags(devices),
                       MINI_O3_COORDINATOR=f"127.0.0.1:{port}", MINI_O3_NUM_PROCESSES=str(hosts),
                       MINI_O3_PROCESS_ID=str(rank), **(envs[rank] if rank < len(envs) else {}))
        with open(f"{logs}.{rank}", "w") as out, open(f"{logs}.{rank}.err", "w") as err:
            procs.append(subprocess.Popen((wrap or []) * bool(rank) + cmd, env=env, cwd=REPO, stdout=out,
                                          stderr=err))
    return procs


def wait_all(procs: list[subprocess.Popen], timeout: float = 600) -> list[int]:
    """Every process's exit code; any still running after `timeout` is killed (the test then fails, not hangs)."""
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


class FakeGCS:
    """A GCS server (tests/gcs_server.py: the JSON and upload APIs over real HTTP) on 127.0.0.1 with one
    bucket, and the environment that points gcsfs (small files, via etils epath) and tensorstore (Orbax's
    arrays) at it. A test that uses `gs://` paths in-process calls `activate()` before the first one."""

    def __init__(self, bucket: str = "bkt"):
        import socket

        self.bucket, port = bucket, free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.env = {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
                    "GOOGLE_CLOUD_PROJECT": "test", "FSSPEC_GCS_TOKEN": "anon",  # no credential search
                    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}  # the emulator has no storage-control API
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.gcs_server", str(port), bucket], cwd=REPO,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                assert self.proc.poll() is None and time.time() < deadline, "the GCS emulator did not start"
                time.sleep(0.1)

    def activate(self) -> None:
        os.environ.update(self.env)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


# ------------------------------------------------------------------------------------------- images
def rand_image(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR)  # smooth but varied content
    noise = rng.integers(-20, 21, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(img, np.int64) + noise, 0, 255).astype(np.uint8))


QUESTION = "<image>\nWhat is written on the sign?"  # the first user turn of the protocol tests' episodes


def coord_image(w: int = 1000, h: int = 600) -> Image.Image:
    """Pixel (x, y) holds (x % 256, y % 256, (x // 256) * 16 + y // 256): a crop says where it came from."""
    y, x = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([x % 256, y % 256, (x // 256) * 16 + y // 256], -1).astype(np.uint8))


# ------------------------------------------------------------------------------------- model inputs
def make_inputs(processor, messages, images):
    """HF processor ids / pixels / grids of one chat: the reference side of the golden comparisons."""
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    out = processor(text=[text], images=images or None, return_tensors="np")
    return out["input_ids"][0], out.get("pixel_values"), out.get("image_grid_thw")


def full_logits(model, ids, pixel_values, grids):
    """Our logits of one whole sequence in one forward: what incremental decoding must reproduce."""
    pv = np.concatenate(pixel_values) if pixel_values else None
    g = np.concatenate(grids) if grids else None
    batch = build_inputs([ids], [pv], [g], model.config)
    return np.asarray(forward_logits(model, batch.text, batch.vision)[0, : len(ids)], np.float64)


# ------------------------------------------------------------------------- training data on disk
GROUNDING = '<think>look closer</think> <grounding>{"bbox_2d": [0.1, 0.2, 0.5, 0.6], "source": "original_image"}</grounding>'
OBSERVATION = ("After the above Action 0, here is the the zoom-in image (Observation 1):\n<image>.\n"
               "Continue your reasoning process inside <think> and </think>.")


def write_sharegpt(directory: str, n: int = 4, multi_turn: bool = True) -> str:
    """n conversations (half multi-turn with a zoom unless `multi_turn` is False) + PNGs -> JSON path."""
    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    records = []
    for i in range(n):
        original = f"images/q{i}.png"
        rand_image(160 + 20 * i, 200, i).save(os.path.join(directory, original))
        letter = "AB"[i % 2]
        # the multi-turn records carry Mini-o3's system prompt; the short ones take the template default
        conv = [{"from": "system", "value": SYSTEM_PROMPT_TOOL_CROP}] if multi_turn else []
        conv.append({"from": "human", "value": f"<image>\nWhich letter is shown? (A) or (B). Case {i}."})
        images = [original]
        if multi_turn and i % 2 == 0:
            crop = f"images/q{i}_crop.png"
            rand_image(60, 80, 100 + i).save(os.path.join(directory, crop))
            conv += [{"from": "gpt", "value": GROUNDING}, {"from": "human", "value": OBSERVATION}]
            images.append(crop)
        conv.append({"from": "gpt", "value": f"<think>it is {letter}</think> <answer>{letter}</answer>"
                     if multi_turn else f"<answer>{letter}</answer>"})
        records.append({"conversations": json.dumps(conv), "images": images})
    path = os.path.join(directory, "coldstart.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(records, f)
    return path


def write_prompts(directory: str, n: int = 4) -> str:
    """RL prompts in the released JSON format (images / problem / solution / data_source / doc_id)."""
    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    records = []
    for i in range(n):
        image = f"images/p{i}.png"
        rand_image(180, 220 + 10 * i, 50 + i).save(os.path.join(directory, image))
        records.append({"images": [image], "problem": f"<image>\nWhich letter is shown? (A) or (B). Case {i}.",
                        "solution": "AB"[i % 2], "data_source": "visual_probe_train", "doc_id": str(i)})
    path = os.path.join(directory, "train.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(records, f)
    return path


# ------------------------------------------------------------------------ small models, checkpoints
def small_tokenizer():
    """A Qwen-style BPE trained on the protocol and these fixtures' texts (~600 ids instead of 152k):
    the LM head over Qwen's full vocabulary would dominate every CPU training test."""
    from mini_o3_jax.toy.tokenizer import protocol_corpus, train_bpe_tokenizer

    texts = protocol_corpus() + [GROUNDING, OBSERVATION] + [
        f"Which letter is shown? (A) or (B). Case {i}. <think>it is A</think> <answer>B</answer>" for i in range(8)]
    return train_bpe_tokenizer(texts, vocab_size=512)


def small_model_config(tokenizer):
    from mini_o3_jax.model.presets import fit_to_tokenizer, model_config

    return fit_to_tokenizer(model_config("tiny"), tokenizer)


def write_small_checkpoint(directory: str, seed: int = 0) -> str:
    """An Orbax checkpoint of a random tiny model with the small tokenizer and an image processor
    config beside it: what `mini-o3 sft --config.model_path=...` expects."""
    from flax import nnx

    from mini_o3_jax.model.qwen2_5_vl import Qwen25VL
    from mini_o3_jax.model.weights import save_orbax
    from mini_o3_jax.processing.image import ImageProcessor

    tok = small_tokenizer()
    save_orbax(Qwen25VL(small_model_config(tok), rngs=nnx.Rngs(seed)), directory)
    tok.save_pretrained(directory)
    ImageProcessor(min_pixels=3136, max_pixels=60_000).save_pretrained(directory)
    return directory


def train_state(step: int) -> dict:
    """Incompressible arrays big enough that Orbax stores their bytes in data files, not inline."""
    rng = np.random.default_rng(step)
    params = {"w": jnp.asarray(rng.standard_normal((128, 128)), jnp.float32),
              "b": jnp.asarray(rng.standard_normal(64), jnp.bfloat16)}
    moments = {f"m{i}": jnp.asarray(rng.standard_normal((16, 8)), jnp.float32) for i in range(8)}
    return {"params": params, "opt": moments, "count": jnp.asarray(step, jnp.int32)}


# --------------------------------------------------------------------------------- a fake LLM judge
@dataclasses.dataclass
class Recorded:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: dict | None

    @property
    def user(self) -> str:
        assert self.body is not None
        return self.body["messages"][1]["content"]


@dataclasses.dataclass
class Reply:
    content: str | None = "Score: 1"
    status: int = 200
    delay: float = 0.0
    raw: bytes | None = None  # sent verbatim instead of a chat-completions JSON


_GRADED = re.compile(r"\*\*Ground Truth Answer\*\*: (.*?)\n3\. \*\*Model Predicted Answer\*\*: (.*?)\n\nYour task",
                     re.DOTALL)


def grade(req: Recorded, n: int) -> Reply:
    """Answer like a judge would: 1 when the predicted answer equals the ground truth (case-insensitive)."""
    match = _GRADED.search(req.user)
    assert match, req.user
    truth, predicted = (s.strip().lower() for s in match.groups())
    return Reply(
        f"The prediction is {'right' if truth == predicted else 'wrong'}.\nScore: {int(truth == predicted)}"
    )


class FakeJudgeServer(http.server.ThreadingHTTPServer):
    """A chat-completions endpoint on 127.0.0.1 that records every request and answers by `script`."""

    daemon_threads = True
    request_queue_size = 128  # many concurrent clients connect at once

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: Callable[[Recorded, int], Reply] = grade
        self.requests: list[Recorded] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FakeJudgeServer

    def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        rec = Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        srv = self.server
        with srv.lock:
            srv.requests.append(rec)
            n = len(srv.requests) - 1
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
        done = False

        def leave() -> None:
            # counted out *before* the reply goes out: once the client has the reply it may send its next
            # request, which must not find this one still counted (that race made max_in_flight flaky)
            nonlocal done
            if not done:
                done = True
                with srv.lock:
                    srv.in_flight -= 1

        try:
            reply = srv.script(rec, n)
            time.sleep(reply.delay)
            if reply.raw is not None:
                payload = reply.raw
            else:
                message = {"role": "assistant", "content": reply.content}
                choice = {"index": 0, "message": message, "finish_reason": "stop"}
                payload = json.dumps({"object": "chat.completion", "choices": [choice]}).encode()
            leave()
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)
        finally:
            leave()

    def log_message(self, *args: object) -> None:
        pass


# ------------------------------------------------------------------ toy puzzles (mini_o3_jax/toy)
def pixels(image: Image.Image) -> bytes:
    return image.mode.encode() + bytes(str(image.size), "ascii") + image.tobytes()


def replay(puzzle, expert, tokenizer, config, answer=None):
    """Feed the expert's gpt turns to VisualSearchEnv as sampled ids; check crops, messages and the answer
    (`answer`, default the puzzle's)."""
    from mini_o3_jax.agent.environment import VisualSearchEnv
    from mini_o3_jax.processing.chat import IM_END, IM_START, IMAGE_PLACEHOLDER
    from mini_o3_jax.processing.image import ImageProcessor

    env = VisualSearchEnv(puzzle.image, puzzle.problem, tokenizer, ImageProcessor(), config.env_config())
    turns = expert.gpt_turns
    for i, text in enumerate(turns):
        last = i == len(turns) - 1
        assert text.endswith("</answer>" if last else "</grounding>")
        step = env.step(tokenizer.encode(text + (IM_END if last else "")))
        assert step.turn.outcome == ("final" if last else "crop"), step.turn
        if not last:
            # the observation turn of the data is the user message the environment appended
            user = step.turn.message.split(f"{IM_START}user\n", 1)[1].split(IM_END, 1)[0]
            assert expert.conversations[3 + 2 * i]["value"] == user.replace(IMAGE_PLACEHOLDER, "<image>")
    traj = env.trajectory()
    assert traj.answer == (puzzle.answer if answer is None else answer) and not (traj.void or traj.exceed)
    assert len(env.observations) == len(expert.images)
    for got, want in zip(env.observations, expert.images):
        assert got.size == want.size and np.array_equal(np.asarray(got), np.asarray(want))
    return traj
