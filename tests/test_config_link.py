"""What ``lockerd --check-config`` and lockerd's start say about the link's settings: the TLS
files as the link loads them, ``locker.id`` against the certificate's CN, the state
directory, and relations between keys (break-test reports: each passed the check as "OK").

Real files: certificates made by ``locker.fleet.provision`` (``locker.sim.broker.Pki``), and
``lockerd`` started as a child process where the exit status and its output are the point.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from locker.cabinet.config import EXIT_CONFIG, check_config_cli
from locker.cabinet.linkwire import tls_context
from locker.config import ConfigError, load_config
from locker.errors import ConfigError as AnyConfigError
from locker.sim.broker import Pki

CONFIG = """\
[locker]
id = "{locker_id}"
state_dir = "{state}"

[mqtt]
host = "127.0.0.1"
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{key}"
{mqtt}
[security]
device_key_file = "device.key"

[timing]
{timing}
[gpio]
pin_factory = "mock"

[scanner]
port = "loop://"

[[compartments]]
id = "A1"
size = "S"
lock_pin = 17
door_pin = 27
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    pki = Pki(tmp_path_factory.mktemp("pki"))
    pki.client("LKR-0001")
    return pki


def write(tmp_path: Path, pki: Pki, **values: str) -> Path:
    (tmp_path / "device.key").write_bytes(os.urandom(32))
    me = pki.client("LKR-0001")
    fields = {
        "locker_id": "LKR-0001",
        "state": str(tmp_path / "state"),
        "ca": pki.ca_file,
        "cert": me.cert_file,
        "key": me.key_file,
        "mqtt": "",
        "timing": "",
        **values,
    }
    path = tmp_path / "locker.toml"
    path.write_text(CONFIG.format(**fields))
    return path


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = check_config_cli(path)
    out, err = capsys.readouterr()
    return status, out, err


def lockerd(path: Path) -> subprocess.CompletedProcess[str]:
    """A real lockerd child on ``path``: it must stop at once (nothing to wait for)."""
    return subprocess.run(
        [sys.executable, "-m", "locker.cabinet.daemon", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_good_file_is_ok(tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = check(write(tmp_path, pki), capsys)
    assert (status, err) == (0, "") and out.startswith("OK: ")


def test_a_locker_id_that_is_not_the_certificate_cn_is_refused(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    """The break-test's input: LKR-0002 with LKR-0001's certificate passed as OK, then the
    broker refused every publish (a storm of hardware_fault events)."""
    path = write(tmp_path, pki, locker_id="LKR-0002")
    status, out, err = check(path, capsys)
    assert status == EXIT_CONFIG and not out
    assert err.startswith(f"{path}: locker.id: 'LKR-0002' is not the CN of the client ")
    assert "mqtt.cert_file" in err and "CN 'LKR-0001'" in err
    run = lockerd(path)
    assert run.returncode == EXIT_CONFIG, run.stderr
    assert "locker.id: 'LKR-0002'" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "state").exists()  # stopped before touching anything


@pytest.mark.parametrize(
    ("swap", "options", "words"),
    [
        ("cert=ca", "mqtt.cert_file, mqtt.key_file", "is not the key of the certificate"),
        ("key=cert", "mqtt.key_file", "is not a PEM private key (it holds a certificate)"),
        ("cert=key", "mqtt.cert_file", "is not a PEM certificate (it holds a private key)"),
        ("ca=cert", "mqtt.ca_file", "is not a CA certificate"),
        ("ca=key", "mqtt.ca_file", "is not a PEM certificate (it holds a private key)"),
        ("key=other", "mqtt.cert_file, mqtt.key_file", "is not the key of the certificate"),
        ("key=garbage", "mqtt.key_file", "is not a PEM private key;"),
    ],
)
def test_tls_files_the_link_cannot_load_are_named_at_check_and_at_start(
    tmp_path: Path,
    pki: Pki,
    capsys: pytest.CaptureFixture[str],
    swap: str,
    options: str,
    words: str,
) -> None:
    """The break-test's input: cert_file = the CA's pem, or key_file pointing at a
    certificate, passed as OK; lockerd then died with ssl.SSLError (KEY_VALUES_MISMATCH, PEM
    lib) and exit 1, which systemd restarts every 5 s. Now: named at --check-config, and
    lockerd exits 78 (RestartPreventExitStatus) with the same line, no traceback."""
    me, other = pki.client("LKR-0001"), pki.client("LKR-0009")
    (tmp_path / "garbage.pem").write_text("not pem at all\n")
    files = {
        "ca": pki.ca_file,
        "cert": me.cert_file,
        "key": me.key_file,
        "other": other.key_file,
        "garbage": str(tmp_path / "garbage.pem"),
    }
    target, source = swap.split("=")
    path = write(tmp_path, pki, **{target: files[source]})
    status, out, err = check(path, capsys)
    assert status == EXIT_CONFIG and not out, err
    assert err.startswith(f"{path}: {options}: ") and words in err, err
    run = lockerd(path)
    assert run.returncode == EXIT_CONFIG, run.stderr
    assert words in run.stderr and "Traceback" not in run.stderr
    # The link's own context says the same (a file changed after the check): one
    # ConfigError naming the options, never a bare ssl.SSLError.
    cfg = load_config(path)
    assert cfg.mqtt is not None
    if "ca_file" not in options:
        with pytest.raises(AnyConfigError, match=options.rsplit(",", maxsplit=1)[-1].strip()):
            tls_context(str(cfg.mqtt.ca_file), str(cfg.mqtt.cert_file), str(cfg.mqtt.key_file))


def test_an_encrypted_key_is_named_and_never_prompts(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    key = serialization.load_pem_private_key(
        Path(pki.client("LKR-0001").key_file).read_bytes(), None
    )
    locked = tmp_path / "locked.key"
    locked.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    path = write(tmp_path, pki, key=str(locked))
    status, _, err = check(path, capsys)
    assert status == EXIT_CONFIG and "mqtt.key_file: " in err and "is encrypted" in err
    with pytest.raises(AnyConfigError, match="is encrypted"):
        tls_context(pki.ca_file, pki.client("LKR-0001").cert_file, str(locked))


@pytest.mark.parametrize("where", ["file", "under_file", "proc"])
def test_a_state_dir_that_cannot_be_one_is_refused(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    """The break-test's input: state_dir an existing regular file, or under /proc, passed as
    OK; lockerd then exited 74 at start."""
    regular = tmp_path / "afile"
    regular.write_text("x")
    state = {"file": regular, "under_file": regular / "sub", "proc": Path("/proc/locker")}[where]
    path = write(tmp_path, pki, state=str(state))
    status, out, err = check(path, capsys)
    assert status == EXIT_CONFIG and not out
    assert err.startswith(f"{path}: locker.state_dir: {state} "), err
    reason = "file system, which cannot keep a database" if where == "proc" else "not a directory"
    assert reason in err
    run = lockerd(path)
    assert run.returncode == EXIT_CONFIG and "locker.state_dir" in run.stderr


def test_reconnect_bounds_the_wrong_way_round_are_refused_naming_both(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, pki, mqtt="reconnect_min_s = 50\nreconnect_max_s = 10\n")
    status, _, err = check(path, capsys)
    assert status == EXIT_CONFIG
    assert err.strip() == (
        f"{path}: mqtt.reconnect_max_s: mqtt.reconnect_max_s (10 s) is below "
        "mqtt.reconnect_min_s (50 s): the reconnect back-off grows from reconnect_min_s up "
        "to reconnect_max_s"
    )
    # Only the maximum given, below the default minimum (1 s): both named all the same.
    path = write(tmp_path, pki, mqtt="reconnect_max_s = 0.5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (
        "mqtt.reconnect_max_s: mqtt.reconnect_max_s (0.5 s) is below mqtt.reconnect_min_s (1 s)"
        in str(info.value)
    )


def test_a_session_expiry_of_zero_is_refused_with_the_reason(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, pki, mqtt="session_expiry_s = 0\n")
    status, _, err = check(path, capsys)
    assert status == EXIT_CONFIG
    assert err.startswith(f"{path}: mqtt.session_expiry_s: 0 ends the broker's session")
    assert "commands queued while the locker is offline are then lost" in err
    path = write(tmp_path, pki, mqtt="session_expiry_s = 60\nwill_delay_s = 120\n")
    status, out, err = check(path, capsys)
    assert status == 0 and out.startswith("OK: ")
    assert "warning: mqtt.session_expiry_s = 60: the broker forgets" in err
    assert "warning: mqtt.will_delay_s (120 s) is above mqtt.session_expiry_s (60 s)" in err


def test_door_left_open_below_door_open_timeout_is_warned_naming_both(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, pki, timing="door_left_open_s = 1\n")
    status, out, err = check(path, capsys)
    assert status == 0 and out.startswith("OK: ")
    assert err.strip() == (
        f"{path}: warning: timing.door_left_open_s (1 s) is below timing.door_open_timeout_s "
        "(10 s): a person given that long to open a door gets less to put a parcel in and "
        "shut it before door_left_open is raised (and raised again at that interval)"
    )
