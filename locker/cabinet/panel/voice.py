"""Spoken prompts through espeak-ng (DESIGN section 12: for blind users), never in the way.

``VoiceFollower`` runs on its own thread (``locker.cabinet.panel.follow``): when the message
changes it starts ``espeak-ng`` for the new text and returns at once. Only the newest prompt
matters: one still playing is stopped (by its own process handle) before the next starts, and
messages that came and went while the follower was busy are never spoken at all (it only sees
the latest view). Voice is best effort: a missing espeak-ng or sound card is logged once.

espeak-ng(1): ``-v <voice>`` (en, de, pl), ``-s <words per minute>``, ``-w <file.wav>`` writes
a WAV instead of playing it (tests), ``--`` ends the options so no text is read as one.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from locker.cabinet.panel import texts
from locker.cabinet.panel.follow import Follower
from locker.cabinet.panel.hub import PanelHub, Snapshot
from locker.cabinet.panel.view import Message

logger = logging.getLogger(__name__)

ESPEAK = "espeak-ng"
WORDS_PER_MINUTE = 150  # slower than the default 175: a public place, any listener
SILENT_STATES = ("idle", "entry")  # key clicks say enough while typing; idle is not news


def espeak_argv(text: str, language: str, wav: Path | None = None) -> list[str]:
    out = ["-w", str(wav)] if wav is not None else []
    return [ESPEAK, "-v", language, "-s", str(WORDS_PER_MINUTE), *out, "--", text]


class VoiceFollower(Follower):
    """Speaks each new message in the current language.

    :param argv: builds the command for (text, language); tests write WAV files with it."""

    name = "panel-voice"

    def __init__(
        self,
        hub: PanelHub,
        argv: Callable[[str, str], Sequence[str]] = espeak_argv,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(hub, clock)
        self.argv = argv
        self._said: tuple[Message, str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.spoken: list[str] = []  # what was started, in order (tests; never codes)
        self._broken = False

    def render(self, snap: Snapshot, now: float) -> None:
        msg = snap.message(now)
        language = snap.language_at(now)
        key = (msg, language)
        if key == self._said:
            return
        self._said = key
        if msg.state in SILENT_STATES:
            return
        self._stop_playing()
        text = texts.render(msg, language, now, spoken=True)
        try:
            self._proc = subprocess.Popen(  # noqa: S603 - fixed program, text after "--"
                list(self.argv(text, language)),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError as err:
            if not self._broken:
                logger.error("voice prompts unavailable: %s", err)
            self._broken = True
            return
        self.spoken.append(text)

    def _stop_playing(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # a stale prompt: the person has moved on
        if proc is not None:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=2)

    def wait_idle(self, timeout: float) -> bool:
        """Tests: wait until the prompt playing now has finished."""
        proc = self._proc
        if proc is None:
            return True
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def release(self) -> None:
        self._stop_playing()
