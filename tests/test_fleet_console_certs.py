"""The console's alarm inbox shows a certificate of the fleet itself (``(fleet)``: the broker's,
a server identity's) as the fleet's, with no link to a locker page that does not exist; in
Debian's chromium, against the real service."""

from __future__ import annotations

from playwright.sync_api import expect

from locker.fleet import provision
from locker.fleet.service.app import FleetService
from tests.console_rig import base_url, browser_login, console_page, console_service
from tests.fleet_rig import service_broker

_ = service_broker, console_service


def test_a_fleet_certificate_alarm_reads_as_the_fleets(
    console_service: tuple[FleetService, dict[str, tuple[str, str]]],
) -> None:
    service, people = console_service
    fleet_dir = service.cfg.fleet.dir
    soon = provision.make_client_cert(provision.make_ca("any CA"), "lockerctl", days=5)
    (fleet_dir / "clients" / "lockerctl.pem").write_bytes(soon.cert_pem)
    lines = service.certs.sweep()  # what the hourly housekeeping does
    assert any(line.startswith("clients/lockerctl.pem: the certificate ends on") for line in lines)
    with console_page({"width": 1280, "height": 800}) as page:
        browser_login(page, base_url(service), "olga", people["olga"][0])
        page.goto(base_url(service) + "/alarms")
        row = page.locator("tr.alarm[data-kind=certificate_expiring]")
        expect(row).to_have_count(1)
        expect(row.locator("td[data-label=Locker]")).to_have_text("the fleet")
        expect(row.locator("td[data-label=Locker] a")).to_have_count(0)
        expect(row.locator("td[data-label=Where]")).to_have_text("clients/lockerctl.pem")
