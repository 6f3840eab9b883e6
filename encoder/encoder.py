"""The Encoder: source frames in, .agc packets out.

    enc = Encoder(EncoderConfig(), fps=Fraction(25), width=1280, height=720)
    writer = AgcWriter(f, enc.header)
    for frame in frames:
        for packet in enc.encode(frame):
            writer.write(packet)
    for packet in enc.flush():
        writer.write(packet)

Key frames: the first frame, every crop re-centre, every `keyframe_interval` frames
(0: never for that reason) and on `request_keyframe()` (a receiver's request).
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np

from codec import binary
from codec.bitstream import Header, Packet, PacketKind
from codec.keyframe import IMAGE_CODEC_NAMES, encode_image
from codec.motion import MotionConfig, MotionEncoder, default_shape_model

from .camera import CameraTracker
from .pipeline import FaceFrame, FacePipeline, PipelineConfig


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    key_codec: str = "hevc"  # hevc | av1 | webp
    key_quality: int = 40  # 0..100, higher is better (see codec.keyframe for the mapping)
    keyframe_interval: int = 0  # frames between forced key frames; 0 = only when needed
    motion: MotionConfig = MotionConfig()
    pipeline: PipelineConfig = PipelineConfig()
    model_id: str = "warp"  # the generator the stream is made for (header)
    model_digest: bytes = b""


class Encoder:
    def __init__(
        self,
        config: EncoderConfig,
        fps: Fraction,
        width: int,
        height: int,
        frame_count: int = 0,
    ):
        if config.key_codec not in IMAGE_CODEC_NAMES:
            raise ValueError(f"unknown key-frame codec {config.key_codec!r}")
        self.config = config
        self.pipeline = FacePipeline(float(fps), width, height, config.pipeline)
        shape_model = default_shape_model()
        size = config.pipeline.crop.size
        self.motion = MotionEncoder(config.motion, shape_model, size)
        self.camera = CameraTracker(size) if config.motion.camera else None
        self.header = Header(
            width=size,
            height=size,
            fps=Fraction(fps),
            model_id=config.model_id,
            model_digest=config.model_digest,
            motion_params=config.motion.to_bytes(shape_model),
            frame_count=frame_count,
        )
        self._codec = IMAGE_CODEC_NAMES[config.key_codec]
        self._since_key = 0
        self._key_requested = False
        self._started = False

    def request_keyframe(self) -> None:
        """The next frame becomes a key frame."""
        self._key_requested = True

    def encode(self, frame: np.ndarray) -> list[Packet]:
        """frame: uint8 (H, W, 3) RGB source frame. Returns the packets now ready."""
        packets: list[Packet] = []
        for face in self.pipeline.process(frame):
            packets += self._code(face)
        return packets

    def flush(self) -> list[Packet]:
        """Ends the stream: returns the held-back packets. Raises InputError without a face."""
        self.pipeline.finish()
        return self._motion_packets(self.motion.seal())

    def _code(self, face: FaceFrame) -> list[Packet]:
        interval = self.config.keyframe_interval
        key = (
            not self._started
            or face.recentred
            or self._key_requested
            or (interval > 0 and self._since_key >= interval)
        )
        if key:
            packets = self._motion_packets(self.motion.seal())
            crop = face.crop()
            if self.camera is not None:
                self.camera.motion_points(crop, face.landmarks, key=True)
            lm_bytes, _ = self.motion.intra(face.landmarks, face.index)
            image = encode_image(crop, self._codec, self.config.key_quality)
            payload = binary.u8(self._codec) + binary.length_prefixed(lm_bytes) + image
            packets.append(Packet(PacketKind.KEYFRAME, face.index, payload))
            self._started, self._key_requested, self._since_key = True, False, 1
        else:
            points = face.landmarks
            if self.camera is not None:
                points = self.camera.motion_points(face.crop(), face.landmarks, key=False)
            _, ready = self.motion.inter(points)
            packets = self._motion_packets(ready)
            self._since_key += 1
        return packets

    @staticmethod
    def _motion_packets(chunks: list[tuple[int, bytes]]) -> list[Packet]:
        return [Packet(PacketKind.MOTION, pts, data) for pts, data in chunks]
