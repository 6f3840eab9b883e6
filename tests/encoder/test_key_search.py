"""Key-frame search (`encode --key-search`): a segment's frames wait while the sender picks
the key frame the others are best rendered from; it goes first as a REFERENCE, unshown."""

import io
from fractions import Fraction

import cv2
import numpy as np
import pytest

from codec.bitstream import KEY_KINDS, AgcReader, AgcWriter, Header, Packet, PacketKind
from codec.decoder import Decoder
from codec.errors import BitstreamError
from codec.evaluation.runner import ReplayPipeline
from codec.motion import MotionConfig, mean_face
from encoder.crop import CropBox
from encoder.encoder import Encoder, EncoderConfig, choose_key
from encoder.pipeline import FaceFrame


def scene(pan: float, seed: int = 3) -> np.ndarray:
    """A 256 crop of a still scene (blurred noise, a face disc) under a camera panning
    `pan` px to the right: everything in the crop moves left."""
    rng = np.random.default_rng(seed)
    big = cv2.GaussianBlur(rng.integers(0, 256, (384, 384, 3)).astype(np.uint8), (0, 0), 2.5)
    big = cv2.normalize(big, None, 0, 255, cv2.NORM_MINMAX)
    c = mean_face(384).mean(0)
    cv2.circle(big, (int(c[0]), int(c[1])), 70, (200, 160, 140), -1)
    m = np.float32([[1, 0, 64 + pan], [0, 1, 64]])  # crop = big(x + 64 + pan)
    return cv2.warpAffine(big, m, (256, 256), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)


def faces_of(pans: list[float]) -> list[FaceFrame]:
    head = mean_face(256)
    return [
        FaceFrame(
            i, scene(p), CropBox(0, 0, 256), (head - [p, 0.0]).astype(np.float32), False, False
        )
        for i, p in enumerate(pans)
    ]


def test_the_middle_of_a_pan_is_chosen():
    # Every frame is the middle one moved by its distance from it: the middle frame is
    # the one all others are closest to (a frame either side: interpolation differs).
    assert abs(choose_key(faces_of([1.5 * t for t in range(21)])) - 10) <= 1


def test_a_still_scene_keeps_its_first_frame():
    assert choose_key(faces_of([0.0] * 12)) == 0
    assert choose_key(faces_of([0.0])) == 0


def code(faces: list[FaceFrame], **config) -> tuple[Header, list[Packet], list[np.ndarray]]:
    """Encoder -> .agc bytes -> Decoder (warp): the header, packets and frames shown."""
    config = EncoderConfig(key_quality=90, **config)
    enc = Encoder(config, Fraction(25), 256, 256, frame_count=len(faces))
    enc.pipeline = ReplayPipeline()  # the frames are crops already: no face tracking
    buf = io.BytesIO()
    writer = AgcWriter(buf, enc.header)
    for face in faces:
        for packet in enc.encode(face):
            writer.write(packet)
    for packet in enc.flush():
        writer.write(packet)
    writer.close()
    buf.seek(0)
    reader = AgcReader(buf)
    packets = list(reader)
    decoder = Decoder(reader.header, "warp")
    return reader.header, packets, [f for packet in packets for f in decoder.decode(packet)]


@pytest.mark.parametrize("camera", [True, False])
def test_a_searched_key_is_sent_first_and_every_frame_is_shown(camera):
    faces = faces_of([1.5 * t for t in range(21)])
    _, packets, frames = code(faces, key_search=30, motion=MotionConfig(camera=camera))
    assert (packets[0].kind, packets[0].pts) == (PacketKind.REFERENCE, 0)
    assert PacketKind.KEYFRAME not in [p.kind for p in packets]
    assert len(frames) == 21
    # The frames on both sides of the key frame follow the pan: with camera motion the
    # background too (tracked backwards from the key frame for the frames before it).
    background = (slice(0, 40), slice(100, 156))  # above the face disc
    for i in (0, 20):
        error = np.abs(frames[i][background].astype(int) - faces[i].image[background]).mean()
        assert error < (6 if camera else 40)
    k = choose_key(faces)
    assert np.abs(frames[k].astype(int) - faces[k].image).mean() < 4  # through the key codec


def test_the_search_beats_the_first_frame_on_a_pan():
    faces = faces_of([1.5 * t for t in range(21)])
    errors = {}
    for search in (0, 30):
        _, _, frames = code(faces, key_search=search)
        errors[search] = np.mean(
            [np.abs(f.astype(int) - g.image).mean() for f, g in zip(frames, faces)]
        )
    assert errors[30] < 0.9 * errors[0]  # 4.1 against 5.1


def test_a_window_shorter_than_the_segment_codes_the_rest_as_it_comes():
    faces = faces_of([1.5 * t for t in range(21)])
    _, packets, frames = code(faces, key_search=8, keyframe_interval=0)
    starts = [(p.kind, p.pts) for p in packets if p.kind in KEY_KINDS]
    assert starts == [(PacketKind.REFERENCE, 0)]  # one segment: the key among frames 0..7
    assert len(frames) == 21


def test_forced_key_frames_end_the_held_segment():
    faces = faces_of([1.5 * t for t in range(21)])
    _, packets, frames = code(faces, key_search=30, keyframe_interval=10)
    assert [p.pts for p in packets if p.kind in KEY_KINDS] == [
        0,
        10,
        20,
    ]
    assert len(frames) == 21


def test_a_reference_shows_nothing_and_motion_follows_from_its_pts():
    faces = faces_of([1.5 * t for t in range(6)])
    header, packets, _ = code(faces, key_search=30, motion_group=1)
    reference, motion = packets[0], packets[1]
    assert reference.kind == PacketKind.REFERENCE and motion.pts == reference.pts == 0
    dec = Decoder(header, "warp")
    assert dec.decode(reference) == []
    assert len(dec.decode(motion)) == 1
    fresh = Decoder(header, "warp")
    with pytest.raises(BitstreamError, match="without a preceding key frame"):
        fresh.decode(motion)
