"""The systemd notification protocol (sd_notify(3)), hand-rolled: readiness, watchdog, status.

Every call is a no-op returning False when the process was not started by systemd with
``Type=notify`` (no ``NOTIFY_SOCKET``). Abstract-namespace sockets (a leading ``@``) are
supported. A failed send is logged and reported by the return value, never raised: losing one
notification must not take the daemon down (a missed watchdog ping will, as intended).
"""

from __future__ import annotations

import logging
import os
import socket

logger = logging.getLogger(__name__)


def _socket_address() -> str | None:
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        return "\0" + address[1:]
    if address.startswith("/"):
        return address
    if address:
        logger.warning("NOTIFY_SOCKET has an unsupported address form; notifications disabled")
    return None


def notify(state: str) -> bool:
    """Send ``state`` (newline-separated ``KEY=VALUE`` assignments) to systemd.

    :returns: True when the datagram was sent, False without systemd or on error.
    """
    address = _socket_address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError as err:
        logger.warning("sd_notify failed: %s", err)
        return False
    return True


def ready() -> bool:
    """Tell systemd start-up is complete. ``lockerd`` sends it once the config, database,
    lock banks and link settings are up and every keypad and scanner has either opened its
    port or reported its fault as a ``hardware_fault`` (``Locker.start``)."""
    return notify("READY=1")


def watchdog() -> bool:
    """Feed the watchdog; call from the loop that does the work, never from a helper thread."""
    return notify("WATCHDOG=1")


def stopping() -> bool:
    """Tell systemd a clean shutdown has begun."""
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """Set the free-form status line shown by ``systemctl status``."""
    # A newline would start a new assignment (e.g. a forged READY=1): flatten it.
    return notify("STATUS=" + " ".join(text.splitlines()))


def watchdog_interval() -> float | None:
    """How often to call :func:`watchdog`, in seconds: half the systemd watchdog timeout.

    None when the watchdog is off, ``WATCHDOG_USEC`` is invalid, or ``WATCHDOG_PID`` names
    another process (the setting was inherited, not meant for us).
    """
    usec = os.environ.get("WATCHDOG_USEC")
    if usec is None:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid is not None and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        value = 0
    if value <= 0:
        logger.warning("WATCHDOG_USEC is not a positive integer; watchdog pings disabled")
        return None
    return value / 2_000_000
