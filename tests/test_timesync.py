"""clock_synced asks the kernel (adjtimex), so chrony and ntpd count as well as timesyncd."""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path

import pytest

from locker.cabinet import timesync
from locker.cabinet.timesync import STA_UNSYNC, Timex, make_clock_synced, synced_from


def _timex(maxerror: int, status: int = 0) -> Timex:
    tx = Timex()
    tx.maxerror, tx.status = maxerror, status
    return tx


def test_struct_matches_the_kernel_abi() -> None:
    # struct timex is 208 bytes on LP64 (x86-64, aarch64) and 128 on ILP32 (armhf)
    assert ctypes.sizeof(Timex) == (208 if ctypes.sizeof(ctypes.c_long) == 8 else 128)


def test_the_real_kernel_answers() -> None:
    tx = timesync.read_timex()
    assert tx is not None
    assert 0 <= tx.maxerror <= timesync.MAXERROR_LIMIT_US
    assert tx.tick > 0  # the kernel filled the struct in (USER_HZ ticks of about 10 ms)


def test_chrony_with_rtcsync_off_is_synced_although_sta_unsync_is_set(tmp_path: Path) -> None:
    # chrony sets STA_UNSYNC itself when it does not want the kernel to write the RTC
    synced = make_clock_synced(lambda: _timex(250_000, STA_UNSYNC), tmp_path / "absent")
    assert synced() is True


def test_ntpd_or_chrony_synced_without_timesyncd_flag(tmp_path: Path) -> None:
    assert make_clock_synced(lambda: _timex(1_500), tmp_path / "absent")() is True


def test_no_service_updated_the_clock_is_not_synced(tmp_path: Path) -> None:
    flag = tmp_path / "synchronized"
    flag.touch()  # a stale flag from an earlier boot must not win over the kernel
    assert make_clock_synced(lambda: _timex(16_000_000, STA_UNSYNC), flag)() is False
    assert synced_from(_timex(-1)) is False


def test_without_adjtimex_the_timesyncd_flag_answers(tmp_path: Path) -> None:
    flag = tmp_path / "synchronized"
    assert make_clock_synced(lambda: None, flag)() is False
    flag.touch()
    assert make_clock_synced(lambda: None, flag)() is True


def test_libc_is_looked_up_once_not_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    # find_library runs ldconfig in a child process: once per commit was a fork per event
    calls: list[str] = []
    real = ctypes.util.find_library

    def counting(name: str) -> str | None:
        calls.append(name)
        return real(name)

    monkeypatch.setattr(ctypes.util, "find_library", counting)
    timesync._adjtimex.cache_clear()
    try:
        for _ in range(5):
            assert timesync.read_timex() is not None
    finally:
        timesync._adjtimex.cache_clear()
    assert calls == ["c"]
