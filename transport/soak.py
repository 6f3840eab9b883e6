"""Soak benchmark: a long live call on loopback with a synthetic talking head.

    python -m transport.soak --minutes 10

Sender and receiver run in this process (real gRPC over 127.0.0.1, 25 fps, the example
talking head of codec.example made frame by frame). It prints the growth of the process's
resident memory after a warm-up, and the longest stall between two frames shown, and exits
1 if either is over its bound:

- memory: RSS may grow by at most 20 MB after the warm-up (the first 30 s, or a quarter of
  a shorter run): queues are bounded, statistics are fixed-size histograms;
- stalls: no gap between two shown frames longer than 500 ms (frames are 40 ms apart; the
  motion coder releases some packets in pairs, so ~80 ms gaps are normal).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import threading
import time
from fractions import Fraction

MAX_RSS_GROWTH_MB = 20.0
MAX_STALL_MS = 500.0
WARMUP_SECONDS = 30.0


def rss_mb() -> float:
    """Resident memory of this process now (Linux /proc), else its peak (getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


@dataclasses.dataclass
class SoakResult:
    seconds: float
    fps: float
    frames_sent: int
    frames_received: int
    frames_shown: int
    frames_dropped: int
    kbps: float
    latency_median_ms: float | None
    latency_p95_ms: float | None
    rss_after_warmup_mb: float
    rss_max_mb: float
    longest_stall_ms: float
    max_rss_growth_mb: float
    max_stall_ms: float
    rss_trace: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # (s, MB)

    @property
    def rss_growth_mb(self) -> float:
        return max(0.0, self.rss_max_mb - self.rss_after_warmup_mb)

    @property
    def ok(self) -> bool:
        return (
            self.rss_growth_mb <= self.max_rss_growth_mb
            and self.longest_stall_ms <= self.max_stall_ms
            and self.frames_shown > 0
        )

    def _trace_points(self, n: int = 6) -> list[tuple[float, float]]:
        if not self.rss_trace:
            return []
        step = max(1, (len(self.rss_trace) - 1) // (n - 1))
        points = self.rss_trace[::step]
        return points if points[-1] == self.rss_trace[-1] else points + [self.rss_trace[-1]]

    def report(self) -> str:
        def verdict(good: bool) -> str:
            return "ok" if good else "OVER THE BOUND"

        lat = (
            f"latency median {self.latency_median_ms:.1f} ms, p95 {self.latency_p95_ms:.1f} ms"
            if self.latency_median_ms is not None and self.latency_p95_ms is not None
            else "latency n/a"
        )
        return "\n".join(
            [
                f"soak: {self.seconds:.0f} s at {self.fps:g} fps on loopback "
                "(synthetic talking head, 640x480)",
                f"frames sent {self.frames_sent}, received {self.frames_received}, "
                f"shown {self.frames_shown}, dropped {self.frames_dropped}; "
                f"{self.kbps:.2f} kbit/s; {lat}",
                f"memory: RSS {self.rss_after_warmup_mb:.1f} MB after the warm-up, "
                f"{self.rss_max_mb:.1f} MB at most later: growth {self.rss_growth_mb:.1f} MB "
                f"(bound {self.max_rss_growth_mb:g} MB) "
                f"{verdict(self.rss_growth_mb <= self.max_rss_growth_mb)}",
                "RSS over the call: "
                + ", ".join(f"{t:.0f} s {mb:.1f} MB" for t, mb in self._trace_points()),
                f"longest stall between shown frames: {self.longest_stall_ms:.0f} ms "
                f"(bound {self.max_stall_ms:g} ms) "
                f"{verdict(self.longest_stall_ms <= self.max_stall_ms)}",
            ]
        )


def run_soak(
    seconds: float,
    fps: int = 25,
    *,
    warmup: float | None = None,
    max_rss_growth_mb: float = MAX_RSS_GROWTH_MB,
    max_stall_ms: float = MAX_STALL_MS,
) -> SoakResult:
    """One call of `seconds` at `fps` on loopback; memory sampled every 0.5 s."""
    from codec.example import FRAME_SIZE, example_frames
    from encoder.encoder import Encoder, EncoderConfig

    from .receiver import Receiver, ReceiverConfig
    from .sender import Sender, SenderConfig

    warmup = min(WARMUP_SECONDS, seconds / 4) if warmup is None else warmup
    receiver = Receiver(ReceiverConfig())
    port = receiver.start()
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.monotonic(), rss_mb()))
            stop.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True, name="rss")
    try:
        encoder = Encoder(EncoderConfig(), Fraction(fps), *FRAME_SIZE)
        sender = Sender(SenderConfig(f"127.0.0.1:{port}"), encoder)
        frames = example_frames(int(seconds * fps), fps=float(fps))
        start = time.monotonic()
        sampler.start()
        sender.run(frames)
        receiver.wait(1, timeout=10)
    finally:
        stop.set()
        receiver.stop()
    if sampler.is_alive():
        sampler.join()
    sent = sender.stats()
    got = receiver.calls[0] if receiver.calls else sent
    after = [mb for t, mb in samples if t - start >= warmup] or [samples[-1][1]]
    return SoakResult(
        seconds=seconds,
        fps=fps,
        frames_sent=sent.frames_sent,
        frames_received=got.frames_received,
        frames_shown=got.frames_shown,
        frames_dropped=got.frames_dropped,
        kbps=got.kbps,
        latency_median_ms=got.latency_median_ms,
        latency_p95_ms=got.latency_p95_ms,
        rss_after_warmup_mb=after[0],
        rss_max_mb=max(after),
        longest_stall_ms=got.longest_stall_ms,
        max_rss_growth_mb=max_rss_growth_mb,
        max_stall_ms=max_stall_ms,
        rss_trace=[(t - start, mb) for t, mb in samples],
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m transport.soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--max-rss-growth-mb", type=float, default=MAX_RSS_GROWTH_MB)
    p.add_argument("--max-stall-ms", type=float, default=MAX_STALL_MS)
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.fps <= 0:
        p.error("--minutes and --fps must be positive")
    result = run_soak(
        args.minutes * 60,
        args.fps,
        max_rss_growth_mb=args.max_rss_growth_mb,
        max_stall_ms=args.max_stall_ms,
    )
    print(result.report())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
