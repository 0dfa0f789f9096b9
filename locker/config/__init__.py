"""The configuration file's model (DESIGN section 8), shared by the cabinet, which loads it,
and the fleet side, which writes it (``lockerctl locker add``): one validated model, so a file
lockerctl writes is a file lockerd accepts.

Imports neither the cabinet nor the fleet (import-linter contract in pyproject.toml).
"""

from locker.config.errors import ConfigError
from locker.config.load import load_config, parse_config
from locker.config.messages import format_loc
from locker.config.sections import Compartment, Config

__all__ = [
    "Compartment",
    "Config",
    "ConfigError",
    "format_loc",
    "load_config",
    "parse_config",
]
