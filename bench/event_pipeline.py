"""Events produced live through the whole daemon, against bare paho on the same broker.

For each transport (plain TCP, mutual TLS) against a real Mosquitto on loopback, with a
fleet server in a separate process (its own GIL) that subscribes and acknowledges:
1. baseline: a bare paho QoS 1 publisher (its own client certificate, max_inflight 20,
   paho's own network thread) publishes N event-sized payloads; timed from the first
   publish to the last PUBACK (a flood with no flow control overruns a subscriber's queue);
2. the real ``lockerd`` (``SimCabinet``, ``GUESSER_SECURITY``), connected, gets N wrong codes
   typed on its keypad pty (``tests.e2e.guess_burst``), each one an ``access_denied`` event
   committed to its outbox and published; timed from the first key typed until the server
   holds all N, contiguous;
3. the same burst into a lockerd with no broker configured (once, plain): what the keypad,
   controller and store take alone, the ceiling of step 2 in one process.
The ratio daemon/bare is the figure of issue 10 (goal >= 0.5). ``--repeats`` runs both
several times within one process (``bench/run.py`` also repeats the whole script).

Each phase also counts the CPU time of every process in it (``bench.common.CpuMeter``: this
process, the broker, the server, lockerd), per event, and how many of the machine's cores
were busy: a rate bound by one interpreter's GIL shows one process near a core, a rate bound
by the machine shows the cores near full. "Bare paho publisher" CPU is this process's.

Prints the figures and writes ``bench/results-event-pipeline.json``.
Run: ``.venv/bin/python bench/event_pipeline.py [--events N] [--repeats R] [--plain-only]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from bench.common import (  # noqa: E402
    CpuMeter,
    Figure,
    serve_spec,
    spawn_server,
    start_server,
    write_results,
)
from locker.sim.broker import Broker, Pki  # noqa: E402
from locker.sim.cabinet import SimCabinet  # noqa: E402
from tests.e2e import GUESSER_SECURITY, db_last_seq, guess_burst  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results-event-pipeline.json"
LOCKER = "SIM-0001"
BARE = "BARE-0001"
TIMEOUT_S = 300.0
# The processes whose CPU time is counted per phase (bench.common.CpuMeter).
BENCH = "bench (bare publisher / key typist)"
SERVER = "server"
LOCKERD = "lockerd"


def serve(spec: dict[str, Any]) -> None:
    """The fleet server process: ack everything; for each ``<locker> <upto>`` line on stdin,
    print the monotonic time at which it held every seq of that locker up to ``upto``."""
    server = start_server(spec)
    for line in sys.stdin:
        locker, upto = line.split()
        deadline = time.monotonic() + TIMEOUT_S
        while not server.has_all(locker, int(upto)) and time.monotonic() < deadline:
            time.sleep(0.001)
        print(f"held {time.monotonic()}", flush=True)
    server.stop()


def bare_paho(broker: Broker, events: int, first_seq: int) -> float:
    """Publish ``events`` QoS 1 messages as fast as paho takes them, and wait for the last
    PUBACK (a disconnect before it would drop what paho still queues); returns the time the
    first was handed to paho."""
    ep = broker.endpoint(BARE)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=BARE, protocol=mqtt.MQTTv5)
    client.username_pw_set(BARE)  # a broker with an ACL but no TLS names it by user name
    if ep.cert is not None:
        client.tls_set(ep.ca_file, ep.cert.cert_file, ep.cert.key_file)
    client.max_inflight_messages_set(20)
    client.max_queued_messages_set(0)
    client.connect(ep.host, ep.port)
    client.loop_start()
    payloads = []
    for seq in range(first_seq, first_seq + events):
        doc = {
            "v": 1,
            "epoch": str(uuid.UUID(int=1)),
            "seq": seq,
            "event_id": str(uuid.uuid4()),
            "boot_id": "bare",
            "ts": "2026-01-01T00:00:00Z",
            "clock_synced": True,
            "type": "access_denied",
            "data": {"reason": "malformed", "source": "scanner"},
        }
        payloads.append(json.dumps(doc, separators=(",", ":")).encode())
    began = time.monotonic()
    infos = [client.publish(f"lockers/{BARE}/evt/access_denied", p, qos=1) for p in payloads]
    for info in infos:
        info.wait_for_publish(TIMEOUT_S)
    client.disconnect()
    client.loop_stop()
    return began


def against_bare_paho(transport: str, name: str, rate: float, bare_rate: float) -> list[Figure]:
    """``rate`` (events/s) as a figure named ``"{transport}: {name}"`` whose baseline is the
    bare paho publisher's ``bare_rate`` of the same run (issue 10's goal: at least half)."""
    bare = f"{transport}: bare paho QoS 1"
    return [
        Figure(bare, float(bare_rate), "events/s"),
        Figure(f"{transport}: {name}", float(rate), "events/s", baseline=bare, goal=">= 0.5x"),
    ]


def run(tls: bool, events: int, workdir: Path, repeats: int) -> dict[str, Any]:
    pki = Pki(workdir / "pki") if tls else None
    broker = Broker(workdir / "broker", pki=pki)
    broker.start()
    server = spawn_server(__file__, serve_spec(broker))
    assert server.stdout is not None and server.stdin is not None
    cab = SimCabinet(workdir / "cab", broker=broker, locker_id=LOCKER, security=GUESSER_SECURITY)
    bare_rates: list[float] = []
    daemon_rates: list[float] = []

    def held(locker: str, upto: int) -> float:
        assert server.stdin is not None and server.stdout is not None
        server.stdin.write(f"{locker} {upto}\n")
        server.stdin.flush()
        return float(server.stdout.readline().removeprefix("held "))

    cpu_bare: list[dict[str, Any]] = []
    cpu_daemon: list[dict[str, Any]] = []
    try:
        cab.start()
        held(LOCKER, db_last_seq(cab))  # connected, the start-up events delivered
        assert broker.proc is not None and cab.proc is not None
        meter = CpuMeter(
            {
                BENCH: os.getpid(),
                "mosquitto": broker.proc.pid,
                SERVER: server.pid,
                LOCKERD: cab.proc.pid,
            }
        )
        bare_next = 1
        for _ in range(repeats):
            # To its last PUBACK: a subscriber cannot take a flood without flow control
            # (the broker drops past its queue limit), which is what the outbox and the
            # server's acks are for on the daemon's side.
            meter.start()
            began = bare_paho(broker, events, bare_next)
            bare_rates.append(events / (time.monotonic() - began))
            cpu_bare.append(meter.stop(events))
            bare_next += events
            target = db_last_seq(cab) + events
            meter.start()
            began = time.monotonic()
            guess_burst(cab, events)
            daemon_rates.append(events / (held(LOCKER, target) - began))
            cpu_daemon.append(meter.stop(events))
    finally:
        server.stdin.close()
        server.wait(30)
        cab.close()
        broker.stop()
    ratios = [d / b for d, b in zip(daemon_rates, bare_rates, strict=True)]
    return {
        "transport": "mutual TLS" if tls else "plain TCP",
        "events": events,
        "repeats": repeats,
        "bare_paho_events_per_s": _summary(bare_rates),
        "daemon_events_per_s": _summary(daemon_rates),
        "ratio_daemon_to_bare": _summary(ratios, 3),
        # CPU us per event of each process, and mean cores busy, per repeat: whether a rate
        # is bound by one process or by the machine's cores (issue 10's events-live row)
        "cpu_bare": cpu_bare,
        "cpu_daemon": cpu_daemon,
    }


def no_link(events: int, workdir: Path, repeats: int) -> dict[str, Any]:
    """The same burst into a lockerd with no broker configured: what the keypad, the
    controller and the store take alone (the ceiling of the live figure in one process)."""
    cab = SimCabinet(workdir / "alone", broker=None, locker_id=LOCKER, security=GUESSER_SECURITY)
    rates: list[float] = []
    cpu: list[dict[str, Any]] = []
    try:
        cab.start()
        assert cab.proc is not None
        meter = CpuMeter({BENCH: os.getpid(), LOCKERD: cab.proc.pid})
        for _ in range(repeats):
            meter.start()
            began = time.monotonic()
            committed = guess_burst(cab, events)
            if committed < events:
                raise RuntimeError(f"only {committed} of {events} codes committed")
            rates.append(events / (time.monotonic() - began))
            cpu.append(meter.stop(events))
    finally:
        cab.close()
    return {"events": events, "repeats": repeats, "committed_per_s": _summary(rates), "cpu": cpu}


def _cpu(samples: list[dict[str, Any]], process: str) -> float:
    """The median over repeats of one process's CPU us per event."""
    return float(statistics.median(c["us_per_item"][process] for c in samples))


def _busy(samples: list[dict[str, Any]]) -> float:
    return float(statistics.median(c["cores_busy"] for c in samples))


def _summary(values: list[float], digits: int = 0) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "all": [round(v, digits) for v in values],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--plain-only", action="store_true")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(json.loads(args.serve))
        return
    results = []
    for tls in (False,) if args.plain_only else (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            result = run(tls, args.events, Path(tmp), args.repeats)
        results.append(result)
        b, d, q = (
            result["bare_paho_events_per_s"],
            result["daemon_events_per_s"],
            result["ratio_daemon_to_bare"],
        )
        print(
            f"{result['transport']:>10}: bare paho {b['median']:.0f}/s "
            f"({b['min']:.0f}-{b['max']:.0f}), daemon live {d['median']:.0f}/s "
            f"({d['min']:.0f}-{d['max']:.0f}): ratio {q['median']:.3f} "
            f"({q['min']:.3f}-{q['max']:.3f})"
        )
        for phase in ("cpu_bare", "cpu_daemon"):
            last = result[phase][-1]
            per = ", ".join(f"{n} {us:.0f}" for n, us in last["us_per_item"].items())
            print(f"{'':>12}{phase}: CPU us/event: {per}; cores busy {last['cores_busy']}")
    with tempfile.TemporaryDirectory() as tmp:
        alone = no_link(args.events, Path(tmp), args.repeats)
    a = alone["committed_per_s"]
    print(f"  no link: lockerd alone commits {a['median']:.0f}/s ({a['min']:.0f}-{a['max']:.0f})")
    last = alone["cpu"][-1]
    per = ", ".join(f"{n} {us:.0f}" for n, us in last["us_per_item"].items())
    print(f"{'':>12}CPU us/event: {per}; cores busy {last['cores_busy']}")
    figures = [
        Figure("lockerd with no link: wrong codes committed", a["median"], "events/s"),
        Figure("lockerd with no link: its CPU per event", _cpu(alone["cpu"], LOCKERD), "us"),
    ]
    for r in results:
        t = r["transport"]
        figures += against_bare_paho(
            t,
            "events live through lockerd",
            r["daemon_events_per_s"]["median"],
            r["bare_paho_events_per_s"]["median"],
        )
        publisher = f"{t}: CPU per event, bare paho publisher"
        figures += [
            Figure(publisher, _cpu(r["cpu_bare"], BENCH), "us"),
            Figure(
                f"{t}: CPU per event, lockerd live", _cpu(r["cpu_daemon"], LOCKERD), "us", publisher
            ),
            Figure(f"{t}: CPU per event, acking server (bare)", _cpu(r["cpu_bare"], SERVER), "us"),
            Figure(
                f"{t}: CPU per event, acking server (lockerd)", _cpu(r["cpu_daemon"], SERVER), "us"
            ),
            Figure(
                f"{t}: cores busy (bare)",
                _busy(r["cpu_bare"]),
                "of 2" if os.cpu_count() == 2 else "cores",
            ),
            Figure(
                f"{t}: cores busy (lockerd)",
                _busy(r["cpu_daemon"]),
                "of 2" if os.cpu_count() == 2 else "cores",
            ),
        ]
    write_results(
        RESULTS,
        "events produced live through the real lockerd (wrong codes typed on its keypad "
        "pty -> access_denied events -> MQTT -> an acking server process), against a bare "
        "paho QoS 1 publisher to the same broker in the same run; and the same burst into "
        "a lockerd with no link",
        [*results, {"no_link": alone}],
        figures=figures,
    )


if __name__ == "__main__":
    main()
