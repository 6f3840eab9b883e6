"""Live calls on loopback with a real gRPC server and real packets, and the faults they survive."""

from __future__ import annotations

import itertools
import logging
import re
import shutil
import socket
import subprocess
import threading
import time
from fractions import Fraction

import grpc
import pytest

from codec.video import probe_video
from transport import TransportError
from transport import gracecall_pb2 as pb
from transport import gracecall_pb2_grpc as pb_grpc
from transport.receiver import Receiver, ReceiverConfig, Sink
from transport.sender import Sender, SenderConfig


def call(port: int, encoder, frames, **config) -> Sender:
    """Runs a whole call; returns the Sender (its stats() include the receiver's report)."""
    sender = Sender(SenderConfig(f"127.0.0.1:{port}", **config), encoder)
    sender.run(frames)
    return sender


def test_call_end_to_end_records_a_playable_mp4(
    start_receiver, source_frames, encoder_factory, tmp_path
):
    out = tmp_path / "call.mp4"
    receiver = start_receiver(record=str(out))
    sender = call(receiver.port, encoder_factory(), source_frames)
    assert receiver.wait(1, timeout=5)
    sent, got = sender.stats(), receiver.calls[0]
    assert sent.frames_sent == len(source_frames) == got.frames_received == got.frames_sent
    # Every frame shown, but one or two a loaded machine may render late and skip as stale.
    assert got.frames_shown + got.frames_dropped == got.frames_received
    assert got.frames_dropped <= 2 and got.keyframe_requests == 1
    assert sent.frames_received == got.frames_received  # the final report reached the sender
    assert sent.keyframes_sent == 1 and sent.reconnects == 0
    assert got.latency_median_ms is not None and got.latency_p95_ms >= got.latency_median_ms
    assert got.kbps > 0 and got.fps_shown > 0
    info = probe_video(out)
    assert (info.width, info.height, info.frame_count) == (256, 256, len(source_frames))
    assert info.fps == 25


def test_low_pass_updates_travel_without_counting_as_frames(
    start_receiver, source_frames, tmp_path
):
    """LOWPASS packets reach the receiver's decoder; they are neither frames sent nor
    frames repeated in the recording."""
    from encoder.encoder import Encoder, EncoderConfig

    out = tmp_path / "lp.mp4"
    receiver = start_receiver(record=str(out))
    config = EncoderConfig(lowpass_interval=4, lowpass_min_gain=0)  # every update
    encoder = Encoder(config, Fraction(25), 640, 480)
    call(receiver.port, encoder, source_frames)
    assert receiver.wait(1, timeout=5)
    got = receiver.calls[0]
    assert got.frames_sent == got.frames_received == len(source_frames)
    assert probe_video(out).frame_count == len(source_frames)


def test_wrong_token_is_unauthenticated_before_any_decoding(
    start_receiver, agc_stream, raw, encoder_factory, source_frames, caplog
):
    header, packets = agc_stream
    receiver = start_receiver(token="s3cret")
    messages = [pb.Media(header=header), pb.Media(packet=packets[0])]
    with caplog.at_level(logging.WARNING, "gracecodec.transport"):
        for token in ("wrong", None):
            with pytest.raises(grpc.RpcError) as e:
                raw(receiver.port, messages, token=token)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "wrong or missing token" in caplog.text
    assert receiver.calls == []  # the handler never ran
    with pytest.raises(TransportError, match="wrong or missing token"):
        call(receiver.port, encoder_factory(), source_frames, token="wrong")
    controls = raw(receiver.port, messages, token="s3cret")
    assert controls[-1].stats.final and controls[-1].stats.frames_shown == 1


def test_oversize_message_is_rejected(start_receiver, agc_stream, raw, caplog):
    header, _ = agc_stream
    receiver = start_receiver(max_message_bytes=64 * 1024)
    big = pb.Media(packet=bytes(100 * 1024))
    with caplog.at_level(logging.INFO, "gracecodec.transport"):
        with pytest.raises(grpc.RpcError) as e:
            raw(receiver.port, [pb.Media(header=header), big])
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "exceeds the limit of 65536 bytes" in e.value.details()
    assert receiver.wait(1, timeout=5)
    assert re.search(r"refused a call from .*: a message of \d+ bytes exceeds", caplog.text)
    huge = pb.Media(packet=bytes(200 * 1024))  # past gRPC's own cut-off too
    with pytest.raises(grpc.RpcError) as e:
        raw(receiver.port, [pb.Media(header=header), huge])
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_newer_major_version_is_a_clear_error_and_a_clean_end(
    start_receiver, agc_stream, raw, encoder_factory, source_frames
):
    header, packets = agc_stream
    newer = bytearray(header)
    newer[4] = 4  # the major version byte after the magic
    receiver = start_receiver()
    with pytest.raises(grpc.RpcError) as e:
        raw(receiver.port, [pb.Media(header=bytes(newer)), pb.Media(packet=packets[0])])
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "version 4.0 is not supported" in e.value.details()

    class NewerHeader:
        def __init__(self, h) -> None:
            self.fps, self._h = h.fps, h

        def to_bytes(self) -> bytes:
            b = bytearray(self._h.to_bytes())
            b[4] = 4
            return bytes(b)

    encoder = encoder_factory()
    encoder.header = NewerHeader(encoder.header)
    with pytest.raises(TransportError, match="version 4.0 is not supported"):
        call(receiver.port, encoder, source_frames)
    # The receiver ended those calls cleanly and takes the next one.
    controls = raw(receiver.port, [pb.Media(header=header), pb.Media(packet=packets[0])])
    assert controls[-1].stats.frames_shown == 1
    assert receiver.wait(3, timeout=5)


def test_corrupted_packet_asks_for_a_key_frame_and_carries_on(
    start_receiver, encoder_factory, source_frames
):
    receiver = start_receiver()
    damaged = 8

    def tamper(index: int, data: bytes) -> bytes:
        return data[:-1] + bytes([data[-1] ^ 0xFF]) if index == damaged else data

    sender = Sender(SenderConfig(f"127.0.0.1:{receiver.port}"), encoder_factory(), tamper=tamper)
    sender.run(source_frames)
    assert receiver.wait(1, timeout=5)
    got, sent = receiver.calls[0], sender.stats()
    assert got.keyframe_requests == 2  # join, then the damage
    assert sent.keyframes_sent == 2  # the join was answered by the first key frame in flight
    assert got.frames_received == sent.frames_sent
    # Lost: the damaged frame and those until the key frame (request, next frame, transit;
    # usually 2-3, more when the machine is loaded).
    assert 1 <= got.frames_dropped <= 10
    assert got.frames_shown == got.frames_received - got.frames_dropped > damaged


class SlowSink(Sink):
    def __init__(self) -> None:
        self.shown = 0

    def show(self, frame) -> None:
        time.sleep(0.1)  # a receiver at 10 fps
        self.shown += 1


def test_slow_receiver_drops_stale_frames_and_keeps_decoding(encoder_factory, source_frames):
    sink = SlowSink()
    receiver = Receiver(ReceiverConfig(), sinks=lambda header: [sink])
    receiver.start()
    try:
        sender = call(receiver.port, encoder_factory(), source_frames)
        assert receiver.wait(1, timeout=10)
    finally:
        receiver.stop()
    got = receiver.calls[0]
    assert got.frames_received == sender.stats().frames_sent
    assert got.frames_dropped > 5 and got.frames_shown == sink.shown
    assert got.frames_shown + got.frames_dropped == got.frames_received
    assert got.keyframe_requests == 1  # only the join: stale frames are not damage


def test_receiver_restart_mid_call_resumes_from_a_key_frame(
    start_receiver, encoder_factory, source_frames, tmp_path
):
    first = start_receiver()
    port = first.port
    frames = list(itertools.islice(itertools.cycle(source_frames), 75))  # 3 s
    sender = Sender(SenderConfig(f"127.0.0.1:{port}", backoff_initial=0.05), encoder_factory())
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(stats=sender.run(frames)))
    thread.start()
    time.sleep(1.0)
    first.stop()  # the receiver goes away mid-call (its recording would be finalised)
    time.sleep(0.3)
    second = Receiver(ReceiverConfig(port=port, record=str(tmp_path / "after.mp4")))
    second.start()
    try:
        thread.join(timeout=10)
        assert second.wait(1, timeout=5)
    finally:
        second.stop()
    stats = result["stats"]
    before, after = first.calls[0], second.calls[0]
    assert stats.reconnects == 1 and stats.frames_not_sent > 0
    assert before.frames_shown > 0
    # The new receiver starts on a fresh key frame: no damage, every frame shown (but one
    # or two a loaded machine may show late and skip as stale).
    assert after.frames_received > 10 and after.frames_dropped <= 2
    assert after.keyframe_requests == 1  # its join, no damage
    assert stats.keyframes_sent >= 2
    assert probe_video(tmp_path / "after.mp4").frame_count == after.frames_shown


def test_sender_disconnect_finalises_a_playable_mp4(start_receiver, agc_stream, tmp_path):
    header, packets = agc_stream
    out = tmp_path / "call.mp4"
    receiver = start_receiver(record=str(out))
    hold = threading.Event()

    def messages():
        yield pb.Media(header=header)
        for p in packets[:12]:
            time.sleep(0.04)  # 25 fps
            yield pb.Media(packet=p)
        hold.wait(10)  # then the sender vanishes without END

    with grpc.insecure_channel(f"127.0.0.1:{receiver.port}") as channel:
        responses = pb_grpc.GraceCallStub(channel).Call(messages())
        deadline = time.monotonic() + 5
        for control in responses:  # stats every second: wait until all 12 frames arrived
            if control.stats.frames_received == 12 or time.monotonic() > deadline:
                break
        responses.cancel()
        hold.set()
    assert receiver.wait(1, timeout=5)
    assert receiver.calls[0].frames_received == 12
    info = probe_video(out)  # frames shown, each late one standing in for the frame it replaced
    assert (info.width, info.height, info.frame_count) == (256, 256, 12)


def test_without_a_token_the_receiver_only_listens_on_loopback():
    with pytest.raises(TransportError, match="refusing to listen on 0.0.0.0"):
        Receiver(ReceiverConfig(host="0.0.0.0"))
    with pytest.raises(TransportError, match="refusing to listen on example.org"):
        Receiver(ReceiverConfig(host="example.org"))
    Receiver(ReceiverConfig(host="0.0.0.0", token="t"))  # allowed with a token
    Receiver(ReceiverConfig(host="::1"))


def test_port_in_use_is_a_clear_error(start_receiver):
    first = start_receiver()
    with pytest.raises(TransportError, match=f"cannot listen on 127.0.0.1:{first.port}: "):
        Receiver(ReceiverConfig(port=first.port)).start()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_and_token(start_receiver, agc_stream, encoder_factory, source_frames, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        + ["-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1"]
        + ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    header, packets = agc_stream
    receiver = start_receiver(token="t", tls_cert=str(cert), tls_key=str(key))
    creds = grpc.ssl_channel_credentials(cert.read_bytes())
    with grpc.secure_channel(f"localhost:{receiver.port}", creds) as channel:
        stub = pb_grpc.GraceCallStub(channel)
        messages = [pb.Media(header=header)] + [pb.Media(packet=p) for p in packets[:5]]
        controls = list(stub.Call(iter(messages), metadata=[("authorization", "Bearer t")]))
    # A burst (not paced): the key frame and the newest frames are shown, stale ones dropped.
    assert controls[-1].stats.final and controls[-1].stats.frames_received == 5
    with grpc.insecure_channel(f"127.0.0.1:{receiver.port}") as channel:  # plain text: no
        with pytest.raises(grpc.RpcError) as e:
            list(pb_grpc.GraceCallStub(channel).Call(iter(messages), timeout=3))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    config = SenderConfig(f"localhost:{receiver.port}", token="t", tls_ca=str(cert))
    sender = Sender(config, encoder_factory())
    sender.run(source_frames[:10])
    assert sender.stats().frames_received == sender.stats().frames_sent == 10


def test_busy_and_unreachable_receivers(
    start_receiver, agc_stream, raw, encoder_factory, source_frames
):
    header, _ = agc_stream
    receiver = start_receiver()
    hold = threading.Event()

    def first_call():
        yield pb.Media(header=header)
        hold.wait(5)

    with grpc.insecure_channel(f"127.0.0.1:{receiver.port}") as channel:
        responses = pb_grpc.GraceCallStub(channel).Call(first_call())
        assert next(responses).keyframe_request.reason == pb.KeyframeRequest.JOIN
        with pytest.raises(grpc.RpcError) as e:
            raw(receiver.port, [pb.Media(header=header)])
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "busy" in e.value.details()
        hold.set()
        responses.cancel()

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = SenderConfig(f"127.0.0.1:{port}", connect_timeout=0.2, give_up_after=0.5)
    with pytest.raises(TransportError, match="cannot reach the receiver"):
        Sender(config, encoder_factory()).run(source_frames)
