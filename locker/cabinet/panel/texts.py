"""Every text a person at the cabinet reads or hears, and its translations (DESIGN section 12).

Each message id of ``locker.cabinet.panel.view`` has a full text (web page, voice) and a short
one (a 16x2 or 20x4 character LCD: at most 32 characters once its fields are filled in). The
English strings here are the gettext msgids; ``locale/<lang>/LC_MESSAGES/panel.po`` hold the
translations (edited by hand, extracted and compiled with Babel: see ``make i18n``), and the
compiled ``panel.mo`` files are committed beside them so that a locker needs only the standard
library's ``gettext`` at run time (a test checks that they match their ``.po``). Fields:
``{door}``, ``{other}`` (compartment ids), ``{seconds}`` (whole seconds of a countdown).
"""

from __future__ import annotations

import functools
import gettext
import math
from pathlib import Path

from locker.cabinet.panel.view import Message
from locker.config.panel import SUPPORTED

LOCALE_DIR = Path(__file__).parent / "locale"
DOMAIN = "panel"
# Each language's own name, shown on its button and read by the idle help: never translated.
NATIVE_NAMES = {"en": "English", "de": "Deutsch", "pl": "Polski"}
assert set(NATIVE_NAMES) == set(SUPPORTED)


def N_(text: str) -> str:  # noqa: N802 - the gettext convention for "mark for extraction"
    return text


# message id -> (full text, short text)
MESSAGES: dict[str, tuple[str, str]] = {
    "idle": (
        N_("Type your code and press #, or show your QR code to the scanner."),
        N_("Type code and #, or show QR code"),
    ),
    # idle while an input is out of order: only what still works
    "idle.no_scanner": (
        N_("The scanner is out of order. Please type your code and press #."),
        N_("Scanner broken. Type code, #"),
    ),
    "idle.no_keypad": (
        N_("The keypad is out of order. Please show your QR code to the scanner."),
        N_("Keypad broken. Show QR code"),
    ),
    "idle.out_of_order": (
        N_(
            "This locker is out of order: the keypad and the scanner do not work. "
            "Please try again later or contact customer service."
        ),
        N_("Out of order. Try again later"),
    ),
    "entry": (N_("Code: {mask}"), N_("Code: {mask}")),
    # granted: unlocked until the door is seen open (it may be jammed shut), then open
    "unlocked": (
        N_("Door {door} is unlocked. Please open it now."),
        N_("Door {door} unlocked"),
    ),
    "granted": (N_("Door {door} is open."), N_("Door {door} is open")),
    "close_door": (N_("Please close door {door}."), N_("Please close door {door}")),
    "throttled": (
        N_("Too many wrong codes. Please try again in {seconds} s."),
        N_("Too many tries. Wait {seconds} s"),
    ),
    "locked_out": (
        N_("The keypad is locked after too many wrong codes. QR codes still work."),
        N_("Keypad locked. Use QR code"),
    ),
    "locked_out.no_scanner": (
        N_("The keypad is locked after too many wrong codes. Please try again later."),
        N_("Keypad locked. Try later"),
    ),
    "jam_moved": (
        N_("Door {other} did not open. Your parcel goes in door {door}: type your code again."),
        N_("Use door {door}: type code again"),
    ),
    "jammed": (
        N_("Door {door} did not open. Please type your code again."),
        N_("Door {door} stuck. Try again"),
    ),
    "denied.unknown_code": (
        N_("Wrong code. Please check it and try again."),
        N_("Wrong code"),
    ),
    "denied.expired": (
        N_("This code has expired. Please contact the sender."),
        N_("Code expired"),
    ),
    "denied.not_yet_valid": (
        N_("This code is not valid yet. Please try again later."),
        N_("Code not valid yet"),
    ),
    "denied.not_yet_available": (
        N_("Your parcel is not here yet. Please try again when you are notified."),
        N_("Parcel not here yet"),
    ),
    "denied.wrong_locker": (
        N_("This code is for another locker."),
        N_("Code for another locker"),
    ),
    "denied.bad_signature": (
        N_("This QR code is not valid."),
        N_("Invalid QR code"),
    ),
    "denied.malformed": (
        N_("Please type the whole code, then press #."),
        N_("Type the whole code, then #"),
    ),
    "denied.throttled": (
        N_("Too many wrong codes. Please try again in {seconds} s."),
        N_("Too many tries. Wait {seconds} s"),
    ),
    "denied.locked_out": (
        N_("The keypad is locked after too many wrong codes. QR codes still work."),
        N_("Keypad locked. Use QR code"),
    ),
    "denied.lockdown": (
        N_("This locker is closed. No door can be opened now."),
        N_("Locker closed"),
    ),
    "denied.compartment_unavailable": (
        N_("This door cannot be opened now. Please try again later."),
        N_("Door cannot open. Try later"),
    ),
    "denied.out_of_service": (
        N_("This door is out of service. Please contact customer service."),
        N_("Door out of service"),
    ),
    "denied.already_used": (
        N_("This code has already been used."),
        N_("Code already used"),
    ),
    "denied.other": (
        N_("This code cannot be used here."),
        N_("Code refused"),
    ),
    # '*' '*' and a number beyond the languages offered ({other}: how many there are)
    "language.unknown": (
        N_("There is no language with that number. Press * twice, then 1 to {other}."),
        N_("No such language: 1-{other}"),
    ),
    # refusals of a scan (view.QR_REASONS): about the QR code shown, never "type"
    "denied.qr.unknown_code": (
        N_("This QR code is not recognised. Please check it and try again."),
        N_("QR code not recognised"),
    ),
    "denied.qr.expired": (
        N_("This QR code has expired. Please contact the sender."),
        N_("QR code expired"),
    ),
    "denied.qr.not_yet_valid": (
        N_("This QR code is not valid yet. Please try again later."),
        N_("QR code not valid yet"),
    ),
    "denied.qr.wrong_locker": (
        N_("This QR code is for another locker."),
        N_("QR code for another locker"),
    ),
    "denied.qr.bad_signature": (N_("This QR code is not valid."), N_("Invalid QR code")),
    "denied.qr.malformed": (N_("This QR code is not valid."), N_("Invalid QR code")),
    "denied.qr.already_used": (
        N_("This QR code has already been used."),
        N_("QR code already used"),
    ),
    "denied.qr.throttled": (
        N_("Too many scans. Please wait a moment, then show your QR code again."),
        N_("Too many scans. Wait a moment"),
    ),
    "denied.qr.other": (
        N_("This QR code cannot be used here."),
        N_("QR code refused"),
    ),
}

# What the voice says instead of the full text where that reads badly aloud: the keys by
# their names (espeak-ng reads "#" as "Nummer" in German; on a phone keypad it is the "Raute")
# and the countdown in words ({seconds} is then "27 seconds", SECONDS_SPOKEN, never "27 s",
# spoken as "twenty-seven ess").
SPOKEN: dict[str, str] = {
    "idle": N_("Type your code and press the hash key, or show your QR code to the scanner."),
    "idle.no_scanner": N_(
        "The scanner is out of order. Please type your code and press the hash key."
    ),
    "denied.malformed": N_("Please type the whole code, then press the hash key."),
    "throttled": N_("Too many wrong codes. Please try again in {seconds}."),
    "denied.throttled": N_("Too many wrong codes. Please try again in {seconds}."),
    "language.unknown": N_(
        "There is no language with that number. Press the star key twice, then 1 to {other}."
    ),
}


def _seconds_spoken(language: str, n: int) -> str:
    """A spoken number of seconds, with the language's plural rule (Polish has three)."""
    return translations(language).ngettext("{n} second", "{n} seconds", n).format(n=n)


# Labels of the web page (buttons, headings).
LABELS: dict[str, str] = {
    "title": N_("Parcel locker"),
    "language": N_("Language"),
    "clear": N_("Clear"),
    "enter": N_("Enter"),
    "keypad": N_("Keypad"),
    "language_help": N_("Language: press * twice, then the number"),
}


@functools.cache
def translations(language: str) -> gettext.NullTranslations:
    """The catalog of ``language`` (English: the msgids themselves). Raises FileNotFoundError
    for a language without a compiled catalog (config validation refuses those first)."""
    if language == "en":
        return gettext.NullTranslations()
    return gettext.translation(DOMAIN, LOCALE_DIR, languages=[language])


def remaining_s(message: Message, now: float) -> int | None:
    """Whole seconds left on a countdown (rounded up, so it never shows 0 while refusing),
    never more than the delay that was imposed (``total_s``): the deadline is on the domain
    clock, ``now`` is a surface's wall clock, which may lag it by a few milliseconds, and a
    30 s back-off must not start at 31."""
    if message.deadline is None:
        return None
    left = max(0, math.ceil(message.deadline - now))
    if message.total_s is not None:
        left = min(left, math.ceil(message.total_s - 1e-6))
    return left


def render(
    message: Message,
    language: str,
    now: float,
    *,
    short: bool = False,
    spoken: bool = False,
    mask: str = "",
    seconds_text: str | None = None,
) -> str:
    """The text of ``message`` in ``language`` with its fields filled in (``seconds_text``
    replaces the countdown's number, for a page that counts down by itself; ``spoken``: the
    words for the voice, ``SPOKEN``)."""
    full, brief = MESSAGES.get(message.key, MESSAGES["denied.other"])
    seconds = remaining_s(message, now) or 0
    if spoken and message.key in SPOKEN:
        full = SPOKEN[message.key]
        seconds_text = _seconds_spoken(language, seconds)
    text = translations(language).gettext(brief if short else full)
    return text.format(
        door=message.compartment or "",
        other=message.other or "",
        seconds=str(seconds) if seconds_text is None else seconds_text,
        mask=mask,
    )


def label(key: str, language: str) -> str:
    return translations(language).gettext(LABELS[key])
