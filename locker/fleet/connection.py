"""What happens to a server-side MQTT connection, told to people: drops, returns, takeovers.

The broker forces client id = certificate CN (``use_identity_as_username``), so two processes
on one identity (two ``lockerctl serve`` with the same ``--mqtt-client``, a watch beside the
simulator's service) disconnect each other: Mosquitto logs "Client fleet already connected,
closing old connection", and in MQTT 5 sends the old one DISCONNECT with reason code 0x8E
"Session taken over" (MQTT 5.0 section 3.14.2.1). With paho's automatic reconnect both come
back within a second or two and the fight goes on for ever, each losing messages, and
neither said a word. :class:`ConnectionWatch` tells it from the reason code, or, for a broker
that closes without one, from ``SHORT_S``-short connections repeated ``REPEATS`` times, and
says so once per episode (an episode ends when a connection has lasted ``STABLE_S``).

Shapes: ``connected(now)`` and ``disconnected(reason, code, now)`` (monotonic seconds, the
reason's text and numeric value) return the notes to report (strings, maybe none); the
counters ``takeovers`` and ``drops`` and the flag ``contested`` are for metrics and health.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

SESSION_TAKEN_OVER = 0x8E  # MQTT 5.0 section 2.4, reason code "Session taken over"
SHORT_S = 5.0  # a connection lost sooner than this after it was made counts as short
REPEATS = 3  # short losses in a row that mean a fight even without reason 0x8E
STABLE_S = 30.0  # a connection that lasts this long ends a takeover episode


def takeover_note(identity: str, *, certain: bool) -> str:
    how = (
        "the broker said 'Session taken over'"
        if certain
        else (f"{REPEATS} connections in a row lost within {SHORT_S:g} s")
    )
    return (
        f"another client uses identity {identity!r} ({how}): the broker lets one connection "
        "per identity live, so the two keep disconnecting each other and both lose messages. "
        "Give each process its own identity: each lockerctl serve worker its own "
        "--mqtt-client (a clients/NAME.pem the broker's ACL knows), and stop the other user "
        f"of {identity!r}"
    )


@dataclass
class ConnectionWatch:
    identity: str
    takeovers: int = 0
    drops: int = 0
    contested: bool = False
    _up_since: float | None = None
    _down_since: float | None = None
    _short: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def connected(self, now: float) -> list[str]:
        with self._lock:
            notes = []
            if self._down_since is not None and not self.contested:  # a fight: said once
                notes.append(f"broker connection back after {now - self._down_since:.1f} s")
            self._up_since, self._down_since = now, None
            return notes

    def disconnected(self, reason: str, code: int, now: float) -> list[str]:
        with self._lock:
            up, self._up_since = self._up_since, None
            if up is None:  # a failed reconnect attempt: already told
                return []
            self.drops += 1
            self._down_since = now
            lived = now - up
            if self.contested and lived >= STABLE_S:
                self.contested = False  # the last episode ended while it was up
            self._short = self._short + 1 if lived < SHORT_S else 0
            taken = code == SESSION_TAKEN_OVER
            if taken or self._short >= REPEATS:
                self.takeovers += 1
                if not self.contested:
                    self.contested = True
                    return [takeover_note(self.identity, certain=taken)]
                return []  # the same episode: said once
            return [f"broker connection lost ({reason}); reconnecting"]

    def is_contested(self, now: float) -> bool:
        """Whether a takeover episode is going on: one was seen and no connection has lasted
        ``STABLE_S`` since."""
        with self._lock:
            if self.contested and self._up_since is not None and now - self._up_since >= STABLE_S:
                self.contested, self._short = False, 0
            return self.contested
