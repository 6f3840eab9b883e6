"""`gracecodec serve` / `gracecodec call` in-process, and the short soak."""

from __future__ import annotations

import socket
import threading

from codec.cli import main
from codec.video import probe_video
from transport.soak import run_soak


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_and_call_print_final_stats(example_clip, tmp_path, capsys):
    port, out = free_port(), tmp_path / "call.mp4"
    codes: list[int] = []
    serve = threading.Thread(
        target=lambda: codes.append(
            main(["serve", "--port", str(port), "--once", "--record", str(out)])
        )
    )
    serve.start()
    try:
        argv = ["call", f"127.0.0.1:{port}", "--input", str(example_clip), "--max-seconds", "0.6"]
        assert main(argv) == 0
    finally:
        serve.join(timeout=10)
    assert codes == [0]
    printed = capsys.readouterr().out
    for words in ("frames sent", "received", "shown", "dropped", "kbit/s", "median", "p95"):
        assert printed.count(words) >= 2, words  # the sender's line and the receiver's
    assert "call 1:" in printed
    assert 10 <= probe_video(out).frame_count <= 16  # 0.6 s at 25 fps


def test_call_errors_are_one_line(example_clip, capsys):
    assert main(["call", "127.0.0.1:1", "--camera", "0"]) == 1
    assert main(["call", "nowhere", "--input", str(example_clip)]) == 1
    assert main(["serve", "--port", "0", "--host", "0.0.0.0"]) == 1
    assert main(["serve", "--port", "0", "--display"]) == 1  # headless OpenCV here
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("gracecodec: error:") for line in lines)
    assert "camera 0" in lines[0] and "HOST:PORT" in lines[1]
    assert "token" in lines[2] and "--display" in lines[3]


def test_short_soak_keeps_memory_flat_and_frames_flowing():
    # The CPU may be shared with other work: bounds here are looser than the benchmark's.
    result = run_soak(3.0, warmup=1.0, max_rss_growth_mb=50, max_stall_ms=1000)
    assert result.ok, result.report()
    assert result.frames_received == result.frames_sent >= 70
