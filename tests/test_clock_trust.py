"""Issue 11 item 6: one bad wall-clock reading must not poison the locker's time (DESIGN 6).

Unit tests of ``DomainClock`` on fake clocks, then the controller with a real SQLite store,
real signed commands and the real verifier, restarted on the same database."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from locker.cabinet.clock import CONFIRM_S, MAX_OFFLINE_S, DomainClock
from locker.cabinet.controller import Controller
from locker.cabinet.store import Store
from locker.contract import jws
from locker.contract.commands import command_verifier
from locker.ports import CommandMessage, DoorChanged, DoorState, KeyPressed
from tests.domain import LOCKER_ID, SIZES, T0, Keys, rules
from tests.test_controller import CheckingBank

YEARS_44 = 44 * 365.25 * 86400


class Clocks:
    def __init__(self) -> None:
        self.wall, self.mono, self.synced = T0, 0.0, False

    def advance(self, s: float) -> None:
        self.wall += s
        self.mono += s

    def clock(self, mark: float = 0.0) -> DomainClock:
        return DomainClock(mark, lambda: self.wall, lambda: self.mono, lambda: self.synced)


def test_a_forward_blip_is_suspect_once_and_never_used() -> None:
    c = Clocks()
    clock = c.clock()
    assert clock.now() == T0
    c.wall += YEARS_44
    c.mono += 1
    assert clock.now() == T0 + 1
    suspect = clock.take_suspect()
    assert suspect is not None and suspect.reading == T0 + YEARS_44
    c.mono += 1
    assert clock.now() == T0 + 2
    assert clock.take_suspect() is None  # once per episode
    c.wall -= YEARS_44  # corrected
    c.wall += 1
    assert clock.now() == T0 + 2
    assert not clock.suspect


def test_plausible_readings_move_the_clock_and_a_step_back_never_does() -> None:
    c = Clocks()
    clock = c.clock()
    c.advance(100)
    c.wall += 3  # a few seconds of correction: within the slack
    assert clock.now() == T0 + 103
    c.wall -= 3600  # set back an hour
    c.mono += 1
    assert clock.now() == T0 + 104
    assert clock.take_suspect() is not None


def test_a_synchronised_step_is_taken_once_it_has_held() -> None:
    c = Clocks()
    clock = c.clock()
    c.synced = True
    c.wall += 7200  # NTP at boot: two hours forward
    assert clock.now() == T0
    c.advance(CONFIRM_S / 2)
    assert clock.now() == T0 + CONFIRM_S / 2
    c.advance(CONFIRM_S / 2)
    assert clock.now() == T0 + CONFIRM_S + 7200
    assert not clock.suspect


def test_start_up_trusts_a_reading_ahead_of_the_mark_but_not_decades_ahead() -> None:
    c = Clocks()
    c.wall = T0 + 3 * 86400  # off for three days
    assert c.clock(mark=T0).now() == T0 + 3 * 86400
    c.wall = T0 + MAX_OFFLINE_S + YEARS_44
    clock = c.clock(mark=T0)
    assert clock.now() == T0
    assert clock.take_suspect() is not None


def test_a_signed_iat_re_anchors_only_a_suspect_clock_and_only_forward() -> None:
    c = Clocks()
    clock = c.clock(mark=T0)
    assert not clock.reanchor(T0 + 500)  # trusted: a command does not move it
    c.wall = T0 - 30 * 86400  # a Pi that came up a month behind
    c.mono += 1
    clock.now()
    assert clock.suspect
    assert not clock.reanchor(T0 - 100)
    assert clock.reanchor(T0 + 86400)
    assert clock.now() == T0 + 86400


class Cabinet:
    """A controller with the real verifier on a real database, restartable."""

    def __init__(self, tmp: Path) -> None:
        self.c = Clocks()
        self.keys = Keys()
        self.signer = Ed25519PrivateKey.generate()
        self.db = tmp / "locker.db"
        self.bank = CheckingBank(self.db)
        self.replies: list[Any] = []
        self.ctl = self._start()

    def _start(self) -> Controller:
        ctl = Controller(
            rules=rules(self.keys),
            store=Store(self.db, boot_id="boot"),
            compartment_sizes=SIZES,
            banks=[self.bank],
            version="test",
            wall=lambda: self.c.wall,
            mono=lambda: self.c.mono,
            clock_synced=lambda: self.c.synced,
            verify=command_verifier(LOCKER_ID, {"ops1": self.signer.public_key()}),
        )
        ctl.uplink.publish_reply = lambda reply, correlation_data: self.replies.append(reply)  # type: ignore[method-assign]
        ctl.start()
        while ctl.step_once(0):
            pass
        return ctl

    def restart(self) -> None:
        self.ctl.store.close()
        self.ctl = self._start()

    def drain(self) -> None:
        while self.ctl.step_once(0):
            pass

    def put(self, *events: Any) -> None:
        for e in events:
            self.ctl.submit(e)
        self.drain()

    def command(self, action: str, iat: float, **args: Any) -> dict[str, Any]:
        claims = {
            "aud": LOCKER_ID,
            "jti": secrets.token_hex(12),
            "iat": int(iat),
            "exp": int(iat) + 60,
            "act": action,
            "args": args,
        }
        self.put(CommandMessage(jws.sign_command(self.signer, "ops1", claims)))
        reply: dict[str, Any] = self.replies[-1]
        return reply

    def types(self) -> list[str]:
        return [e["type"] for e in self.ctl.store.outbox()]


def test_forty_four_years_forward_for_one_second_changes_nothing(tmp_path: Path) -> None:
    # item 6: every parcel expired, every fresh command was refused `expired`, for good
    cab = Cabinet(tmp_path)
    drop, pick = "12345678", "87654321"
    reply = cab.command(
        "assign",
        cab.c.wall,
        parcel="P1",
        kind="delivery",
        size="S",
        dropoff_tag=cab.keys.tag(drop),
        pickup_tag=cab.keys.tag(pick),
    )
    assert reply["status"] == "done"
    cab.put(*[KeyPressed(k) for k in drop + "#"])
    cab.put(DoorChanged("A1", DoorState.OPEN), DoorChanged("A1", DoorState.CLOSED))
    assert cab.types()[-1] == "parcel_deposited"

    cab.c.advance(60)
    cab.c.wall += YEARS_44  # the bad NTP answer
    cab.put(KeyPressed("*"), KeyPressed("*"))
    cab.c.advance(1)
    cab.put(KeyPressed("*"))
    cab.c.wall -= YEARS_44  # corrected a second later
    cab.c.advance(1)
    cab.put(KeyPressed("*"))

    types = cab.types()
    assert types.count("clock_suspect") == 1
    assert "pickup_expired" not in types and "assignment_cancelled" not in types
    assert (
        cab.command("extend", cab.c.wall, parcel="P1", pickup_until=int(T0 + 4 * 86400))["status"]
        == "done"
    )
    cab.restart()  # the durable mark was not poisoned either
    assert cab.command("lockdown", cab.c.wall, on=False)["status"] == "done"
    cab.put(*[KeyPressed(k) for k in pick + "#"])
    assert cab.bank.unlocked == [("A1", True), ("A1", True)]
    assert cab.types().count("clock_suspect") == 1


def test_restart_during_the_bad_reading_does_not_take_it(tmp_path: Path) -> None:
    cab = Cabinet(tmp_path)
    cab.c.wall += YEARS_44
    cab.restart()
    assert cab.ctl.clock.now() < T0 + 3600
    assert cab.types().count("clock_suspect") == 1
    cab.c.wall -= YEARS_44
    cab.c.advance(5)
    assert cab.command("lockdown", cab.c.wall, on=False)["status"] == "done"


def test_a_signed_command_re_anchors_a_clock_that_came_up_behind(tmp_path: Path) -> None:
    cab = Cabinet(tmp_path)
    cab.c.wall = T0 - 30 * 86400  # rebooted without RTC or network: a month behind the mark
    cab.restart()
    assert "clock_suspect" in cab.types()
    server_now = T0 + 2 * 86400  # the locker was off for two days
    assert cab.command("lockdown", server_now, on=False)["status"] == "done"
    assert cab.ctl.clock.now() >= server_now
