"""``lockerctl serve`` and ``lockerctl user add`` (DESIGN 13), registered by ``register``.

``lockerctl`` calls :func:`register` with its sub-parser set; each command's ``func`` takes
``(args, out)`` and returns an exit status like lockerctl's own commands, printing its own
errors, with lockerctl's statuses (``locker.fleet.ctl_output``): 5 for a fleet directory or a
``fleet.toml`` that cannot be used, every error with its key path; 2 for a bad flag or a user
that cannot be created. Database and HTTP start failures raise ``errors.StorageError`` or
``errors.UnavailableError``, which lockerctl's ``main`` reports (7, 69).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from locker.fleet.ctl_output import EXIT_CONFIG, EXIT_USAGE
from locker.fleet.service import db, users
from locker.fleet.service.config import ConfigError, ServiceConfig


def _guard(func: Callable[[argparse.Namespace, TextIO], int]) -> Callable[..., int]:
    def run(args: argparse.Namespace, out: TextIO) -> int:
        try:
            return func(args, out)
        except ConfigError as err:
            for line in err.errors:
                print(f"lockerctl: error: {line}", file=sys.stderr)
            return EXIT_USAGE if err.source == "command line" else EXIT_CONFIG
        except users.UserError as err:
            print(f"lockerctl: error: {err}", file=sys.stderr)
            return EXIT_USAGE

    return run


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the fleet service (ingest, REST API, console, alarms)",
        description="Run the central server of the MQTT contract. Flags override DIR/fleet.toml.",
    )
    serve.add_argument("--fleet", required=True, type=Path, help="fleet directory")
    serve.add_argument("--db", help="database URL (default: SQLite fleet.db in the fleet dir)")
    serve.add_argument("--http", help="HOST:PORT to serve the API and console on")
    serve.add_argument(
        "--mqtt-client",
        help="server identity (clients/NAME.pem = MQTT client id); one per worker",
    )
    serve.add_argument("--no-tls", action="store_true", help="plain MQTT (development brokers)")
    serve.set_defaults(func=_guard(cmd_serve))

    user = sub.add_parser("user", help="fleet service users").add_subparsers(
        dest="sub", required=True
    )
    add = user.add_parser(
        "add",
        help="create a user; prints the password and API token once",
    )
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=users.ROLES)
    add.add_argument("--fleet", required=True, type=Path, help="fleet directory")
    add.add_argument("--db", help="database URL (default: the fleet's)")
    add.add_argument("--json", action="store_true", help="print one JSON document")
    add.set_defaults(func=_guard(cmd_user_add))


def _config(args: argparse.Namespace, **extra: Any) -> ServiceConfig:
    return ServiceConfig.load(args.fleet, db=args.db, **extra)


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    from locker.fleet.service.app import FleetService  # noqa: PLC0415 - web stack only to serve

    cfg = _config(args, http=args.http, mqtt_client=args.mqtt_client)
    logging.getLogger("locker.fleet.service").setLevel(logging.INFO)
    service = FleetService(cfg, tls=not args.no_tls)
    print(f"fleet service: database {_redact(cfg.db_url)}", file=out, flush=True)

    def ready(url: str) -> None:
        print(
            f"fleet service: console and API on {url} (OpenAPI {url}api/v1/openapi.json)",
            file=out,
            flush=True,
        )

    service.run(ready)
    return 0


def cmd_user_add(args: argparse.Namespace, out: TextIO) -> int:
    cfg = _config(args)
    db.upgrade(cfg.db_url)
    engine = db.make_engine(cfg.db_url)
    try:
        new = users.add_user(engine, cfg.fleet, args.name, args.role)
    finally:
        engine.dispose()
    if args.json:
        doc = {"name": new.name, "role": new.role, "password": new.password, "token": new.token}
        print(json.dumps(doc), file=out)
    else:
        print(f"user {new.name} ({new.role}) created; shown once, store them now:", file=out)
        print(f"password: {new.password}", file=out)
        print(f"token:    {new.token}", file=out)
        print(
            f"signing key kid {new.name!r}: provision lockers again (or add keys/users/"
            f"{new.name}.pub to their security.command_keys) before this user sends commands",
            file=out,
        )
    return 0


def _redact(url: str) -> str:
    """The URL without a password."""
    head, at, tail = url.rpartition("@")
    if not at or "://" not in head:
        return url
    scheme, _sep, cred = head.partition("://")
    return f"{scheme}://{cred.split(':', 1)[0]}@{tail}"
