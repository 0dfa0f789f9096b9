"""Provisioning: certificates, keys, broker configuration and per-locker configuration."""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from locker.cabinet import config as cabinet_config
from locker.cabinet.config import load_config
from locker.contract import credentials
from locker.fleet import provision
from locker.fleet.provision import BoardSpec, CompartmentSpec, ProvisionError

COMPARTMENTS = [CompartmentSpec.parse("A1:S:17:27"), CompartmentSpec.parse("B1:m:b0:1")]
BOARDS = [BoardSpec.parse("b0=loop://@0")]
SCANNER = provision.ScannerSpec.parse("loop://")


@pytest.fixture(scope="module")
def ca() -> provision.PemPair:
    return provision.make_ca("Test CA")


@pytest.fixture
def fleet_dir(tmp_path: Path) -> Path:
    provision.provision_fleet(tmp_path / "fleet", "demo", "broker.test", broker_ips=["127.0.0.1"])
    return tmp_path / "fleet"


def cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


# --- certificates --------------------------------------------------------------------------------


def test_ca_is_a_p256_ca(ca: provision.PemPair) -> None:
    cert = ca.cert
    assert cn(cert) == "Test CA"
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    key = ca.private_key()
    assert isinstance(key.curve, ec.SECP256R1)


def test_server_cert_chains_to_the_ca_for_its_names(ca: provision.PemPair) -> None:
    server = provision.make_server_cert(ca, ["localhost", "broker.test"], ["127.0.0.1"])
    cert = server.cert
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "broker.test"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    store = Store([ca.cert])
    for name in (x509.DNSName("broker.test"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))):
        chain = PolicyBuilder().store(store).build_server_verifier(name).verify(cert, [])
        assert chain[-1] == ca.cert
    with pytest.raises(VerificationError):
        PolicyBuilder().store(store).build_server_verifier(x509.DNSName("evil.test")).verify(
            cert, []
        )


def test_a_host_name_longer_than_a_cn_can_hold_still_gets_its_certificate(
    ca: provision.PemPair,
) -> None:
    """lockerd accepts a broker host of up to 253 characters; a CN holds 64. fleet init crashed
    (ValueError, status 70) after writing the CA; the name is in the SAN, which is checked."""
    host = ".".join(["b" * 60] * 3) + ".example"
    cert = provision.make_server_cert(ca, [host]).cert
    assert cn(cert) == "MQTT broker"
    verifier = PolicyBuilder().store(Store([ca.cert])).build_server_verifier(x509.DNSName(host))
    assert verifier.verify(cert, [])[-1] == ca.cert


def test_client_cert_has_the_locker_id_as_cn_and_client_auth(ca: provision.PemPair) -> None:
    client = provision.make_client_cert(ca, "LKR-0001")
    cert = client.cert
    assert cn(cert) == "LKR-0001"
    assert eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    verified = PolicyBuilder().store(Store([ca.cert])).build_client_verifier().verify(cert, [])
    assert verified.chain[-1] == ca.cert
    other_ca = provision.make_ca("Other CA")
    with pytest.raises(VerificationError):
        PolicyBuilder().store(Store([other_ca.cert])).build_client_verifier().verify(cert, [])


@pytest.mark.parametrize("bad", ["", "a/b", "lockers/+", "#", "x" * 65, "-lead", "sp ace"])
def test_client_cert_refuses_ids_that_are_not_one_topic_level(
    ca: provision.PemPair, bad: str
) -> None:
    with pytest.raises(ProvisionError):
        provision.make_client_cert(ca, bad)


def test_server_cert_needs_a_name_and_valid_ips(ca: provision.PemPair) -> None:
    with pytest.raises(ProvisionError):
        provision.make_server_cert(ca, [])
    with pytest.raises(ProvisionError):
        provision.make_server_cert(ca, ["localhost"], ["300.1.1.1"])


def test_pem_pair_write_sets_modes(tmp_path: Path, ca: provision.PemPair) -> None:
    ca.write(tmp_path / "k.pem", tmp_path / "c.pem")
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "c.pem").stat().st_mode) == 0o644
    assert provision.PemPair.load(tmp_path / "k.pem", tmp_path / "c.pem") == ca


# --- keys ----------------------------------------------------------------------------------------


def test_public_key_encoding_round_trips() -> None:
    key = provision.generate_signing_key()
    text = provision.encode_public_key(key)
    assert len(text) == 44 and text.endswith("=")
    assert provision.encode_public_key(provision.decode_public_key(text)) == text
    assert provision.encode_public_key(key.public_key()) == text


@pytest.mark.parametrize("bad", ["", "not base64!", "AAAA", "A" * 43, "AAEC" * 11 + "AA=="])
def test_bad_public_keys_are_refused(bad: str) -> None:
    with pytest.raises(ProvisionError):
        provision.decode_public_key(bad)


def test_device_key_file(tmp_path: Path) -> None:
    key = provision.write_device_key(tmp_path / "device.key")
    assert len(key) == 32 and (tmp_path / "device.key").read_bytes() == key
    assert stat.S_IMODE((tmp_path / "device.key").stat().st_mode) == 0o600
    assert provision.generate_device_key() != provision.generate_device_key()
    (tmp_path / "short.key").write_bytes(b"x" * 31)
    with pytest.raises(ProvisionError):
        provision.read_device_key(tmp_path / "short.key")


# --- broker configuration ------------------------------------------------------------------------


def test_mosquitto_conf_for_mutual_tls(tmp_path: Path) -> None:
    conf = provision.render_mosquitto_conf(
        port=8883,
        cafile=tmp_path / "ca.pem",
        certfile=tmp_path / "s.pem",
        keyfile=tmp_path / "s.key",
        persistence_dir=tmp_path / "data",
        acl_file=tmp_path / "acl",
        crlfile=tmp_path / "crl.pem",
        run_as="root",
    )
    lines = conf.splitlines()
    for line in (
        "user root",
        f"crlfile {tmp_path / 'crl.pem'}",
        "allow_anonymous false",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "listener 8883 127.0.0.1",
        f"persistence_location {tmp_path / 'data'}/",
        f"acl_file {tmp_path / 'acl'}",
    ):
        assert line in lines, line
    with pytest.raises(ProvisionError, match="keyfile"):
        provision.render_mosquitto_conf(
            port=1, cafile="a", certfile="b", persistence_dir="d", acl_file="e"
        )
    with pytest.raises(ProvisionError, match="user name"):
        provision.render_mosquitto_conf(port=1, persistence_dir="d", tls=False, run_as="a b")
    plain = provision.render_mosquitto_conf(port=1883, persistence_dir="d", tls=False)
    assert "allow_anonymous true" in plain and "user root" not in plain and "cafile" not in plain


def test_acl_gives_each_identity_only_its_job() -> None:
    acl = provision.render_acl("site/lockers", ["backend"], ["lockerctl"]).splitlines()
    assert (
        acl.index("user backend")
        < acl.index("user lockerctl")
        < acl.index("pattern read site/lockers/%u/cmd")
    )
    reads = [f"topic read site/lockers/+/{t}" for t in ("status", "state", "evt/#", "res")]
    server = acl[acl.index("user backend") + 1 : acl.index("user lockerctl") - 1]
    assert server == [*reads, "topic write site/lockers/+/cmd", "topic write site/lockers/+/ack"]
    operator = acl[acl.index("user lockerctl") + 1 : acl.index("user lockerctl") + 6]
    assert operator == [*reads, "topic write site/lockers/+/cmd"]  # never ack
    assert not any(
        ("readwrite" in line and not line.endswith("/%u/state"))  # a locker reads its own
        or (line.endswith("/#") and "evt" not in line)
        for line in acl
    )
    patterns = {line for line in acl if line.startswith("pattern")}
    assert patterns == {
        "pattern read site/lockers/%u/cmd",
        "pattern read site/lockers/%u/ack",
        "pattern write site/lockers/%u/status",
        "pattern readwrite site/lockers/%u/state",  # compared with the store at connect
        "pattern write site/lockers/%u/evt/#",
        "pattern write site/lockers/%u/res",
    }
    with pytest.raises(ProvisionError):
        provision.render_acl("lockers/#", [])


# --- fleet and lockers ---------------------------------------------------------------------------


def private_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(("-key.pem", ".key"))]


def test_provision_fleet_layout_and_modes(fleet_dir: Path) -> None:
    f = provision.Fleet.load(fleet_dir)
    assert (f.name, f.broker_host, f.broker_port, f.command_kid, f.token_kid) == (
        "demo",
        "broker.test",
        8883,
        "ops1",
        1,
    )
    secrets_ = private_files(fleet_dir)
    assert len(secrets_) == 6  # CA, broker, two server identities, command and token keys
    for path in secrets_:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    ca = x509.load_pem_x509_certificate(f.ca_file.read_bytes())
    for user in provision.SERVER_USERS:
        cert = x509.load_pem_x509_certificate(f.client_cert(user)[0].read_bytes())
        assert cn(cert) == user
        PolicyBuilder().store(Store([ca])).build_client_verifier().verify(cert, [])
    conf = (fleet_dir / "broker" / "mosquitto.conf").read_text()
    assert "require_certificate true" in conf and "listener 8883\n" in conf
    assert "user backend" in (fleet_dir / "broker" / "acl").read_text()
    pub = (fleet_dir / "keys" / "command-ops1.pub").read_text().strip()
    assert provision.encode_public_key(f.command_key()) == pub


def test_provision_fleet_refuses_to_overwrite(fleet_dir: Path) -> None:
    before = (fleet_dir / "ca-key.pem").read_bytes()
    with pytest.raises(ProvisionError, match="already"):
        provision.provision_fleet(fleet_dir, "again", "broker.test")
    assert (fleet_dir / "ca-key.pem").read_bytes() == before


def test_provision_locker_writes_a_config_that_loads(fleet_dir: Path) -> None:
    files = provision.provision_locker(
        fleet_dir, "LKR-0001", COMPARTMENTS, BOARDS, pin_factory="mock"
    )
    for path in (files.key, files.device_key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    assert cn(cert) == "LKR-0001"
    text = files.config.read_text()
    assert "PRIVATE" not in text
    config = load_config(files.config)
    f = provision.Fleet.load(fleet_dir)
    assert config.locker.id == "LKR-0001"
    assert [c.id for c in config.compartments] == ["A1", "B1"]
    assert config.mqtt is not None
    assert config.mqtt.host == "broker.test" and config.mqtt.tls
    assert config.security.command_keys == {"ops1": provision.encode_public_key(f.command_key())}
    assert config.security.read_device_key() == f.device_key("LKR-0001")
    tokens = config.security.token_public_keys()
    assert set(tokens) == {1}
    token = credentials.mint_token(f.token_key(), 1, "LKR-0001", 1, "P-1", 0, 10)
    credentials.parse_and_verify(token, tokens)


def test_install_dir_config_names_the_device_paths(fleet_dir: Path) -> None:
    files = provision.provision_locker(
        fleet_dir, "LKR-0002", COMPARTMENTS[:1], install_dir="/etc/locker/"
    )
    text = files.config.read_text()
    assert 'cert_file = "/etc/locker/device.pem"' in text
    assert 'state_dir = "/var/lib/locker"' in text
    assert str(fleet_dir) not in text


@pytest.mark.parametrize(
    ("locker_id", "compartments", "boards", "match"),
    [
        ("bad/id", COMPARTMENTS[:1], [], "locker id"),
        ("backend", COMPARTMENTS[:1], [], "server identity"),
        ("LKR-9", [], [], "at least one"),
        ("LKR-9", COMPARTMENTS, [], r"no \[\[boards\]\] entry is named"),
        ("LKR-9", [COMPARTMENTS[0], COMPARTMENTS[0]], [], '"A1" is already used by'),
        # Issue 7: each of these was written, then refused by lockerd --check-config.
        ("LKR-9", [CompartmentSpec.parse("A.1:S:17:27")], [], r"compartments\[0\]\.id"),
        ("LKR-9", [CompartmentSpec.parse("A1:S:17:17")], [], "GPIO17 is already used"),
        ("LKR-9", [CompartmentSpec.parse("A1:S:40:27")], [], "GPIO40 does not exist"),
        ("LKR-9", [CompartmentSpec.parse("A1:Q:17:27")], [], "compartments.0..size"),
        ("LKR-9", [CompartmentSpec.parse("a b:S:17:27")], [], "compartments.0..id"),
        ("LKR-9", [CompartmentSpec.parse("A1:S:4:27")], [], "pulled high while the Pi boots"),
    ],
)
def test_provision_locker_refuses_bad_requests(
    fleet_dir: Path,
    locker_id: str,
    compartments: list[CompartmentSpec],
    boards: list[BoardSpec],
    match: str,
) -> None:
    before = sorted(fleet_dir.rglob("*"))
    with pytest.raises(ProvisionError, match=match):
        provision.provision_locker(fleet_dir, locker_id, compartments, boards)
    assert sorted(fleet_dir.rglob("*")) == before  # no file, no key, no certificate


def test_a_refused_spec_can_be_fixed_and_tried_again(fleet_dir: Path) -> None:
    with pytest.raises(ProvisionError, match="nothing was written"):
        provision.provision_locker(fleet_dir, "LKR-1", [CompartmentSpec.parse("A.1:S:17:27")])
    files = provision.provision_locker(
        fleet_dir, "LKR-1", [CompartmentSpec.parse("A1:S:17:27")], pin_factory="mock"
    )
    assert files.config.exists()


def test_a_fleet_prefix_lockerd_would_refuse_creates_no_fleet(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match=r"mqtt.topic_prefix: must not start with '\$'"):
        provision.provision_fleet(tmp_path / "f", "demo", "broker.test", topic_prefix="$lockers")
    assert not (tmp_path / "f").exists()


def test_provision_locker_twice_is_refused(fleet_dir: Path) -> None:
    provision.provision_locker(fleet_dir, "LKR-1", COMPARTMENTS[:1])
    key = provision.Fleet.load(fleet_dir).device_key("LKR-1")
    with pytest.raises(ProvisionError, match="already"):
        provision.provision_locker(fleet_dir, "LKR-1", COMPARTMENTS[:1])
    assert provision.Fleet.load(fleet_dir).device_key("LKR-1") == key


def test_compartment_and_board_specs() -> None:
    gpio = CompartmentSpec.parse("A1:xl:12:6")
    assert (gpio.size, gpio.lock_pin, gpio.door_pin, gpio.board) == ("XL", 12, 6, None)
    board = CompartmentSpec.parse("C3:L:b1:16")
    assert (board.board, board.channel, board.lock_pin) == ("b1", 16, None)
    spec = BoardSpec.parse("b1=rfc2217://host:4000@3")
    assert (spec.name, spec.port, spec.address) == ("b1", "rfc2217://host:4000", 3)
    assert BoardSpec.parse("b2=/dev/ttyUSB0").address == 0
    for bad in ("A1:S:17", "A1:S:17:x", "A1:S:17:27:9"):
        with pytest.raises(ProvisionError):
            CompartmentSpec.parse(bad)
    for bad_board in ("b0", "=port", "b0=port@x"):
        with pytest.raises(ProvisionError):
            BoardSpec.parse(bad_board)


# --- issue 11 items 24-25: clock skew, modes, revocation, renewal ---------------------------------


def test_certificates_start_a_day_early_for_lockers_whose_clock_is_behind(fleet_dir: Path) -> None:
    files = provision.provision_locker(fleet_dir, "LKR-1", COMPARTMENTS[:1], pin_factory="mock")
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    now = datetime.datetime.now(datetime.UTC)
    # A Pi without RTC hours behind (issue 11 item 25) still sees a valid certificate.
    assert now - cert.not_valid_before_utc >= datetime.timedelta(hours=23)
    validity = cert.not_valid_after_utc - now
    assert datetime.timedelta(days=396) < validity <= datetime.timedelta(days=397)


def test_umask_000_makes_nothing_writable_by_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = os.umask(0)
    try:
        provision.provision_fleet(tmp_path / "fleet", "demo", "broker.test")
        provision.provision_locker(tmp_path / "fleet", "LKR-1", COMPARTMENTS[:1])
    finally:
        os.umask(old)
    paths = [tmp_path / "fleet", *(tmp_path / "fleet").rglob("*")]
    loose = [p for p in paths if stat.S_IMODE(p.stat().st_mode) & 0o022]
    assert loose == []
    assert stat.S_IMODE((tmp_path / "fleet" / "ca.pem").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "fleet" / "keys").stat().st_mode) == 0o750


def test_revoke_renew_remove(fleet_dir: Path) -> None:
    provision.provision_locker(fleet_dir, "LKR-1", COMPARTMENTS[:1])
    d = provision.Fleet.load(fleet_dir).locker_dir("LKR-1")
    first = x509.load_pem_x509_certificate((d / "device.pem").read_bytes()).serial_number
    until = provision.renew_locker(fleet_dir, "LKR-1", days=30)
    second = x509.load_pem_x509_certificate((d / "device.pem").read_bytes()).serial_number
    assert second != first
    assert datetime.timedelta(days=29) < until - datetime.datetime.now(datetime.UTC)
    assert provision.revoke_locker(fleet_dir, "LKR-1") == sorted([first, second])
    for crl_path in (fleet_dir / "crl.pem", fleet_dir / "broker" / "crl.pem"):
        crl = x509.load_pem_x509_crl(crl_path.read_bytes())
        assert {r.serial_number for r in crl} == {first, second}
    with pytest.raises(ProvisionError, match="revoked"):
        provision.renew_locker(fleet_dir, "LKR-1")
    assert provision.remove_locker(fleet_dir, "LKR-1") == sorted([first, second])
    assert not d.exists()
    files = provision.provision_locker(fleet_dir, "LKR-1", COMPARTMENTS[:1])  # id reusable
    third = x509.load_pem_x509_certificate(files.cert.read_bytes()).serial_number
    crl = x509.load_pem_x509_crl((fleet_dir / "broker" / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(third) is None
    for missing in (provision.revoke_locker, provision.remove_locker, provision.renew_locker):
        with pytest.raises(ProvisionError, match="not provisioned"):
            missing(fleet_dir, "LKR-404")


def test_keypad_and_scanner_specs_reach_the_file(fleet_dir: Path) -> None:
    files = provision.provision_locker(
        fleet_dir,
        "LKR-1",
        COMPARTMENTS[:1],
        keypad=provision.KeypadSpec.parse("matrix:5,6,13,19:12,16,20"),
        scanner=provision.ScannerSpec.parse("/dev/serial/by-id/usb-scan-if00@115200"),
        pin_factory="mock",
    )
    assert files.warnings == ()
    data = tomllib.loads(files.config.read_text())
    assert data["keypad"] == {"type": "matrix", "rows": [5, 6, 13, 19], "cols": [12, 16, 20]}
    assert data["scanner"] == {"port": "/dev/serial/by-id/usb-scan-if00", "baudrate": 115200}
    assert "timing" not in data  # defaults live in the model, not in generated files
    serial = provision.KeypadSpec.parse("serial:rfc2217://host:4000@9600").table
    assert serial == {"type": "serial", "port": "rfc2217://host:4000", "baudrate": 9600}
    assert provision.KeypadSpec.parse("none").table == {"type": "none"}
    for bad in ("matrix:1,2", "matrix:a,b:c", "usb", "serial:"):
        with pytest.raises(ProvisionError):
            provision.KeypadSpec.parse(bad)
    bare = provision.provision_locker(fleet_dir, "LKR-2", COMPARTMENTS[:1])
    assert bare.warnings == (
        "no [keypad] and no [scanner]: nobody at the cabinet can open a compartment; "
        "only signed remote commands can",
    )


def test_lockerd_check_config_says_when_to_renew(
    fleet_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Issue 11 item 24: renewal before expiry is something the locker's own check points at.
    files = provision.provision_locker(
        fleet_dir, "LKR-1", COMPARTMENTS[:1], pin_factory="mock", scanner=SCANNER
    )
    assert cabinet_config.check_config_cli(files.config) == 0
    assert capsys.readouterr().err == ""
    provision.renew_locker(fleet_dir, "LKR-1", days=10)
    assert cabinet_config.check_config_cli(files.config) == 0
    err = capsys.readouterr().err
    assert "warning: mqtt.cert_file: the certificate ends on " in err
    assert "lockerctl locker renew" in err
    cfg = cabinet_config.load_config(files.config)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=11)
    assert "ended on" in cabinet_config.certificate_warnings(cfg, now=later)[0]
    files.cert.write_text("not a certificate\n")
    assert cabinet_config.check_config_cli(files.config) == cabinet_config.EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"mqtt.cert_file: {files.cert} is not a PEM certificate" in err
