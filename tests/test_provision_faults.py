"""``lockerctl fleet init`` and ``locker add`` failing part-way: all or nothing.

Before: a fleet init that could not write the broker's certificate left ``ca-key.pem`` and
half the tree, and the next run refused ("already holds a fleet"). The faults here are real:
a file-size limit (``RLIMIT_FSIZE``: the kernel refuses the write, EFBIG, or kills the process
with SIGXFSZ, which no cleanup survives), a full tmpfs, another run holding the lock.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from locker.fleet import ctl, provision
from locker.fleet.staging import STAGING_INFIX
from tests.conftest import small_tmpfs

# A broker host name this long makes broker/server.pem clearly the largest of the first files
# fleet init writes (ca-key.pem, ca.pem, crl.pem, broker/server-key.pem, broker/server.pem).
HOST = ".".join(["b" * 60] * 3) + ".example"
FIRST = ["ca-key.pem", "ca.pem", "crl.pem", "broker/server-key.pem"]
INIT = ["fleet", "init", "--broker-host", HOST]

# Run lockerctl with a file-size limit; "kill": the kernel's default for SIGXFSZ (Python
# ignores it at start-up, so a write would fail with EFBIG instead).
CHILD = """
import resource, signal, sys
limit, how = int(sys.argv[1]), sys.argv[2]
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
if how == "kill":
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
from locker.fleet.ctl import main
sys.exit(main(sys.argv[3:]))
"""


def limited(limit: int, how: str, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(limit), how, *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def server_pem_limit(tmp_path_factory: pytest.TempPathFactory) -> int:
    """A file-size limit the first files of a fleet init fit and broker/server.pem does not."""
    ref = tmp_path_factory.mktemp("reference") / "fleet"
    provision.provision_fleet(ref, "fleet", HOST)
    before = max((ref / name).stat().st_size for name in FIRST)
    server = (ref / "broker" / "server.pem").stat().st_size
    assert server - before > 200  # the margin covers run-to-run size changes of DER
    return (before + server) // 2


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if STAGING_INFIX in p.name)


def test_a_fleet_init_that_cannot_write_the_broker_cert_leaves_nothing(
    tmp_path: Path, server_pem_limit: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reproduction: exit 7 and a half-made fleet before; now exit 7, nothing on disk,
    a message naming the file, and the same command then completes."""
    done = limited(server_pem_limit, "refuse", *INIT, "fleet", cwd=tmp_path)
    assert done.returncode == ctl.EXIT_FILE, done.stderr
    assert "cannot write fleet/broker/server.pem: File too large" in done.stderr
    assert "nothing was kept: fleet was not created" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(os.listdir(tmp_path)) == []
    assert ctl.main([*INIT, str(tmp_path / "fleet")]) == ctl.EXIT_OK
    assert "removed" not in capsys.readouterr().err
    fleet = provision.Fleet.load(tmp_path / "fleet")
    assert fleet.broker_host == HOST and fleet.command_key() is not None


def test_a_killed_fleet_init_is_cleaned_up_by_the_next_run(
    tmp_path: Path, server_pem_limit: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """Killed between two files (SIGXFSZ: no handler runs), the run leaves its staging
    directory, never the fleet directory; the next run removes it, says so, and completes."""
    done = limited(server_pem_limit, "kill", *INIT, "fleet", cwd=tmp_path)
    assert done.returncode == -signal.SIGXFSZ
    assert not (tmp_path / "fleet").exists()
    (left,) = leftovers(tmp_path)
    assert (tmp_path / left / "ca-key.pem").is_file()  # killed part-way, after the CA
    assert ctl.main([*INIT, str(tmp_path / "fleet")]) == ctl.EXIT_OK
    err = capsys.readouterr().err
    assert f"removed {tmp_path / left}: the unfinished work of an interrupted run" in err
    assert leftovers(tmp_path) == []
    assert provision.Fleet.load(tmp_path / "fleet").ca_key_file.is_file()


def test_a_full_disk_keeps_nothing_and_the_same_command_completes_once_there_is_room(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    # a few pages: the CA and some broker files fit, the rest of the fleet does not
    with small_tmpfs(disk, "size=16k"):
        assert ctl.main([*INIT, str(disk / "fleet")]) == ctl.EXIT_FILE
        err = capsys.readouterr().err
        assert "No space left on device; nothing was kept" in err and "Traceback" not in err
        assert os.listdir(disk) == []
        subprocess.run(["mount", "-o", "remount,size=1m", str(disk)], check=True, timeout=10)
        assert ctl.main([*INIT, str(disk / "fleet")]) == ctl.EXIT_OK
        assert provision.Fleet.load(disk / "fleet").name == "fleet"


@pytest.fixture
def held_staging(tmp_path: Path) -> Iterator[Path]:
    """A staging directory of "another run" that holds its lock (a real flock)."""
    other = tmp_path / f".fleet{STAGING_INFIX}other"
    other.mkdir()
    (other / "ca-key.pem").write_bytes(b"another run's key")
    fd = os.open(other, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield other
    finally:
        os.close(fd)


def test_a_run_under_way_is_left_alone(
    tmp_path: Path, held_staging: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ctl.main([*INIT, str(tmp_path / "fleet")]) == ctl.EXIT_CONFIG
    err = capsys.readouterr().err
    assert "another lockerctl is creating" in err and held_staging.name in err
    assert (held_staging / "ca-key.pem").read_bytes() == b"another run's key"
    assert not (tmp_path / "fleet").exists()


@pytest.mark.parametrize("existing", ["fleet.toml", "ca-key.pem", "notes.txt"])
def test_existing_files_are_never_overwritten(
    tmp_path: Path, existing: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "fleet").mkdir()
    (tmp_path / "fleet" / existing).write_bytes(b"keep me")
    assert ctl.main([*INIT, str(tmp_path / "fleet")]) != ctl.EXIT_OK
    assert "refusing" in capsys.readouterr().err
    assert os.listdir(tmp_path / "fleet") == [existing]
    assert (tmp_path / "fleet" / existing).read_bytes() == b"keep me"
    assert leftovers(tmp_path) == []


def test_an_empty_directory_becomes_the_fleet_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fleet init .`` in an empty directory (renaming over it would fail, EBUSY, or leave
    the shell in a deleted directory): built inside it and moved up, the directory kept."""
    (tmp_path / "fleet").mkdir()
    inode = (tmp_path / "fleet").stat().st_ino
    monkeypatch.chdir(tmp_path / "fleet")
    assert ctl.main([*INIT, "."]) == ctl.EXIT_OK
    assert (tmp_path / "fleet").stat().st_ino == inode
    assert sorted(os.listdir(tmp_path / "fleet")) == sorted(
        ["broker", "ca-key.pem", "ca.pem", "clients", "crl.pem", "fleet.toml", "keys", "lockers"]
    )
    conf = (tmp_path / "fleet" / "broker" / "mosquitto.conf").read_text()
    # the broker's files are named where they end up, not where they were built
    assert f"certfile {(tmp_path / 'fleet').resolve()}/broker/server.pem" in conf
    assert STAGING_INFIX not in conf


@pytest.mark.parametrize("how", ["refuse", "kill"])
def test_a_failed_init_into_an_empty_directory_leaves_it_empty(
    tmp_path: Path, server_pem_limit: int, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "fleet"
    target.mkdir()
    done = limited(server_pem_limit, how, *INIT, "fleet", cwd=tmp_path)
    if how == "refuse":
        assert done.returncode == ctl.EXIT_FILE, done.stderr
        assert "nothing was kept: fleet is as it was" in done.stderr
        assert os.listdir(target) == []
    else:
        assert done.returncode == -signal.SIGXFSZ
        assert len(leftovers(target)) == 1 and len(os.listdir(target)) == 1
    assert ctl.main([*INIT, str(target)]) == ctl.EXIT_OK
    assert ("removed" in capsys.readouterr().err) == (how == "kill")
    assert leftovers(target) == [] and provision.Fleet.load(target).name == "fleet"


def test_a_run_killed_while_moving_into_place_is_undone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a run killed between two of its final renames leaves: some entries moved into
    the target, the rest and ``.moving`` (their order, fleet.toml last) in its staging
    directory. The next run takes back exactly what it had moved, and builds anew."""
    made = tmp_path / "made"
    provision.provision_fleet(made, "fleet", "broker.test")
    target = tmp_path / "fleet"
    staging = target / f".fleet{STAGING_INFIX}killed"
    staging.mkdir(parents=True)
    names = sorted(os.listdir(made), key=lambda n: (n == "fleet.toml", n))
    (staging / ".moving").write_text("".join(f"{n}\n" for n in names))
    for i, name in enumerate(names):
        (made / name).rename((target if i < 2 else staging) / name)  # killed after two
    old_key = (target / "ca-key.pem").read_bytes()
    assert ctl.main([*INIT, str(target)]) == ctl.EXIT_OK
    err = capsys.readouterr().err
    assert f"and {names[0]}, {names[1]} it had moved into {target}" in err
    assert leftovers(target) == []
    assert (target / "ca-key.pem").read_bytes() != old_key  # a new CA, not the leftover's
    assert provision.Fleet.load(target).broker_host == HOST


# --- locker add -------------------------------------------------------------------------------


@pytest.fixture
def fleet_dir(tmp_path: Path) -> Path:
    provision.provision_fleet(tmp_path / "fleet", "demo", "broker.test")
    return tmp_path / "fleet"


def _add(fleet_dir: Path) -> list[str]:
    return ["locker", "add", str(fleet_dir), "LKR-1", "--compartments", "A1:S:17:27"]


@pytest.mark.parametrize("how", ["refuse", "kill"])
def test_a_locker_add_that_fails_part_way_leaves_no_locker(
    fleet_dir: Path, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same kind of fault in ``locker add``: its config is the largest file it writes."""
    assert ctl.main(_add(fleet_dir)) == ctl.EXIT_OK
    sizes = {p.name: p.stat().st_size for p in (fleet_dir / "lockers" / "LKR-1").iterdir()}
    assert ctl.main(["locker", "remove", str(fleet_dir), "LKR-1"]) == ctl.EXIT_OK
    largest = sizes.pop("locker.toml")
    limit = (max(sizes.values()) + largest) // 2
    assert max(sizes.values()) < limit < largest
    done = limited(limit, how, *_add(fleet_dir), cwd=fleet_dir)
    lockers = fleet_dir / "lockers"
    if how == "refuse":
        assert done.returncode == ctl.EXIT_FILE, done.stderr
        assert f"cannot write {lockers / 'LKR-1' / 'locker.toml'}: File too large" in done.stderr
        assert leftovers(lockers) == []
    else:
        assert done.returncode == -signal.SIGXFSZ
        assert len(leftovers(lockers)) == 1
    assert not (lockers / "LKR-1").exists()
    assert provision.Fleet.load(fleet_dir).lockers() == []  # a leftover is not a locker
    capsys.readouterr()
    assert ctl.main(_add(fleet_dir)) == ctl.EXIT_OK
    assert ("removed" in capsys.readouterr().err) == (how == "kill")
    assert provision.Fleet.load(fleet_dir).lockers() == ["LKR-1"]
    assert leftovers(lockers) == []
