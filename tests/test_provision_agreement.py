"""lockerctl and lockerd agree on what a locker's configuration may be (issue 7).

Every spec ``lockerctl locker add`` accepts yields a file ``lockerd --check-config`` accepts;
every spec it refuses writes nothing (no directory, no key, no certificate, no CRL change).
"""

from __future__ import annotations

import contextlib
import io
import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from locker.cabinet.config import check_config_cli
from locker.fleet import ctl, provision

_ids = itertools.count()

SAFE_LOCK_PINS = [*range(9, 14), *range(16, 28)]
MISTAKES: dict[str, list[object]] = {
    "id": ["A.1", "a b", "x" * 17, "Ä1", ""],
    "size": ["Q", "", "XXL"],
    "pin": [0, 4, 8, 14, 15, 28, 40],
    "board": ["zz", "b.0"],
    "channel": [0, 17],
}


@st.composite
def spec(draw: st.DrawFn) -> list[str]:
    """A clean ``locker add`` command line, then 0-2 mistakes of the kinds lockerd refuses."""
    n = draw(st.integers(1, 4))
    pins = draw(st.permutations(SAFE_LOCK_PINS))
    ids = draw(
        st.lists(
            st.from_regex(r"[A-Za-z0-9_-]{1,16}", fullmatch=True),
            min_size=n,
            max_size=n,
            unique=True,
        )
    )
    sizes = draw(
        st.lists(st.sampled_from(["S", "M", "L", "XL", "xl", "m"]), min_size=n, max_size=n)
    )
    on_board = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    fields = [
        [cid, size, "b0", str(i + 1)]
        if board
        else [cid, size, str(pins[2 * i]), str(pins[2 * i + 1])]
        for i, (cid, size, board) in enumerate(zip(ids, sizes, on_board, strict=True))
    ]
    kinds = ["id", "size", "pin", "board", "channel", "twice", "keypad"]
    for kind in draw(st.lists(st.sampled_from(kinds), max_size=2)):
        entry = fields[draw(st.integers(0, n - 1))]
        if kind == "twice":  # a GPIO used twice, or a compartment id used twice
            entry[3 if entry[2].isdigit() else 0] = entry[2] if entry[2].isdigit() else ids[0]
        elif kind in ("pin", "board", "channel"):
            slot = 2 if kind != "channel" else 3
            if entry[2].isdigit() == (kind == "pin") or kind == "channel":
                entry[slot] = str(draw(st.sampled_from(MISTAKES[kind])))
        elif kind in ("id", "size"):
            entry[0 if kind == "id" else 1] = str(draw(st.sampled_from(MISTAKES[kind])))
    argv = ["--compartments", ",".join(":".join(f) for f in fields)]
    if any(on_board) or draw(st.booleans()):
        argv += ["--board", f"b0=/dev/ttyUSB0@{draw(st.sampled_from([0, 3, 15, 16]))}"]
    keypad = draw(st.sampled_from(["absent", "none", "serial", "matrix", "bad-matrix"]))
    if keypad == "serial":
        argv += ["--keypad", f"serial:/dev/ttyACM1@{draw(st.sampled_from([9600, 1234]))}"]
    elif keypad in ("matrix", "bad-matrix"):
        rows, cols = pins[-4:], pins[-8:-5]
        if keypad == "bad-matrix":  # a pin shared with a compartment, or too few rows
            rows = draw(st.sampled_from([pins[:4], pins[-3:]]))
        argv += ["--keypad", f"matrix:{','.join(map(str, rows))}:{','.join(map(str, cols))}"]
    elif keypad == "none":
        argv += ["--keypad", "none"]
    scanner = draw(st.sampled_from([None, "none", "/dev/ttyACM0", "/dev/ttyUSB0", "loop://"]))
    return argv + (["--scanner", scanner] if scanner else [])


@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("agreement") / "fleet"
    provision.provision_fleet(d, "demo", "broker.test", broker_ips=["127.0.0.1"])
    return d


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(args=spec())
def test_what_lockerctl_accepts_lockerd_accepts_and_refusals_write_nothing(
    fleet_dir: Path, args: list[str]
) -> None:
    locker_id = f"LKR-{next(_ids)}"
    argv = ["locker", "add", str(fleet_dir), locker_id, "--pin-factory", "mock", *args]
    before = tree(fleet_dir)
    out = io.StringIO()
    with contextlib.redirect_stderr(io.StringIO()):
        status = ctl.main(argv, out)
    event("accepted" if status == ctl.EXIT_OK else "refused")
    if status != ctl.EXIT_OK:
        assert status == ctl.EXIT_USAGE  # every refusal here is of an argument
        assert tree(fleet_dir) == before
        return
    config = fleet_dir / "lockers" / locker_id / "locker.toml"
    errors = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(errors):
        assert check_config_cli(config) == 0, errors.getvalue()


def test_the_issue_7_drift_cases_are_refused_with_nothing_written(fleet_dir: Path) -> None:
    for spec in ("A.1:S:17:27", "A1:S:17:17", "A1:S:40:27"):
        before = tree(fleet_dir)
        out = io.StringIO()
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            argv = ["locker", "add", str(fleet_dir), "LKR-X", "--compartments", spec]
            assert ctl.main(argv, out) == ctl.EXIT_USAGE  # a spec lockerd refuses: an argument
        assert "nothing was written" in err.getvalue()
        assert tree(fleet_dir) == before
    argv = ["locker", "add", str(fleet_dir), "LKR-X", "--compartments", "A1:S:17:27"]
    argv += ["--pin-factory", "mock", "--scanner", "loop://"]
    assert ctl.main(argv, io.StringIO()) == ctl.EXIT_OK  # the fixed spec goes through at once
