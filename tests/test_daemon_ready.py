"""What READY means, at the process level (a real ``lockerd`` child and a real notify socket),
and the configuration warnings ``lockerd`` gives.

READY=1 is sent once the configuration, database, locks and link settings are up and every
keypad and scanner has either opened its port or reported its fault as a ``hardware_fault``:
a cabinet with a broken reader still serves with the other, and its status line (``systemctl
status``) and log say which input is out of order.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from locker.cabinet.config import check_config_cli
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(60)

CONFIG = """\
[locker]
id = "LKR-R1"
state_dir = "{state}"
[security]
device_key_file = "device.key"
[gpio]
pin_factory = "mock"
[keypad]
type = "serial"
port = "/dev/ttyNOPE"
[scanner]
port = "/dev/ttyNOPE2"
[[compartments]]
id = "A1"
size = "S"
lock_pin = 17
door_pin = 27
"""


@contextlib.contextmanager
def _notify_socket() -> Iterator[tuple[socket.socket, str]]:
    # a short directory: an AF_UNIX path has at most 107 bytes
    with tempfile.TemporaryDirectory(prefix="sdn") as d:
        path = os.path.join(d, "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.settimeout(20)
            yield sock, path


def test_ready_with_both_inputs_missing_says_which_are_out_of_order(tmp_path: Path) -> None:
    (tmp_path / "device.key").write_bytes(b"k" * 32)
    cfg = tmp_path / "locker.toml"
    cfg.write_text(CONFIG.format(state=tmp_path / "state"))
    with _notify_socket() as (sock, path):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "NOTIFY_SOCKET": path}
        env.pop("JOURNAL_STREAM", None)
        env.pop("WATCHDOG_USEC", None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "locker", "--config", str(cfg)],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        lines: list[str] = []
        assert proc.stderr is not None
        stream = proc.stderr
        reader = threading.Thread(target=lambda: lines.extend(stream), daemon=True)
        reader.start()
        try:
            got: list[str] = []
            while not any(m.startswith("STATUS=serving") for m in got):
                got.append(sock.recv(4096).decode())
            assert "READY=1" in got
            status = next(m for m in got if m.startswith("STATUS=serving"))
            assert status == "STATUS=serving 1 compartments; out of order: keypad, scanner"
            wait_for(lambda: any(" ready with input" in ln for ln in lines), 10, what="ready")
            # each fault was reported (logged and committed) before READY, once
            before = lines[: next(i for i, ln in enumerate(lines) if " ready with input" in ln)]
            for device in ("keypad", "scanner"):
                assert sum(f"{device}: cannot open" in ln for ln in before) == 1, before
            db = tmp_path / "state" / "locker.db"
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:

                def devices() -> list[str]:
                    rows = con.execute(
                        "SELECT payload FROM outbox WHERE type='hardware_fault'"
                    ).fetchall()
                    return [json.loads(r[0])["data"]["device"] for r in rows]

                wait_for(lambda: len(devices()) >= 2, 10, what="both hardware_fault events")
                assert sorted(devices()) == ["keypad", "scanner"]
        finally:
            proc.terminate()
            proc.wait(15)
    assert proc.returncode == 0


def test_a_touch_keypad_on_a_public_address_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The break-test's input: ``listen = "0.0.0.0:8099"`` with ``touch_keypad`` passed the
    check silently, an unauthenticated keypad on the LAN."""
    (tmp_path / "device.key").write_bytes(b"k" * 32)
    base = CONFIG.format(state=tmp_path / "state")
    cases = {
        '"0.0.0.0:8099"': True,
        '"[::]:8099"': True,
        '"192.168.1.20:8099"': True,
        '"127.0.0.1:8099"': False,
        '"[::1]:8099"': False,
    }
    for listen, warned in cases.items():
        for touch in ("true", "false"):
            cfg = tmp_path / "locker.toml"
            cfg.write_text(f"{base}[panel]\nlisten = {listen}\ntouch_keypad = {touch}\n")
            assert check_config_cli(cfg, check_files=False) == 0
            err = capsys.readouterr().err
            said = "warning: panel.listen" in err and "panel.touch_keypad = true" in err
            assert said == (warned and touch == "true"), (listen, touch, err)
