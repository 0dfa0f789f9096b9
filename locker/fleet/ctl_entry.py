"""``lockerctl``'s console-script entry: a Ctrl-C while it starts is one line and exit 130 too.

Importing lockerctl's parsers takes most of a second (SQLAlchemy, the fleet service's
stack), and Python's default SIGINT handler raises ``KeyboardInterrupt`` wherever the
interpreter is, so a Ctrl-C then printed a 30-line traceback before ``locker.fleet.ctl.main``
could catch anything. This module imports nothing heavy itself and catches it around the
import and the call; ``main`` catches it around the command (what ``fleet init`` had begun
is undone there).
"""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130  # locker.fleet.ctl_output's, not imported: that import is what is slow


def main() -> int:
    """Run ``lockerctl`` with ``sys.argv``; returns its exit status."""
    try:
        from locker.fleet.ctl import main as run  # noqa: PLC0415 - the slow part, guarded

        return run()
    except KeyboardInterrupt:
        print("lockerctl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
