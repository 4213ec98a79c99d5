"""The machine-wide latency lock: no two measurements on one machine at once."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from pathlib import Path
from typing import Iterator

from ..data import cache_dir

# One flock per process, re-entrant across nested calls (cache check + measurement + write):
# flock locks belong to open file descriptions, so a second open() in this process would deadlock.
_LOCK_STATE = threading.RLock()
_lock_depth = 0
_lock_fd: int | None = None


def lock_path() -> Path:
    return cache_dir() / "latency.lock"


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """Hold the machine-wide latency lock (blocking). Re-entrant within a process; threads queue.

    Example:
        >>> with machine_lock():
        ...     pass
    """
    global _lock_depth, _lock_fd
    with _LOCK_STATE:
        if _lock_depth == 0:
            fd = os.open(lock_path(), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            _lock_fd = fd
        _lock_depth += 1
        try:
            yield
        finally:
            _lock_depth -= 1
            if _lock_depth == 0 and _lock_fd is not None:
                fcntl.flock(_lock_fd, fcntl.LOCK_UN)
                os.close(_lock_fd)
                _lock_fd = None
