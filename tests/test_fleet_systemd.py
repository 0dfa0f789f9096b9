"""The fleet service under systemd (``systemd/locker-fleet.service``), at the process level:
a real ``lockerctl serve`` child, a real notify socket, a real TLS broker and lockerd.

- READY=1 once it serves, WATCHDOG=1 while its worker threads run, STOPPING=1 and exit 0
  on SIGTERM.
- ``MemoryDenyWriteExecute=yes`` in both units: the service and lockerd run their whole
  stack under the kernel's PR_SET_MDWE (what systemd applies for that setting where the
  kernel has it), so a library that needs writable+executable memory fails here, not in
  production. Skipped where the kernel lacks PR_SET_MDWE (Linux < 6.3).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from locker.sim.broker import Broker, free_port
from tests.conftest import wait_for
from tests.daemon_rig import one_door_config
from tests.fleet_rig import add_user, cabinet, fleet_dir, service_broker

_ = service_broker
pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]

PR_SET_MDWE = 65  # linux/prctl.h, Linux 6.3
PR_MDWE_REFUSE_EXEC_GAIN = 1


def _mdwe_supported() -> bool:
    """Whether this kernel has PR_SET_MDWE (probed in a child: it cannot be undone)."""
    probe = textwrap.dedent(
        f"""
        import ctypes, sys
        libc = ctypes.CDLL(None, use_errno=True)
        sys.exit(0 if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) == 0 else 1)
        """
    )
    return subprocess.run([sys.executable, "-c", probe], timeout=30, check=False).returncode == 0


# A child that refuses writable+executable memory for the rest of its life, then runs a module
# as ``python -m`` would.
UNDER_MDWE = textwrap.dedent(
    f"""
    import ctypes, mmap, runpy, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
        sys.exit("PR_SET_MDWE refused")
    try:  # the restriction is on: what a JIT or an old-style cffi callback would do fails
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        sys.exit("writable+executable memory was still allowed")
    except PermissionError:
        pass
    if sys.argv[1] == "locker.fleet.ctl":
        from argon2 import PasswordHasher  # the console's login hashing, for real
        hasher = PasswordHasher()
        assert hasher.verify(hasher.hash("a password"), "a password")
    module, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    """
)


@contextlib.contextmanager
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    with tempfile.TemporaryDirectory(prefix="sdn") as d:  # AF_UNIX paths: 107 bytes at most
        path = os.path.join(d, "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.settimeout(30)
            yield sock, path


def _messages(sock: socket.socket, until: str, seen: list[str]) -> list[str]:
    while not any(m.startswith(until) for m in seen):
        seen.extend(sock.recv(4096).decode().splitlines())
    return seen


def _serve(
    d: Path, port: int, notify: str, log: Path, *, mdwe: bool = False
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NOTIFY_SOCKET": notify, "WATCHDOG_USEC": "400000"}
    env.pop("WATCHDOG_PID", None)
    args = ["locker.fleet.ctl", "serve", "--fleet", str(d), "--http", f"127.0.0.1:{port}"]
    cmd = [sys.executable, "-c", UNDER_MDWE, *args] if mdwe else [sys.executable, "-m", *args]
    with log.open("ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def _serve_and_stop(tmp_path: Path, broker: Broker, *, mdwe: bool) -> None:
    d = fleet_dir(tmp_path, broker)
    viewer = add_user(d, "viewer", "viewer")
    cab = cabinet(d, broker, tmp_path / "cab")
    (d / "ca-key.pem").unlink()  # README: the CA key stays where lockers are provisioned
    port = free_port()
    log = tmp_path / "serve.log"
    with notify_socket() as (sock, path):
        proc = _serve(d, port, path, log, mdwe=mdwe)
        try:
            seen = _messages(sock, "READY=1", [])
            _messages(sock, "STATUS=serving", seen)
            for _ in range(3):  # every 0.2 s: half of WATCHDOG_USEC
                seen.clear()
                _messages(sock, "WATCHDOG=1", seen)
            cab.start()
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {viewer.token}"},
                timeout=30,
            ) as c:
                health = c.get("/healthz").json()
                assert health["status"] == "ok", health
                assert set(health["threads"]) == {
                    "fleet-ingest",
                    "fleet-delivery",
                    "fleet-housekeeping",
                }

                def stored() -> bool:
                    return bool(c.get("/api/v1/lockers/SIM-0001/events").json())

                wait_for(stored, 30, what="the locker's events stored\n" + log.read_text())
            proc.send_signal(signal.SIGTERM)
            _messages(sock, "STOPPING=1", [])
            assert proc.wait(30) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            cab.close()


def test_serve_tells_systemd_ready_feeds_its_watchdog_and_stops_cleanly(
    tmp_path: Path, service_broker: Broker
) -> None:
    _serve_and_stop(tmp_path, service_broker, mdwe=False)


@pytest.mark.skipif(not _mdwe_supported(), reason="kernel without PR_SET_MDWE (Linux < 6.3)")
def test_the_fleet_service_runs_with_memory_deny_write_execute(
    tmp_path: Path, service_broker: Broker
) -> None:
    _serve_and_stop(tmp_path, service_broker, mdwe=True)


@pytest.mark.skipif(not _mdwe_supported(), reason="kernel without PR_SET_MDWE (Linux < 6.3)")
def test_lockerd_runs_with_memory_deny_write_execute(tmp_path: Path) -> None:
    cfg = one_door_config(tmp_path, tmp_path / "state", "LKR-M1")
    log = tmp_path / "lockerd.log"
    with notify_socket() as (sock, path):
        env = {**os.environ, "NOTIFY_SOCKET": path}
        env.pop("WATCHDOG_USEC", None)
        cmd = [sys.executable, "-c", UNDER_MDWE, "locker", "--config", str(cfg)]
        with log.open("ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            _messages(sock, "READY=1", [])
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
