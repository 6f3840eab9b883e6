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
(0: never for that reason) and on `request_keyframe()` (a receiver's request). Each is
coded at `key_quality`, or, under a rate target (`target_kbps`), at the best quality
whose size fits what the stream may still spend until the segment ends. With
`key_search` (files) these events start a segment whose first frames are held while
`choose_key` picks the picture to animate them from: a later frame goes out first as a
REFERENCE (not shown), the first frame as a plain KEYFRAME.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import cv2
import numpy as np

from codec import binary
from codec.bitstream import (
    MAX_GROUP_FRAMES,
    MAX_KEY_SEARCH,
    MOTION_KINDS,
    Header,
    Packet,
    PacketKind,
    group_motion,
    motion_chunks,
)
from codec.keyframe import IMAGE_CODEC_NAMES, decode_image, encode_image
from codec.lowpass import DEFAULT_MIN_GAIN, LowpassResidual, LowpassUpdate
from codec.motion import MotionConfig, MotionEncoder, default_shape_model

from .camera import CameraTracker
from .crop import CropBox
from .pipeline import FaceFrame, FacePipeline, PipelineConfig
from .ring import RingTracker

# Rate control: the motion a frame is assumed to cost until the stream has sent some (an
# expressive val clip, MEAD W009 fear: 55 bits a frame with framing), and the frames a
# segment is assumed to last when neither the frame count nor a key-frame interval bounds
# it (a live call: 10 s at 25 fps).
MOTION_PRIOR_BYTES = 7
RATE_HORIZON_FRAMES = 250
# ... and what a low-pass update costs until the stream has sent some, per update looked
# at (gated ones skipped: the val clips with key search, torch, every 5 frames, sent about
# 16 bytes per 5 frames, docs/results.md).
LOWPASS_PRIOR_BYTES = 16

# Key-frame search (MAX_KEY_SEARCH held frames: about 150 MB of crops): of the held
# frames, KEY_CANDIDATES evenly spaced ones are tried as the key, each judged on
# KEY_JUDGED evenly spaced frames.
KEY_CANDIDATES = 30
KEY_JUDGED = 30


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
    # Rate target in kbit/s (header, framing and motion included): each key frame gets the
    # best quality whose size fits what the stream may spend by the end of its segment
    # (the header's frame count, the key-frame interval, or RATE_HORIZON_FRAMES), less the
    # motion and low-pass updates expected until then. 0: every key frame at `key_quality`.
    target_kbps: float = 0.0
    # Key-frame search (files): a segment's first `key_search` frames wait while the sender
    # picks the one whose picture, warped to the others' landmarks, matches them best; it
    # goes first as a REFERENCE (not shown) and every frame of the segment as motion. A
    # frame from the middle of a head turn drifts less than the first. 0 or 1: the first
    # frame is the key frame, at once (a live call).
    key_search: int = 0


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
        if not 0 <= config.target_kbps <= 10**6:
            raise ValueError(f"rate target of {config.target_kbps} kbit/s out of range")
        if not 0 <= config.key_search <= MAX_KEY_SEARCH:
            raise ValueError(
                f"key search over {config.key_search} frames out of 0..{MAX_KEY_SEARCH}"
            )
        self.config = config
        self.pipeline = FacePipeline(float(fps), width, height, config.pipeline)
        shape_model = default_shape_model()
        size = config.pipeline.crop.size
        self.motion = MotionEncoder(config.motion, shape_model, size)
        self.camera = CameraTracker(size) if config.motion.camera else None
        self.ring = RingTracker() if config.motion.ring else None
        # Picks a held segment's key frame (the evaluation swaps in one that remembers its
        # answers: every operating point of a clip holds the same frames).
        self.choose_key = choose_key
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
        self._window: list[FaceFrame] | None = None  # a segment's frames held for key search
        self.key_qualities: list[int] = []  # the quality of each key frame sent
        # The stream so far: the header, and the END packet a file closes with, up front.
        end = Packet(PacketKind.END, 0, binary.varint(2**14 - 1))
        self._bytes_sent = len(self.header.to_bytes()) + len(end.to_bytes())
        self._motion_bytes = self._motion_frames = 0  # what motion has cost so far
        self._lowpass_bytes = 0  # and the low-pass updates
        # The current segment under a rate target: the frame its budget runs to, and the
        # frames of motion it is to send and has sent (a low-pass update must fit too).
        self._segment_end = self._segment_motion = self._segment_sent = 0

    def request_keyframe(self) -> None:
        """The next frame becomes a key frame."""
        self._key_requested = True

    def encode(self, frame: np.ndarray) -> list[Packet]:
        """frame: uint8 (H, W, 3) RGB source frame. Returns the packets now ready."""
        packets: list[Packet] = []
        for face in self.pipeline.process(frame):
            packets += self._take(face)
        return packets

    def flush(self) -> list[Packet]:
        """Ends the stream: returns the held-back packets. Raises InputError without a face."""
        self.pipeline.finish()
        packets = self._code_window()
        return packets + self._sent(self._motion_packets(self.motion.seal(), sealed=True))

    def _take(self, face: FaceFrame) -> list[Packet]:
        """Codes a frame, or holds it while its segment's key frame is searched for."""
        held = len(self._window) if self._window is not None else 0
        interval = self.config.keyframe_interval
        key = (
            not self._started
            or face.recentred
            or self._key_requested
            or (interval > 0 and self._since_key + held >= interval)
        )
        packets = self._code_window() if key else []
        if key and self.config.key_search < 2:
            return packets + self._start_segment(face, face.index)
        if key:
            self._window, self._started, self._key_requested = [], True, False
            self._since_key = 0
        if self._window is None:
            return packets + self._inter(face)
        size = face.crop_size  # held as the crop alone: a source frame may be large
        self._window.append(dataclasses.replace(face, image=face.crop(), box=CropBox(0, 0, size)))
        if len(self._window) >= self.config.key_search:
            packets += self._code_window()
        return packets

    def _code_window(self) -> list[Packet]:
        """Codes the held frames: the chosen key frame first, then every frame in order
        (the camera tracked backwards from the key frame for the frames before it). A
        refresh asked for on the way starts a new segment, searched in turn, with the
        frames left."""
        faces, self._window = self._window or [], None
        packets: list[Packet] = []
        while faces:
            k = self.choose_key(faces)
            key = faces[k]
            # Where the first frame is best: a plain KEYFRAME, as without the search.
            packets += self._start_segment(key, faces[0].index)
            before: dict[int, np.ndarray] = {}
            if self.camera is not None and k > 0:
                back = CameraTracker(self.camera.size)
                back.start(key.crop(), key.landmarks)
                for f in reversed(faces[:k]):
                    before[f.index] = np.vstack([f.landmarks, back.track(f.crop(), f.landmarks)])
                before[key.index] = np.vstack([key.landmarks, back.corners]).astype(np.float32)
            coded = faces[1:] if k == 0 else faces
            done = 0
            for f in coded:
                packets += self._inter(f, before.get(f.index))
                done += 1
                if self._key_requested:
                    break
            faces = coded[done:]
        return packets

    def _start_segment(self, key: FaceFrame, pts: int) -> list[Packet]:
        """A KEYFRAME (key is frame pts) or a REFERENCE (a later frame's picture, sent at
        pts, where the segment's motion starts): ends the last segment, starts this one."""
        shown = key.index == pts
        packets = self._sent(self._motion_packets(self.motion.seal(), sealed=True))
        crop = key.crop()
        if self.camera is not None:
            self.camera.start(crop, key.landmarks)
        # The motion coder numbers the frames after the intra-coded ones from here.
        lm_bytes, decoded_points = self.motion.intra(key.landmarks, pts if shown else pts - 1)
        if self.ring is not None:  # the receiver's ring is around the decoded landmarks
            self.ring.start(crop, decoded_points)
        fields = binary.u8(self._codec) + binary.length_prefixed(lm_bytes)
        if self.config.target_kbps > 0:
            self._segment_end = pts + self._horizon(pts)
            self._segment_motion, self._segment_sent = self._segment_end - pts - shown, 0
        image = self._key_image(crop, pts, len(fields))
        payload = fields + image
        if self._renders:
            size = self.header.width
            self._sender_renderer().set_reference(
                decode_image(image, self._codec, size, size), decoded_points
            )
        if self.lowpass is not None:
            self.lowpass.reset()
        self.refreshes += self._refresh_due
        kind = PacketKind.KEYFRAME if shown else PacketKind.REFERENCE
        packets += self._sent([Packet(kind, pts, payload)])
        self._started, self._key_requested, self._since_key = True, False, int(shown)
        self._refresh_due, self._best_psnr = False, -np.inf
        return packets

    def _inter(self, face: FaceFrame, points: np.ndarray | None = None) -> list[Packet]:
        """Codes a frame of the segment as motion. points: its motion points where they
        are known already (the frames before a searched key frame), else tracked here."""
        if points is None:
            points = face.landmarks
            if self.camera is not None:
                points = self.camera.motion_points(face.crop(), face.landmarks, key=False)
        if self.ring is not None:
            points = np.vstack([points, self.ring.track(face.crop(), face.landmarks)])
        decoded_points, ready = self.motion.inter(points)
        lowpass = self.lowpass is not None and self._since_key % self.config.lowpass_interval == 0
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
        packets = self._sent(self._motion_packets(ready))
        self._since_key += 1
        return packets

    def _sent(self, packets: list[Packet]) -> list[Packet]:
        """Counts what goes out (rate control's account); returns the packets."""
        for p in packets:
            size = len(p.to_bytes())
            self._bytes_sent += size
            if p.kind in MOTION_KINDS:
                self._motion_bytes += size
                self._motion_frames += len(motion_chunks(p))
                self._segment_sent += len(motion_chunks(p))
            elif p.kind == PacketKind.LOWPASS:
                self._lowpass_bytes += size
        return packets

    def _key_image(self, crop: np.ndarray, pts: int, field_bytes: int) -> bytes:
        """The key frame's image bytes: at `key_quality`, or the best quality that fits the
        rate target's budget (the lowest quality where none does)."""
        if self.config.target_kbps <= 0:
            quality = self.config.key_quality
            image = encode_image(crop, self._codec, quality)
        else:
            # Packet framing: kind, pts, CRC, and a length field of up to 3 bytes.
            framing = len(Packet(PacketKind.KEYFRAME, pts, b"").to_bytes()) + 2
            budget = self._key_budget(pts) - framing - field_bytes
            # The image's size grows with the quality: binary search for the best that fits.
            quality, image = 0, encode_image(crop, self._codec, 0)
            lo, hi = 1, 100
            while lo <= hi:
                mid = (lo + hi) // 2
                candidate = encode_image(crop, self._codec, mid)
                if len(candidate) <= budget:
                    quality, image, lo = mid, candidate, mid + 1
                else:
                    hi = mid - 1
        self.key_qualities.append(quality)
        return image

    def _key_budget(self, pts: int) -> float:
        """Bytes the key frame at `pts` may take: what the target allows by the end of its
        segment, less what was sent and the motion and low-pass updates expected until then
        (what they have cost a frame so far, or the priors before any was sent)."""
        horizon = self._horizon(pts)
        side = self._motion_per_frame()
        if self._motion_frames:
            side += self._lowpass_bytes / self._motion_frames
        elif self.lowpass is not None:
            side += LOWPASS_PRIOR_BYTES / self.config.lowpass_interval
        return self._bytes_per_frame() * (pts + horizon) - self._bytes_sent - side * (horizon - 1)

    def _motion_per_frame(self) -> float:
        """Bytes a frame's motion has cost so far, or the prior before any was sent."""
        if not self._motion_frames:
            return MOTION_PRIOR_BYTES
        return self._motion_bytes / self._motion_frames

    def _bytes_per_frame(self) -> float:
        return self.config.target_kbps * 125 / float(self.header.fps)  # kbit/s -> B/frame

    def _horizon(self, pts: int) -> int:
        """Frames the segment starting at pts is budgeted for: up to the stream's end, the
        next forced key frame, or RATE_HORIZON_FRAMES where neither is known."""
        remaining = self.header.frame_count - pts
        bounds = [n for n in (self.config.keyframe_interval, remaining) if n > 0]
        return min(bounds) if bounds else RATE_HORIZON_FRAMES

    def _fits_target(self, nbytes: int) -> bool:
        """Whether a low-pass update of nbytes leaves the segment within the rate target:
        what was sent, the updates waiting, it, and the segment's motion still to come (at
        its cost so far) against what the target allows by the segment's end."""
        if self.config.target_kbps <= 0:
            return True
        waiting = sum(
            len(Packet(PacketKind.LOWPASS, pts, u).to_bytes())
            for pts, u in self._lowpass_updates.items()
        )
        to_come = self._motion_per_frame() * max(0, self._segment_motion - self._segment_sent)
        spent = self._bytes_sent + waiting + nbytes + to_come
        return spent <= self._bytes_per_frame() * self._segment_end

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
        worth = min_gain <= 0 or update.gain_db >= min_gain * bits / 1000
        return worth and self._fits_target(nbytes)

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


def choose_key(faces: list[FaceFrame]) -> int:
    """Index of the frame whose picture, warped by the landmarks to the others (the `warp`
    generator: what every backend starts from), matches them best on average. Judged by
    SSIM at 128, 64 and 32 px, the scales MS-SSIM weighs most; the first frame wins ties."""
    from codec.generators.warp import WarpGenerator

    n = len(faces)
    if n < 2:
        return 0
    candidates = np.unique(np.linspace(0, n - 1, min(n, KEY_CANDIDATES)).round().astype(int))
    judged = np.unique(np.linspace(0, n - 1, min(n, KEY_JUDGED)).round().astype(int))
    pyramids = [_pyramid(faces[j].crop()) for j in judged]
    warp = WarpGenerator()
    best, best_score = 0, -np.inf
    for k in candidates:
        warp.set_reference(faces[k].crop(), faces[k].landmarks)
        score = np.mean(
            [
                _coarse_ssim(_pyramid(warp.render(faces[j].landmarks)), pyramid)
                for j, pyramid in zip(judged, pyramids)
            ]
        )
        if score > best_score + 1e-9:
            best, best_score = int(k), score
    return best


_SCALE_WEIGHTS = (0.2856, 0.3001, 0.2363)  # MS-SSIM's weights of its 2nd to 4th scales


def _pyramid(image: np.ndarray) -> list[np.ndarray]:
    """Grey levels at 128, 64 and 32 px, float32."""
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY).astype(np.float32)
    return [cv2.resize(grey, (s, s), interpolation=cv2.INTER_AREA) for s in (128, 64, 32)]


def _coarse_ssim(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Weighted mean SSIM (Gaussian window, sigma 1.5) over the pyramid levels."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    total = 0.0
    for x, y, w in zip(a, b, _SCALE_WEIGHTS):
        mx, my = _blur(x), _blur(y)
        vx, vy, cxy = _blur(x * x) - mx * mx, _blur(y * y) - my * my, _blur(x * y) - mx * my
        ssim = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        total += w * float(ssim.mean())
    return total / sum(_SCALE_WEIGHTS)


def _blur(z: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(z, (0, 0), 1.5)
