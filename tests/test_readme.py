"""The README's operator steps work when pasted (issue 7, "What a newcomer hit").

The provisioning block of the README's Deploy section is run command by command, as written,
in a scratch directory with the project's commands on PATH, against the Mosquitto its own
``fleet init`` configured (started as the README says, as root when the tests run as root).
Only the broker host and port are changed, to stay on loopback. The deploy steps of
``systemd/install.sh`` are run by tests/test_packaging.py.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
EXIT_TIMEOUT = 4  # lockerctl: no reply from the locker in time


def provisioning_block() -> list[str]:
    """The commands of the ```sh block after "Provisioning with `lockerctl`", continuation
    lines joined, comments dropped."""
    start = README.index("Provisioning with `lockerctl`")
    match = re.search(r"```sh\n(.*?)```", README[start:], re.DOTALL)
    assert match is not None
    text = match.group(1).replace("\\\n", " ")
    lines = [shlex.split(line, comments=True) for line in text.splitlines()]
    return [shlex.join(words) for words in lines if words]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def ready_or_dead(proc: subprocess.Popen[bytes], port: int) -> Callable[[], bool]:
    return lambda: listening(port) or proc.poll() is not None


@pytest.mark.broker
@pytest.mark.timeout(120)
def test_the_readme_provisioning_steps_run_as_written(tmp_path: Path) -> None:
    commands = provisioning_block()
    assert [c.split()[:3] for c in commands][:3] == [
        ["lockerctl", "fleet", "init"],
        ["mosquitto", "-c", "fleet/broker/mosquitto.conf"],
        ["lockerctl", "locker", "add"],
    ]
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    broker: subprocess.Popen[bytes] | None = None
    try:
        for command in commands:
            argv = shlex.split(command)
            if argv[:3] == ["lockerctl", "fleet", "init"]:
                argv = [a if a != "mqtt.example.net" else "localhost" for a in argv]
                argv += ["--broker-port", str(port), "--broker-ip", "127.0.0.1"]
            if argv[0] == "mosquitto":
                # As written but kept in the foreground (-d would detach it from this test).
                argv = [MOSQUITTO, *(a for a in argv[1:] if a != "-d")]
                started = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL)
                broker = started
                wait_for(ready_or_dead(started, port), 10, what="broker")
                assert started.poll() is None, "the broker of the generated config did not start"
                continue
            expected = 0
            if argv[:2] in (["lockerctl", "parcel"], ["lockerctl", "cmd"]):
                argv += ["--timeout", "2"]  # the locker is not running here
                expected = EXIT_TIMEOUT
            if argv[:2] == ["lockerctl", "watch"]:
                argv += ["--duration", "1"]
            done = subprocess.run(
                argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
            )
            assert done.returncode == expected, (command, done.stdout, done.stderr)
            if argv[0] == "lockerd":
                assert done.stdout.startswith("OK: ") and "keypad serial" in done.stdout
    finally:
        if broker is not None:
            broker.send_signal(signal.SIGTERM)
            broker.wait(10)
    config = (tmp_path / "fleet" / "lockers" / "LKR-0001" / "locker.toml").read_text()
    assert 'cert_file = "/etc/locker/device.pem"' in config
