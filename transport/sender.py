"""The sending end of a live call: captures (or reads) frames at their rate, encodes them and
streams the packets to a receiver over gRPC, answering its key-frame requests.

    sender = Sender(SenderConfig("127.0.0.1:50051"), encoder)
    stats = sender.run(frames)      # frames: uint8 (H, W, 3) RGB at encoder.header.fps

Two threads: the caller's thread paces, encodes and queues packets (never blocking on the
network); a link thread holds the gRPC stream, reconnects with backoff when it breaks (each
connection starts with the header and a fresh key frame) and reads the back channel.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import grpc
import numpy as np

from codec import binary
from codec.bitstream import Packet, PacketKind
from codec.errors import InputError

from . import TransportError
from . import gracecall_pb2 as pb
from . import gracecall_pb2_grpc as pb_grpc
from .receiver import AUTH_METADATA_KEY, MAX_MESSAGE_BYTES
from .session import CLOSED, FRAME_KINDS, CallStats, DropQueue, Pacer, SenderSession

log = logging.getLogger("gracecodec.transport")

# Statuses after which reconnecting cannot help: the receiver refused this stream.
_FATAL = {
    grpc.StatusCode.UNAUTHENTICATED: "the receiver refused the call: wrong or missing token "
    "(set --token or GRACECODEC_TOKEN)",
    grpc.StatusCode.PERMISSION_DENIED: "the receiver refused the call",
    grpc.StatusCode.FAILED_PRECONDITION: "the receiver cannot decode this stream",
    grpc.StatusCode.INVALID_ARGUMENT: "the receiver rejected the stream",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "message over the size limit",
    grpc.StatusCode.UNIMPLEMENTED: "the server is not a gracecodec receiver",
}

_HANGUP = object()  # queued after the last packet: send END, then close the stream


@dataclasses.dataclass(frozen=True)
class SenderConfig:
    target: str  # HOST:PORT
    token: str | None = None
    tls_ca: str | None = None  # PEM root certificate(s) that signed the receiver's certificate
    max_message_bytes: int = MAX_MESSAGE_BYTES
    queue_packets: int = 25  # packets waiting for the network (1 s at 25 fps)
    connect_timeout: float = 2.0  # seconds one connection attempt may take
    give_up_after: float = 20.0  # seconds without a connection before the call fails
    backoff_initial: float = 0.1
    backoff_max: float = 2.0
    hangup_timeout: float = 3.0  # seconds to wait for the receiver's final stats


def parse_target(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TransportError(f"bad receiver address {target!r}: expected HOST:PORT")
    return host, int(port)


class _Connection:
    """One gRPC stream: its outgoing queue, and the request iterator that drains it."""

    def __init__(self, session: SenderSession, header: bytes, capacity: int) -> None:
        self.session = session
        self.queue: DropQueue = DropQueue(capacity)
        self.header = header

    def requests(self) -> Iterator[pb.Media]:
        self.session.on_sent(None, len(self.header))
        yield pb.Media(header=self.header)
        while True:
            item = self.queue.get(timeout=1.0)
            if item is None:
                continue
            if item is CLOSED:
                return
            if item is _HANGUP:
                count = self.session.packets_on_connection
                end = Packet(PacketKind.END, 0, binary.varint(count)).to_bytes()
                self.session.on_sent(Packet(PacketKind.END, 0, b""), len(end))
                yield pb.Media(packet=end)
                return
            packet, data, capture_us = item
            self.session.on_sent(packet, len(data))
            yield pb.Media(packet=data, capture_time_us=capture_us)


class Sender:
    """Streams an encoder's packets to a receiver. `tamper(index, data) -> data` alters the
    bytes of the index-th packet sent (fault-injection tests only)."""

    def __init__(
        self,
        config: SenderConfig,
        encoder,  # encoder.encoder.Encoder, or anything with header / encode / flush / request_keyframe
        *,
        tamper: Callable[[int, bytes], bytes] | None = None,
    ) -> None:
        parse_target(config.target)
        self.config = config
        self.encoder = encoder
        self.fps = Fraction(encoder.header.fps)
        self.session = SenderSession(self.fps)
        self.tamper = tamper
        self.receiver_stats: pb.Stats | None = None
        self._header = encoder.header.to_bytes()
        self._conn: _Connection | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._hung_up = threading.Event()
        self._connected = threading.Event()
        self._fatal: TransportError | None = None
        self._link: threading.Thread | None = None
        self._capture_us: dict[int, int] = {}
        self._frames_in = 0
        self._packets_out = 0

    # --- the capture side (the caller's thread) ---

    def run(
        self,
        frames: Iterable[np.ndarray],
        *,
        max_seconds: float | None = None,
        paced: bool = True,
    ) -> CallStats:
        """Sends `frames` (paced at the stream's fps unless the source paces itself), then
        hangs up. Returns the call's statistics, with the receiver's last report."""
        self._link = threading.Thread(target=self._link_main, daemon=True, name="sender-link")
        self._link.start()
        pacer = Pacer(self.fps)
        try:
            self._wait_connected()  # a file starts playing once the receiver is there
            start = time.monotonic()
            for frame in frames:
                if paced:
                    pacer.wait()
                self._raise_if_failed()
                if max_seconds is not None and time.monotonic() - start >= max_seconds:
                    break
                self._capture(frame)
            self._raise_if_failed()
            if self._connection() is not None:
                self._send(self.encoder.flush())
            self._hangup()
        finally:
            self._stop.set()
            with self._lock:
                conn = self._conn
            if conn is not None:
                conn.queue.close()
            self._link.join(timeout=self.config.hangup_timeout + 1)
        self._raise_if_failed()
        return self.stats()

    def stats(self) -> CallStats:
        s = dataclasses.replace(self.session.stats)
        r = self.receiver_stats
        if r is not None:
            s.frames_received, s.frames_shown = r.frames_received, r.frames_shown
            s.frames_dropped, s.fps_shown = r.frames_dropped, r.fps_shown
            s.longest_stall_ms = r.longest_stall_ms
            if r.frames_shown:
                s.latency_median_ms, s.latency_p95_ms = r.latency_median_ms, r.latency_p95_ms
        return s

    def _capture(self, frame: np.ndarray) -> None:
        capture_us = time.time_ns() // 1000
        if self._connection() is None:
            self.session.stats.frames_not_sent += 1  # reconnecting: this frame is gone
            return
        if self.session.take_keyframe_wanted():
            self.encoder.request_keyframe()
        self._capture_us[self._frames_in] = capture_us
        self._frames_in += 1
        self._send(self.encoder.encode(frame))

    def _send(self, packets: list[Packet]) -> None:
        conn = self._connection()
        for packet in packets:
            capture_us = self._capture_us.pop(packet.pts, 0)
            if conn is None or conn.queue.closed:  # the connection just broke
                self.session.stats.frames_not_sent += packet.kind in FRAME_KINDS
                continue
            if not self.session.admit(packet):
                continue
            data = packet.to_bytes()
            if self.tamper is not None:
                data = self.tamper(self._packets_out, data)
            self._packets_out += 1
            dropped = conn.queue.put((packet, data, capture_us))
            if dropped:
                log.warning("network behind: dropped %d queued packets", len(dropped))
                self.session.on_dropped(sum(1 for d in dropped if d is not _HANGUP))
        # Frames the encoder never emitted (held before the first face) must not pile up.
        if len(self._capture_us) > 500:
            for pts in sorted(self._capture_us)[:-250]:
                del self._capture_us[pts]

    def _hangup(self) -> None:
        conn = self._connection()
        if conn is None:
            return
        self._hung_up.set()
        conn.queue.put(_HANGUP)
        self._link.join(timeout=self.config.hangup_timeout)

    def _wait_connected(self) -> None:
        while not self._connected.wait(0.05):
            self._raise_if_failed()
            if self._link is None or not self._link.is_alive():
                raise TransportError(f"could not connect to {self.config.target}")

    def _connection(self) -> _Connection | None:
        with self._lock:
            return self._conn

    def _raise_if_failed(self) -> None:
        if self._fatal is not None:
            raise self._fatal

    # --- the link thread ---

    def _channel(self) -> grpc.Channel:
        c = self.config
        options = [
            ("grpc.max_send_message_length", c.max_message_bytes),
            ("grpc.max_receive_message_length", c.max_message_bytes),
            # gRPC's own reconnect backoff starts at 1 s: a restarted receiver is found sooner.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        if c.tls_ca:
            try:
                ca = Path(c.tls_ca).read_bytes()
            except OSError as e:
                raise TransportError(f"cannot read the CA file {c.tls_ca}: {e.strerror}") from None
            return grpc.secure_channel(c.target, grpc.ssl_channel_credentials(ca), options)
        return grpc.insecure_channel(c.target, options)

    def _link_main(self) -> None:
        c = self.config
        delay = c.backoff_initial
        down_since = time.monotonic()
        last_error = "no answer"
        metadata = [(AUTH_METADATA_KEY, f"Bearer {c.token}")] if c.token else []
        try:
            while not self._stop.is_set() and not self._hung_up.is_set():
                channel = self._channel()
                try:
                    grpc.channel_ready_future(channel).result(timeout=c.connect_timeout)
                except grpc.FutureTimeoutError:
                    last_error = "no answer"
                else:
                    fatal, answered, error = self._stream(channel, metadata)
                    if fatal is not None:
                        self._fatal = fatal
                        return
                    if self._hung_up.is_set() or self._stop.is_set():
                        return
                    if answered:  # a working call was lost: start the backoff afresh
                        self.session.stats.reconnects += 1
                        delay, down_since = c.backoff_initial, time.monotonic()
                    last_error = error
                finally:
                    channel.close()
                if time.monotonic() - down_since > c.give_up_after:
                    self._fatal = TransportError(
                        f"cannot reach the receiver at {c.target} "
                        f"(tried for {c.give_up_after:.0f} s; last: {last_error})"
                    )
                    return
                self._stop.wait(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, c.backoff_max)
        except TransportError as e:
            self._fatal = e

    def _stream(self, channel: grpc.Channel, metadata) -> tuple[TransportError | None, bool, str]:
        """Runs one connection until it ends. Returns (a fatal error or None, whether the
        receiver answered at all, what ended it)."""
        conn = _Connection(self.session, self._header, self.config.queue_packets)
        self.session.new_connection()
        stub = pb_grpc.GraceCallStub(channel)
        responses = stub.Call(conn.requests(), metadata=metadata)
        with self._lock:
            self._conn = conn
        answered = False
        try:
            for control in responses:
                if not answered:
                    answered = True
                    self._connected.set()
                    log.info("connected to %s", self.config.target)
                self._on_control(control)
            if not self._hung_up.is_set():
                log.warning("the receiver ended the call; reconnecting")
            return None, answered, "the receiver ended the call"
        except grpc.RpcError as e:
            code, details = e.code(), e.details()
            if code in _FATAL:
                return TransportError(f"{_FATAL[code]}: {details}"), answered, details
            if answered and not self._hung_up.is_set():
                log.warning("connection lost (%s: %s); reconnecting", code.name, details)
            return None, answered, f"{code.name}: {details}"
        finally:
            self._connected.clear()
            with self._lock:
                self._conn = None
            conn.queue.close()
            responses.cancel()

    def _on_control(self, control: pb.Control) -> None:
        which = control.WhichOneof("body")
        if which == "keyframe_request":
            request = control.keyframe_request
            if self.session.on_keyframe_request(request.packets_seen):
                reason = pb.KeyframeRequest.Reason.Name(request.reason).lower()
                log.info("the receiver asks for a key frame (%s)", reason)
        elif which == "stats":
            self.receiver_stats = control.stats


# --- sources ---------------------------------------------------------------------------------


def file_source(path: str, loop: bool = False) -> tuple[Iterator[np.ndarray], Fraction, int, int]:
    """Frames of a video file (again and again with loop), its fps, width and height."""
    from codec.video import probe_video, read_frames

    info = probe_video(path)

    def frames() -> Iterator[np.ndarray]:
        for _ in itertools.count() if loop else range(1):
            yield from read_frames(path)

    return frames(), info.fps, info.width, info.height


def camera_source(index: int) -> tuple[Iterator[np.ndarray], Fraction, int, int]:
    """Frames of an OpenCV camera (RGB), its fps (25 if it does not say), width and height."""
    import cv2

    quiet = cv2.utils.logging.LOG_LEVEL_ERROR  # our error says it; no OpenCV warnings
    previous = cv2.utils.logging.setLogLevel(quiet)
    try:
        cap = cv2.VideoCapture(index)
    finally:
        cv2.utils.logging.setLogLevel(previous)
    if not cap.isOpened():
        cap.release()
        raise InputError(f"camera {index}: cannot open it (no such camera, or no permission)")
    ok, first = cap.read()
    if not ok:
        cap.release()
        raise InputError(f"camera {index}: opened, but it gives no frames")
    fps = cap.get(cv2.CAP_PROP_FPS)
    rate = Fraction(fps).limit_denominator(1001) if 1 <= fps <= 120 else Fraction(25)

    def frames() -> Iterator[np.ndarray]:
        try:
            frame = first
            while True:
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                ok, frame = cap.read()
                if not ok:
                    return
        finally:
            cap.release()

    h, w = first.shape[:2]
    return frames(), rate, w, h


def call(
    target: str,
    *,
    input: str | None = None,
    camera: int | None = None,
    loop: bool = False,
    token: str | None = None,
    tls_ca: str | None = None,
    max_seconds: float | None = None,
) -> CallStats:
    """The `gracecodec call` command: a file (paced at its fps) or a camera to a receiver."""
    from encoder.encoder import Encoder, EncoderConfig

    config = SenderConfig(target, token=token, tls_ca=tls_ca)
    parse_target(target)
    if camera is not None:
        frames, fps, width, height = camera_source(camera)
    elif input is not None:
        frames, fps, width, height = file_source(input, loop)
    else:
        raise InputError("nothing to send: give --input or --camera")
    encoder = Encoder(EncoderConfig(), fps, width, height)
    return Sender(config, encoder).run(frames, max_seconds=max_seconds, paced=camera is None)
