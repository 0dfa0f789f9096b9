"""Relations between keys, checked on the raw TOML tables (wiring, pins and ports used twice,
board references, shared buses, TLS files, throttle limits, the reconnect back-off), so that
they are reported even when other keys of the same file are broken. Every message names both
keys: the one at its key path, the other in its reason. Relations that are legal but
probably wrong are ``Config.warnings`` (``locker.config.sections``)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping

from locker.config.fields import BAUDRATES
from locker.config.messages import Issue, Loc, format_loc

# --- relations between keys, on the raw tables ----------------------------------------------


def _table(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def _tables(value: object) -> list[tuple[int, dict[str, object]]]:
    items = value if isinstance(value, list) else []
    return [(i, t) for i, t in enumerate(items) if isinstance(t, dict)]


def _int(value: object) -> int | None:
    return value if type(value) is int else None


def _number(value: object) -> float | None:
    return float(value) if type(value) in (int, float) else None  # type: ignore[arg-type]


Defaults = Mapping[str, Mapping[str, object]]
"""Section name -> key -> default, taken from the models (defaults live there only)."""


def relations(data: object, defaults: Defaults) -> list[Issue]:
    """Every problem between keys of the raw tables ``data``, as (key path, reason)."""
    root = _table(data)
    compartments = _tables(root.get("compartments"))
    boards = _tables(root.get("boards"))
    issues: list[Issue] = []
    if root.get("compartments") == []:
        issues.append((("compartments",), "at least one [[compartments]] entry is required"))
    issues += _wiring(compartments)
    issues += _unique(compartments, "compartments", "id")
    issues += _unique(boards, "boards", "name")
    issues += _board_references(compartments, boards)
    issues += _shared_buses(boards, defaults["boards"])
    issues += _pins_used_twice(root, compartments)
    issues += _serial_ports_used_twice(root, boards)
    issues += _mqtt_tls(_table(root.get("mqtt")))
    issues += _reconnect(_table(root.get("mqtt")), defaults["mqtt"])
    issues += _throttle(_table(root.get("security")), defaults["security"])
    return issues


def _wiring(compartments: list[tuple[int, dict[str, object]]]) -> Iterator[Issue]:
    for i, c in compartments:
        gpio = [k for k in ("lock_pin", "door_pin") if k in c]
        board = [k for k in ("board", "channel") if k in c]
        where: Loc = ("compartments", i)
        if gpio and board:
            yield (
                where,
                (
                    f"has GPIO keys ({', '.join(gpio)}) and board keys ({', '.join(board)}): "
                    "a compartment is wired either to GPIO pins or to a board channel"
                ),
            )
        elif not gpio and not board:
            yield where, "needs lock_pin and door_pin (GPIO) or board and channel (lock board)"


def _unique(entries: list[tuple[int, dict[str, object]]], section: str, key: str) -> list[Issue]:
    first: dict[str, int] = {}
    issues: list[Issue] = []
    for i, entry in entries:
        value = entry.get(key)
        if isinstance(value, str):
            if value in first:
                issues.append(
                    (
                        (section, i, key),
                        f"{json.dumps(value)} is already used by {section}[{first[value]}]",
                    )
                )
            first.setdefault(value, i)
    return issues


def _board_references(
    compartments: list[tuple[int, dict[str, object]]], boards: list[tuple[int, dict[str, object]]]
) -> Iterator[Issue]:
    names = {b["name"] for _, b in boards if isinstance(b.get("name"), str)}
    used: dict[tuple[str, int], int] = {}
    for i, c in compartments:
        board, channel = c.get("board"), _int(c.get("channel"))
        if not isinstance(board, str):
            continue
        if board not in names:
            yield ("compartments", i, "board"), f"no [[boards]] entry is named {json.dumps(board)}"
        elif channel is not None and (board, channel) in used:
            other = used[(board, channel)]
            yield (
                ("compartments", i, "channel"),
                f"{board} channel {channel} is already used by compartments[{other}]",
            )
        if channel is not None:
            used.setdefault((board, channel), i)


def _shared_buses(
    boards: list[tuple[int, dict[str, object]]], default: Mapping[str, object]
) -> Iterator[Issue]:
    addresses: dict[tuple[str, int], int] = {}
    rates: dict[str, tuple[int, int]] = {}
    for i, b in boards:
        port = b.get("port")
        address = _int(b.get("address", default["address"]))
        rate = _int(b.get("baudrate", default["baudrate"]))
        if not isinstance(port, str):
            continue
        if address is not None and 0 <= address <= 15:
            if (port, address) in addresses:
                other = addresses[(port, address)]
                yield (
                    ("boards", i, "address"),
                    f"address {address} on {port} is already used by boards[{other}]",
                )
            addresses.setdefault((port, address), i)
        if rate in BAUDRATES:
            first_rate, other = rates.setdefault(port, (rate, i))
            if first_rate != rate:
                yield (
                    ("boards", i, "baudrate"),
                    f"one bus, one baudrate: boards[{other}] runs {port} at {first_rate}",
                )


def _pin_users(
    root: dict[str, object], compartments: list[tuple[int, dict[str, object]]]
) -> Iterator[tuple[Loc, object]]:
    # In the order of the sections, so the later place is the one reported.
    keypad = _table(root.get("keypad"))
    if keypad.get("type") == "matrix":
        for key in ("rows", "cols"):
            pins = keypad.get(key)
            for j, pin in enumerate(pins if isinstance(pins, list) else []):
                yield ("keypad", key, j), pin
    feedback = _table(root.get("feedback"))
    for key in ("buzzer_pin", "ok_led_pin", "error_led_pin"):
        if key in feedback:
            yield ("feedback", key), feedback[key]
    for i, c in compartments:
        for key in ("lock_pin", "door_pin", "item_pin", "led_pin"):
            if key in c:
                yield ("compartments", i, key), c[key]


def _pins_used_twice(
    root: dict[str, object], compartments: list[tuple[int, dict[str, object]]]
) -> Iterator[Issue]:
    first: dict[int, Loc] = {}
    for where, value in _pin_users(root, compartments):
        pin = _int(value)
        if pin is None or not 0 <= pin <= 27:
            continue
        if pin in first:
            yield where, f"GPIO{pin} is already used by {format_loc(first[pin])}"
        first.setdefault(pin, where)


def _serial_ports_used_twice(
    root: dict[str, object], boards: list[tuple[int, dict[str, object]]]
) -> Iterator[Issue]:
    users: list[tuple[Loc, object]] = [
        (("scanner", "port"), _table(root.get("scanner")).get("port"))
    ]
    keypad = _table(root.get("keypad"))
    if keypad.get("type") == "serial":
        users.append((("keypad", "port"), keypad.get("port")))
    buses: dict[str, Loc] = {}
    for i, b in boards:  # several boards may share one RS-485 bus: count each bus once
        if isinstance(port := b.get("port"), str):
            buses.setdefault(port, ("boards", i, "port"))
    users += [(where, port) for port, where in buses.items()]
    first: dict[str, Loc] = {}
    for where, port in users:
        # Each loop:// is a loopback of its own.
        if not isinstance(port, str) or port == "none" or port.startswith("loop://"):
            continue
        other = first.setdefault(port, where)
        if other != where:
            yield where, f"{port} is already used by {format_loc(other)}"


def _mqtt_tls(mqtt: dict[str, object]) -> Iterator[Issue]:
    if not mqtt or mqtt.get("tls", True) is not True:
        return
    for key in ("ca_file", "cert_file", "key_file"):
        if key not in mqtt:
            yield ("mqtt", key), "required when tls = true"


def _reconnect(mqtt: dict[str, object], default: Mapping[str, object]) -> Iterator[Issue]:
    if not mqtt:
        return
    low = _number(mqtt.get("reconnect_min_s", default["reconnect_min_s"]))
    high = _number(mqtt.get("reconnect_max_s", default["reconnect_max_s"]))
    if low is not None and high is not None and high < low:
        key = "reconnect_max_s" if "reconnect_max_s" in mqtt else "reconnect_min_s"
        yield (
            ("mqtt", key),
            f"mqtt.reconnect_max_s ({high:g} s) is below mqtt.reconnect_min_s ({low:g} s): the "
            "reconnect back-off grows from reconnect_min_s up to reconnect_max_s",
        )


def _throttle(security: dict[str, object], default: Mapping[str, object]) -> Iterator[Issue]:
    backoff = _int(security.get("failures_before_backoff", default["failures_before_backoff"]))
    lockout = _int(security.get("hard_lockout_failures", default["hard_lockout_failures"]))
    if backoff is not None and lockout is not None and lockout < backoff:
        yield (
            ("security", "hard_lockout_failures"),
            f"must be at least failures_before_backoff ({backoff})",
        )
