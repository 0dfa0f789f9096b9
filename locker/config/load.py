"""Loading: TOML bytes to a validated ``Config``, or a ``ConfigError`` listing every mistake."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from locker.config.errors import ConfigError
from locker.config.fields import Context
from locker.config.messages import Loc, format_loc
from locker.config.sections import Config

MAX_CONFIG_BYTES: Final = 1 << 20

# --- loading --------------------------------------------------------------------------------


def parse_config(
    data: object,
    *,
    source: str | Path = "<config>",
    base_dir: Path | None = None,
    check_files: bool = True,
) -> Config:
    """Validate already-parsed TOML tables; ``source`` names the file in messages."""
    try:
        return Config.model_validate(data, context=Context(base_dir, check_files))
    except ValidationError as err:
        lines = [_line(str(source), tuple(e["loc"]), e["msg"]) for e in err.errors()]
        raise ConfigError(Path(str(source)), lines) from None


def _line(source: str, loc: Loc, reason: str) -> str:
    where = format_loc(loc)
    return f"{source}: {where}: {reason}" if where else f"{source}: {reason}"


def _read_toml(path: Path) -> dict[str, Any]:
    name = str(path)
    try:
        st = path.stat()
        # ConfigError is a ValueError: raised here, not under the handlers below.
        if not stat.S_ISREG(st.st_mode):
            problem = "not a regular file"
        elif st.st_size > MAX_CONFIG_BYTES:
            problem = f"larger than {MAX_CONFIG_BYTES} bytes"
        else:
            # utf-8-sig: a byte-order mark (some Windows editors write one) is not content
            return tomllib.loads(path.read_bytes().decode("utf-8-sig"))
    except OSError as err:
        raise ConfigError(path, [f"{name}: cannot read: {err.strerror or err}"]) from None
    except UnicodeDecodeError as err:
        raise ConfigError(path, [f"{name}: not UTF-8 text (byte {err.start})"]) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(path, [f"{name}: TOML syntax error: {err}"]) from None
    except ValueError as err:  # an integer literal beyond Python's digit limit
        raise ConfigError(path, [f"{name}: TOML value out of range: {err}"]) from None
    except RecursionError:
        raise ConfigError(path, [f"{name}: TOML nested too deeply"]) from None
    raise ConfigError(path, [f"{name}: {problem}"])


def load_config(path: str | Path, *, check_files: bool = True) -> Config:
    """Read and validate a configuration file; ConfigError lists every mistake."""
    path = Path(path)
    data = _read_toml(path)
    return parse_config(data, source=path, base_dir=path.absolute().parent, check_files=check_files)
