"""The ``[panel]`` table of the configuration file (DESIGN section 12), validated like the rest
of ``locker.config`` (``Config.panel``): unknown keys are errors, types are strict, every error
names its key path.

```toml
[panel]
listen = "127.0.0.1:8088"       # the kiosk browser's address (IP literal:port; port 0 = any);
                                # absent = no web panel
languages = ["en", "de", "pl"]  # offered, in this order (keypad: * * then 1, 2, 3 ...)
default_language = "en"         # one of languages
touch_keypad = false            # an on-screen keypad on the page
voice = false                   # spoken prompts (espeak-ng)
quiet_hours = "22:00-07:00"     # local time HH:MM-HH:MM; may wrap midnight

[panel.lcd]
driver = "hd44780-i2c"          # PCF8574 backpack
i2c_address = 0x27
i2c_bus = 1                     # /dev/i2c-1
cols = 20                       # 16 or 20
rows = 4                        # 2 or 4
```
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

from locker.config.fields import reject as _reject

# The languages the front panel has catalogs for (locker/cabinet/panel/locale).
SUPPORTED = ("en", "de", "pl")


def _check_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        _reject(
            f"{value[:60]!r} is not IP:port (an IP address, not a host name: the panel is "
            "for the cabinet's own screen, e.g. '127.0.0.1:8088')"
        )
    if not sep or not port.isdigit() or int(port) > 65535:
        _reject(f"{value[:60]!r} has no valid port (0-65535) after the last ':'")
    return value


def _check_language(value: str) -> str:
    if value not in SUPPORTED:
        _reject(f"{value[:20]!r} has no catalog; languages with one: {', '.join(SUPPORTED)}")
    return value


def _check_languages(value: list[str]) -> list[str]:
    if not value:
        _reject("must name at least one language")
    if len(set(value)) != len(value):
        _reject("names a language twice")
    if len(value) > 9:
        _reject("at most 9 languages (the keypad picks one with a single digit)")
    return value


_HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


def _check_quiet_hours(value: str) -> str:
    parts = value.split("-")
    if len(parts) != 2 or not all(_HHMM.fullmatch(p) for p in parts) or parts[0] == parts[1]:
        _reject(f"{value[:40]!r} is not a window HH:MM-HH:MM of two different times")
    return value


def _check_i2c_address(value: int) -> int:
    if not 0x03 <= value <= 0x77:
        _reject(f"{value} is outside the 7-bit I2C address range 0x03-0x77")
    return value


Language = Annotated[str, AfterValidator(_check_language)]


class _Table(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, allow_inf_nan=False, hide_input_in_errors=True
    )


class Lcd(_Table):
    driver: Literal["hd44780-i2c"] = "hd44780-i2c"
    i2c_address: Annotated[int, AfterValidator(_check_i2c_address)] = 0x27
    i2c_bus: Annotated[
        int,
        AfterValidator(
            lambda v: v if 0 <= v <= 31 else _reject(f"{v} is not an I2C bus number (0-31)")
        ),
    ] = 1
    cols: Literal[16, 20] = 16
    rows: Literal[2, 4] = 2


class Panel(_Table):
    listen: Annotated[str, AfterValidator(_check_listen)] | None = None
    languages: Annotated[list[Language], AfterValidator(_check_languages)] = list(SUPPORTED)
    default_language: Language = "en"
    touch_keypad: bool = False
    voice: bool = False
    quiet_hours: Annotated[str, AfterValidator(_check_quiet_hours)] | None = None
    lcd: Lcd | None = None

    @model_validator(mode="after")
    def _default_offered(self) -> Panel:
        if self.default_language not in self.languages:
            raise PydanticCustomError(
                "config",
                "{reason}",
                {"reason": f"default_language {self.default_language!r} is not in languages"},
            )
        return self

    @property
    def host_port(self) -> tuple[str, int] | None:
        if self.listen is None:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    def warnings(self) -> list[str]:
        """Legal but risky settings, one line each (``lockerd --check-config`` prints them,
        ``lockerd`` logs them at start)."""
        where = self.host_port
        if where is None or not self.touch_keypad:
            return []
        host = where[0]
        if ipaddress.ip_address(host).is_loopback:
            return []
        return [
            f"panel.listen = {self.listen!r} is not a loopback address and "
            "panel.touch_keypad = true: anyone who can reach this address can type codes on "
            "the on-screen keypad (no login; the keypad throttle still applies). Use "
            "listen = '127.0.0.1:8088' for the cabinet's own screen, or touch_keypad = false"
        ]

    def quiet_window(self) -> tuple[datetime.time, datetime.time] | None:
        if self.quiet_hours is None:
            return None
        start, end = self.quiet_hours.split("-")
        return datetime.time.fromisoformat(start), datetime.time.fromisoformat(end)


def in_window(window: tuple[datetime.time, datetime.time] | None, at: datetime.time) -> bool:
    """Whether local time ``at`` is within ``[start, end)``; a window may wrap midnight."""
    if window is None:
        return False
    start, end = window
    return start <= at < end if start < end else at >= start or at < end
