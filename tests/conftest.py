"""Fixtures shared by the whole suite.

Helper modules with their own fixtures (the Mosquitto broker, certificates, the board emulator)
live beside this file and are imported explicitly by the tests that use them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

# The fleet service's tests need the [fleet] extra (`pip install -e '.[test]'` brings it); a
# venv made before it existed skips them rather than failing to collect.
if not all(importlib.util.find_spec(m) for m in ("sqlalchemy", "fastapi", "argon2")):
    collect_ignore_glob = ["test_fleet_*.py"]


@pytest.fixture
def mock_factory() -> Iterator[MockFactory]:
    """gpiozero's own pattern: a fresh MockFactory, the global one saved and restored."""
    saved = Device.pin_factory
    factory = MockFactory()
    Device.pin_factory = factory
    try:
        yield factory
    finally:
        factory.reset()
        Device.pin_factory = saved


def wait_for(
    predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.005, what: str = ""
) -> None:
    """Wait until ``predicate()`` is truthy, or fail the test after ``timeout`` seconds.

    The only way tests wait: on a condition with a deadline, never a bare sleep."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def never_within(predicate: Callable[[], object], seconds: float, what: str) -> None:
    """Fail if ``predicate()`` becomes true at any time during the next ``seconds``.

    Asserting an absence needs a window: this polls through it instead of sleeping blindly."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            pytest.fail(f"{what} happened within {seconds}s")
        time.sleep(0.02)


class _FailOnCallbackError(logging.Handler):
    """Production code logs exceptions caught in adapter callbacks and carries on; in tests
    such a log is a failure (Home Assistant's fail_on_log_exception idea)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and getattr(record, "callback_error", False):
            self.records.append(record)


@pytest.fixture(autouse=True)
def fail_on_callback_error() -> Iterator[None]:
    handler = _FailOnCallbackError()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
    if handler.records:
        pytest.fail(
            "an adapter callback raised: " + "; ".join(handler.format(r) for r in handler.records)
        )


@contextlib.contextmanager
def small_tmpfs(mountpoint: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted on ``mountpoint`` (an existing directory) with ``options`` (e.g.
    ``size=640k``) for as long as the block runs, then lazily unmounted: a disk that can
    really fill or go read-only. Skips the test when not root or when mounting fails."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mountpoint)],
        capture_output=True,
        check=False,
        timeout=10,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False, timeout=10)
