"""Loopback fixtures: a real gRPC receiver on a free port, real frames and real packets."""

from __future__ import annotations

import io
from fractions import Fraction

import grpc
import pytest

from codec.bitstream import AgcReader
from transport import gracecall_pb2_grpc as pb_grpc
from transport.receiver import Receiver, ReceiverConfig


@pytest.fixture(scope="session")
def source_frames(example_clip) -> list:
    """The 30 frames (640x480 RGB, 25 fps) of the example clip."""
    from codec.video import read_frames

    return list(read_frames(example_clip))


@pytest.fixture(scope="session")
def agc_stream(example_clip, tmp_path_factory) -> tuple[bytes, list[bytes]]:
    """(header bytes, packet bytes) of the example clip's first 20 frames, END excluded,
    packed as a call sends them: a frame a packet (no MOTION_GROUP), each key frame shown
    (no REFERENCE)."""
    from codec.commands import encode_file

    path = tmp_path_factory.mktemp("agc") / "clip.agc"
    encode_file(example_clip, path, max_frames=20, motion_group=1, key_search=0)
    data = path.read_bytes()
    reader = AgcReader(io.BytesIO(data))
    packets = [p.to_bytes() for p in reader]
    header = reader.header.to_bytes()
    assert data.startswith(header)
    return header, packets


def make_encoder():
    from encoder.encoder import Encoder, EncoderConfig

    return Encoder(EncoderConfig(), Fraction(25), 640, 480)


@pytest.fixture
def encoder_factory():
    return make_encoder


@pytest.fixture
def start_receiver():
    """start_receiver(**config) -> a started Receiver on a free loopback port; all stopped
    at the end of the test."""
    started: list[Receiver] = []

    def start(**config) -> Receiver:
        receiver = Receiver(ReceiverConfig(**config))
        receiver.start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


def raw_call(port: int, messages, token: str | None = None, timeout: float = 10.0) -> list:
    """A bare client: sends `messages` (pb.Media), returns the receiver's Control messages.
    Raises grpc.RpcError when the receiver ends the call with an error."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GraceCallStub(channel)
        metadata = [("authorization", f"Bearer {token}")] if token else []
        return list(stub.Call(iter(messages), metadata=metadata, timeout=timeout))


@pytest.fixture
def raw():
    return raw_call
