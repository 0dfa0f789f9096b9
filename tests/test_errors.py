"""One exception tree: every exception the project defines derives from ``LockerError``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import hardware
import locker
from locker import errors

# Control flow inside one module, never raised to a caller.
NOT_ERRORS = {"hardware.boards.rs485_bus._StopRequested"}
CATEGORIES = [
    errors.ConfigError,
    errors.UsageError,
    errors.NotFoundError,
    errors.StorageError,
    errors.HardwareError,
    errors.LinkError,
    errors.UnavailableError,
    errors.ContractError,
    errors.ProvisionError,
]


def _exception_classes() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for package in (locker, hardware):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            for _name, cls in inspect.getmembers(module, inspect.isclass):
                if issubclass(cls, BaseException) and cls.__module__ == info.name:
                    found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return list(found.values())


CLASSES = _exception_classes()


def test_the_walk_finds_the_known_leaves() -> None:
    names = {c.__name__ for c in CLASSES}
    assert {"CommandRejected", "StoreError", "PinFactoryError", "FleetError"} <= names


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_every_exception_has_one_root(cls: type[BaseException]) -> None:
    if f"{cls.__module__}.{cls.__qualname__}" in NOT_ERRORS:
        return
    assert issubclass(cls, errors.LockerError), cls.__mro__
    if cls is not errors.LockerError:
        assert any(issubclass(cls, c) for c in CATEGORIES) or cls.__module__.endswith(
            "domain.remote"
        ), f"{cls} has no category"


def test_categories_are_builtins_too() -> None:
    assert issubclass(errors.StorageError, OSError)
    assert issubclass(errors.HardwareError, OSError)
    assert issubclass(errors.LinkTimeoutError, TimeoutError)
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.NotFoundError, LookupError)
    assert issubclass(errors.UnavailableError, ConnectionError)
