"""The panel is a view, never an owner (DESIGN section 12): a hung, slow or crashed panel,
browser or client never delays the controller.

Against a real daemon with its web panel: clients that open the event stream and never read,
a panel thread stuck holding the hub's lock, the web server taken down mid-stream; unlocks
(``#`` on the keypad pty -> coil energised) are timed before and during all of that."""

from __future__ import annotations

import socket
import statistics
import threading
import time
import urllib.request

import pytest

from locker.cabinet.domain import machine
from locker.cabinet.domain.model import fresh_state
from locker.cabinet.panel.hub import PanelHub
from locker.cabinet.panel.web import MAX_STREAMS
from tests.conftest import wait_for
from tests.daemon_rig import GPIO_LAYOUT
from tests.domain import Keys, rules
from tests.panel_rig import PanelCabinet, cabinet

pytestmark = pytest.mark.timeout(120)
UNLOCK_BOUND_S = 0.5  # a normal unlock here takes a few milliseconds
_ = cabinet  # fixture


def _round_of_unlocks(cab: PanelCabinet, tag: str) -> list[float]:
    """A drop-off and a pickup at every GPIO compartment; seconds from '#' to the coil."""
    rig = cab.rig
    samples: list[float] = []
    for cid, size, _, _ in GPIO_LAYOUT:
        parcel = f"{tag}-{cid}"
        _, drop, pick = rig.assign(parcel, size, compartment=cid)
        for code, done in ((drop, "parcel_deposited"), (pick, "parcel_collected")):
            pulses = sum(p.compartment == cid for p in rig.coil_pulses())
            rig.press(code)
            t0 = time.monotonic()
            rig.press("#")
            wait_for(
                lambda: sum(p.compartment == cid for p in rig.coil_pulses()) > pulses,  # noqa: B023
                5.0,
                0.001,
                what=f"coil of {cid}",
            )
            samples.append(time.monotonic() - t0)
            rig.set_door(cid, opened=True)
            purpose = "dropoff" if done == "parcel_deposited" else "pickup"
            rig.wait_event("door_opened", parcel=parcel, purpose=purpose)
            rig.set_door(cid, opened=False)
            rig.wait_event(done, parcel=parcel)
    return samples


def _stalled_stream(url: str) -> socket.socket:
    """An event-stream client that never reads a byte."""
    host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    s.sendall(f"GET /events HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    return s


def test_stalled_clients_a_hung_panel_and_a_killed_server_never_delay_unlocks(
    cabinet: PanelCabinet, capsys: pytest.CaptureFixture[str]
) -> None:
    rig, server = cabinet.rig, cabinet.server
    rig.clear_coils()
    baseline = _round_of_unlocks(cabinet, "before")

    # every stream slot taken by a client that never reads; one more is turned away
    stalled = [_stalled_stream(cabinet.url) for _ in range(MAX_STREAMS)]
    wait_for(lambda: server.active_streams == MAX_STREAMS, what="all stream slots in use")
    extra = _stalled_stream(cabinet.url)
    assert extra.recv(64).startswith(b"HTTP/1.1 503")
    extra.close()
    # a panel thread hung while holding the hub's lock
    hub = rig.locker.hub if rig.locker else None
    assert hub is not None
    held, release = threading.Event(), threading.Event()

    def hang() -> None:
        with hub._cond:
            held.set()
            release.wait(60)

    hanger = threading.Thread(target=hang, daemon=True)
    hanger.start()
    held.wait(5)
    try:
        during = _round_of_unlocks(cabinet, "stalled")
        server.kill()  # the web server goes down as in a crash, mid-stream
        killed = _round_of_unlocks(cabinet, "killed")
    finally:
        release.set()
        for s in stalled:
            s.close()
    # the supervisor brought it back at the same address
    wait_for(lambda: server.restarts >= 1, 10, what="panel restarted")
    with urllib.request.urlopen(cabinet.url + "healthz", timeout=5) as resp:
        assert resp.read() == b"ok\n"

    with capsys.disabled():
        for name, xs in (("baseline", baseline), ("stalled", during), ("killed", killed)):
            print(
                f"\nunlock '#'->coil {name}: median {statistics.median(xs) * 1000:.1f} ms, "
                f"max {max(xs) * 1000:.1f} ms (n={len(xs)})"
            )
    assert max(during + killed) < UNLOCK_BOUND_S
    assert len(during) == len(killed) == 2 * len(GPIO_LAYOUT)


def test_a_failing_observer_is_logged_and_the_locker_goes_on(cabinet: PanelCabinet) -> None:
    rig = cabinet.rig

    def broken(tr: object, now: float) -> None:
        raise RuntimeError("panel bug")

    rig.controller.observers.insert(0, broken)
    comp, drop, _ = rig.assign("OBS1", "S")
    rig.press(drop + "#")
    rig.wait_event("access_granted", compartment=comp)
    hub = rig.locker.hub if rig.locker else None
    assert hub is not None
    wait_for(lambda: hub.latest.message(time.time()).state == "granted", what="panel still fed")


def test_the_hub_never_waits_for_a_reader_holding_its_lock() -> None:
    hub = PanelHub(["en"], "en")
    state = fresh_state({f"C{i}": "S" for i in range(64)})
    tr = machine.step(state, machine.Tick(), _rules(), 1000.0)
    held, release = threading.Event(), threading.Event()

    def hang() -> None:
        with hub._cond:
            held.set()
            release.wait(10)

    threading.Thread(target=hang, daemon=True).start()
    held.wait(5)
    try:
        t0 = time.perf_counter()
        for i in range(1000):
            hub.observe(tr, 1000.0 + i)
        per_call = (time.perf_counter() - t0) / 1000
    finally:
        release.set()
    assert hub.latest.view.rev == 1000
    assert per_call < 0.002, f"{per_call * 1e6:.0f} us per projection of 64 compartments"


def _rules() -> machine.Rules:
    return rules(Keys())
