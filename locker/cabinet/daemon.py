"""``lockerd``: the cabinet daemon's command line, signals, logging and systemd integration.

Exit statuses (also in the README and ``lockerd --help``), by the category of the error in
``locker.errors`` (sysexits.h numbers):
  0   stopped cleanly (SIGTERM / SIGINT)
  1   an unexpected fault (a bug: the traceback is in the log)
  69  a device or the broker settings cannot be used (EX_UNAVAILABLE: HardwareError, LinkError)
  74  the state database cannot be used (EX_IOERR: StorageError)
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

from locker import __version__, errors
from locker.cabinet import sdnotify
from locker.cabinet.config import (
    EXIT_CONFIG,
    Config,
    ConfigError,
    check_config_cli,
    environment_problems,
    load_config,
)

logger = logging.getLogger("lockerd")

EXIT_OK = 0
EXIT_FAULT = 1
EXIT_UNAVAILABLE = 69
EXIT_STORAGE = 74

EXIT_STATUS_HELP = f"""exit status:
  {EXIT_OK}   clean stop (SIGTERM/SIGINT)
  {EXIT_FAULT}   unexpected fault (a bug; the traceback is in the log)
  {EXIT_UNAVAILABLE}  a device cannot be opened or the link cannot be set up
  {EXIT_STORAGE}  the state database cannot be used (newer schema, corrupt, read-only, full)
  {EXIT_CONFIG}  the configuration is invalid (systemd does not restart: RestartPreventExitStatus)
"""

_STATUS_BY_CATEGORY: tuple[tuple[type[Exception], int], ...] = (
    (errors.ConfigError, EXIT_CONFIG),
    (errors.StorageError, EXIT_STORAGE),
    (errors.HardwareError, EXIT_UNAVAILABLE),
    (errors.LinkError, EXIT_UNAVAILABLE),
)


def exit_status(err: BaseException) -> int:
    """The exit status for an error that stopped the start, by its ``locker.errors`` category."""
    return next((code for cls, code in _STATUS_BY_CATEGORY if isinstance(err, cls)), EXIT_FAULT)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lockerd",
        description="Parcel-locker cabinet daemon.",
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--config", metavar="FILE", help="run with this configuration")
    group.add_argument("--check-config", metavar="FILE", help="only validate FILE and exit")
    p.add_argument(
        "--no-file-checks",
        action="store_true",
        help="with --check-config: do not require the key and certificate files to exist "
        "(checking a file on another machine than the locker)",
    )
    p.add_argument(
        "--simulate-doors",
        metavar="OPEN_S,CLOSE_S",
        help="simulation only (pin_factory = 'mock'): a simulated person opens a GPIO door "
        "OPEN_S after its lock is pulsed and closes it CLOSE_S later (0: leaves it open)",
    )
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
        return check_config_cli(args.check_config, check_files=not args.no_file_checks)
    setup_logging(args.log_level)
    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return EXIT_CONFIG
    doors = None
    if args.simulate_doors:
        try:
            open_s, close_s = (float(x) for x in args.simulate_doors.split(","))
        except ValueError:
            print("lockerd: --simulate-doors takes OPEN_S,CLOSE_S", file=sys.stderr)
            return EXIT_CONFIG
        if cfg.gpio.pin_factory != "mock":
            print("lockerd: --simulate-doors needs gpio.pin_factory = 'mock'", file=sys.stderr)
            return EXIT_CONFIG
        doors = (open_s, close_s or None)
    if problems := environment_problems(cfg):
        print("\n".join(f"{args.config}: {p}" for p in problems), file=sys.stderr)
        return EXIT_CONFIG
    return run(cfg, simulate_doors=doors)


def run(cfg: Config, simulate_doors: tuple[float, float | None] | None = None) -> int:
    from locker.cabinet.assembly import build, simulated_doors  # noqa: PLC0415 - keeps --check-config light

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %s: stopping", signal.Signals(signum).name)
        sdnotify.stopping()
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        interval = sdnotify.watchdog_interval()
        locker = build(cfg, watchdog=sdnotify.watchdog if interval else lambda: None)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return EXIT_CONFIG
    except errors.LockerError as err:
        logger.error("cannot start: %s", err)
        return exit_status(err)
    except Exception:
        logger.exception("cannot start")
        return EXIT_FAULT
    actor = simulated_doors(locker, simulate_doors) if simulate_doors else None
    try:
        if actor is not None:
            actor.start()
        locker.start()
    except errors.LockerError as err:
        logger.error("hardware or link failed to start: %s", err)
        locker.close()
        return exit_status(err)
    except Exception:
        logger.exception("hardware or link failed to start")
        locker.close()
        return EXIT_FAULT
    sdnotify.ready()
    sdnotify.status(f"serving {len(locker.controller.state.compartments)} compartments")
    logger.info("lockerd %s ready: %s", __version__, locker.config.summary())
    try:
        locker.controller.run(stop, watchdog_every=min(1.0, interval or 1.0))
    finally:
        if actor is not None:
            actor.close()
        locker.close()  # the controller already shut down at the end of its loop
    logger.info("stopped")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
