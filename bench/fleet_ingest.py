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
import http.cookiejar
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from bench.common import Figure, write_results  # noqa: E402
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
    ap.add_argument("--page-lockers", type=int, default=200, help="lockers on the fleet page")
    ap.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL phases")
    ap.add_argument("--role", choices=["publisher", "bare"], help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        spec = json.loads(args.spec)
        (publisher if args.role == "publisher" else bare)(spec)
        return 0
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    try:
        return _bench(work, args.events, args.lockers, not args.no_postgres, args.page_lockers)
    finally:
        shutil.rmtree(work, ignore_errors=True)


WORKER_2 = "fleet-2"


def _spec(broker: Broker, pki: Pki, lockers: list[str], events: int) -> dict[str, Any]:
    certs = {
        cn: [pki.client(cn).cert_file, pki.client(cn).key_file] for cn in [*lockers, SERVER_CN]
    }
    return {
        "host": broker.host,
        "port": broker.port,
        "ca": pki.ca_file,
        "certs": certs,
        "lockers": lockers,
        "events": events,
        "timeout": 600,
    }


def _bench(work: Path, events: int, n_lockers: int, with_pg: bool, page_lockers: int) -> int:
    pki = Pki(work / "pki")
    broker = Broker(
        work / "broker",
        pki=pki,
        extra="max_queued_messages 0",
        server_users=(SERVER_CN, WORKER_2),
    )
    broker.start()
    fleet = _fleet(work, broker, pki)
    pg: Any = None
    phases: dict[str, dict[str, Any]] = {}
    page: dict[str, Any] = {}
    plan: list[tuple[str, str | None, tuple[str, ...]]] = [
        ("bare", None, ()),
        ("sqlite_1_worker", f"sqlite:///{work / 'fleet.db'}", (SERVER_CN,)),
    ]
    try:
        if with_pg:
            from tests.pg import Postgres  # noqa: PLC0415 - only when measuring PostgreSQL

            pg = Postgres()
            pg.start()
            plan += [
                ("postgres_1_worker", pg.create_database("one"), (SERVER_CN,)),
                ("postgres_2_workers", pg.create_database("two"), (SERVER_CN, WORKER_2)),
            ]
        for i, (phase, url, workers) in enumerate(plan):
            lockers = [f"P{i}-{n:03d}" for n in range(n_lockers)]
            spec = _spec(broker, pki, lockers, events)
            procs = (
                [_bare(spec)]
                if url is None
                else [_serve(work, fleet, url, w, f"{phase}-{w}") for w in workers]
            )
            try:
                phases[phase] = _run_publisher(spec)
                if url is not None:
                    phases[phase]["stored"] = _stored(url)
                if url is not None and phase == "sqlite_1_worker":
                    page = _fleet_page(broker, pki, fleet, url, procs[0][1], page_lockers)
            finally:
                for proc, _port in procs:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(30)
    finally:
        if pg is not None:
            pg.stop()
        broker.stop()
    return _report(phases, page, events, n_lockers)


def _report(
    phases: dict[str, dict[str, Any]], page: dict[str, Any], events: int, n_lockers: int
) -> int:
    rate = {k: v["events"] / v["seconds"] for k, v in phases.items()}
    ratio = {k: rate[k] / rate["bare"] for k in rate if k != "bare"}
    print(f"{'bare broker + acknowledging paho subscriber':45} {rate['bare']:8.0f} events/s")
    for k, r in ratio.items():
        stored = phases[k].get("stored")
        print(f"{k:45} {rate[k]:8.0f} events/s  ratio {r:.2f}  stored {stored}/{events}")
    if page:
        print(
            f"fleet page with {page['lockers']} lockers online: console median "
            f"{page['console_ms_median']:.0f} ms (max {page['console_ms_max']:.0f}), API median "
            f"{page['api_ms_median']:.0f} ms"
        )
    bare_name = "bare broker, acknowledging paho subscriber"
    figures = [Figure(bare_name, rate["bare"], "events/s")]
    goals = {"sqlite_1_worker": ">= 2000 events/s", "postgres_2_workers": "> postgres_1_worker"}
    figures += [
        Figure(
            f"fleet service, {k.replace('_', ' ')}",
            rate[k],
            "events/s",
            bare_name,
            goals.get(k, ""),
        )
        for k in ratio
    ]
    if page:
        figures.append(
            Figure(
                f"console fleet page, {page['lockers']} lockers online (median)",
                page["console_ms_median"],
                "ms",
                goal="< 200 ms",
            )
        )
    write_results(
        RESULTS,
        "fleet service ingest (stored and acked) vs bare broker throughput; fleet page latency",
        {"phases": phases, "events_per_s": rate, "ratio_to_bare": ratio, "fleet_page": page},
        figures=figures,
        events=events,
        lockers=n_lockers,
    )
    ok = all(v["ok"] for v in phases.values())
    ok = ok and all(v.get("stored") == events for k, v in phases.items() if k != "bare")
    return 0 if ok else 1


def _stored(url: str) -> int:
    from sqlalchemy import create_engine, text  # noqa: PLC0415

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            q = text("select count(*) from events where epoch = :e")
            return int(conn.execute(q, {"e": EPOCH}).scalar_one())
    finally:
        engine.dispose()


def _bare(spec: dict[str, Any]) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--role", "bare", "--spec", json.dumps(spec)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    return proc, 0


def _fleet(work: Path, broker: Broker, pki: Pki) -> Path:
    d = work / "fleet"
    provision.provision_fleet(
        d, "bench", "127.0.0.1", broker_port=broker.port, run_as_root=os.geteuid() == 0
    )
    shutil.copyfile(pki.ca_file, d / "ca.pem")
    for cn in (SERVER_CN, WORKER_2):
        cert = pki.client(cn)
        shutil.copyfile(cert.cert_file, d / "clients" / f"{cn}.pem")
        shutil.copyfile(cert.key_file, d / "clients" / f"{cn}-key.pem")
    with (d / "fleet.toml").open("a") as f:
        f.write("\n[http]\nsecure_cookies = false\n")
    return d


def _serve(
    work: Path, d: Path, url: str, client: str, name: str
) -> tuple[subprocess.Popen[bytes], int]:
    log_path = work / f"serve-{name}.log"
    port = free_port()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "locker.fleet.ctl",
                "serve",
                "--fleet",
                str(d),
                "--db",
                url,
                "--mqtt-client",
                client,
                "--http",
                f"127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    # the HTTP server starts after the worker's subscription is acknowledged
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1):
                return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(log_path.read_text()) from None
            time.sleep(0.05)


def _births(broker: Broker, pki: Pki, n: int) -> list[mqtt.Client]:
    """``n`` light lockers, each with its certificate, publish a retained birth and a
    12-compartment state and stay connected."""
    comps = [
        {"id": f"A{i}", "size": "M", "state": "free", "door": "closed", "in_service": True}
        for i in range(1, 13)
    ]
    clients = []
    for i in range(n):
        cn = f"FP-{i:03d}"
        cert = pki.client(cn)
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cn, protocol=mqtt.MQTTv5)
        c.tls_set(ca_certs=pki.ca_file, certfile=cert.cert_file, keyfile=cert.key_file)
        c.connect(broker.host, broker.port)
        c.loop_start()
        birth = {"v": 1, "online": True, "boot_id": "b", "version": "bench", "clock_synced": True}
        state = {"v": 1, "rev": 1, "epoch": "fp", "lockdown": False, "keypad_locked": False}
        state |= {"outbox_depth": 0, "last_seq": 0, "compartments": comps}
        c.publish(f"lockers/{cn}/status", json.dumps(birth), qos=1, retain=True)
        info = c.publish(f"lockers/{cn}/state", json.dumps(state), qos=1, retain=True)
        info.wait_for_publish(10)
        clients.append(c)
    return clients


def _get(url: str, opener: Any = None, headers: dict[str, str] | None = None) -> bytes:
    req = urllib.request.Request(url, headers=headers or {})
    with (opener or urllib.request.build_opener()).open(req, timeout=10) as r:
        body: bytes = r.read()
        return body


def _console_login(base: str, name: str, password: str) -> Any:
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    token = re.search(r'name="csrf" value="([^"]+)"', _get(base + "/login", opener).decode())
    assert token is not None
    form = {"name": name, "password": password, "csrf": token.group(1)}
    data = urllib.parse.urlencode(form).encode()
    opener.open(urllib.request.Request(base + "/login", data=data), timeout=10).read()
    return opener


def _timed(fn: Any, times: int = 20) -> list[float]:
    out = []
    for _ in range(times):
        t = time.monotonic()
        fn()
        out.append((time.monotonic() - t) * 1000)
    return out


def _fleet_page(broker: Broker, pki: Pki, d: Path, url: str, port: int, n: int) -> dict[str, Any]:
    """With ``n`` lockers online, time the console's fleet page and ``GET /api/v1/lockers``."""
    from locker.fleet.service import db, users  # noqa: PLC0415

    engine = db.make_engine(url)
    try:
        login = users.add_user(engine, provision.Fleet.load(d), "bench", "operator")
    finally:
        engine.dispose()
    clients = _births(broker, pki, n)
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {login.token}"}
    deadline = time.monotonic() + 120
    while True:
        docs = json.loads(_get(base + "/api/v1/lockers", headers=auth))
        online = sum(1 for x in docs if x["id"].startswith("FP-") and x["online"])
        if online == n:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {online} of {n} lockers online")
        time.sleep(0.2)
    opener = _console_login(base, "bench", login.password)
    assert b"FP-000" in _get(base + "/", opener), "the console page lists the lockers"
    console = _timed(lambda: _get(base + "/", opener))
    api = _timed(lambda: _get(base + "/api/v1/lockers", headers=auth))
    for c in clients:
        c.loop_stop()
        c.disconnect()
    return {
        "lockers": n,
        "console_ms_median": statistics.median(console),
        "console_ms_max": max(console),
        "api_ms_median": statistics.median(api),
        "api_ms_max": max(api),
    }


if __name__ == "__main__":
    sys.exit(main())
