"""The `gracecodec` command line. `main(argv)` returns the exit code, so tests call it in-process.

Exit codes: 0 success, 1 a GraceError (one line on stderr), 2 a usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from decoder_fpga.replay import DEFAULT_THRESHOLD_PX as DEFAULT_REPLAY_PX

from .bitstream import FILE_KEY_SEARCH, FILE_MOTION_GROUP, MAX_GROUP_FRAMES, MAX_KEY_SEARCH
from .errors import GraceError, InputError
from .generators import backend_names
from .lowpass import DEFAULT_MIN_GAIN as LOWPASS_MIN_GAIN


def _progress(iterable, quiet: bool, total: int | None, desc: str):
    if quiet:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total or None, desc=desc, unit="frame", leave=False)


def cmd_encode(args: argparse.Namespace) -> int:
    from .commands import encode_file

    stats = encode_file(
        args.input,
        args.output,
        key_codec=args.key_codec,
        key_quality=args.key_quality,
        keyframe_interval=args.keyframe_interval,
        max_frames=args.max_frames,
        detector=args.landmarks,
        motion_step=args.motion_step,
        camera_motion=not args.no_camera_motion,
        ring_motion=not args.no_ring_motion,
        lowpass_interval=args.lowpass_interval,
        lowpass_min_gain=args.lowpass_min_gain,
        motion_group=args.motion_group,
        refresh_drop_db=args.refresh_drop,
        target_kbps=args.target_kbps,
        key_search=args.key_search,
        model=args.model,
        progress=lambda it, total: _progress(it, args.quiet, total, "encode"),
    )
    if not args.quiet:
        print(stats.summary())
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from .commands import decode_file

    stats = decode_file(
        args.input,
        args.output,
        backend=args.backend,
        replay_px=args.replay,
        progress=lambda it, total: _progress(it, args.quiet, total, "decode"),
    )
    if not args.quiet:
        print(stats.summary())
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .commands import stream_info

    print(stream_info(args.input).report())
    return 0


def cmd_example(args: argparse.Namespace) -> int:
    from .example import write_example_clip

    write_example_clip(args.output, seconds=args.seconds)
    if not args.quiet:
        print(f"wrote {args.output}")
    return 0


def cmd_bench_motion(args: argparse.Namespace) -> int:
    from .benchmarks import bench_motion

    print(
        bench_motion(
            args.data,
            split=args.split,
            max_clips=args.max_clips,
            motion_step=args.motion_step,
            num_coeffs=args.num_coeffs,
            cache=args.cache,
            quiet=args.quiet,
            smoothing=args.smoothing,
        )
    )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .benchmarks import bench_codec

    print(
        bench_codec(
            args.data,
            split=args.split,
            max_clips=args.max_clips,
            backend=args.backend,
            quiet=args.quiet,
        )
    )
    return 0


def cmd_prepare_data(args: argparse.Namespace) -> int:
    from .training.prepare import prepare_dataset

    for split in args.splits:
        print(prepare_dataset(args.data, Path(args.out) / split, split, quiet=args.quiet))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .training.train import main as train_main

    train_main(args.train_args)
    return 0


def cmd_model_info(args: argparse.Namespace) -> int:
    from .models.grace_s import GraceS, count_macs

    model = GraceS()
    macs = count_macs(model)
    reference = macs.pop("reference")
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in model.named_children()}
    print("grace-s per 256x256 frame (MAC = multiply-accumulate):")
    for name, n in macs.items():
        print(f"  {name:<18} {n / 1e6:9.1f} MMAC")
    print(f"  {'total':<18} {sum(macs.values()) / 1e9:9.3f} GMAC   (budget 2, hard cap 4)")
    print(f"reference encoder, once per key frame: {reference / 1e6:.1f} MMAC")
    print(f"parameters: {sum(params.values()):,} (budget 4 M)")
    for name, n in params.items():
        if n:
            print(f"  {name:<14} {n:9,d}")
    return 0


def cmd_fit_shape_model(args: argparse.Namespace) -> int:
    from .benchmarks import fit_shape_model_on_data

    print(fit_shape_model_on_data(args.data, args.output, cache=args.cache, quiet=args.quiet))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import dataclasses

    from .evaluation.runner import QUICK, EvalConfig, default_command, find_clips, run_eval

    split = None if args.split == "all" else args.split
    config = QUICK if args.quick else EvalConfig()
    config = dataclasses.replace(
        config,
        max_frames=args.max_frames or config.max_frames,
        max_clips=args.max_clips or config.max_clips,
        face_stride=args.face_stride,
        qps=tuple(args.qps) if args.qps else config.qps,
        # Rate targets replace the default key qualities; given both, both run.
        key_qualities=(
            tuple(args.key_qualities)
            if args.key_qualities
            else ()
            if args.target_kbps
            else config.key_qualities
        ),
        target_rates=tuple(args.target_kbps or ()),
        keyframe_intervals=(
            tuple(args.keyframe_intervals) if args.keyframe_intervals else config.keyframe_intervals
        ),
        backends=tuple(args.backends) if args.backends else config.backends,
        camera_motion=not args.no_camera_motion,
        ring_motion=not args.no_ring_motion,
        lowpass_interval=args.lowpass_interval,
        lowpass_min_gain=args.lowpass_min_gain,
        motion_group=args.motion_group,
        refresh_drop_db=args.refresh_drop,
        key_search=args.key_search,
    )
    result = run_eval(
        find_clips(args.clips, split),
        args.out,
        config=config,
        command=default_command(args.clips, args.split, args.quick, config, args.out),
        data=str(args.clips),
        progress=not args.quiet,
    )
    if not args.quiet:
        print((Path(args.out) / "summary.md").read_text())
    failed = sum(r["status"] != "ok" for r in result["rows"])
    if failed and not args.quiet:
        print(f"{failed} runs failed (see summary.md)", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import logging
    import os
    import signal
    import threading

    from transport.receiver import Receiver, ReceiverConfig

    if not args.quiet:
        logging.basicConfig(level=logging.INFO, format="gracecodec: %(message)s")
    config = ReceiverConfig(
        host=args.host,
        port=args.port,
        token=args.token or os.environ.get("GRACECODEC_TOKEN") or None,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        record=args.record,
        display=args.display,
        backend=args.backend,
    )
    receiver = Receiver(config)
    receiver.start()
    if threading.current_thread() is threading.main_thread():
        # SIGTERM ends the receiver like Ctrl-C: the active call's recording is finalised.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        receiver.wait(max_calls=1 if args.once else None)
    except KeyboardInterrupt:
        pass
    finally:
        receiver.stop()
    if not args.quiet:
        for i, stats in enumerate(receiver.calls, 1):
            print(f"call {i}: {stats.summary('receiver')}")
    return 0


def cmd_call(args: argparse.Namespace) -> int:
    import logging
    import os

    from transport.sender import call

    if not args.quiet:
        logging.basicConfig(level=logging.INFO, format="gracecodec: %(message)s")
    stats = call(
        args.target,
        input=args.input,
        camera=args.camera,
        loop=args.loop,
        token=args.token or os.environ.get("GRACECODEC_TOKEN") or None,
        tls_ca=args.tls_ca,
        max_seconds=args.max_seconds,
    )
    if not args.quiet:
        print(stats.summary("sender"))
    return 0


def _add_sender_options(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """How the sender codes the stream: encode's options, which eval's gracecodec streams
    take too (their help starting with `prefix`)."""
    p.add_argument(
        "--no-camera-motion",
        action="store_true",
        help=prefix + "do not track and send the camera's motion (a still camera: the background "
        "stays where the key frame has it; no ring motion either)",
    )
    p.add_argument(
        "--no-ring-motion",
        action="store_true",
        help=prefix + "do not track and send the motion of the ring around the face (hair, head "
        "outline): the receiver moves it with the skull",
    )
    p.add_argument(
        "--lowpass-interval",
        type=_int_range(0, 10000),
        default=0,
        metavar="N",
        help=prefix + "frames between low-pass residual updates, which put back the coarse shading "
        "the generator misses (e.g. 5: +1 dB PSNR for +0.7 kbit/s; default 0: none)",
    )
    p.add_argument(
        "--lowpass-min-gain",
        type=_float_range(0, 100),
        default=LOWPASS_MIN_GAIN,
        metavar="DB",
        help=prefix + "send a low-pass update only where it gains at least DB dB of PSNR on its "
        f"frame per kbit it costs (default {LOWPASS_MIN_GAIN:g}; 0: every update)",
    )
    p.add_argument(
        "--motion-group",
        type=_int_range(1, MAX_GROUP_FRAMES),
        default=FILE_MOTION_GROUP,
        metavar="N",
        help=prefix
        + f"frames of motion per packet (default {FILE_MOTION_GROUP}: the packet framing, "
        "8 bytes, is paid once a group; 1: a packet a frame, as a live call sends)",
    )
    p.add_argument(
        "--refresh-drop",
        type=_float_range(0, 100),
        default=0.0,
        metavar="DB",
        help=prefix
        + "send a new key frame where the frame the receiver shows (rendered here every "
        "5th frame) falls DB dB of PSNR below the best since the last key frame, 25 frames "
        "after it at the earliest (e.g. 6; default 0: never)",
    )
    p.add_argument(
        "--key-search",
        type=_int_range(0, MAX_KEY_SEARCH),
        default=FILE_KEY_SEARCH,
        metavar="N",
        help=prefix
        + "choose each segment's key frame among its first N frames: the one whose picture, "
        "warped to the others, matches them best, sent first and not shown (stream 3.0; "
        f"default {FILE_KEY_SEARCH}; 0: the first frame, as a live call does)",
    )


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(
        prog="gracecodec",
        description="Talking-face generative video codec: a key frame plus facial motion.",
    )
    p.add_argument("--version", action="version", version=f"gracecodec {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summary")
        return sp

    e = add("encode", cmd_encode, "encode a talking-head video into an .agc stream")
    e.add_argument("input", help="video file (MP4, MOV, MKV, MPG, ... anything PyAV reads)")
    e.add_argument("output", help="output .agc file")
    e.add_argument(
        "--key-codec",
        choices=["hevc", "av1", "webp"],
        default="hevc",
        help="intra codec of key frames (default: hevc)",
    )
    e.add_argument(
        "--key-quality",
        type=_int_range(0, 100),
        default=40,
        metavar="Q",
        help="key-frame quality 0..100, higher is better (default: 40)",
    )
    e.add_argument(
        "--target-kbps",
        type=_float_range(0, 10**6),
        default=0.0,
        metavar="KBPS",
        help="rate target in kbit/s, everything included: each key frame gets the best "
        "quality that fits what is left of it after the motion and low-pass updates, "
        "which are sent only while they fit (replaces --key-quality; default 0: off)",
    )
    e.add_argument(
        "--keyframe-interval",
        type=_int_range(0, 10**6),
        default=0,
        metavar="N",
        help="force a key frame every N frames; 0: only at the start and when "
        "the crop re-centres (default: 0)",
    )
    e.add_argument(
        "--max-frames",
        type=_int_range(1, 10**9),
        default=None,
        metavar="N",
        help="encode at most N frames",
    )
    e.add_argument(
        "--landmarks",
        choices=["dlib", "face-alignment"],
        default="dlib",
        help="landmark detector (default: dlib, works offline)",
    )
    e.add_argument(
        "--motion-step",
        type=_float_range(0.05, 20.0),
        default=None,
        metavar="PX",
        help="motion quantisation step in crop px (default: the coder's)",
    )
    _add_sender_options(e)
    e.add_argument(
        "--model",
        choices=["warp", "grace-s"],
        default=None,
        help="generator the stream is made for, named in its header (default: grace-s when "
        "its shipped card marks it the default, else warp)",
    )

    d = add(
        "decode",
        cmd_decode,
        "decode an .agc stream into a video (.mp4: H.264, .mkv: FFV1 lossless)",
    )
    d.add_argument("input", help=".agc file")
    d.add_argument("output", help="output video: .mp4 / .mov (H.264) or .mkv (FFV1, lossless)")
    d.add_argument(
        "--backend",
        default=None,
        help="generator backend (default: the one the stream's model names)",
    )
    d.add_argument(
        "--replay",
        type=float,
        nargs="?",
        const=DEFAULT_REPLAY_PX,
        metavar="PX",
        help="temporal replay: reuse 32-px tiles whose motion is below PX pixels "
        f"(PX defaults to {DEFAULT_REPLAY_PX}, measured to cost <= 0.1 dB)",
    )

    i = add("info", cmd_info, "print an .agc stream's header, packets and rate breakdown")
    i.add_argument("input", help=".agc file")

    x = add("example", cmd_example, "write the self-made example talking-head clip")
    x.add_argument("output", help="output .mp4")
    x.add_argument("--seconds", type=_float_range(0.2, 60.0), default=4.0)

    default_data = str(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    b = add(
        "bench-motion",
        cmd_bench_motion,
        "measure the motion coder (rate, landmark error) on clips of ../shared/data",
    )
    b.add_argument("--data", default=default_data, help="data folder with manifest.csv")
    b.add_argument("--split", default="val")
    b.add_argument("--max-clips", type=int, default=None)
    b.add_argument("--motion-step", type=float, default=None)
    b.add_argument("--num-coeffs", type=int, default=None)
    b.add_argument(
        "--smoothing",
        type=float,
        nargs=2,
        metavar=("HZ", "BETA"),
        default=None,
        help="the encoder's One-Euro min cutoff and beta (default: the encoder's)",
    )
    b.add_argument("--cache", default="cache/tracks", help="folder for cached landmark tracks")

    v = add(
        "eval",
        cmd_eval,
        "rate, quality and speed of gracecodec against x264/x265 on a set of clips",
    )
    v.add_argument(
        "clips",
        help="folder of videos, or a manifest CSV (file,split,...) such as "
        "../shared/data/manifest.csv; a folder holding manifest.csv uses it",
    )
    v.add_argument("--out", default="out/eval", help="output folder (default: out/eval)")
    v.add_argument("--split", default="val", help="manifest split to use, or 'all' (default: val)")
    v.add_argument(
        "--quick",
        action="store_true",
        help="2 clips, 30 frames, 3 QPs, 2 operating points (for CI)",
    )
    v.add_argument(
        "--max-frames",
        type=_int_range(1, 10**9),
        default=None,
        metavar="N",
        help="use at most N frames of each clip",
    )
    v.add_argument(
        "--max-clips",
        type=_int_range(1, 10**6),
        default=None,
        metavar="N",
        help="use at most N clips",
    )
    v.add_argument(
        "--face-stride",
        type=_int_range(1, 1000),
        default=1,
        metavar="N",
        help="AKD/AED on every N-th frame only (the face descriptor is slow)",
    )
    v.add_argument(
        "--qps",
        type=_int_range(0, 51),
        nargs="+",
        metavar="QP",
        help="anchor QPs (default: 37 39 ... 51)",
    )
    v.add_argument(
        "--key-qualities",
        type=_int_range(0, 100),
        nargs="+",
        metavar="Q",
        help="gracecodec key-frame qualities (default: 20 40 60, none with --target-kbps)",
    )
    v.add_argument(
        "--target-kbps",
        type=_float_range(0.1, 10**6),
        nargs="+",
        metavar="KBPS",
        help="gracecodec rate targets in kbit/s (encode --target-kbps), a curve of their own",
    )
    v.add_argument(
        "--keyframe-intervals",
        type=_int_range(0, 10**6),
        nargs="+",
        metavar="N",
        help="gracecodec forced key-frame intervals, 0 = none (default: 0 125)",
    )
    v.add_argument(
        "--backends",
        nargs="+",
        metavar="NAME",
        choices=backend_names(),
        help="gracecodec generator backends to run (default: warp torch; csim is the int8 "
        "arithmetic at C speed)",
    )
    _add_sender_options(v, "gracecodec streams: ")

    bc = add("bench", cmd_bench, "encode and decode clips of ../shared/data: rate and speed table")
    bc.add_argument("--data", default=default_data, help="data folder with manifest.csv")
    bc.add_argument("--split", default="val")
    bc.add_argument("--max-clips", type=int, default=None)
    bc.add_argument("--backend", default=None)

    pd = add(
        "prepare-data",
        cmd_prepare_data,
        "cache crops and landmarks of ../shared/data for training (encoder's own pipeline)",
    )
    pd.add_argument("--data", default=default_data)
    pd.add_argument("--out", default="cache/train_data")
    pd.add_argument("--splits", nargs="+", default=["train", "val"])

    t = add("train", cmd_train, "train the learned generator (runs for hours; resumable)")
    t.add_argument(
        "train_args",
        nargs=argparse.REMAINDER,
        help="options of python -m codec.training.train (--run, --hours, ...)",
    )

    add("model-info", cmd_model_info, "print the learned generator's MACs and parameters")

    f = add(
        "fit-shape-model",
        cmd_fit_shape_model,
        "fit the PCA shape model on the train split (developer command)",
    )
    f.add_argument("--data", default=default_data)
    f.add_argument("--output", default=str(Path(__file__).parent / "assets" / "shape_model.npz"))
    f.add_argument("--cache", default="cache/tracks")

    sv = add("serve", cmd_serve, "receive live calls: decode in real time, record and/or show")
    sv.add_argument("--port", type=_int_range(0, 65535), required=True, help="0: any free port")
    sv.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: loopback; others need --token)",
    )
    sv.add_argument("--record", metavar="MP4", help="record each call (.mp4 / .mkv)")
    sv.add_argument("--display", action="store_true", help="show the call in an OpenCV window")
    sv.add_argument("--backend", default=None, help="generator backend (default: the stream's)")
    sv.add_argument("--token", help="shared token callers must send (or GRACECODEC_TOKEN)")
    sv.add_argument("--tls-cert", metavar="PEM", help="TLS certificate chain (with --tls-key)")
    sv.add_argument("--tls-key", metavar="PEM", help="TLS private key")
    sv.add_argument("--once", action="store_true", help="exit after the first call ends")

    cl = add("call", cmd_call, "call a receiver: stream a video file or a camera live")
    cl.add_argument("target", metavar="HOST:PORT", help="the receiver (gracecodec serve)")
    src = cl.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="video file, played at its own frame rate")
    src.add_argument("--camera", type=_int_range(0, 99), metavar="N", help="OpenCV camera N")
    cl.add_argument("--loop", action="store_true", help="play --input again and again")
    cl.add_argument("--token", help="the receiver's token (or GRACECODEC_TOKEN)")
    cl.add_argument("--tls-ca", metavar="PEM", help="CA certificate: use TLS, trust this CA")
    cl.add_argument(
        "--max-seconds",
        type=_float_range(0.1, 10**7),
        default=None,
        metavar="S",
        help="hang up after S seconds",
    )
    return p


def _int_range(lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} is outside {lo}..{hi}")
        return v

    return parse


def _float_range(lo: float, hi: float):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} is outside {lo}..{hi}")
        return v

    return parse


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # `train` hands its options, in order, to the trainer's own parser; every other
    # command parses strictly (exits 2 on usage errors).
    if argv[:1] == ["train"]:
        args = parser.parse_args(["train"])
        args.train_args = argv[1:]
    else:
        args = parser.parse_args(argv)
    try:
        return args.func(args)
    except GraceError as e:
        print(f"gracecodec: error: {e}", file=sys.stderr)
        return 1
    except FileNotFoundError as e:
        print(f"gracecodec: error: {InputError(f'{e.filename}: no such file')}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gracecodec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
