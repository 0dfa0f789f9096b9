"""Assembling and running the fleet service: ``lockerctl serve`` (DESIGN 13).

``FleetService`` wires the pieces: the database (migrated to head at start), one MQTT
connection (the ``[mqtt] client`` identity, persistent session), the ingest worker on the
shared subscription, the delivery worker, and the ASGI app (REST API, ``/metrics``, the web
console) served by uvicorn. ``run`` blocks until SIGTERM/SIGINT; workers keep no state of
their own beyond the database, so any number may run against one PostgreSQL, each with its
own MQTT identity.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from locker import errors, sdnotify
from locker.fleet.client import CommandSigner, FleetClient, TlsFiles, signer_for
from locker.fleet.connection import takeover_note
from locker.fleet.mosquitto import BACKEND_USER, OPERATOR_USER
from locker.fleet.provision import Fleet
from locker.fleet.service import api, console, db, delivery, retention
from locker.fleet.service.actions import Actions
from locker.fleet.service.alarms import Rules
from locker.fleet.service.certs import CertificateCollector, CertificateSweep
from locker.fleet.service.certs_live import LiveCertificates
from locker.fleet.service.config import ConfigError, ServiceConfig
from locker.fleet.service.housekeeping import Housekeeper
from locker.fleet.service.ingest import Ingest
from locker.fleet.service.live import Hub
from locker.fleet.service.metrics import (
    METRICS,
    ConnectionCollector,
    DbCollector,
    HealthCollector,
)
from locker.fleet.service.worker import IngestWorker

logger = logging.getLogger(__name__)

SESSION_EXPIRY_S = 3600


def rules_for(cfg: ServiceConfig) -> Rules:
    s = cfg.settings
    return Rules(
        outbox_growth=s.alarms.outbox_growth,
        offline_alarm_s=s.offline_alarm_s,
        gap_resync_s=s.gap_resync_s,
        reminder_before_s=s.notifications.reminder_before_s,
        routes=delivery.routes(s),
    )


def create_app(
    engine: Engine,
    actions: Actions,
    hub: Hub,
    *,
    secure_cookies: bool = True,
    health: Callable[[], dict[str, bool]] | None = None,
    collectors: Sequence[Collector] = (),
    mqtt: Callable[[], dict[str, Any]] | None = None,
) -> FastAPI:
    """The ASGI app: REST API under /api/v1, /metrics, /healthz, the console at /.

    ``health()`` answers ``{thread name: alive}`` for the process's worker threads:
    ``GET /healthz`` (no login, like /metrics, for a load balancer or systemd's watchdog
    script) is 200 ``{"status":"ok","threads":{...}}`` while every one runs and the database
    answers, else 503 ``{"status":"failing",...}``: a service whose ingest thread died must not
    look healthy while HTTP still answers. ``mqtt()`` adds the MQTT connection's note
    (``{"identity","connected","contested","takeovers"}``): a contested identity (another
    client on this process's ``--mqtt-client``) is said there without failing the check,
    since restarting cannot fix it.
    """
    app = FastAPI(
        title="Parcel locker fleet service",
        version="1",
        openapi_url="/api/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.engine = engine
    app.state.actions = actions
    app.state.hub = hub
    app.state.secure_cookies = secure_cookies
    api.install(app)
    registry = CollectorRegistry()
    registry.register(DbCollector(engine))
    threads = health or dict
    registry.register(HealthCollector(threads))
    for collector in collectors:
        registry.register(collector)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        body = METRICS.render() + generate_latest(registry)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> JSONResponse:
        alive = threads()
        try:
            with engine.connect() as conn:
                conn.execute(select(1))
            database = True
        except SQLAlchemyError as err:
            logger.warning("health check: the database does not answer (%s)", err)
            database = False
        ok = database and all(alive.values())
        doc = {"status": "ok" if ok else "failing", "threads": alive, "database": database}
        if mqtt is not None:
            doc["mqtt"] = mqtt()
        return JSONResponse(doc, status_code=200 if ok else 503)

    console.install(app)
    return app


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port`` (``port`` 0: any free port), for uvicorn.

    Bound here rather than by uvicorn, whose thread only logs a bind failure and exits, so the
    real cause reaches the caller.

    :raises errors.UnavailableError: the host does not resolve, or the address is in use or
        not this machine's (the message says which, from the OS).
    """
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as err:
        raise errors.UnavailableError(
            f"cannot listen on {host}:{port} for HTTP: {err.strerror or err}"
        ) from err


def check_ack_identity(fleet: Fleet, client: str) -> None:
    """The service acknowledges events, so its MQTT identity must be one the broker lets
    write ``{p}/+/ack``: not the operator identity (``lockerctl``: commands only,
    ``mosquitto.render_acl``), nor one the fleet's own ACL (``broker/acl``, when there is one)
    lists without that right. An identity the fleet's ACL does not list (a worker added to
    the installed broker's ACL by hand) is taken: only the broker knows.

    :raises ConfigError: naming ``[mqtt] client`` (``--mqtt-client``) and why (exit 5).
    """
    why = None
    if client == OPERATOR_USER:
        why = "the operator identity: the broker lets it send commands, not acknowledge events"
    else:
        acl = fleet.dir / "broker" / "acl"
        try:
            text = acl.read_text(encoding="utf-8")
        except OSError:
            text = ""
        writes = _acl_writes(text).get(client)
        if writes is not None and f"{fleet.topic_prefix}/+/ack" not in writes:
            ack = f"{fleet.topic_prefix}/+/ack"
            why = f"an identity the fleet's broker ACL ({acl.name}) gives no write on {ack}"
    if why is not None:
        raise ConfigError(
            "[mqtt] client (--mqtt-client)",
            [
                f"{client!r} is {why}; the service needs a server identity that may "
                f"(e.g. {BACKEND_USER!r}, or one made for this worker and listed among the "
                "broker ACL's server users)"
            ],
        )


def _acl_writes(text: str) -> dict[str, set[str]]:
    """``{user: topics it may write}`` of a Mosquitto ACL file's ``user`` blocks."""
    out: dict[str, set[str]] = {}
    user: str | None = None
    for raw in text.splitlines():
        words = raw.split()
        if len(words) == 2 and words[0] == "user":
            user = words[1]
            out.setdefault(user, set())
        elif len(words) == 3 and words[0] == "topic" and user is not None:
            if words[1] in ("write", "readwrite"):
                out[user].add(words[2])
        elif words and words[0] == "pattern":
            user = None
    return out


class FleetService:
    """Everything one ``lockerctl serve`` process runs; ``start``/``stop`` or ``run``."""

    def __init__(self, cfg: ServiceConfig, *, tls: bool = True) -> None:
        self.cfg = cfg
        fleet = cfg.fleet
        check_ack_identity(fleet, cfg.settings.mqtt.client)
        db.upgrade(cfg.db_url)
        self.engine = db.make_engine(cfg.db_url)
        m = cfg.settings.mqtt
        self.client = FleetClient.for_fleet(
            fleet,
            m.client,
            host=m.host,
            port=m.port,
            tls=tls,
            clean_start=False,
            session_expiry_s=SESSION_EXPIRY_S,
        )
        self.hub = Hub()
        self.ingest = Ingest(self.engine, fleet.topic_prefix, rules=rules_for(cfg))
        self.signer: CommandSigner = signer_for(fleet)
        self.worker = IngestWorker(
            self.client, self.ingest, self.signer, on_outcome=self.hub.publish
        )
        self.deliverer = delivery.Deliverer(self.engine, cfg.settings)
        self.actions = Actions(self.engine, fleet, self.client)
        live = LiveCertificates(
            fleet.dir,
            m.host or fleet.broker_host,
            m.port or fleet.broker_port,
            TlsFiles(fleet.ca_file, *fleet.client_cert(m.client)) if tls else None,
        )
        self.certs = CertificateSweep(self.engine, fleet, rules_for(cfg), live=live)
        days = cfg.settings.retention.days
        self.housekeeper = Housekeeper(
            [
                ("certificates", self.certs.sweep),
                ("retention", lambda: retention.prune(self.engine, days, time.time())),
            ]
        )
        self.app = create_app(
            self.engine,
            self.actions,
            self.hub,
            secure_cookies=cfg.settings.http.secure_cookies,
            health=self.health,
            collectors=[CertificateCollector(self.certs), ConnectionCollector(self.client.watch)],
            mqtt=self.mqtt_note,
        )
        host, port = cfg.listen
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                host=host,
                port=port,
                log_level="warning",
                timeout_graceful_shutdown=2,
                lifespan="off",
            )
        )
        self._http_thread: threading.Thread | None = None
        self._listener: socket.socket | None = None

    def start(self, timeout: float = 15.0) -> None:
        """Connect, start the workers and the HTTP server; on failure undo all of it.

        :raises locker.fleet.client.BrokerError: the broker cannot be reached.
        :raises errors.UnavailableError: the HTTP address cannot be listened on (why).
        :raises RuntimeError: the HTTP server did not start in time.
        """
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> None:
        self._listener = listen_socket(*self.cfg.listen)
        self.client.connect(timeout)
        self.worker.start()
        self.deliverer.start()
        self.housekeeper.start()
        self._http_thread = threading.Thread(
            target=self.server.run,
            kwargs={"sockets": [self._listener]},
            name="fleet-http",
            daemon=True,
        )
        self._http_thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._http_thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start (see its log above)")
            time.sleep(0.02)

    def mqtt_note(self) -> dict[str, Any]:
        """The MQTT connection for ``/healthz``: identity, connected, contested, takeovers."""
        w = self.client.watch
        doc: dict[str, Any] = {
            "identity": self.client.identity,
            "connected": self.client.connected,
            "contested": w.is_contested(time.monotonic()),
            "takeovers": w.takeovers,
        }
        if doc["contested"]:
            doc["note"] = takeover_note(self.client.identity, certain=True)
        return doc

    def health(self) -> dict[str, bool]:
        """``{thread: alive}`` of the workers this process runs (``GET /healthz``)."""
        return {
            "fleet-ingest": self.worker.alive,
            "fleet-delivery": self.deliverer.alive,
            "fleet-housekeeping": self.housekeeper.alive,
        }

    @property
    def port(self) -> int:
        sock = self.server.servers[0].sockets[0]
        return int(sock.getsockname()[1])

    def stop(self) -> None:
        # First answer the requests that wait for a locker (504, an assign's codes with it):
        # uvicorn's graceful shutdown (2 s) would otherwise cancel them without an answer.
        self.actions.close()
        self.hub.close()
        self.server.should_exit = True
        if self._http_thread is not None:
            self._http_thread.join(10)
        if self._listener is not None:
            self._listener.close()  # uvicorn closed it if it started; this is for when not
        self.worker.stop()
        self.deliverer.stop()
        self.housekeeper.stop()
        # a clean stop ends the session: the broker gives our share of the queue to the
        # live workers now (a worker that dies holds it until SESSION_EXPIRY_S)
        self.client.close(end_session=True)
        self.engine.dispose()

    def run(self, on_ready: Callable[[str], None] | None = None) -> None:
        """Start, call ``on_ready(url)``, then block until SIGTERM or SIGINT; stop cleanly.

        Under systemd (``Type=notify``, ``systemd/locker-fleet.service``) it sends READY=1
        once MQTT, the workers and HTTP are up, and WATCHDOG=1 every half ``WatchdogSec`` only
        while every worker thread runs (``health``): a service whose ingest or delivery thread
        died is restarted rather than left answering HTTP while lockers go unacknowledged. A
        database outage does not stop the pings (restarting cannot fix it; ``/healthz`` says
        it)."""
        done = threading.Event()

        def _on_signal(_sig: int, _frame: FrameType | None) -> None:
            sdnotify.stopping()
            done.set()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
        self.start()
        host, _ = self.cfg.listen
        url = f"http://{host}:{self.port}/"
        logger.info("fleet service on %s (API %sapi/v1)", url, url)
        if on_ready is not None:
            on_ready(url)
        sdnotify.ready()
        sdnotify.status(f"serving {url}")
        interval = sdnotify.watchdog_interval()
        while not done.wait(interval):
            dead = sorted(name for name, alive in self.health().items() if not alive)
            if dead:  # no ping: systemd restarts us within WatchdogSec
                logger.error("worker thread(s) not running: %s", ", ".join(dead))
                sdnotify.status(f"failing: {', '.join(dead)} not running")
            else:
                sdnotify.watchdog()
        self.stop()
