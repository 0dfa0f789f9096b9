"""Composition root: turn a validated ``Config`` into a running controller and its adapters.

The only module that imports both ``locker`` and ``hardware`` (DESIGN section 2). Nothing
here decides anything: it maps configuration keys onto constructor arguments, in the order
that keeps a failure harmless (config, then database, then hardware, then the link).
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from locker import __version__
from locker.cabinet.certwatch import CertificateWatch
from locker.cabinet.config import Config
from locker.cabinet.controller import Controller
from locker.cabinet.domain import machine, throttle
from locker.cabinet.panel.hub import PanelHub
from locker.cabinet.panel.quiet import QuietHours
from locker.cabinet.store import OutboxView, Store
from locker.cabinet.timesync import clock_synced
from locker.contract.actions import Command
from locker.ports import (
    CommandMessage,
    HardwareEvent,
    HardwareFault,
    HardwareRecovered,
    Indicator,
    InputDevice,
    LockBank,
    NullIndicator,
    Surface,
    Uplink,
)

if TYPE_CHECKING:
    from hardware.emulators.doors import DoorActor

logger = logging.getLogger(__name__)


def rules_from(cfg: Config) -> machine.Rules:
    t, s = cfg.timing, cfg.security
    return machine.Rules(
        locker_id=cfg.locker.id,
        device_key=s.read_device_key(),
        token_keys=s.token_public_keys(),
        accessible=frozenset(c.id for c in cfg.compartments if c.accessible),
        door_open_timeout_s=t.door_open_timeout_s,
        door_left_open_s=t.door_left_open_s,
        keypad_entry_timeout_s=t.keypad_entry_timeout_s,
        pickup_hours=t.pickup_hours,
        dropoff_hours=t.dropoff_hours,
        max_remote_opens_per_hour=cfg.remote_open_cap,
        code_length=s.code_length,
        limits=throttle.Limits(
            failures_before_backoff=s.failures_before_backoff,
            hard_lockout=s.hard_lockout_failures,
            max_per_hour=s.max_failures_per_hour,
            lockout_s=s.lockout_s,
        ),
    )


@dataclass
class Locker:
    """Everything one running lockerd owns; ``close`` releases it in reverse order."""

    config: Config
    controller: Controller
    inputs: list[InputDevice] = field(default_factory=list)
    pin_factory: Any = None
    hub: PanelHub | None = None
    surfaces: list[Surface] = field(default_factory=list)  # front panel: page, LCD, voice, LEDs
    cert_watch: CertificateWatch | None = None  # the MQTT client certificate's end

    # inputs out of order now: device name -> the detail of its hardware_fault
    input_faults: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        """Start the controller, then each input, then the surfaces. Each input's ``start``
        returns once its port is open or its failure has been reported (a ``HardwareFault``,
        also kept in ``input_faults`` until its ``HardwareRecovered``): that is what READY
        means for the inputs (``lockerd``), so a cabinet with one broken reader still serves
        with the other, and says which one is out of order."""
        self.controller.start()
        for device in self.inputs:
            device.start(self._input_sink)
        for surface in self.surfaces:
            surface.start()  # logs and carries on if it cannot: the locker works without them
        if self.cert_watch is not None:
            self.cert_watch.start()

    def _input_sink(self, event: HardwareEvent) -> None:
        # runs on the device's reader thread; a dict item store or pop is atomic
        if isinstance(event, HardwareFault):
            self.input_faults[event.device] = event.detail
        elif isinstance(event, HardwareRecovered):
            self.input_faults.pop(event.device, None)
        self.controller.submit(event)

    def close(self) -> None:
        if self.cert_watch is not None:
            self.cert_watch.close()
        self.close_surfaces()
        for device in self.inputs:
            device.close()
        self.controller.shutdown()
        self.controller.store.close()

    def close_surfaces(self) -> None:
        for surface in self.surfaces:
            try:
                surface.close()
            except Exception:
                logger.exception("closing a front-panel surface failed")


def build_panel(
    cfg: Config, pin_factory: Any, quiet: QuietHours
) -> tuple[PanelHub | None, list[Surface]]:
    """The front panel's hub and surfaces (DESIGN section 12): the web page when ``[panel]
    listen`` is set, the LCD, voice prompts, and locator LEDs for compartments with ``led_pin``.
    A surface whose device cannot be opened is logged and left out: the locker works without."""
    leds = {c.id: c.led_pin for c in cfg.compartments if c.led_pin is not None}
    p = cfg.panel
    if p is None and not leds:
        return None, []
    hub = PanelHub(p.languages if p else ["en"], p.default_language if p else "en")
    surfaces: list[Surface] = []
    if p is not None and (where := p.host_port) is not None:
        from locker.cabinet.panel.web import PanelServer  # noqa: PLC0415 - only with a panel

        surfaces.append(PanelServer(hub, where[0], where[1], touch_keypad=p.touch_keypad))
    if p is not None and p.lcd is not None:
        from hardware.display.hd44780 import Hd44780I2c  # noqa: PLC0415
        from locker.cabinet.panel.lcd import LcdFollower  # noqa: PLC0415

        lcd = p.lcd
        try:
            display = Hd44780I2c(lcd.i2c_address, bus=lcd.i2c_bus, cols=lcd.cols, rows=lcd.rows)
        except (OSError, ImportError) as err:
            logger.error("panel: LCD at 0x%02x unavailable: %s", lcd.i2c_address, err)
        else:
            surfaces.append(LcdFollower(hub, display, lcd.cols, lcd.rows))
    if p is not None and p.voice:
        from locker.cabinet.panel.voice import VoiceFollower  # noqa: PLC0415

        surfaces.append(VoiceFollower(hub))
    if leds:
        from hardware.gpio.locator import LocatorLeds  # noqa: PLC0415
        from locker.cabinet.panel.follow import LocatorFollower  # noqa: PLC0415

        surfaces.append(
            LocatorFollower(hub, LocatorLeds(leds, pin_factory=pin_factory), quiet=quiet)
        )
    return hub, surfaces


def build_banks(cfg: Config, pin_factory: Any) -> list[LockBank]:
    from hardware.boards.rs485_bus import BoardSpec, BusTiming, KerongBus  # noqa: PLC0415
    from hardware.gpio.locks import GpioCompartment, GpioLockBank  # noqa: PLC0415

    t = cfg.timing
    banks: list[LockBank] = []
    gpio = cfg.gpio_compartments()
    if gpio:
        banks.append(
            GpioLockBank(
                [GpioCompartment(c.id, c.lock_pin, c.door_pin, c.door_closed_level) for c in gpio],
                pulse_s=t.unlock_pulse_s,
                rest_s=t.unlock_rest_s,
                debounce_s=t.door_debounce_s,
                # chatter that outlasts the open window is a faulty sensor, not a door swinging
                unstable_after_s=t.door_open_timeout_s,
                pin_factory=pin_factory,
            )
        )
    by_port: dict[str, list[Any]] = defaultdict(list)
    for board in cfg.boards:
        by_port[board.port].append(board)
    for port, boards in by_port.items():
        names = {b.name for b in boards}
        banks.append(
            KerongBus(
                name="bus:" + ",".join(sorted(names)),
                port=port,
                boards=[
                    BoardSpec(
                        b.name,
                        b.address,
                        b.lock_bit_locked,
                        b.poll_interval_s,
                        item_sensors=b.item_sensors,
                    )
                    for b in boards
                ],
                compartments={
                    c.id: (c.board, c.channel)
                    for name in sorted(names)
                    for c in cfg.board_compartments(name)
                },
                baudrate=boards[0].baudrate,
                timing=BusTiming(pulse_s=t.unlock_pulse_s, rest_s=t.unlock_rest_s),
            )
        )
    return banks


def build_inputs(cfg: Config, pin_factory: Any) -> list[InputDevice]:
    from hardware.gpio.matrix_keypad import MatrixKeypad  # noqa: PLC0415
    from hardware.serial_io.input import SerialKeypad, SerialScanner  # noqa: PLC0415

    inputs: list[InputDevice] = []
    if cfg.keypad is not None:
        if cfg.keypad.type == "matrix":
            inputs.append(MatrixKeypad(cfg.keypad.rows, cfg.keypad.cols, pin_factory=pin_factory))
        elif cfg.keypad.type == "serial":
            inputs.append(SerialKeypad(cfg.keypad.port, baudrate=cfg.keypad.baudrate))
    if cfg.scanner is not None:
        inputs.append(SerialScanner(cfg.scanner.port, baudrate=cfg.scanner.baudrate))
    return inputs


def build_indicator(cfg: Config, pin_factory: Any, quiet: QuietHours | None = None) -> Indicator:
    if cfg.feedback is None:
        return NullIndicator()
    from hardware.gpio.feedback import GpioIndicator  # noqa: PLC0415

    f = cfg.feedback
    return GpioIndicator(
        buzzer_pin=f.buzzer_pin,
        ok_led_pin=f.ok_led_pin,
        error_led_pin=f.error_led_pin,
        pin_factory=pin_factory,
        quiet=quiet if quiet is not None and quiet.window is not None else None,
    )


def build_uplink(cfg: Config, db: Path, boot_id: str) -> Uplink | None:
    if cfg.mqtt is None:
        return None
    from locker.cabinet.link import MqttLink  # noqa: PLC0415

    m = cfg.mqtt
    return MqttLink(
        locker_id=cfg.locker.id,
        host=m.host,
        port=m.port,
        tls=m.tls,
        ca_file=str(m.ca_file) if m.ca_file else None,
        cert_file=str(m.cert_file) if m.cert_file else None,
        key_file=str(m.key_file) if m.key_file else None,
        topic_prefix=m.topic_prefix,
        keepalive_s=m.keepalive_s,
        session_expiry_s=m.session_expiry_s,
        will_delay_s=m.will_delay_s,
        require_server_ack=m.require_server_ack,
        ack_timeout_s=m.ack_timeout_s,
        max_inflight=m.max_inflight,
        reconnect_min_s=m.reconnect_min_s,
        reconnect_max_s=m.reconnect_max_s,
        reconnect_unreachable_max_s=m.reconnect_unreachable_max_s,
        boot_id=boot_id,
        version=__version__,
        clock_synced=clock_synced,
        outbox=OutboxView(db),
    )


def build_verifier(cfg: Config) -> Callable[[CommandMessage, float], Command] | None:
    keys = cfg.security.command_public_keys()
    if not keys:
        return None
    from locker.contract.commands import command_verifier  # noqa: PLC0415 - not for --check-config

    prefix = cfg.mqtt.topic_prefix if cfg.mqtt else "lockers"
    return command_verifier(cfg.locker.id, keys, topic_prefix=prefix)


def build(
    cfg: Config,
    *,
    pin_factory: Any = None,
    watchdog: Callable[[], object] = lambda: None,
    with_link: bool = True,
) -> Locker:
    """Build (not start) a locker from a validated configuration. Raises before touching any
    hardware if the database or the keys are unusable."""
    boot_id = str(uuid.uuid4())
    rules = rules_from(cfg)
    db = Path(cfg.locker.state_dir) / "locker.db"
    store = Store(db, boot_id=boot_id)
    try:
        store.probe()  # a store that opens but cannot be written fails here, not at the door
    except BaseException:
        store.close()
        raise
    if pin_factory is None and cfg.uses_gpio():
        from hardware.gpio.pins import make_pin_factory  # noqa: PLC0415

        pin_factory = make_pin_factory(cfg.gpio.pin_factory)
    banks = build_banks(cfg, pin_factory)
    quiet = QuietHours(cfg.panel.quiet_window() if cfg.panel else None)
    hub, surfaces = build_panel(cfg, pin_factory, quiet)
    uplink = build_uplink(cfg, db, boot_id) if with_link else None

    def feed_watchdog() -> None:
        # A dead MQTT thread would leave the locker silently deaf to its server: stop feeding
        # systemd's watchdog and let it restart the process.
        if uplink is None or uplink.healthy():
            watchdog()

    controller = Controller(
        rules=rules,
        store=store,
        compartment_sizes={c.id: c.size for c in cfg.compartments},
        banks=banks,
        version=__version__,
        indicator=build_indicator(cfg, pin_factory, quiet),
        uplink=uplink,
        clock_synced=clock_synced,
        verify=build_verifier(cfg),
        watchdog=feed_watchdog,
        observers=[hub.observe] if hub is not None else [],
    )
    if hub is not None:
        hub.connect(controller.submit)  # on-screen keys take the keypad's path
    cert = cfg.mqtt.cert_file if cfg.mqtt is not None and with_link else None
    watch = CertificateWatch(cert, controller.submit) if cert is not None else None
    inputs = build_inputs(cfg, pin_factory)
    return Locker(cfg, controller, inputs, pin_factory, hub, surfaces, cert_watch=watch)


def simulated_doors(locker: Locker, timing: tuple[float, float | None]) -> DoorActor:
    """Simulation only (``lockerd --simulate-doors``): a simulated person who opens each GPIO
    door ``timing[0]`` s after its lock pulses and closes it ``timing[1]`` s later (None: never).
    Not started; the caller starts and closes it."""
    from hardware.emulators.doors import DoorActor, SimDoor  # noqa: PLC0415 - simulation only

    doors = {
        c.id: SimDoor(c.lock_pin, c.door_pin, c.door_closed_level)
        for c in locker.config.gpio_compartments()
    }
    return DoorActor(locker.pin_factory, doors, open_after_s=timing[0], close_after_s=timing[1])
