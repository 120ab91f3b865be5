"""Files a run writes: atomically (a crash leaves the old file or the new one, never half of one), and a lock
that lets one process at a time write into a directory."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from gpt2_jax.errors import UserError

LOCK_NAME = ".lock"


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, value: Any) -> None:
    """``value`` as indented JSON, written atomically."""
    write_text(path, json.dumps(value, indent=2) + "\n")


def read_json(path: Path, what: str) -> Any:
    """A JSON file that the user can fix or delete; an unreadable one is a one-line error naming it."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} ({what}) cannot be read: {e}") from None


def ensure_writable_dir(path: Path, what: str) -> None:
    """Create ``path`` if needed; a file in its place or a directory without write access is a one-line error."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a directory; pass another path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{what} {path} cannot be created: {e.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} is not writable; pass a directory this user can write to")


class DirectoryLock:
    """An exclusive, non-blocking lock on a directory, held while one process writes into it.

    The lock file holds the holder's pid; the operating system releases the
    lock when that process exits, however it exits, so a killed run never
    leaves a stale lock behind.
    """

    def __init__(self, directory: Path, what: str):
        self.path = Path(directory) / LOCK_NAME
        self.what = what
        self._handle = None

    def acquire(self) -> DirectoryLock:
        if self._handle is not None:
            return self
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                handle.close()
                raise
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise UserError(
                f"{self.what} {self.path.parent} is in use by process {holder}; wait for it to finish or stop it, "
                "or use another directory"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
