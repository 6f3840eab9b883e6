"""The Decoder: .agc packets in, RGB frames out.

dec = Decoder(reader.header)          # backend from the header's model, or by name
for packet in reader:
    for frame in dec.decode(packet):   # uint8 (H, W, 3) RGB
        ...
for frame in dec.decode_packets(reader):   # the same frames; lets a board runtime overlap
    ...
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from . import binary
from .bitstream import MAX_PAYLOAD_BYTES, MOTION_KINDS, Header, Packet, PacketKind, motion_chunks
from .errors import BitstreamError, GraceError
from .generators import MODEL_BACKENDS, make_generator
from .keyframe import ImageCodec, decode_image
from .lowpass import LowpassResidual
from .motion import MotionConfig, MotionDecoder, default_shape_model

RUN_FRAMES = 256  # frames handed to a generator's render_many at once (bounded memory)


def default_backend(header: Header) -> str:
    if header.model_id not in MODEL_BACKENDS:
        raise GraceError(
            f"the stream was made for model {header.model_id!r}, which no backend here "
            "decodes; choose one with --backend"
        )
    return MODEL_BACKENDS[header.model_id]


class Decoder:
    """Turns packets into frames: one per KEYFRAME or MOTION packet, one per frame of a
    MOTION_GROUP, none for a REFERENCE.

    Frames must arrive in order: a missing frame is a `BitstreamError`. After an error
    the decoder waits for the next key frame (`needs_keyframe`), which a live receiver
    requests from the sender.
    """

    def __init__(self, header: Header, backend: str | None = None):
        self.header = header
        shape_model = default_shape_model()
        self.motion = MotionDecoder(
            MotionConfig.from_bytes(header.motion_params, shape_model), shape_model, header.width
        )
        self.backend = backend or default_backend(header)
        self.generator = make_generator(self.backend, header.model_id, header.model_digest)
        self.lowpass = LowpassResidual(header.width)
        self.next_pts = 0
        self.needs_keyframe = True

    def decode(self, packet: Packet, render: bool = True) -> list[np.ndarray]:
        """Returns the frames this packet completes, in order.

        render=False decodes a MOTION packet's landmarks (the motion stream is coded across
        frames, so none may be skipped) without rendering the frame: a live receiver that
        falls behind drops stale frames this way.
        """
        if packet.kind == PacketKind.KEYFRAME:
            return [self._keyframe(packet)]
        if packet.kind == PacketKind.REFERENCE:
            self._keyframe(packet)
            return []
        if packet.kind in MOTION_KINDS:
            frames = []
            for landmarks in self._motion(packet):
                if render:
                    frames.append(self.lowpass.apply(self.generator.render(landmarks)))
            return frames
        if packet.kind == PacketKind.LOWPASS:
            self._lowpass(packet)
        return []  # unknown kinds (newer minor versions) are skipped

    def decode_packets(self, packets: Iterable[Packet]) -> Iterator[np.ndarray]:
        """Every frame of a packet sequence, in order (what `decode` gives packet by packet).

        A generator with `render_many` (the int8 / csim / board runtimes) gets the motion
        frames after each key frame in runs of up to RUN_FRAMES, so its co-processor
        schedule overlaps the ARM-side work of one frame with the engines of the next.
        A run also ends at a LOWPASS update, which holds from its frame on.
        """
        render_many = getattr(self.generator, "render_many", None)
        if render_many is None:
            for packet in packets:
                yield from self.decode(packet)
            return
        run: list[np.ndarray] = []
        for packet in packets:
            if packet.kind in MOTION_KINDS:
                run += self._motion(packet)
                if len(run) < RUN_FRAMES:
                    continue
            if run:  # before a key frame or update changes what these frames get
                yield from map(self.lowpass.apply, render_many(run))
                run = []
            if packet.kind not in MOTION_KINDS:
                yield from self.decode(packet)
        if run:
            yield from map(self.lowpass.apply, render_many(run))

    def _keyframe(self, packet: Packet) -> np.ndarray:
        """Starts a segment at a KEYFRAME (its picture is frame pts) or a REFERENCE (its
        picture, a later frame's, is only the generator's reference: frame pts comes as
        motion). Returns the decoded picture."""
        shown = packet.kind == PacketKind.KEYFRAME
        name = "KEYFRAME" if shown else "REFERENCE"
        self._check_pts(packet.pts, keyframe=True)
        r = binary.ByteReader(packet.payload, f"{name} packet")
        try:
            codec = ImageCodec(r.u8())
        except ValueError:
            raise BitstreamError(f"{name} at pts {packet.pts}: unknown image codec") from None
        lm_bytes = r.length_prefixed(MAX_PAYLOAD_BYTES)
        image = decode_image(r.take(r.remaining), codec, self.header.width, self.header.height)
        try:
            landmarks = self.motion.intra(lm_bytes)
        except GraceError:
            self.needs_keyframe = True
            raise
        self.generator.set_reference(image, landmarks)
        self.lowpass.reset()
        self.needs_keyframe = False
        self.next_pts = packet.pts + shown
        return image

    def _motion(self, packet: Packet) -> list[np.ndarray]:
        """Decodes a MOTION or MOTION_GROUP packet's frames, each frame's motion points
        float32 (68, 2), (72, 2) with the camera's, (88, 2) with the ring's too
        (`codec.motion`); generators take any of them."""
        if self.needs_keyframe:
            raise BitstreamError(f"motion at pts {packet.pts} without a preceding key frame")
        try:
            chunks = motion_chunks(packet)
        except GraceError:
            self.needs_keyframe = True
            raise
        frames = []
        for pts, words in chunks:
            self._check_pts(pts, keyframe=False)
            try:
                frames.append(self.motion.inter(words))
            except GraceError:
                self.needs_keyframe = True
                raise
            self.next_pts = pts + 1
        return frames

    def _lowpass(self, packet: Packet) -> None:
        """A low-pass residual update for the frame about to come (codec.lowpass)."""
        if self.needs_keyframe:
            return  # nothing to correct until a key frame starts a segment
        if packet.pts != self.next_pts:
            self.needs_keyframe = True
            raise BitstreamError(f"LOWPASS for frame {packet.pts} where {self.next_pts} is next")
        try:
            self.lowpass.decode(packet.payload, packet.pts)
        except GraceError:
            self.needs_keyframe = True  # later updates build on this one
            raise

    def _check_pts(self, pts: int, keyframe: bool) -> None:
        if pts != self.next_pts and not (keyframe and self.needs_keyframe and pts > self.next_pts):
            self.needs_keyframe = True
            raise BitstreamError(f"frame {pts} arrived where frame {self.next_pts} was expected")
