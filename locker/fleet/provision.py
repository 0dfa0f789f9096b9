"""Provisioning: what an installer or operator creates once per fleet or once per locker.

This module creates a fleet (:func:`provision_fleet`) and re-exports the pieces ``lockerctl``
and the tests use, each kept in its own module:

- ``locker.fleet.pki``: the CA, server and client certificates, the CRL;
- ``locker.fleet.keys``: device keys, Ed25519 signing keys, file writers with explicit modes;
- ``locker.fleet.mosquitto``: the broker's configuration and role-based ACL;
- ``locker.fleet.layout``: the fleet directory (``Fleet``);
- ``locker.fleet.lockers``: adding, renewing, revoking and removing one locker, with a config
  validated by lockerd's own model before any file or certificate exists.

Private keys are written with mode 0600 and never printed or logged.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
from collections.abc import Sequence
from pathlib import Path

from locker.config import ConfigError, parse_config
from locker.fleet.keys import (
    ProvisionArgumentError,
    ProvisionError,
    UnknownLockerError,
    decode_public_key,
    encode_public_key,
    generate_device_key,
    generate_signing_key,
    load_signing_key,
    read_device_key,
    signing_key_pem,
    write_device_key,
    write_new,
    write_private,
    write_public,
)
from locker.fleet.layout import Fleet, check_locker_id, make_dir
from locker.fleet.lockers import (
    BoardSpec,
    CompartmentSpec,
    KeypadSpec,
    LockerFiles,
    ScannerSpec,
    locker_config,
    provision_locker,
    remove_locker,
    renew_locker,
    revoke_locker,
)
from locker.fleet.mosquitto import BACKEND_USER, OPERATOR_USER, render_acl, render_mosquitto_conf
from locker.fleet.pki import (
    CLIENT_DAYS,
    CLOCK_SKEW,
    LOCKER_ID_RE,
    PemPair,
    make_ca,
    make_client_cert,
    make_crl,
    make_server_cert,
)
from locker.fleet.staging import Report, staged_dir

__all__ = [
    "BACKEND_USER",
    "CLIENT_DAYS",
    "CLOCK_SKEW",
    "LOCKER_ID_RE",
    "OPERATOR_USER",
    "SERVER_USERS",
    "BoardSpec",
    "CompartmentSpec",
    "Fleet",
    "KeypadSpec",
    "LockerFiles",
    "PemPair",
    "ProvisionArgumentError",
    "ProvisionError",
    "ScannerSpec",
    "UnknownLockerError",
    "check_locker_id",
    "decode_public_key",
    "encode_public_key",
    "generate_device_key",
    "generate_signing_key",
    "load_signing_key",
    "locker_config",
    "make_ca",
    "make_client_cert",
    "make_crl",
    "make_server_cert",
    "provision_fleet",
    "provision_locker",
    "read_device_key",
    "remove_locker",
    "render_acl",
    "render_mosquitto_conf",
    "renew_locker",
    "revoke_locker",
    "signing_key_pem",
    "write_device_key",
    "write_private",
    "write_public",
]

logger = logging.getLogger(__name__)

SERVER_USERS = (BACKEND_USER, OPERATOR_USER)
"""Two server identities: the broker forces client id = CN, so a long-running watcher and a
one-off command on the same certificate would disconnect each other. The backend acknowledges
events; the operator identity only sends commands and reads (render_acl)."""


def _check_fleet_settings(
    broker_host: str, broker_port: int, topic_prefix: str, command_kid: str, token_kid: int
) -> None:
    # The fleet's settings end up in every locker's file: judge them with lockerd's own model
    # now, so a fleet is never created that no locker could be added to (issue 7: '$lockers').
    mqtt = {"host": broker_host, "port": broker_port, "topic_prefix": topic_prefix}
    mqtt |= {"ca_file": "ca.pem", "cert_file": "c.pem", "key_file": "k.pem"}
    probe = {
        "locker": {"id": "probe", "state_dir": "."},
        "mqtt": mqtt,
        "security": {
            "device_key_file": "device.key",
            "command_keys": {command_kid: encode_public_key(generate_signing_key())},
            "token_keys": {str(token_kid): encode_public_key(generate_signing_key())},
        },
        "compartments": [{"id": "A1", "size": "S", "board": "b0", "channel": 1}],
        "boards": [{"name": "b0", "port": "loop://"}],
    }
    try:
        parse_config(probe, source="fleet settings", check_files=False)
    except ConfigError as err:
        raise ProvisionArgumentError(
            "lockerd would refuse these settings in a locker's file:\n" + "\n".join(err.errors)
        ) from None
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,32}", command_kid):
        raise ProvisionArgumentError(f"bad command key id {command_kid!r} (it is also a file name)")


def _current_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def provision_fleet(
    directory: Path | str,
    fleet_name: str,
    broker_host: str,
    *,
    broker_port: int = 8883,
    broker_ips: Sequence[str] = (),
    topic_prefix: str = "lockers",
    command_kid: str = "ops1",
    token_kid: int = 1,
    run_as_root: bool = False,
    broker_user: str | None = None,
    broker_install_dir: str | None = None,
    broker_bind: str | None = None,
    report: Report = logger.warning,
) -> Fleet:
    """Create a fleet: CA, CRL, broker certificate + config + ACL, server client certificates,
    the command signing key and the QR token signing key. Refuses to overwrite a fleet.

    All or nothing: the fleet is built beside ``directory`` and renamed into place at the end
    (:func:`locker.fleet.staging.staged_dir`; inside it when it is an empty directory, with
    ``fleet.toml`` moved in last), so a run that fails part-way (a full disk, Ctrl-C) leaves
    nothing, and the same command can simply be run again. ``directory`` must not exist or be
    empty. ``report`` receives one line for each leftover of a killed earlier run removed.

    ``broker_install_dir``: where the broker's files will live on the broker host, used in
    ``mosquitto.conf``; default: this fleet directory's ``broker/``. ``broker_bind``: the
    listener's address (default: every interface). ``broker_user``: who Mosquitto runs as when
    started as root (default: the user running this, who owns the files; ``run_as_root``:
    root).

    :raises ProvisionError: an existing fleet or a non-empty directory, settings lockerd
        would refuse, another run creating the same directory.
    :raises errors.StorageError: a file could not be written (nothing is kept then).
    """
    final = Path(directory)
    # fleet.toml is put in place last: without it, what is there is not a fleet (staged_dir
    # removes an interrupted run's part, and refuses anything else)
    if (final / Fleet.FILE).exists():
        raise ProvisionError(f"{final} already holds a fleet; refusing to overwrite it")
    _check_fleet_settings(broker_host, broker_port, topic_prefix, command_kid, token_kid)
    settings = (fleet_name, broker_host, broker_port, topic_prefix, command_kid, token_kid)
    with staged_dir(final, report, last=Fleet.FILE) as d:
        fleet = Fleet(d, *settings, SERVER_USERS)
        for sub in ("broker", "broker/data", "clients", "keys", "lockers"):
            make_dir(d / sub)
        ca = make_ca(f"{fleet_name} locker CA")
        write_new(fleet.ca_key_file, ca.key_pem, private=True)
        write_new(fleet.ca_file, ca.cert_pem, private=False)
        write_public(fleet.crl_file, make_crl(ca))
        _provision_broker(
            fleet,
            ca,
            broker_ips,
            run_as="root" if run_as_root else (broker_user or _current_user()),
            # the files' final place, not the staging directory's
            install_dir=broker_install_dir or str(final.resolve() / "broker"),
            bind_address=broker_bind,
        )
        for user in SERVER_USERS:
            pair = make_client_cert(ca, user)
            cert, key = fleet.client_cert(user)
            write_new(key, pair.key_pem, private=True)
            write_new(cert, pair.cert_pem, private=False)
        for path in (fleet.command_key_file, fleet.token_key_file):
            signing = generate_signing_key()
            write_new(path, signing_key_pem(signing), private=True)
            public = (encode_public_key(signing) + "\n").encode()
            write_new(path.with_suffix(".pub"), public, private=False)
        write_public(d / Fleet.FILE, fleet.render().encode("utf-8"))
    logger.info("provisioned fleet %s in %s", fleet_name, final)
    return Fleet(final, *settings, SERVER_USERS)


def _provision_broker(
    fleet: Fleet,
    ca: PemPair,
    broker_ips: Sequence[str],
    *,
    run_as: str,
    install_dir: str,
    bind_address: str | None,
) -> None:
    b = fleet.dir / "broker"
    server = make_server_cert(ca, [fleet.broker_host], list(broker_ips))
    write_new(b / "server-key.pem", server.key_pem, private=True)
    write_new(b / "server.pem", server.cert_pem, private=False)
    write_public(b / "ca.pem", ca.cert_pem)
    write_public(b / "crl.pem", fleet.crl_file.read_bytes())
    where = install_dir.rstrip("/")
    conf = render_mosquitto_conf(
        port=fleet.broker_port,
        cafile=f"{where}/ca.pem",
        certfile=f"{where}/server.pem",
        keyfile=f"{where}/server-key.pem",
        crlfile=f"{where}/crl.pem",
        persistence_dir=f"{where}/data",
        acl_file=f"{where}/acl",
        run_as=run_as,
        bind_address=bind_address,
    )
    write_public(b / "mosquitto.conf", conf.encode("utf-8"))
    acl = render_acl(fleet.topic_prefix, [BACKEND_USER], [OPERATOR_USER])
    write_public(b / "acl", acl.encode("utf-8"))
