"""The controller's event log lines (issue 10): alarms one WARNING line each; other events at
DEBUG, summed into one INFO line at most once per SUMMARY_S."""

from __future__ import annotations

import logging

import pytest

from locker.cabinet.domain.model import Out
from locker.cabinet.eventlog import SUMMARY_S, EventLog

NAME = "locker.cabinet.controller"


def _at(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == NAME and r.levelno == level]


def test_a_burst_of_refusals_is_one_info_line_and_alarms_stay_warnings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=NAME)
    log = EventLog()
    denied = Out("access_denied", data={"reason": "unknown_code", "source": "keypad"})
    for i in range(1000):
        log.log(denied, 100.0 + i * 0.001)
    log.log(Out("door_forced", compartment="C1"), 101.0)
    assert _at(caplog, logging.INFO) == []  # not due yet
    assert _at(caplog, logging.WARNING) == ["event door_forced compartment=C1"]
    log.log(Out("door_closed", compartment="C1"), 100.0 + SUMMARY_S)
    assert _at(caplog, logging.INFO) == [
        f"events in the last {SUMMARY_S:.0f} s: access_denied=1000 door_closed=1"
    ]
    log.flush(200.0, force=True)  # nothing counted since: no line
    assert len(_at(caplog, logging.INFO)) == 1


def test_every_event_has_its_own_debug_line_without_secrets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=NAME)
    log = EventLog()
    log.log(Out("access_denied", data={"reason": "unknown_code", "code": "12345678"}), 1.0)
    log.flush(2.0, force=True)
    assert _at(caplog, logging.DEBUG) == ["event access_denied reason=unknown_code"]
    assert _at(caplog, logging.INFO) == ["events in the last 1 s: access_denied=1"]
    assert "12345678" not in caplog.text
