"""Callback guard: adapter callbacks log and swallow exceptions instead of dying.

An exception escaping a paho callback kills its network thread while ``is_connected()`` stays
true; one escaping a gpiozero or pySerial callback kills that reader. Every adapter callback
is therefore wrapped. The log record carries ``callback_error=True`` so the test suite can turn
such a log into a failure (``tests/conftest.py``)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def guarded(logger: logging.Logger) -> Callable[[Callable[P, R]], Callable[P, R | None]]:
    """Decorate an adapter callback so that it never raises into the library that called it."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R | None]:
        @functools.wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> R | None:
            try:
                return fn(*args, **kwargs)
            except Exception:
                logger.exception(
                    "callback %s failed", fn.__qualname__, extra={"callback_error": True}
                )
                return None

        return inner

    return wrap
