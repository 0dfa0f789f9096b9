"""The outbox sender, pure (locker.cabinet.sender): no broker, a fake clock, Hypothesis.

The stateful test plays the link, the broker and a server that acknowledges what it holds
contiguously, with connection losses, lost messages, bad acks and ack time-outs, and checks
after every step: inflight bounded, nothing sent past the ack window, nothing deleted from
the outbox without a valid ack covering it; and at the end, once the network behaves,
nothing lost.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from locker.cabinet.refusals import Refusals
from locker.cabinet.sender import LinkCounters, OutboxSender, check_ack
from locker.config.sections import Mqtt
from locker.ports import OutboxRow

EPOCH = "5f0c6a52-3f7e-4d0b-9a51-2b8f1c7d9e04"


def row(seq: int) -> OutboxRow:
    return OutboxRow(seq, "door_opened", json.dumps({"seq": seq}).encode())


class Outbox:
    def __init__(self) -> None:
        self.rows: dict[int, OutboxRow] = {}
        self.last_seq = 0

    def add(self, n: int) -> None:
        for _ in range(n):
            self.last_seq += 1
            self.rows[self.last_seq] = row(self.last_seq)

    def read(self, after: int, limit: int) -> list[OutboxRow]:
        return [self.rows[s] for s in sorted(self.rows) if s > after][:limit]


def pump(sender: OutboxSender, outbox: Outbox, now: float, mids: list[int]) -> list[int]:
    """What the link's ``_send_events`` does; returns the seqs published, in order."""
    out: list[int] = []
    while True:
        r = sender.next_row()
        if r is None:
            req = sender.read_request()
            if req is None:
                return out
            rows = outbox.read(*req)
            sender.fill(rows, req[1])
            if not rows:
                return out
            continue
        mids[0] += 1
        sender.sent(r.seq, mids[0], now)
        out.append(r.seq)


def make_sender(**settings: Any) -> OutboxSender:
    """The configuration's MQTT defaults (the link gets them from the config model)."""
    mqtt = Mqtt.model_fields
    values = {
        "require_ack": mqtt["require_server_ack"].default,
        "max_inflight": mqtt["max_inflight"].default,
        "ack_timeout_s": 60.0,  # the figures below are written for 60 s
    }
    return OutboxSender(**{**values, **settings})


def test_check_ack() -> None:
    assert check_ack(EPOCH, 5, (EPOCH, 5)) == "ok"
    assert check_ack(None, 5, (EPOCH, 5)) == "ok"
    assert check_ack(EPOCH, 6, (EPOCH, 5)) == "above_last_seq"
    assert check_ack(None, 6, (EPOCH, 5)) == "above_last_seq"
    assert check_ack("other", 1, (EPOCH, 5)) == "other_epoch"


def test_window_go_back_and_time_out() -> None:
    outbox, sender, mids = Outbox(), make_sender(max_inflight=3, ack_window=5), [0]
    outbox.add(10)
    assert pump(sender, outbox, 0.0, mids) == [1, 2, 3]  # inflight bound
    for mid in (1, 2, 3):
        assert sender.puback(mid, failed=False) == mid
    assert pump(sender, outbox, 0.0, mids) == [4, 5]  # ack window: 5 past the last ack
    assert sender.server_ack(EPOCH, 2, (EPOCH, 10), 1.0) == "ok"
    for mid in (4, 5):
        sender.puback(mid, failed=False)
    assert pump(sender, outbox, 1.0, mids) == [6, 7]
    assert sender.next_timeout(1.0) == 60.0
    assert not sender.check_timeout(60.9)
    assert sender.check_timeout(61.0)  # no ack progress for 60 s: go back to seq 3
    for mid in (6, 7):
        sender.puback(mid, failed=False)
    assert pump(sender, outbox, 61.0, mids) == [3, 4, 5]
    assert sender.counters.resent == 3


def test_an_ack_above_last_seq_does_not_stop_the_stream() -> None:
    # Issue 11 item 20: the bad ack used to move the window past every future event.
    outbox, sender, mids = Outbox(), make_sender(), [0]
    outbox.add(3)
    assert pump(sender, outbox, 0.0, mids) == [1, 2, 3]
    assert sender.server_ack(EPOCH, 1000, (EPOCH, outbox.last_seq), 0.0) == "above_last_seq"
    assert sender.server_ack("other", 2, (EPOCH, outbox.last_seq), 0.0) == "other_epoch"
    assert sender.floor == 0 and sender.counters.invalid_acks == 2
    outbox.add(10)
    sender.outbox_changed()
    assert pump(sender, outbox, 0.0, mids) == list(range(4, 14))


def refusing(sender: OutboxSender) -> bool:
    return sender.refusing


def test_a_refusing_broker_gets_probes_not_a_window_per_event() -> None:
    """A broker that refuses every publish (ACL: a wrong locker.id or topic_prefix) used to
    get every new event at once, each refusal making another event: now nothing goes out
    while refusing but one probe at a time, and the first accepted PUBACK ends it."""
    outbox, sender, mids = Outbox(), make_sender(), [0]
    outbox.add(3)
    assert pump(sender, outbox, 0.0, mids) == [1, 2, 3]
    assert sender.puback(1, failed=False) == 1
    assert sender.puback(2, failed=True) == 2 and sender.refusing
    assert sender.puback(3, failed=True) == 3
    outbox.add(5)  # e.g. the hardware_fault event about the refusal
    sender.outbox_changed()
    assert pump(sender, outbox, 0.0, mids) == []
    sender.lost()
    sender.connected()
    assert pump(sender, outbox, 0.0, mids) == []  # a reconnect is not a probe
    sender.probe()
    assert pump(sender, outbox, 0.0, mids) == [1]  # the lowest unconfirmed, once
    assert pump(sender, outbox, 0.0, mids) == []
    assert sender.puback(mids[0], failed=True) == 1 and sender.refusing
    sender.resync()  # the server's resync while refusing is one probe too
    assert pump(sender, outbox, 0.0, mids) == [1]
    assert sender.puback(mids[0], failed=False) == 1
    assert not refusing(sender)  # a function: mypy would keep the narrowing above
    assert pump(sender, outbox, 0.0, mids) == list(range(1, 9))  # go-back-N from the floor
    assert sender.counters.refused == 3


def test_refused_rows_go_again_after_recovery_without_server_acks() -> None:
    outbox, sender, mids = Outbox(), make_sender(require_ack=False), [0]
    outbox.add(3)
    assert pump(sender, outbox, 0.0, mids) == [1, 2, 3]
    sender.puback(1, failed=True)
    sender.puback(2, failed=False)  # accepted again: 1 is not skipped by the floor
    sender.puback(3, failed=False)
    assert sender.take_delivered() == (2, 3)
    del outbox.rows[2], outbox.rows[3]
    assert not sender.refusing and sender.floor == 0
    assert pump(sender, outbox, 0.0, mids) == [1]


def test_reset_stream_starts_over() -> None:
    outbox, sender, mids = Outbox(), make_sender(), [0]
    outbox.add(3)
    pump(sender, outbox, 0.0, mids)
    assert sender.server_ack(EPOCH, 3, (EPOCH, 3), 0.0) == "ok"
    sender.reset_stream()  # renumbered into a new epoch: seq 1.. again
    assert sender.floor == 0
    assert pump(sender, outbox, 0.0, mids) == [1, 2, 3]


def test_without_server_acks_a_puback_is_delivery() -> None:
    outbox, sender, mids = Outbox(), make_sender(require_ack=False, max_inflight=2), [0]
    outbox.add(3)
    assert pump(sender, outbox, 0.0, mids) == [1, 2]
    sender.puback(2, failed=False)
    assert sender.take_delivered() == (2,)
    assert sender.floor == 0  # seq 1 still in flight
    sender.puback(1, failed=False)
    assert sender.take_delivered() == (1,) and sender.floor == 2
    assert pump(sender, outbox, 0.0, mids) == [3]


class SenderMachine(RuleBasedStateMachine):
    """Sender + outbox + a lossy broker + a server acking what it holds contiguously."""

    @initialize(
        inflight=st.integers(1, 6), window=st.integers(1, 12), timeout=st.sampled_from([5.0, 60.0])
    )
    def setup(self, inflight: int, window: int, timeout: float) -> None:
        self.sender = OutboxSender(
            require_ack=True,
            max_inflight=inflight,
            ack_window=window,
            ack_timeout_s=timeout,
            counters=LinkCounters(),
        )
        self.outbox = Outbox()
        self.now = 0.0
        self.mids = [0]
        self.wire: dict[int, int] = {}  # mid -> seq: published, no PUBACK yet
        self.held: set[int] = set()  # what the server holds
        self.deleted: set[int] = set()
        self.connected = True

    def _contiguous(self) -> int:
        n = 0
        while n + 1 in self.held:
            n += 1
        return n

    @rule(n=st.integers(1, 5))
    def commit(self, n: int) -> None:
        self.outbox.add(n)
        self.sender.outbox_changed()

    @precondition(lambda self: self.connected)
    @rule()
    def send(self) -> None:
        before = self.mids[0]
        pump(self.sender, self.outbox, self.now, self.mids)
        for mid in range(before + 1, self.mids[0] + 1):
            self.wire[mid] = self.sender.inflight[mid]

    @precondition(lambda self: self.connected and self.wire)
    @rule(data=st.data(), lose=st.booleans())
    def puback(self, data: st.DataObject, lose: bool) -> None:
        mid = data.draw(st.sampled_from(sorted(self.wire)))
        seq = self.wire.pop(mid)
        if not lose:  # a lost message: the broker PUBACKed it and then crashed
            self.held.add(seq)
        self.sender.puback(mid, failed=False)

    @precondition(lambda self: self.connected)
    @rule()
    def server_ack(self) -> None:
        upto = self._contiguous()
        if upto == 0:
            return
        verdict = self.sender.server_ack(EPOCH, upto, (EPOCH, self.outbox.last_seq), self.now)
        assert verdict in ("ok", "stale")
        for seq in [s for s in self.outbox.rows if s <= upto]:  # the controller's delete
            del self.outbox.rows[seq]
            self.deleted.add(seq)
        self.sender.outbox_changed()

    @rule(above=st.integers(1, 50), other=st.booleans())
    def bad_ack(self, above: int, other: bool) -> None:
        floor = self.sender.floor
        epoch = "someone-else" if other else EPOCH
        upto = 1 if other else self.outbox.last_seq + above
        assert self.sender.server_ack(epoch, upto, (EPOCH, self.outbox.last_seq), self.now) != "ok"
        assert self.sender.floor == floor

    @rule(dt=st.floats(0.0, 70.0))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.sender.check_timeout(self.now)

    @precondition(lambda self: self.connected)
    @rule()
    def drop(self) -> None:
        self.connected = False
        self.wire.clear()
        self.sender.lost()

    @precondition(lambda self: not self.connected)
    @rule()
    def reconnect(self) -> None:
        self.connected = True
        self.sender.connected()

    @invariant()
    def bounded(self) -> None:
        if not hasattr(self, "sender"):
            return
        s = self.sender
        assert len(s.inflight) <= s.max_inflight
        assert all(seq <= s.floor + s.ack_window for seq in s.inflight.values())

    @invariant()
    def nothing_deleted_without_an_ack(self) -> None:
        if hasattr(self, "deleted"):
            assert self.deleted <= self.held

    def teardown(self) -> None:
        """Once the network behaves, everything committed reaches the server."""
        if not hasattr(self, "sender"):
            return
        if not self.connected:
            self.reconnect()
        for _ in range(10 * (self.outbox.last_seq + 2)):
            self.send()
            for mid in sorted(self.wire):
                self.held.add(self.wire.pop(mid))
                self.sender.puback(mid, failed=False)
            self.server_ack()
            if not self.outbox.rows:
                break
            self.tick(self.sender.ack_timeout_s)
        assert not self.outbox.rows
        assert self.held == set(range(1, self.outbox.last_seq + 1))


TestSenderMachine = SenderMachine.TestCase
TestSenderMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_refusals_are_one_outage_until_every_refused_kind_is_accepted() -> None:
    outage = Refusals((1.0, 4.0))
    assert outage.refused("evt", "Not authorized", 10.0)  # begins: report it
    assert not outage.refused("evt", "Not authorized", 10.1)  # counted, not reported
    assert not outage.refused("state", "Not authorized", 10.2)
    assert 11.0 <= outage.probe_at <= 12.0 and not outage.probe_due(10.9)
    assert outage.probe_due(12.0)
    outage.probed(12.0)
    assert 13.0 <= outage.probe_at <= 16.0  # the back-off grows, up to reconnect_max_s
    assert outage.accepted("evt", 13.0) is None  # the state is still refused: no flapping
    assert outage.accepted("status", 13.0) is None  # never refused: says nothing
    assert outage.accepted("state", 13.5) == (3, 3.5)
    assert not outage.kinds and not outage.probe_due(1e9)
    assert outage.refused("status", "Quota exceeded", 20.0)  # a new outage
