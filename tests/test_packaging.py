"""Packaging: a Pi installs only the cabinet, from hashed lock files (issue 7).

- every lock file pins every dependency its extras name (else: run ``make lock``);
- ``systemd/install.sh``'s own commands, run into a temporary prefix, give a venv with
  lockerd and without the fleet's packages (no qrcode, no web stack), and a ``lockerd`` on
  every user's PATH that checks a configuration without importing dev tools.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
LOCKS = {
    "cabinet.txt": ["cabinet", "lcd"],  # the LCD's pure-Python driver: small, no web stack
    "cabinet-lgpio.txt": ["cabinet", "lcd", "lgpio"],
    "fleet.txt": ["fleet"],
    "test.txt": ["test"],
}
FLEET_ONLY = {
    "qrcode", "pypng", "tomli-w", "fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic",
    "psycopg", "jinja2", "argon2-cffi", "prometheus-client", "pytest", "hypothesis", "ruff",
    "mypy", "playwright",
}  # fmt: skip


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def _wanted(extras: list[str]) -> set[str]:
    """The project's requirements for these extras, self-references followed."""
    project = PYPROJECT["project"]
    optional = project["optional-dependencies"]
    names = {_name(r) for r in project["dependencies"]}
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in optional[extra]:
            if _name(req) == _name(project["name"]):
                todo += re.findall(r"[A-Za-z0-9_-]+", req.split("[", 1)[1].split("]")[0])
            else:
                names.add(_name(req))
    return names


def _pinned(lock: Path) -> set[str]:
    text = lock.read_text(encoding="utf-8")
    return {_name(m) for m in re.findall(r"^([A-Za-z0-9][^=\s]*)==", text, re.MULTILINE)}


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_each_lock_file_pins_what_its_extras_need_with_hashes(lock: str) -> None:
    path = ROOT / "requirements" / lock
    missing = _wanted(LOCKS[lock]) - _pinned(path)
    assert not missing, f"requirements/{lock} is stale (missing {sorted(missing)}): run make lock"
    text = path.read_text(encoding="utf-8")
    entries = re.findall(r"^\S.*==\S+ \\$", text, re.MULTILINE)
    assert entries and len(entries) == text.count("==")
    assert "--hash=sha256:" in text and "file://" not in text
    # no absolute path of the machine that generated the lock (an editable or local entry)
    assert not re.search(r"^\s*(-e\s+)?/", text, re.MULTILINE)


def test_the_cabinet_locks_hold_no_fleet_package() -> None:
    for lock in ("cabinet.txt", "cabinet-lgpio.txt"):
        assert not _pinned(ROOT / "requirements" / lock) & FLEET_ONLY, lock


def test_the_license_is_an_spdx_expression() -> None:
    # The table form is deprecated and printed 50 lines of warnings on every install.
    assert PYPROJECT["project"]["license"] == "MIT"


def _install_commands(tmp_path: Path, env: dict[str, str]) -> list[list[str]]:
    done = subprocess.run(
        ["bash", str(ROOT / "systemd" / "install.sh"), "--dry-run", "--no-lgpio", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    commands = [shlex.split(line) for line in re.findall(r"^would run: (.*)$", done.stdout, re.M)]
    prefix = str(tmp_path / "opt")
    # The package steps: the venv, pip, the PATH link (not users, groups or systemctl).
    return [
        c
        for c in commands
        if c[0] in (sys.executable, "ln")
        or c[0].startswith(prefix)
        or (c[:2] == ["install", "-d"] and c[-1] == env["LOCKER_BIN_DIR"])
    ]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_install_sh_installs_the_cabinet_only_and_puts_lockerd_on_path(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "LOCKERD_PREFIX": str(tmp_path / "opt" / "lockerd"),
        "LOCKER_ETC_DIR": str(tmp_path / "etc" / "locker"),
        "SYSTEMD_UNIT_DIR": str(tmp_path / "units"),
        "UDEV_RULES_DIR": str(tmp_path / "udev"),
        "LOCKER_BIN_DIR": str(tmp_path / "bin"),
        "PYTHON": sys.executable,
    }
    commands = _install_commands(tmp_path, env)
    assert [c[0] for c in commands][:1] == [sys.executable]  # the venv first
    assert any("--require-hashes" in c and str(ROOT / "requirements" / "cabinet.txt") in c
               for c in commands)  # fmt: skip
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, (command, done.stderr[-3000:])
    venv = tmp_path / "opt" / "lockerd" / "venv"
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    installed = {_name(line) for line in listed.splitlines() if "==" in line}
    assert {"parcel-locker", "gpiozero", "pyserial", "paho-mqtt"} <= installed
    assert not installed & FLEET_ONLY
    lockerd = tmp_path / "bin" / "lockerd"
    assert lockerd.is_symlink() and lockerd.resolve() == (venv / "bin" / "lockerd").resolve()
    example = ROOT / "config" / "locker.example.toml"
    done = subprocess.run(
        [str(lockerd), "--check-config", str(example), "--no-file-checks"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.startswith("OK: "), done.stderr
    probe = (
        "import sys, locker.cabinet.daemon, locker.cabinet.assembly; "
        "bad = sorted(m for m in sys.modules if m.startswith(('locker.sim', 'locker.fleet', "
        "'qrcode', 'tomli_w'))); print(bad); sys.exit(bool(bad))"
    )
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_pip_install_of_the_cabinet_extra_pulls_no_fleet_package(tmp_path: Path) -> None:
    # The check from outside: a fresh venv, `pip install '.[cabinet]'`, no lock file.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    done = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", f"{ROOT}[cabinet]"],
        capture_output=True, text=True, timeout=500, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=freeze"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    installed = {_name(line) for line in listed.splitlines() if "==" in line}
    assert {"parcel-locker", "gpiozero", "pyserial"} <= installed
    assert not installed & FLEET_ONLY


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_fleet_servers_install_steps_give_a_working_lockerctl_serve(tmp_path: Path) -> None:
    # README's "Under systemd" steps, in a fresh venv: the locked fleet packages (with the
    # build backend), then the project without dependencies. lockerd's venv would not do:
    # install.sh puts only the cabinet there (a service started from it died on tomli_w).
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    unit = (ROOT / "systemd" / "locker-fleet.service").read_text(encoding="utf-8")
    for line in (
        "sudo /opt/locker-fleet/venv/bin/pip install --require-hashes -r requirements/fleet.txt",
        "sudo /opt/locker-fleet/venv/bin/pip install --no-deps --no-build-isolation .",
    ):
        assert line in readme
    assert "ExecStart=/opt/locker-fleet/venv/bin/lockerctl serve" in unit
    venv = tmp_path / "venv"
    python = str(venv / "bin" / "python")
    for command in (
        [sys.executable, "-m", "venv", str(venv)],
        [python, "-m", "pip", "install", "--quiet", "--require-hashes", "-r",
         str(ROOT / "requirements" / "fleet.txt")],
        [python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         str(ROOT)],
    ):  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=500, check=False)
        assert done.returncode == 0, (command, done.stderr[-3000:])
    lockerctl = str(venv / "bin" / "lockerctl")
    done = subprocess.run(
        [lockerctl, "serve", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and "--fleet" in done.stdout, done.stderr[-3000:]
    probe = "import locker.fleet.service.app, locker.fleet.service.db; print('ok')"
    done = subprocess.run(
        [python, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.strip() == "ok", done.stderr[-3000:]
