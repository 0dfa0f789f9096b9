"""The fleet service beside the simulated locker (``make simulate``).

``SimFleet`` makes a fleet directory for the run (``provision_fleet``, then pointed at the
simulator's broker: its CA and key, and every server identity, ``fleet`` for the service,
``backend`` and ``lockerctl``, from the simulator's Pki, so ``lockerctl`` works against it), an
``operator`` user whose password is printed for the console, and runs
:class:`locker.fleet.service.app.FleetService` in this process (SQLite in the fleet
directory, plain-HTTP cookies since it listens on loopback only). The simulated cabinet trusts
the user's command key and the fleet's token key (:meth:`trust`), so the console's actions
and the API's parcels work on it. The service's log is ``service.log`` in its directory.

Needs the ``[fleet]`` extra; :func:`available` says whether it is installed.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from locker.fleet import provision
from locker.sim.broker import Broker

SERVICE_CN = "fleet"
OPERATOR = "operator"
TOKEN_KID = 2
SERVICE_LOGGER = "locker.fleet.service"  # the simulated cabinet's own token key is kid 1


def available() -> bool:
    return all(importlib.util.find_spec(m) for m in ("sqlalchemy", "fastapi", "uvicorn"))


class SimFleet:
    def __init__(self, workdir: Path, broker: Broker, listen: str = "127.0.0.1:8080") -> None:
        from locker.fleet.service import db, users  # noqa: PLC0415 - needs the [fleet] extra

        assert broker.pki is not None
        self.dir = workdir
        self.listen = listen
        provision.provision_fleet(
            workdir,
            "simulated fleet",
            "127.0.0.1",
            broker_port=broker.port,
            token_kid=TOKEN_KID,
            run_as_root=os.geteuid() == 0,
        )
        self._adopt_ca(broker)
        with (workdir / "fleet.toml").open("a", encoding="utf-8") as f:
            f.write(f'\n[mqtt]\nclient = "{SERVICE_CN}"\n\n[http]\nsecure_cookies = false\n')
        url = f"sqlite:///{workdir / 'fleet.db'}"
        db.upgrade(url)
        engine = db.make_engine(url)
        try:
            self.login = users.add_user(engine, provision.Fleet.load(workdir), OPERATOR, "operator")
        finally:
            engine.dispose()
        self.service: Any = None
        self._log: logging.FileHandler | None = None

    def _adopt_ca(self, broker: Broker) -> None:
        """Make the fleet directory one of the simulator's broker: its CA (certificate, key,
        CRL, the broker/ copies) and every server identity (``clients/*.pem``: the
        service's ``fleet``, ``backend``, ``lockerctl``) issued by it, so ``lockerctl ...
        --fleet`` this directory connects (before, lockerctl.pem came from the fleet's own
        CA, which the broker does not trust: "broker refused the connection"), and
        ``lockerctl locker add`` would make certificates the broker takes."""
        assert broker.pki is not None
        ca = broker.pki.ca
        d = self.dir
        provision.write_private(d / "ca-key.pem", ca.key_pem)
        for path in (d / "ca.pem", d / "broker" / "ca.pem"):
            provision.write_public(path, ca.cert_pem)
        crl = provision.make_crl(ca)
        for path in (d / "crl.pem", d / "broker" / "crl.pem"):
            provision.write_public(path, crl)
        shutil.copyfile(broker.pki.server_cert, d / "broker" / "server.pem")
        provision.write_private(
            d / "broker" / "server-key.pem", Path(broker.pki.server_key).read_bytes()
        )
        for cn in (*provision.SERVER_USERS, SERVICE_CN):
            cert = broker.pki.client(cn)
            shutil.copyfile(cert.cert_file, d / "clients" / f"{cn}.pem")
            provision.write_private(
                d / "clients" / f"{cn}-key.pem", Path(cert.key_file).read_bytes()
            )

    def trust(self) -> dict[str, Any]:
        """SimCabinet arguments that make the cabinet accept this fleet's signers."""
        fleet = provision.Fleet.load(self.dir)
        return {
            "extra_command_keys": fleet.command_public_keys(),
            "extra_token_keys": {
                str(TOKEN_KID): provision.encode_public_key(fleet.token_key().public_key())
            },
        }

    def register(self, locker_id: str, device_key: bytes, config: Path | None = None) -> None:
        """The service needs each locker's device key to make code tags; ``config`` (the
        locker's own locker.toml) is copied beside it, as ``lockerctl locker add`` leaves
        one, so ``lockerctl code new`` knows the locker's code length."""
        where = self.dir / "lockers" / locker_id
        where.mkdir(parents=True, exist_ok=True)
        provision.write_private(where / "device.key", device_key)
        if config is not None:
            provision.write_public(where / "locker.toml", config.read_bytes())

    def start(self) -> str:
        """Start the service; returns the console's URL."""
        from locker.fleet.service.app import FleetService  # noqa: PLC0415 - [fleet] extra
        from locker.fleet.service.config import ServiceConfig  # noqa: PLC0415

        # the service's own log goes to a file: the terminal tells the story. One handler per
        # run, added once however often start is tried, removed by stop: each record is one
        # line of this run's file, never one of another's
        log = logging.getLogger(SERVICE_LOGGER)
        if self._log is None:
            self._log = logging.FileHandler(self.dir / "service.log")
            self._log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(self._log)
            log.setLevel(logging.INFO)
            log.propagate = False
        cfg = ServiceConfig.load(self.dir, http=self.listen)
        self.service = FleetService(cfg)
        self.service.start()
        host = cfg.listen[0]
        return f"http://{host}:{self.service.port}/"

    def holds(self, locker_id: str, epoch: str, upto_seq: int) -> bool:
        """Whether the fleet service has stored every event of ``epoch`` up to ``upto_seq``."""
        from sqlalchemy import select  # noqa: PLC0415 - needs the [fleet] extra

        from locker.fleet.service.db import streams  # noqa: PLC0415 - needs the [fleet] extra

        if self.service is None:
            return False
        q = select(streams.c.contiguous).where(
            streams.c.locker == locker_id, streams.c.epoch == epoch
        )
        with self.service.engine.connect() as conn:
            contiguous = conn.execute(q).scalar()
        return contiguous is not None and contiguous >= upto_seq

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
        if self._log is not None:
            log = logging.getLogger(SERVICE_LOGGER)
            log.removeHandler(self._log)
            log.propagate = not log.handlers
            self._log.close()
            self._log = None
