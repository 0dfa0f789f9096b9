"""Prometheus metrics of the fleet service (``GET /metrics``, prometheus-client).

Counters live in this process (``METRICS``); the fleet-wide gauges (lockers online, outbox
depth per locker, open alarms, ingest lag) are read from the database at scrape time by
:class:`DbCollector`, so every worker reports the same fleet picture.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from locker.fleet.connection import ConnectionWatch
from locker.fleet.service.db import alarms, events, lockers

INGEST_ERROR_REASONS = ("rejected", "invalid", "dropped", "database", "worker")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_ingested = Counter("fleet_events_ingested", "New events stored", registry=r)
        self.duplicates = Counter(
            "fleet_event_duplicates", "Events received again and dropped", registry=r
        )
        self.ingest_errors = Counter(
            "fleet_ingest_errors",
            "Ingest failures by reason: rejected (a message that breaks the contract, not"
            " stored), invalid (an event whose body breaks the contract, held as an"
            " invalid_event placeholder so its stream goes on), dropped (one message the"
            " store failed on), database (a batch the database refused, not acked), worker"
            " (an unexpected fault of the ingest loop)",
            ["reason"],
            registry=r,
        )
        for reason in INGEST_ERROR_REASONS:  # every series from 0, so a rate() sees the first
            self.ingest_errors.labels(reason)
        self.gap_resyncs = Counter(
            "fleet_gap_resyncs",
            "resync commands sent for a mid-stream gap that lasted gap_resync_s",
            registry=r,
        )
        self.ingest_batch_seconds = Histogram(
            "fleet_ingest_batch_seconds", "Time to store one batch", registry=r
        )
        self.command_seconds = Histogram(
            "fleet_command_round_trip_seconds",
            "Signed command to the locker's reply",
            ["action"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = Metrics()


class DbCollector(Collector):
    """Gauges read from the database at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.engine.connect() as conn:
            online = conn.execute(
                select(func.count()).select_from(lockers).where(lockers.c.online.is_(True))
            ).scalar_one()
            depth = conn.execute(select(lockers.c.id, lockers.c.outbox_depth)).all()
            open_alarms = conn.execute(
                select(func.count()).select_from(alarms).where(alarms.c.state == "open")
            ).scalar_one()
            last = conn.execute(select(func.max(events.c.received_at))).scalar()
        yield GaugeMetricFamily("fleet_lockers_online", "Lockers online", value=online)
        g = GaugeMetricFamily(
            "fleet_locker_outbox_depth", "Events waiting in a locker", labels=["locker"]
        )
        for row in depth:
            if row.outbox_depth is not None:
                g.add_metric([row.id], row.outbox_depth)
        yield g
        yield GaugeMetricFamily("fleet_open_alarms", "Open alarms", value=open_alarms)
        lag = 0.0 if last is None else max(0.0, time.time() - last)
        yield GaugeMetricFamily(
            "fleet_seconds_since_last_event", "Ingest lag: time since the last new event", value=lag
        )


class HealthCollector(Collector):
    """``fleet_thread_alive{thread}``: 1 while each of this process's worker threads runs
    (``health()`` answers ``{name: alive}``), so an alert can name the dead one."""

    def __init__(self, health: Callable[[], dict[str, bool]]) -> None:
        self.health = health

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily(
            "fleet_thread_alive", "1 while this worker thread runs", labels=["thread"]
        )
        for name, alive in sorted(self.health().items()):
            g.add_metric([name], 1.0 if alive else 0.0)
        yield g


class ConnectionCollector(Collector):
    """The MQTT connection of this process (:class:`locker.fleet.connection.ConnectionWatch`):
    ``fleet_mqtt_takeovers_total`` (connections lost to another client on the same identity),
    ``fleet_mqtt_disconnects_total`` and ``fleet_mqtt_identity_contested`` (1 during a
    takeover episode): two workers on one ``--mqtt-client`` show here."""

    def __init__(self, watch: ConnectionWatch) -> None:
        self.watch = watch

    def collect(self) -> Iterator[Metric]:
        w = self.watch
        yield CounterMetricFamily(
            "fleet_mqtt_takeovers", "Connections lost to another client of the same identity",
            value=w.takeovers,
        )  # fmt: skip
        yield CounterMetricFamily(
            "fleet_mqtt_disconnects", "Connections to the broker lost", value=w.drops
        )
        yield GaugeMetricFamily(
            "fleet_mqtt_identity_contested",
            "1 while another client takes this process's MQTT identity over",
            value=1.0 if w.is_contested(time.monotonic()) else 0.0,
        )
