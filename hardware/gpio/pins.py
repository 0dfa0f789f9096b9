"""Pin factory selection: the one place that turns a configured name into a gpiozero factory.

gpiozero, left to itself, tries lgpio, then rpigpio, pigpio and native, and warns
(``PinFactoryFallback``) when it falls back. On a locker a fallback is an error: the daemon
would drive different pins, or none, while believing it works. So the named factory class is
built directly and any failure is raised as :class:`PinFactoryError`.
"""

from __future__ import annotations

import importlib
import logging

from gpiozero import Factory

from locker.errors import HardwareError

logger = logging.getLogger(__name__)

# name -> (module, class); the modules are imported lazily since each needs its own C library
_FACTORIES: dict[str, tuple[str, str]] = {
    "lgpio": ("gpiozero.pins.lgpio", "LGPIOFactory"),
    "rpigpio": ("gpiozero.pins.rpigpio", "RPiGPIOFactory"),
    "pigpio": ("gpiozero.pins.pigpio", "PiGPIOFactory"),
    "native": ("gpiozero.pins.native", "NativeFactory"),
    "mock": ("gpiozero.pins.mock", "MockFactory"),
}

FACTORY_NAMES: tuple[str, ...] = tuple(_FACTORIES)


class PinFactoryError(HardwareError, RuntimeError):
    """The configured pin factory is unknown or cannot be loaded on this machine."""


def make_pin_factory(name: str) -> Factory:
    """Build the gpiozero pin factory called ``name`` (one of :data:`FACTORY_NAMES`).

    :raises PinFactoryError: the name is unknown, or the factory's library or hardware is
        missing; the message names the factory and the cause. Never falls back to another one.
    """
    try:
        module_name, class_name = _FACTORIES[name]
    except KeyError:
        known = ", ".join(FACTORY_NAMES)
        raise PinFactoryError(f"unknown pin factory {name!r} (known: {known})") from None
    try:
        factory_class = getattr(importlib.import_module(module_name), class_name)
        factory = factory_class()
    except Exception as exc:
        raise PinFactoryError(
            f"pin factory {name!r} cannot be loaded: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(factory, Factory):  # pragma: no cover - guards the table above
        raise PinFactoryError(f"pin factory {name!r} built a {type(factory).__name__}")
    logger.info("pin factory %s loaded", name)
    return factory
