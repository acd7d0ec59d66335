"""Run directories in a bucket (`gs://`), against a real GCS server on 127.0.0.1 (gcp-storage-emulator): training
checkpoints (keep-N, exact restore, a corrupt step set aside), metrics logs appended across restarts, a model
saved, replaced and loaded back with its tokenizer files. The multi-host SFT test in test_multihost.py trains
two hosts into a bucket; eval, which appends results as it goes, refuses one with a clear error."""

from __future__ import annotations

import json
import os
import urllib.request

import jax
import numpy as np
import pytest

from mini_o3_jax import storage
from mini_o3_jax.errors import ConfigError
from mini_o3_jax.train.checkpoint import TrainCheckpointer, abstract_like
from mini_o3_jax.train.metrics import MetricsWriter, read_jsonl_metrics
from tests.helpers import FakeGCS, train_state, write_small_checkpoint


@pytest.fixture(scope="module")
def gcs():
    server = FakeGCS()
    server.activate()
    yield server
    server.close()


def objects(gcs: FakeGCS, prefix: str) -> list[str]:
    """Object names under `prefix`, straight from the server's JSON API (no client-side listing cache)."""
    url = f"{gcs.url}/storage/v1/b/{gcs.bucket}/o?prefix={prefix}"
    with urllib.request.urlopen(url, timeout=30) as r:
        return sorted(item["name"] for item in json.load(r).get("items", []))


def equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_paths_tell_uris_from_local_ones(tmp_path):
    assert storage.resolve("gs://bkt/run/") == "gs://bkt/run" and storage.join("gs://bkt/run", "logs") == \
        "gs://bkt/run/logs"
    assert storage.resolve("~/x") == os.path.expanduser("~/x") and storage.resolve("x") == os.path.abspath("x")
    assert not storage.is_uri("gsx://a") and not storage.is_uri(str(tmp_path)) and storage.is_uri("s3://b/k")


def test_train_checkpoints_keep_restore_and_set_aside_a_corrupt_step_in_a_bucket(gcs):
    ckpt = TrainCheckpointer("gs://bkt/ck", keep=2, async_save=True)
    for step in (1, 2, 3):
        assert ckpt.save(step, train_state(step), {"step": step, "data": [step]})
    ckpt.wait()
    assert ckpt.directory == "gs://bkt/ck" and ckpt.all_steps() == [2, 3]  # keep=2 deleted step 1 in the bucket
    assert not [n for n in objects(gcs, "ck/") if n.startswith("ck/1/")]
    target = abstract_like(train_state(0))
    state, meta = ckpt.restore(target, 3)
    assert equal(state, train_state(3)) and meta == {"step": 3, "data": [3]}

    # damage step 3's largest data object: restore_latest warns, moves it aside and falls back to step 2
    data = [n for n in objects(gcs, "ck/3/") if "/d/" in n]
    victim = storage.path(f"gs://bkt/{data[0]}")
    victim.write_bytes(victim.read_bytes()[:-7])
    warned: list[str] = []
    step, state, meta = ckpt.restore_latest(target, warn=warned.append)
    assert step == 2 and equal(state, train_state(2)) and meta["step"] == 2
    assert len(warned) == 1 and warned[0].startswith("warning: skipping checkpoint step 3: gs://bkt/ck/3: ")
    assert warned[0].endswith("moved to gs://bkt/ck/3.corrupt")
    assert not [n for n in objects(gcs, "ck/3/")] and objects(gcs, "ck/3.corrupt/")
    ckpt.close()
    resumed = TrainCheckpointer("gs://bkt/ck/", keep=2)  # the resumed run (a new process) writes step 3 afresh
    assert resumed.all_steps() == [2] and resumed.save(3, train_state(30), {"step": 3})
    resumed.close()
    again = TrainCheckpointer("gs://bkt/ck", keep=2)
    assert again.all_steps() == [2, 3] and equal(again.restore(target)[0], train_state(30))
    again.close()


def test_metrics_logs_in_a_bucket_continue_across_restarts(gcs):
    for steps in ((1, 2, 3), (4, 5)):  # a run, then its resumed run
        with MetricsWriter("gs://bkt/run/logs", console=None, upload_every=3600) as writer:
            staging = writer.logdir
            for s in steps:
                writer.write(s, {"loss": 1.0 / s, "tokens": 10 * s})
            writer.write_text(steps[-1], "sample", f"text at {steps[-1]}")
        assert not staging.exists()  # the local staging directory is removed at close
    records = read_jsonl_metrics("gs://bkt/run/logs")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5] and records[4]["tokens"] == 50
    names = [n.rsplit("/", 1)[1] for n in objects(gcs, "run/logs/")]
    assert sum(n.startswith("events.out.tfevents.") for n in names) == 2  # one TensorBoard file per writer
    texts = storage.path("gs://bkt/run/logs/text.jsonl").read_text().splitlines()
    assert [json.loads(t)["text"] for t in texts] == ["text at 3", "text at 5"]


def test_a_model_saved_to_a_bucket_is_replaced_whole_and_loads_back_exact(gcs, tmp_path):
    from flax import nnx

    from mini_o3_jax.model.weights import load_model, save_orbax

    local = write_small_checkpoint(str(tmp_path / "hf"))
    model = load_model(local)
    assert save_orbax(model, "gs://bkt/models/final", side_files_from=local) == "gs://bkt/models/final"
    storage.path("gs://bkt/models/final/NOTES.md").write_text("kept across saves")
    save_orbax(model, "gs://bkt/models/final/")  # replaces the params; carries the tokenizer files and notes over
    names = objects(gcs, "models/")
    assert all(n.startswith("models/final/") for n in names), names  # no .tmp-* / .old-* left beside it
    assert {"models/final/mini_o3.json", "models/final/tokenizer.json", "models/final/NOTES.md"} <= set(names)
    back = load_model("gs://bkt/models/final")
    assert equal(nnx.state(back), nnx.state(model))


def test_eval_refuses_a_bucket_out_dir():
    from mini_o3_jax.eval.run import run_eval

    with pytest.raises(ConfigError, match=r"^out_dir = gs://bkt/eval: eval appends each question's result"):
        run_eval(None, None, None, {}, None, "gs://bkt/eval")


def test_a_missing_backend_package_is_named(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "s3fs" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^out_dir = s3://b/run: s3:// paths need the `s3fs` package"):
        storage.require_backend("s3://b/run/", "out_dir")
