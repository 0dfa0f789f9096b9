"""``lockerctl user list|remove|reset`` and the way out of ``unknown_kid``, with a real service.

Reported by a newcomer: a user added after a locker was provisioned got 409 ``unknown kid
'carl'`` on every action with no word of the fix; ``lockerctl user`` had only ``add``, so a
leaked token could not be revoked; ``user add`` of an existing name exited 2 where README's
table says refusing to overwrite is 5. A real lockerd answers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx

from locker.fleet import ctl
from tests.console_rig import Site, console_site, http_login, olga_ready
from tests.fleet_rig import api, service_broker

_ = service_broker, console_site


def _flash(html: str) -> str:
    found = re.search(r'<p id="flash" class="flash \w+" role="status">([^<]*)</p>', html)
    assert found, html[:800]
    return found.group(1)


def _ctl(capsys: Any, *argv: str) -> tuple[int, str, str]:
    rc = ctl.main(list(argv))
    got = capsys.readouterr()
    return rc, got.out, got.err


def test_user_added_after_the_locker_is_told_the_fix(
    tmp_path: Path, console_site: Site, capsys: Any
) -> None:
    base, _password, _token = olga_ready(console_site)
    fleet = str(tmp_path / "fleet")
    rc, out, _err = _ctl(
        capsys, "user", "add", "carl", "--role", "operator", "--fleet", fleet, "--json"
    )
    assert rc == 0
    carl = json.loads(out)
    rc, _out, err = _ctl(capsys, "user", "add", "carl", "--role", "viewer", "--fleet", fleet)
    assert rc == 5 and "refusing to overwrite" in err
    op, csrf = http_login(base, "carl", carl["password"])
    try:
        form = {"action": "reset_lockout", "reason": "new user", "csrf": csrf}
        assert op.post("/lockers/SIM-0001/actions", data=form).status_code == 303
        shown = _flash(op.get("/lockers/SIM-0001").text)
    finally:
        op.close()
    assert "unknown_kid" in shown
    assert "keys/users/carl.pub" in shown and "command_keys" in shown and "restart" in shown
    with api(console_site[0], carl["token"]) as c:  # the REST API says the way out too
        r = c.post(
            "/api/v1/lockers/SIM-0001/commands",
            json={"action": "reset_lockout", "args": {}, "reason": "new user"},
        )
    assert (r.status_code, r.json()["error"]["code"]) == (409, "unknown_kid")
    assert "keys/users/NAME.pub" in r.json()["error"]["message"]


def test_remove_ends_sessions_and_token_at_once_and_reset_revokes(
    tmp_path: Path, console_site: Site, capsys: Any
) -> None:
    service = console_site[0]
    base, password, token = olga_ready(console_site)
    fleet = str(tmp_path / "fleet")
    op, _csrf = http_login(base, "olga", password)
    try:
        rc, out, _ = _ctl(capsys, "user", "list", "--fleet", fleet, "--json")
        listed = {u["name"]: u for u in json.loads(out)["users"]}
        assert rc == 0 and set(listed) == {"olga", "vic"}
        assert listed["olga"]["sessions"] == 1 and listed["olga"]["role"] == "operator"
        # a leaked token: a new one, the old one refused at once
        rc, out, _ = _ctl(capsys, "user", "reset", "olga", "--token", "--fleet", fleet, "--json")
        new = json.loads(out)
        assert rc == 0 and set(new) == {"name", "role", "token"}
        with api(service, token) as c:
            assert c.get("/api/v1/lockers").status_code == 401
        with api(service, new["token"]) as c:
            assert c.get("/api/v1/lockers").status_code == 200
        assert op.get("/").status_code == 200  # the password and its session are kept
        # a new password ends the sessions of the old one
        rc, out, _ = _ctl(capsys, "user", "reset", "olga", "--password", "--fleet", fleet, "--json")
        assert rc == 0
        assert op.get("/", follow_redirects=False).headers.get("location") == "/login"
        op.close()
        op, _csrf = http_login(base, "olga", json.loads(out)["password"])
        # removed: session and token stop at once, the signing key is gone
        rc, out, _ = _ctl(capsys, "user", "remove", "olga", "--fleet", fleet)
        assert rc == 0 and "1 console session(s) ended" in out and "command_keys" in out
        assert op.get("/", follow_redirects=False).headers.get("location") == "/login"
        with api(service, new["token"]) as c:
            assert c.get("/api/v1/lockers").status_code == 401
        assert not (tmp_path / "fleet" / "keys" / "users" / "olga.key").exists()
        rc, _out, err = _ctl(capsys, "user", "remove", "olga", "--fleet", fleet)
        assert rc == 6 and "no user 'olga'" in err
        rc, _out, err = _ctl(capsys, "user", "reset", "vic", "--fleet", fleet)
        assert rc == 2 and "--password" in err
        rc, out, _ = _ctl(capsys, "user", "list", "--fleet", fleet)
        assert rc == 0 and "olga" not in out and "vic" in out
    finally:
        op.close()
    assert httpx.get(base + "/login", timeout=10).status_code == 200
