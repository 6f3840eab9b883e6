"""Writes the self-made example talking-head clip: python examples/make_example_clip.py out/example.mp4"""

import argparse

from codec.example import write_example_clip

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("output", help="output .mp4")
parser.add_argument("--seconds", type=float, default=4.0)
args = parser.parse_args()
write_example_clip(args.output, seconds=args.seconds)
print(f"wrote {args.output}")
