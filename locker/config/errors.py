"""The configuration error (kept small: every config module and both products raise it)."""

from __future__ import annotations

from pathlib import Path

from locker import errors


class ConfigError(errors.ConfigError):
    """A configuration file that cannot be used; ``errors`` holds one line per mistake."""

    def __init__(self, path: Path, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.path = path
        self.errors = errors
