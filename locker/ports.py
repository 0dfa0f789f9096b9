"""The small types that cross the boundary between adapters and the controller.

Adapters (``hardware``, the MQTT link) turn what happened into one of the frozen input events
below and hand it to a sink (the controller's queue); they never touch locker state. The port
ABCs are what the controller calls on the way out. This module imports nothing else of
``locker`` so that ``hardware`` can depend on it and on nothing more.
"""

from __future__ import annotations

import abc
import enum
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, ParamSpec, TypeVar

from locker import errors


class DoorState(enum.StrEnum):
    OPEN = "open"
    CLOSED = "closed"
    UNKNOWN = "unknown"


class InputSource(enum.StrEnum):
    KEYPAD = "keypad"
    SCANNER = "scanner"


# --- input events: adapters -> controller ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class DoorChanged:
    """A debounced door sensor level, or UNKNOWN when its board stopped answering."""

    compartment: str
    state: DoorState


@dataclass(frozen=True, slots=True)
class ItemChanged:
    """An item-presence sensor (board IR input); ``present`` is None when it cannot be read."""

    compartment: str
    present: bool | None


@dataclass(frozen=True, slots=True)
class UnlockResult:
    """What became of one unlock request handed to a lock driver.

    ``sent`` is False only when nothing reached the coil or the bus (safe to let the person
    retry); True when the pulse ran or the frame's write started (outcome then comes from the
    door sensor, never from a retry).
    """

    compartment: str
    sent: bool
    detail: str = ""


# The keys a locker keypad has (DESIGN section 7); every keypad adapter reports these alone
# as ``KeyPressed`` and anything else as ``InputRejected``.
LOCKER_KEYS: Final = frozenset("0123456789*#")


@dataclass(frozen=True, slots=True)
class KeyPressed:
    """One key from a keypad: one of ``LOCKER_KEYS`` ('0'-'9', '*' or '#')."""

    key: str
    source: InputSource = InputSource.KEYPAD


@dataclass(frozen=True, slots=True)
class LineScanned:
    """One complete, already length- and charset-checked line from the QR scanner."""

    text: str
    source: InputSource = InputSource.SCANNER


@dataclass(frozen=True, slots=True)
class InputRejected:
    """Bytes from a keypad or scanner that failed the input rules (too long, control bytes...)."""

    source: InputSource
    reason: str


@dataclass(frozen=True, slots=True)
class HardwareFault:
    """A device stopped working (port unplugged, board silent). Reported once per outage."""

    device: str
    detail: str
    compartments: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HardwareRecovered:
    device: str
    compartments: tuple[str, ...] = ()


HardwareEvent = (
    DoorChanged
    | ItemChanged
    | UnlockResult
    | KeyPressed
    | LineScanned
    | InputRejected
    | HardwareFault
    | HardwareRecovered
)

EventSink = Callable[[HardwareEvent], None]


def deliver(sink: EventSink | None, event: HardwareEvent, name: str) -> None:
    """Hand an input adapter's ``event`` to its ``sink`` (none yet: dropped); a sink that
    raises is logged under the adapter's ``name``, never raised into its reader thread."""
    if sink is None:
        return
    try:
        sink(event)
    except Exception:
        logging.getLogger(__name__).exception("%s: sink refused an event", name)


"""Where adapters put events. Must be cheap and thread-safe (``queue.Queue.put``)."""


class Feedback(enum.StrEnum):
    """What the buzzer and LEDs say. Every ``access_denied`` reason (DESIGN section 5) has its
    own member, named and valued as the reason, so ``Feedback(reason)`` is its feedback."""

    KEY = "key"  # short click on every key press
    ACCEPTED = "accepted"
    REFUSED = "refused"  # an unlock that could not be sent: try again
    ALARM = "alarm"
    # one per refusal reason
    UNKNOWN_CODE = "unknown_code"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    NOT_YET_AVAILABLE = "not_yet_available"
    WRONG_LOCKER = "wrong_locker"
    BAD_SIGNATURE = "bad_signature"
    MALFORMED = "malformed"
    THROTTLED = "throttled"
    LOCKED_OUT = "locked_out"
    LOCKDOWN = "lockdown"
    COMPARTMENT_UNAVAILABLE = "compartment_unavailable"
    OUT_OF_SERVICE = "out_of_service"
    ALREADY_USED = "already_used"


REFUSAL_FEEDBACK: tuple[Feedback, ...] = tuple(
    f for f in Feedback if f not in (Feedback.KEY, Feedback.ACCEPTED, Feedback.ALARM)
)
"""Feedback that refuses something; each pattern differs from every other one's."""


# --- output ports: controller -> adapters ---------------------------------------------------


class HardwareUnavailable(errors.HardwareError):
    """Raised by ``unlock`` when the driver knows up front that nothing can be sent."""


class LockBank(abc.ABC):
    """A set of compartments whose locks and door sensors one driver owns.

    Implemented by the GPIO bank (gpiozero) and by each RS-485 lock-board bus. Both pass the
    same contract tests (``tests/lockbank_contract.py``).

    Rules every implementation keeps:
    - ``start`` reads every door once and reports it through ``sink`` before returning, then
      reports only changes. It never energises a lock.
    - ``unlock`` never blocks on the coil or the bus: it queues the request and returns. At most
      one coil of the bank is energised at a time, each pulse is bounded, and consecutive pulses
      are separated by a rest. Each request ends in exactly one ``UnlockResult``.
    - Nothing is ever retried on its own once a pulse or a frame has started.
    - ``close`` de-energises everything and is idempotent.
    """

    name: str

    @property
    @abc.abstractmethod
    def compartments(self) -> tuple[str, ...]:
        """The compartment ids this bank drives."""

    @abc.abstractmethod
    def start(self, sink: EventSink) -> None: ...

    @abc.abstractmethod
    def unlock(self, compartment: str) -> None: ...

    @abc.abstractmethod
    def doors(self) -> Mapping[str, DoorState]:
        """The last known (debounced) state of every door of this bank."""

    def items(self) -> Mapping[str, bool | None]:
        """Item presence per compartment, for banks that can sense it (None: cannot tell)."""
        return {c: None for c in self.compartments}

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> LockBank:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InputDevice(abc.ABC):
    """A keypad or scanner adapter. Reports KeyPressed / LineScanned / InputRejected and
    HardwareFault / HardwareRecovered to the sink from its own thread."""

    name: str

    @abc.abstractmethod
    def start(self, sink: EventSink) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...


class Indicator(abc.ABC):
    """Buzzer and LEDs. ``show`` never blocks (patterns run in the background)."""

    @abc.abstractmethod
    def show(self, feedback: Feedback) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...


class Surface(abc.ABC):
    """Something that shows the front panel (web page, LCD, voice, locator LEDs): it reads
    views on its own threads and never makes the controller wait (DESIGN section 12)."""

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...


class NullIndicator(Indicator):
    def show(self, feedback: Feedback) -> None:
        pass

    def close(self) -> None:
        pass


# --- the MQTT link's side -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandMessage:
    """A message that arrived on ``{p}/cmd``, exactly as received (verification happens on the
    controller thread, over these very bytes)."""

    payload: bytes
    retained: bool = False
    response_topic: str | None = None
    correlation_data: bytes | None = None
    receipt: object = None  # handed back to ``Uplink.command_done`` once committed


@dataclass(frozen=True, slots=True)
class ServerAck:
    """``{p}/ack``: the server holds every event of ``epoch`` with ``seq <= upto_seq``
    durably. ``epoch`` None: a server from before epochs (DESIGN 5)."""

    upto_seq: int
    epoch: str | None = None


@dataclass(frozen=True, slots=True)
class RetainedState:
    """The locker's own retained ``{p}/state`` as the broker held it when the link
    connected (None fields: absent or unreadable): what this locker last published, to
    compare with its store (a store that went backwards, issue 11 item 21)."""

    epoch: str | None
    last_seq: int | None


@dataclass(frozen=True, slots=True)
class EventsDelivered:
    """Successful PUBACKs, used as delivery only when ``mqtt.require_server_ack = false``."""

    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PublishRefused:
    """The broker began refusing this locker's publishes: a PUBACK with a failure reason
    code (>= 0x80, e.g. 0x87 not authorized by the ACL) on ``topic``. Reported once per
    outage, not per refusal (the refused events stay in the outbox); ``PublishAccepted``
    ends it."""

    topic: str
    reason: str


@dataclass(frozen=True, slots=True)
class PublishAccepted:
    """The broker accepts this locker's publishes again after a ``PublishRefused``:
    ``refusals`` PUBACKs were refused in between, over ``seconds``."""

    refusals: int
    seconds: float


@dataclass(frozen=True, slots=True)
class LinkChanged:
    connected: bool
    detail: str = ""


LinkEvent = (
    CommandMessage
    | ServerAck
    | RetainedState
    | EventsDelivered
    | PublishRefused
    | PublishAccepted
    | LinkChanged
)
LinkSink = Callable[[LinkEvent], None]


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    type: str
    payload: bytes  # the exact JSON bytes to publish on {p}/evt/{type}


class OutboxReader(abc.ABC):
    """Read side of the outbox for the link's own thread (its own SQLite connection)."""

    @abc.abstractmethod
    def read(self, after_seq: int, limit: int) -> list[OutboxRow]: ...

    @abc.abstractmethod
    def depth(self) -> int: ...

    @abc.abstractmethod
    def stream(self) -> tuple[str, int]:
        """``(epoch, last_seq)`` as committed: what a server ack may cover."""


class Uplink(abc.ABC):
    """What the controller calls on the MQTT link. Every method returns at once."""

    @abc.abstractmethod
    def start(self, sink: LinkSink) -> None: ...

    @abc.abstractmethod
    def outbox_changed(self) -> None:
        """New rows were committed, or rows were acknowledged: wake the sender."""

    @abc.abstractmethod
    def publish_state(self, snapshot: Mapping[str, object]) -> None:
        """Retained ``{p}/state``; the link coalesces bursts and republishes on connect."""

    @abc.abstractmethod
    def publish_reply(self, reply: Mapping[str, object], correlation_data: bytes | None) -> None:
        """``{p}/res`` for one command."""

    @abc.abstractmethod
    def resync(self) -> None:
        """Republish status and state, resend every unacknowledged event."""

    @abc.abstractmethod
    def close(self, clean: bool = True) -> None:
        """``clean``: publish offline status and disconnect normally (will suppressed)."""

    def publish_unstored(self, row: OutboxRow) -> None:  # noqa: B027 - optional hook
        """Publish an event that could not be committed (``storage_fault``) from memory on
        ``{p}/evt/{type}``, once the broker retains the state handed over just before it
        (which counts its seq). The store keeps it and writes it to the outbox at the first
        write that succeeds; from there it is re-sent like any event until acked."""

    def command_done(self, receipt: object) -> None:  # noqa: B027 - optional hook
        """The command carrying ``receipt`` is committed (executed or refused, its id
        recorded): only now may the broker forget it. Until then a crash means redelivery
        from the persistent session, and the stored id answers it ``duplicate``."""

    def healthy(self) -> bool:
        """Whether the link's own thread is alive and turning (gates the systemd watchdog)."""
        return True

    def stream_reset(self) -> None:  # noqa: B027 - optional hook
        """The outbox was renumbered into a new epoch: forget every confirmation and send
        it all again from seq 1."""

    def stream_checked(self) -> None:  # noqa: B027 - optional hook
        """The controller has compared its store with the ``RetainedState`` the link handed
        it (and begun a new epoch if the store went backwards): only now may events and the
        state go out, so no event of an abandoned stream is sent under a reused seq."""


class NullUplink(Uplink):
    """No link configured (offline cabinet, most unit tests)."""

    def start(self, sink: LinkSink) -> None:
        pass

    def outbox_changed(self) -> None:
        pass

    def publish_state(self, snapshot: Mapping[str, object]) -> None:
        pass

    def publish_reply(self, reply: Mapping[str, object], correlation_data: bytes | None) -> None:
        pass

    def resync(self) -> None:
        pass

    def close(self, clean: bool = True) -> None:
        pass


# --- the callback guard: one sink for every adapter callback ----------------------------------
# Callback guard: adapter callbacks log and swallow exceptions instead of dying.
#
# An exception escaping a paho callback kills its network thread while ``is_connected()`` stays
# true; one escaping a gpiozero or pySerial callback kills that reader. Every adapter callback
# is therefore wrapped. The log record carries ``callback_error=True`` so the test suite can turn
# such a log into a failure (``tests/conftest.py``).

P = ParamSpec("P")
R = TypeVar("R")


def guarded(logger: logging.Logger) -> Callable[[Callable[P, R]], Callable[P, R | None]]:
    """Decorate an adapter callback so that it never raises into the library that called it."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R | None]:
        @functools.wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> R | None:
            try:
                return fn(*args, **kwargs)
            except Exception:
                logger.exception(
                    "callback %s failed", fn.__qualname__, extra={"callback_error": True}
                )
                return None

        return inner

    return wrap
