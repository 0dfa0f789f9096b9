"""A local Mosquitto for the simulator and the test suite, with the certificates it needs.

- ``Broker``: Debian's ``mosquitto`` on a free loopback port with its own config and
  persistence directory, plain (anonymous) or mutual TLS with the per-locker ACL of
  ``locker.fleet.provision``; stop/kill/pause/resume/restart keep the same port and directory.
- ``Pki``: a CA, the broker's certificate and client certificates, made by
  ``locker.fleet.provision`` (the same code ``lockerctl`` provisions real fleets with).

Loopback only: nothing here is meant for a production broker (see README, "Scale out").
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locker import errors
from locker.fleet import provision
from locker.fleet.client import FleetClient, TlsFiles

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
SERVER_CN = provision.BACKEND_USER
OPERATOR_CN = provision.OPERATOR_USER


def die_with_parent() -> None:
    """``preexec_fn`` for helper processes: the kernel sends SIGTERM to the child when the
    process that started it dies, so a crashed test run leaves no broker or daemon behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


PR_SET_PDEATHSIG = 1


class BrokerStartError(errors.LinkError):
    """Mosquitto did not come up (missing binary, bad config, port taken)."""


HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


# --- certificates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientCert:
    cert_file: str
    key_file: str
    serial: int = 0


class Pki:
    """A CA, the broker's certificate (SAN localhost + 127.0.0.1) and client certificates."""

    def __init__(
        self,
        directory: Path,
        ca_name: str = "Test fleet CA",
        server_names: tuple[list[str], list[str]] = (["localhost"], [HOST]),
        server_days: int = 825,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.ca = provision.make_ca(ca_name)
        self.ca_file = str(directory / "ca.pem")
        provision.write_public(self.ca_file, self.ca.cert_pem)
        server = provision.make_server_cert(self.ca, *server_names, days=server_days)
        self.server_cert, self.server_key = (
            str(directory / "server.pem"),
            str(directory / "server.key"),
        )
        server.write(self.server_key, self.server_cert)
        self.crl_file = str(directory / "crl.pem")
        provision.write_public(self.crl_file, provision.make_crl(self.ca))
        self._clients: dict[str, ClientCert] = {}
        self._revoked: set[int] = set()

    def revoke(self, cn: str) -> None:
        """Put the certificate of ``cn`` on the CRL (the broker reads it when it starts)."""
        self._revoked.add(self.client(cn).serial)
        provision.write_public(self.crl_file, provision.make_crl(self.ca, self._revoked))

    def client(self, cn: str, days: int = provision.CLIENT_DAYS) -> ClientCert:
        """A client certificate with this CN, valid ``days`` (made once, then reused)."""
        if cn not in self._clients:
            pair = provision.make_client_cert(self.ca, cn, days)
            cert = ClientCert(
                str(self.dir / f"{cn}.pem"), str(self.dir / f"{cn}.key"), pair.cert.serial_number
            )
            pair.write(cert.key_file, cert.cert_file)
            self._clients[cn] = cert
        return self._clients[cn]


# --- the broker -----------------------------------------------------------------------------


class Broker:
    """One Mosquitto process; its port and persistence directory survive restarts."""

    def __init__(
        self,
        directory: Path,
        *,
        pki: Pki | None = None,
        extra: str = "",
        server_users: Sequence[str] = (SERVER_CN,),
    ) -> None:
        """``server_users``: identities the ACL gives a server's rights (read everything,
        write cmd and ack), e.g. one per fleet-service worker."""
        self.dir = directory
        self.pki = pki
        self.server_users = tuple(server_users)
        self.host = HOST
        self.port = free_port()
        self.data_dir = directory / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.conf = directory / "mosquitto.conf"
        self.log_file = directory / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf.write_text(self._render(extra))

    @property
    def tls(self) -> bool:
        return self.pki is not None

    def _render(self, extra: str) -> str:
        # Started as root, Mosquitto stays the owner of the files it reads (us).
        run_as = pwd.getpwuid(os.geteuid()).pw_name
        if self.pki is None:
            return provision.render_mosquitto_conf(
                port=self.port,
                persistence_dir=self.data_dir,
                run_as=run_as,
                tls=False,
                extra=extra,
            )
        acl = self.dir / "acl"
        acl.write_text(provision.render_acl("lockers", self.server_users, [OPERATOR_CN]))
        return provision.render_mosquitto_conf(
            port=self.port,
            cafile=self.pki.ca_file,
            certfile=self.pki.server_cert,
            keyfile=self.pki.server_key,
            crlfile=self.pki.crl_file,
            persistence_dir=self.data_dir,
            acl_file=acl,
            run_as=run_as,
            extra=extra,
        )

    def start(self, timeout: float = 10.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - our binary, our config
                [MOSQUITTO, "-c", str(self.conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - only a prctl, no locks taken
            )
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.proc.poll() is not None:
                raise BrokerStartError(f"mosquitto exited at start:\n{self.log()}")
            if time.monotonic() > deadline:
                raise BrokerStartError(f"mosquitto not listening on {self.port} after {timeout}s")
            time.sleep(0.01)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> None:
        """SIGTERM saves the persistence database; SIGKILL is a crash (recent data lost)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.resume()  # a stopped process would not act on SIGTERM
        self.proc.send_signal(sig)
        self.proc.wait(timeout)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self, sig: signal.Signals = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()

    def pause(self) -> None:
        """SIGSTOP: a hung broker; clients see a half-open connection."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def endpoint(self, client_id: str | None = None) -> Endpoint:
        """Connection settings for a test client; with TLS, a certificate for ``client_id``."""
        if self.pki is None:
            return Endpoint(self.host, self.port)
        cert = self.pki.client(client_id) if client_id else None
        return Endpoint(self.host, self.port, self.pki.ca_file, cert)

    def link_kwargs(self, locker_id: str) -> dict[str, Any]:
        """Connection settings for ``locker.cabinet.link.MqttLink`` as this locker."""
        if self.pki is None:
            return {"host": self.host, "port": self.port, "tls": False}
        cert = self.pki.client(locker_id)
        return {
            "host": self.host,
            "port": self.port,
            "tls": True,
            "ca_file": self.pki.ca_file,
            "cert_file": cert.cert_file,
            "key_file": cert.key_file,
        }


@dataclass(frozen=True)
class Endpoint:
    """Where and how a test client connects (TLS when ``ca_file`` is set)."""

    host: str
    port: int
    ca_file: str | None = None
    cert: ClientCert | None = None


def server_client(broker: Broker, keepalive_s: int) -> FleetClient:
    """The central server's MQTT client on ``broker`` (not yet connected): the ``SERVER_CN``
    identity of its Pki, mutual TLS, a persistent session (an hour), so commands and events
    in flight survive a reconnect."""
    assert broker.pki is not None
    cert = broker.pki.client(SERVER_CN)
    return FleetClient(
        broker.host,
        broker.port,
        client_id=SERVER_CN,
        tls=TlsFiles(Path(broker.pki.ca_file), Path(cert.cert_file), Path(cert.key_file)),
        clean_start=False,
        session_expiry_s=3600,
        keepalive_s=keepalive_s,
    )
