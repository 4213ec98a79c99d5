"""Latency results by structural signature, in one JSON file per machine."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..data import cache_dir
from ._lock import machine_lock
from ._protocol import LatencyResult

class LatencyCache:
    """Latency results by structural signature, in one JSON file shared by the processes of a machine.

    Reads need no lock (writes replace the file atomically); writes happen under the machine lock,
    re-reading the file first so concurrent writers never lose each other's entries.

    Example:
        >>> cache = LatencyCache()
        >>> cache.get("no-such-signature") is None
        True
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path else cache_dir() / "latency-cache.json"

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}  # a damaged cache only costs re-measuring; it is rewritten on the next put

    def get(self, signature: str) -> LatencyResult | None:
        entry = self._read().get(signature)
        return LatencyResult.from_dict(entry) if entry else None

    def put(self, signature: str, result: LatencyResult) -> None:
        with machine_lock():
            entries = self._read()
            entries[signature] = result.to_dict()
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(entries, sort_keys=True))
            os.replace(tmp, self.path)

    def __len__(self) -> int:
        return len(self._read())
