"""The fleet service's configuration: ``DIR/fleet.toml`` (DESIGN section 13), flags on top.

``fleet.toml`` is shared with provisioning: its top-level keys (``name``, ``broker_host``,
``topic_prefix``...) describe the fleet and are read by :class:`locker.fleet.provision.Fleet`;
the service owns the tables ``[http]``, ``[db]``, ``[mqtt]``, ``[alarms]``, ``[[webhooks]]``,
``[smtp]``, ``[notifications]`` and the keys ``offline_alarm_s`` and ``gap_resync_s``. Unknown
service keys are errors, values are never converted to another type, and every error names
its key path (``fleet.toml: http.listen: ...``), all of a file's errors at once, like the
locker's config.

Shapes (all optional)::

    offline_alarm_s = 300                 # a locker offline this long raises an alarm
    gap_resync_s = 2.0                    # a mid-stream gap this old gets a resync (0.1-3600)
    [http]   listen = "127.0.0.1:8080"    # HOST:PORT of the REST API and console
             secure_cookies = true        # false only for plain-HTTP development
    [db]     url = "postgresql+psycopg://user@host/fleet"   # default: sqlite in DIR
    [mqtt]   client = "backend"           # server identity clients/<client>.pem = client id
             host = "..." ; port = 8883   # override fleet.toml's broker (tunnels, tests)
    [alarms] outbox_growth = 500          # outbox depth that raises outbox_growing
    [[webhooks]] url = "https://..." ; secret = "..." ; kinds = ["alarm", "notification"]
    [smtp]   host, port = 25, sender, to = [...], starttls = false, username?, password?

Secrets may stay out of ``fleet.toml`` (which provisioning treats as public): ``secret_file``
and ``password_file`` name a file, relative to the fleet directory, holding the value.
    [notifications] reminder_before_s = 86400
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from locker import errors
from locker.fleet.ledger import GAP_RESYNC_MAX_S, GAP_RESYNC_MIN_S, GAP_RESYNC_S
from locker.fleet.provision import Fleet, ProvisionError

DEFAULT_LISTEN = "127.0.0.1:8080"
DB_FILE = "fleet.db"
_PROVISION_KEYS = frozenset(
    {
        "name",
        "broker_host",
        "broker_port",
        "topic_prefix",
        "command_kid",
        "token_kid",
        "server_users",
    }
)


class ConfigError(errors.ConfigError):
    """The service configuration is invalid; ``errors`` lists ``key.path: reason`` lines."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source  # "command line" when a flag is at fault
        self.errors = [f"{source}: {e}" for e in errors]
        super().__init__("\n".join(self.errors))


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError("expected HOST:PORT with a port 0-65535 (0: any free port)")
    return value


def _db_url(value: str) -> str:
    if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", value):
        raise ValueError("expected a sqlite:// or postgresql:// URL")
    return value


HostPort = Annotated[str, AfterValidator(_host_port)]
DbUrl = Annotated[str, AfterValidator(_db_url)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Http(_Section):
    listen: HostPort = DEFAULT_LISTEN
    secure_cookies: bool = True


class Db(_Section):
    url: DbUrl | None = None


class Mqtt(_Section):
    client: Name = "backend"
    host: str | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None


class Alarms(_Section):
    outbox_growth: Annotated[int, Field(ge=1)] = 500


class Webhook(_Section):
    url: Annotated[str, Field(pattern=r"^https?://")]
    secret: Annotated[str, Field(min_length=16)]
    kinds: list[Literal["alarm", "notification"]] = ["alarm"]


class Smtp(_Section):
    host: str
    port: Annotated[int, Field(ge=1, le=65535)] = 25
    sender: str
    to: Annotated[list[str], Field(min_length=1)]
    starttls: bool = False
    username: str | None = None
    password: str | None = None


class Notifications(_Section):
    reminder_before_s: Annotated[int, Field(ge=60)] = 86400


class Retention(_Section):
    days: Annotated[int, Field(ge=0, le=36500)] = 400  # 0: keep everything (retention.py)


class ServiceSettings(_Section):
    offline_alarm_s: Annotated[int, Field(ge=10)] = 300
    # Seconds a mid-stream gap may last before the locker is sent ``resync`` (ledger.GapRule):
    # below it, N workers reordering one locker's events look like gaps. Bounds from ledger,
    # shared with lockerctl watch's reading of the same key (layout.Fleet).
    gap_resync_s: Annotated[float, Field(ge=GAP_RESYNC_MIN_S, le=GAP_RESYNC_MAX_S)] = GAP_RESYNC_S
    http: Http = Http()
    db: Db = Db()
    mqtt: Mqtt = Mqtt()
    alarms: Alarms = Alarms()
    webhooks: list[Webhook] = []
    smtp: Smtp | None = None
    notifications: Notifications = Notifications()
    retention: Retention = Retention()


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _errors(err: ValidationError) -> list[str]:
    return [f"{_path(e['loc'])}: {e['msg']}" for e in err.errors()]


_SECRET_FILES = (("webhooks", "secret"), ("smtp", "password"))


def _read_secret_files(data: dict[str, Any], d: Path) -> list[str]:
    """``secret_file``/``password_file`` (relative to the fleet directory, mode 0600 advised)
    instead of the secret in ``fleet.toml``: read into ``secret``/``password`` in place.
    Returns ``key.path: reason`` lines for files that cannot be used."""
    problems: list[str] = []
    for table, key in _SECRET_FILES:
        value = data.get(table)
        entries = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for index, entry in entries:
            if not isinstance(entry, dict) or f"{key}_file" not in entry:
                continue
            where = table if index is None else f"{table}[{index}]"
            name = entry.pop(f"{key}_file")
            if key in entry:
                problems.append(f"{where}: give {key} or {key}_file, not both")
                continue
            if not isinstance(name, str):
                problems.append(f"{where}.{key}_file: expected a file name")
                continue
            try:
                entry[key] = (d / name).read_text(encoding="utf-8").strip()
            except OSError as err:
                problems.append(f"{where}.{key}_file: cannot read {name}: {err.strerror}")
    return problems


class ServiceConfig:
    """The fleet (provisioning data) and the service settings, with the database URL resolved.

    :raises ConfigError: the file or an override is invalid (every error with its key path).
    """

    def __init__(self, fleet: Fleet, settings: ServiceSettings) -> None:
        self.fleet = fleet
        self.settings = settings

    @property
    def db_url(self) -> str:
        return self.settings.db.url or f"sqlite:///{(self.fleet.dir / DB_FILE).resolve()}"

    @property
    def listen(self) -> tuple[str, int]:
        host, _sep, port = self.settings.http.listen.rpartition(":")
        return host.strip("[]"), int(port)

    @classmethod
    def load(
        cls,
        directory: Path | str,
        *,
        db: str | None = None,
        http: str | None = None,
        mqtt_client: str | None = None,
    ) -> ServiceConfig:
        d = Path(directory)
        path = d / Fleet.FILE
        try:
            fleet = Fleet.load(d)
            raw: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
        except ProvisionError as err:
            raise ConfigError(str(path), [str(err)]) from err
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(str(path), [f"not valid TOML: {err}"]) from err
        data = {k: v for k, v in raw.items() if k not in _PROVISION_KEYS}
        problems = _read_secret_files(data, d)
        try:
            settings = ServiceSettings.model_validate(data)
        except ValidationError as err:
            problems += _errors(err)
        if problems:
            raise ConfigError(Fleet.FILE, problems)
        overrides: dict[str, Any] = {}
        if db is not None:
            overrides["db"] = {"url": db}
        if http is not None:
            overrides["http"] = {**settings.http.model_dump(), "listen": http}
        if mqtt_client is not None:
            overrides["mqtt"] = {**settings.mqtt.model_dump(), "client": mqtt_client}
        if overrides:
            merged = settings.model_dump() | overrides
            try:
                settings = ServiceSettings.model_validate(merged)
            except ValidationError as err:
                raise ConfigError("command line", _errors(err)) from None
        return cls(fleet, settings)
