"""Throughput test of the board runtime, stage by stage (like finn-examples' one).

    python -m decoder_fpga.board_bench --backend pynq-sim [--frames N] [--size 256]
        [--program DIR | --checkpoint PT]

Runs one key frame (the reference stage: its features stay in the activation buffer)
then N frames, and prints per frame the host time of each stage: pack (register writes),
flush, run (start to done), invalidate, arm (the ARM ops), unpack (frame out). Without a
program it uses `perf.shape_program` (the real layer shapes, placeholder weights). Then
render_many over the same frames (bit-identical to the serial run?) and its split of
motion_head: the 128/256 px parts' time on the ARM worker, what stays in series, and how
long the steps that need them waited.

Then the co-processor schedule on the PYNQ-Z1, **modelled**: engine time from the
performance model (decoder_fpga/perf.py, 100 MHz), ARM time = the host's measured ARM-op
time x `--arm-factor` (an assumed Cortex-A9 slow-down; measure on the board), and three
schedules: serial (ARM, engines, ARM, ... in turn) and overlapped (the ARM works on frame
n+1's inputs and frame n-1's output while the engines run frame n: period = max(engines,
ARM); needs a second activation buffer for the frame-stage temporaries — not
implemented, modelled) and render_many's (`perf.runtime_schedule`: motion_head's 64 px
part in series, its 128/256 px parts on the worker under the 64 px decoder stage). On
`pynq-sim` the stage times are real host times of the simulation, not board times.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from codec.errors import GraceError

from . import perf
from .board_backend import STAGES


def _face(size: int, rng) -> np.ndarray:
    from codec.motion import default_shape_model

    sm = default_shape_model()
    pts = sm.mean.reshape(68, 2) * sm.scale0 * size / 256 + size / 2
    return (pts + rng.normal(0, size / 128, pts.shape)).astype(np.float32)


def modelled_schedule(program, arm_ms_host: dict, arm_factor: float) -> dict:
    """Per-frame board time (s), serial, fully overlapped and render_many's schedule
    (`perf.runtime_schedule`: motion_head's 64 px part and the deferred parts' arena
    writes in series, the rest on the ARM worker under the engines) (all modelled).
    arm_ms_host: host ms a frame by ARM op, split as `perf.arm_host_ms` splits it (the
    trace's `arm_by_op`)."""
    import dataclasses

    a = dataclasses.replace(perf.A, arm_factor=arm_factor)
    engines = sum(r["overlapped"] for r in perf.step_table(program, "frame")) / a.clock_hz
    arm = 1e-3 * sum(arm_ms_host.values()) * arm_factor
    rs = perf.runtime_schedule(program, a, arm_ms_host)
    return {
        "engines_s": engines,
        "arm_s": arm,
        "serial_s": engines + arm,
        "overlapped_s": max(engines, arm),
        "runtime_s": rs["cycles"] / a.clock_hz,
        "stall_s": rs["stall_cycles"] / a.clock_hz,
        "deferred": rs["deferred"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m decoder_fpga.board_bench", description=__doc__.split("\n")[0]
    )
    p.add_argument("--backend", default="pynq-sim", choices=["pynq-sim", "pynq"])
    p.add_argument("--frames", type=int, default=3)
    p.add_argument("--size", type=int, default=256, help="shape program size (no --program)")
    p.add_argument("--program", help="a compiled program folder")
    p.add_argument("--checkpoint", help="a float checkpoint (quantised and cached once)")
    p.add_argument("--arm-factor", type=float, default=perf.A.arm_factor,
                   help="assumed Cortex-A9 / this host slow-down of the ARM ops (modelled)")  # fmt: skip
    args = p.parse_args(argv)
    try:
        from .board_backend import PynqGenerator, PynqSimGenerator

        if args.program or args.checkpoint:
            from .backends import resolve_program

            program = resolve_program(checkpoint=args.checkpoint, program=args.program)
        else:
            from codec.models.grace_s import GraceSConfig

            program = perf.shape_program(GraceSConfig(size=args.size))
        cls = PynqGenerator if args.backend == "pynq" else PynqSimGenerator
        gen = cls(program=program)
        rng = np.random.default_rng(0)
        s = program.size
        img = (
            rng.integers(0, 256, (s // 16, s // 16, 3)).astype(np.uint8).repeat(16, 0).repeat(16, 1)
        )
        gen.set_reference(img, _face(s, rng))
        lms = [_face(s, rng) for _ in range(args.frames)]
        t0 = time.perf_counter()
        serial = [gen.render(lm) for lm in lms]
        t1 = time.perf_counter()
        n_trace = len(gen.trace)
        overlapped = list(gen.render_many(lms))
        t2 = time.perf_counter()
        many = [r for r in gen.trace[n_trace:] if r["stage"] == "frame"]
        del gen.trace[n_trace:]  # the table below is the serial run's
        same = all(np.array_equal(a, b) for a, b in zip(serial, overlapped))
    except GraceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    head = f"{'':>10}" + "".join(f"{st:>11}" for st in (*STAGES, "total")) + "  engine steps"
    print(f"{args.backend}: {s}x{s}, host times in ms (simulation: not board times)")
    print(head)
    for i, r in enumerate(gen.trace):
        name = "key frame" if r["stage"] == "reference" else f"frame {i - 1}"
        cells = "".join(f"{1e3 * r[st]:>11.2f}" for st in (*STAGES, "total"))
        print(f"{name:>10}{cells}  {r['engine_steps']}")
    frames = [r for r in gen.trace if r["stage"] == "frame"]
    if frames:
        by_op = {
            k: 1e3 * float(np.mean([r["arm_by_op"].get(k, 0.0) for r in frames]))
            for k in frames[0]["arm_by_op"]
        }
        m = modelled_schedule(program, by_op, args.arm_factor)
        print(
            f"\nPYNQ-Z1 per frame (modelled: engines from decoder_fpga/perf.py at 100 MHz, "
            f"ARM = host x {args.arm_factor:g}):"
        )
        print(f"  engines {1e3 * m['engines_s']:.1f} ms, ARM ops {1e3 * m['arm_s']:.1f} ms")
        print(f"  serial     {1e3 * m['serial_s']:.1f} ms/frame = {1 / m['serial_s']:.2f} fps")
        print(
            f"  overlapped {1e3 * m['overlapped_s']:.1f} ms/frame = {1 / m['overlapped_s']:.2f} fps "
            "(all ARM work of neighbouring frames under the engine runs; modelled)"
        )
        print(
            f"  render_many {1e3 * m['runtime_s']:.1f} ms/frame = {1 / m['runtime_s']:.2f} fps "
            "(its schedule: motion_head's 64 px part inline, its 128/256 px parts and the "
            "rest under the engines; modelled)"
        )
        parts = ", ".join(f"{'/'.join(d['outputs'])} {d['ms']:.1f} ms" for d in m["deferred"])
        print(
            f"    deferred to the ARM worker: {parts or 'nothing'}; waiting steps "
            f"{', '.join(d['join'] for d in m['deferred']) or '-'} wait "
            f"{1e3 * m['stall_s']:.1f} ms a frame (modelled)"
        )
    if lms:
        n = len(lms)
        print(
            f"\nmeasured here ({args.backend}, host times): serial render "
            f"{1e3 * (t1 - t0) / n:.1f} ms/frame, overlapped render_many "
            f"{1e3 * (t2 - t1) / n:.1f} ms/frame over {n} frames; frames "
            f"{'bit-identical' if same else 'DIFFER'}"
        )
    if many:
        print(
            "render_many here, a frame: motion_head's deferred parts "
            f"{1e3 * np.mean([r['arm_deferred'] for r in many]):.2f} ms on the ARM worker, "
            f"in series {1e3 * np.mean([r['arm_inline'] for r in many]):.2f} ms (64 px part "
            "+ arena writes), waits for the deferred parts "
            f"{1e3 * np.mean([r['wait'] for r in many]):.2f} ms (host times)"
        )
    print(f"flushes {gen.board.flushes}, invalidates {gen.board.invalidates}, engine starts "
          f"{sum(e.runs for e in gen.board.engines.values())}")  # fmt: skip
    gen.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
