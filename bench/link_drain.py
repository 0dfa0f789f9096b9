"""Backlog drain through the MQTT link: 10,000 events queued while the broker is down.

For each transport (plain TCP, mutual TLS) against a real Mosquitto on loopback:
1. the broker runs, the fleet server (a separate process, so it does not share our GIL)
   subscribes with a persistent session; the broker is then stopped;
2. 10,000 events are committed to a SQLite outbox and the link is started (it cannot connect);
3. the broker is started again; we time until the server holds every event and its acks have
   emptied the outbox (``require_server_ack = true``, the production setting).
The baseline, measured in the same run against the same broker: a bare paho QoS 1 publisher
(``bench.event_pipeline.bare_paho``), events per second to its last PUBACK.

Prints the figures and writes ``bench/results-link-drain.json``.
Run: ``.venv/bin/python bench/link_drain.py [--events N]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from bench.common import (  # noqa: E402
    Figure,
    arrival_order,
    serve_spec,
    spawn_server,
    start_server,
    write_results,
)
from bench.event_pipeline import against_bare_paho, bare_paho  # noqa: E402
from locker.ports import LinkChanged, LinkEvent  # noqa: E402
from tests.broker import (  # noqa: E402
    Broker,
    LinkRecorder,
    Pki,
    SqliteOutbox,
    make_link,
)

LOCKER = "LKR-0001"
RESULTS = Path(__file__).resolve().parent / "results-link-drain.json"


def serve(spec: dict[str, Any]) -> None:
    """The fleet server process: ack everything, report order and duplicates, stay until
    stdin closes (its acks must reach the locker)."""
    server = start_server(spec)
    n = spec["events"]
    deadline = time.monotonic() + 330  # past the measuring side's own 300 s limit
    while not server.has_all(LOCKER, n):
        if time.monotonic() > deadline:
            print("done " + json.dumps({"received": len(server.events(LOCKER))}), flush=True)
            server.stop()
            return
        time.sleep(0.01)
    seen, in_order = arrival_order(event["seq"] for event in server.events(LOCKER))
    report = {
        "received": len(server.events(LOCKER)),
        "unique": len(seen),
        "in_order": in_order,
    }
    print("done " + json.dumps(report), flush=True)
    sys.stdin.read()
    server.stop()


def run(tls: bool, events: int, workdir: Path) -> dict[str, Any]:
    pki = Pki(workdir / "pki") if tls else None
    broker = Broker(workdir / "broker", pki=pki)
    broker.start()
    server = spawn_server(__file__, serve_spec(broker, events=events))
    assert server.stdout is not None and server.stdin is not None
    broker.stop()

    outbox = SqliteOutbox(workdir / "outbox.db")
    outbox.add(events)
    up = threading.Event()
    recorder = LinkRecorder(outbox)

    def sink(event: LinkEvent) -> None:
        recorder(event)
        if isinstance(event, LinkChanged) and event.connected:
            up.set()

    link = make_link(broker, outbox, locker_id=LOCKER, reconnect_max_s=0.5)
    # no controller here: the recorder answers the link's retained-state read with
    # stream_checked, or the link holds every event back (issue 11's restart check)
    recorder.attach(link.outbox_changed, link.stream_checked)
    link.start(sink)
    try:
        started = time.monotonic()
        broker.start()
        if not up.wait(30):
            raise RuntimeError("the link did not connect within 30 s of the broker starting")
        connected = time.monotonic()
        while outbox.depth() and time.monotonic() - started < 300:
            time.sleep(0.005)
        drained = time.monotonic()
        if outbox.depth():
            raise RuntimeError(f"outbox not drained in 300 s: {outbox.depth()} events left")
        report = json.loads(server.stdout.readline().removeprefix("done "))
        bare_began = bare_paho(broker, events, 1)
        bare_rate = events / (time.monotonic() - bare_began)
    finally:
        link.close()
        recorder.close()
        server.stdin.close()
        server.wait(10)
        broker.stop()
    seconds = drained - connected
    return {
        "transport": "mutual TLS" if tls else "plain TCP",
        "events": events,
        "seconds_from_broker_start": round(drained - started, 3),
        "seconds_from_connect": round(seconds, 3),
        "events_per_s": round(events / seconds),
        "bare_paho_events_per_s": round(bare_rate),
        "outbox_empty": outbox.depth() == 0,
        "server": report,
        "link": vars(link.counters),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(json.loads(args.serve))
        return
    results = []
    for tls in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            result = run(tls, args.events, Path(tmp))
        results.append(result)
        print(
            f"{result['transport']:>10}: {result['events']} events drained in "
            f"{result['seconds_from_connect']:.2f} s after connect "
            f"({result['seconds_from_broker_start']:.2f} s after broker start), "
            f"{result['events_per_s']} events/s (bare paho {result['bare_paho_events_per_s']}/s); "
            f"server got {result['server']['unique']} unique "
            f"of {result['server']['received']}, in order: {result['server']['in_order']}"
        )
    figures = [
        Figure(
            f"{r['transport']}: broker start to outbox empty",
            float(r["seconds_from_broker_start"]),
            "s",
            goal="< 5 s",
        )
        for r in results
    ]
    for r in results:
        figures += against_bare_paho(
            r["transport"], "drain rate", r["events_per_s"], r["bare_paho_events_per_s"]
        )
    write_results(
        RESULTS,
        f"drain of a {args.events}-event outbox backlog through locker.cabinet.link after a "
        "broker outage, acked by a server process",
        results,
        figures=figures,
    )


if __name__ == "__main__":
    main()
