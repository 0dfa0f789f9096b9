"""``lockerctl``: the operator and backend toolkit (DESIGN section 9).

Command-line front end over ``locker.fleet.provision`` (fleet and locker provisioning) and
``locker.fleet.client`` (the server side of the MQTT contract). It prints codes and QR tokens to the
operator's terminal on purpose, and never private keys.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO, TypeVar, get_args

from locker.config.fields import PinFactoryName, Size
from locker.contract import credentials
from locker.contract.actions import Action
from locker.fleet import client as fleet
from locker.fleet import provision, qr

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_BROKER = 3
EXIT_TIMEOUT = 4
EXIT_PROVISION = 5

EXIT_CODES_HELP = f"""exit status:
  {EXIT_OK}  success
  {EXIT_REFUSED}  the locker refused or failed the command (rejected, failed, expired)
  {EXIT_USAGE}  bad usage or arguments
  {EXIT_BROKER}  cannot reach or authenticate with the MQTT broker
  {EXIT_TIMEOUT}  no reply from the locker in time (the command stays queued until it expires)
  {EXIT_PROVISION}  fleet directory or provisioning error (missing files, refusing to overwrite)
"""

TOKEN_ACTIONS = {
    "pickup": credentials.TokenAction.PICKUP,
    "dropoff": credentials.TokenAction.DROPOFF,
    "retrieve": credentials.TokenAction.RETRIEVE,
}


class UsageError(Exception):
    """Arguments that parse but make no sense."""


def _utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


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
    if not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"expected HOST or HOST:PORT, got {text!r}")
    return host, int(port)


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
        "--timeout", type=float, default=10.0, help="seconds to wait for the broker and the reply"
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
    init.add_argument("--broker-port", type=int, default=8883)
    init.add_argument(
        "--broker-ip", action="append", default=[], help="IP address for the broker certificate SAN"
    )
    init.add_argument("--name", default="fleet", help="fleet name (CA common name)")
    init.add_argument("--topic-prefix", default="lockers")
    init.add_argument("--command-kid", default="ops1")
    init.add_argument("--token-kid", type=int, default=1)
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
            cmd.add_argument("--days", type=int, default=provision.CLIENT_DAYS)
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
    issue.add_argument("--digits", type=int, default=8, help="code length (6-16)")
    issue.add_argument("--dropoff-hours", type=float, default=fleet.DEFAULT_DROPOFF_HOURS)
    issue.add_argument("--pickup-hours", type=int, default=fleet.DEFAULT_PICKUP_HOURS)
    issue.add_argument("--qr-png", type=Path, help="also write the QR code as PNG")
    issue.add_argument("--qr-svg", type=Path, help="also write the QR code as SVG")
    issue.add_argument(
        "--no-qr", action="store_true", help="do not draw the QR code in the terminal"
    )
    issue.set_defaults(func=cmd_parcel_issue)


def _add_cmd(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("cmd", help="signed commands").add_subparsers(dest="sub", required=True)
    send = p.add_parser(
        "send",
        help="sign and send one command, print the reply",
        description="Arguments per action: "
        + "; ".join(f"{a.value}: {', '.join(spec) or '-'}" for a, spec in fleet.ARG_SPECS.items()),
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_connection(send, "lockerctl")
    send.add_argument("--locker", required=True)
    send.add_argument("action", choices=[a.value for a in Action])
    send.add_argument("--arg", type=_key_value, action="append", default=[], metavar="NAME=VALUE")
    send.add_argument("--ttl", type=int, help="signed lifetime in seconds (exp - iat)")
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
        "--hours", type=float, default=fleet.DEFAULT_PICKUP_HOURS, help="validity from not-before"
    )
    mint.add_argument("--not-before", type=int, help="Unix seconds (default: now)")
    mint.add_argument("--png", type=Path, help="also write the QR code as PNG")
    mint.add_argument("--svg", type=Path, help="also write the QR code as SVG")
    mint.add_argument("--qr", action="store_true", help="also draw the QR code in the terminal")
    mint.set_defaults(func=cmd_token_mint)


def _add_code(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("code", help="keypad codes").add_subparsers(dest="sub", required=True)
    new = p.add_parser("new", help="generate a code and print it with its tag for one locker")
    new.add_argument("--fleet", required=True, type=Path)
    new.add_argument("--locker", required=True)
    new.add_argument("--digits", type=int, default=8)
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
    w.add_argument("--duration", type=float, help="stop after this many seconds")
    w.set_defaults(func=cmd_watch)


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
    for add in (
        _add_fleet,
        _add_locker,
        _add_keys,
        _add_parcel,
        _add_cmd,
        _add_token,
        _add_code,
        _add_watch,
    ):
        add(sub)
    _add_service(sub)
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


def cmd_fleet_init(args: argparse.Namespace, out: TextIO) -> int:
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
    )
    print(f"fleet {f.name} created in {f.dir}", file=out)
    print(f"broker config: {f.dir / 'broker' / 'mosquitto.conf'}", file=out)
    print(
        "private keys (mode 0600): ca-key.pem, broker/server-key.pem, clients/*-key.pem, "
        "keys/*.key; start the broker with: mosquitto -c "
        f"{f.dir / 'broker' / 'mosquitto.conf'}",
        file=out,
    )
    return EXIT_OK


def cmd_fleet_show(args: argparse.Namespace, out: TextIO) -> int:
    f = provision.Fleet.load(args.dir)
    print(
        f"fleet {f.name}: broker {f.broker_host}:{f.broker_port}, prefix {f.topic_prefix}", file=out
    )
    print(
        f'command_keys = {{ {f.command_kid} = "{provision.encode_public_key(f.command_key())}" }}',
        file=out,
    )
    print(
        f'token_keys = {{ "{f.token_kid}" = "{provision.encode_public_key(f.token_key())}" }}',
        file=out,
    )
    print(f"lockers: {', '.join(f.lockers()) or '(none)'}", file=out)
    return EXIT_OK


def cmd_locker_add(args: argparse.Namespace, out: TextIO) -> int:
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
    )
    for warning in files.warnings:
        print(f"lockerctl: warning: {warning}", file=sys.stderr)
    print(f"locker {args.locker_id} provisioned in {files.dir}", file=out)
    print(f"config: {files.config}", file=out)
    print(
        "copy to the locker: locker.toml, ca.pem, device.pem, device-key.pem, device.key "
        "(systemd/install.sh's layout: /etc/locker, keys root:locker 0640)",
        file=out,
    )
    return EXIT_OK


def cmd_locker_lifecycle(args: argparse.Namespace, out: TextIO) -> int:
    who = args.locker_id
    if args.sub == "renew":
        until = provision.renew_locker(args.dir, who, args.days)
        print(f"locker {who}: new certificate valid until {until:%Y-%m-%d %H:%M}Z", file=out)
        print("copy device.pem and device-key.pem to the locker and restart lockerd", file=out)
        return EXIT_OK
    serials = (provision.remove_locker if args.sub == "remove" else provision.revoke_locker)(
        args.dir, who
    )
    print(f"locker {who}: {len(serials)} certificate(s) revoked", file=out)
    if args.sub == "remove":
        print(f"locker {who}: files removed", file=out)
    print("restart the broker so it loads broker/crl.pem (copy it there first)", file=out)
    return EXIT_OK


def cmd_locker_list(args: argparse.Namespace, out: TextIO) -> int:
    for locker_id in provision.Fleet.load(args.dir).lockers():
        print(locker_id, file=out)
    return EXIT_OK


def _client(args: argparse.Namespace, f: provision.Fleet, **kw: object) -> fleet.FleetClient:
    host, port = args.broker if args.broker else (None, None)
    client = fleet.FleetClient.for_fleet(
        f,
        args.user,
        host=host,
        port=port,
        tls=not args.no_tls,
        **kw,  # type: ignore[arg-type]
    )
    client.connect(timeout=args.timeout)
    return client


def cmd_parcel_issue(args: argparse.Namespace, out: TextIO) -> int:
    f = provision.Fleet.load(args.fleet)
    device_key = f.device_key(args.locker)
    with _client(args, f) as client:
        issued = client.issue_parcel(
            args.locker,
            args.parcel,
            args.size,
            device_key=device_key,
            signer=fleet.signer_for(f),
            kind=args.kind,
            compartment=args.compartment,
            digits=args.digits,
            dropoff_hours=args.dropoff_hours,
            pickup_hours=args.pickup_hours,
            token_key=f.token_key(),
            token_kid=f.token_kid,
            timeout=args.timeout,
        )
    if not issued.reply.ok:
        print(f"assign refused by {args.locker}: {issued.reply.describe()}", file=out)
        return EXIT_REFUSED
    _print_issued(issued, args, out)
    return EXIT_OK


def _print_issued(issued: fleet.IssuedParcel, args: argparse.Namespace, out: TextIO) -> None:
    courier, customer = (
        ("courier", "customer") if issued.kind == "delivery" else ("customer", "courier")
    )
    print(
        f"parcel {issued.parcel} ({issued.kind}, size {issued.size}) assigned to "
        f"{issued.locker_id} compartment {issued.compartment}",
        file=out,
    )
    print(
        f"drop-off code ({courier}): {issued.dropoff_code}  "
        f"valid until {_utc(issued.dropoff_until)}",
        file=out,
    )
    print(
        f"pickup code ({customer}):   {issued.pickup_code}  "
        f"valid {issued.pickup_hours} h after deposit",
        file=out,
    )
    if issued.qr_token is None:
        return
    step = "pickup" if issued.qr_action is credentials.TokenAction.PICKUP else "drop-off"
    print(f"{step} QR token: {issued.qr_token}", file=out)
    _render_qr(issued.qr_token, args.qr_png, args.qr_svg, not args.no_qr, out)


def _render_qr(token: str, png: Path | None, svg: Path | None, terminal: bool, out: TextIO) -> None:
    if png is not None:
        qr.to_png(token, png)
        print(f"QR written to {png}", file=out)
    if svg is not None:
        svg.write_text(qr.to_svg(token), encoding="utf-8")
        print(f"QR written to {svg}", file=out)
    if terminal:
        out.write(qr.to_terminal(token, ansi=out.isatty()))


def cmd_send(args: argparse.Namespace, out: TextIO) -> int:
    f = provision.Fleet.load(args.fleet)
    raw = dict(args.arg)
    code = None
    if args.new_code:
        if args.action != Action.RETRIEVE:
            raise UsageError("--new-code only applies to retrieve")
        code = credentials.generate_code(8)
        raw["code_tag"] = credentials.code_tag(f.device_key(args.locker), code)
    typed = fleet.coerce_args(args.action, raw)
    fleet.command_claims(args.locker, args.action, typed, now=time.time(), ttl=args.ttl)  # checks
    with _client(args, f) as client:
        reply = client.send_command(
            args.locker,
            args.action,
            typed,
            signer=fleet.signer_for(f),
            ttl=args.ttl,
            timeout=args.timeout,
        )
    print(f"{args.action} -> {args.locker}: {reply.describe()}", file=out)
    if code is not None and reply.ok:
        print(f"retrieval code (courier): {code}", file=out)
    return EXIT_OK if reply.ok else EXIT_REFUSED


def cmd_token_mint(args: argparse.Namespace, out: TextIO) -> int:
    f = provision.Fleet.load(args.fleet)
    provision.check_locker_id(args.locker)
    not_before = int(time.time()) if args.not_before is None else args.not_before
    if args.hours <= 0:
        raise UsageError("--hours must be positive")
    expires = not_before + int(args.hours * 3600)
    token = credentials.mint_token(
        f.token_key(),
        f.token_kid,
        args.locker,
        TOKEN_ACTIONS[args.action],
        args.parcel,
        not_before,
        expires,
    )
    print(token, file=out)
    _render_qr(token, args.png, args.svg, args.qr, out)
    return EXIT_OK


def cmd_code_new(args: argparse.Namespace, out: TextIO) -> int:
    f = provision.Fleet.load(args.fleet)
    code = credentials.generate_code(args.digits)
    print(f"code: {code}", file=out)
    print(f"tag:  {credentials.code_tag(f.device_key(args.locker), code)}", file=out)
    return EXIT_OK


def cmd_watch(args: argparse.Namespace, out: TextIO) -> int:
    f = provision.Fleet.load(args.fleet)
    if args.locker:
        provision.check_locker_id(args.locker)
    log = fleet.EventLog(args.log_dir or f.dir / "events")
    view = fleet.FleetView(f.topic_prefix, log)

    def line(text: str) -> None:
        print(text, file=out, flush=True)

    with _client(
        args, f, clean_start=False, session_expiry_s=fleet.WATCH_SESSION_EXPIRY_S
    ) as client:
        watcher = fleet.Watcher(
            client, view, line, locker_id=args.locker, ack=not args.no_ack, log=log
        )
        watcher.start()
        deadline = None if args.duration is None else time.monotonic() + args.duration
        try:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(
                    0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic()))
                )
        except KeyboardInterrupt:
            pass
        finally:
            watcher.stop()
            log.close()
    return EXIT_OK


# --- entry point ----------------------------------------------------------------------------

_ERRORS: tuple[tuple[type[BaseException], int], ...] = (
    (fleet.ReplyTimeoutError, EXIT_TIMEOUT),
    (fleet.BrokerError, EXIT_BROKER),
    (UsageError, EXIT_USAGE),
    (fleet.FleetError, EXIT_USAGE),
    (credentials.CredentialError, EXIT_USAGE),
    (qr.QrError, EXIT_USAGE),
    (provision.ProvisionError, EXIT_PROVISION),
    (OSError, EXIT_PROVISION),
)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run lockerctl; returns the exit status (never raises SystemExit itself)."""
    out = out or sys.stdout
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2)
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="lockerctl: %(levelname)s %(name)s: %(message)s",
    )
    func: Callable[[argparse.Namespace, TextIO], int] = args.func
    try:
        return func(args, out)
    except tuple(e for e, _ in _ERRORS) as err:
        code = next(c for e, c in _ERRORS if isinstance(err, e))
        print(f"lockerctl: error: {err}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
