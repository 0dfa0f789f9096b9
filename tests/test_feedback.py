"""GpioIndicator: pin state sequences of buzzer and LEDs on MockFactory."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from hardware.gpio.feedback import MAX_PATTERN_S, PATTERNS, Blink, GpioIndicator
from locker.ports import REFUSAL_FEEDBACK, Feedback
from tests.conftest import wait_for

BUZZER, OK, ERROR = 18, 23, 24
SCALE = 0.2  # the real patterns, five times faster
TOLERANCE_S = 0.1


@pytest.fixture
def indicator(mock_factory: MockFactory) -> Iterator[GpioIndicator]:
    ind = GpioIndicator(
        buzzer_pin=BUZZER,
        ok_led_pin=OK,
        error_led_pin=ERROR,
        pin_factory=mock_factory,
        patterns={f: p.scaled(SCALE) for f, p in PATTERNS.items()},
    )
    for n in (BUZZER, OK, ERROR):
        mock_factory.pin(n).clear_states()
    yield ind
    ind.close()


def levels(pin: MockPin) -> list[bool]:
    return [s.state for s in pin.states]


def highs(pin: MockPin) -> list[float]:
    """How long each high lasted (the timestamp of a state is the time since the last one)."""
    pairs = itertools.pairwise(pin.states)
    return [later.timestamp for earlier, later in pairs if earlier.state]


def finished(pin: MockPin, changes: int) -> bool:
    return len(pin.states) >= changes + 1 and not pin.state


def show_returns_at_once(indicator: GpioIndicator, feedback: Feedback) -> None:
    started = time.monotonic()
    indicator.show(feedback)
    assert time.monotonic() - started < 0.05


@pytest.mark.timeout(20)
def test_key_is_one_short_beep(mock_factory: MockFactory, indicator: GpioIndicator) -> None:
    buzzer = mock_factory.pin(BUZZER)
    show_returns_at_once(indicator, Feedback.KEY)
    wait_for(lambda: finished(buzzer, 2), 5, what="beep")
    assert levels(buzzer) == [False, True, False]
    assert highs(buzzer)[0] == pytest.approx(0.03 * SCALE, abs=TOLERANCE_S)
    assert levels(mock_factory.pin(OK)) == [False]
    assert levels(mock_factory.pin(ERROR)) == [False]


@pytest.mark.timeout(20)
def test_accepted_lights_green_and_beeps_once(
    mock_factory: MockFactory, indicator: GpioIndicator
) -> None:
    buzzer, ok = mock_factory.pin(BUZZER), mock_factory.pin(OK)
    show_returns_at_once(indicator, Feedback.ACCEPTED)
    wait_for(lambda: finished(ok, 2) and finished(buzzer, 2), 5, what="green and beep")
    assert levels(ok) == [False, True, False]
    assert highs(ok)[0] == pytest.approx(2.0 * SCALE, abs=TOLERANCE_S)
    assert levels(buzzer) == [False, True, False]
    assert levels(mock_factory.pin(ERROR)) == [False]


@pytest.mark.timeout(20)
def test_refused_lights_red_and_beeps_twice(
    mock_factory: MockFactory, indicator: GpioIndicator
) -> None:
    buzzer, error = mock_factory.pin(BUZZER), mock_factory.pin(ERROR)
    show_returns_at_once(indicator, Feedback.REFUSED)
    wait_for(lambda: finished(buzzer, 4) and finished(error, 2), 5, what="red and two beeps")
    assert levels(buzzer) == [False, True, False, True, False]
    assert levels(error) == [False, True, False]
    assert levels(mock_factory.pin(OK)) == [False]


@pytest.mark.timeout(20)
def test_throttled_blinks_red_with_a_long_beep(
    mock_factory: MockFactory, indicator: GpioIndicator
) -> None:
    buzzer, error = mock_factory.pin(BUZZER), mock_factory.pin(ERROR)
    show_returns_at_once(indicator, Feedback.THROTTLED)
    wait_for(lambda: finished(buzzer, 2) and finished(error, 12), 5, what="throttle pattern")
    assert levels(error) == [False] + [True, False] * 6
    assert highs(buzzer)[0] == pytest.approx(1.0 * SCALE, abs=TOLERANCE_S)
    assert highs(buzzer)[0] > max(highs(error))


@pytest.mark.timeout(20)
def test_alarm_blinks_red_rapidly_then_stops(
    mock_factory: MockFactory, indicator: GpioIndicator
) -> None:
    error = mock_factory.pin(ERROR)
    show_returns_at_once(indicator, Feedback.ALARM)
    wait_for(lambda: finished(error, 40), 5, what="alarm blinks")
    assert levels(error) == [False] + [True, False] * 20
    assert levels(mock_factory.pin(BUZZER)) == [False]


@pytest.mark.timeout(20)
def test_a_new_pattern_replaces_the_running_one(
    mock_factory: MockFactory, indicator: GpioIndicator
) -> None:
    ok, error = mock_factory.pin(OK), mock_factory.pin(ERROR)
    indicator.show(Feedback.ALARM)
    wait_for(lambda: error.state, 5, what="alarm running")
    indicator.show(Feedback.ACCEPTED)
    assert not error.state  # the alarm blink was stopped and its LED switched off
    count = len(error.states)
    wait_for(lambda: finished(ok, 2), 5, what="green done")
    assert len(error.states) == count


@pytest.mark.timeout(20)
def test_close_switches_everything_off_and_later_shows_are_ignored(
    mock_factory: MockFactory, indicator: GpioIndicator
) -> None:
    indicator.show(Feedback.THROTTLED)
    wait_for(lambda: mock_factory.pin(BUZZER).state, 5, what="beep on")
    indicator.close()
    indicator.close()
    indicator.show(Feedback.ALARM)
    for n in (BUZZER, OK, ERROR):
        assert mock_factory.pin(n).state is False
    GpioIndicator(buzzer_pin=BUZZER, pin_factory=mock_factory).close()  # pin was released


def test_every_device_is_optional(mock_factory: MockFactory) -> None:
    ind = GpioIndicator(ok_led_pin=OK, pin_factory=mock_factory)
    for feedback in Feedback:
        ind.show(feedback)
    ind.close()
    GpioIndicator().close()
    assert len(mock_factory.pins) == 1  # only the LED's pin was claimed


def test_default_patterns_are_bounded_and_complete() -> None:
    assert set(PATTERNS) == set(Feedback)
    assert PATTERNS[Feedback.ACCEPTED].ok_led == Blink(2.0)
    for pattern in PATTERNS.values():
        for blink in (pattern.beep, pattern.ok_led, pattern.error_led):
            assert blink is None or blink.duration_s <= 5.0


def test_every_refusal_reason_sounds_and_looks_different() -> None:
    # issue 11 item 5: every refusal but "throttled" used to sound and look the same
    refusals = [PATTERNS[f] for f in REFUSAL_FEEDBACK]
    beeps = [p.beep for p in refusals]
    leds = [(p.ok_led, p.error_led) for p in refusals]
    assert None not in beeps
    assert len(set(beeps)) == len(refusals), "two refusals beep alike"
    assert len(set(leds)) == len(refusals), "two refusals light alike"
    assert all(p.leds and (p.ok_led or p.error_led) for p in refusals)


@pytest.mark.parametrize(
    "kwargs",
    [{"on_s": 0}, {"on_s": 0.1, "off_s": -1}, {"on_s": 0.1, "n": 0}, {"on_s": MAX_PATTERN_S + 1}],
)
def test_unbounded_blinks_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="blink"):
        Blink(**kwargs)  # type: ignore[arg-type]


def test_a_missing_pattern_is_refused() -> None:
    with pytest.raises(ValueError, match="no pattern for alarm"):
        GpioIndicator(patterns={f: p for f, p in PATTERNS.items() if f is not Feedback.ALARM})
