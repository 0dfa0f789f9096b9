"""``lockerd``: the cabinet daemon's command line, signals, logging and systemd integration.

Exit statuses (also in the README):
  0   stopped cleanly (SIGTERM / SIGINT)
  1   a fault at run time (hardware could not be started, database unusable)
  78  the configuration is invalid (EX_CONFIG; the unit's RestartPreventExitStatus=78 stops
      systemd from restart-looping on a file that will not get better by itself)
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from locker import __version__, sdnotify
from locker.config import EXIT_CONFIG, Config, ConfigError, check_config_cli, load_config

logger = logging.getLogger("lockerd")

EXIT_OK = 0
EXIT_FAULT = 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lockerd",
        description="Parcel-locker cabinet daemon.",
        epilog="Exit status: 0 clean stop, 1 run-time fault, 78 invalid configuration.",
    )
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--config", metavar="FILE", help="run with this configuration")
    group.add_argument("--check-config", metavar="FILE", help="only validate FILE and exit")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--version", action="version", version=f"lockerd {__version__}")
    return p


def setup_logging(level: str) -> None:
    # One line per event; journald adds the time, so only level and logger name here.
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.check_config:
        return check_config_cli(args.check_config)
    setup_logging(args.log_level)
    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return EXIT_CONFIG
    return run(cfg)


def run(cfg: Config) -> int:
    from locker.assembly import build  # noqa: PLC0415 - keeps --check-config light

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %s: stopping", signal.Signals(signum).name)
        sdnotify.stopping()
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        locker = build(cfg, watchdog=sdnotify.watchdog)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return EXIT_CONFIG
    except Exception:
        logger.exception("cannot start")
        return EXIT_FAULT
    try:
        locker.start()
    except Exception:
        logger.exception("hardware or link failed to start")
        locker.close()
        return EXIT_FAULT
    sdnotify.ready()
    sdnotify.status(f"serving {len(locker.controller.state.compartments)} compartments")
    logger.info("lockerd %s ready: %s", __version__, locker.config.summary())
    interval = sdnotify.watchdog_interval() or 1.0
    try:
        locker.controller.run(stop, watchdog_every=min(1.0, interval))
    finally:
        for device in locker.inputs:
            device.close()
        locker.controller.store.close()
    logger.info("stopped")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
