"""lockerd's view of the configuration file: the shared model (``locker.config``) plus what only
the cabinet can judge: whether this machine can run the file (the pin library is installed, the
client certificate is one) and when its certificate ends (renew it before: README,
"Certificates").

``lockerd --check-config`` runs :func:`check_config_cli`; ``lockerd --config`` runs
:func:`environment_problems` before touching anything, so a missing pin library is one clear
line and exit status 78, not a traceback at start.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import sys
from pathlib import Path
from typing import Final

from locker.cabinet.tlsfiles import identity_problems, tls_file_problems
from locker.config import Compartment, Config, ConfigError, load_config, parse_config
from locker.contract import certificates

__all__ = [
    "EXIT_CONFIG",
    "Compartment",
    "Config",
    "ConfigError",
    "certificate_warnings",
    "check_config_cli",
    "environment_problems",
    "load_config",
    "parse_config",
]

EXIT_CONFIG: Final = 78  # sysexits EX_CONFIG; the unit has RestartPreventExitStatus=78

# gpiozero's pin factories and the Python module each one needs (gpiozero.pins.*); "native"
# and "mock" are part of gpiozero itself.
PIN_LIBRARIES: Final = {
    "lgpio": ("lgpio", "pip install lgpio, or apt install python3-lgpio"),
    "rpigpio": ("RPi.GPIO", "pip install RPi.GPIO, or apt install python3-rpi.gpio"),
    "pigpio": ("pigpio", "pip install pigpio, and run the pigpiod daemon"),
}


def _module_missing(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):  # a parent package that is absent or broken
        return True


def environment_problems(cfg: Config) -> list[str]:
    """What stops this file from running on this machine, one line each (empty: none): a GPIO
    cabinet whose ``gpio.pin_factory`` library is not installed; TLS files the link cannot
    load (not PEM, a key that is not the certificate's, a client certificate as the CA); a
    ``locker.id`` that is not the client certificate's CN. Run after a load with file checks
    (the files exist and are readable)."""
    return _pin_library_problems(cfg) + _certificate_problems(cfg)


def _pin_library_problems(cfg: Config) -> list[str]:
    if not cfg.uses_gpio() or cfg.gpio.pin_factory not in PIN_LIBRARIES:
        return []
    name = cfg.gpio.pin_factory
    module, how = PIN_LIBRARIES[name]
    if not _module_missing(module):
        return []
    return [
        f"gpio.pin_factory: {name!r} needs the Python module {module!r}, which is not "
        f"installed here ({how})"
    ]


OPTION: Final = "mqtt.cert_file"  # the option naming the client certificate
RENEW_HOW: Final = (
    "the broker refuses it then: run lockerctl locker renew and install the new device.pem "
    "and device-key.pem"
)


def _client_certificate_end(cfg: Config) -> dt.datetime | None:
    path = cfg.mqtt.cert_file if cfg.mqtt is not None else None
    return None if path is None else certificates.end_of(path.read_bytes())


def _certificate_problems(cfg: Config) -> list[str]:
    """The link's TLS files as the link loads them, and ``locker.id`` against the client
    certificate's CN (``locker.cabinet.tlsfiles``)."""
    m = cfg.mqtt
    if m is None or not m.tls or not (m.ca_file and m.cert_file and m.key_file):
        return []  # no TLS, or a missing key the model already reported
    problems = tls_file_problems(m.ca_file, m.cert_file, m.key_file)
    return problems + identity_problems(cfg.locker.id, m.cert_file)


def certificate_warnings(cfg: Config, now: dt.datetime | None = None) -> list[str]:
    """The client certificate's end, when it is near (``certificates.RENEW_WITHIN``) or past.

    Only for a file that :func:`environment_problems` found readable and well-formed.
    """
    try:
        end = _client_certificate_end(cfg)
    except (OSError, ValueError):
        return []  # reported by environment_problems (with TLS) or not used (without)
    if end is None:
        return []
    line = certificates.renewal_message(OPTION, end, now or dt.datetime.now(dt.UTC), RENEW_HOW)
    return [] if line is None else [line]


def check_config_cli(path: str | Path, *, check_files: bool = True) -> int:
    """``lockerd --check-config``: print a summary or the errors; 0 or EXIT_CONFIG.

    ``check_files=False`` (``--no-file-checks``) checks a file away from its locker: neither
    key files nor the pin library need to be present here.
    """
    try:
        config = load_config(path, check_files=check_files)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return EXIT_CONFIG
    problems = environment_problems(config) if check_files else []
    if problems:
        print("\n".join(f"{path}: {p}" for p in problems), file=sys.stderr)
        return EXIT_CONFIG
    for warning in config.warnings() + (certificate_warnings(config) if check_files else []):
        print(f"{path}: warning: {warning}", file=sys.stderr)
    print(f"OK: {path}: {config.summary()}")
    return 0
