"""Call logic without gRPC: the receiver's state machine, the sender's key-frame and pacing
rules, bounded queues and the statistics both ends print.

`transport.receiver` and `transport.sender` move these over gRPC; the tests drive them
directly with fake clocks and decoders. Nothing here imports grpc.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import io
import math
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Generic, Protocol, TypeVar

import numpy as np

from codec import binary
from codec.bitstream import MAX_PTS, Header, Packet, PacketKind
from codec.errors import BitstreamError, GraceError

FRAME_KINDS = (PacketKind.KEYFRAME, PacketKind.MOTION)

T = TypeVar("T")


class Reason(enum.IntEnum):
    """Why a receiver asks for a key frame (the numbers of KeyframeRequest.Reason)."""

    JOIN = 1  # it has the header but no key frame yet
    RESET = 2  # it dropped its queue (too far behind) or restarted its decoder
    DAMAGE = 3  # a packet failed its CRC or did not decode


class ReceiverState(enum.Enum):
    JOINED = "joined"  # connected, no header yet
    WAITING_KEYFRAME = "waiting for a key frame"
    DECODING = "decoding"


# --- statistics ----------------------------------------------------------------------------


class LatencyHistogram:
    """Capture-to-render latencies in 1 ms bins up to 10 s: median and p95 in constant memory."""

    BINS = 10_000

    def __init__(self) -> None:
        self.counts = np.zeros(self.BINS + 1, dtype=np.int64)  # the last bin: >= 10 s
        self.count = 0

    def add(self, ms: float) -> None:
        self.counts[int(min(max(ms, 0.0), self.BINS))] += 1
        self.count += 1

    def quantile(self, q: float) -> float | None:
        """The q-quantile in ms (nearest rank, the centre of its 1 ms bin); None when empty."""
        if self.count == 0:
            return None
        rank = max(1, math.ceil(q * self.count))
        return float(np.searchsorted(np.cumsum(self.counts), rank)) + 0.5


@dataclasses.dataclass
class CallStats:
    """What one end of a call reports. The sender copies the receiver's figures from its
    last stats message; `kbps` counts the .agc bytes (header and packets) per media second."""

    frames_sent: int = 0
    keyframes_sent: int = 0
    frames_not_sent: int = 0  # sender: skipped while disconnected or dropped by its queue
    frames_received: int = 0
    frames_shown: int = 0
    frames_dropped: int = 0  # received but not shown (stale, damaged, before a key frame)
    bytes_total: int = 0
    kbps: float = 0.0
    keyframe_requests: int = 0
    reconnects: int = 0
    latency_median_ms: float | None = None
    latency_p95_ms: float | None = None
    fps_shown: float = 0.0
    longest_stall_ms: float = 0.0

    def summary(self, side: str = "sender") -> str:
        """One line. side: "sender" or "receiver" (which counts it knows first-hand)."""
        if self.latency_median_ms is None or self.latency_p95_ms is None:
            latency = "latency n/a"
        else:
            latency = (
                f"latency capture-to-render median {self.latency_median_ms:.1f} ms, "
                f"p95 {self.latency_p95_ms:.1f} ms"
            )
        sent = f"frames sent {self.frames_sent}"
        if side == "sender":
            sent += f" ({self.keyframes_sent} key, {self.frames_not_sent} not sent)"
        tail = f"key-frame requests {self.keyframe_requests}"
        if side == "sender":
            tail += f", reconnects {self.reconnects}"
        return (
            f"{sent}, received {self.frames_received}, shown {self.frames_shown}, "
            f"dropped {self.frames_dropped}; {self.kbps:.2f} kbit/s; {latency}; "
            f"receiver {self.fps_shown:.1f} fps, longest stall {self.longest_stall_ms:.0f} ms; "
            f"{tail}"
        )


def kbps(nbytes: int, frames: int, fps: Fraction | None) -> float:
    """Bit rate over the media time the frames cover (0 before the first frame)."""
    if not frames or not fps:
        return 0.0
    return nbytes * 8 / float(frames / Fraction(fps)) / 1000


# --- a bounded queue -------------------------------------------------------------------------


class Closed:
    """Returned by `DropQueue.get` once the queue is closed and empty."""


CLOSED = Closed()


class DropQueue(Generic[T]):
    """A bounded FIFO between two threads that never blocks the writer.

    When it is full, `put` empties it first: on a continuous motion stream a gap is a gap,
    so everything queued is stale and the caller must restart from a key frame.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: collections.deque[T] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._lost = 0

    def put(self, item: T) -> list[T]:
        """Appends `item`; returns the items dropped to make room (usually none)."""
        with self._cond:
            if self._closed:
                return [item]
            dropped: list[T] = []
            if len(self._items) >= self.capacity:
                dropped = list(self._items)
                self._items.clear()
                self._lost += len(dropped)
            self._items.append(item)
            self._cond.notify()
            return dropped

    def get(self, timeout: float | None = None) -> T | Closed | None:
        """The oldest item; None after `timeout` seconds; CLOSED when closed and drained."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if self._items:
                return self._items.popleft()
            return CLOSED if self._closed else None

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def take_lost(self) -> int:
        """How many items overflows dropped since the last call."""
        with self._cond:
            lost, self._lost = self._lost, 0
            return lost

    def close(self) -> None:
        """No more items: `get` drains what is left, then returns CLOSED."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


# --- receiver --------------------------------------------------------------------------------


class FrameDecoder(Protocol):
    """What the receiver session needs from a decoder (LiveDecoder, or a fake in tests)."""

    needs_keyframe: bool

    def decode(self, packet: Packet, render: bool) -> np.ndarray | None:
        """Decodes one packet; returns its frame when rendered, else None."""
        ...


class LiveDecoder:
    """codec.decoder.Decoder for a live call: a key frame always restarts decoding, and a
    stale MOTION packet can be decoded without rendering it.

    The motion stream is entropy coded across frames, so every MOTION packet must pass
    through the motion decoder even when its frame will not be shown; only the render (the
    expensive part) is skipped (`Decoder.decode(render=False)`).
    """

    def __init__(self, decoder) -> None:  # a codec.decoder.Decoder
        self.decoder = decoder

    @property
    def needs_keyframe(self) -> bool:
        return bool(self.decoder.needs_keyframe)

    @needs_keyframe.setter
    def needs_keyframe(self, value: bool) -> None:
        self.decoder.needs_keyframe = value

    def decode(self, packet: Packet, render: bool) -> np.ndarray | None:
        d = self.decoder
        if packet.kind == PacketKind.KEYFRAME and packet.pts != d.next_pts:
            # Frames were lost (a reconnect, a dropped queue): the key frame starts afresh.
            d.needs_keyframe = True
        frames = d.decode(packet, render=render)
        return frames[0] if frames else None


def parse_header(data: bytes) -> Header:
    """The .agc header from a transport message (exactly the header bytes, nothing after)."""
    stream = io.BytesIO(data)
    header = Header.read(stream)
    if stream.read(1):
        raise BitstreamError("trailing bytes after the stream header")
    return header


class ReceiverSession:
    """The receiving end of one connection: header, packets in; frames, key-frame requests out.

    States: JOINED (no header) -> WAITING_KEYFRAME (asks for one: join, after a reset or a
    damaged packet; asks again every `rerequest_after` seconds) -> DECODING. A stale frame
    (the caller is behind) is decoded without rendering and counted as dropped.
    """

    def __init__(
        self,
        make_decoder: Callable[[Header], FrameDecoder],
        *,
        rerequest_after: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wallclock_us: Callable[[], int] = lambda: time.time_ns() // 1000,
    ) -> None:
        self.make_decoder = make_decoder
        self.rerequest_after = rerequest_after
        self.clock = clock
        self.wallclock_us = wallclock_us
        self.state = ReceiverState.JOINED
        self.header: Header | None = None
        self.decoder: FrameDecoder | None = None
        self.latency = LatencyHistogram()
        self.stats = CallStats()
        self.packets_seen = 0  # packet messages taken on this connection
        self.updates_seen = 0  # of which LOWPASS updates (packets, not frames)
        self.was_frame = False  # the last packet was a frame's (a sink repeats one not shown)
        self.ended = False  # the sender sent END (a clean hang-up)
        self.last_error = ""
        self._requests: list[tuple[Reason, int]] = []
        self._asked_at: float | None = None
        self._reason = Reason.JOIN
        self._first_shown: float | None = None
        self._last_shown: float | None = None

    def on_header(self, data: bytes) -> Header:
        """Reads the header and makes the decoder. Raises BitstreamError (including
        UnsupportedVersionError) or the decoder's GraceError: the call cannot go on."""
        if self.header is not None:
            raise BitstreamError("a second stream header in one call")
        header = parse_header(data)
        self.decoder = self.make_decoder(header)
        self.header = header
        self.stats.bytes_total += len(data)
        self._ask(Reason.JOIN)
        return header

    def on_packet(self, data: bytes, capture_us: int = 0, stale: bool = False) -> np.ndarray | None:
        """Takes one packet's bytes; returns the frame to show now, or None.

        stale: newer frames are queued behind this one, so it is decoded but not shown.
        Damage never raises: the packet is dropped and a key frame is asked for.
        """
        if self.header is None or self.decoder is None:
            raise BitstreamError("a packet arrived before the stream header")
        self.packets_seen += 1
        self.stats.bytes_total += len(data)
        self.was_frame = True  # until the packet says otherwise
        try:
            packet = Packet.from_bytes(data)
        except BitstreamError as e:
            self._count_dropped()  # most likely a frame; it cannot be told any more
            self._damaged(e)
            return None
        self.was_frame = packet.kind in FRAME_KINDS
        if packet.kind == PacketKind.END:
            # END counts the packets sent on this connection (the stream is reliable: all
            # arrived); less the LOWPASS updates, that is the receiver's "frames sent".
            self.ended = True
            try:
                sent = binary.ByteReader(packet.payload, "END").varint(MAX_PTS)
                self.stats.frames_sent = max(0, sent - self.updates_seen)
            except BitstreamError:
                pass  # a count we cannot read changes nothing else
            return None
        if packet.kind == PacketKind.LOWPASS:  # updates the decoder's state, shows nothing
            self.updates_seen += 1
            if self.state is ReceiverState.DECODING:
                try:
                    self.decoder.decode(packet, False)
                except GraceError as e:
                    self._damaged(e)
            return None
        if packet.kind in (PacketKind.MOTION_GROUP, PacketKind.REFERENCE):
            # Files group frames and search for their key frames; a call sends a frame a
            # packet, each key frame shown, so either here is a sender's mistake: its
            # frames are lost, and the call resyncs at a key frame.
            self._count_dropped()
            kind = PacketKind(packet.kind).name
            self._damaged(BitstreamError(f"{kind} at pts {packet.pts} in a live call"))
            return None
        if packet.kind not in FRAME_KINDS:
            return None  # a kind from a newer minor version: skipped, as in files
        if packet.kind == PacketKind.MOTION and self.state is not ReceiverState.DECODING:
            self._count_dropped()
            return None
        render = packet.kind == PacketKind.KEYFRAME or not stale
        try:
            frame = self.decoder.decode(packet, render)
        except GraceError as e:
            self._count_dropped()
            self._damaged(e)
            return None
        if packet.kind == PacketKind.KEYFRAME:
            self.state, self._asked_at = ReceiverState.DECODING, None
        if frame is None or (stale and packet.kind == PacketKind.MOTION):
            self._count_dropped()  # a key frame is shown even when late: it is decoded anyway
            return None
        self._count_shown(capture_us)
        return frame

    def on_reset(self, frames_lost: int) -> None:
        """The caller dropped `frames_lost` queued packets: restart from a key frame."""
        self.stats.frames_received += frames_lost
        self.stats.frames_dropped += frames_lost
        if self.decoder is not None:
            self.decoder.needs_keyframe = True
            self._ask(Reason.RESET)

    def poll_requests(self) -> list[tuple[Reason, int]]:
        """The key-frame requests to send now: (reason, packets seen when asking)."""
        if (
            self.state is ReceiverState.WAITING_KEYFRAME
            and self._asked_at is not None
            and self.clock() - self._asked_at >= self.rerequest_after
        ):
            self._requests.append((self._reason, self.packets_seen))
            self._asked_at = self.clock()
        requests, self._requests = self._requests, []
        return requests

    def snapshot(self) -> CallStats:
        """The statistics so far (a copy)."""
        s = dataclasses.replace(self.stats)
        s.kbps = kbps(s.bytes_total, s.frames_received, self.header.fps if self.header else None)
        s.latency_median_ms = self.latency.quantile(0.5)
        s.latency_p95_ms = self.latency.quantile(0.95)
        if self._first_shown is not None and self._last_shown is not None and s.frames_shown > 1:
            span = self._last_shown - self._first_shown
            s.fps_shown = (s.frames_shown - 1) / span if span > 0 else 0.0
        return s

    def _ask(self, reason: Reason) -> None:
        if self.state is ReceiverState.WAITING_KEYFRAME and reason is not Reason.JOIN:
            return  # already asked; the timer in poll_requests asks again if need be
        self.state = ReceiverState.WAITING_KEYFRAME
        self._reason, self._asked_at = reason, self.clock()
        self._requests.append((reason, self.packets_seen))
        self.stats.keyframe_requests += 1

    def _damaged(self, error: Exception) -> None:
        self.last_error = str(error)
        if self.decoder is not None:
            self.decoder.needs_keyframe = True
        self._ask(Reason.DAMAGE)

    def _count_dropped(self) -> None:
        self.stats.frames_received += 1
        self.stats.frames_dropped += 1

    def _count_shown(self, capture_us: int) -> None:
        now = self.clock()
        self.stats.frames_received += 1
        self.stats.frames_shown += 1
        if capture_us > 0:
            self.latency.add((self.wallclock_us() - capture_us) / 1000)
        if self._last_shown is not None:
            gap_ms = (now - self._last_shown) * 1000
            self.stats.longest_stall_ms = max(self.stats.longest_stall_ms, gap_ms)
        else:
            self._first_shown = now
        self._last_shown = now


# --- sender ----------------------------------------------------------------------------------


class SenderSession:
    """The sender's rules, shared by its capture thread and its connection thread.

    - Every connection starts with a key frame: MOTION packets wait until one went out.
    - A key-frame request is answered by the next captured frame (within one frame
      interval), unless a key frame is already coming: being made, or sent after the
      packets the receiver had seen.
    - A queue overflow drops the queued packets and restarts from a key frame.
    """

    def __init__(self, fps: Fraction) -> None:
        self.fps = Fraction(fps)
        self.stats = CallStats()
        self._lock = threading.Lock()
        self._key_wanted = True
        self._awaiting_key = True
        self._conn_packets = 0  # packets sent on the current connection
        self._last_key_at: int | None = None  # their index of the last key frame

    def new_connection(self) -> None:
        with self._lock:
            self._key_wanted, self._awaiting_key = True, True
            self._conn_packets, self._last_key_at = 0, None

    def on_keyframe_request(self, packets_seen: int) -> bool:
        """Returns True if the next frame must be a key frame (False: one is on its way)."""
        with self._lock:
            self.stats.keyframe_requests += 1
            if self._awaiting_key:
                return False  # a key frame is being made (new connection, after a drop)
            if self._last_key_at is not None and self._last_key_at >= packets_seen:
                return False
            self._key_wanted = True
            return True

    def take_keyframe_wanted(self) -> bool:
        """Called before encoding each frame: True once per request."""
        with self._lock:
            wanted, self._key_wanted = self._key_wanted, False
            return wanted

    def admit(self, packet: Packet) -> bool:
        """Whether a packet fresh from the encoder may be queued on this connection."""
        with self._lock:
            if packet.kind == PacketKind.KEYFRAME:
                self._awaiting_key = False
            if packet.kind in (PacketKind.MOTION, PacketKind.LOWPASS) and self._awaiting_key:
                self.stats.frames_not_sent += packet.kind == PacketKind.MOTION
                return False
            return True

    def on_dropped(self, packets: int) -> None:
        """The send queue overflowed and lost `packets`: resync with a key frame."""
        with self._lock:
            self.stats.frames_not_sent += packets
            self._key_wanted, self._awaiting_key = True, True

    def on_sent(self, packet: Packet | None, nbytes: int) -> int:
        """Counts a message handed to the transport (packet None: the header).
        Returns the number of packets sent on this connection so far."""
        with self._lock:
            self.stats.bytes_total += nbytes
            if packet is None:
                return self._conn_packets
            if packet.kind == PacketKind.KEYFRAME:
                self._last_key_at = self._conn_packets
                self.stats.keyframes_sent += 1
            if packet.kind in FRAME_KINDS:
                self.stats.frames_sent += 1
            self._conn_packets += 1
            self.stats.kbps = kbps(self.stats.bytes_total, self.stats.frames_sent, self.fps)
            return self._conn_packets

    @property
    def packets_on_connection(self) -> int:
        with self._lock:
            return self._conn_packets


class Pacer:
    """Releases frames at the capture rate: a file plays at its own fps.

    If the caller falls more than one interval behind (a slow encoder), the schedule
    restarts from now instead of bursting to catch up.
    """

    def __init__(
        self,
        fps: Fraction,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.interval = float(1 / Fraction(fps))
        self.clock, self.sleep = clock, sleep
        self._next: float | None = None
        self.late_restarts = 0

    def wait(self) -> None:
        now = self.clock()
        if self._next is None:
            self._next = now
        elif now < self._next:
            self.sleep(self._next - now)
        elif now - self._next > self.interval:
            self._next = now
            self.late_restarts += 1
        self._next += self.interval
