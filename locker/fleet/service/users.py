"""Users of the fleet service: roles, argon2 passwords, hashed API tokens, signing keys.

``add_user`` creates a user with a random password and a random API token, printed once by
``lockerctl user add`` and stored only as hashes: the password with argon2id (argon2-cffi's
RFC 9106 defaults), the token with SHA-256 (it is 256 random bits, so a fast hash is enough
and lets the token be looked up). Each user gets an Ed25519 command-signing key,
``DIR/keys/users/<name>.key`` (0600), with its public key beside it (``<name>.pub``):
``Fleet.command_public_keys`` puts every such key into the
``security.command_keys`` of the lockers it provisions, with ``kid`` = the user's name, so a
locker's own record names who acted. Lockers provisioned before a user was added need their
config regenerated (or the key added by hand) before they accept that user's commands
(:func:`unknown_kid_hint` says so when a locker refuses one).

``list_users``, ``remove_user`` and ``reset_user`` serve ``lockerctl user list|remove|reset``:
a removed user's sessions end and its token stops working at once; a reset revokes the old
password (ending its sessions) and/or the old token.

Roles (DESIGN 13): ``viewer`` reads; ``carrier`` issues and manages parcels; ``operator``
also sends commands and acknowledges alarms; ``admin`` may do everything.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, Engine, delete, insert, select, update

from locker import errors
from locker.fleet import layout, provision
from locker.fleet.client import CommandSigner
from locker.fleet.service.db import sessions, users

ROLES = ("viewer", "carrier", "operator", "admin")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
"""A user name is the JWS ``kid`` of the user's commands (the lockers' CommandKid rule)."""

_HASHER = PasswordHasher()


class UserError(errors.UsageError):
    """A user that cannot be created or changed (bad name or role)."""


class UserExistsError(UserError):
    """The name is taken: refusing to overwrite (lockerctl exits 5, like every refusal to
    overwrite)."""


class UnknownUserError(UserError):
    """No user of that name."""


@dataclass(frozen=True)
class User:
    name: str
    role: str


@dataclass(frozen=True)
class NewUser:
    name: str
    role: str
    password: str
    token: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def key_dir(fleet_dir: Path) -> Path:
    return fleet_dir / layout.USER_KEYS_DIR


def add_user(
    engine: Engine,
    fleet: provision.Fleet,
    name: str,
    role: str,
    *,
    hasher: PasswordHasher = _HASHER,
) -> NewUser:
    """Create ``name``; returns the password and token (shown once, stored hashed).

    :raises UserError: bad name or role, the name is taken (also by the fleet's own kid).
    """
    if not NAME_RE.fullmatch(name):
        raise UserError(f"bad user name {name!r}: expected {NAME_RE.pattern}")
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if name == fleet.command_kid:
        raise UserError(f"{name!r} is the fleet's own command key id")
    password = secrets.token_urlsafe(12)
    token = secrets.token_urlsafe(32)
    with engine.begin() as conn:
        if conn.execute(select(users.c.name).where(users.c.name == name)).first():
            raise UserExistsError(
                f"user {name!r} already exists; refusing to overwrite it (a new password or "
                f"token: lockerctl user reset {name})"
            )
        conn.execute(
            insert(users).values(
                name=name,
                role=role,
                password_hash=hasher.hash(password),
                token_hash=token_hash(token),
                created_at=time.time(),
            )
        )
        d = key_dir(fleet.dir)
        d.mkdir(parents=True, exist_ok=True)
        key = provision.generate_signing_key()
        provision.write_private(d / f"{name}.key", provision.signing_key_pem(key))
        provision.write_public(
            d / f"{name}.pub", (provision.encode_public_key(key) + "\n").encode()
        )
    return NewUser(name, role, password, token)


@dataclass(frozen=True)
class Listed:
    name: str
    role: str
    created_at: float
    sessions: int
    has_key: bool


def list_users(engine: Engine, fleet_dir: Path) -> list[Listed]:
    """Every user, by name, with the number of live console sessions and whether its
    signing key is present."""
    now = time.time()
    with engine.connect() as conn:
        rows = conn.execute(select(users).order_by(users.c.name)).all()
        live = (
            conn.execute(select(sessions.c.user).where(sessions.c.expires >= now)).scalars().all()
        )
    d = key_dir(fleet_dir)
    return [
        Listed(r.name, r.role, r.created_at, live.count(r.name), (d / f"{r.name}.key").exists())
        for r in rows
    ]


def remove_user(engine: Engine, fleet_dir: Path, name: str) -> int:
    """Delete ``name``: its console sessions end and its API token stops working at once (both
    are looked up in the database on every request); its signing key files are deleted, so
    the service can no longer sign as it. Returns how many sessions were ended.

    Lockers keep trusting the public key until it is taken out of their
    ``security.command_keys`` (the caller says so).

    :raises UnknownUserError: no such user.
    """
    with engine.begin() as conn:
        ended = conn.execute(delete(sessions).where(sessions.c.user == name)).rowcount
        if conn.execute(delete(users).where(users.c.name == name)).rowcount == 0:
            raise UnknownUserError(f"no user {name!r} (lockerctl user list shows them)")
    for suffix in (".key", ".pub"):
        (key_dir(fleet_dir) / f"{name}{suffix}").unlink(missing_ok=True)
    return int(ended)


def reset_user(
    engine: Engine,
    name: str,
    *,
    password: bool,
    token: bool,
    hasher: PasswordHasher = _HASHER,
) -> NewUser:
    """A new password and/or API token for ``name`` (the others' fields are ""). The old ones
    stop working at once; a new password also ends the user's console sessions.

    :raises UserError: neither was asked for. :raises UnknownUserError: no such user.
    """
    if not (password or token):
        raise UserError("say what to reset: --password, --token or both")
    new_password = secrets.token_urlsafe(12) if password else ""
    new_token = secrets.token_urlsafe(32) if token else ""
    values: dict[str, str] = {}
    if password:
        values["password_hash"] = hasher.hash(new_password)
    if token:
        values["token_hash"] = token_hash(new_token)
    with engine.begin() as conn:
        row = conn.execute(select(users.c.role).where(users.c.name == name)).first()
        if row is None:
            raise UnknownUserError(f"no user {name!r} (lockerctl user list shows them)")
        conn.execute(update(users).where(users.c.name == name).values(**values))
        if password:
            conn.execute(delete(sessions).where(sessions.c.user == name))
    return NewUser(name, row.role, new_password, new_token)


def unknown_kid_hint(name: str, locker: str) -> str:
    """What to do when ``locker`` answers ``unknown_kid`` to a command signed by ``name``:
    the locker was provisioned before the user was added, so its ``security.command_keys``
    lacks the user's public key."""
    return (
        f"locker {locker} does not know {name}'s command key (it was provisioned before "
        f"user {name} was added): add {name} = the contents of keys/users/{name}.pub to its "
        "locker.toml's [security.command_keys] and restart lockerd there"
    )


def by_token(conn: Connection, token: str) -> User | None:
    row = conn.execute(
        select(users.c.name, users.c.role).where(users.c.token_hash == token_hash(token))
    ).first()
    return None if row is None else User(row.name, row.role)


def check_password(
    conn: Connection, name: str, password: str, *, hasher: PasswordHasher = _HASHER
) -> User | None:
    """The user if ``password`` is right; always spends one argon2 verification."""
    row = conn.execute(select(users).where(users.c.name == name)).first()
    stored = row.password_hash if row is not None else _DUMMY_HASH
    try:
        hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return None
    return None if row is None else User(row.name, row.role)


_DUMMY_HASH = _HASHER.hash(secrets.token_hex(8))  # equal work for unknown names


def signer(fleet_dir: Path, name: str) -> CommandSigner:
    """The user's own command signer (``kid`` = name).

    :raises locker.fleet.provision.ProvisionError: the key file is missing or unreadable.
    """
    path = key_dir(fleet_dir) / f"{name}.key"
    if not path.exists():
        raise provision.ProvisionError(f"user {name} has no signing key ({path.name})")
    return CommandSigner(provision.load_signing_key(path), name)
