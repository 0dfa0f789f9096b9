"""The systemd unit and its installer (DESIGN section 10).

The unit is parsed and its key settings asserted; where ``systemd-analyze`` exists (Debian
package ``systemd``) its offline security score and ``verify`` are run against it as well.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from locker.cabinet.config import EXIT_CONFIG

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "lockerd.service"
INSTALL = ROOT / "systemd" / "install.sh"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze missing (apt-get install systemd)"
)
EXPOSURE = re.compile(r"Overall exposure level for \S+: (\d+\.\d+)")
MISSING_BINARY = re.compile(r"Command /opt/lockerd/venv/bin/lockerd is not executable")

Unit = dict[str, list[tuple[str, str]]]


def parse_unit(text: str) -> Unit:
    """systemd's INI dialect: repeated keys accumulate, '#'/';' comments, '\\' continuations."""
    sections: Unit = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"unparsable unit line: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: Unit, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: Unit, section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"{section}.{key}: {found}"
    return found[0]


@pytest.fixture(scope="module")
def unit() -> Unit:
    return parse_unit(UNIT.read_text(encoding="utf-8"))


def test_parser_keeps_duplicates() -> None:
    parsed = parse_unit("[S]\nA=1\n# c\nA=2\nB=x \\\n  y\n")
    assert values(parsed, "S", "A") == ["1", "2"]
    assert one(parsed, "S", "B") == "x y"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("ExecStart", "/opt/lockerd/venv/bin/lockerd --config /etc/locker/locker.toml"),
        ("WatchdogSec", "30"),
        ("Restart", "on-failure"),
        ("RestartSec", "5"),
        ("RestartPreventExitStatus", "78 75"),
        ("KillSignal", "SIGTERM"),
        ("TimeoutStopSec", "15"),
        ("User", "locker"),
        ("Group", "locker"),
        ("StateDirectory", "locker"),
        ("ConfigurationDirectory", "locker"),
        ("WorkingDirectory", "/var/lib/locker"),
        ("DevicePolicy", "closed"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("CapabilityBoundingSet", ""),
        ("MemoryDenyWriteExecute", "yes"),
        ("UMask", "0077"),
    ],
)
def test_service_setting(unit: Unit, key: str, expected: str) -> None:
    assert one(unit, "Service", key) == expected


def test_groups_and_devices(unit: Unit) -> None:
    assert set(one(unit, "Service", "SupplementaryGroups").split()) == {"gpio", "dialout"}
    allowed = set(values(unit, "Service", "DeviceAllow"))
    assert {"char-gpiochip rw", "char-ttyUSB rw", "char-ttyACM rw"} <= allowed
    # Major 4 (ttyS) is shared with the virtual consoles.
    assert not any(entry.startswith("char-ttyS ") for entry in allowed)
    families = set(one(unit, "Service", "RestrictAddressFamilies").split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6"}


def test_settings_that_would_break_the_hardware_are_absent(unit: Unit) -> None:
    assert values(unit, "Service", "PrivateDevices") in ([], ["no"])  # hides /dev/gpiochip*
    assert values(unit, "Service", "PrivateUsers") in ([], ["no"])  # groups become nogroup
    assert values(unit, "Service", "ProcSubset") in ([], ["all"])  # gpiozero reads /proc
    lg_wd = [v for v in values(unit, "Service", "Environment") if v.startswith("LG_WD=")]
    assert lg_wd == ["LG_WD=/run/locker"]
    assert one(unit, "Service", "RuntimeDirectory") == "locker"


def test_restart_prevent_statuses_are_config_error_and_already_running(unit: Unit) -> None:
    daemon = pytest.importorskip("locker.cabinet.daemon")
    prevented = one(unit, "Service", "RestartPreventExitStatus").split()
    assert prevented == [str(EXIT_CONFIG), str(daemon.EXIT_RUNNING)]
    # an unwritable store is retried, slowly: lockerd waits before exiting, then RestartSec
    assert str(daemon.EXIT_STORAGE) not in prevented
    assert 10 * float(one(unit, "Service", "RestartSec")) <= daemon.STORE_WAIT_S


def test_install_section(unit: Unit) -> None:
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def _security(path: Path) -> tuple[int, float]:
    assert SYSTEMD_ANALYZE is not None
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--threshold=20", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = EXPOSURE.search(done.stdout)
    assert match, done.stdout + done.stderr
    return done.returncode, float(match.group(1))


@needs_analyze
@pytest.mark.timeout(60)
def test_security_exposure_at_most_2(tmp_path: Path) -> None:
    returncode, exposure = _security(UNIT)
    assert exposure <= 2.0
    assert returncode == 0
    # The same check fails a unit without hardening, so it can fail at all.
    bare = tmp_path / "lockerd.service"
    bare.write_text("[Service]\nExecStart=/opt/lockerd/venv/bin/lockerd\n", encoding="utf-8")
    bare_returncode, bare_exposure = _security(bare)
    assert bare_exposure > 9.0
    assert bare_returncode != 0


def _verify_messages(path: Path) -> list[str]:
    assert SYSTEMD_ANALYZE is not None
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = (done.stdout + done.stderr).splitlines()
    # The venv exists only on an installed Pi: that one complaint is expected here.
    return [line for line in lines if line.strip() and not MISSING_BINARY.search(line)]


@needs_analyze
@pytest.mark.timeout(60)
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    assert _verify_messages(UNIT) == []
    broken = tmp_path / "lockerd.service"
    broken.write_text(
        UNIT.read_text(encoding="utf-8").replace("UMask=0077", "UMask=0077\nRestartt=always"),
        encoding="utf-8",
    )
    assert any("Restartt" in line for line in _verify_messages(broken))


# --- install.sh ------------------------------------------------------------------------------


def test_install_script_syntax() -> None:
    done = subprocess.run(
        ["bash", "-n", str(INSTALL)], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert INSTALL.read_text(encoding="utf-8").startswith("#!/usr/bin/env bash\n")
    assert os.access(INSTALL, os.X_OK)


def _system_fingerprint() -> dict[str, str]:
    """The host files a real install would change: users, groups and the unit directory."""
    found = {}
    for path in (Path("/etc/passwd"), Path("/etc/group"), Path("/etc/gshadow")):
        found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "-"
    units = Path("/etc/systemd/system")
    found[str(units)] = " ".join(sorted(p.name for p in units.iterdir())) if units.is_dir() else "-"
    found["/opt/lockerd"] = str(Path("/opt/lockerd").exists())
    return found


def _run_install(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "LOCKERD_PREFIX": str(tmp_path / "opt" / "lockerd"),
        "LOCKER_ETC_DIR": str(tmp_path / "etc" / "locker"),
        "SYSTEMD_UNIT_DIR": str(tmp_path / "units"),
        "UDEV_RULES_DIR": str(tmp_path / "udev"),
        "PYTHON": sys.executable,
    }
    return subprocess.run(
        ["bash", str(INSTALL), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@pytest.mark.timeout(60)
def test_install_dry_run_changes_nothing(tmp_path: Path) -> None:
    before = _system_fingerprint()
    done = _run_install(tmp_path, "--dry-run", str(ROOT))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "nothing was changed" in out
    prefix = tmp_path / "opt" / "lockerd"
    assert f"would run: {sys.executable} -m venv {prefix}/venv" in out
    assert f"{prefix}/venv/bin/python -m pip install" in out
    assert "would run: systemctl enable lockerd.service" in out
    assert f"install -d -m 0750 -o root -g locker {tmp_path}/etc/locker" in out
    assert re.search(r"(would run: useradd .*locker$|user locker exists)", out, re.MULTILINE)
    assert "would run: usermod --append --groups gpio\\,dialout locker" in out
    if (ROOT / "config" / "locker.example.toml").is_file():
        assert f"config/locker.example.toml {tmp_path}/etc/locker/locker.toml" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert _system_fingerprint() == before


@pytest.mark.timeout(60)
def test_install_rejects_bad_arguments(tmp_path: Path) -> None:
    assert _run_install(tmp_path, "--dry-run", "--bogus").returncode == 2
    not_a_checkout = _run_install(tmp_path, "--dry-run", str(tmp_path))
    assert not_a_checkout.returncode == 1
    assert "not a lockerd checkout" in not_a_checkout.stderr
    assert _run_install(tmp_path, "--dry-run", str(ROOT), str(ROOT)).returncode == 2
    help_text = _run_install(tmp_path, "--help")
    assert help_text.returncode == 0
    assert "--dry-run" in help_text.stdout


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
@pytest.mark.timeout(60)
def test_install_script_shellcheck() -> None:
    done = subprocess.run(
        ["shellcheck", str(INSTALL)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout


# --- the fleet service's unit ----------------------------------------------------------------

FLEET_UNIT = ROOT / "systemd" / "locker-fleet.service"


def test_fleet_unit_settings() -> None:
    from locker.fleet.ctl_output import EXIT_CONFIG as EXIT_FLEET_DIR  # noqa: PLC0415
    from locker.fleet.ctl_output import EXIT_USAGE  # noqa: PLC0415

    fleet = parse_unit(FLEET_UNIT.read_text(encoding="utf-8"))
    assert one(fleet, "Service", "Type") == "notify"
    assert one(fleet, "Service", "ExecStart").endswith(
        "lockerctl serve --fleet /var/lib/locker-fleet"
    )
    assert one(fleet, "Service", "StateDirectory") == "locker-fleet"
    assert float(one(fleet, "Service", "WatchdogSec")) >= 10
    # bad usage and an unusable fleet directory cannot be fixed by a restart; the broker or
    # the database being away can
    prevented = one(fleet, "Service", "RestartPreventExitStatus").split()
    assert prevented == [str(EXIT_USAGE), str(EXIT_FLEET_DIR)]
    assert one(fleet, "Service", "Restart") == "on-failure"
    assert one(fleet, "Service", "MemoryDenyWriteExecute") == "yes"  # tests/test_fleet_systemd
    assert one(fleet, "Install", "WantedBy") == "multi-user.target"


@needs_analyze
@pytest.mark.timeout(60)
def test_fleet_unit_security_and_verify() -> None:
    returncode, exposure = _security(FLEET_UNIT)
    assert exposure <= 2.0
    assert returncode == 0
    messages = _verify_messages(FLEET_UNIT)
    assert [m for m in messages if "lockerctl is not executable" not in m] == []
