"""``lockerctl``'s output and exit statuses: text for people, one JSON document for scripts.

``Output`` is what every subcommand handler writes to; ``exit_status`` maps an error to its
status by its category in ``locker.errors``; ``EXIT_CODES_HELP`` documents them (``--help``
epilog and README).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping
from typing import Any, TextIO

from locker import errors

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_BROKER = 3
EXIT_TIMEOUT = 4
EXIT_CONFIG = 5
EXIT_PROVISION = EXIT_CONFIG  # the older name of the same status
EXIT_NOT_FOUND = 6
EXIT_FILE = 7
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE, as lockerd: a database server or an address to serve on
EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug; the traceback goes to stderr
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a process ended by Ctrl-C

EXIT_CODES_HELP = f"""exit status:
  {EXIT_OK}  success
  {EXIT_REFUSED}  the locker refused or failed the command (rejected, failed, expired)
  {EXIT_USAGE}  bad usage or arguments (ids, specs, numbers, --digits); nothing sent or written
  {EXIT_BROKER}  cannot reach or authenticate with the MQTT broker
  {EXIT_TIMEOUT}  no reply from the locker in time (see "cmd send --help": it may still run)
  {EXIT_CONFIG}  fleet directory error (not a fleet, an invalid fleet.toml, refusing to overwrite:
      a fleet, a locker, a user)
  {EXIT_NOT_FOUND}  no such locker in the fleet directory (no such user: user remove/reset)
  {EXIT_FILE}  a local file (or the service's SQLite database) could not be read or written
  {EXIT_UNAVAILABLE}  serve: the database server cannot be reached, or the HTTP address cannot be
      listened on (in use, unknown host); the message says why
  {EXIT_INTERNAL}  internal error (a bug: please report the traceback)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C); fleet init and locker add keep nothing of the run

With --json, stdout carries exactly one JSON document ({{"ok": true, ...}} or
{{"ok": false, "error": {{"kind": ..., "message": ...}}}}), or one JSON object per line for
watch; messages for people go to stderr. A command line argparse cannot parse (status 2)
prints only its usage message, on stderr.
"""


def _utc(ts: float) -> str:
    """RFC 3339 in UTC, for JSON documents."""
    return (
        dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


def _local(ts: float) -> str:
    """RFC 3339 in the operator's local time zone, for people."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).astimezone().isoformat(timespec="seconds")


class Output:
    """What one subcommand reports: text for a person, or one JSON document for a script.

    Handlers write text with ``say`` (or ``print(..., file=out)``: ``write`` is the same) and
    put the JSON document's fields with ``put``. With ``--json`` the text is dropped and
    ``main`` prints ``{"ok": true, **fields}`` once at the end; ``line`` writes one JSON object
    at once (JSON lines, for ``watch``).
    """

    def __init__(self, stream: TextIO, as_json: bool) -> None:
        self.stream, self.as_json = stream, as_json
        self.fields: dict[str, Any] = {}
        self.streamed = False
        self._written: list[str] = []  # text written in --json mode (dropped unless JSON)

    def say(self, text: str = "") -> None:
        if not self.as_json:
            print(text, file=self.stream, flush=True)

    def write(self, text: str) -> int:
        if self.as_json:
            self._written.append(text)
        else:
            self.stream.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return not self.as_json and self.stream.isatty()

    def put(self, **fields: Any) -> None:
        self.fields.update(fields)

    def line(self, doc: Mapping[str, Any]) -> None:
        """One JSON object on its own line, now (``--json`` streams such as ``watch``)."""
        self.streamed = True
        print(json.dumps(doc, separators=(",", ":"), sort_keys=True), file=self.stream, flush=True)

    def finish(self, status: int, error: BaseException | None = None) -> None:
        """Print the JSON document (``--json`` only; not after JSON lines)."""
        if not self.as_json or (self.streamed and error is None):
            return
        doc: dict[str, Any]
        own = self._own_document()
        if error is None and own is not None:
            doc = own  # a registered handler that prints its own --json document
        elif error is None:
            doc = {"ok": status == EXIT_OK, **self.fields}
            if status not in (EXIT_OK, EXIT_REFUSED):
                doc["error"] = {"kind": _kind(status), "message": "see stderr"}
        else:
            doc = {"ok": False, "error": {"kind": _kind(status), "message": str(error)}}
        print(json.dumps(doc, sort_keys=True), file=self.stream, flush=True)

    def _own_document(self) -> dict[str, Any] | None:
        """The JSON object a handler printed itself with ``--json``, if it did and put nothing."""
        if self.fields or not self._written:
            return None
        try:
            doc = json.loads("".join(self._written))
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None


# Most specific first: a ReplyTimeoutError is also a LinkError and a UsageError (FleetError).
_STATUS_BY_CATEGORY: tuple[tuple[type[BaseException], int, str], ...] = (
    (errors.LinkTimeoutError, EXIT_TIMEOUT, "timeout"),
    (errors.LinkError, EXIT_BROKER, "broker"),
    (errors.NotFoundError, EXIT_NOT_FOUND, "not_found"),
    (errors.StorageError, EXIT_FILE, "file"),
    (errors.UnavailableError, EXIT_UNAVAILABLE, "unavailable"),
    (errors.UsageError, EXIT_USAGE, "usage"),  # before ProvisionError: a bad argument is 2
    (errors.ContractError, EXIT_USAGE, "usage"),
    (errors.ConfigError, EXIT_CONFIG, "config"),
    (errors.ProvisionError, EXIT_CONFIG, "config"),
    (errors.LockerError, EXIT_INTERNAL, "internal"),
)
_KINDS = {
    EXIT_REFUSED: "refused",
    EXIT_INTERRUPTED: "interrupted",
    **{code: kind for _c, code, kind in _STATUS_BY_CATEGORY},
}


def _kind(status: int) -> str:
    return _KINDS.get(status, "error")


def describe_os_error(err: OSError) -> str:
    """One line for an ``OSError``: ``cannot use PATH: reason`` (both paths for a rename)."""
    reason = err.strerror or str(err)
    paths = [p for p in (err.filename, err.filename2) if p is not None]
    if not paths:
        return reason
    named = " -> ".join(
        repr(os.fsdecode(p) if isinstance(p, str | bytes | os.PathLike) else str(p)) for p in paths
    )
    return f"cannot use {named}: {reason}"


def exit_status(err: BaseException) -> int:
    """The exit status of an error, by its category in ``locker.errors``."""
    return next((code for cls, code, _k in _STATUS_BY_CATEGORY if isinstance(err, cls)), 70)
