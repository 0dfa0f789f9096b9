"""``lockerctl watch``'s journal: what it holds of each locker's stream, durably (DESIGN 5).

An ack is a durable receipt: the watch acknowledges only what this log has fsynced. One
append-only JSON-lines file per locker, ``<dir>/<locker_id>.jsonl``; reloading it gives each
stream back as the watch left it (``ledger.Stream``).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from locker.contract import numbers
from locker.fleet.ledger import Stream, epoch_of


class EventLog:
    """Append-only JSON lines per locker in ``directory``; fsynced before any ack.

    Lines are ``{"baseline": N, "epoch": E}`` (events of epoch E up to N were gone from the
    locker before this log knew the stream) or an event payload as received (its ``epoch``
    inside). Lines without ``epoch`` belong to the legacy stream.
    """

    def __init__(self, directory: Path | str) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, Any] = {}

    def path(self, locker_id: str) -> Path:
        return self.dir / f"{locker_id}.jsonl"

    def load(self) -> dict[str, list[Stream]]:
        """locker -> its streams as stored, the most recently started last."""
        known: dict[str, list[Stream]] = {}
        for path in sorted(self.dir.glob("*.jsonl")):
            streams: dict[str, Stream] = {}
            for line in path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    row = json.loads(line)
                    if not isinstance(row, dict) or (epoch := epoch_of(row)) is None:
                        continue
                    stream = streams.get(epoch)
                    if stream is None:
                        stream = streams[epoch] = Stream(path.stem, epoch)
                    if numbers.count(row.get("baseline")) is not None:
                        stream.raise_floor(row["baseline"])
                    elif valid_seq(row.get("seq")):
                        stream.receive(row["seq"], row)
            for stream in streams.values():
                stream.take_released()  # history, not news
                stream.acked = stream.contiguous  # acked before, or about to be re-acked
                stream.reack = stream.contiguous > 0
            known[path.stem] = list(streams.values())
        return known

    def append(self, locker_id: str, row: Mapping[str, Any]) -> None:
        f = self._files.get(locker_id)
        if f is None:
            f = self._files[locker_id] = self.path(locker_id).open("a", encoding="utf-8")
        f.write(json.dumps(row, separators=(",", ":"), ensure_ascii=False) + "\n")

    def sync(self) -> None:
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        self.sync()
        for f in self._files.values():
            f.close()
        self._files.clear()


def valid_seq(value: object) -> bool:
    """A seq of the contract: 1 to 2**63-1 (an ack above it could never match a locker's)."""
    return numbers.count(value, minimum=1) is not None
