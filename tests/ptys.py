"""Real ptys behind a stable symlink, standing in for a USB serial device and its
/dev/serial/by-id name: unplug and replug without changing the path the daemon opens."""

from __future__ import annotations

import os
from pathlib import Path


class PtyPort:
    """A pty whose slave is reachable at a stable symlink, like a /dev/serial/by-id name:
    ``unplug`` removes the link and closes the master, ``plug`` makes a new pty behind it."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master: int | None = None

    def plug(self) -> None:
        master, slave = os.openpty()
        target = os.ttyname(slave)
        os.close(slave)  # the daemon opens it by path
        tmp = self.link.with_name(self.link.name + ".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        tmp.replace(self.link)
        self.master = master

    def unplug(self) -> None:
        # the link goes first, as udev removes it: the freed pty number may be reused at once
        self.link.unlink(missing_ok=True)
        if self.master is not None:
            os.close(self.master)
            self.master = None

    def write(self, data: bytes) -> None:
        assert self.master is not None, "port is unplugged"
        os.write(self.master, data)
