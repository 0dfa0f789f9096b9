"""The project's exception tree: one root, a few categories, builtin mix-ins.

Modelled on gpiozero (``gpiozero/exc.py``: one base class, each class also a builtin) and
python-can (``can/exceptions.py``: categories, low-level failures wrapped with
``raise ... from err``). Every exception the project raises on purpose derives from
``LockerError`` through exactly one category, and the command-line front ends map the category
to an exit status (``lockerd``: ``locker.cabinet.daemon``; ``lockerctl``: ``locker.fleet.ctl``)::

    LockerError
     +-- ConfigError       (ValueError)       a configuration that cannot be used
     +-- UsageError        (ValueError)       a request that makes no sense (bad arguments)
     +-- NotFoundError     (LookupError)      a named thing does not exist (unknown locker id)
     +-- StorageError      (OSError)          a local file or database cannot be read or written
     +-- HardwareError     (OSError)          a device cannot be opened or does not answer
     +-- LinkError         (ConnectionError)  the MQTT broker cannot be reached or refused us
     |    +-- LinkTimeoutError (TimeoutError) no answer in time over the link
     +-- UnavailableError  (ConnectionError)  a service we need cannot be used (database server,
     |                                        HTTP listening address)
     +-- ContractError     (ValueError)       a message that breaks the contract (DESIGN 5-7)
     +-- ProvisionError                       a provisioning request that cannot be honoured

The leaves keep their historical names in their own modules (``CommandRejected``,
``StoreError``, ``PinFactoryError``...). This module imports nothing of the project, so every
layer (``hardware`` included) may import it.
"""

from __future__ import annotations


class LockerError(Exception):
    """Base class of every exception this project raises on purpose."""


class ConfigError(LockerError, ValueError):
    """A configuration (file, fleet directory, settings) that cannot be used as it is."""


class UsageError(LockerError, ValueError):
    """A request whose arguments parse but make no sense."""


class NotFoundError(LockerError, LookupError):
    """A named thing (locker, parcel, identity) that does not exist where it was looked up."""


class StorageError(LockerError, OSError):
    """A local file or the database cannot be read or written (missing, corrupt, full)."""


class HardwareError(LockerError, OSError):
    """A device cannot be opened, is missing, or does not answer."""


class LinkError(LockerError, ConnectionError):
    """The MQTT broker cannot be reached, refused the connection, or refused a request."""


class LinkTimeoutError(LinkError, TimeoutError):
    """No answer in time over the link (no CONNACK, PUBACK or reply)."""


class UnavailableError(LockerError, ConnectionError):
    """A service this program needs cannot be used: a database server that cannot be reached,
    an address to listen on that is in use or unknown (EX_UNAVAILABLE)."""


class ContractError(LockerError, ValueError):
    """A message that breaks the contract of DESIGN sections 5-7 (command, token, frame)."""


class ProvisionError(LockerError):
    """A provisioning request that cannot be honoured (bad id, existing fleet, bad spec...)."""
