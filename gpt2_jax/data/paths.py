"""Where corpora are read from and where prepared data is cached.

The data directory may be read-only (CI mounts a shared one); everything the
library derives from it (prepared datasets, trained tokenizers) goes to the
writable cache directory instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from gpt2_jax import files

DATA_DIR_ENV = "GPT2_JAX_DATA_DIR"
CACHE_DIR_ENV = "GPT2_JAX_CACHE_DIR"


def data_dir(configured: str = "") -> Path:
    """The data directory: the config field, else ``$GPT2_JAX_DATA_DIR``, else ``~/.cache/gpt2_jax/data``."""
    if configured:
        return Path(configured).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "gpt2_jax" / "data"


def cache_dir(configured: str = "") -> Path:
    """The writable cache: the config field, else ``$GPT2_JAX_CACHE_DIR``, else ``~/.cache/gpt2_jax``."""
    if configured:
        path = Path(configured).expanduser()
    elif os.environ.get(CACHE_DIR_ENV):
        path = Path(os.environ[CACHE_DIR_ENV]).expanduser()
    else:
        path = Path.home() / ".cache" / "gpt2_jax"
    files.ensure_writable_dir(path, "cache directory (config.data.cache_dir or $GPT2_JAX_CACHE_DIR)")
    return path


def resolve(path: str, configured_data_dir: str = "") -> Path:
    """An absolute path as is; a relative one under the data directory."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else data_dir(configured_data_dir) / p


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (a lock file) across processes, e.g. parallel sweep runs preparing one dataset."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
