"""``lockerctl serve`` and ``lockerctl user add|list|remove|reset`` (DESIGN 13), registered by
``register``.

``lockerctl`` calls :func:`register` with its sub-parser set; each command's ``func`` takes
``(args, out)`` and returns an exit status like lockerctl's own commands, printing its own
errors, with lockerctl's statuses (``locker.fleet.ctl_output``): 5 for a fleet directory or a
``fleet.toml`` that cannot be used, every error with its key path, or a user that exists
(refusing to overwrite); 6 for no such user; 2 for a bad flag, name or role. Database and
HTTP start failures raise ``errors.StorageError`` or ``errors.UnavailableError``, which
lockerctl's ``main`` reports (7, 69).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Engine

from locker.fleet.ctl_output import EXIT_CONFIG, EXIT_NOT_FOUND, EXIT_USAGE
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
        except users.UserExistsError as err:  # refusing to overwrite: 5, as for a fleet
            print(f"lockerctl: error: {err}", file=sys.stderr)
            return EXIT_CONFIG
        except users.UnknownUserError as err:
            print(f"lockerctl: error: {err}", file=sys.stderr)
            return EXIT_NOT_FOUND
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

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--fleet", required=True, type=Path, help="fleet directory")
        p.add_argument("--db", help="database URL (default: the fleet's)")
        p.add_argument("--json", action="store_true", help="print JSON")

    ls = user.add_parser("list", help="list users, their roles and live console sessions")
    common(ls)
    ls.set_defaults(func=_guard(cmd_user_list))
    rm = user.add_parser(
        "remove",
        help="delete a user: its sessions end and its API token stops working at once",
    )
    rm.add_argument("name")
    common(rm)
    rm.set_defaults(func=_guard(cmd_user_remove))
    reset = user.add_parser(
        "reset",
        help="a new password and/or API token (printed once); the old one stops working",
    )
    reset.add_argument("name")
    reset.add_argument("--password", action="store_true", help="a new password (ends sessions)")
    reset.add_argument("--token", action="store_true", help="a new API token (revokes the old)")
    common(reset)
    reset.set_defaults(func=_guard(cmd_user_reset))


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
    cfg, engine = _engine(args)
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
            f"signing key kid {new.name!r}: lockers added from now on trust it; each locker "
            f"added before needs {new.name} = the contents of keys/users/{new.name}.pub in "
            "its locker.toml's [security.command_keys] and a restart of lockerd, or it "
            "refuses this user's commands (unknown_kid)",
            file=out,
        )
    return 0


def _engine(args: argparse.Namespace) -> tuple[ServiceConfig, Engine]:
    cfg = _config(args)
    db.upgrade(cfg.db_url)
    return cfg, db.make_engine(cfg.db_url)


def cmd_user_list(args: argparse.Namespace, out: TextIO) -> int:
    cfg, engine = _engine(args)
    try:
        listed = users.list_users(engine, cfg.fleet.dir)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps({"users": [dataclasses.asdict(u) for u in listed]}), file=out)
        return 0
    if not listed:
        print("no users (lockerctl user add NAME --role ROLE --fleet DIR)", file=out)
    for u in listed:
        key = "" if u.has_key else "  (no signing key)"
        print(f"{u.name:<32} {u.role:<9} {u.sessions} session(s){key}", file=out)
    return 0


def cmd_user_remove(args: argparse.Namespace, out: TextIO) -> int:
    cfg, engine = _engine(args)
    try:
        ended = users.remove_user(engine, cfg.fleet.dir, args.name)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps({"name": args.name, "removed": True, "sessions_ended": ended}), file=out)
    else:
        print(
            f"user {args.name} removed: {ended} console session(s) ended, its API token no "
            "longer works, its signing key is deleted. Lockers still list its public key: "
            f"take {args.name} out of their security.command_keys",
            file=out,
        )
    return 0


def cmd_user_reset(args: argparse.Namespace, out: TextIO) -> int:
    _cfg, engine = _engine(args)
    try:
        new = users.reset_user(engine, args.name, password=args.password, token=args.token)
    finally:
        engine.dispose()
    if args.json:
        doc = {"name": new.name, "role": new.role}
        doc |= {"password": new.password} if args.password else {}
        doc |= {"token": new.token} if args.token else {}
        print(json.dumps(doc), file=out)
        return 0
    print(f"user {new.name} reset; shown once, store them now:", file=out)
    if args.password:
        print(f"password: {new.password}  (the old one no longer works; sessions ended)", file=out)
    if args.token:
        print(f"token:    {new.token}  (the old one no longer works)", file=out)
    return 0


def _redact(url: str) -> str:
    """The URL without a password."""
    head, at, tail = url.rpartition("@")
    if not at or "://" not in head:
        return url
    scheme, _sep, cred = head.partition("://")
    return f"{scheme}://{cred.split(':', 1)[0]}@{tail}"
