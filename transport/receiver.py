"""The receiving end of a live call: a gRPC server that decodes in real time, records an MP4
and/or shows a window, and answers on the back channel (key-frame requests, stats).

    receiver = Receiver(ReceiverConfig(port=50051, record="call.mp4"))
    port = receiver.start()
    receiver.wait(max_calls=1)
    receiver.stop()

One call at a time. Security: a token (gRPC metadata `authorization: Bearer <token>`) is
checked by an interceptor before the call reaches any decoding; without a token the server
only listens on loopback. See docs/transport.md.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hmac
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import grpc
import numpy as np

from codec.bitstream import Header
from codec.errors import BitstreamError, GraceError, OutputError, UnsupportedVersionError
from codec.fileio import check_writable

from . import TransportError
from . import gracecall_pb2 as pb
from . import gracecall_pb2_grpc as pb_grpc
from .session import CLOSED, CallStats, DropQueue, LiveDecoder, ReceiverSession

log = logging.getLogger("gracecodec.transport")

MAX_MESSAGE_BYTES = 1 << 20  # a 256x256 key frame is a few KB; the .agc limit is far above
OVERSIZE_HEADROOM = 64 * 1024
AUTH_METADATA_KEY = "authorization"


@dataclasses.dataclass(frozen=True)
class ReceiverConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port (start() returns it)
    token: str | None = None
    tls_cert: str | None = None  # PEM certificate chain
    tls_key: str | None = None  # PEM private key
    record: str | None = None  # MP4 path; the second call records to <stem>-2<suffix>, ...
    display: bool = False
    backend: str | None = None  # generator backend (default: the one the header names)
    max_message_bytes: int = MAX_MESSAGE_BYTES
    queue_packets: int = 50  # received packets waiting for the decoder (2 s at 25 fps)
    max_backlog: int = 2  # more frames queued behind one than this: it is stale
    stats_interval: float = 1.0  # seconds between stats messages to the sender
    log_interval: float = 5.0  # seconds between live stats lines in the log


class Sink:
    """Where shown frames go. `skip()` marks a frame that was received but not shown."""

    def show(self, frame: np.ndarray) -> None: ...

    def skip(self) -> None: ...

    def close(self) -> None: ...


class Recorder(Sink):
    """Records shown frames to an MP4 at the stream's rate; a skipped frame repeats the
    last one so the recording keeps real time. The file appears on close (atomic)."""

    def __init__(self, path: str | Path, header: Header) -> None:
        from codec.video import VideoWriter

        self.writer = VideoWriter(path, header.fps, header.width, header.height)
        self.path = Path(path)
        self.frames = 0
        self._last: np.ndarray | None = None

    def show(self, frame: np.ndarray) -> None:
        self.writer.write(frame)
        self._last = frame
        self.frames += 1

    def skip(self) -> None:
        if self._last is not None:
            self.show(self._last)

    def close(self) -> None:
        if self.frames == 0:
            with contextlib.suppress(OutputError):
                self.writer.close()  # no frame: it raises and leaves no file behind
            return
        self.writer.close()
        log.info("recorded %d frames to %s", self.frames, self.path)


class Window(Sink):
    """An OpenCV window."""

    def __init__(self, title: str = "gracecodec") -> None:
        self.title = title
        check_display(title)

    def show(self, frame: np.ndarray) -> None:
        import cv2

        cv2.imshow(self.title, cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        cv2.waitKey(1)

    def close(self) -> None:
        import cv2

        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass  # already gone (closed by the user)


def check_display(title: str = "gracecodec") -> None:
    """Opens a window once; raises OutputError where OpenCV cannot show one."""
    import cv2

    try:
        cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE)
    except cv2.error as e:
        reason = (getattr(e, "err", "") or str(e)).split(".")[0].strip()
        raise OutputError(
            "--display: OpenCV cannot open a window here (no display, or an OpenCV build "
            f"without GUI such as opencv-python-headless): {reason}; use --record instead"
        ) from None


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name or a wildcard: not provably loopback


def _address(host: str, port: int) -> str:
    host = host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_bindable(host: str, port: int) -> None:
    """A plain bind first, for a one-line error (gRPC's own failure also logs a C++ line)."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise TransportError(f"cannot listen on {host}: {e.strerror}") from None
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
            try:
                s.bind(sockaddr)
            except OSError as e:
                raise TransportError(
                    f"cannot listen on {_address(host, port)}: {e.strerror}"
                ) from None


def _read_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise TransportError(f"cannot read the {what} {path}: {e.strerror or e}") from None


class _TokenCheck(grpc.ServerInterceptor):
    """Rejects a call whose metadata lacks the token, before any handler runs."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

        def deny(request_iterator, context):
            log.warning("refused a call from %s: wrong or missing token", context.peer())
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "wrong or missing token")

        self._deny = grpc.stream_stream_rpc_method_handler(deny)

    def intercept_service(self, continuation, handler_call_details):
        got = dict(handler_call_details.invocation_metadata or ()).get(AUTH_METADATA_KEY, "")
        if isinstance(got, bytes | bytearray):
            got = bytes(got).decode("latin-1")
        if hmac.compare_digest(got.encode("utf-8", "replace"), self._expected):
            return continuation(handler_call_details)
        return self._deny


class Receiver(pb_grpc.GraceCallServicer):
    """The gRPC server. `calls` holds the statistics of every finished call."""

    def __init__(self, config: ReceiverConfig = ReceiverConfig(), sinks=None) -> None:
        """sinks: optional callable (header) -> list[Sink] replacing record/display (tests)."""
        if not config.token and not is_loopback(config.host):
            raise TransportError(
                f"refusing to listen on {config.host}: without a token the receiver listens "
                "on loopback only; set --token (or GRACECODEC_TOKEN) to accept other addresses"
            )
        if bool(config.tls_cert) != bool(config.tls_key):
            raise TransportError("TLS needs both a certificate and its key (--tls-cert, --tls-key)")
        if config.record:
            check_writable(config.record)  # fail at start, not when the first call comes
        if config.display:
            check_display()
        self.config = config
        self.calls: list[CallStats] = []
        self.port = 0
        self._make_sinks = sinks
        self._busy = threading.Lock()
        self._done = threading.Condition()
        self._server: grpc.Server | None = None
        self._records = 0

    # --- server life cycle ---

    def start(self) -> int:
        """Binds and starts serving; returns the port."""
        c = self.config
        interceptors = [_TokenCheck(c.token)] if c.token else []
        server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="receiver"),
            interceptors=interceptors,
            options=[
                # Headroom over our own limit, so an oversize message is refused (and
                # logged) by the call itself; gRPC cuts off anything bigger still.
                ("grpc.max_receive_message_length", c.max_message_bytes + OVERSIZE_HEADROOM),
                ("grpc.max_send_message_length", c.max_message_bytes),
                ("grpc.so_reuseport", 0),  # a port in use is an error, not a shared port
            ],
        )
        pb_grpc.add_GraceCallServicer_to_server(self, server)
        address = _address(c.host, c.port)
        _check_bindable(c.host, c.port)
        try:
            if c.tls_cert and c.tls_key:
                creds = grpc.ssl_server_credentials(
                    [(_read_file(c.tls_key, "TLS key"), _read_file(c.tls_cert, "TLS certificate"))]
                )
                port = server.add_secure_port(address, creds)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError:
            raise TransportError(f"cannot listen on {address}: address not available") from None
        if port == 0:
            raise TransportError(f"cannot listen on {address}: address in use or not available")
        if c.token and not c.tls_cert and not is_loopback(c.host):
            log.warning("no TLS: the token and the video travel in clear text (use --tls-cert)")
        self._warm_up()
        server.start()
        self._server, self.port = server, port
        log.info("listening on %s (%s)", _address(c.host, port), "TLS" if c.tls_cert else "no TLS")
        return port

    def _warm_up(self) -> None:
        """Loads the decoder's modules and models once now: done at the first call, it
        takes a few hundred ms while packets queue up, and the first frames come late."""
        from codec.motion import MotionConfig, default_shape_model

        motion = MotionConfig().to_bytes(default_shape_model())
        header = Header(256, 256, Fraction(25), "warp", motion_params=motion)
        try:
            self._decoder(header)
        except GraceError as e:  # a backend for other models: it loads at the call
            log.debug("decoder warm-up skipped: %s", e)

    def stop(self, grace: float | None = None) -> None:
        """Stops serving; an active call ends and its recording is finalised."""
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
            # The call's own thread finalises its recording; wait for it (bounded).
            if self._busy.acquire(timeout=10):
                self._busy.release()

    def wait(self, max_calls: int | None = None, timeout: float | None = None) -> bool:
        """Blocks until `max_calls` calls have ended (forever if None); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._done:
            while max_calls is None or len(self.calls) < max_calls:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._done.wait(0.5 if left is None else min(left, 0.5))
        return True

    # --- the call ---

    def Call(self, request_iterator, context) -> Iterator[pb.Control]:
        peer = context.peer()
        if not self._busy.acquire(blocking=False):
            log.warning("refused a call from %s: busy with another call", peer)
            context.abort(grpc.StatusCode.UNAVAILABLE, "receiver busy with another call")
        try:
            log.info("call from %s", peer)
            yield from self._call(request_iterator, context, peer)
        finally:
            self._busy.release()

    def _call(self, request_iterator, context, peer: str) -> Iterator[pb.Control]:
        c = self.config
        queue: DropQueue[pb.Media] = DropQueue(c.queue_packets)
        session = ReceiverSession(self._decoder)
        sinks: list[Sink] = []
        ending = "the sender disconnected"
        reader = threading.Thread(
            target=_read_requests,
            args=(request_iterator, queue, c.max_message_bytes),
            daemon=True,
            name="reader",
        )
        reader.start()
        next_stats = next_log = time.monotonic()
        try:
            while True:
                if not context.is_active():
                    ending = "the call was cancelled"
                    break
                msg = queue.get(timeout=0.05)
                lost = queue.take_lost()
                if lost:
                    log.warning("receiver behind: dropped %d queued packets", lost)
                    session.on_reset(lost)
                if msg is CLOSED:
                    ending = "the sender hung up" if session.ended else ending
                    break
                if isinstance(msg, _Oversize):
                    raise _Refused(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"a message of {msg.size} bytes exceeds the limit of "
                        f"{c.max_message_bytes} bytes",
                    )
                if isinstance(msg, pb.Media):
                    if msg.WhichOneof("body") == "header":
                        sinks = self._on_header(session, msg.header)
                    else:
                        self._on_packet(session, queue, msg, sinks)
                for reason, seen in session.poll_requests():
                    log.info("asking for a key frame (%s)", reason.name.lower())
                    request = pb.KeyframeRequest(reason=int(reason), packets_seen=seen)
                    yield pb.Control(keyframe_request=request)
                now = time.monotonic()
                if now >= next_stats:
                    next_stats = now + c.stats_interval
                    yield pb.Control(stats=stats_message(session.snapshot()))
                if now >= next_log:
                    next_log = now + c.log_interval
                    if session.header is not None:
                        log.info("live: %s", session.snapshot().summary("receiver"))
            yield pb.Control(stats=stats_message(session.snapshot(), final=True))
        except _Refused as e:
            ending = f"refused: {e.message}"
            log.warning("refused a call from %s: %s", peer, e.message)
            context.abort(e.code, e.message)
        finally:
            queue.close()
            stats = session.snapshot()
            try:
                for sink in sinks:
                    sink.close()
            finally:
                log.info("call from %s ended (%s): %s", peer, ending, stats.summary("receiver"))
                with self._done:
                    self.calls.append(stats)
                    self._done.notify_all()

    def _decoder(self, header: Header) -> LiveDecoder:
        from codec.decoder import Decoder

        return LiveDecoder(Decoder(header, self.config.backend))

    def _on_header(self, session: ReceiverSession, data: bytes) -> list[Sink]:
        try:
            header = session.on_header(data)
        except UnsupportedVersionError as e:
            raise _Refused(grpc.StatusCode.FAILED_PRECONDITION, str(e)) from None
        except BitstreamError as e:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"bad stream header: {e}") from None
        except GraceError as e:  # the stream's model: no backend here decodes it
            raise _Refused(grpc.StatusCode.FAILED_PRECONDITION, str(e)) from None
        log.info(
            "stream %dx%d at %s fps, model %r",
            header.width,
            header.height,
            header.fps,
            header.model_id,
        )
        return self._sinks(header)

    def _sinks(self, header: Header) -> list[Sink]:
        if self._make_sinks is not None:
            return list(self._make_sinks(header))
        sinks: list[Sink] = []
        if self.config.record:
            self._records += 1
            path = Path(self.config.record)
            if self._records > 1:
                path = path.with_name(f"{path.stem}-{self._records}{path.suffix}")
            sinks.append(Recorder(path, header))
        if self.config.display:
            sinks.append(Window())
        return sinks

    def _on_packet(
        self, session: ReceiverSession, queue: DropQueue, msg: pb.Media, sinks: list[Sink]
    ) -> None:
        if session.header is None:
            raise _Refused(
                grpc.StatusCode.INVALID_ARGUMENT, "the first message must carry the header"
            )
        stale = len(queue) > self.config.max_backlog
        if stale:
            log.debug("behind: %d packets queued, frame not rendered", len(queue))
        frame = session.on_packet(msg.packet, msg.capture_time_us, stale=stale)
        if session.last_error:
            log.warning("damaged packet: %s", session.last_error)
            session.last_error = ""
        if frame is not None:
            for sink in sinks:
                sink.show(frame)
        elif session.was_frame:
            for sink in sinks:
                sink.skip()


class _Refused(Exception):
    """Ends a call with a gRPC status (raised inside the call loop, turned into an abort)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class _Oversize:
    def __init__(self, size: int) -> None:
        self.size = size


def _read_requests(request_iterator, queue: DropQueue, max_bytes: int) -> None:
    """Moves incoming messages into the bounded queue, so the network never waits on the
    decoder; an overflow empties the queue and the session asks for a key frame."""
    try:
        for msg in request_iterator:
            size = msg.ByteSize()
            if size > max_bytes:
                queue.put(_Oversize(size))  # the call ends: what it drops does not matter
                return
            queue.put(msg)
    except grpc.RpcError as e:
        log.info("call stream ended: %s", _status_text(e))
    finally:
        queue.close()


def _status_text(e: grpc.RpcError) -> str:
    code = e.code() if hasattr(e, "code") else None
    details = e.details() if hasattr(e, "details") else str(e)
    return f"{code.name if code else 'error'}: {details}"


def stats_message(s: CallStats, final: bool = False) -> pb.Stats:
    return pb.Stats(
        frames_received=s.frames_received,
        frames_shown=s.frames_shown,
        frames_dropped=s.frames_dropped,
        bytes_received=s.bytes_total,
        kbps=s.kbps,
        latency_median_ms=s.latency_median_ms or 0.0,
        latency_p95_ms=s.latency_p95_ms or 0.0,
        fps_shown=s.fps_shown,
        keyframe_requests=s.keyframe_requests,
        longest_stall_ms=s.longest_stall_ms,
        final=final,
    )
