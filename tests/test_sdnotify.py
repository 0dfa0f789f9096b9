"""sd_notify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from locker import sdnotify


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify"
    assert len(os.fsencode(path)) < 108  # sun_path limit
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def _received(sock: socket.socket) -> str:
    return sock.recv(4096).decode("utf-8")


def test_without_notify_socket_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    assert sdnotify.watchdog() is False
    assert sdnotify.stopping() is False
    assert sdnotify.status("x") is False
    assert sdnotify.notify("READY=1") is False


@pytest.mark.timeout(10)
def test_messages_reach_the_socket(receiver: socket.socket) -> None:
    assert sdnotify.ready()
    assert _received(receiver) == "READY=1"
    assert sdnotify.watchdog()
    assert _received(receiver) == "WATCHDOG=1"
    assert sdnotify.status("connected to broker, 3 events queued")
    assert _received(receiver) == "STATUS=connected to broker, 3 events queued"
    assert sdnotify.stopping()
    assert _received(receiver) == "STOPPING=1"
    assert sdnotify.notify("RELOADING=1\nSTATUS=reloading")
    assert _received(receiver) == "RELOADING=1\nSTATUS=reloading"


@pytest.mark.timeout(10)
def test_status_cannot_inject_assignments(receiver: socket.socket) -> None:
    assert sdnotify.status("all good\nREADY=1\r\nMAINPID=1")
    message = _received(receiver)
    assert message == "STATUS=all good READY=1 MAINPID=1"
    assert "\n" not in message


@pytest.mark.timeout(10)
def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"locker-test-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready()
        assert _received(sock) == "READY=1"


def test_missing_socket_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    with caplog.at_level(logging.WARNING, logger="locker.sdnotify"):
        assert sdnotify.watchdog() is False
    assert "sd_notify failed" in caplog.text


def test_unsupported_address_is_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    with caplog.at_level(logging.WARNING, logger="locker.sdnotify"):
        assert sdnotify.ready() is False
    assert "unsupported" in caplog.text


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_interval() is None


@pytest.mark.parametrize("value", ["", "abc", "0", "-5", "1.5e6"])
def test_invalid_watchdog_usec_disables_pings(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, value: str
) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", value)
    with caplog.at_level(logging.WARNING, logger="locker.sdnotify"):
        assert sdnotify.watchdog_interval() is None
    assert "WATCHDOG_USEC" in caplog.text
