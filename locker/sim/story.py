"""``make simulate``: a whole parcel locker on this machine, with a story to watch.

A real Mosquitto with mutual TLS and the per-locker ACL, the real ``lockerd`` on mock pins
with a simulated KR-CU16 board, a serial keypad and a QR scanner on ptys, and this process
playing the central server (signed commands, acks), the courier, the customer and the doors.
After the story, type ``help`` for an interactive prompt (skipped when stdin is not a tty).

Keys and codes are throwaway, made for this run in the work directory; codes are shown on this
terminal because here you are the courier and the customer. lockerd's own log never has them.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardware.emulators.kerong import KerongEmulator
from locker.contract.credentials import TokenAction
from locker.fleet import qr
from locker.fleet.client import Incoming, Reply
from locker.fleet.ledger import Ack
from locker.fleet.watch import FleetView
from locker.sim import fleet as sim_fleet
from locker.sim.broker import SERVER_CN, Broker, BrokerStartError, Pki, server_client
from locker.sim.cabinet import SimCabinet, SimError
from locker.sim.prompt import interact
from locker.sim.workdir import DEFAULT_WORKDIR, WorkdirError, claim_default, claim_workdir

BOLD, DIM, GREEN, RED, CYAN, YELLOW, RESET = (
    "\033[1m",
    "\033[2m",
    "\033[32m",
    "\033[31m",
    "\033[36m",
    "\033[33m",
    "\033[0m",
)
ALARMS = {
    "door_jammed",
    "door_forced",
    "door_left_open",
    "keypad_throttled",
    "keypad_locked_out",
    "hardware_fault",
    "access_denied",
    "command_rejected",
    "unlock_outcome_unknown",
}


class Server:
    """The central server's side: prints what the locker reports and acknowledges events
    (only the highest contiguous seq, so the locker can free its outbox). ``acks`` False:
    the fleet service runs beside it and is the one that acknowledges: a second acker would
    free the locker's outbox of events the fleet service has not stored yet (after an outage
    they then never reach it)."""

    def __init__(
        self,
        broker: Broker,
        locker_id: str,
        resync_token: Callable[[], bytes] | None = None,
        *,
        acks: bool = True,
    ) -> None:
        self.client = server_client(broker, keepalive_s=10)
        self.acks = acks
        self.locker_id = locker_id
        self.resync_token = resync_token  # a signed resync, for a first contact past a gap
        self.events: list[dict[str, Any]] = []
        self.state: dict[str, Any] = {}
        self.online: bool | None = None
        # The reference bookkeeping of lockerctl watch: dedup by (epoch, seq), hold events
        # past a gap, acknowledge only what is held contiguously, ask for a missed backlog.
        self.view = FleetView()
        self._cond = threading.Condition()
        self.client.add_listener(self._on_message)

    def connect(self) -> None:
        self.client.connect()
        p = f"lockers/{self.locker_id}"
        self.client.subscribe([f"{p}/status", f"{p}/state", f"{p}/evt/#"])

    def _on_message(self, msg: Incoming) -> None:
        doc = json.loads(msg.payload) if msg.payload else {}
        channel = msg.topic.split("/", 2)[2]
        with self._cond:
            if channel == "status":
                online = bool(doc.get("online"))
                if online != self.online:  # retained copies come again on every resubscribe
                    say(
                        "server",
                        f"locker is {'ONLINE' if online else 'OFFLINE'}",
                        GREEN if online else RED,
                    )
                self.online = online
            if channel == "state":
                self.state = doc
            if channel == "state" or channel.startswith("evt/"):
                for line in self.view.handle(msg):
                    if "gap" in line or "STREAM" in line:
                        say("server", line, YELLOW)
                news = self.view.lockers[self.locker_id].events[len(self.events) :]
                for ev in news:
                    self._print_event(ev)
                self.events += news
                due = self.view.acks_due().get(self.locker_id)
                if due is not None and not self.acks:
                    self.view.mark_acked(self.locker_id, due)  # the fleet service acks
                elif due is not None:
                    threading.Thread(target=self._send_ack, args=(due,), daemon=True).start()
                if self.view.resyncs_due():
                    self.view.mark_resync_sent(self.locker_id)
                    if self.resync_token is not None:
                        token = self.resync_token()
                        threading.Thread(target=self._resync, args=(token,), daemon=True).start()
            self._cond.notify_all()

    def _resync(self, token: bytes) -> None:
        say("server", "first contact past a gap: asking for the backlog (resync)", YELLOW)
        try:
            self.client.send_signed(self.locker_id, token)
        except Exception as err:
            say("server", f"resync failed ({err}); the locker resends on time-out", RED)

    def _send_ack(self, ack: Ack) -> None:
        try:
            self.client.ack(self.locker_id, ack.upto_seq, epoch=ack.epoch)
        except Exception as err:
            say("server", f"ack failed ({err}); the next event acks again", RED)
            return
        with self._cond:
            self.view.mark_acked(self.locker_id, ack)

    @staticmethod
    def _print_event(ev: dict[str, Any]) -> None:
        where = " ".join(x for x in (ev.get("compartment"), ev.get("parcel")) if x)
        data = ", ".join(f"{k}={v}" for k, v in ev["data"].items())
        colour = RED if ev["type"] in ALARMS else CYAN
        say(
            "server",
            f"evt #{ev['seq']:<4} {colour}{ev['type']:<26}{RESET} {where} {DIM}{data}{RESET}",
        )

    def wait_event(
        self, type_: str, after: int = 0, timeout: float = 20.0, **data: Any
    ) -> dict[str, Any]:
        """The first event of this type (and these ``data`` keys, if given) after index
        ``after`` of the events received so far."""

        def match(e: dict[str, Any]) -> bool:
            return e["type"] == type_ and all(k in e["data"] for k in data)

        def found() -> dict[str, Any] | None:
            return next((e for e in self.events[after:] if match(e)), None)

        with self._cond:
            if not self._cond.wait_for(lambda: found() is not None, timeout):
                raise SimError(f"no {type_} event within {timeout}s")
            ev = found()
        assert ev is not None
        return ev

    def wait(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise SimError("the locker did not answer in time")

    def command(self, cab: SimCabinet, action: str, args: dict[str, Any], ttl: int = 60) -> Reply:
        reply = self.client.send_signed(self.locker_id, cab.sign(action, args, ttl_s=ttl))
        colour = GREEN if reply.ok else RED
        say("server", f"{action} -> {colour}{reply.describe()}{RESET}")
        return reply


_PRINT = threading.Lock()


def say(who: str, text: str, colour: str = "") -> None:
    line = (
        f"{DIM}{time.strftime('%H:%M:%S')}{RESET} {BOLD}{who:>8}{RESET} {colour}{text}"
        f"{RESET if colour else ''}\n"
    )
    with _PRINT:  # the paho thread prints events while the story prints narration
        sys.stdout.write(line)
        sys.stdout.flush()


def chapter(title: str) -> None:
    with _PRINT:
        print(f"\n{BOLD}{YELLOW}== {title} =={RESET}", flush=True)


@dataclass(frozen=True)
class Assigned:
    parcel: str
    compartment: str
    dropoff_code: str
    pickup_code: str


class Story:
    def __init__(
        self,
        cab: SimCabinet,
        server: Server,
        broker: Broker,
        pause: float,
        fleet: sim_fleet.SimFleet | None = None,
    ) -> None:
        self.cab, self.server, self.broker, self.pause = cab, server, broker, pause
        self.fleet = fleet
        self.parcels = 1000

    @property
    def emulator(self) -> KerongEmulator:
        assert self.cab.emulator is not None
        return self.cab.emulator

    def assign(self, size: str, compartment: str | None = None) -> Assigned:
        self.parcels += 1
        parcel = f"PKG-{self.parcels}"
        drop, drop_tag = self.cab.new_code()
        pick, pick_tag = self.cab.new_code()
        args: dict[str, Any] = {
            "parcel": parcel,
            "kind": "delivery",
            "size": size,
            "dropoff_tag": drop_tag,
            "pickup_tag": pick_tag,
        }
        if compartment:
            args["compartment"] = compartment
        reply = self.server.command(self.cab, "assign", args, ttl=3600)
        if not reply.ok:
            raise SimError(reply.describe())
        comp = str((reply.result or {}).get("compartment"))
        say(
            "server",
            f"parcel {parcel} reserved in {comp}: courier code {BOLD}{drop}{RESET}, "
            f"customer code {BOLD}{pick}{RESET}",
        )
        return Assigned(parcel, comp, drop, pick)

    def _type(self, who: str, code: str) -> int:
        mark = len(self.server.events)
        say(who, f"types {code}# on the keypad")
        self.cab.press(code + "#")
        return mark

    def beat(self) -> None:
        time.sleep(self.pause)  # a pause for the reader, not a synchronisation

    def run(self) -> None:
        for part in (self.delivery, self.board, self.jam, self.forced, self.offline, self.guessing):
            part()

    def delivery(self) -> None:
        chapter("1. A courier delivers a parcel (GPIO compartment)")
        a = self.assign("M")
        mark = self._type("courier", a.dropoff_code)
        self.server.wait_event("parcel_deposited", mark)
        say("courier", f"put {a.parcel} in {a.compartment} and closed the door")
        self.beat()
        chapter("2. The customer picks it up with the QR code from the notification")
        token = self.cab.token(a.parcel, TokenAction.PICKUP)
        print(qr.to_terminal(token), flush=True)
        mark = len(self.server.events)
        say("customer", "holds the QR code to the scanner")
        self.cab.scan(token)
        self.server.wait_event("parcel_collected", mark)
        say("customer", "has the parcel; the compartment is free again")
        self.beat()

    def board(self) -> None:
        chapter("3. A large cabinet: the same flow on a KR-CU16 lock board (RS-485)")
        a = self.assign("S", "B2")
        mark = self._type("courier", a.dropoff_code)
        self.server.wait_event("parcel_deposited", mark)
        mark = self._type("customer", a.pickup_code)
        self.server.wait_event("parcel_collected", mark)
        self.beat()

    def jam(self) -> None:
        chapter("4. A lock that jams: the parcel moves, the compartment goes out of service")
        a = self.assign("S", "B1")
        self.emulator.set_jammed(0, 1)
        mark = self._type("courier", a.dropoff_code)
        moved = self.server.wait_event("parcel_reserved", mark, timeout=30, moved_from=1)
        say("courier", f"the door stayed shut; the same code now opens {moved['compartment']}")
        mark = self._type("courier", a.dropoff_code)
        self.server.wait_event("parcel_deposited", mark)
        self.emulator.set_jammed(0, 1, False)
        self.server.command(
            self.cab, "set_service", {"compartment": "B1", "in_service": True, "reason": "repaired"}
        )
        self.beat()

    def forced(self) -> None:
        chapter("5. Someone forces a door open")
        mark = len(self.server.events)
        self.emulator.force_open(0, 6)
        self.server.wait_event("door_forced", mark)
        self.emulator.close_door(0, 6)
        self.server.wait_event("door_closed", mark)
        self.beat()

    def offline(self) -> None:
        chapter("6. The network goes down; the locker keeps working and loses nothing")
        a = self.assign("S")
        self.broker.stop()
        say("network", "broker stopped", RED)
        self.cab.press(a.dropoff_code + "#")
        say("courier", f"types {a.dropoff_code}# and deposits {a.parcel} while offline")
        time.sleep(4)  # the simulated person needs this long to open and close the door
        mark = len(self.server.events)
        self.broker.start()
        say("network", "broker back", GREEN)
        self.server.wait_event("parcel_deposited", mark, timeout=60)
        say("server", "every event held while offline arrived, in order, once")
        if self.fleet is not None:
            self._fleet_holds_everything()
        self.beat()

    def _fleet_holds_everything(self) -> None:
        """The fleet service (the one that acknowledges) may have come back after the
        locker sent its backlog: the locker sends again what is not acknowledged
        (``ack_timeout_s``), so the console has every event too. Shown, not assumed."""
        assert self.fleet is not None
        last = self.server.events[-1]
        deadline = time.monotonic() + 60
        while not self.fleet.holds(self.cab.locker_id, last["epoch"], last["seq"]):
            if time.monotonic() > deadline:
                raise SimError(f"the fleet service never got every event up to #{last['seq']}")
            time.sleep(0.2)  # a story's pace, not a test's wait
        say("fleet", f"the console holds every event up to #{last['seq']} too", GREEN)

    def guessing(self) -> None:
        chapter("7. Someone guesses codes: the keypad backs off, then an operator resets it")
        mark = len(self.server.events)
        for guess in ("11111111", "22222222", "33333333", "44444444", "55555555"):
            self.cab.press(guess + "#")
        throttled = self.server.wait_event("keypad_throttled", mark)
        say("locker", f"keypad blocked for {throttled['data']['delay_s']:.0f} s")
        self.server.command(self.cab, "reset_lockout", {})


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m locker.sim", description=__doc__.splitlines()[0])
    p.add_argument(
        "--workdir",
        type=Path,
        help="emptied and re-created if the simulator made it before, refused otherwise "
        f"(default {DEFAULT_WORKDIR}, or {DEFAULT_WORKDIR}-2... while another run uses it)",
    )
    p.add_argument("--pause", type=float, default=1.0, help="seconds between chapters")
    p.add_argument("--no-story", action="store_true", help="go straight to the prompt")
    p.add_argument(
        "--console",
        default="127.0.0.1:8080",
        help="HOST:PORT of the fleet service's console and API (port 0: any free port)",
    )
    p.add_argument("--no-fleet", action="store_true", help="do not start the fleet service")
    args = p.parse_args(argv)
    try:
        if args.workdir is None:
            work, lock = claim_default(DEFAULT_WORKDIR.resolve())
        else:
            work = args.workdir.resolve()
            lock = claim_workdir(work)
    except WorkdirError as err:
        print(f"{RED}{err}{RESET}", file=sys.stderr)
        return 2
    with lock:
        return _simulate(work, args)


def _simulate(work: Path, args: argparse.Namespace) -> int:
    print(
        f"{BOLD}Parcel locker simulator{RESET}  (work directory {work}, "
        f"lockerd log {work / 'cabinet' / 'lockerd.log'})"
    )
    broker = Broker(
        work / "broker",
        pki=Pki(work / "pki", ca_name="Simulated fleet CA"),
        server_users=(SERVER_CN, sim_fleet.SERVICE_CN),
    )
    cab: SimCabinet | None = None
    fleet: sim_fleet.SimFleet | None = None
    try:
        broker.start()
        say("broker", f"Mosquitto on 127.0.0.1:{broker.port}, mutual TLS, per-locker ACL")
        trust: dict[str, Any] = {}
        if not args.no_fleet and sim_fleet.available():
            fleet = sim_fleet.SimFleet(work / "fleet", broker, args.console)
            trust = fleet.trust()
        cab = SimCabinet(
            work / "cabinet", broker=broker, timing={"door_open_timeout_s": 3.0}, **trust
        )
        if fleet is not None:
            fleet.register(cab.locker_id, cab.device_key, cab.config_path)
            _start_fleet(fleet)
        sim = cab
        server = Server(broker, cab.locker_id, lambda: sim.sign("resync", {}), acks=fleet is None)
        server.connect()  # first, so that it sees the locker's very first event
        cab.start()
        say(
            "locker",
            f"lockerd {cab.locker_id} ready: 6 GPIO compartments (A1-A6) on mock "
            "pins, 6 on a KR-CU16 board (B1-B6), keypad and scanner on ptys",
        )
        server.wait(lambda: server.online is True)
        if cab.panel_url:
            say(
                "panel",
                f"the cabinet's front panel: {BOLD}{cab.panel_url}{RESET}  (open it in a "
                "browser to watch the story as a person at the door sees it)",
            )
        story = Story(cab, server, broker, args.pause, fleet)
        if not args.no_story:
            story.run()
            chapter("The end of the story")
        if sys.stdin.isatty():
            interact(story)
        else:  # said, not skipped in silence (piped input is not read as commands)
            say("sim", "input is not a terminal: no locker> prompt; stopping", YELLOW)
        cab.stop()
        server.wait(lambda: server.online is False, timeout=10)
        return 0
    except (SimError, BrokerStartError) as err:
        print(f"{RED}simulation failed: {err}{RESET}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if cab is not None:
            cab.close()
        if fleet is not None:
            fleet.stop()
        broker.stop()


def _start_fleet(fleet: sim_fleet.SimFleet) -> None:
    try:
        url = fleet.start()
    except (RuntimeError, OSError) as err:  # the port is taken: any free one will do
        say("fleet", f"{fleet.listen} unavailable ({err}); using a free port", YELLOW)
        fleet.listen = fleet.listen.rpartition(":")[0] + ":0"
        url = fleet.start()
    say(
        "fleet",
        f"fleet service console {BOLD}{url}{RESET} login {BOLD}{sim_fleet.OPERATOR}{RESET} "
        f"password {BOLD}{fleet.login.password}{RESET} (API token: {fleet.login.token})",
        GREEN,
    )


if __name__ == "__main__":
    sys.exit(main())
