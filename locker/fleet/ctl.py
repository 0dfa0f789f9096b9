"""``lockerctl``: the operator and backend toolkit (DESIGN section 9).

Command-line front end over ``locker.fleet.provision`` (fleet and locker provisioning) and
``locker.fleet.client`` (the server side of the MQTT contract). It prints codes and QR tokens to the
operator's terminal on purpose, and never private keys. This module holds the argument parsers,
the registration hook (``SUBCOMMANDS``), the provisioning handlers and ``main``; the handlers that
talk to lockers are in ``ctl_ops``, the output and exit statuses in ``ctl_output``, the argument
types (every number and text judged at parse time, exit 2) in ``ctl_args``. It stays a
little above 500 lines because every subcommand's parser is declared here, in one place.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO, TypeVar, get_args

from locker import errors
from locker.config.fields import PinFactoryName, Size
from locker.contract.actions import (
    ACTION_SUMMARY,
    LONG_LIFETIME_S,
    Action,
    arg_fields,
    usage_line,
)
from locker.contract.credentials import CODE_MAX_DIGITS, CODE_MIN_DIGITS
from locker.fleet import certs, ctl_args, provision
from locker.fleet import client as fleet
from locker.fleet.ctl_ops import (
    TOKEN_ACTIONS,
    UsageError,
    cmd_code_new,
    cmd_parcel_issue,
    cmd_send,
    cmd_token_mint,
    cmd_watch,
)
from locker.fleet.ctl_output import (
    EXIT_BROKER,
    EXIT_CODES_HELP,
    EXIT_CONFIG,
    EXIT_FILE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_PROVISION,
    EXIT_REFUSED,
    EXIT_TIMEOUT,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    Output,
    describe_os_error,
    exit_status,
)
from locker.fleet.pki import SERVER_DAYS

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

__all__ = [
    "EXIT_BROKER",
    "EXIT_CODES_HELP",
    "EXIT_CONFIG",
    "EXIT_FILE",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_PROVISION",
    "EXIT_REFUSED",
    "EXIT_TIMEOUT",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "SUBCOMMANDS",
    "TOKEN_ACTIONS",
    "Output",
    "UsageError",
    "build_parser",
    "exit_status",
    "main",
]

# --- argument parsing -----------------------------------------------------------------------


def _key_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _spec(parse: Callable[[str], _T]) -> Callable[[str], _T]:
    """An argparse ``type`` from a spec parser: its ProvisionError becomes a usage error."""

    def convert(text: str) -> _T:
        try:
            return parse(text)
        except provision.ProvisionError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return convert


def _broker(text: str) -> tuple[str, int | None]:
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, None
    if not (port.isascii() and port.isdigit()) or not host:
        raise argparse.ArgumentTypeError(f"expected HOST or HOST:PORT, got {text!r}")
    return host, ctl_args.PORT(port)


_DIGITS = ctl_args.integer(CODE_MIN_DIGITS, CODE_MAX_DIGITS, "digits")
_DIGITS_HELP = (
    f"code length ({CODE_MIN_DIGITS}-{CODE_MAX_DIGITS}); default and only accepted value: "
    "the locker's security.code_length "
    "(its locker.toml in the fleet directory; 8 when not set)"
)


def _add_connection(p: argparse.ArgumentParser, default_user: str) -> None:
    p.add_argument("--fleet", required=True, type=Path, help="fleet directory")
    p.add_argument(
        "--broker", type=_broker, help="HOST[:PORT] overriding the fleet's broker (tests, tunnels)"
    )
    p.add_argument(
        "--as",
        dest="user",
        default=default_user,
        help=f"server identity to connect as (clients/<USER>.pem; default {default_user})",
    )
    p.add_argument(
        "--no-tls", action="store_true", help="plain MQTT without certificates (development only)"
    )
    p.add_argument(
        "--timeout",
        type=ctl_args.TIMEOUT,
        default=10.0,
        help=f"seconds to wait for the broker and the reply (at most {ctl_args.MAX_WAIT_S:.0f})",
    )


def _add_fleet(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("fleet", help="create or show a fleet").add_subparsers(
        dest="sub", required=True
    )
    init = p.add_parser(
        "init", help="create CA, broker certificate/config/ACL, server identities, signing keys"
    )
    init.add_argument("dir", type=Path)
    init.add_argument("--broker-host", required=True, help="host name the lockers connect to")
    init.add_argument("--broker-port", type=ctl_args.PORT, default=8883)
    init.add_argument(
        "--broker-ip",
        action="append",
        default=[],
        help="another IP address for the broker certificate (repeatable; a --broker-host that "
        "is an IP address is in it already)",
    )
    init.add_argument("--name", default="fleet", help="fleet name (CA common name)")
    init.add_argument("--topic-prefix", default="lockers")
    init.add_argument("--command-kid", default="ops1")
    init.add_argument("--token-kid", type=ctl_args.integer(0, 255), default=1)
    init.add_argument("--broker-bind", help="listener address (default: every interface)")
    init.add_argument("--run-as-root", action="store_true", help="broker config with 'user root'")
    init.add_argument(
        "--broker-user",
        help="who Mosquitto becomes when started as root (default: you, the owner of the files)",
    )
    init.add_argument(
        "--broker-install-dir", help="where the broker files will live on the broker host"
    )
    init.set_defaults(func=cmd_fleet_init)
    show = p.add_parser("show", help="print the fleet's settings and public keys")
    show.add_argument("dir", type=Path)
    show.set_defaults(func=cmd_fleet_show)
    certs = p.add_parser(
        "certs",
        help="every certificate of the fleet directory and when it ends",
        description="The CA, the broker's, the server identities' and every locker's "
        "certificate with its end; those ending within 30 days are marked RENEW.",
    )
    certs.add_argument("dir", type=Path)
    certs.set_defaults(func=cmd_fleet_certs)
    renew = p.add_parser(
        "renew",
        help="new certificates for the broker and the server identities (lockerctl, serve)",
        description="New keys and certificates for the broker (same host names and addresses) "
        "and for every server identity in clients/; the old ones stay valid until they end. "
        "Then restart the broker and lockerctl serve (copy broker/ first if it lives elsewhere).",
    )
    renew.add_argument("dir", type=Path)
    renew.add_argument(
        "--days",
        type=ctl_args.CERT_DAYS,
        default=SERVER_DAYS,
        help=f"the broker's certificate's validity (default {SERVER_DAYS})",
    )
    renew.add_argument(
        "--client-days",
        type=ctl_args.CERT_DAYS,
        default=provision.CLIENT_DAYS,
        help=f"the server identities' validity (default {provision.CLIENT_DAYS})",
    )
    renew.set_defaults(func=cmd_fleet_renew)


def _add_locker(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("locker", help="provision lockers").add_subparsers(dest="sub", required=True)
    add = p.add_parser(
        "add",
        help="client certificate, device key and config for one locker",
        description="Compartments: ID:SIZE:LOCK_PIN:DOOR_PIN (GPIO) or ID:SIZE:BOARD:CHANNEL. "
        "Boards: NAME=PORT[@ADDRESS]. The config is checked by lockerd's own rules first: if "
        "lockerd would refuse it, nothing is written (no key, no certificate).",
    )
    add.add_argument("dir", type=Path, help="fleet directory")
    add.add_argument("locker_id")
    add.add_argument(
        "--compartments",
        required=True,
        action="append",
        help="comma-separated compartment specs (repeatable)",
    )
    add.add_argument(
        "--board", action="append", default=[], help="a lock-control board (repeatable)"
    )
    add.add_argument(
        "--install-dir", help="where the files will live on the locker (e.g. /etc/locker)"
    )
    add.add_argument("--state-dir", help="state directory in the config")
    add.add_argument("--pin-factory", default="lgpio", choices=list(get_args(PinFactoryName)))
    add.add_argument(
        "--keypad",
        type=_spec(provision.KeypadSpec.parse),
        help="serial:PORT[@BAUD], matrix:R,R,R,R:C,C,C[,C] (GPIO pins) or none",
    )
    add.add_argument(
        "--scanner", type=_spec(provision.ScannerSpec.parse), help="QR scanner: PORT[@BAUD] or none"
    )
    add.set_defaults(func=cmd_locker_add)
    for name, what in (
        ("remove", "revoke a locker's certificates and delete its files (the id can be reused)"),
        ("revoke", "put every certificate of a locker on the fleet's CRL (restart the broker)"),
        ("renew", "a new key and certificate for a locker, before the old one expires"),
    ):
        cmd = p.add_parser(name, help=what, description=what)
        cmd.add_argument("dir", type=Path, help="fleet directory")
        cmd.add_argument("locker_id")
        if name == "renew":
            cmd.add_argument("--days", type=ctl_args.CERT_DAYS, default=provision.CLIENT_DAYS)
        cmd.set_defaults(func=cmd_locker_lifecycle)
    ls = p.add_parser("list", help="list provisioned lockers")
    ls.add_argument("dir", type=Path, help="fleet directory")
    ls.set_defaults(func=cmd_locker_list)


def _add_keys(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("keys", help="public keys").add_subparsers(dest="sub", required=True)
    show = p.add_parser("show", help="the public keys in the locker config encoding")
    show.add_argument("dir", type=Path, help="fleet directory")
    show.set_defaults(func=cmd_fleet_show)


def _add_parcel(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("parcel", help="announce parcels").add_subparsers(dest="sub", required=True)
    issue = p.add_parser(
        "issue",
        help="generate codes, send a signed assign, print the codes and the customer's QR",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_connection(issue, "lockerctl")
    issue.add_argument("--locker", required=True)
    issue.add_argument("--parcel", required=True)
    issue.add_argument("--size", required=True, choices=list(get_args(Size)))
    issue.add_argument("--kind", default="delivery", choices=["delivery", "return"])
    issue.add_argument("--compartment", help="exactly this compartment (default: best fit)")
    issue.add_argument(
        "--accessible",
        action="store_true",
        help="ask for a compartment within reach of a wheelchair user",
    )
    issue.add_argument("--digits", type=_DIGITS, help=_DIGITS_HELP)
    issue.add_argument("--dropoff-hours", type=ctl_args.HOURS, default=fleet.DEFAULT_DROPOFF_HOURS)
    issue.add_argument(
        "--pickup-hours", type=ctl_args.PICKUP_HOURS, default=fleet.DEFAULT_PICKUP_HOURS
    )
    issue.add_argument("--qr-png", type=Path, help="also write the QR code as PNG")
    issue.add_argument("--qr-svg", type=Path, help="also write the QR code as SVG")
    issue.add_argument(
        "--no-qr", action="store_true", help="do not draw the QR code in the terminal"
    )
    issue.set_defaults(func=cmd_parcel_issue)


def _actions_help() -> str:
    """Every action with its arguments, read from the models in locker.contract.actions."""
    lines = ["actions and their arguments (--arg NAME=VALUE; [optional]):"]
    for action in Action:
        lines.append(f"  {usage_line(action)}")
        lines.append(f"      {ACTION_SUMMARY[action].replace('``', '')}")
        lines.extend(
            f"      {f.name}: {f.help}" for f in arg_fields(action) if f.help and f.kind != "text"
        )
    return "\n".join(lines)


SEND_NOTE = """delivery: the command is published once (QoS 1, not retained) on {prefix}/LOCKER/cmd.
The broker keeps it for a locker that is offline only if that locker has a session there,
i.e. it has connected before and not longer ago than its session expiry (7 days by
default); it then runs when the locker reconnects, unless its signed lifetime (--ttl) ended
first. A locker that has never connected has no session: the command is lost, and this
command times out (status 4). Only lockers provisioned in the fleet directory are accepted.
"""


def _add_cmd(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("cmd", help="signed commands").add_subparsers(dest="sub", required=True)
    send = p.add_parser(
        "send",
        help="sign and send one command, print the reply",
        description="Sign one command (DESIGN section 5) and wait for the locker's reply.",
        epilog=f"{_actions_help()}\n\n{SEND_NOTE}\n{EXIT_CODES_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_connection(send, "lockerctl")
    send.add_argument("--locker", required=True)
    send.add_argument("action", choices=[a.value for a in Action])
    send.add_argument("--arg", type=_key_value, action="append", default=[], metavar="NAME=VALUE")
    send.add_argument(
        "--ttl",
        type=ctl_args.integer(1, LONG_LIFETIME_S, "s"),
        help="signed lifetime in seconds (exp - iat)",
    )
    send.add_argument(
        "--new-code",
        action="store_true",
        help="retrieve: generate the courier code, send its tag as code_tag, print the code",
    )
    send.set_defaults(func=cmd_send)


def _add_token(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("token", help="QR tokens").add_subparsers(dest="sub", required=True)
    mint = p.add_parser("mint", help="mint an LK1 token with the fleet's token key and print it")
    mint.add_argument("--fleet", required=True, type=Path)
    mint.add_argument("--locker", required=True)
    mint.add_argument("--parcel", required=True)
    mint.add_argument("--action", default="pickup", choices=list(TOKEN_ACTIONS))
    mint.add_argument(
        "--hours",
        type=ctl_args.HOURS,
        default=fleet.DEFAULT_PICKUP_HOURS,
        help="validity from not-before",
    )
    mint.add_argument("--not-before", type=ctl_args.UNIX_TIME, help="Unix seconds (default: now)")
    mint.add_argument("--png", type=Path, help="also write the QR code as PNG")
    mint.add_argument("--svg", type=Path, help="also write the QR code as SVG")
    mint.add_argument("--qr", action="store_true", help="also draw the QR code in the terminal")
    mint.set_defaults(func=cmd_token_mint)


def _add_code(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("code", help="keypad codes").add_subparsers(dest="sub", required=True)
    new = p.add_parser("new", help="generate a code and print it with its tag for one locker")
    new.add_argument("--fleet", required=True, type=Path)
    new.add_argument("--locker", required=True)
    new.add_argument("--digits", type=_DIGITS, help=_DIGITS_HELP)
    new.set_defaults(func=cmd_code_new)


def _add_watch(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    w = sub.add_parser(
        "watch",
        help="watch lockers live: status, occupancy, events (acknowledged durably)",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_connection(w, provision.BACKEND_USER)
    w.add_argument("--locker", help="only this locker")
    w.add_argument("--no-ack", action="store_true", help="observe only: never acknowledge events")
    w.add_argument("--log-dir", type=Path, help="event log directory (default FLEET/events)")
    w.add_argument("--duration", type=ctl_args.DURATION, help="stop after this many seconds")
    w.set_defaults(func=cmd_watch)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _add_fleet,
    _add_locker,
    _add_keys,
    _add_parcel,
    _add_cmd,
    _add_token,
    _add_code,
    _add_watch,
]
"""The registration hook: each function adds one top-level subcommand (with its own
subcommands) whose handlers take ``(args, out: Output)`` and return an exit status. Every leaf
gets ``--json`` automatically."""


def _leaves(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [parser]
    return [leaf for s in subs for p in dict.fromkeys(s.choices.values()) for leaf in _leaves(p)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lockerctl",
        description="Parcel-locker operator and backend toolkit: provision a fleet, issue "
        "parcels, send signed commands, watch lockers.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    _add_service(sub)
    for leaf in _leaves(parser):
        for action in leaf._actions:
            if action.nargs != 0 and not isinstance(action, argparse._SubParsersAction):
                action.type = ctl_args.utf8(action.type or str)  # type: ignore[arg-type]
        if "--json" not in leaf._option_string_actions:
            leaf.add_argument(
                "--json",
                action="store_true",
                help="print one JSON document (JSON lines for watch) and nothing else on stdout",
            )
    return parser


def _add_service(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``serve`` and ``user``: the fleet service, present when its extra is installed."""
    try:
        from locker.fleet.service import cli  # noqa: PLC0415 - needs the [fleet] extra
    except ImportError as err:
        logger.debug("fleet service commands unavailable: %s", err)
        return
    cli.register(sub)


# --- commands -------------------------------------------------------------------------------


def _note(line: str) -> None:
    """What a command did besides its job (e.g. removing an interrupted run's leftovers): on
    stderr, so ``--json`` output stays one document."""
    print(f"lockerctl: {line}", file=sys.stderr)


def cmd_fleet_init(args: argparse.Namespace, out: Output) -> int:
    f = provision.provision_fleet(
        args.dir,
        args.name,
        args.broker_host,
        broker_port=args.broker_port,
        broker_ips=args.broker_ip,
        topic_prefix=args.topic_prefix,
        command_kid=args.command_kid,
        token_kid=args.token_kid,
        run_as_root=args.run_as_root,
        broker_user=args.broker_user,
        broker_install_dir=args.broker_install_dir,
        broker_bind=args.broker_bind,
        report=_note,
    )
    broker_conf = f.dir / "broker" / "mosquitto.conf"
    out.put(fleet=f.name, dir=str(f.dir), broker_config=str(broker_conf))
    out.say(f"fleet {f.name} created in {f.dir}")
    out.say(f"broker config: {broker_conf}")
    out.say(
        "private keys (mode 0600): ca-key.pem, broker/server-key.pem, clients/*-key.pem, "
        f"keys/*.key; start the broker with: mosquitto -c {broker_conf}"
    )
    return EXIT_OK


def cmd_fleet_show(args: argparse.Namespace, out: Output) -> int:
    f = provision.Fleet.load(args.dir)
    command_key = provision.encode_public_key(f.command_key())
    token_key = provision.encode_public_key(f.token_key())
    out.put(
        fleet=f.name,
        broker={"host": f.broker_host, "port": f.broker_port},
        topic_prefix=f.topic_prefix,
        command_keys={f.command_kid: command_key},
        token_keys={str(f.token_kid): token_key},
        lockers=f.lockers(),
    )
    out.say(f"fleet {f.name}: broker {f.broker_host}:{f.broker_port}, prefix {f.topic_prefix}")
    out.say(f'command_keys = {{ {f.command_kid} = "{command_key}" }}')
    out.say(f'token_keys = {{ "{f.token_kid}" = "{token_key}" }}')
    out.say(f"lockers: {', '.join(f.lockers()) or '(none)'}")
    return EXIT_OK


def cmd_fleet_certs(args: argparse.Namespace, out: Output) -> int:
    f = provision.Fleet.load(args.dir)
    now = dt.datetime.now(dt.UTC)
    rows = []
    for c in certs.inventory(f):
        end = None if c.not_after is None else f"{c.not_after:%Y-%m-%dT%H:%M:%S}Z"
        message = c.message(now)
        rows.append({"owner": c.owner, "file": c.name, "not_after": end, "renew": message})
        mark = "RENEW" if message else ("-" if c.missing else "ok")
        out.say(f"{mark:<6}{c.owner:<16} {c.name:<40} {end or c.problem}")
        if message:
            out.say(f"      {message}")
    out.put(certificates=rows, due=sum(1 for r in rows if r["renew"]))
    return EXIT_OK


def cmd_fleet_renew(args: argparse.Namespace, out: Output) -> int:
    f = provision.Fleet.load(args.dir)
    done = certs.renew_fleet(f, args.days, args.client_days)
    out.put(renewed=done.renewed, skipped=done.skipped)
    for name in done.renewed:
        out.say(f"renewed {name}")
    for line in done.skipped:
        out.say(f"skipped {line}")
    out.say(
        "copy broker/ to the broker host if its files live elsewhere, and clients/ to every "
        "server's copy of this directory; restart the broker and every lockerctl serve: until "
        "then they use the old certificates (valid until they end), and the alarm stays"
    )
    return EXIT_OK


def cmd_locker_add(args: argparse.Namespace, out: Output) -> int:
    specs = [
        provision.CompartmentSpec.parse(item)
        for group in args.compartments
        for item in group.split(",")
        if item.strip()
    ]
    boards = [provision.BoardSpec.parse(b) for b in args.board]
    files = provision.provision_locker(
        args.dir,
        args.locker_id,
        specs,
        boards,
        keypad=args.keypad,
        scanner=args.scanner,
        install_dir=args.install_dir,
        state_dir=args.state_dir,
        pin_factory=args.pin_factory,
        report=_note,
    )
    for warning in files.warnings:
        print(f"lockerctl: warning: {warning}", file=sys.stderr)
    out.put(
        locker=args.locker_id,
        dir=str(files.dir),
        config=str(files.config),
        warnings=list(files.warnings),
    )
    print(f"locker {args.locker_id} provisioned in {files.dir}", file=out)
    print(f"config: {files.config}", file=out)
    print(
        "copy to the locker: locker.toml, ca.pem, device.pem, device-key.pem, device.key "
        "(systemd/install.sh's layout: /etc/locker, keys root:locker 0640)",
        file=out,
    )
    return EXIT_OK


def cmd_locker_lifecycle(args: argparse.Namespace, out: Output) -> int:
    who = args.locker_id
    if args.sub == "renew":
        until = provision.renew_locker(args.dir, who, args.days)
        out.put(locker=who, action="renew", certificate_valid_until=f"{until:%Y-%m-%dT%H:%M:%S}Z")
        out.say(f"locker {who}: new certificate valid until {until:%Y-%m-%d %H:%M}Z")
        out.say("copy device.pem and device-key.pem to the locker and restart lockerd")
        return EXIT_OK
    serials = (provision.remove_locker if args.sub == "remove" else provision.revoke_locker)(
        args.dir, who
    )
    out.put(locker=who, action=args.sub, revoked_certificates=len(serials))
    out.say(f"locker {who}: {len(serials)} certificate(s) revoked")
    if args.sub == "remove":
        out.say(f"locker {who}: files removed")
    out.say("restart the broker so it loads broker/crl.pem (copy it there first)")
    return EXIT_OK


def cmd_locker_list(args: argparse.Namespace, out: Output) -> int:
    lockers = provision.Fleet.load(args.dir).lockers()
    out.put(lockers=lockers)
    for locker_id in lockers:
        out.say(locker_id)
    return EXIT_OK


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run lockerctl; returns the exit status (never raises SystemExit itself)."""
    stream = out or sys.stdout
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2)
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="lockerctl: %(levelname)s %(name)s: %(message)s",
    )
    output = Output(stream, as_json=getattr(args, "json", False))
    func: Callable[[argparse.Namespace, Output], int] = args.func
    try:
        status = func(args, output)
    except errors.LockerError as err:
        status = exit_status(err)
        print(f"lockerctl: error: {err}", file=sys.stderr)
        output.finish(status, err)
        return status
    except OSError as err:  # a path that cannot be created, read or written: one line, no bug
        failed = errors.StorageError(describe_os_error(err))
        print(f"lockerctl: error: {failed}", file=sys.stderr)
        output.finish(EXIT_FILE, failed)
        return EXIT_FILE
    except KeyboardInterrupt as err:  # Ctrl-C: what was begun has been undone by its command
        print("lockerctl: interrupted", file=sys.stderr)
        output.finish(EXIT_INTERRUPTED, err)
        return EXIT_INTERRUPTED
    except Exception as err:  # a bug: say so, with the traceback, and a status of its own
        traceback.print_exc()
        output.finish(EXIT_INTERNAL, err)
        return EXIT_INTERNAL
    output.finish(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
