"""The command line of the Kerong bus emulator: ``python -m hardware.emulators.kerong --boards 0 1``
serves boards on a pty, prints its path and takes simple commands on stdin (``help`` lists
them). See :mod:`hardware.emulators.kerong` for what is emulated.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Sequence

import serial

from hardware.boards.kerong import CHANNELS
from hardware.emulators.kerong import KerongEmulator

__all__ = ["main"]


_HELP = """commands (B = board address, C = channel 1-16):
  close B C        the person shuts the door        open B C        force the door open
  item B C 0|1     item absent / present            jam B C 0|1     jam the lock or free it
  leftopen B C 0|1 door does not auto-close         silent B 0|1    board stops answering
  delay B SECONDS  late replies                     corrupt B 0|1   bad checksums
  polarity B 0|1   lock_bit_locked of the board     answer B 0|1    reply to unlocks
  echo 0|1         the adapter echoes what it sends
  status           doors and items of every board   help"""


def _command(emu: KerongEmulator, words: Sequence[str]) -> str:
    """Apply one stdin command; returns the line to print."""
    if not words:
        return ""
    cmd, args = words[0], [int(w) if w.isdigit() else w for w in words[1:]]
    per_channel: dict[str, Callable[[int, int, int], None]] = {
        "item": lambda b, c, v: emu.set_item(b, c, bool(v)),
        "jam": lambda b, c, v: emu.set_jammed(b, c, bool(v)),
        "leftopen": lambda b, c, v: emu.set_left_open(b, c, bool(v)),
    }
    if cmd in ("close", "open") and len(args) == 2:
        b, c = int(args[0]), int(args[1])
        (emu.close_door if cmd == "close" else emu.force_open)(b, c)
    elif cmd in per_channel and len(args) == 3:
        per_channel[cmd](int(args[0]), int(args[1]), int(args[2]))
    elif cmd in ("silent", "corrupt", "polarity", "answer") and len(args) == 2:
        b, v = int(args[0]), int(args[1])
        if cmd == "silent":
            emu.configure(b, silent=bool(v))
        elif cmd == "corrupt":
            emu.configure(b, corrupt_checksum=bool(v))
        elif cmd == "polarity":
            emu.configure(b, lock_bit_locked=v)
        else:
            emu.configure(b, answer_unlock=bool(v))
    elif cmd == "echo" and len(args) == 1:
        emu.configure_line(echo=bool(int(args[0])))
    elif cmd == "delay" and len(args) == 2:
        emu.configure(int(args[0]), reply_delay_s=float(args[1]))
    elif cmd == "status":
        return _status_text(emu)
    else:
        return _HELP
    return "ok"


def _status_text(emu: KerongEmulator) -> str:
    lines = []
    for addr in emu.addresses:
        doors = "".join("O" if emu.door_open(addr, c) else "." for c in range(1, CHANNELS + 1))
        items = "".join("I" if emu.item_present(addr, c) else "." for c in range(1, CHANNELS + 1))
        lines.append(f"board {addr}: doors {doors} items {items}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hardware.emulators.kerong",
        description="Emulate Kerong KR-CU16 lock boards on a pty; prints the pty path.",
    )
    parser.add_argument("--boards", type=int, nargs="+", default=[0], help="board addresses")
    parser.add_argument("--lock-bit-locked", type=int, choices=(0, 1), default=1)
    parser.add_argument("--pulse", type=float, default=0.5, help="boards' unlock pulse, s")
    parser.add_argument("--auto-close", type=float, default=None, help="doors shut after s")
    parser.add_argument("--answer-unlock", action="store_true")
    parser.add_argument("--link", help="keep a symlink to the pty at this path")
    parser.add_argument("--port", help="serve on this pySerial URL instead of a pty")
    args = parser.parse_args(argv)
    # SIGTERM ends the process like Ctrl-C, through the same clean-up
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        emu = KerongEmulator(
            args.boards,
            lock_bit_locked=args.lock_bit_locked,
            pulse_s=args.pulse,
            auto_close_s=args.auto_close,
            answer_unlock=args.answer_unlock,
            port=args.port,
            link=args.link,
        )
        path = emu.start()
    except (ValueError, OSError, serial.SerialException) as exc:
        print(f"kerong_emulator: {exc}", file=sys.stderr)
        return 2
    print(path, flush=True)
    try:
        for line in sys.stdin:
            try:
                reply = _command(emu, line.split())
            except (ValueError, KeyError) as exc:
                reply = f"error: {exc}"
            if reply:
                print(reply, flush=True)
        threading.Event().wait()  # stdin closed (started by the simulator): serve until killed
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()
    return 0
