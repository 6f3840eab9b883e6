"""Writes the self-made example talking-head clip (an H.264 MP4, 640x480, 25 fps).

python examples/make_example_clip.py out/example.mp4 [--seconds 4]
"""

from __future__ import annotations

import argparse

from codec.example import write_example_clip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the self-made example talking-head clip.")
    parser.add_argument("output", help="output .mp4 path (its folder must exist)")
    parser.add_argument("--seconds", type=float, default=4.0, help="clip length (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="motion seed (default 0)")
    args = parser.parse_args(argv)
    write_example_clip(args.output, seconds=args.seconds, seed=args.seed)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
