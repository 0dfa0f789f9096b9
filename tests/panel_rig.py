"""A real daemon with its front panel on, and a real browser looking at it (DESIGN 12, 11).

``PanelCabinet`` is a ``DaemonRig`` (in-process lockerd: pty keypad and scanner, GPIO locks on
a MockFactory) with ``[panel] listen`` on a free loopback port. ``browser()`` launches Debian's
``/usr/bin/chromium`` through Playwright's Python API (never a downloaded browser).
Screenshots go to ``tests/artifacts/panel/`` (git-ignored).

Fixtures (import them into a test module to use them): ``chromium``, one browser per module;
``cabinet``, a ``PanelCabinet`` with the default settings for one test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory
from playwright.sync_api import Browser, Page, ViewportSize, expect, sync_playwright

from locker.cabinet.panel.web import PanelServer
from tests.daemon_rig import DaemonRig

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
ARTIFACTS = Path(__file__).parent / "artifacts" / "panel"
SIZES = {"800x480": (800, 480), "1280x800": (1280, 800)}


@contextlib.contextmanager
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """One browser for a module's tests (each opens its own pages)."""
    with browser() as b:
        yield b


class PanelCabinet:
    """The daemon with ``[panel]`` (``panel`` keys override the defaults) and its page."""

    def __init__(
        self,
        workdir: Path,
        factory: MockFactory,
        *,
        panel: Mapping[str, Any] | None = None,
        unplugged: Sequence[str] = (),
        **rig_args: Any,
    ) -> None:
        """``unplugged``: inputs (``keypad``, ``scanner``) whose port is missing at start."""
        tables = {"panel": {"listen": "127.0.0.1:0", "touch_keypad": True, **(panel or {})}}
        self.rig = DaemonRig(workdir, factory, tables=tables, **rig_args)
        for name in unplugged:
            getattr(self.rig, name).unplug()
        self.rig.start(wait_inputs=not unplugged)

    @property
    def server(self) -> PanelServer:
        assert self.rig.locker is not None
        return next(s for s in self.rig.locker.surfaces if isinstance(s, PanelServer))

    @property
    def url(self) -> str:
        return self.server.url

    def open(self, b: Browser, size: str = "800x480", *, javascript: bool = True) -> Page:
        """The panel's page (its own browser context); with JavaScript, once its event stream
        is open."""
        width, height = SIZES[size]
        viewport: ViewportSize = {"width": width, "height": height}
        page = b.new_page(java_script_enabled=javascript, viewport=viewport)
        page.set_default_timeout(5_000)
        page.goto(self.url)
        if javascript:
            page.wait_for_selector("body[data-sse=open]")
        return page

    def close(self) -> None:
        self.rig.close()

    def __enter__(self) -> PanelCabinet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def cabinet(tmp_path: Path, mock_factory: MockFactory) -> Iterator[PanelCabinet]:
    """A panel cabinet with the default settings (``mock_factory``: tests/conftest.py)."""
    with PanelCabinet(tmp_path, mock_factory) as cab:
        yield cab


@pytest.fixture
def quick_backoff_cabinet(tmp_path: Path, mock_factory: MockFactory) -> Iterator[PanelCabinet]:
    """A panel cabinet whose keypad backs off after 3 wrong codes (import it as ``cabinet``):
    a code wrongly counted as a guess shows at once."""
    with PanelCabinet(tmp_path, mock_factory, security={"failures_before_backoff": 3}) as cab:
        yield cab


def expect_message(
    page: Page,
    state: str,
    *,
    reason: str | None = None,
    compartment: str | None = None,
    timeout: float = 5_000,
) -> None:
    """``#message`` reaches ``state`` (and ``reason`` / ``compartment`` when given)."""
    msg = page.locator("#message")
    expect(msg).to_have_attribute("data-state", state, timeout=timeout)
    if reason is not None:
        expect(msg).to_have_attribute("data-reason", reason, timeout=timeout)
    if compartment is not None:
        expect(msg).to_have_attribute("data-compartment", compartment, timeout=timeout)


def screenshot(page: Page, name: str) -> list[Path]:
    """``name-800x480.png`` and ``name-1280x800.png`` of the page as it is now (the viewport
    is resized for the shots, then put back)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    before = page.viewport_size
    paths = []
    for label, (width, height) in SIZES.items():
        page.set_viewport_size({"width": width, "height": height})
        path = ARTIFACTS / f"{name}-{label}.png"
        page.screenshot(path=str(path))
        paths.append(path)
    if before is not None:
        page.set_viewport_size(before)
    return paths
