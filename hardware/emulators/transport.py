"""Where the Kerong bus emulator (:mod:`hardware.emulators.kerong`) reads and writes bytes: the
master end of a fresh pty, or any pySerial URL.
"""

from __future__ import annotations

import contextlib
import os
import select
import tty
from typing import Protocol

import serial

__all__ = ["MAX_WAIT_S", "PtyTransport", "SerialTransport", "Transport"]

MAX_WAIT_S = 0.01  # longest the loop blocks, so switches and stop() act promptly


class Transport(Protocol):
    def read(self, timeout: float) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class PtyTransport:
    """The master end of a fresh pty; the slave is what the driver opens.

    The emulator keeps its own slave descriptor open so that reading the master never fails
    with EIO while the driver has the port closed (between reopen attempts)."""

    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self._slave)

    def read(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return b""
        try:
            return os.read(self.master, 4096)
        except BlockingIOError:
            return b""

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.master, view)
            except BlockingIOError:
                return  # nobody reads the slave: the bytes are lost, as on a real line
            view = view[n:]

    def close(self) -> None:
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class SerialTransport:
    """Any pySerial URL (a second USB-RS485 adapter, ``socket://`` ...)."""

    def __init__(self, url: str, baudrate: int) -> None:
        self._port = serial.serial_for_url(url, baudrate=baudrate, timeout=MAX_WAIT_S)
        self.path = url

    def read(self, timeout: float) -> bytes:
        return bytes(self._port.read(max(1, self._port.in_waiting)))

    def write(self, data: bytes) -> None:
        self._port.write(data)

    def close(self) -> None:
        self._port.close()
