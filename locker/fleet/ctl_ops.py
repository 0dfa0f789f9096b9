"""``lockerctl`` subcommands that talk to lockers or use their keys: ``parcel issue``,
``cmd send``, ``token mint``, ``code new``, ``watch`` (DESIGN section 9).

Each handler takes ``(args, out)`` and returns an exit status; every locker id is checked
against the fleet directory first (``known_locker``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from locker import errors
from locker.contract import credentials
from locker.contract.actions import MAX_UINT32, Action
from locker.fleet import client as fleet
from locker.fleet import provision, qr, watch
from locker.fleet.ctl_output import EXIT_OK, EXIT_REFUSED, EXIT_TIMEOUT, Output, _local, _utc
from locker.fleet.ledger import GapRule

TOKEN_ACTIONS = {
    "pickup": credentials.TokenAction.PICKUP,
    "dropoff": credentials.TokenAction.DROPOFF,
    "retrieve": credentials.TokenAction.RETRIEVE,
}

UsageError = errors.UsageError  # raised by handlers for arguments that parse but make no sense


def known_locker(f: provision.Fleet, locker_id: str) -> str:
    """``locker_id`` if it is provisioned in fleet ``f``.

    :raises errors.NotFoundError: it is not (a typo would otherwise sign a command for
        nobody, or mint a token no locker accepts).
    """
    provision.check_locker_id(locker_id)
    if locker_id not in f.lockers():
        raise errors.NotFoundError(
            f"no locker {locker_id!r} in the fleet directory {f.dir} "
            f"(provisioned: {', '.join(f.lockers()) or 'none'})"
        )
    return locker_id


def code_digits(f: provision.Fleet, locker_id: str, digits: int | None) -> int:
    """The length of the codes to make for a locker: its ``security.code_length``.

    ``digits`` (``--digits``) may only repeat it: a locker refuses a code of any other length
    as ``malformed`` (DESIGN 8), so a code that differs would be printed and never work. When
    the fleet directory cannot tell (no readable, valid ``locker.toml``), lockerd's default
    is used and a warning says so.

    The config model refuses a length ``credentials.generate_code`` could not make (one
    range, ``credentials.CODE_MIN_DIGITS``-``CODE_MAX_DIGITS``), so a known length is always
    one a code can be made for.

    :raises UsageError: ``digits`` differs.
    """
    length = f.code_length(locker_id)
    source = length.source if length.known else f"lockerd's default; {length.source}"
    if digits is not None and digits != length.digits:
        raise UsageError(
            f"--digits {digits}: locker {locker_id} takes codes of exactly {length.digits} "
            f"digits ({source}); it would refuse a code of {digits} digits as malformed"
        )
    if not length.known:
        print(
            f"lockerctl: warning: the code length of locker {locker_id} is unknown "
            f"({length.source}); using lockerd's default, {length.digits} digits",
            file=sys.stderr,
        )
    return length.digits


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


def _reply_doc(reply: fleet.Reply) -> dict[str, Any]:
    return {"status": reply.status, "cmd_id": reply.cmd_id, "result": reply.result,
            "error": reply.error}  # fmt: skip


def cmd_parcel_issue(args: argparse.Namespace, out: Output) -> int:
    f = provision.Fleet.load(args.fleet)
    device_key = f.device_key(known_locker(f, args.locker))
    fleet.check_parcel_id(args.parcel)
    digits = code_digits(f, args.locker, args.digits)
    with _client(args, f) as client:
        try:
            issued = _issue(client, args, f, device_key, digits)
        except fleet.AssignTimeoutError as err:
            # It may still run: the codes now or never (nothing keeps them).
            out.put(locker=args.locker, parcel=args.parcel, reply=None, timeout=True)
            out.say(
                f"{args.locker} did not answer in {args.timeout:g} s. The assign waits for it "
                f"until {_utc(err.issued.dropoff_until)} and runs when it is back: these codes "
                f"work if it does. To withdraw it: lockerctl cmd send --fleet {args.fleet} "
                f"--locker {args.locker} "
                f"cancel --arg parcel={args.parcel}"
            )
            _print_issued(err.issued, args, out)
            return EXIT_TIMEOUT
    assert issued.reply is not None  # answered: the error above otherwise
    out.put(locker=args.locker, parcel=args.parcel, reply=_reply_doc(issued.reply))
    if not issued.reply.ok:
        out.say(f"assign refused by {args.locker}: {issued.reply.describe()}")
        return EXIT_REFUSED
    _print_issued(issued, args, out)
    return EXIT_OK


def _issue(
    client: fleet.FleetClient,
    args: argparse.Namespace,
    f: provision.Fleet,
    device_key: bytes,
    digits: int,
) -> fleet.IssuedParcel:
    return client.issue_parcel(
        args.locker,
        args.parcel,
        args.size,
        device_key=device_key,
        signer=fleet.signer_for(f),
        kind=args.kind,
        compartment=args.compartment,
        accessible=args.accessible,
        digits=digits,
        dropoff_hours=args.dropoff_hours,
        pickup_hours=args.pickup_hours,
        token_key=f.token_key(),
        token_kid=f.token_kid,
        timeout=args.timeout,
    )


def _print_issued(issued: fleet.IssuedParcel, args: argparse.Namespace, out: Output) -> None:
    courier, customer = (
        ("courier", "customer") if issued.kind == "delivery" else ("customer", "courier")
    )
    step = "pickup" if issued.qr_action is credentials.TokenAction.PICKUP else "drop-off"
    out.put(
        kind=issued.kind,
        size=issued.size,
        compartment=issued.compartment,
        dropoff_code=issued.dropoff_code,
        dropoff_until=_utc(issued.dropoff_until),
        pickup_code=issued.pickup_code,
        pickup_hours=issued.pickup_hours,
        qr_token=issued.qr_token,
        qr_step=step if issued.qr_token is not None else None,
    )
    where = (
        f"assigned to {issued.locker_id} compartment {issued.compartment}"
        if issued.reply is not None
        else f"sent to {issued.locker_id}, not answered yet"
    )
    out.say(f"parcel {issued.parcel} ({issued.kind}, size {issued.size}) {where}")
    out.say(
        f"drop-off code ({courier}): {issued.dropoff_code}  "
        f"valid until {_local(issued.dropoff_until)}"
    )
    out.say(
        f"pickup code ({customer}):   {issued.pickup_code}  "
        f"valid {issued.pickup_hours} h after deposit"
    )
    if issued.qr_token is None:
        return
    out.say(f"{step} QR token: {issued.qr_token}")
    _render_qr(issued.qr_token, args.qr_png, args.qr_svg, not args.no_qr, out)


def _render_qr(token: str, png: Path | None, svg: Path | None, terminal: bool, out: Output) -> None:
    try:
        if png is not None:
            qr.to_png(token, png)
            out.say(f"QR written to {png}")
        if svg is not None:
            svg.write_text(qr.to_svg(token), encoding="utf-8")
            out.say(f"QR written to {svg}")
    except OSError as err:
        raise errors.StorageError(f"cannot write the QR code: {err}") from err
    out.put(qr_files=[str(p) for p in (png, svg) if p is not None])
    if terminal and not out.as_json:
        out.write(qr.to_terminal(token, ansi=out.isatty()))


def cmd_send(args: argparse.Namespace, out: Output) -> int:
    f = provision.Fleet.load(args.fleet)
    known_locker(f, args.locker)
    raw = dict(args.arg)
    code = None
    if args.new_code:
        if args.action != Action.RETRIEVE:
            raise UsageError("--new-code only applies to retrieve")
        code = credentials.generate_code(code_digits(f, args.locker, None))
        raw["code_tag"] = credentials.code_tag(f.device_key(args.locker), code)
    typed = fleet.coerce_args(args.action, raw)
    fleet.command_claims(args.locker, args.action, typed, now=time.time(), ttl=args.ttl)  # checks
    with _client(args, f) as client:
        try:
            reply = client.send_command(
                args.locker,
                args.action,
                typed,
                signer=fleet.signer_for(f),
                ttl=args.ttl,
                timeout=args.timeout,
            )
        except fleet.ReplyTimeoutError as err:
            raise fleet.ReplyTimeoutError(
                f"no reply from {args.locker} in {args.timeout:g} s. If it has connected to "
                "this broker before (within its session expiry), the broker holds the command "
                "and it runs when the locker is back, unless its signed lifetime ends first; "
                "if it has never connected, the command is lost."
            ) from err
    out.put(locker=args.locker, action=str(args.action), args=typed, reply=_reply_doc(reply))
    out.say(f"{args.action} -> {args.locker}: {reply.describe()}")
    if code is not None and reply.ok:
        out.put(retrieval_code=code)
        out.say(f"retrieval code (courier): {code}")
    return EXIT_OK if reply.ok else EXIT_REFUSED


def cmd_token_mint(args: argparse.Namespace, out: Output) -> int:
    f = provision.Fleet.load(args.fleet)
    known_locker(f, args.locker)
    fleet.check_parcel_id(args.parcel)
    not_before = int(time.time()) if args.not_before is None else args.not_before
    expires = not_before + int(args.hours * 3600)
    if expires > MAX_UINT32:
        raise UsageError(f"--hours {args.hours:g}: the token would end after 2106 (uint32)")
    token = credentials.mint_token(
        f.token_key(),
        f.token_kid,
        args.locker,
        TOKEN_ACTIONS[args.action],
        args.parcel,
        not_before,
        expires,
    )
    out.put(
        token=token,
        locker=args.locker,
        parcel=args.parcel,
        action=args.action,
        not_before=_utc(not_before),
        expires=_utc(expires),
    )
    out.say(token)
    _render_qr(token, args.png, args.svg, args.qr, out)
    return EXIT_OK


def cmd_code_new(args: argparse.Namespace, out: Output) -> int:
    f = provision.Fleet.load(args.fleet)
    device_key = f.device_key(known_locker(f, args.locker))
    code = credentials.generate_code(code_digits(f, args.locker, args.digits))
    tag = credentials.code_tag(device_key, code)
    out.put(locker=args.locker, code=code, tag=tag)
    out.say(f"code: {code}")
    out.say(f"tag:  {tag}")
    return EXIT_OK


class _JsonView(watch.FleetView):
    """``FleetView`` whose lines are JSON objects: ``{"locker", "channel", "message",
    "notes"}`` with the payload as received (events once each, duplicates dropped)."""

    def handle(self, msg: fleet.Incoming) -> list[str]:
        head = self.prefix + "/"
        levels = msg.topic[len(head) :].split("/") if msg.topic.startswith(head) else []
        locker_id = levels[0] if levels else ""
        dups_before = self.lockers[locker_id].duplicates if locker_id in self.lockers else 0
        notes = super().handle(msg)
        if locker_id in self.lockers and self.lockers[locker_id].duplicates > dups_before:
            return []
        try:
            message: Any = json.loads(msg.payload) if msg.payload else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            message = None
        doc = {
            "locker": locker_id or None,
            "channel": levels[1] if len(levels) > 1 else None,
            "topic": msg.topic,
            "retained": msg.retain,
            "message": message,
            "notes": notes,
        }
        return [json.dumps(doc, separators=(",", ":"), sort_keys=True)]


def watch_json_line(text: str) -> Any:
    """A line of ``watch --json``: a message's document as ``_JsonView`` wrote it, or, for the
    watcher's own lines (a resync asked for, an ack that failed), ``{"notes": [text]}``."""
    if text.startswith("{"):
        return json.loads(text)
    return {"notes": [text]}


def _watch_note(text: str) -> None:
    """The connection's story (lost, back, a takeover) for the person watching: stderr, so
    stdout (--json lines too) keeps only what the fleet said."""
    print(f"lockerctl watch: {text}", file=sys.stderr, flush=True)


def cmd_watch(args: argparse.Namespace, out: Output) -> int:
    f = provision.Fleet.load(args.fleet)
    if args.locker:
        known_locker(f, args.locker)
    log = watch.EventLog(args.log_dir or f.dir / "events")
    # the service's gap_resync_s (fleet.toml), so the two resync a lasting gap alike
    rule = GapRule(wait_s=f.gap_resync_s)
    view = (_JsonView if out.as_json else watch.FleetView)(f.topic_prefix, log, gap_rule=rule)

    def line(text: str) -> None:
        if out.as_json:
            out.line(watch_json_line(text))
        else:
            out.say(text)

    with _client(
        args, f, clean_start=False, session_expiry_s=fleet.WATCH_SESSION_EXPIRY_S
    ) as client:
        watcher = watch.Watcher(
            client,
            view,
            line,
            locker_id=args.locker,
            ack=not args.no_ack,
            log=log,
            # A first contact past its floor asks for the backlog, when this host may sign.
            signer=fleet.signer_for(f) if f.command_key_file.exists() else None,
            on_note=_watch_note,
        )
        watcher.start()
        _watch_note(f"watching, connected to {client.host}:{client.port} as {client.identity}")
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
