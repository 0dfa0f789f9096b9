"""A whole simulated cabinet on one machine, for ``make simulate`` and the end-to-end tests.

``SimCabinet`` makes throwaway keys, writes a real configuration, opens ptys for a serial
keypad and a QR scanner, serves a KR-CU16 bus from the board emulator on another pty, and runs
the real ``lockerd`` as a child process on gpiozero mock pins (``--simulate-doors`` lets a
simulated person open a GPIO door after its lock is pulsed). Readiness is the systemd
protocol itself: the child is given a ``NOTIFY_SOCKET`` and we wait for ``READY=1``.

Everything here is a simulation aid: keys are generated per run and never leave ``workdir``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import tty
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hardware.emulators.kerong import KerongEmulator
from locker import errors
from locker.contract import credentials, jws
from locker.fleet import provision
from locker.sim.broker import Broker, die_with_parent

COMMAND_KID = "sim"
TOKEN_KID = 1

# Compartment layout of the simulated cabinet: six GPIO doors, six on board 0 of one bus.
GPIO_LAYOUT: tuple[tuple[str, str, int, int], ...] = (
    ("A1", "S", 12, 6),
    ("A2", "S", 13, 19),
    ("A3", "M", 26, 16),
    ("A4", "M", 20, 21),
    ("A5", "L", 17, 27),
    ("A6", "XL", 22, 10),
)
# Locator LEDs (mock pins in the simulation) and wheelchair-reachable doors.
LED_PINS = {"A1": 23, "A2": 24, "A3": 25, "B1": 5, "B2": 18, "B3": 11}
ACCESSIBLE = ("A1", "A2", "B1")
BOARD_LAYOUT: tuple[tuple[str, str, int], ...] = (
    ("B1", "S", 1),
    ("B2", "S", 2),
    ("B3", "M", 3),
    ("B4", "M", 4),
    ("B5", "L", 5),
    ("B6", "XL", 6),
)


class SimError(errors.HardwareError):
    """The simulated cabinet could not be started or did not answer in time."""


def _pty() -> tuple[int, str]:
    """A raw pty; returns the master fd and the slave's path for the daemon to open."""
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    os.close(slave)
    return master, path


def _free_port() -> int:
    """A loopback port free right now (a dev tool: the short race with another process that
    grabs it in between is acceptable; lockerd then logs that it cannot listen)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SimCabinet:
    workdir: Path
    broker: Broker | None = None
    locker_id: str = "SIM-0001"
    with_board: bool = True
    timing: Mapping[str, Any] = field(default_factory=dict)
    security: Mapping[str, Any] = field(default_factory=dict)
    door_open_after_s: float = 0.3
    door_close_after_s: float | None = 1.2
    simulate_doors: bool = True  # False: nobody moves the GPIO doors (and no poller runs)
    require_server_ack: bool = True
    log_level: str = "INFO"
    mqtt: Mapping[str, Any] = field(default_factory=dict)  # merged over the [mqtt] defaults
    # more signers to trust, kid -> public key (e.g. a fleet service's users and token key)
    extra_command_keys: Mapping[str, str] = field(default_factory=dict)
    extra_token_keys: Mapping[str, str] = field(default_factory=dict)
    panel: bool = True  # the front panel on a free loopback port (panel_url)
    # how lockerd runs: ``python -m <module>`` with these variables added to the environment
    # (the soak's clock steps: locker.sim.clockstep)
    module: str = "locker"
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Absolute paths: the config resolves relative ones against its own directory.
        self.workdir = self.workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state_dir = self.workdir / "state"
        self.state_dir.mkdir(exist_ok=True)
        self.device_key = secrets.token_bytes(32)
        provision.write_private(self.workdir / "device.key", self.device_key)
        self.command_key = Ed25519PrivateKey.generate()
        self.token_key = Ed25519PrivateKey.generate()
        self.keypad_fd, self.keypad_path = _pty()
        self.scanner_fd, self.scanner_path = _pty()
        self.emulator: KerongEmulator | None = None
        if self.with_board:
            self.emulator = KerongEmulator(
                [0], open_delay_s=self.door_open_after_s, auto_close_s=self.door_close_after_s
            )
            self.board_path = self.emulator.start()
        self.proc: subprocess.Popen[bytes] | None = None
        self.panel_port = _free_port() if self.panel else None
        self.config_path = self.workdir / "locker.toml"
        self.log_path = self.workdir / "lockerd.log"
        self.config_path.write_text(tomli_w.dumps(self.config()))

    # --- configuration ---------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "locker": {
                "id": self.locker_id,
                "name": "Simulated cabinet",
                "state_dir": str(self.state_dir),
            },
            "security": {
                "device_key_file": str(self.workdir / "device.key"),
                "command_keys": {
                    COMMAND_KID: provision.encode_public_key(self.command_key.public_key()),
                    **self.extra_command_keys,
                },
                "token_keys": {
                    str(TOKEN_KID): provision.encode_public_key(self.token_key.public_key()),
                    **self.extra_token_keys,
                },
                **self.security,
            },
            "timing": {"unlock_pulse_s": 0.2, "unlock_rest_s": 0.1, **self.timing},
            "gpio": {"pin_factory": "mock"},
            "keypad": {"type": "serial", "port": self.keypad_path},
            "scanner": {"port": self.scanner_path},
            "compartments": [
                {"id": c, "size": s, "lock_pin": lock, "door_pin": door}
                for c, s, lock, door in GPIO_LAYOUT
            ],
        }
        if self.broker is not None:
            cfg["mqtt"] = self._mqtt()
        if self.emulator is not None:
            cfg["boards"] = [
                {
                    "name": "b0",
                    "port": self.board_path,
                    "address": 0,
                    "item_sensors": False,
                    "poll_interval_s": 0.1,
                }
            ]
            cfg["compartments"] += [
                {"id": c, "size": s, "board": "b0", "channel": ch} for c, s, ch in BOARD_LAYOUT
            ]
        for entry in cfg["compartments"]:
            if entry["id"] in LED_PINS:
                entry["led_pin"] = LED_PINS[entry["id"]]
            if entry["id"] in ACCESSIBLE:
                entry["accessible"] = True
        if self.panel_port is not None:
            cfg["panel"] = {
                "listen": f"127.0.0.1:{self.panel_port}",
                "languages": ["en", "de", "pl"],
                "touch_keypad": True,
                "quiet_hours": "22:00-07:00",
            }
        return cfg

    @property
    def panel_url(self) -> str | None:
        """The front panel's page, for a browser on this machine."""
        return f"http://127.0.0.1:{self.panel_port}/" if self.panel_port is not None else None

    def _mqtt(self) -> dict[str, Any]:
        b = self.broker
        assert b is not None
        m: dict[str, Any] = {
            "host": b.host,
            "port": b.port,
            "tls": b.tls,
            "keepalive_s": 10,
            "will_delay_s": 2,
            "ack_timeout_s": 5,
            "require_server_ack": self.require_server_ack,
        }
        if b.pki is not None:
            cert = b.pki.client(self.locker_id)
            m |= {"ca_file": b.pki.ca_file, "cert_file": cert.cert_file, "key_file": cert.key_file}
        return m | dict(self.mqtt)

    # --- the daemon ------------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> None:
        """Start lockerd and wait for READY=1 on our notify socket."""
        sock_path = self.workdir / "notify.sock"
        sock_path.unlink(missing_ok=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(sock_path))
            sock.settimeout(0.2)
            env = {**os.environ, **self.env, "NOTIFY_SOCKET": str(sock_path)}
            doors = f"{self.door_open_after_s},{self.door_close_after_s or 0}"
            with self.log_path.open("ab") as log:
                sim = ["--simulate-doors", doors] if self.simulate_doors else []
                self.proc = subprocess.Popen(  # noqa: S603 - our interpreter, our module
                    [
                        sys.executable,
                        "-m",
                        self.module,
                        "--config",
                        str(self.config_path),
                        *sim,
                        "--log-level",
                        self.log_level,
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    preexec_fn=die_with_parent,  # noqa: PLW1509 - only a prctl
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise SimError(f"lockerd exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    if b"READY=1" in sock.recv(4096):
                        return
                except TimeoutError:
                    continue
        raise SimError(f"lockerd not ready after {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait: the daemon commits ``stopping`` and publishes offline."""
        return self.signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash or a power cut as far as the process is concerned."""
        self.signal(signal.SIGKILL, 10.0)

    def signal(self, sig: signal.Signals, timeout: float) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        self.signal(signal.SIGKILL, 10.0)
        if self.emulator is not None:
            self.emulator.stop()
        for fd in (self.keypad_fd, self.scanner_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    # --- the people at the cabinet and the server's keys -----------------------------------------

    def press(self, keys: str) -> None:
        """Keys on the serial keypad, one byte each (``#`` submits)."""
        os.write(self.keypad_fd, keys.encode())

    def scan(self, text: str) -> None:
        """One QR code read by the scanner (CR-terminated, as USB-CDC scanners send)."""
        os.write(self.scanner_fd, text.encode() + b"\r")

    def new_code(self) -> tuple[str, str]:
        """A fresh code and its tag under this cabinet's device key."""
        code = credentials.generate_code(8)
        return code, credentials.code_tag(self.device_key, code)

    def token(self, parcel: str, action: credentials.TokenAction, ttl_s: int = 3 * 86400) -> str:
        now = int(time.time())
        return credentials.mint_token(
            self.token_key, TOKEN_KID, self.locker_id, action, parcel, now - 60, now + ttl_s
        )

    def sign(
        self,
        action: str,
        args: Mapping[str, Any],
        ttl_s: int = 60,
        cmd_id: str | None = None,
        aud: str | None = None,
    ) -> bytes:
        now = int(time.time())
        claims = {
            "aud": aud or self.locker_id,
            "jti": cmd_id or secrets.token_hex(12),
            "iat": now,
            "exp": now + ttl_s,
            "act": action,
            "args": dict(args),
        }
        return jws.sign_command(self.command_key, COMMAND_KID, claims)
