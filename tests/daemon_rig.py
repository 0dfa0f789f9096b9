"""An in-process lockerd for daemon-level tests and the end-to-end latency benchmark.

``DaemonRig`` runs the real daemon as ``lockerd`` assembles it (``locker.cabinet.assembly.build``:
configuration, SQLite store, GPIO lock bank on a gpiozero ``MockFactory`` the test holds,
RS-485 bus on the KR-CU16 emulator's pty, serial keypad and QR scanner on real ptys) with the
controller loop on its own thread, and no MQTT link unless given an ``mqtt`` table. The test
plays everyone around it:

- the server: commands are signed JWS handed to ``controller.submit`` as the link would, so
  the real verification path runs; events are read back from the outbox table;
- the people: keys typed on the keypad pty, QR codes sent down the scanner pty, doors moved by
  driving the door pins (pull-up: high = open when the closed level is "low");
- the observer: lock pin levels from ``MockPin.states``.

The store's SQLite connection belongs to the controller thread (as in ``lockerd``), so
``build``, ``start``, the loop and the final close all run there; the test thread reads the
database through its own read-only connection.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gpiozero.pins.mock import MockFactory, MockPin

from hardware.boards.kerong import CMD_UNLOCK, CMD_UNLOCK_ALL, Frame
from hardware.boards.rs485_bus import KerongBus
from hardware.emulators.kerong import KerongEmulator
from locker.cabinet.assembly import Locker, build
from locker.cabinet.config import Config, parse_config
from locker.cabinet.controller import Controller
from locker.cabinet.domain import machine
from locker.contract import credentials, jws
from locker.fleet import provision
from locker.ports import CommandMessage
from tests.conftest import wait_for
from tests.ptys import PtyPort

LOCKER_ID = "LKR-D1"
COMMAND_KID = "ops1"
TOKEN_KID = 1
PULSE_S = 0.1
REST_S = 0.05
# A person's pause between the last digit and '#' (people type 2-5 keys a second): the
# digits are handled before the '#' arrives, as on a real keypad. Without it, an unlock's
# latency would include the handling of eight digits written in the same microsecond.
KEY_GAP_S = 0.05

# (id, size, lock pin, door pin): GPIO-wired compartments of the default cabinet.
GPIO_LAYOUT: tuple[tuple[str, str, int, int], ...] = (
    ("A1", "S", 12, 6),
    ("A2", "S", 13, 19),
    ("B1", "M", 26, 16),
    ("C1", "L", 20, 21),
)

# Fast but realistic: a person answers a pulse within milliseconds here, so 1.5 s before a
# jam is declared leaves a loaded CI machine plenty of room.
FAST_TIMING: dict[str, Any] = {
    "unlock_pulse_s": PULSE_S,
    "unlock_rest_s": REST_S,
    "door_debounce_s": 0.01,
    "door_open_timeout_s": 1.5,
    "door_left_open_s": 60.0,
    "keypad_entry_timeout_s": 20.0,
}


class Keyring:
    """The server's side of one locker's secrets: device key (code tags), command signing
    key, token signing key. Generated per test; only public keys go into the config."""

    def __init__(self, workdir: Path, locker_id: str = LOCKER_ID) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.locker_id = locker_id
        self.device_key = secrets.token_bytes(32)
        self.device_key_file = workdir / "device.key"
        provision.write_private(self.device_key_file, self.device_key)
        self.command_key = Ed25519PrivateKey.generate()
        self.token_key = Ed25519PrivateKey.generate()

    def security(self) -> dict[str, Any]:
        return {
            "device_key_file": str(self.device_key_file),
            "command_keys": {COMMAND_KID: provision.encode_public_key(self.command_key)},
            "token_keys": {str(TOKEN_KID): provision.encode_public_key(self.token_key)},
        }

    def new_code(self) -> tuple[str, str]:
        """A fresh 8-digit code and its tag."""
        code = credentials.generate_code(8)
        return code, credentials.code_tag(self.device_key, code)

    def token(self, parcel: str, action: credentials.TokenAction, ttl_s: int = 86400) -> str:
        now = int(time.time())
        return credentials.mint_token(
            self.token_key, TOKEN_KID, self.locker_id, action, parcel, now - 60, now + ttl_s
        )

    def sign(self, action: str, args: Mapping[str, Any], ttl_s: int = 60) -> bytes:
        now = int(time.time())
        claims = {
            "aud": self.locker_id,
            "jti": secrets.token_hex(12),
            "iat": now,
            "exp": now + ttl_s,
            "act": action,
            "args": dict(args),
        }
        return jws.sign_command(self.command_key, COMMAND_KID, claims)


@dataclass(frozen=True, slots=True)
class CoilPulse:
    """One energisation of a lock pin, in seconds on ``time.monotonic``."""

    compartment: str
    on: float
    off: float | None

    @property
    def length(self) -> float | None:
        return None if self.off is None else self.off - self.on


@dataclass(frozen=True, slots=True)
class BoardCompartment:
    id: str
    size: str
    board: str
    channel: int


# Four compartments on board 0 of one KR-CU16 bus (names apart from the GPIO ones).
BOARD_LAYOUT: tuple[BoardCompartment, ...] = (
    BoardCompartment("K1", "S", "b0", 1),
    BoardCompartment("K2", "S", "b0", 2),
    BoardCompartment("K3", "M", "b0", 3),
    BoardCompartment("K4", "L", "b0", 4),
)


class WireWatch:
    """The emulator's ``on_frame`` hook: every unlock frame as it reaches the wire, with its
    arrival time (``time.monotonic``, the clock this process measures with)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.unlocks: list[tuple[float, int, int]] = []  # (time, board, channel)
        self.unlock_all = 0

    def __call__(self, t: float, frame: Frame) -> None:
        if frame.cmd == CMD_UNLOCK_ALL:
            self.unlock_all += 1
        if frame.cmd != CMD_UNLOCK:
            return
        with self._cond:
            self.unlocks.append((t, frame.board, frame.lock_index + 1))
            self._cond.notify_all()

    def count(self) -> int:
        with self._cond:
            return len(self.unlocks)

    def wait_count(self, n: int, timeout: float = 5.0) -> tuple[float, int, int]:
        """Block until ``n`` unlock frames have arrived; returns the ``n``-th."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.unlocks) >= n, timeout):
                raise TimeoutError(f"unlock frame {n} never reached the wire")
            return self.unlocks[n - 1]


def board_table(
    port: str, *, item_sensors: bool = False, poll_interval_s: float = 0.05
) -> dict[str, Any]:
    return {
        "name": "b0",
        "port": port,
        "address": 0,
        "item_sensors": item_sensors,
        "poll_interval_s": poll_interval_s,
    }


class DaemonRig:
    """One cabinet with the daemon running in this process (see the module docstring).

    :param factory: the MockFactory holding the GPIO pins (None for a board-only cabinet).
    :param gpio: GPIO compartments as (id, size, lock pin, door pin).
    :param boards: ``[[boards]]`` tables (their ``port`` is usually an emulator's pty).
    :param board_compartments: compartments wired to those boards.
    """

    def __init__(
        self,
        workdir: Path,
        factory: MockFactory | None,
        *,
        gpio: Sequence[tuple[str, str, int, int]] = GPIO_LAYOUT,
        boards: Sequence[Mapping[str, Any]] = (),
        board_compartments: Sequence[BoardCompartment] = (),
        timing: Mapping[str, Any] | None = None,
        security: Mapping[str, Any] | None = None,
        tables: Mapping[str, Any] | None = None,
        compartment_keys: Mapping[str, Mapping[str, Any]] | None = None,
        events_from: Callable[[], Sequence[Mapping[str, Any]]] | None = None,
    ) -> None:
        """``events_from``: where committed events are read back, oldest first, when not
        from the outbox (with a link and a server that acknowledges them, the outbox
        empties); ``tables``: more top-level tables (e.g. ``panel``; an ``mqtt`` table also starts
        the MQTT link, which then publishes every event as ``lockerd``'s does);
        ``compartment_keys``: more keys of some compartments, by id (e.g. ``led_pin``)."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.factory = factory
        self.keys = Keyring(workdir)
        self.keypad = PtyPort(workdir / "keypad")
        self.scanner = PtyPort(workdir / "scanner")
        self.keypad.plug()
        self.scanner.plug()
        self.gpio = {cid: (lock, door) for cid, _, lock, door in gpio}
        self.door_open = dict.fromkeys(self.gpio, False)  # the physical doors
        self.data: dict[str, Any] = {
            "locker": {"id": LOCKER_ID, "state_dir": str(workdir / "state")},
            "security": {**self.keys.security(), **(security or {})},
            "timing": {**FAST_TIMING, **(timing or {})},
            "gpio": {"pin_factory": "mock"},
            "keypad": {"type": "serial", "port": str(self.keypad.link)},
            "scanner": {"port": str(self.scanner.link)},
            "boards": [dict(b) for b in boards],
            "compartments": [
                {"id": cid, "size": size, "lock_pin": lock, "door_pin": door}
                for cid, size, lock, door in gpio
            ]
            + [
                {"id": c.id, "size": c.size, "board": c.board, "channel": c.channel}
                for c in board_compartments
            ],
            **(tables or {}),
        }
        for entry in self.data["compartments"]:
            entry.update((compartment_keys or {}).get(entry["id"], {}))
        self.config: Config = parse_config(self.data, source="rig.toml", base_dir=workdir)
        self.db = workdir / "state" / "locker.db"
        self._events_from = events_from
        self.locker: Locker | None = None
        self.starts = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._coil_t0 = time.monotonic()

    # --- life cycle --------------------------------------------------------------------------

    def start(self, timeout: float = 15.0, *, wait_inputs: bool = True) -> None:
        """Build and start the daemon on its thread; return once every input port is open
        (``wait_inputs=False``: once it is ready, which an unplugged input does not hold up)."""
        assert self._thread is None, "already running"
        self._stop.clear()
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._serve, name="lockerd-rig", daemon=True)
        self._thread.start()
        wait_for(lambda: self._ready.is_set() or self._error is not None, timeout, what="start")
        if self._error is not None:
            raise RuntimeError("the daemon failed to start") from self._error
        self.starts += 1
        if wait_inputs:
            wait_for(self.inputs_connected, timeout, what="keypad and scanner ports open")

    def stop(self, timeout: float = 15.0) -> None:
        """What SIGTERM does in ``lockerd``: the loop ends, ``stopping`` is committed, locks
        go off, ports and database are closed."""
        if self._thread is None:
            return
        self._stop.set()
        if self.locker is not None:
            self.locker.controller.submit(machine.Tick())  # wake the loop now
        self._thread.join(timeout)
        alive = self._thread.is_alive()
        self._thread = None
        self.locker = None
        assert not alive, "the controller loop did not stop"
        if self._error is not None:
            raise RuntimeError("the daemon failed") from self._error

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.keypad.unplug()
            self.scanner.unplug()

    def _serve(self) -> None:
        # build, start, loop and close on one thread: the store's connection lives here
        locker: Locker | None = None
        try:
            with_link = self.config.mqtt is not None
            locker = build(self.config, pin_factory=self.factory, with_link=with_link)
            self._apply_doors()  # building pulls door inputs up; put the doors back as they are
            locker.start()
            self.locker = locker
            self._ready.set()
            locker.controller.run(self._stop, watchdog_every=0.2)
        except BaseException as err:
            self._error = err
        finally:
            if locker is not None:
                locker.close_surfaces()
                for device in locker.inputs:
                    device.close()
                locker.controller.shutdown()
                locker.controller.store.close()

    @property
    def controller(self) -> Controller:
        assert self.locker is not None, "not running"
        return self.locker.controller

    def inputs_connected(self) -> bool:
        locker = self.locker
        return locker is not None and all(
            getattr(device, "connected", True) for device in locker.inputs
        )

    # --- the server --------------------------------------------------------------------------

    def command(self, action: str, **args: Any) -> None:
        """A signed command, delivered as the MQTT link would deliver it."""
        self.controller.submit(CommandMessage(payload=self.keys.sign(action, args)))

    def assign(
        self, parcel: str, size: str = "S", kind: str = "delivery", **extra: Any
    ) -> tuple[str, str, str]:
        """Assign a parcel; returns (compartment, drop-off code, pickup code)."""
        drop, drop_tag = self.keys.new_code()
        pick, pick_tag = self.keys.new_code()
        self.command(
            "assign",
            parcel=parcel,
            kind=kind,
            size=size,
            dropoff_tag=drop_tag,
            pickup_tag=pick_tag,
            **extra,
        )
        reserved = self.wait_event("parcel_reserved", parcel=parcel)
        return str(reserved["compartment"]), drop, pick

    def pickup_token(self, parcel: str) -> str:
        return self.keys.token(parcel, credentials.TokenAction.PICKUP)

    # --- the outbox ----------------------------------------------------------------------------

    def events(self) -> list[dict[str, Any]]:
        """Every event in the outbox, oldest first (nothing is acknowledged in these tests),
        or from ``events_from``."""
        if self._events_from is not None:
            return [dict(e) for e in self._events_from()]
        if not self.db.exists():
            return []
        with contextlib.closing(read_only(self.db)) as con:
            rows = con.execute("SELECT payload FROM outbox ORDER BY seq").fetchall()
        return [json.loads(r[0]) for r in rows]

    def types(self, since: int = 0) -> list[str]:
        return [e["type"] for e in self.events()[since:]]

    def matching(self, type_: str, **fields: Any) -> list[dict[str, Any]]:
        """Events of one type whose ``fields`` match (top level or in ``data``)."""
        if self._events_from is not None:
            return [dict(e) for e in self._events_from() if e["type"] == type_ and _has(e, fields)]
        if not self.db.exists():
            return []
        with contextlib.closing(read_only(self.db)) as con:
            rows = con.execute(
                "SELECT payload FROM outbox WHERE type=? ORDER BY seq", (type_,)
            ).fetchall()
        events = (json.loads(r[0]) for r in rows)
        return [e for e in events if _has(e, fields)]

    def wait_event(
        self, type_: str, count: int = 1, timeout: float = 10.0, **fields: Any
    ) -> dict[str, Any]:
        """Wait until ``count`` events of ``type_`` with ``fields`` (top level or in
        ``data``) are committed; returns the last of them."""
        found: list[dict[str, Any]] = []

        def enough() -> bool:
            if self._error is not None:
                raise RuntimeError("the daemon failed") from self._error
            found[:] = self.matching(type_, **fields)
            return len(found) >= count

        wait_for(enough, timeout, what=f"{count} x {type_} {fields}")
        return found[count - 1]

    def mark(self) -> int:
        """The number of events so far, to slice what a step produced."""
        return len(self.events())

    # --- the people ------------------------------------------------------------------------

    def press(self, keys: str) -> None:
        self.keypad.write(keys.encode())

    def scan(self, text: str) -> None:
        self.scanner.write(text.encode() + b"\r")

    def set_door(self, cid: str, *, opened: bool) -> None:
        self.door_open[cid] = opened
        self._drive(cid)

    def _apply_doors(self) -> None:
        for cid in self.gpio:
            self._drive(cid)

    def _drive(self, cid: str) -> None:
        assert self.factory is not None
        pin = self.factory.pin(self.gpio[cid][1])
        if self.door_open[cid]:
            pin.drive_high()  # pull-up, closed level "low": high means open
        else:
            pin.drive_low()

    # --- the observer ---------------------------------------------------------------------------

    def lock_pin(self, cid: str) -> MockPin:
        assert self.factory is not None
        return self.factory.pin(self.gpio[cid][0])

    def clear_coils(self) -> None:
        """Start a fresh coil log (all lock pins at once, one common time origin)."""
        for cid in self.gpio:
            self.lock_pin(cid).clear_states()
        self._coil_t0 = time.monotonic()

    def coil_pulses(self) -> list[CoilPulse]:
        """Every energisation of every GPIO lock since ``clear_coils``, by start time."""
        pulses: list[CoilPulse] = []
        for cid in self.gpio:
            t = self._coil_t0
            on_at: float | None = None
            for state in self.lock_pin(cid).states[1:]:
                t += state.timestamp  # MockPin: time since the previous change
                if state.state:
                    on_at = t
                elif on_at is not None:
                    pulses.append(CoilPulse(cid, on_at, t))
                    on_at = None
            if on_at is not None:
                pulses.append(CoilPulse(cid, on_at, None))
        return sorted(pulses, key=lambda p: p.on)

    def wait_pulse(self, cid: str, count: int = 1, timeout: float = 5.0) -> None:
        """Wait until ``cid``'s lock has been energised ``count`` times since ``clear_coils``."""
        wait_for(
            lambda: sum(p.compartment == cid for p in self.coil_pulses()) >= count,
            timeout,
            what=f"pulse {count} of {cid}",
        )


def read_only(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)


def _has(event: Mapping[str, Any], fields: Mapping[str, Any]) -> bool:
    data = event.get("data", {})
    return all(event.get(k, data.get(k)) == v for k, v in fields.items())


def seq_gaps(events: Sequence[Mapping[str, Any]]) -> list[int]:
    """Positions where ``seq`` is not the previous plus one (empty: contiguous from 1)."""
    seqs = [int(e["seq"]) for e in events]
    return [i for i, s in enumerate(seqs) if s != i + 1]


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0-100) of a non-empty sample."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


_CHANNEL = {c.id: c.channel for c in BOARD_LAYOUT}


class BoardCabinet:
    """A board-only cabinet: the daemon, the emulated KR-CU16 bus (board 0, compartments
    ``BOARD_LAYOUT``) and what reached its wire."""

    def __init__(
        self,
        workdir: Path,
        *,
        item_sensors: bool = False,
        poll_interval_s: float = 0.05,
        tables: Mapping[str, Any] | None = None,
        events_from: Callable[[], Sequence[Mapping[str, Any]]] | None = None,
    ) -> None:
        self.watch = WireWatch()
        self.emu = KerongEmulator([0], pulse_s=PULSE_S, open_delay_s=0.02, on_frame=self.watch)
        self.emu.start()
        self.rig = DaemonRig(
            workdir,
            None,
            gpio=(),
            boards=[
                board_table(
                    self.emu.path, item_sensors=item_sensors, poll_interval_s=poll_interval_s
                )
            ],
            board_compartments=BOARD_LAYOUT,
            tables=tables,
            events_from=events_from,
        )
        self.rig.start()

    def close(self) -> None:
        self.rig.close()
        self.emu.stop()

    @property
    def bus(self) -> KerongBus:
        return next(b for b in self.rig.controller.banks if isinstance(b, KerongBus))

    def channels_unlocked(self) -> list[int]:
        return [ch for _, _, ch in self.watch.unlocks]

    def visit(self, cid: str, code: str, *, opened_before: int, item: bool | None = None) -> None:
        """Type a code, wait for the door to swing open, leave the item as ``item`` says
        (None: the board has no sensor), shut the door."""
        rig = self.rig
        frames = self.watch.count()
        rig.press(code + "#")
        self.watch.wait_count(frames + 1)
        rig.wait_event("door_opened", opened_before + 1, compartment=cid)
        with self.emu.hold():  # one reading sees the item and the shut door together
            if item is not None:
                self.emu.set_item(0, _CHANNEL[cid], item)
            self.emu.close_door(0, _CHANNEL[cid])


def unlock_latencies(
    cab: BoardCabinet,
    parcels: int,
    compartments: Sequence[BoardCompartment] = BOARD_LAYOUT,
    between: Callable[[], object] = lambda: None,
) -> list[float]:
    """Seconds from the ``#`` that submits a code to the unlock frame on the wire, for a
    drop-off and a pickup of each of ``parcels`` parcels (round robin over ``compartments``).

    Each unlock is a whole visit (door opens, is shut, the step completes) so it meets the bus
    at a random phase of its polling, as a person's does. ``between`` is called once after
    each visit (the benchmark measures its paced baseline there)."""
    rig, watch = cab.rig, cab.watch
    samples: list[float] = []
    for i in range(parcels):
        comp = compartments[i % len(compartments)]
        parcel = f"LAT{i}"
        _, drop, pick = rig.assign(parcel, "S", compartment=comp.id)
        for code, done in ((drop, "parcel_deposited"), (pick, "parcel_collected")):
            samples.append(_one_unlock(rig, watch, comp, code))
            purpose = "dropoff" if done == "parcel_deposited" else "pickup"
            rig.wait_event("door_opened", parcel=parcel, purpose=purpose)
            cab.emu.close_door(0, comp.channel)
            rig.wait_event(done, parcel=parcel)
            between()
    return samples


def _one_unlock(rig: DaemonRig, watch: WireWatch, comp: BoardCompartment, code: str) -> float:
    rig.press(code)
    time.sleep(KEY_GAP_S)  # the person, not a wait for the daemon
    n = watch.count() + 1
    submitted = time.monotonic()
    rig.press("#")
    arrived, _, channel = watch.wait_count(n)
    if channel != comp.channel:
        raise AssertionError(f"unlock for channel {channel}, expected {comp.channel}")
    return arrived - submitted


ONE_DOOR = """\
[locker]
id = "{locker_id}"
state_dir = "{state}"
[security]
device_key_file = "device.key"
[gpio]
pin_factory = "mock"
[[compartments]]
id = "A1"
size = "S"
lock_pin = 17
door_pin = 27
"""


def one_door_config(tmp: Path, state: Path, locker_id: str = "LKR-I1") -> Path:
    """``tmp/locker.toml``: a GPIO cabinet (mock pins) with one door and no link, its device
    key beside it: the least a real ``lockerd`` child starts with."""
    (tmp / "device.key").write_bytes(secrets.token_bytes(32))
    cfg = tmp / "locker.toml"
    cfg.write_text(ONE_DOOR.format(locker_id=locker_id, state=state))
    return cfg
