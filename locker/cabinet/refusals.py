"""Publishes the broker refuses (DESIGN 5: "A PUBACK with a failure reason code is not
delivery: alarm, keep the row"), counted as ONE outage however many refusals. Pure: the MQTT
link feeds it PUBACK outcomes and the time, and does what it says (report, probe).

Why one outage: a broker whose ACL refuses this locker (a ``locker.id`` that is not the
certificate's CN, a wrong ``mqtt.topic_prefix``) refuses every publish, including the event
that reports the refusal; one event per refusal was 500 events a second.

Kinds are the topic leaves the locker publishes to over and over: ``evt`` (events),
``state`` and ``status``; the outage ends once each kind refused during it has been accepted
again (an ACL refusing only one of them must not flap the alarm on the others' successes).
Probes, while it lasts, are ``backoff_delay`` apart (``reconnect_min_s`` doubling to
``reconnect_max_s``, jittered).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from locker.cabinet.linkwire import backoff_delay

KINDS = ("evt", "state", "status")


@dataclass
class Refusals:
    """One outage of refused publishes (or none: ``kinds`` empty)."""

    backoff: tuple[float, float]  # (reconnect_min_s, reconnect_max_s)
    kinds: dict[str, str] = field(default_factory=dict)  # kind -> the broker's last reason
    count: int = 0  # refused PUBACKs since the outage began
    since: float = 0.0  # when it began (monotonic s)
    probes: int = 0  # probes made; the back-off grows with them
    probe_at: float = float("inf")  # when to probe next (monotonic s)

    def refused(self, kind: str, reason: str, now: float) -> bool:
        """A refused PUBACK of ``kind``; True when it begins an outage (report it)."""
        self.count += 1
        first = not self.kinds
        self.kinds[kind] = reason
        if first:
            self.since, self.probes = now, 0
            self._schedule(now)
        return first

    def accepted(self, kind: str, now: float) -> tuple[int, float] | None:
        """A successful PUBACK of ``kind``: ``(refusals, seconds)`` when it ends the outage
        (report it; the tracker is then clear), else None."""
        if self.kinds.pop(kind, None) is None or self.kinds:
            return None
        ended = self.count, now - self.since
        self.count, self.probes, self.probe_at = 0, 0, float("inf")
        return ended

    def probe_due(self, now: float) -> bool:
        """Whether to publish what was refused once more now (then ``probed``)."""
        return bool(self.kinds) and now >= self.probe_at

    def probed(self, now: float) -> None:
        self.probes += 1
        self._schedule(now)

    def probe_now(self) -> None:
        """Probe at the next chance (a new connection)."""
        if self.kinds:
            self.probe_at = 0.0

    def _schedule(self, now: float) -> None:
        low, high = self.backoff
        self.probe_at = now + backoff_delay(self.probes + 1, low, high)
