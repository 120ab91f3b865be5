"""Test setup: 8 fake CPU devices (for the sharding tests), offline data, a scratch cache."""

import os
import sys
from pathlib import Path

# Must happen before jax is imported anywhere.  The tests compile hundreds of
# small programs and run each for a few steps: LLVM's expensive optimisation
# passes cost more than they save (the whole suite from a cold compilation cache,
# two cores: 12:44 -> 8:41).  XLA's own passes -- fusion, SPMD partitioning,
# buffer assignment, which tests inspect -- are unchanged.  Subprocesses inherit it.
FAST_COMPILE = "--xla_llvm_disable_expensive_passes=true --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE} --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
_shared = REPO.parent / "shared" / "data"
if "GPT2_JAX_DATA_DIR" not in os.environ and _shared.is_dir():
    os.environ["GPT2_JAX_DATA_DIR"] = str(_shared)

import jax  # noqa: E402
import pytest  # noqa: E402

# Tests build many experiments with identical shapes: XLA's persistent cache
# compiles each distinct program once per test run.
jax.config.update(
    "jax_compilation_cache_dir", os.environ.get("GPT2_JAX_TEST_XLA_CACHE", "/tmp/gpt2_jax_test_xla_cache")
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(autouse=True)
def _scratch_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own writable cache; nothing touches ~/.cache."""
    monkeypatch.setenv("GPT2_JAX_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def shakespeare_path() -> Path:
    """tinyshakespeare from the data directory (the tests never download)."""
    path = Path(os.environ.get("GPT2_JAX_DATA_DIR", "")) / "tinyshakespeare" / "input.txt"
    if not path.exists():
        pytest.fail(f"{path} is missing: point GPT2_JAX_DATA_DIR at the shared data directory")
    return path
