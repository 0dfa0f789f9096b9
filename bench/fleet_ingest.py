"""Fleet service ingest: events stored and acknowledged per second, beside the bare broker.

One Mosquitto (mutual TLS, ``max_queued_messages 0`` so the broker never drops a backlog)
serves two phases, each with its own lockers so nothing carries over:

1. bare: a paho subscriber process (``lockers/+/evt/#``) that only counts events and
   acknowledges each locker's highest seq on ``{p}/ack`` every 5 ms: what the broker and
   paho can carry with no database at all;
2. service: ``lockerctl serve`` (a separate process, SQLite in its fleet directory, one
   worker on the shared subscription), which stores every event in its database and acks
   only what the database holds.

In both phases a publisher process plays ``--lockers`` light lockers (each its own TLS
client and certificate) publishing ``--events`` events in all, QoS 1, as fast as the broker
takes them; the clock runs from the first publish until every locker has received an ack
covering its last event. Prints both rates and their ratio, and writes
``bench/results-fleet-ingest.json``. Run: ``flock /tmp/suite.lock .venv/bin/python
bench/fleet_ingest.py [--events N] [--lockers K]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from bench.common import write_results  # noqa: E402
from locker.fleet import provision  # noqa: E402
from locker.sim.broker import SERVER_CN, Broker, Pki, free_port  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results-fleet-ingest.json"
EPOCH = "bench"


def _client(spec: dict[str, Any], cn: str) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cn, protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=spec["ca"], certfile=spec["certs"][cn][0], keyfile=spec["certs"][cn][1])
    c.max_queued_messages_set(0)
    return c


def publisher(spec: dict[str, Any]) -> None:
    """K lockers publish their share; prints the seconds from first publish to last ack."""
    lockers: list[str] = spec["lockers"]
    per = spec["events"] // len(lockers)
    acked = dict.fromkeys(lockers, 0)
    done = threading.Event()
    lock = threading.Lock()
    clients = []
    for name in lockers:
        c = _client(spec, name)

        def on_ack(_c: Any, _u: Any, msg: Any, name: str = name) -> None:
            upto = int(json.loads(msg.payload)["upto_seq"])
            with lock:
                acked[name] = max(acked[name], upto)
                if all(v >= per for v in acked.values()):
                    done.set()

        c.on_message = on_ack
        c.connect(spec["host"], spec["port"])
        c.loop_start()
        c.subscribe(f"lockers/{name}/ack", qos=1)
        clients.append(c)
    time.sleep(0.5)  # subscriptions settle (not measured)
    started = time.monotonic()

    def publish_all(c: mqtt.Client, name: str) -> None:
        for seq in range(1, per + 1):
            body = {"v": 1, "epoch": EPOCH, "seq": seq, "type": "door_opened", "data": {}}
            body |= {"ts": "2026-11-29T00:00:00Z", "compartment": "A1"}
            c.publish(f"lockers/{name}/evt/door_opened", json.dumps(body), qos=1)

    threads = [
        threading.Thread(target=publish_all, args=(c, n))
        for c, n in zip(clients, lockers, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = done.wait(spec["timeout"])
    elapsed = time.monotonic() - started
    print(json.dumps({"ok": ok, "seconds": elapsed, "events": per * len(lockers)}), flush=True)
    for c in clients:
        c.loop_stop()
        c.disconnect()


def bare(spec: dict[str, Any]) -> None:
    """An acknowledging subscriber with no database: counts, acks the highest seq."""
    high: dict[str, int] = {}
    pending: set[str] = set()
    lock = threading.Lock()
    c = _client(spec, SERVER_CN)

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        locker = msg.topic.split("/")[1]
        seq = int(json.loads(msg.payload)["seq"])
        with lock:
            high[locker] = max(high.get(locker, 0), seq)
            pending.add(locker)

    c.on_message = on_message
    c.connect(spec["host"], spec["port"])
    c.subscribe("lockers/+/evt/#", qos=1)
    c.loop_start()
    print("ready", flush=True)
    while True:
        time.sleep(0.005)
        with lock:
            due = {n: high[n] for n in pending}
            pending.clear()
        for name, upto in due.items():
            c.publish(
                f"lockers/{name}/ack", json.dumps({"v": 1, "epoch": EPOCH, "upto_seq": upto}), qos=1
            )


def _run_publisher(spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--role", "publisher", "--spec", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=spec["timeout"] + 60,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--lockers", type=int, default=10)
    ap.add_argument("--role", choices=["publisher", "bare"], help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        spec = json.loads(args.spec)
        (publisher if args.role == "publisher" else bare)(spec)
        return 0
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    try:
        return _bench(work, args.events, args.lockers)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _bench(work: Path, events: int, n_lockers: int) -> int:
    pki = Pki(work / "pki")
    broker = Broker(work / "broker", pki=pki, extra="max_queued_messages 0")
    broker.start()
    phases: dict[str, dict[str, Any]] = {}
    try:
        for phase in ("bare", "service"):
            lockers = [f"{phase[0].upper()}-{i:03d}" for i in range(n_lockers)]
            certs = {
                cn: [pki.client(cn).cert_file, pki.client(cn).key_file]
                for cn in [*lockers, SERVER_CN]
            }
            spec = {
                "host": broker.host,
                "port": broker.port,
                "ca": pki.ca_file,
                "certs": certs,
                "lockers": lockers,
                "events": events,
                "timeout": 600,
            }
            if phase == "bare":
                proc = subprocess.Popen(
                    [sys.executable, __file__, "--role", "bare", "--spec", json.dumps(spec)],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                assert proc.stdout is not None
                proc.stdout.readline()
            else:
                proc = _serve(work, broker, pki)
            try:
                phases[phase] = _run_publisher(spec)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
            if phase == "service":
                with sqlite3.connect(work / "fleet" / "fleet.db") as db:
                    stored = db.execute(
                        "select count(*) from events where epoch = ?", (EPOCH,)
                    ).fetchone()[0]
                phases[phase]["stored"] = stored
    finally:
        broker.stop()
    rate = {k: v["events"] / v["seconds"] for k, v in phases.items()}
    ratio = rate["service"] / rate["bare"]
    print(f"bare broker + acknowledging paho subscriber: {rate['bare']:8.0f} events/s")
    print(f"fleet service (SQLite, one worker):          {rate['service']:8.0f} events/s")
    print(
        f"ratio service / bare: {ratio:.2f}; stored {phases['service'].get('stored')} of {events}"
    )
    write_results(
        RESULTS,
        "fleet service ingest (stored and acked) vs bare broker throughput",
        {"phases": phases, "events_per_s": rate, "ratio": ratio},
        events=events,
        lockers=n_lockers,
    )
    ok = all(v["ok"] for v in phases.values()) and phases["service"].get("stored") == events
    return 0 if ok else 1


def _serve(work: Path, broker: Broker, pki: Pki) -> subprocess.Popen[bytes]:
    d = work / "fleet"
    provision.provision_fleet(
        d, "bench", "127.0.0.1", broker_port=broker.port, run_as_root=os.geteuid() == 0
    )
    shutil.copyfile(pki.ca_file, d / "ca.pem")
    cert = pki.client(SERVER_CN)
    shutil.copyfile(cert.cert_file, d / "clients" / f"{SERVER_CN}.pem")
    shutil.copyfile(cert.key_file, d / "clients" / f"{SERVER_CN}-key.pem")
    log = (work / "serve.log").open("wb")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "locker.fleet.ctl",
            "serve",
            "--fleet",
            str(d),
            "--http",
            f"127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    # the HTTP server starts after the worker's subscription is acknowledged
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1):
                return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((work / "serve.log").read_text()) from None
            time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
