"""The user paths as documented (issue 16, items 7-10): `~` in every path, configs found from any directory,
the tiny configs run as they are, ordinary mistakes are one `error:` line with exit code 2, and `--help` /
`--show-config` say what there is to set."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest

from mini_o3_jax.agent.settings import agent_settings
from mini_o3_jax.cli import main
from mini_o3_jax.config_files import (
    load_config,
    packaged_config_dir,
    packaged_configs,
    parse_value,
    resolve_config_path,
)
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.infer import DEMO_MODEL
from mini_o3_jax.train.metrics import read_jsonl_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
PROGRESS = re.compile(r"\d+%\||^\w+: \d+\w* \[")  # tqdm bars on stderr ("rl:  0%|...", "turns: 0turn [...")


def _error(capsys, argv: list[str]) -> str:
    """Run `mini-o3 argv`, which must fail as bad input: exit code 2 and exactly one `error: ...` line."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip() and not PROGRESS.search(x)]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _shown(capsys, argv: list[str]) -> list[str]:
    """`mini-o3 argv --show-config`: exit code 0 and the printed `--config.<field>=<value>` lines."""
    capsys.readouterr()
    assert main([*argv, "--show-config"]) == 0
    return capsys.readouterr().out.splitlines()


# -- item 10: typed overrides, --show-config, --help -------------------------------------------------------


def test_override_values_are_parsed_against_the_field_type():
    assert parse_value("7", 3) == 7 and parse_value("1e3", 3) == 1000 and parse_value("-1", 3) == -1
    assert parse_value("3", 1.0) == 3.0 and isinstance(parse_value("3", 1.0), float) and parse_value("1e-4", 1.0) == 1e-4
    assert [parse_value(x, True) for x in ("false", "False", "0", "no", "true", "1", "yes")] == [False] * 4 + [True] * 3
    assert parse_value("cosine", "x") == "cosine" and parse_value("'cosine'", "x") == "cosine"
    assert parse_value("123", "x") == "123" and parse_value("", "x") == "" and parse_value("None", "x") is None
    assert parse_value("easy,hard", ["hard"]) == ["easy", "hard"] and parse_value("hard", []) == ["hard"]
    assert parse_value("[1, 2]", (4,)) == (1, 2) and parse_value("1,2,3", (4,)) == (1, 2, 3)
    assert parse_value("{'direct': 1.0}", {"x": 1}) == {"direct": 1.0}
    assert parse_value("3", None) == 3 and parse_value("abc", None) == "abc"
    for raw, current, message in (("abc", 3, "expected an integer"), ("2.5", 3, "expected an integer"),
                                  ("True", 3, "expected an integer"), ("fast", 1.0, "expected a number"),
                                  ("maybe", True, "expected a bool"), ("3", {"a": 1}, "group of fields")):
        with pytest.raises(ConfigError, match=message):
            parse_value(raw, current, f"--config.x={raw}")


def test_override_mistakes_are_one_clear_line(capsys):
    line = _error(capsys, ["sft", "--config.train.steps=abc"])
    assert line == "error: --config.train.steps=abc: expected an integer, the field is now 0"
    line = _error(capsys, ["rl", "--config.trian.steps=3"])
    assert "no field 'trian.steps'" in line and "did you mean 'train.steps'" in line
    line = _error(capsys, ["rl", "--config.optim.learning_rate=1e-5"])
    assert "no field 'optim.learning_rate'" in line and "optim has b1, b2, eps, grad_clip, lr" in line
    assert "expected a bool (true/false)" in _error(capsys, ["rl", "--config.train.dynamic_sampling=maybe"])
    assert "group of fields (context_guard" in _error(capsys, ["rl", "--config.env=3"])
    assert "--config.model_path: needs a value" in _error(capsys, ["rl", "--config.model_path"])
    line = _error(capsys, ["rl", "--model_path=ckpt"])
    assert "unknown argument '--model_path=ckpt'" in line and "did you mean --config.model_path=ckpt" in line
    assert "unrecognized arguments: --bogus" in _error(capsys, ["convert", "--hf", "a", "--out", "b", "--bogus"])
    assert "required: --out" in _error(capsys, ["convert", "--hf", "a"])
    assert "invalid choice: 'toys'" in _error(capsys, ["data", "synthetic", "--preset", "toys"])
    assert "invalid int value: 'many'" in _error(capsys, ["data", "synthetic", "--n", "many"])
    assert "--mesh fsdp=x: expected axis=size pairs" in _error(capsys, ["convert", "--hf", "a", "--out", "b",
                                                                        "--mesh", "fsdp=x"])
    assert "override 'layers': expected key=value" in _error(
        capsys, ["init", "--config", "qwen2_5_vl_tiny", "--out", "x", "--override", "layers"])


def test_space_form_and_bare_bools_are_accepted(capsys, tmp_path):
    shown = _shown(capsys, ["rl", "--config", "rl_tiny", "--config.train.steps", "7", "--config.model_path",
                            str(tmp_path), "--config.train.dynamic_sampling", "--config.rollout.samples=2",
                            "--config.data.synthetic_levels", "easy,hard", "--config.ppo.kl_coef", "0"])
    for expected in ("--config.train.steps=7", f"--config.model_path={tmp_path}", "--config.ppo.kl_coef=0.0",
                     "--config.train.dynamic_sampling=true", "--config.rollout.samples=2",
                     "--config.data.synthetic_levels=['easy', 'hard']"):
        assert expected in shown
    # the space form with a value that starts like an option is still read as the value of a non-bool field
    assert "--config.seed=-3" in _shown(capsys, ["rl", "--config.seed", "-3"])


def test_show_config_prints_every_field_resolved_and_reads_back(capsys):
    shown = _shown(capsys, ["rl", "--config", "configs/rl_tiny.py", "--config.optim.lr=3e-4",
                            "--config.env.system_prompt="])
    assert shown[0] == f"# {os.path.join(packaged_config_dir(), 'rl_tiny.py')}"
    assert "--config.optim.lr=0.0003" in shown and "--config.env.system_prompt=''" in shown
    assert f"--config.model_path={DEMO_MODEL}" in shown and "--config.mesh.fsdp=-1" in shown
    # every line is an override that gives the same config back (the long judge prompts included)
    again = load_config("rl_tiny", args=shown[1:])
    assert again.to_dict() == load_config("rl_tiny", args=["--config.optim.lr=3e-4", "--config.env.system_prompt="]
                                          ).to_dict()
    # demo's own options apply too, and init shows its config
    demo = _shown(capsys, ["demo", "--out", "runs/x", "--ablation", "--config.rl.train.steps=2"])
    assert {"--config.out_dir=runs/x", "--config.ablation=true", "--config.rl.train.steps=2"} <= set(demo)
    init = _shown(capsys, ["init", "--config", "qwen2_5_vl_tiny", "--override", "model.text.num_hidden_layers=3",
                           "--config.dtype=bfloat16"])
    assert {"--config.model.text.num_hidden_layers=3", "--config.dtype=bfloat16"} <= set(init)


@pytest.mark.parametrize("argv", [[], ["init"], ["convert"], ["export"], ["run"], ["infer"], ["sft"], ["rl"],
                                  ["eval"], ["data"], ["data", "prepare"], ["data", "synthetic"], ["demo"]])
def test_help_shows_defaults_choices_and_an_example(capsys, argv):
    from mini_o3_jax.data.benchmarks import BENCHMARKS

    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert "examples: mini-o3 " + " ".join(argv[:1]) in text
    if argv[:1] in (["sft"], ["rl"], ["eval"], ["demo"], ["init"]):
        assert "--show-config" in text and "--config.<field>=<value> or --config.<field> <value>" in text
        assert ", ".join(packaged_configs()) in text
    if argv in (["eval"], ["data", "prepare"]):
        assert ", ".join(sorted(BENCHMARKS)) in text
    defaults = {"sft": "(default: configs/sft_coldstart.py)", "rl": "(default: configs/rl_grpo.py)",
                "eval": "(default: configs/eval.py)", "demo": "(default: configs/demo.py)",
                "infer": "(default: runs/infer)", "export": "(default: 4.0)", "run": "(default: 5)"}
    if argv[-1:] and argv[-1] in defaults:
        assert defaults[argv[-1]] in text
    if argv == ["data", "synthetic"]:
        assert "{default,tiny,demo,grid4,toy}" in text and "(default: 100)" in text


# -- item 7: configs from any directory, `~` in every path ---------------------------------------------------


def test_configs_resolve_by_name_from_any_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    packaged = os.path.join(packaged_config_dir(), "rl_grpo.py")
    assert os.path.samefile(packaged_config_dir(), CONFIGS)  # the editable install / checkout maps configs/
    for name in ("configs/rl_grpo.py", "rl_grpo.py", "rl_grpo", "~/configs/rl_grpo.py"):
        assert resolve_config_path(name) == packaged
    # configs that load their siblings by path (rl_tiny, demo) work from here too
    assert load_config("configs/rl_tiny.py").env.max_turns == 3 and load_config("demo").rl.env.max_turns == 3
    # the default --config of every command works from any directory
    for cmd in ("sft", "rl", "eval", "demo"):
        assert _shown(capsys, [cmd])[0].startswith(f"# {packaged_config_dir()}")
    # a file of that path in the current directory wins over the packaged one
    os.makedirs("configs")
    with open("configs/rl_grpo.py", "w") as f:
        f.write("import ml_collections\n\ndef get_config():\n    return ml_collections.ConfigDict({'mine': 1})\n")
    assert resolve_config_path("configs/rl_grpo.py") == "configs/rl_grpo.py"
    assert load_config("configs/rl_grpo.py").mine == 1 and "mine" not in load_config("rl_grpo")
    line = _error(capsys, ["sft", "--config", "configs/sft_coldstrat.py"])
    assert line.startswith("error: configs/sft_coldstrat.py: config file not found") and "sft_coldstart" in line


def test_packaged_configs_install_with_the_package(tmp_path):
    """setup.py maps configs/ to `mini_o3_jax.configs`: a regular install (what `build_py` puts in a wheel)
    has them beside the package and loads them by name from any directory."""
    lib = tmp_path / "lib"
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(lib)], cwd=REPO, check=True,
                   capture_output=True, timeout=300)
    assert sorted(p.name for p in (lib / "mini_o3_jax" / "configs").glob("*.py")) == sorted(
        p for p in os.listdir(CONFIGS) if p.endswith(".py"))
    script = ("from mini_o3_jax.config_files import load_config, resolve_config_path\n"
              "print(resolve_config_path('configs/rl_tiny.py'))\n"
              "print(load_config('rl_tiny').env.max_turns, load_config('demo').rl.env.max_turns)\n")
    env = {**os.environ, "PYTHONPATH": str(lib), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, check=True, capture_output=True,
                         text=True, timeout=300).stdout.split("\n")
    assert out[0] == str(lib / "mini_o3_jax" / "configs" / "rl_tiny.py") and out[1] == "3 3"


def test_tilde_is_expanded_in_every_path(tmp_path, monkeypatch, capsys):
    from mini_o3_jax.infer import infer, sample_puzzle
    from mini_o3_jax.model.weights import load_model
    from mini_o3_jax.pipeline import Pipeline

    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(DEMO_MODEL, tmp_path / "demo")
    sample_puzzle().image.save(tmp_path / "sample.png")
    # config fields, as the shell leaves them after `=`
    shown = _shown(capsys, ["eval", "--config.model_path=~/demo", "--config.data_dir", "~/tfds",
                            "--config.sources.vstar=~/vstar", "--config.out_dir=~/runs/eval"])
    assert {f"--config.model_path={tmp_path}/demo", f"--config.data_dir={tmp_path}/tfds",
            f"--config.sources.vstar={tmp_path}/vstar", f"--config.out_dir={tmp_path}/runs/eval"} <= set(shown)
    os.symlink(CONFIGS, tmp_path / "cfgs")
    shown = _shown(capsys, ["sft", "--config=~/cfgs/sft_tiny.py",
                            "--config.data.path=~/d.json", "--config.data.image_root=~/img",
                            "--config.tokenizer_path=~/demo"])
    assert {f"--config.data.path={tmp_path}/d.json", f"--config.data.image_root={tmp_path}/img",
            f"--config.tokenizer_path={tmp_path}/demo"} <= set(shown)
    # options: `--hf=~/demo --out=~/orbax` (no shell expansion after `=`)
    assert main(["convert", "--hf=~/demo", "--out=~/orbax"]) == 0
    assert (tmp_path / "orbax" / "mini_o3.json").exists()
    # the Python entry points
    assert load_model("~/orbax").config == load_model(str(tmp_path / "demo")).config
    pipe = Pipeline.from_pretrained("~/orbax", dtype="float32")
    top = pipe.top_next_tokens("~/sample.png", "What is it?", k=2, system=None)
    assert len(top) == 2 and top[0][1] >= top[1][1]
    (traj,) = infer("~/demo", "~/sample.png", "What is the pattern?", max_turns=1, max_turn_tokens=8,
                    out_dir="~/infer", dtype="float32")
    assert traj.num_turns == 1 and (tmp_path / "infer" / "report.html").exists()


# -- item 8: the tiny configs run as documented ----------------------------------------------------------


def test_env_system_prompt_is_a_config_field():
    from mini_o3_jax.agent.prompts import SYSTEM_PROMPT_TOOL_CROP
    from mini_o3_jax.rl.loop import rollout_settings

    assert rollout_settings(load_config("rl_grpo")).env.system_prompt == SYSTEM_PROMPT_TOOL_CROP
    for none in ("", "False", "None", "false"):
        assert rollout_settings(load_config("rl_grpo", [f"env.system_prompt={none}"])).env.system_prompt is None
    assert rollout_settings(load_config("rl_grpo", ["env.system_prompt=Be brief."])).env.system_prompt == "Be brief."
    # rl_tiny runs the packaged model as it was trained (its agent.json): no system turn, its pixel budget
    tiny, agent = rollout_settings(load_config("rl_tiny")).env, agent_settings(DEMO_MODEL)
    assert (tiny.system_prompt, tiny.min_pixels, tiny.max_pixels) == (
        agent["system_prompt"], agent["min_pixels"], agent["max_pixels"]) == (None, 3136, 12544)


def test_rl_tiny_runs_from_the_cli(tmp_path, monkeypatch, capsys):
    """`mini-o3 rl --config configs/rl_tiny.py` from outside the repo: a GRPO step (of the config's 3) from the
    packaged model on generated toy puzzles, whose groups score unevenly."""
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["rl", "--config", "configs/rl_tiny.py", "--config.train.steps=1"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 < metrics["reward_mean"] < 1.0 and metrics["valid_groups"] >= 2 and metrics["grad_norm"] > 0
    out = tmp_path / "runs" / "rl_tiny"
    assert (out / "final" / "mini_o3.json").exists()
    assert [r["step"] for r in read_jsonl_metrics(str(out / "logs"))] == [1]


def test_rl_without_varying_rewards_says_what_to_change(tmp_path, capsys):
    # the numeric scorer never matches the puzzles' one-word answers: every sample scores 0
    line = _error(capsys, ["rl", "--config", "rl_tiny", f"--config.out_dir={tmp_path}", "--config.reward.kind=numeric",
                           "--config.train.max_gen_batches=1", "--config.rollout.samples=2"])
    assert line.startswith("error: rl step 0: no prompt group with varying rewards in 1 rollout batch(es) of 2 "
                           "prompt(s) x 2 sample(s) (mean reward 0.000)")
    for hint in ("sometimes answers right (model_path)", "rollout.samples", "train.prompts_per_step",
                 "reward.kind='numeric'", "train.dynamic_sampling=False"):
        assert hint in line


def test_sft_tiny_runs_from_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["sft", "--config", "configs/sft_tiny.py", "--config.train.steps=2"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 < metrics["loss"] < 1.0  # the packaged model already knows the expert's trajectories
    assert (tmp_path / "runs" / "sft_tiny" / "final" / "mini_o3.json").exists()


# -- item 9: ordinary mistakes ---------------------------------------------------------------------------


def test_unknown_benchmark_is_one_line(capsys, tmp_path):
    line = _error(capsys, ["data", "prepare", "--benchmark", "vstr", "--source", str(tmp_path)])
    assert line.startswith("error: unknown benchmark 'vstr' (did you mean 'vstar'?); expected one of: coldstart,")
    line = _error(capsys, ["eval", f"--config.model_path={DEMO_MODEL}", "--config.eval.scorer=exact",
                           "--config.benchmarks=visualprobe_hard,vstr", f"--config.data_dir={tmp_path}"])
    assert "unknown benchmark 'vstr' (did you mean 'vstar'?)" in line


def test_prepare_from_a_missing_source_fails_even_when_prepared(tmp_path, capsys):
    from mini_o3_jax.toy.scene import SceneConfig
    from mini_o3_jax.toy.writers import write_benchmark

    write_benchmark(tmp_path / "src", "hard", 2, config=SceneConfig.toy())
    argv = ["data", "prepare", "--benchmark", "synthetic_hard", "--data-dir", str(tmp_path / "tfds")]
    capsys.readouterr()
    assert main([*argv, "--source", str(tmp_path / "src" / "synthetic_hard")]) == 0
    assert "synthetic_hard: prepared 2 record(s)" in capsys.readouterr().out
    line = _error(capsys, [*argv, "--source", str(tmp_path / "nowhere")])
    assert line == (f"error: synthetic_hard source {tmp_path / 'nowhere'} does not exist; expected a directory "
                    "downloaded from the synthetic generator holding one of: val.json | val.jsonl | "
                    "synthetic_hard/val.json")
    assert main([*argv, "--source", str(tmp_path / "src" / "synthetic_hard")]) == 0
    assert "reused 2 record(s)" in capsys.readouterr().out


@pytest.mark.parametrize("cmd", ["rl", "sft"])
def test_missing_or_non_json_data_file_is_one_line(cmd, tmp_path, capsys):
    config = f"{cmd}_tiny"
    what = {"rl": "RL prompt file", "sft": "SFT data file"}[cmd]
    line = _error(capsys, [cmd, "--config", config, f"--config.data.path={tmp_path}/missing.json"])
    assert line.startswith(f"error: {tmp_path}/missing.json: {what} not found")
    (tmp_path / "bad.json").write_text("images: [a.png]\n")
    line = _error(capsys, [cmd, "--config", config, f"--config.data.path={tmp_path}/bad.json"])
    assert line.startswith(f"error: {tmp_path}/bad.json: not a JSON") and "Expecting value: line 1 column 1" in line
    line = _error(capsys, [cmd, "--config", f"{cmd}_tiny", "--config.data.synthetic=", "--config.data.path="])
    assert "set --config.data.path=FILE" in line


def test_a_directory_that_is_not_a_checkpoint_is_one_line(tmp_path, capsys):
    assert _error(capsys, ["rl", "--config", "rl_tiny", f"--config.model_path={tmp_path}/none"]) == (
        f"error: model_path = {tmp_path}/none: no such directory (expected a HF or Orbax checkpoint directory)")
    line = _error(capsys, ["sft", "--config", "sft_tiny", f"--config.model_path={tmp_path}"])
    assert f"'{tmp_path}' has no tokenizer.json" in line
    assert f"{tmp_path}/config.json: config.json not found" in _error(
        capsys, ["export", "--model", str(tmp_path), "--out", str(tmp_path / "out")])
    assert "does not exist" in _error(capsys, ["run", "--model", DEMO_MODEL, "--image", str(tmp_path / "no.png"),
                                               "--question", "q"])


# -- issue 17: dotted judge overrides, and a judge that fails on every answer ----------------------------------


def test_dotted_judge_overrides_are_accepted(capsys, tmp_path):
    shown = _shown(capsys, ["eval", "--config.judge.timeout_s=2", f"--config.judge.cache_path={tmp_path}/j.jsonl"])
    assert "--config.judge.timeout_s=2.0" in shown and f"--config.judge.cache_path={tmp_path}/j.jsonl" in shown
    shown = _shown(capsys, ["rl", "--config.reward.judge.cache_path=~/j.jsonl", "--config.reward.judge.timeout_s", "3",
                            "--config.reward.judge={'attempts': 2, 'backoff_s': 0}"])
    for expected in (f"--config.reward.judge.cache_path={os.path.expanduser('~/j.jsonl')}",
                     "--config.reward.judge.timeout_s=3.0", "--config.reward.judge.attempts=2",
                     "--config.reward.judge.backoff_s=0.0",
                     "--config.reward.judge.max_tokens=16384"):  # a dict sets its fields and keeps the others
        assert expected in shown
    assert "no field 'timeout' in this group; it has api_key" in _error(capsys, ["rl", "--config.reward.judge={'timeout': 2}"])


def test_rl_with_an_unreachable_judge_stops_in_one_line_naming_it(tmp_path, capsys, monkeypatch):
    for name in ("MINI_O3_JUDGE_URL", "MINI_O3_JUDGE_KEY", "MINI_O3_JUDGE_MODEL", "MINI_O3_JUDGE_API_VERSION",
                 "END_POINT", "API_KEY", "API_VERSION"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = tmp_path / "judge.jsonl"
    line = _error(capsys, ["rl", "--config", "rl_tiny", f"--config.out_dir={tmp_path / 'run'}",
                           "--config.reward.kind=judge", f"--config.reward.judge.url=http://127.0.0.1:{port}/v1",
                           "--config.reward.judge.model=toy-judge", "--config.reward.judge.attempts=1",
                           "--config.reward.judge.timeout_s=2", f"--config.reward.judge.cache_path={cache}",
                           "--config.train.max_gen_batches=1", "--config.train.prompts_per_step=1",
                           "--config.rollout.samples=2"])
    assert line.startswith(f"error: rl step 0: the judge at http://127.0.0.1:{port}/v1/chat/completions gave no "
                           "usable score for any of the "), line
    assert "(1 attempt(s) each); last error: request to " in line and "ConnectError" in line, line
    assert "MINI_O3_JUDGE_URL" in line and "no prompt group with varying rewards" not in line
    assert cache.exists()  # the dotted cache_path override reached the judge
