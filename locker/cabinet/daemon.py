"""``lockerd``: the cabinet daemon's command line, signals, logging and systemd integration.

Exit statuses (also in the README and ``lockerd --help``), by the category of the error in
``locker.errors`` (sysexits.h numbers):
  0   stopped cleanly (SIGTERM / SIGINT)
  1   an unexpected fault (a bug: the traceback is in the log)
  69  a device or the broker settings cannot be used (EX_UNAVAILABLE: HardwareError, LinkError)
  74  the state database cannot be used (EX_IOERR: StorageError). An unwritable one (disk
      full, read-only, I/O error) is first waited for ``--store-wait`` seconds (default 60),
      so systemd's restart 5 s later retries about once a minute, never in a tight loop
  75  another lockerd already runs on this state directory (EX_TEMPFAIL); nothing of it was
      touched. Not restarted by systemd (RestartPreventExitStatus=78 75)
  78  the configuration is invalid (EX_CONFIG; the unit's RestartPreventExitStatus=78 stops
      systemd from restart-looping on a file that will not get better by itself)
"""

from __future__ import annotations

import argparse
import fcntl
import gc
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from locker import __version__, errors, sdnotify
from locker.cabinet.config import (
    EXIT_CONFIG,
    Config,
    ConfigError,
    check_config_cli,
    environment_problems,
    load_config,
)

if TYPE_CHECKING:
    from locker.cabinet.assembly import Locker

logger = logging.getLogger("lockerd")

EXIT_OK = 0
EXIT_FAULT = 1
EXIT_UNAVAILABLE = 69
EXIT_STORAGE = 74
EXIT_RUNNING = 75  # sysexits EX_TEMPFAIL
STORE_WAIT_S = 60.0
STORE_RETRY_S = 5.0
LOCK_NAME = "lockerd.lock"

EXIT_STATUS_HELP = f"""exit status:
  {EXIT_OK}   clean stop (SIGTERM/SIGINT)
  {EXIT_FAULT}   unexpected fault (a bug; the traceback is in the log)
  {EXIT_UNAVAILABLE}  a device cannot be opened or the link cannot be set up
  {EXIT_STORAGE}  the state database cannot be used (newer schema, corrupt, read-only, full)
  {EXIT_RUNNING}  another lockerd already runs on this state directory (not restarted by systemd)
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


def _seconds(text: str) -> float:
    """A duration option: a finite number of seconds, 0 or more (``nan`` and ``inf`` parse as
    floats but mean nothing here)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0: {text!r}")
    return value


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
    p.add_argument(
        "--store-wait",
        metavar="S",
        type=_seconds,
        default=STORE_WAIT_S,
        help="how long to wait for an unwritable state directory at start before exiting "
        f"{EXIT_STORAGE} (default {STORE_WAIT_S:.0f} s)",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--version", action="version", version=f"lockerd {__version__}")
    return p


def setup_logging(level: str) -> None:
    # One line per event. Under journald (it sets JOURNAL_STREAM) the journal adds the time;
    # anywhere else the line carries its own UTC timestamp.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
        logging.Formatter.converter = time.gmtime
    logging.basicConfig(
        level=getattr(logging, level),
        format=fmt,
        datefmt="%Y-%m-%dT%H:%M:%SZ",
        stream=sys.stderr,
    )


def lock_state_dir(state_dir: Path) -> int | None:
    """Take the exclusive lock that makes this the only lockerd on ``state_dir`` (flock on
    ``state_dir/lockerd.lock``, released by the kernel when the process dies, however it
    dies). Returns the lock's file descriptor (kept open for the life of the process), or
    None when another process holds it. Raises OSError when the directory cannot be used."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # a read-only disk still locks
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    try:  # the holder's pid, for the message a second instance prints
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass
    return fd


def _holder(state_dir: Path) -> str:
    try:
        pid = (state_dir / LOCK_NAME).read_text().strip()
    except OSError:
        return "another lockerd"
    return f"lockerd pid {pid}" if pid.isdigit() else "another lockerd"


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
    # What --check-config warns about (a keypad without login on the network, a session
    # expiry that loses queued commands, option pairs that contradict each other) is worth a
    # line in the journal at every start too.
    for warning in cfg.warnings():
        logger.warning("%s: %s", args.config, warning)
    return run(cfg, simulate_doors=doors, store_wait_s=args.store_wait)


def _build_when_writable(
    cfg: Config, stop: threading.Event, interval: float | None, store_wait_s: float
) -> Locker | int:
    """``build``, waiting up to ``store_wait_s`` for an unwritable state database to come
    back (a full disk may be cleaned up by log rotation). Returns the locker or an exit
    status."""
    from locker.cabinet.assembly import build  # noqa: PLC0415 - keeps --check-config light
    from locker.cabinet.store import StorageFault  # noqa: PLC0415

    deadline = time.monotonic() + store_wait_s
    waiting = False
    while True:
        try:
            locker = build(cfg, watchdog=sdnotify.watchdog if interval else lambda: None)
        except StorageFault as fault:
            if stop.is_set() or time.monotonic() >= deadline:
                print(f"lockerd: state database cannot be written: {fault}", file=sys.stderr)
                return EXIT_STORAGE
            if not waiting:  # one line, however long we wait
                logger.error("state database cannot be written: %s; waiting", fault)
                sdnotify.status(f"waiting for a writable state directory: {fault.detail}")
                waiting = True
            stop.wait(min(STORE_RETRY_S, max(0.0, deadline - time.monotonic())))
        except ConfigError as err:
            print(str(err), file=sys.stderr)
            return EXIT_CONFIG
        except errors.LockerError as err:
            logger.error("cannot start: %s", err)
            return exit_status(err)
        except Exception:
            logger.exception("cannot start")
            return EXIT_FAULT
        else:
            if waiting:
                logger.warning("state database writable again; starting")
            return locker


def run(
    cfg: Config,
    simulate_doors: tuple[float, float | None] | None = None,
    store_wait_s: float = STORE_WAIT_S,
) -> int:
    from locker.cabinet.assembly import simulated_doors  # noqa: PLC0415 - keeps --check-config light

    # Before anything else (database, hardware, MQTT): one lockerd per state directory, so a
    # second one started by hand never shares the database, the client id or the pins.
    state_dir = Path(cfg.locker.state_dir)
    try:
        lock_fd = lock_state_dir(state_dir)
    except OSError as err:
        print(f"lockerd: state directory {state_dir} cannot be used: {err}", file=sys.stderr)
        return EXIT_STORAGE
    if lock_fd is None:
        print(
            f"lockerd: {_holder(state_dir)} already runs on state directory {state_dir}; "
            "not starting (stop it first)",
            file=sys.stderr,
        )
        return EXIT_RUNNING

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %s: stopping", signal.Signals(signum).name)
        sdnotify.stopping()
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    interval = sdnotify.watchdog_interval()
    built = _build_when_writable(cfg, stop, interval, store_wait_s)
    if isinstance(built, int):
        return built
    locker = built
    # Everything made so far (imports, configuration, the loaded state: 100,000 credentials
    # are ~10^6 objects, none in a reference cycle) lives as long as the process: out of the
    # cyclic collector's sight, so no collection pass over it stalls an input later (issue 10).
    gc.freeze()
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
    # READY: config, database, hardware and link settings are up, and every keypad and
    # scanner either has its port open or has reported its fault (a hardware_fault event):
    # a cabinet with one broken reader still serves with the other, and says so.
    sdnotify.ready()
    serving = f"serving {len(locker.controller.state.compartments)} compartments"
    if faults := dict(locker.input_faults):
        names = ", ".join(sorted(faults))
        sdnotify.status(f"{serving}; out of order: {names}")
        logger.warning(
            "lockerd %s ready with input(s) out of order (%s): %s",
            __version__,
            names,
            locker.config.summary(),
        )
    else:
        sdnotify.status(serving)
        logger.info("lockerd %s ready: %s", __version__, locker.config.summary())
    try:
        locker.controller.run(stop, watchdog_every=min(1.0, interval or 1.0))
    finally:
        if actor is not None:
            actor.close()
        locker.close()  # the controller already shut down at the end of its loop
    logger.info("stopped")
    os.close(lock_fd)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
