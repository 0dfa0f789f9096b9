"""lockerctl on bad input: one line naming the problem and a documented exit status, never a
traceback (70), a hang or a silent success.

Each failing input a break-test found is here as given, with others of the same kind beside
it. ``lockerctl``'s ``main`` runs in-process, as in ``test_ctl``; serve runs against a real
SQLite file, a real closed PostgreSQL port and real sockets.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from locker.fleet import client as fleet
from locker.fleet import ctl, provision
from locker.fleet.service import actions as service_actions
from tests.conftest import wait_for
from tests.test_ctl import MOSQUITTO, _listening, free_port, run, set_code_length

L1 = "LKR-1"
L2 = "LKR-2"


@pytest.fixture
def fl5(tmp_path: Path) -> Path:
    """A fleet (no broker running) with two lockers, LKR-1 and LKR-2, both of default config."""
    d = tmp_path / "fl5"
    assert run("fleet", "init", str(d), "--broker-host", "localhost")[0] == ctl.EXIT_OK
    for locker in (L1, L2):
        code, _ = run("locker", "add", str(d), locker, "--compartments", "A1:S:17:27")
        assert code == ctl.EXIT_OK
    return d


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    """stderr of the last run: exactly one ``lockerctl...: error:`` line and no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1, err
    return errors[0]


# --- paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["/proc/x", "afile/x", "/proc/x/deeper"])
def test_fleet_init_on_an_unusable_path_is_a_file_error(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a directory")
    assert ctl.main(["fleet", "init", where, "--broker-host", "h"]) == ctl.EXIT_FILE
    line = one_line_error(capsys)
    assert repr(where.split("/deeper", maxsplit=1)[0]) in line or where in line, line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_fleet_init_in_a_read_only_directory_is_a_file_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    assert ctl.main(["fleet", "init", str(ro / "x"), "--broker-host", "h"]) == ctl.EXIT_FILE
    assert "Permission denied" in one_line_error(capsys)


def test_watch_with_an_unusable_log_dir_is_a_file_error(
    fl5: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = ctl.main(["watch", "--fleet", str(fl5), "--log-dir", "/proc/nope", "--json"])
    assert code == ctl.EXIT_FILE
    out = capsys.readouterr()
    assert json.loads(out.out)["error"]["kind"] == "file"
    assert "/proc/nope" in out.err and "Traceback" not in out.err


# --- text that is not UTF-8 ------------------------------------------------------------------

UNDECODABLE = os.fsdecode(b"\xff\xfe")  # what Python makes of the bytes in argv (PEP 383)


@pytest.mark.parametrize(
    "argv",
    [
        ["fleet", "init", "fl4", "--broker-host", "h", "--name", UNDECODABLE],
        ["fleet", "init", "fl4", "--broker-host", UNDECODABLE],
        ["fleet", "init", "fl4" + UNDECODABLE, "--broker-host", "h"],
        ["locker", "add", "fl4", "L" + UNDECODABLE, "--compartments", "A1:S:17:27"],
    ],
)
def test_arguments_that_are_not_utf8_are_usage_errors(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert ctl.main(argv) == ctl.EXIT_USAGE
    err = capsys.readouterr().err
    assert "not valid UTF-8" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_undecodable_bytes_from_a_real_command_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "locker.fleet.ctl", "fleet", "init", "fl4", "--broker-host", "h",
         "--name", b"\xff\xfe"],
        cwd=tmp_path, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == ctl.EXIT_USAGE, done.stderr
    assert b"argument --name: not valid UTF-8" in done.stderr
    assert not (tmp_path / "fl4").exists()


# --- numbers ----------------------------------------------------------------------------------

SEND = ["cmd", "send", "--locker", L2, "open", "--arg", "compartment=A1", "--arg", "reason=x"]
ISSUE = ["parcel", "issue", "--locker", L1, "--parcel", "P-1", "--size", "S"]
MINT = ["token", "mint", "--locker", L1, "--parcel", "P-1"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "0", "1e300", "x"])
@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (SEND, "--timeout"),
        (ISSUE, "--timeout"),
        (["watch"], "--timeout"),
        (["watch"], "--duration"),
        (MINT, "--hours"),
        (ISSUE, "--dropoff-hours"),
        (ISSUE, "--pickup-hours"),
        (SEND, "--ttl"),
    ],
)
def test_meaningless_numbers_are_refused_before_anything_happens(
    fl5: Path, argv: list[str], option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """NaN made ``cmd send`` wait forever, infinity overflowed a timestamp, 0 and -1 hung or
    failed later with a misleading message: every one is now a usage error naming the option.
    The broker is a closed port, so anything that got as far as connecting would say so."""
    started = time.monotonic()
    full = [*argv, "--fleet", str(fl5), option, value]
    full += [] if argv[0] == "token" else ["--broker", f"127.0.0.1:{free_port()}"]
    code = ctl.main(full)
    assert code == ctl.EXIT_USAGE, capsys.readouterr().err
    line = one_line_error(capsys)
    assert f"argument {option}:" in line, line
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("argv", "option", "value"),
    [
        (["fleet", "init", "x", "--broker-host", "h"], "--broker-port", "0"),
        (["fleet", "init", "x", "--broker-host", "h"], "--broker-port", "65536"),
        (["fleet", "init", "x", "--broker-host", "h"], "--token-kid", "256"),
        (["locker", "renew", "FLEET", L1], "--days", "0"),
        (["locker", "renew", "FLEET", L1], "--days", "99999999999999999999"),
        (MINT, "--not-before", "-1"),
        (MINT, "--not-before", str(2**32)),
        (["code", "new", "--locker", L1], "--digits", "3"),
        (["code", "new", "--locker", L1], "--digits", "nan"),
        (["cmd", "send", "--locker", L1, "resync"], "--broker", "h:99999"),
        (["cmd", "send", "--locker", L1, "resync"], "--broker", "h:²"),
    ],
)
def test_integers_out_of_range_are_usage_errors(
    fl5: Path, argv: list[str], option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(fl5) if a == "FLEET" else a for a in argv]
    fleet_opt = [] if argv[0] in ("fleet", "locker") else ["--fleet", str(fl5)]
    assert ctl.main([*argv, *fleet_opt, option, value]) == ctl.EXIT_USAGE
    assert f"argument {option}:" in one_line_error(capsys)


def test_the_client_library_refuses_meaningless_timeouts() -> None:
    client = fleet.FleetClient("127.0.0.1", free_port(), client_id="x", tls=None)
    for bad in (float("nan"), float("inf"), 0, -1):
        with pytest.raises(fleet.FleetError, match="positive number of seconds"):
            client.connect(timeout=bad)
        with pytest.raises(fleet.FleetError, match="positive number of seconds"):
            client.send_signed(L1, b"x", timeout=bad)


# --- the fleet service ------------------------------------------------------------------------


def _serve(fl5: Path, *extra: str) -> int:
    return ctl.main(["serve", "--fleet", str(fl5), "--no-tls", *extra])


def test_serve_with_a_database_that_cannot_be_opened(
    fl5: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _serve(fl5, "--db", "sqlite:////nonexistent/dir/x.db") == ctl.EXIT_FILE
    line = one_line_error(capsys)
    assert "sqlite:////nonexistent/dir/x.db" in line and "unable to open" in line, line


def test_serve_with_a_database_server_that_cannot_be_reached(
    fl5: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"postgresql+psycopg://nobody:s3cret@127.0.0.1:{free_port()}/x"
    assert _serve(fl5, "--db", url) == ctl.EXIT_UNAVAILABLE
    line = one_line_error(capsys)
    assert "Connection refused" in line and "s3cret" not in line, line


def test_serve_on_an_address_in_use_says_so(fl5: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert _serve(fl5, "--http", f"127.0.0.1:{port}") == ctl.EXIT_UNAVAILABLE
    line = one_line_error(capsys)
    assert f"cannot listen on 127.0.0.1:{port}" in line and "Address already in use" in line


def test_serve_on_a_host_that_does_not_resolve_says_so(
    fl5: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _serve(fl5, "--http", "999.0.0.1:80") == ctl.EXIT_UNAVAILABLE
    line = one_line_error(capsys)
    assert "cannot listen on 999.0.0.1:80" in line and "did not start" not in line, line
    try:
        socket.getaddrinfo("999.0.0.1", 80)
    except socket.gaierror as err:
        assert str(err.strerror) in line  # the resolver's own words ("Name or service not known")


# --- code length --------------------------------------------------------------------------------


def _codes(fl5: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    code, text = run("code", "new", "--fleet", str(fl5), "--locker", L1, *extra, "--json")
    return code, json.loads(text)


def test_codes_follow_the_lockers_code_length(
    fl5: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, doc = _codes(fl5)
    assert code == ctl.EXIT_OK and len(doc["code"]) == 8  # lockerd's default
    assert _codes(fl5, "--digits", "8")[0] == ctl.EXIT_OK
    code, doc = _codes(fl5, "--digits", "6")
    assert code == ctl.EXIT_USAGE
    assert "exactly 8 digits" in doc["error"]["message"]
    assert "security.code_length" in doc["error"]["message"]
    set_code_length(fl5 / "lockers" / L1 / "locker.toml", 12)
    assert provision.Fleet.load(fl5).code_length(L1).digits == 12
    code, doc = _codes(fl5)
    assert code == ctl.EXIT_OK and len(doc["code"]) == 12
    assert _codes(fl5, "--digits", "8")[0] == ctl.EXIT_USAGE
    # 4 was legal for lockerd and too short for lockerctl: now lockerd refuses the file too
    set_code_length(fl5 / "lockers" / L1 / "locker.toml", 4)
    length = provision.Fleet.load(fl5).code_length(L1)
    assert not length.known and "security.code_length: must be at least 6" in length.source
    capsys.readouterr()
    assert ctl.main(["code", "new", "--fleet", str(fl5), "--locker", L1, "--digits", "4"]) != 0
    assert "--digits: must be 6-16 digits, got '4'" in capsys.readouterr().err


@pytest.mark.timeout(30)
def test_parcel_issue_refuses_a_length_the_locker_would_refuse(
    fl5: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The break-test's input: exit 0 and a 6-digit code LKR-1 refused as ``malformed``. Now
    refused before connecting (the broker is a closed port: connecting would be status 3)."""
    argv = ["parcel", "issue", "--fleet", str(fl5), "--locker", L1, "--parcel", "DIG-6"]
    argv += ["--size", "S", "--digits", "6", "--broker", f"127.0.0.1:{free_port()}"]
    assert ctl.main(argv) == ctl.EXIT_USAGE
    assert "takes codes of exactly 8 digits" in one_line_error(capsys)


def test_an_unreadable_locker_config_falls_back_to_the_default_and_says_so(
    fl5: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (fl5 / "lockers" / L1 / "locker.toml").write_text("[security\n")
    length = provision.Fleet.load(fl5).code_length(L1)
    assert (length.digits, length.known) == (8, False)
    code, doc = _codes(fl5)
    assert code == ctl.EXIT_OK and len(doc["code"]) == 8
    assert "code length of locker LKR-1 is unknown" in capsys.readouterr().err
    code, doc = _codes(fl5, "--digits", "10")
    assert code == ctl.EXIT_USAGE and "lockerd's default" in doc["error"]["message"]


# --- parcel ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize("parcel", ["P 1/..", "../x", "", "P\n1", "-P", "x" * 129])
def test_parcel_ids_follow_the_rule_of_the_api(
    fl5: Path, parcel: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not service_actions.PARCEL_RE.fullmatch(parcel)  # the API refuses it...
    assert service_actions.PARCEL_RE is fleet.PARCEL_ID_RE  # ...by the same rule
    mint = ["token", "mint", "--fleet", str(fl5), "--locker", L1, f"--parcel={parcel}"]
    assert ctl.main(mint) == ctl.EXIT_USAGE
    assert "bad parcel id" in one_line_error(capsys)
    issue = ["parcel", "issue", "--fleet", str(fl5), "--locker", L1, f"--parcel={parcel}"]
    assert ctl.main([*issue, "--size", "S", "--broker", f"127.0.0.1:{free_port()}"]) == 2
    assert "bad parcel id" in one_line_error(capsys)
    with pytest.raises(fleet.FleetError, match="bad parcel id"):
        fleet.assign_args(parcel, "delivery", "S", dropoff_tag="a" * 64, pickup_tag="b" * 64,
                          dropoff_until=0, pickup_hours=1)  # fmt: skip


# --- locker specs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--keypad", "serial:/dev/ttyX@abc"], "bad baud rate 'abc'"),
        (["--scanner", "/dev/x@-5"], "bad baud rate '-5'"),
        (["--scanner", "/dev/x@9601"], "bad baud rate '9601'"),
        (["--keypad", "serial:@9600"], "the port is missing"),
        (["--compartments", "B1:S:99999999999999999999:22"], "BCM GPIO numbers are 0-27"),
        (["--compartments", "B1:S:17:2²"], "the last field must be a number"),
        (["--keypad", "matrix:5,6,13,19:1²,2,3"], "expected serial:PORT"),
    ],
)
def test_bad_locker_specs_are_usage_errors_and_write_nothing(
    fl5: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["locker", "add", str(fl5), "L6", "--compartments", "A1:S:17:27", *extra]
    assert ctl.main(argv) == ctl.EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "GPIOa" not in err, err
    assert not (fl5 / "lockers" / "L6").exists()


def test_a_standard_baud_rate_is_written(fl5: Path) -> None:
    argv = ["locker", "add", str(fl5), "L6", "--compartments", "A1:S:17:27"]
    assert run(*argv, "--keypad", "serial:/dev/ttyX@19200")[0] == ctl.EXIT_OK
    text = (fl5 / "lockers" / "L6" / "locker.toml").read_text()
    assert 'port = "/dev/ttyX"' in text and "baudrate = 19200" in text


# --- exit statuses ------------------------------------------------------------------------------


def test_statuses_follow_the_table(
    fl5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for sub in ("remove", "renew", "revoke"):
        assert ctl.main(["locker", sub, str(fl5), "NOPE"]) == ctl.EXIT_NOT_FOUND  # as code new
    assert ctl.main(["code", "new", "--fleet", str(fl5), "--locker", "NOPE"]) == 6
    bad_id = ["locker", "add", str(fl5), "bad id", "--compartments", "A1:S:17:27"]
    assert ctl.main(bad_id) == ctl.EXIT_USAGE  # as a bad user name
    assert ctl.main(["user", "add", "bad name", "--role", "viewer", "--fleet", str(fl5)]) == 2
    nowhere = str(tmp_path / "nonexistent")
    assert ctl.main(["user", "add", "ann", "--role", "viewer", "--fleet", nowhere]) == 5
    assert ctl.main(["serve", "--fleet", nowhere]) == ctl.EXIT_CONFIG  # as every other command
    assert ctl.main(["locker", "list", nowhere]) == ctl.EXIT_CONFIG
    assert "Traceback" not in capsys.readouterr().err


# --- the broker certificate -------------------------------------------------------------------


def test_an_ip_broker_host_goes_into_an_ip_san(tmp_path: Path) -> None:
    d = tmp_path / "fl"
    argv = ["fleet", "init", str(d), "--broker-host", "127.0.0.1", "--broker-ip", "::1"]
    assert run(*argv)[0] == ctl.EXIT_OK
    cert = x509.load_pem_x509_certificate((d / "broker" / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert san.get_values_for_type(x509.DNSName) == []


@pytest.mark.broker
@pytest.mark.timeout(60)
def test_clients_verify_a_broker_named_by_its_ip(tmp_path: Path) -> None:
    """The break-test's fleet: ``--broker-host 127.0.0.1`` and no ``--broker-ip``. Every
    client failed with "IP address mismatch"; now the server identity and a locker connect."""
    d = tmp_path / "fl"
    argv = ["fleet", "init", str(d), "--broker-host", "127.0.0.1"]
    argv += ["--broker-port", str(free_port()), "--broker-bind", "127.0.0.1"]
    argv += ["--run-as-root"] if os.geteuid() == 0 else []
    assert run(*argv)[0] == ctl.EXIT_OK
    assert run("locker", "add", str(d), L1, "--compartments", "A1:S:17:27")[0] == ctl.EXIT_OK
    f = provision.Fleet.load(d)
    log = (d / "broker.log").open("wb")
    proc = subprocess.Popen(
        [MOSQUITTO, "-c", str(d / "broker" / "mosquitto.conf")], stdout=log, stderr=log
    )
    try:
        wait_for(lambda: _listening(f.broker_port) or proc.poll() is not None, 10, what="broker")
        assert proc.poll() is None, (d / "broker.log").read_text()
        with fleet.FleetClient.for_fleet(f, provision.BACKEND_USER) as server:
            server.connect(timeout=10)
            assert server.connected
        ld = f.locker_dir(L1)
        tls = fleet.TlsFiles(ld / "ca.pem", ld / "device.pem", ld / "device-key.pem")
        with fleet.FleetClient("127.0.0.1", f.broker_port, client_id=L1, tls=tls) as locker:
            locker.connect(timeout=10)
            assert locker.connected
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
