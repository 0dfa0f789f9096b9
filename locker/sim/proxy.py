"""A loopback TCP relay between a client and a broker, for network faults neither end causes.

``TcpProxy`` relays ``127.0.0.1:port`` to an upstream port on the same host. ``cut()`` closes
every relayed connection at both ends at once (a dropped link both peers notice); ``blackhole()``
keeps the connections open but stops moving bytes either way until ``restore()`` (a link that
silently loses everything: only keepalives notice). Loopback only, one thread per connection:
a test and soak aid, not a production relay.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading

from locker.sim.broker import HOST


class TcpProxy:
    """Relays ``HOST:port`` to ``HOST:upstream_port``; keeps accepting across faults."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = (HOST, upstream_port)
        self._listener = socket.create_server((HOST, 0))
        self.port = int(self._listener.getsockname()[1])
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._flowing = threading.Event()
        self._flowing.set()
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self._listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                down, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                up = socket.create_connection(self.upstream, timeout=2)
            except OSError:
                down.close()
                continue
            with self._lock:
                self._pairs.append((down, up))
                self.accepted += 1
            threading.Thread(target=self._relay, args=(down, up), daemon=True).start()

    def _relay(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        with contextlib.suppress(OSError, ValueError):
            while not self._stop.is_set():
                if not self._flowing.wait(0.2):
                    continue  # blackholed: bytes stay in the kernel buffers, nothing moves
                readable, _, _ = select.select([a, b], [], [], 0.2)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        raise OSError("closed")
                    if not self._flowing.is_set():
                        continue  # swallowed: a blackhole loses what is in flight
                    peer[sock].sendall(data)
        self._close(a, b)

    @staticmethod
    def _close(*socks: socket.socket) -> None:
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def cut(self) -> int:
        """Close every relayed connection now; returns how many were cut."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for down, up in pairs:
            self._close(down, up)
        return len(pairs)

    def blackhole(self) -> None:
        """Stop relaying in both directions; connections stay open (no FIN, no RST)."""
        self._flowing.clear()

    def restore(self) -> None:
        """Relay again after ``blackhole``."""
        self._flowing.set()

    def close(self) -> None:
        self._stop.set()
        self._flowing.set()
        self._listener.close()
        self.cut()
        self._thread.join(2)
