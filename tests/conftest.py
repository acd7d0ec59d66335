"""Test setup: CPU JAX (no accelerator needed), quiet logs; fixtures shared by several test modules."""

import os

from tests.compile_flags import FAST_COMPILE

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()  # tests/compile_flags.py
# one persistent compilation cache for the whole test session, workers and the `mini-o3` processes they start
# (`compile_cache` "auto" follows it): the tiny configs' programs compile once, not in every launch
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    "/tmp", f"mini_o3_jax_test_cache-{os.environ.get('PYTEST_XDIST_TESTRUNUID', os.getpid())}"))

# imported after the environment above: the helpers load jax
import threading
from collections.abc import Iterator

import pytest

from mini_o3_jax.processing.chat import Tokenizer
from mini_o3_jax.processing.image import ImageProcessor
from tests.hf_reference import qwen_tokenizer_dir

# the helpers hold assertions (replay): rewrite them as in a test module, so a failure shows its values
pytest.register_assert_rewrite("tests.helpers")
from tests.helpers import FakeJudgeServer  # noqa: E402 - after the registration above


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    """The real Qwen2 tokenizer (offline files), loaded once per test module."""
    return Tokenizer.from_pretrained(qwen_tokenizer_dir())


@pytest.fixture(scope="module")
def proc() -> ImageProcessor:
    """Our image processor with its default pixel limits, built once per test module."""
    return ImageProcessor()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeJudgeServer]:
    """A fake LLM judge on a free local port, answering with `grade` until a test sets `server.script`."""
    for name in ("NO_PROXY", "no_proxy"):  # an inherited proxy setting must not capture 127.0.0.1
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    srv = FakeJudgeServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


# The slowest files first, longest first (measured with --durations): `--dist loadfile --no-loadscope-reorder`
# hands files to the workers in collection order, so a long file collected last would otherwise run alone on
# one core at the end (xdist's default reorder, by test count, put the 3-test multi-host file last).
# test_notebooks.py runs after test_recipe.py: train_tiny.ipynb's smoke run compiles the programs the reduced demo
# did (same settings), and loads them from the session's compilation cache instead.
SLOW_FILES = ("test_train_resume.py", "test_train.py", "test_recipe.py", "test_multihost.py", "test_notebooks.py",
              "test_engine.py", "test_paged_sharded.py", "test_eval.py", "test_cli.py", "test_cli_paths.py", "test_memory_scaling.py",
              "test_model_golden.py", "test_sharding.py", "test_plan.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))  # stable: order within a file kept
