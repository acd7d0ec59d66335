"""`mini-o3 eval` end to end on a tiny model over synthetic benchmarks: every artefact, and a run killed
mid-way resumes to the same metrics as an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mini_o3_jax.data import loader
from mini_o3_jax.errors import ConfigError
from tests.helpers import grade, read_text, start_hosts, wait_all, write_small_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEVELS = ("synthetic_easy", "synthetic_hard")
N = 6  # questions per level


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from mini_o3_jax.toy.scene import SceneConfig
    from mini_o3_jax.toy.writers import write_benchmark

    root = tmp_path_factory.mktemp("eval")
    ckpt = write_small_checkpoint(str(root / "ckpt"))
    cfg = SceneConfig.tiny()
    sources = {name: os.path.dirname(write_benchmark(str(root / "src"), name.split("_")[1], N, seed=1,
                                                      config=cfg)) for name in LEVELS}
    return root, ckpt, sources


def _cmd(root, ckpt, sources, out):
    args = [sys.executable, "-m", "mini_o3_jax.cli", "eval", "--config", os.path.join(REPO, "configs", "eval.py"),
            f"--config.model_path={ckpt}", f"--config.out_dir={out}", f"--config.data_dir={root / 'tfds'}",
            f"--config.benchmarks={','.join(LEVELS)}", "--config.label=tiny-random", "--config.eval.scorer=auto",
            "--config.eval.k=4", "--config.eval.env.max_turns=3", "--config.eval.turn_limits=(1,2,3)",
            "--config.eval.env.max_context=4000", "--config.eval.env.context_guard=400",
            "--config.eval.env.min_pixels=3136", "--config.eval.env.max_pixels=20000",
            "--config.eval.rollout.max_turn_tokens=40", "--config.eval.rollout.slots=4",
            "--config.eval.rollout.decode_chunk=8", "--config.eval.rollout.workers=2"]
    return args + [f"--config.sources.{name}={path}" for name, path in sources.items()]


def _env():
    return {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}


def _lines(path):
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as f:
        return f.read().count(b"\n")


@pytest.fixture(scope="module")
def full(setup):
    """One uninterrupted run on one process: the reference of the resumed and the multi-host runs."""
    root, ckpt, sources = setup
    subprocess.run(_cmd(root, ckpt, sources, root / "full"), env=_env(), check=True, capture_output=True,
                   timeout=600)
    return root / "full"


def test_eval_writes_every_artefact_and_resumes_after_a_kill(setup, full):
    root, ckpt, sources = setup
    resumed = root / "resumed"
    metrics = json.loads((full / "metrics.json").read_text())
    for name in LEVELS:
        m = metrics["benchmarks"][name]
        assert m["questions"] == N and m["samples"] == 4 * N and m["samples_per_question"] == 4
        assert set(m["pass_at_k"]) == {"1", "2", "4"} and set(m["turn_curve"]) == {"1", "2", "3"}
        assert 0.0 <= m["avg_at_k"] <= 100.0 and m["mean_turns"] >= 1.0
        lines = (full / name / "results.jsonl").read_text().splitlines()
        assert len(lines) == N
        q = json.loads(lines[0])
        assert len(q["samples"]) == 4 and q["solution"] and q["image"]
        assert (full / q["image"]).exists()
        assert (full / f"browser_{name}.html").exists()
    table = (full / "results.md").read_text()
    assert "| Mini-o3 (paper) | 48.0 |" in table and "| synthetic_easy |" in table and "tiny-random" in table
    assert "**Scorer: exact (offline rule, not the paper's GPT-4o judge)** for synthetic_easy, synthetic_hard" in table
    assert metrics["benchmarks"]["synthetic_easy"]["scorer"] == "exact" and metrics["config"]["scorer"] == "auto"
    png = (full / "turn_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    page = (full / "browser_synthetic_easy.html").read_text()
    assert "show('overturn')" in page and "show('correct')" in page and page.count("class='q'") == N
    assert (full / "index.html").exists()
    assert metrics["wall_s"] > 0 and metrics["invocations"] == 1

    # kill a second run after its first finished question, then run it again to the end
    results = resumed / LEVELS[0] / "results.jsonl"
    proc = subprocess.Popen(_cmd(root, ckpt, sources, resumed), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _lines(results) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _lines(results)
    assert 1 <= done < N, f"the kill landed after {done} of {N} questions"
    out = subprocess.run(_cmd(root, ckpt, sources, resumed), env=_env(), check=True, capture_output=True,
                         text=True, timeout=600)
    assert f"{done} questions already done" in out.stdout
    again = json.loads((resumed / "metrics.json").read_text())
    assert again["benchmarks"] == metrics["benchmarks"]
    for name in LEVELS:
        a = [json.loads(x) for x in (full / name / "results.jsonl").read_text().splitlines()]
        b = [json.loads(x) for x in (resumed / name / "results.jsonl").read_text().splitlines()]
        assert sorted(a, key=lambda q: q["doc_id"]) == sorted(b, key=lambda q: q["doc_id"])


def test_two_hosts_evaluate_their_shares_into_the_metrics_of_one(setup, full, tmp_path):
    """`mini-o3 eval` on 2 processes joined by jax.distributed: each samples and scores half the questions on its
    own device; process 0 merges them into the same results and metrics.json as the one-process run."""
    root, ckpt, sources = setup
    out, logs = tmp_path / "two", str(tmp_path / "log")
    codes = wait_all(start_hosts(_cmd(root, ckpt, sources, out), logs, devices=1))
    assert codes == [0, 0], read_text(f"{logs}.0.err")[-3000:] + read_text(f"{logs}.1.err")[-3000:]
    one, two = (json.loads((d / "metrics.json").read_text()) for d in (full, out))
    assert two["benchmarks"] == one["benchmarks"] and two["config"] == one["config"]
    assert two["invocations"] == 1 and two["sampled_tokens"] == one["sampled_tokens"]
    for name in LEVELS:
        a = [json.loads(x) for x in (full / name / "results.jsonl").read_text().splitlines()]
        b = [json.loads(x) for x in (out / name / "results.jsonl").read_text().splitlines()]
        assert sorted(a, key=lambda q: q["doc_id"]) == sorted(b, key=lambda q: q["doc_id"])
        order = loader.load(name, str(root / "tfds"))
        assert [q["doc_id"] for q in b] == [order[i].doc_id for i in range(N)]  # merged in the benchmark's order
        assert not list((out / name).glob("results.host*.jsonl"))  # the per-host files are folded in
        assert all((out / q["image"]).exists() for q in b)  # each host saved its own questions' images
    # process 0 shows the progress of its half (2 levels x 3 questions x 4 samples); process 1 stays silent
    assert "24/24" in read_text(f"{logs}.0.err") and "eval" not in read_text(f"{logs}.1.err")
    said = [line for line in read_text(f"{logs}.1").splitlines() if not line.startswith("[Gloo]")]  # JAX start-up
    assert "Avg@4" in read_text(f"{logs}.0") and said == []


def test_resume_with_other_settings_is_refused(setup):
    root, ckpt, sources = setup
    out = root / "refused"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"k": 8}))
    res = subprocess.run(_cmd(root, ckpt, sources, out), env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 2 and "holds results from other settings" in res.stderr and "'k': (8, 4)" in res.stderr


def test_judge_failures_are_judged_again_on_resume_without_rollouts(tmp_path, server):
    """A run whose judge failed on some samples keeps them (score null); the next invocation asks the judge
    again for exactly those, rewrites the line, and recomputes the metrics. No model is needed. The judge
    sees the raw solution ("B" for multiple choice, no option text), as the release."""
    from mini_o3_jax.agent.environment import EnvConfig
    from mini_o3_jax.data.records import Record
    from mini_o3_jax.eval.metrics import QuestionResult, SampleResult
    from mini_o3_jax.eval.run import EvalConfig, run_eval
    from mini_o3_jax.scoring.judge_config import JudgeConfig

    cfg = EvalConfig(k=3, env=EnvConfig(max_turns=2, max_images=0), turn_limits=(1, 2))
    assert cfg.scorer == "judge"  # the paper's scorer is the default
    recs = [Record(benchmark="vstar", doc_id="q0", image=b"", problem="<image>\nColor? (A) red (B) blue",
                   solution="B", data_source="vstar_bench", options=("red", "blue")),
            Record(benchmark="vstar", doc_id="q1", image=b"", problem="<image>\nHow many?", solution="3",
                   data_source="vstar_bench")]
    done = [QuestionResult("vstar", "q0", "", [SampleResult(None, "B", 1), SampleResult(0.0, "red", 1),
                                               SampleResult(None, "(A) red", 2)], recs[0].problem, "B", "blue", "judge"),
            QuestionResult("vstar", "q1", "", [SampleResult(1.0, "3", 1), SampleResult(0.0, "4", 1),
                                               SampleResult(0.0, None, 2, void=True)], recs[1].problem, "3", "3", "judge")]
    (tmp_path / "vstar").mkdir()
    (tmp_path / "vstar" / "results.jsonl").write_text("".join(json.dumps(q.to_json()) + "\n" for q in done))
    (tmp_path / "run.json").write_text(json.dumps(cfg.fingerprint()))
    server.script = grade  # 1 when the prediction equals the ground truth the judge was shown
    judge = JudgeConfig(url=server.url + "/v1", backoff_s=0.0)
    metrics = run_eval(None, None, None, {"vstar": recs}, cfg, tmp_path, judge=judge, console=None)
    assert len(server.requests) == 2  # only the two failed samples
    users = sorted(r.body["messages"][1]["content"] for r in server.requests)
    assert all("2. **Ground Truth Answer**: B\n3. **Model Predicted Answer**: " in u for u in users)
    assert "**Model Predicted Answer**: B\n" in users[1] and "**Model Predicted Answer**: (A) red\n" in users[0]
    assert all("blue" not in u.split("Ground Truth Answer")[1].split("\n")[0] for u in users)  # no option text
    lines = [json.loads(x) for x in (tmp_path / "vstar" / "results.jsonl").read_text().splitlines()]
    assert [s["score"] for s in lines[0]["samples"]] == [1.0, 0.0, 0.0]
    assert [s["score"] for s in lines[1]["samples"]] == [1.0, 0.0, 0.0]
    m = metrics["benchmarks"]["vstar"]
    assert m["judge_failed"] == 0 and m["avg_at_k"] == pytest.approx(100 * (1 / 3 + 1 / 3) / 2)
    assert m["scorer"] == "judge" and metrics["judge_model"] == "gpt-4o-2024-11-20"
    table = (tmp_path / "results.md").read_text()
    assert "Scorer: LLM judge `gpt-4o-2024-11-20` (the paper's judge) for vstar." in table
    assert "offline rule" not in table


_JUDGE_ENV = ("MINI_O3_JUDGE_URL", "MINI_O3_JUDGE_MODEL", "MINI_O3_JUDGE_KEY", "MINI_O3_JUDGE_API_VERSION",
              "END_POINT", "API_KEY", "API_VERSION")


def test_eval_without_a_judge_fails_at_once_in_one_line(tmp_path, capsys, monkeypatch):
    """The default scorer is the judge; with none configured, `mini-o3 eval` stops before loading anything
    (the checkpoint path does not even exist) and says how to set one or score offline."""
    from mini_o3_jax.cli import main

    for name in _JUDGE_ENV:
        monkeypatch.delenv(name, raising=False)
    rc = main(["eval", "--config", os.path.join(REPO, "configs", "eval.py"),
               f"--config.model_path={tmp_path / 'no-such-checkpoint'}", f"--config.out_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    for hint in ("MINI_O3_JUDGE_URL", "END_POINT, API_KEY and API_VERSION", "--config.eval.scorer=auto"):
        assert hint in err
    assert not (tmp_path / "out").exists()


def test_eval_runs_the_packaged_model_as_trained(tmp_path, capsys):
    """`mini-o3 eval` on the packaged toy model reads its agent.json as `infer` does (no system prompt, its
    pixel budget, 6 turns, 4k context, 128 tokens a turn): held-out toy puzzles are mostly solved and no
    sample is void (with the released defaults instead, every sample was void: 0 %)."""
    from mini_o3_jax.cli import main
    from mini_o3_jax.infer import DEMO_MODEL
    from mini_o3_jax.toy.recipe import SEED_EVAL
    from mini_o3_jax.toy.scene import SceneConfig
    from mini_o3_jax.toy.writers import write_benchmark

    src = write_benchmark(tmp_path / "src", "easy", 4, seed=SEED_EVAL, config=SceneConfig.toy())
    out = tmp_path / "out"
    rc = main(["eval", "--config", os.path.join(REPO, "configs", "eval.py"), f"--config.model_path={DEMO_MODEL}",
               f"--config.out_dir={out}", f"--config.data_dir={tmp_path / 'tfds'}", "--config.benchmarks=synthetic_easy",
               f"--config.sources.synthetic_easy={os.path.dirname(src)}", "--config.eval.scorer=auto",
               "--config.eval.k=4", "--config.eval.rollout.slots=16", "--config.eval.rollout.decode_chunk=16",
               "--config.eval.rollout.workers=2", "--config.eval.save_crops=0", "--config.eval.turn_limits=(1,2,3)"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "agent.json: running the model as it was trained" in printed
    run = json.loads((out / "run.json").read_text())
    assert (run["system_prompt"], run["max_turns"], run["max_context"], run["max_turn_tokens"]) == (None, 6, 4096, 128)
    assert (run["min_pixels"], run["max_pixels"], run["context_guard"]) == (3136, 12544, 1024)  # guard as infer's
    m = json.loads((out / "metrics.json").read_text())["benchmarks"]["synthetic_easy"]
    assert m["samples"] == 16 and m["void_rate"] == 0.0 and m["answered_rate"] == 1.0
    # ~60-70 % here (58 % over 64 other held-out samples); the released defaults give 0 % with every sample void
    assert m["avg_at_k"] >= 25.0, m


def test_eval_settings_given_win_over_agent_json(tmp_path):
    """Precedence, as `infer`: a value the eval block sets wins; "auto" ones come from agent.json, else the
    released eval's; "" means no system prompt."""
    from mini_o3_jax.agent.settings import RELEASED_AGENT, write_agent_settings
    from mini_o3_jax.config_files import load_config
    from mini_o3_jax.eval.run import EvalConfig
    from mini_o3_jax.infer import DEMO_MODEL

    cfg = load_config(os.path.join(REPO, "configs", "eval.py"), ["eval.env.max_turns=9", "eval.env.context_guard=100"])
    got = EvalConfig.from_config(cfg.eval, checkpoint=DEMO_MODEL)
    assert (got.env.max_turns, got.env.context_guard, got.env.max_context, got.env.max_pixels, got.env.system_prompt) == (
        9, 100, 4096, 12544, None)
    bare = EvalConfig.from_config(cfg.eval, checkpoint=tmp_path)  # no agent.json: the released eval
    assert (bare.env.max_context, bare.env.context_guard, bare.rollout.max_turn_tokens, bare.env.min_pixels,
            bare.env.max_pixels) == (
        32768, 100, 8192, RELEASED_AGENT["min_pixels"], RELEASED_AGENT["max_pixels"])
    assert bare.env.system_prompt == RELEASED_AGENT["system_prompt"] and bare.env.system_prompt
    write_agent_settings(tmp_path, system_prompt="Zoom first.", max_context=8192)
    mine = EvalConfig.from_config(load_config(os.path.join(REPO, "configs", "eval.py"), ["eval.env.system_prompt="]).eval,
                                  checkpoint=tmp_path)
    assert (mine.env.system_prompt, mine.env.max_context, mine.env.context_guard, mine.env.max_turns) == (
        None, 8192, 2000, 12)
    (tmp_path / "agent.json").write_text("{not json")
    with pytest.raises(ConfigError, match="agent.json"):
        EvalConfig.from_config(cfg.eval, checkpoint=tmp_path)


def test_unjudged_samples_fail_the_command_and_a_rerun_judges_them(tmp_path, capsys, monkeypatch, server):
    """An unreachable judge leaves the rollouts on disk unjudged: `mini-o3 eval` exits 2 with one line saying
    how many and to re-run; the re-run, with the judge back, rolls nothing out and asks only for those."""
    import socket

    from mini_o3_jax.cli import main
    from mini_o3_jax.infer import DEMO_MODEL
    from mini_o3_jax.toy.recipe import SEED_EVAL
    from mini_o3_jax.toy.scene import SceneConfig
    from mini_o3_jax.toy.writers import write_benchmark

    for name in _JUDGE_ENV:
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = write_benchmark(tmp_path / "src", "easy", 2, seed=SEED_EVAL, config=SceneConfig.toy())
    out = tmp_path / "out"
    argv = ["eval", "--config", os.path.join(REPO, "configs", "eval.py"), f"--config.model_path={DEMO_MODEL}",
            f"--config.out_dir={out}", f"--config.data_dir={tmp_path / 'tfds'}", "--config.benchmarks=synthetic_easy",
            f"--config.sources.synthetic_easy={os.path.dirname(src)}", "--config.eval.k=2",
            "--config.eval.rollout.slots=4", "--config.eval.rollout.decode_chunk=16", "--config.eval.rollout.workers=2",
            "--config.eval.save_crops=0",
            "--config.eval.turn_limits=(1,2,3)", "--config.judge.model=toy-judge", "--config.judge.attempts=1",
            "--config.judge.timeout_s=2"]
    capsys.readouterr()
    assert main([*argv, f"--config.judge.url=http://127.0.0.1:{port}/v1"]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error: ")]
    with open(out / "synthetic_easy" / "results.jsonl", encoding="utf-8") as f:
        questions = [json.loads(line) for line in f]
    samples = [s for q in questions for s in q["samples"]]
    asked = sum(s["answer"] is not None for s in samples)  # no <answer>: scored 0 without the judge
    distinct = {(q["doc_id"], s["answer"]) for q in questions for s in q["samples"] if s["answer"] is not None}
    assert len(samples) == 4 and asked >= 1 and all(s["score"] is None for s in samples if s["answer"] is not None)
    assert err == [f"error: {out}: {asked} samples unjudged; re-run to retry them (the judge at "
                   f"http://127.0.0.1:{port}/v1/chat/completions failed on them after 1 attempt(s) each): the same "
                   "command keeps the finished questions and sends only the unjudged samples to the judge again"]
    m = json.loads((out / "metrics.json").read_text())["benchmarks"]["synthetic_easy"]
    assert m["judge_failed"] == asked and m["samples_judged"] == 4 - asked

    server.script = grade  # the judge is back
    assert main([*argv, f"--config.judge.url={server.url}/v1"]) == 0
    assert len(server.requests) == len(distinct)  # only the unjudged samples (same answers share one), no rollouts
    m = json.loads((out / "metrics.json").read_text())["benchmarks"]["synthetic_easy"]
    assert m["judge_failed"] == 0 and m["samples_judged"] == 4 and m["questions"] == 2


def test_merge_parts_folds_every_hosts_file_in_once_in_benchmark_order(tmp_path):
    """The per-host files of a multi-host run, one of them cut by a kill and one question in two files (a merge
    cut short after its rewrite): each finished question lands once, new ones in the benchmark's order."""
    from mini_o3_jax.eval.metrics import QuestionResult, SampleResult
    from mini_o3_jax.eval.run import merge_parts, read_results

    def q(doc_id):
        s = SampleResult(score=1.0, answer="A", turns=1, over_turn=False, over_length=False, void=False, tokens=5,
                         response_tokens=3, detail=[])
        return json.dumps(QuestionResult("b", doc_id, "", [s], "p", "A", "A", "exact", "").to_json()) + "\n"

    (tmp_path / "results.jsonl").write_text(q("d0"))
    (tmp_path / "results.host0.jsonl").write_text(q("d3") + q("d1"))
    (tmp_path / "results.host1.jsonl").write_text(q("d0") + q("d2") + q("d4")[:40])  # d4 cut by a kill
    merged = merge_parts(str(tmp_path / "results.jsonl"), order=["d1", "d2", "d3", "d4"])
    assert [r.doc_id for r in merged] == ["d0", "d1", "d2", "d3"]
    assert [r.doc_id for r in read_results(str(tmp_path / "results.jsonl"))] == ["d0", "d1", "d2", "d3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]
