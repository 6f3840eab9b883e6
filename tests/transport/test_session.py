"""Session logic without gRPC: receiver state machine, sender key-frame rules, pacing, stats."""

from fractions import Fraction

import numpy as np
import pytest

from codec import binary
from codec.bitstream import Header, Packet, PacketKind
from codec.errors import BitstreamError, UnsupportedVersionError
from transport.session import (
    CLOSED,
    DropQueue,
    LatencyHistogram,
    Pacer,
    Reason,
    ReceiverSession,
    ReceiverState,
    SenderSession,
)

HEADER = Header(width=8, height=8, fps=Fraction(25), model_id="warp")
FRAME = np.zeros((8, 8, 3), np.uint8)


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


class FakeDecoder:
    """Accepts frames in pts order from a key frame on; records which were rendered."""

    def __init__(self, header: Header) -> None:
        self.needs_keyframe = True
        self.next_pts = 0
        self.rendered: list[int] = []

    def decode(self, packet: Packet, render: bool):
        if packet.kind == PacketKind.KEYFRAME:
            self.needs_keyframe, self.next_pts = False, packet.pts
        elif self.needs_keyframe or packet.pts != self.next_pts:
            self.needs_keyframe = True
            raise BitstreamError(f"frame {packet.pts} out of order")
        self.next_pts = packet.pts + 1
        if render:
            self.rendered.append(packet.pts)
            return FRAME
        return None


def key(pts: int) -> bytes:
    return Packet(PacketKind.KEYFRAME, pts, b"k").to_bytes()


def motion(pts: int) -> bytes:
    return Packet(PacketKind.MOTION, pts, b"m").to_bytes()


def make_session(clock=None):
    clock = clock or FakeClock()
    s = ReceiverSession(FakeDecoder, clock=clock, wallclock_us=lambda: int(clock() * 1e6))
    return s, clock


def test_join_asks_for_a_key_frame_then_decodes():
    s, _ = make_session()
    assert s.state is ReceiverState.JOINED
    s.on_header(HEADER.to_bytes())
    assert s.state is ReceiverState.WAITING_KEYFRAME
    assert s.poll_requests() == [(Reason.JOIN, 0)]
    assert s.on_packet(motion(0)) is None  # no key frame yet: dropped, no second request
    assert s.poll_requests() == []
    assert s.on_packet(key(1)) is not None
    assert s.state is ReceiverState.DECODING
    assert s.on_packet(motion(2)) is not None
    st = s.snapshot()
    assert (st.frames_received, st.frames_shown, st.frames_dropped) == (3, 2, 1)


def test_damaged_packet_asks_for_a_key_frame_and_carries_on():
    s, clock = make_session()
    s.on_header(HEADER.to_bytes())
    s.poll_requests()
    s.on_packet(key(0))
    bad = bytearray(motion(1))
    bad[-1] ^= 0xFF  # CRC mismatch
    assert s.on_packet(bytes(bad)) is None
    assert s.state is ReceiverState.WAITING_KEYFRAME
    assert s.poll_requests() == [(Reason.DAMAGE, 2)]
    assert s.on_packet(motion(2)) is None  # still waiting
    clock.t += 1.5  # no key frame within a second: ask again
    assert s.poll_requests() == [(Reason.DAMAGE, 3)]
    assert s.on_packet(key(3)) is not None and s.on_packet(motion(4)) is not None
    assert s.snapshot().frames_shown == 3


def test_undecodable_packet_counts_as_damage():
    s, _ = make_session()
    s.on_header(HEADER.to_bytes())
    s.poll_requests()
    s.on_packet(key(0))
    assert s.on_packet(motion(5)) is None  # a gap: the decoder refuses it
    assert s.poll_requests() == [(Reason.DAMAGE, 2)]
    assert "out of order" in s.last_error


@pytest.mark.parametrize("kind", [PacketKind.MOTION_GROUP, PacketKind.REFERENCE])
def test_file_only_packets_in_a_call_are_damage(kind):
    """Files group frames and send searched key frames unshown; a call sends a frame a
    packet, each key frame shown: either resyncs at a key frame."""
    s, _ = make_session()
    s.on_header(HEADER.to_bytes())
    s.poll_requests()
    s.on_packet(key(0))
    assert s.on_packet(Packet(kind, 1, b"\x02").to_bytes()) is None
    assert s.poll_requests() == [(Reason.DAMAGE, 2)]
    assert kind.name in s.last_error and s.state is ReceiverState.WAITING_KEYFRAME
    assert s.snapshot().frames_dropped == 1


def test_stale_frames_are_decoded_but_not_rendered():
    s, _ = make_session()
    s.on_header(HEADER.to_bytes())
    s.on_packet(key(0))
    for pts in range(1, 5):
        assert s.on_packet(motion(pts), stale=True) is None
    assert s.on_packet(motion(5)) is not None
    assert s.decoder.rendered == [0, 5]  # the motion state still advanced through 1..4
    st = s.snapshot()
    assert (st.frames_received, st.frames_shown, st.frames_dropped) == (6, 2, 4)
    assert s.poll_requests() == [(Reason.JOIN, 0)]  # no damage request for stale frames


def test_queue_reset_asks_for_a_key_frame():
    s, _ = make_session()
    s.on_header(HEADER.to_bytes())
    s.poll_requests()
    s.on_packet(key(0))
    s.on_reset(10)
    assert s.state is ReceiverState.WAITING_KEYFRAME
    assert s.poll_requests() == [(Reason.RESET, 1)]
    assert s.on_packet(key(11)) is not None
    assert s.snapshot().frames_dropped == 10


def test_header_errors_and_protocol_order():
    s, _ = make_session()
    with pytest.raises(BitstreamError, match="before the stream header"):
        s.on_packet(key(0))
    newer = bytearray(HEADER.to_bytes())
    newer[4] = 4  # major version
    with pytest.raises(UnsupportedVersionError, match="4.0 is not supported"):
        s.on_header(bytes(newer))
    s.on_header(HEADER.to_bytes())
    with pytest.raises(BitstreamError, match="second stream header"):
        s.on_header(HEADER.to_bytes())


def test_end_packet_ends_and_reports_frames_sent():
    s, _ = make_session()
    s.on_header(HEADER.to_bytes())
    s.on_packet(key(0))
    s.on_packet(Packet(PacketKind.END, 0, binary.varint(1)).to_bytes())
    assert s.ended and s.snapshot().frames_sent == 1


def test_latency_and_stall_statistics():
    clock = FakeClock()
    s, _ = make_session(clock)
    s.on_header(HEADER.to_bytes())
    for pts in range(10):
        capture_us = int(clock() * 1e6)
        clock.t += 0.040 if pts != 5 else 0.300  # one slow frame
        s.on_packet((key if pts == 0 else motion)(pts), capture_us)
    st = s.snapshot()
    assert st.latency_median_ms == pytest.approx(40.5)
    assert st.latency_p95_ms == pytest.approx(300.5)
    assert st.longest_stall_ms == pytest.approx(300)
    assert st.kbps > 0 and st.fps_shown > 0


def test_latency_histogram_quantiles():
    h = LatencyHistogram()
    assert h.quantile(0.5) is None
    for ms in range(1, 101):
        h.add(ms)
    h.add(1e9)  # clipped into the last bin
    assert h.quantile(0.5) == pytest.approx(51.5)  # the 51st of 101
    assert h.quantile(0.95) == pytest.approx(96.5)  # the 96th


def test_sender_starts_each_connection_with_a_key_frame():
    s = SenderSession(Fraction(25))
    s.new_connection()
    assert s.take_keyframe_wanted() and not s.take_keyframe_wanted()
    assert not s.admit(Packet(PacketKind.MOTION, 0, b""))  # old segment: not on this link
    k = Packet(PacketKind.KEYFRAME, 1, b"")
    assert s.admit(k)
    s.on_sent(None, 10)
    s.on_sent(k, 100)
    assert s.admit(Packet(PacketKind.MOTION, 2, b""))
    assert s.stats.frames_sent == 1 and s.stats.keyframes_sent == 1
    assert s.stats.frames_not_sent == 1


def test_sender_answers_requests_unless_a_key_frame_is_on_its_way():
    s = SenderSession(Fraction(25))
    s.new_connection()
    s.take_keyframe_wanted()
    assert not s.on_keyframe_request(packets_seen=0)  # the first key frame is being made
    k = Packet(PacketKind.KEYFRAME, 0, b"")
    s.admit(k)
    s.on_sent(k, 100)  # packet 0 on this connection
    assert not s.on_keyframe_request(packets_seen=0)  # the join request: key frame in flight
    assert not s.take_keyframe_wanted()
    for pts in range(1, 5):
        s.on_sent(Packet(PacketKind.MOTION, pts, b""), 4)
    assert s.on_keyframe_request(packets_seen=3)  # damage after the key frame arrived
    assert s.take_keyframe_wanted()


def test_sender_queue_overflow_resyncs_with_a_key_frame():
    s = SenderSession(Fraction(25))
    s.new_connection()
    s.take_keyframe_wanted()
    s.admit(Packet(PacketKind.KEYFRAME, 0, b""))
    s.on_dropped(7)
    assert s.take_keyframe_wanted()
    assert not s.admit(Packet(PacketKind.MOTION, 8, b""))
    assert s.stats.frames_not_sent == 8


def test_drop_queue_is_bounded_and_drops_stale_items():
    q: DropQueue[int] = DropQueue(3)
    assert [q.put(i) for i in range(3)] == [[], [], []]
    assert q.put(3) == [0, 1, 2]
    assert len(q) == 1 and q.take_lost() == 3 and q.take_lost() == 0
    assert q.get(timeout=0) == 3
    assert q.get(timeout=0.01) is None
    q.put(4)
    q.close()
    assert q.get() == 4 and q.get() is CLOSED
    assert q.put(5) == [5]  # closed: nothing more goes in


def test_pacer_holds_the_frame_rate_and_restarts_when_late():
    clock = FakeClock()
    p = Pacer(Fraction(25), clock=clock, sleep=clock.sleep)
    start = clock()
    for _ in range(26):
        p.wait()
    assert clock() - start == pytest.approx(1.0)
    clock.t += 0.5  # a slow encoder
    p.wait()
    t = clock()
    p.wait()
    assert clock() - t == pytest.approx(0.04) and p.late_restarts == 1
