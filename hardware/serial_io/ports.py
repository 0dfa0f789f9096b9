"""Small typed helpers over pySerial ports shared by the serial inputs and the RS-485 bus."""

from __future__ import annotations

import serial


def waiting(port: serial.SerialBase) -> int:
    """Bytes waiting to be read on ``port``.

    Every pySerial port class (posix, loop://, socket://, rfc2217://) defines ``in_waiting``,
    but their common base ``SerialBase`` does not declare it (types-pyserial follows the code),
    so it is looked up and checked here instead of assumed.

    :raises TypeError: the port object cannot say how many bytes are waiting.
    """
    count = getattr(port, "in_waiting", None)
    if not isinstance(count, int):
        raise TypeError(f"{type(port).__name__} cannot tell how many bytes are waiting")
    return count
