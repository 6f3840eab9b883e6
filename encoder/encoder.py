"""The Encoder: source frames in, .agc packets out.

    enc = Encoder(EncoderConfig(), fps=Fraction(25), width=1280, height=720)
    writer = AgcWriter(f, enc.header)
    for frame in frames:
        for packet in enc.encode(frame):
            writer.write(packet)
    for packet in enc.flush():
        writer.write(packet)

Motion goes out a packet a frame, or `motion_group` frames a packet (files).

Key frames: the first frame, every crop re-centre, every `keyframe_interval` frames
(0: never for that reason) and on `request_keyframe()` (a receiver's request).
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np

from codec import binary
from codec.bitstream import MAX_GROUP_FRAMES, Header, Packet, PacketKind, group_motion
from codec.keyframe import IMAGE_CODEC_NAMES, decode_image, encode_image
from codec.lowpass import DEFAULT_MIN_GAIN, LowpassResidual, LowpassUpdate
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
    # Frames between low-pass residual updates (codec.lowpass); 0: none. Each update
    # renders the frame with that generator here, as the receiver will.
    lowpass_interval: int = 0
    # An update is sent only where it gains at least this many dB of PSNR on its frame per
    # kbit it costs (packet framing included, and the motion group it cuts in two);
    # 0: every update that changes something.
    lowpass_min_gain: float = DEFAULT_MIN_GAIN
    lowpass_steps: tuple[int, int] = (12, 8)  # luma, chroma quantiser steps (8-bit levels)
    # Frames of motion per packet: 1 sends each frame as it is ready (a live call); a file
    # groups them (codec.bitstream.FILE_MOTION_GROUP) and pays the packet framing once a group.
    motion_group: int = 1
    # Closed-loop key-frame refresh: every `refresh_interval` frames the sender renders the
    # frame as the receiver will show it; once its PSNR falls `refresh_drop_db` dB below the
    # best check of the segment, and at least `refresh_min_gap` frames after the key frame,
    # the next frame is a key frame. 0: off (the key frame holds until a re-centre).
    refresh_drop_db: float = 0.0
    refresh_interval: int = 5
    refresh_min_gap: int = 25


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
        if not 1 <= config.motion_group <= MAX_GROUP_FRAMES:
            raise ValueError(
                f"motion group of {config.motion_group} frames out of 1..{MAX_GROUP_FRAMES}"
            )
        if config.refresh_drop_db > 0 and min(config.refresh_interval, config.refresh_min_gap) < 1:
            raise ValueError("refresh interval and minimum gap must be at least one frame")
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
        self.lowpass = (
            LowpassResidual(size, *config.lowpass_steps) if config.lowpass_interval > 0 else None
        )
        self._renderer = None  # the stream's generator, made at the first key frame
        self._renders = self.lowpass is not None or config.refresh_drop_db > 0
        self._best_psnr = -np.inf  # the segment's best refresh check
        self.refreshes = 0  # key frames sent because the rendered quality dropped
        self._lowpass_updates: dict[int, bytes] = {}  # pts -> LOWPASS payload to send
        self._group: list[tuple[int, bytes]] = []  # motion chunks not yet in a packet
        self._since_key = 0
        self._key_requested = False
        self._refresh_due = False  # the key frame asked for is a quality refresh
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
        return self._motion_packets(self.motion.seal(), sealed=True)

    def _code(self, face: FaceFrame) -> list[Packet]:
        interval = self.config.keyframe_interval
        key = (
            not self._started
            or face.recentred
            or self._key_requested
            or (interval > 0 and self._since_key >= interval)
        )
        if key:
            packets = self._motion_packets(self.motion.seal(), sealed=True)
            crop = face.crop()
            if self.camera is not None:
                self.camera.start(crop, face.landmarks)
            lm_bytes, decoded_points = self.motion.intra(face.landmarks, face.index)
            image = encode_image(crop, self._codec, self.config.key_quality)
            payload = binary.u8(self._codec) + binary.length_prefixed(lm_bytes) + image
            if self._renders:
                size = self.header.width
                self._sender_renderer().set_reference(
                    decode_image(image, self._codec, size, size), decoded_points
                )
            if self.lowpass is not None:
                self.lowpass.reset()
            self.refreshes += self._refresh_due
            packets.append(Packet(PacketKind.KEYFRAME, face.index, payload))
            self._started, self._key_requested, self._since_key = True, False, 1
            self._refresh_due, self._best_psnr = False, -np.inf
        else:
            points = face.landmarks
            if self.camera is not None:
                points = self.camera.motion_points(face.crop(), face.landmarks, key=False)
            decoded_points, ready = self.motion.inter(points)
            lowpass = (
                self.lowpass is not None and self._since_key % self.config.lowpass_interval == 0
            )
            refresh = self.config.refresh_drop_db > 0
            refresh = refresh and self._since_key % self.config.refresh_interval == 0
            if lowpass or refresh:
                rendered = self._renderer.render(decoded_points)
            if lowpass:
                update = self.lowpass.propose(face.crop(), rendered)
                if update is not None and self._worth_sending(update, face.index):
                    self.lowpass.commit(update)
                    self._lowpass_updates[face.index] = update.payload
            if refresh:
                self._check_quality(face.crop(), rendered)
            packets = self._motion_packets(ready)
            self._since_key += 1
        return packets

    def _check_quality(self, crop: np.ndarray, rendered: np.ndarray) -> None:
        """Asks for a key frame next where the frame the receiver shows has fallen too far
        below the segment's best (the frame is already coded: the refresh is the next)."""
        from codec.evaluation.metrics import psnr

        shown = self.lowpass.apply(rendered) if self.lowpass is not None else rendered
        quality = psnr(crop, shown)
        self._best_psnr = max(self._best_psnr, quality)
        if self._since_key >= self.config.refresh_min_gap:
            if quality < self._best_psnr - self.config.refresh_drop_db:
                self._key_requested = self._refresh_due = True

    def _worth_sending(self, update: LowpassUpdate, pts: int) -> bool:
        min_gain = self.config.lowpass_min_gain
        nbytes = len(Packet(PacketKind.LOWPASS, pts, update.payload).to_bytes())
        if self.config.motion_group > 1:  # the update also cuts a motion group in two
            nbytes += len(Packet(PacketKind.MOTION_GROUP, pts, b"\x02").to_bytes())
        bits = 8 * nbytes
        return min_gain <= 0 or update.gain_db >= min_gain * bits / 1000

    def _sender_renderer(self):
        if self._renderer is None:
            from codec.generators import MODEL_BACKENDS, make_generator

            backend = MODEL_BACKENDS.get(self.config.model_id, "warp")
            self._renderer = make_generator(backend, self.config.model_id, self.config.model_digest)
        return self._renderer

    def _motion_packets(
        self, chunks: list[tuple[int, bytes]], sealed: bool = False
    ) -> list[Packet]:
        """MOTION / MOTION_GROUP packets of up to `motion_group` frames, each LOWPASS update
        just before the packet its frame starts (the receiver applies it from that frame
        on). sealed: the segment ends, so the last group goes out however short."""
        packets = []
        for pts, data in chunks:
            update = self._lowpass_updates.pop(pts, None)
            if update is not None:
                packets += self._close_group()
                packets.append(Packet(PacketKind.LOWPASS, pts, update))
            self._group.append((pts, data))
            if len(self._group) >= self.config.motion_group:
                packets += self._close_group()
        if sealed:
            packets += self._close_group()
        return packets

    def _close_group(self) -> list[Packet]:
        group, self._group = self._group, []
        return [group_motion(group)] if group else []
