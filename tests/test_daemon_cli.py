"""``lockerd``'s command line: exit statuses an installer and systemd rely on."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from locker import errors
from locker.cabinet import daemon
from locker.cabinet.config import EXIT_CONFIG

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "locker.example.toml"


def test_check_config_of_the_example_without_file_checks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert daemon.main(["--check-config", str(EXAMPLE), "--no-file-checks"]) == 0
    assert capsys.readouterr().out.startswith("OK: ")


def test_check_config_names_missing_files_and_exits_78(capsys: pytest.CaptureFixture[str]) -> None:
    assert daemon.main(["--check-config", str(EXAMPLE)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "security.device_key_file" in err and "does not exist" in err


def test_running_with_a_bad_file_exits_78_before_touching_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "locker.toml"
    bad.write_text('[locker]\nid = "X"\nstate_dir = "s"\ncolour = 1\n')
    assert daemon.main(["--config", str(bad)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "locker.toml: locker.colour: unknown key" in err
    assert not (tmp_path / "s").exists()  # no state directory made, no database opened


def test_simulated_doors_are_refused_on_real_pins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "device.key"
    key.write_bytes(b"k" * 32)
    cfg = tmp_path / "locker.toml"
    cfg.write_text(
        '[locker]\nid = "X"\nstate_dir = "s"\n[security]\ndevice_key_file = "device.key"\n'
        '[gpio]\npin_factory = "lgpio"\n'
        '[[compartments]]\nid = "A1"\nsize = "S"\nlock_pin = 17\ndoor_pin = 27\n'
    )
    assert daemon.main(["--config", str(cfg), "--simulate-doors", "0.3,1"]) == EXIT_CONFIG
    assert "mock" in capsys.readouterr().err


def test_a_missing_pin_library_is_one_clear_line_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # This machine has no lgpio: lockerd says so and exits 78 (no restart loop), with no
    # traceback and before any state directory or database exists.
    (tmp_path / "device.key").write_bytes(b"k" * 32)
    cfg = tmp_path / "locker.toml"
    cfg.write_text(
        '[locker]\nid = "X"\nstate_dir = "s"\n[security]\ndevice_key_file = "device.key"\n'
        '[gpio]\npin_factory = "lgpio"\n'
        '[[compartments]]\nid = "A1"\nsize = "S"\nlock_pin = 17\ndoor_pin = 27\n'
    )
    assert daemon.main(["--config", str(cfg)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"{cfg}: gpio.pin_factory: 'lgpio' needs the Python module 'lgpio', which is not "
        "installed here (pip install lgpio, or apt install python3-lgpio)"
    ]
    assert not (tmp_path / "s").exists()


def test_a_database_from_a_newer_version_exits_74_without_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """StorageError -> 74 (EX_IOERR): systemd restarts, and the log says why in one line."""
    (tmp_path / "device.key").write_bytes(b"k" * 32)
    (tmp_path / "s").mkdir()
    with sqlite3.connect(tmp_path / "s" / "locker.db") as con:
        con.execute("PRAGMA user_version = 999")
    cfg = tmp_path / "locker.toml"
    cfg.write_text(
        '[locker]\nid = "X"\nstate_dir = "s"\n[security]\ndevice_key_file = "device.key"\n'
        '[gpio]\npin_factory = "mock"\n'
        '[[compartments]]\nid = "A1"\nsize = "S"\nlock_pin = 17\ndoor_pin = 27\n'
    )
    assert daemon.main(["--config", str(cfg)]) == daemon.EXIT_STORAGE
    [record] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "cannot start" in record.getMessage() and "newer" in record.getMessage()
    assert record.exc_info is None


@pytest.mark.timeout(30)
def test_a_corrupt_database_exits_74_at_once_saying_corrupt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by a newcomer: a file of random bytes was waited on for --store-wait (60 s), as
    if the disk were full, then called "cannot be written". No waiting repairs it."""
    (tmp_path / "device.key").write_bytes(b"k" * 32)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "locker.db").write_bytes(os.urandom(8192))
    cfg = tmp_path / "locker.toml"
    cfg.write_text(
        '[locker]\nid = "X"\nstate_dir = "s"\n[security]\ndevice_key_file = "device.key"\n'
        '[gpio]\npin_factory = "mock"\n'
        '[[compartments]]\nid = "A1"\nsize = "S"\nlock_pin = 17\ndoor_pin = 27\n'
    )
    assert daemon.main(["--config", str(cfg), "--store-wait", "60"]) == daemon.EXIT_STORAGE
    errs = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errs) == 1 and "corrupt" in errs[0], errs
    assert "waiting" not in caplog.text


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.ConfigError("x"), EXIT_CONFIG),
        (errors.StorageError("x"), 74),
        (errors.HardwareError("x"), 69),
        (errors.LinkError("x"), 69),
        (RuntimeError("a bug"), 1),
    ],
)
def test_exit_status_follows_the_error_category(error: Exception, status: int) -> None:
    assert daemon.exit_status(error) == status
    assert f"  {status} " in daemon.EXIT_STATUS_HELP


@pytest.mark.parametrize("wait", ["nan", "inf", "-1", "soon"])
def test_a_duration_that_means_nothing_is_a_usage_error(
    wait: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by a newcomer: ``--store-wait nan`` was taken."""
    with pytest.raises(SystemExit) as info:
        daemon.main(["--config", "x.toml", "--store-wait", wait])
    assert info.value.code == 2
    assert "--store-wait" in capsys.readouterr().err
