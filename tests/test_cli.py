"""The command line end to end, in-process: encode -> info -> decode, and every bad input.

Each bad input must give exit code 1 (2 for usage errors), one line on stderr, no
traceback, and no output file left behind.
"""

import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from codec.bitstream import KEY_KINDS, MOTION_KINDS, AgcReader, PacketKind, motion_chunks
from codec.cli import main
from codec.decoder import Decoder
from codec.video import VideoWriter, probe_video, read_frames

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def encoded(example_clip, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("enc") / "example.agc"
    assert main(["encode", str(example_clip), str(out), "--quiet"]) == 0
    return out


def run_fails(argv, capsys, code=1) -> str:
    """Runs the CLI expecting failure; returns the one-line error."""
    if code == 2:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        return capsys.readouterr().err
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # Progress bars (cleared on a terminal) may precede the error; the error is one line.
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("gracecodec: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0]


def test_encode_decode_round_trip_lossless(example_clip, encoded, tmp_path, capsys):
    out = tmp_path / "decoded.mkv"
    assert main(["decode", str(encoded), str(out), "--quiet"]) == 0
    source = probe_video(example_clip)
    decoded = list(read_frames(out))
    info = probe_video(out)
    assert len(decoded) == source.frame_count  # one output frame per input frame
    assert info.fps == source.fps and (info.width, info.height) == (256, 256)
    # FFV1 is lossless: the file holds exactly what the decoder produced in memory.
    with open(encoded, "rb") as f:
        reader = AgcReader(f)
        assert reader.header.frame_count == source.frame_count  # written once it is known
        dec = Decoder(reader.header)
        frames = [fr for p in reader for fr in dec.decode(p)]
    assert len(frames) == len(decoded)
    for a, b in zip(frames, decoded):
        np.testing.assert_array_equal(a, b)


def test_decoded_video_follows_the_source(example_clip, encoded, tmp_path):
    """The animated frames match the source crops better than the key frame held still."""
    from encoder.pipeline import FacePipeline, face_frames

    out = tmp_path / "decoded.mkv"
    assert main(["decode", str(encoded), str(out), "--quiet"]) == 0
    info = probe_video(example_clip)
    crops = [
        f.crop()
        for f in face_frames(read_frames(example_clip), FacePipeline(25.0, info.width, info.height))
    ]
    decoded = list(read_frames(out))
    assert len(crops) == len(decoded)

    def psnr(frames) -> float:
        mse = np.mean([(a.astype(float) - b) ** 2 for a, b in zip(crops[1:], frames[1:])])
        return 10 * np.log10(255**2 / mse)

    assert psnr(decoded) > psnr([decoded[0]] * len(decoded)) + 1.0


def test_info_reports_rate_breakdown(encoded, capsys):
    assert main(["info", str(encoded)]) == 0
    out = capsys.readouterr().out
    assert "KEYFRAME" in out and "MOTION_GROUP" in out
    assert "20 shape coefficients, 1.25 px step, camera and ring motion" in out
    assert re.search(r"motion\s+\d+\s+[\d.]+", out)
    assert re.search(r"total\s+\d+\s+[\d.]+", out)


def test_motion_groups_cut_the_framing_not_the_frames(example_clip, encoded, tmp_path, capsys):
    """A file groups 25 frames of motion a packet: the same motion words and decoded
    frames as a packet a frame (what a live call sends), minus 7-8 bytes a frame."""
    single = tmp_path / "single.agc"
    assert main(["encode", str(example_clip), str(single), "-q", "--motion-group", "1"]) == 0

    def read(path):
        with open(path, "rb") as f:
            reader = AgcReader(f)
            dec = Decoder(reader.header, "warp")
            packets = list(reader)
            return packets, [fr for p in packets for fr in dec.decode(p)]

    (grouped, frames), (singles, want) = read(encoded), read(single)
    assert PacketKind.MOTION_GROUP not in [p.kind for p in singles]
    groups = [p for p in grouped if p.kind == PacketKind.MOTION_GROUP]
    assert groups and all(len(motion_chunks(p)) <= 25 for p in groups)
    words = [b"".join(w for p in ps if p.kind in MOTION_KINDS for _, w in motion_chunks(p))
             for ps in (grouped, singles)]  # fmt: skip
    assert words[0] == words[1]
    assert len(frames) == len(want)
    for a, b in zip(frames, want):
        np.testing.assert_array_equal(a, b)
    saved = single.stat().st_size - encoded.stat().st_size
    assert 6 * (len(want) - len(grouped)) <= saved <= 9 * (len(want) - len(grouped))
    run_fails(["encode", str(example_clip), str(tmp_path / "x.agc"), "--motion-group", "0"],
              capsys, code=2)  # fmt: skip


def test_mp4_output_and_options(example_clip, tmp_path):
    agc = tmp_path / "a.agc"
    argv = [
        "encode",
        str(example_clip),
        str(agc),
        "--quiet",
        "--key-codec",
        "webp",
        "--key-quality",
        "30",
        "--keyframe-interval",
        "10",
        "--max-frames",
        "15",
    ]
    assert main(argv) == 0
    with open(agc, "rb") as f:
        packets = list(AgcReader(f))
    kinds = [p.kind for p in packets]
    motion_frames = sum(len(motion_chunks(p)) for p in packets if p.kind in MOTION_KINDS)
    # Two segments; a searched key frame (REFERENCE) is not shown: its frame is motion.
    assert sum(k in KEY_KINDS for k in kinds) == 2
    assert kinds.count(PacketKind.KEYFRAME) + motion_frames == 15
    mp4 = tmp_path / "a.mp4"
    assert main(["decode", str(agc), str(mp4), "--quiet"]) == 0
    assert probe_video(mp4).frame_count == 15
    # Without camera motion the header says so (motion coder flags 0) and it decodes too.
    still = tmp_path / "still.agc"
    assert main(["encode", str(example_clip), str(still), "-q", "--max-frames", "5",
                 "--no-camera-motion"]) == 0  # fmt: skip
    with open(still, "rb") as f:
        assert AgcReader(f).header.motion_params[-1] == 0
    with open(agc, "rb") as f:
        # The default: camera motion (bit 0) and ring motion (bit 1) on.
        assert AgcReader(f).header.motion_params[-1] == 3
    assert main(["decode", str(still), str(tmp_path / "still.mkv"), "--quiet"]) == 0


@pytest.mark.parametrize("codec", ["hevc", "av1"])
def test_key_codecs(example_clip, tmp_path, codec):
    agc = tmp_path / "k.agc"
    assert (
        main(
            ["encode", str(example_clip), str(agc), "-q", "--key-codec", codec, "--max-frames", "5"]
        )
        == 0
    )
    assert main(["decode", str(agc), str(tmp_path / "k.mkv"), "-q"]) == 0


def write_video(path: Path, frames) -> Path:
    frames = list(frames)
    h, w = frames[0].shape[:2]
    with VideoWriter(path, Fraction(25), w, h) as out:
        for f in frames:
            out.write(f)
    return path


def test_not_a_video(tmp_path, capsys):
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video\n" * 20)
    run_fails(["encode", str(bad), str(tmp_path / "o.agc")], capsys)
    assert not (tmp_path / "o.agc").exists()


def test_empty_file(tmp_path, capsys):
    bad = tmp_path / "empty.mp4"
    bad.write_bytes(b"")
    run_fails(["encode", str(bad), str(tmp_path / "o.agc")], capsys)
    assert not (tmp_path / "o.agc").exists()


def test_missing_input(tmp_path, capsys):
    run_fails(["encode", str(tmp_path / "nope.mp4"), str(tmp_path / "o.agc")], capsys)
    run_fails(["decode", str(tmp_path / "nope.agc"), str(tmp_path / "o.mp4")], capsys)


def test_video_without_face(tmp_path, capsys):
    rng = np.random.default_rng(0)
    clip = write_video(
        tmp_path / "noface.mp4", (rng.integers(0, 255, (120, 160, 3), np.uint8) for _ in range(10))
    )
    line = run_fails(["encode", str(clip), str(tmp_path / "o.agc")], capsys)
    assert "no face" in line
    assert not (tmp_path / "o.agc").exists()


def test_face_lost_for_some_frames(example_clip, tmp_path, capsys):
    frames = list(read_frames(example_clip, 20))
    for i in range(8, 12):
        frames[i] = np.full_like(frames[i], 90)  # the face disappears for 4 frames
    clip = write_video(tmp_path / "lost.mp4", frames)
    agc = tmp_path / "lost.agc"
    assert main(["encode", str(clip), str(agc)]) == 0
    assert "4 without a detected face" in capsys.readouterr().out
    assert main(["decode", str(agc), str(tmp_path / "lost.mkv"), "-q"]) == 0
    assert len(list(read_frames(tmp_path / "lost.mkv"))) == 20


def test_several_faces_takes_the_largest(example_clip, tmp_path):
    import cv2

    from encoder.pipeline import FacePipeline, face_frames

    frames = []
    for f in read_frames(example_clip, 10):
        small = cv2.resize(f, (f.shape[1] // 2, f.shape[0] // 2), interpolation=cv2.INTER_AREA)
        canvas = np.concatenate([np.zeros_like(f), f], axis=1)  # big face on the right
        canvas[: small.shape[0], : small.shape[1]] = small  # small face on the left
        frames.append(canvas)
    pipeline = FacePipeline(25.0, frames[0].shape[1], frames[0].shape[0])
    boxes = [face.box for face in face_frames(iter(frames), pipeline)]
    assert len(boxes) == 10
    assert all(b.x0 >= frames[0].shape[1] // 2 - b.side // 2 for b in boxes)  # the right one
    assert len({(b.x0, b.y0, b.side) for b in boxes}) == 1  # consistently, no jitter


def test_malformed_motion_group(encoded, tmp_path, capsys):
    """A MOTION_GROUP whose CRC is right but whose frame count is not: one line, no file."""
    import io

    from codec.bitstream import AgcWriter, Packet

    with open(encoded, "rb") as f:
        reader = AgcReader(f)
        header, packets = reader.header, list(reader)
    i = next(i for i, p in enumerate(packets) if p.kind == PacketKind.MOTION_GROUP)
    packets[i] = Packet(PacketKind.MOTION_GROUP, packets[i].pts, b"\x00")  # no frames
    buf = io.BytesIO()
    writer = AgcWriter(buf, header)
    for p in packets:
        writer.write(p)
    writer.close()
    bad = tmp_path / "group.agc"
    bad.write_bytes(buf.getvalue())
    line = run_fails(["decode", str(bad), str(tmp_path / "o.mkv")], capsys)
    assert "MOTION_GROUP" in line and not (tmp_path / "o.mkv").exists()
    assert "MOTION_GROUP" in run_fails(["info", str(bad)], capsys)


def test_truncated_stream(encoded, tmp_path, capsys):
    data = encoded.read_bytes()
    cut = tmp_path / "cut.agc"
    cut.write_bytes(data[: len(data) * 2 // 3])
    line = run_fails(["decode", str(cut), str(tmp_path / "o.mkv")], capsys)
    assert "truncated" in line
    assert not (tmp_path / "o.mkv").exists()


def test_wrong_magic(encoded, tmp_path, capsys):
    bad = tmp_path / "bad.agc"
    bad.write_bytes(b"RIFF" + encoded.read_bytes()[4:])
    assert "magic" in run_fails(["info", str(bad)], capsys)
    assert "magic" in run_fails(["decode", str(bad), str(tmp_path / "o.mkv")], capsys)


def test_flipped_byte(encoded, tmp_path, capsys):
    data = bytearray(encoded.read_bytes())
    data[len(data) // 2] ^= 0x10
    bad = tmp_path / "flip.agc"
    bad.write_bytes(bytes(data))
    line = run_fails(["decode", str(bad), str(tmp_path / "o.mkv")], capsys)
    assert "CRC" in line or "damaged" in line
    assert not (tmp_path / "o.mkv").exists()


def test_unknown_major_version(encoded, tmp_path, capsys):
    data = bytearray(encoded.read_bytes())
    data[4] = 9
    bad = tmp_path / "v9.agc"
    bad.write_bytes(bytes(data))
    assert "version 9" in run_fails(["decode", str(bad), str(tmp_path / "o.mkv")], capsys)


def test_unwritable_output(example_clip, encoded, tmp_path, capsys):
    run_fails(["encode", str(example_clip), str(tmp_path / "no" / "dir" / "o.agc")], capsys)
    run_fails(["decode", str(encoded), str(tmp_path / "missing" / "o.mp4")], capsys)
    run_fails(["decode", str(encoded), str(tmp_path)], capsys)  # a directory
    run_fails(["decode", str(encoded), str(tmp_path / "o.avi")], capsys)  # unsupported format
    assert not (tmp_path / "o.avi").exists()


def test_usage_errors_exit_2(tmp_path, capsys):
    run_fails([], capsys, code=2)
    run_fails(["encode", "a.mp4"], capsys, code=2)
    run_fails(["encode", "a.mp4", "b.agc", "--key-quality", "500"], capsys, code=2)
    run_fails(["encode", "a.mp4", "b.agc", "--key-codec", "jpeg"], capsys, code=2)


def test_unknown_backend(encoded, tmp_path, capsys):
    line = run_fails(["decode", str(encoded), str(tmp_path / "o.mkv"), "--backend", "nope"], capsys)
    assert "unknown backend" in line


def test_readme_quick_start_runs(tmp_path, monkeypatch):
    """Every `gracecodec ...` line of the README's quick start, run in order."""
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- quickstart -->")[1].split("```")[1]
    commands = [line.split() for line in block.splitlines() if line.startswith("gracecodec ")]
    assert len(commands) >= 4
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    for argv in commands:
        if argv[1] == "example":
            argv = argv + ["--seconds", "1"]  # the README's clip, shorter
        assert main(argv[1:] + (["-q"] if argv[1] != "info" else [])) == 0, argv


def test_real_clip_end_to_end(data_dir, tmp_path):
    """A `needs-crop` clip of ../shared/data (a larger frame): encode, decode, count frames."""
    from codec.benchmarks import read_manifest

    clip = next(c for c in read_manifest(data_dir, "val") if c.kind == "needs-crop")
    agc, out = tmp_path / "real.agc", tmp_path / "real.mkv"
    assert main(["encode", str(clip.path), str(agc), "-q", "--max-frames", "40"]) == 0
    assert main(["decode", str(agc), str(out), "-q"]) == 0
    frames = list(read_frames(out))
    assert len(frames) == 40 and frames[0].shape == (256, 256, 3)
    assert probe_video(out).fps == probe_video(clip.path).fps


def test_model_choice(example_clip, tmp_path, capsys):
    """Streams name the model they are made for; an unshipped model is a clear error."""
    from codec.generators import default_model
    from codec.generators.torch_backend import model_card

    agc = tmp_path / "w.agc"
    assert (
        main(["encode", str(example_clip), str(agc), "-q", "--max-frames", "3", "--model", "warp"])
        == 0
    )
    with open(agc, "rb") as f:
        assert AgcReader(f).header.model_id == "warp"
    card = model_card("grace-s")
    if card is None or not card.get("default"):
        assert default_model() == ("warp", b"")
    else:  # the shipped card makes grace-s the default: a plain encode names it
        assert default_model() == ("grace-s", bytes.fromhex(card["digest"]))
        plain = tmp_path / "d.agc"
        assert main(["encode", str(example_clip), str(plain), "-q", "--max-frames", "3"]) == 0
        with open(plain, "rb") as f:
            header = AgcReader(f).header
        assert (header.model_id, header.model_digest) == default_model()
    if card is None:
        line = run_fails(
            ["encode", str(example_clip), str(tmp_path / "g.agc"), "--model", "grace-s"], capsys
        )
        assert "no weights" in line


def test_decode_with_replay(encoded, tmp_path, capsys):
    """--replay reuses unchanged tiles: at threshold 0 nothing is reused and the frames equal
    a plain decode; at the default some tiles are reused; a bad threshold is one error."""
    plain, zero, default = (tmp_path / f"{n}.mkv" for n in ("plain", "zero", "default"))
    assert main(["decode", str(encoded), str(plain), "--quiet"]) == 0
    assert main(["decode", str(encoded), str(zero), "--replay", "0", "--quiet"]) == 0
    for a, b in zip(read_frames(plain), read_frames(zero), strict=True):
        np.testing.assert_array_equal(a, b)
    capsys.readouterr()
    assert main(["decode", str(encoded), str(default), "--replay"]) == 0
    summary = capsys.readouterr().out
    reused = float(re.search(r"replay: ([\d.]+) % of tiles reused", summary).group(1))
    assert 0 < reused < 100
    assert len(list(read_frames(default))) == len(list(read_frames(plain)))
    bad = tmp_path / "bad.mkv"
    err = run_fails(["decode", str(encoded), str(bad), "--replay", "-1"], capsys)
    assert "replay threshold" in err and not bad.exists()


def test_board_backends_decode_through_the_overlapped_schedule(example_clip, tmp_path, monkeypatch):
    """`decode --backend csim / pynq-sim` runs render_many (ARM work overlapped with the
    engines), in runs cut short here to 2 frames and at low-pass updates: its frames equal
    the Decoder's packet-by-packet render, bit for bit."""
    import codec.decoder

    monkeypatch.setattr(codec.decoder, "RUN_FRAMES", 2)
    pytest.importorskip("torch")
    from codec.generators import make_generator
    from codec.generators.torch_backend import model_card

    if model_card("grace-s") is None:
        pytest.skip("no shipped grace-s weights")
    agc = tmp_path / "g.agc"
    argv = ["encode", str(example_clip), str(agc), "-q", "--max-frames", "5"]
    lowpass = ["--lowpass-interval", "2", "--lowpass-min-gain", "0"]  # every update
    assert main([*argv, "--model", "grace-s", *lowpass]) == 0
    with open(agc, "rb") as f:
        reader = AgcReader(f)
        serial = Decoder(reader.header, "csim")
        packets = list(reader)
        want = [fr for p in packets for fr in serial.decode(p)]
    assert PacketKind.LOWPASS in [p.kind for p in packets]  # runs end at an update too
    assert PacketKind.MOTION_GROUP in [p.kind for p in packets]  # several frames a packet
    assert hasattr(make_generator("csim", "grace-s"), "render_many")
    for backend in ("csim", "pynq-sim"):
        out = tmp_path / f"{backend}.mkv"
        assert main(["decode", str(agc), str(out), "-q", "--backend", backend]) == 0
        for a, b in zip(read_frames(out), want, strict=True):
            np.testing.assert_array_equal(a, b)
