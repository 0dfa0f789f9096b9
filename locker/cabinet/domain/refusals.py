"""Refusals that are not guesses, reported once per burst (issue 11 items 2 and 22).

A mashed keypad, a flood of garbage scans or a keypad locked out must not put one event per
key into the outbox (each one a commit and an fsync). Each refusal still gets its own
feedback at once (``Feedback(reason)``); the first refusal of a (source, reason) burst is
reported as ``access_denied`` at once, and the rest of the burst is counted and reported as
one ``access_denied`` with ``count`` when ``REFUSAL_BURST_S`` has passed (``end_bursts``,
run by every machine step). The counts live in the volatile ``LockerState.refusals``.
Counted guesses are not refusals of this kind: each is reported on its own (the throttle
bounds them).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from locker.cabinet.domain.draft import Draft, IndicateAction
from locker.cabinet.domain.model import Burst
from locker.ports import Feedback, InputSource

REFUSAL_BURST_S = 60.0  # refusals of one (source, reason) within this are reported together


def refuse(
    d: Draft,
    reason: str,
    source: InputSource,
    now: float,
    detail: str | None = None,
    compartment: str | None = None,
) -> None:
    """A refusal that is not a guess: its own feedback at once; reported as ``access_denied``
    when it starts a burst, and otherwise counted into one event per burst (``end_bursts``),
    so a mashed keypad or a flood of bad scans cannot flood the outbox (issue 11, item 22).
    ``compartment``: the door it is about (kept in the burst too, for the panel)."""
    d.act(IndicateAction(Feedback(reason)))
    key = (str(source), reason)
    bursts: Mapping[tuple[str, str], Burst] = d.get("refusals")
    burst = bursts.get(key)
    if burst is not None and now < burst.until:
        _put_burst(d, key, Burst(burst.until, burst.count + 1, burst.detail, compartment))
        return
    _put_burst(d, key, Burst(now + REFUSAL_BURST_S, 0, detail, compartment))
    data: dict[str, Any] = {"reason": reason, "source": str(source)}
    if detail:
        data["detail"] = detail
    d.emit("access_denied", compartment, **data)


def _put_burst(d: Draft, key: tuple[str, str], burst: Burst | None) -> None:
    bursts = dict(d.get("refusals"))
    if burst is None:
        bursts.pop(key, None)
    else:
        bursts[key] = burst
    d.put("refusals", MappingProxyType(bursts))


def end_bursts(d: Draft, now: float) -> None:
    """Report what each finished burst counted beyond its first refusal, in one event."""
    for key, burst in list(d.get("refusals").items()):
        if now < burst.until:
            continue
        _put_burst(d, key, None)
        if burst.count:
            source, reason = key
            data: dict[str, Any] = {"reason": reason, "source": source, "count": burst.count}
            if burst.detail:
                data["detail"] = burst.detail
            d.emit("access_denied", aggregated=True, window_s=REFUSAL_BURST_S, **data)
