"""The board runtime: `pynq-sim` frames equal `csim` and `int8` bit for bit, the driver
refuses what the board would (busy start, unflushed or stale buffers, unaligned or
out-of-range addresses, a wrong overlay), faults end in clear errors without hanging, and
the `pynq` device code runs against a stand-in `pynq` module. Tests marked `board` run
the same vectors on a PYNQ-Z1 and are skipped elsewhere."""

import shutil
import sys
import time
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if shutil.which("g++") is None or shutil.which("make") is None:
    pytest.skip("the simulated engines need g++ and make", allow_module_level=True)

from codec.errors import BackendUnavailableError, DeviceError, ModelMismatchError  # noqa: E402
from codec.generators import backend_names, make_generator  # noqa: E402
from codec.models.grace_s import GraceS, GraceSConfig  # noqa: E402
from codec.motion import mean_face  # noqa: E402
from decoder_fpga import int8_ref as ref  # noqa: E402
from decoder_fpga import quantize as Q  # noqa: E402
from decoder_fpga import regmap as R  # noqa: E402
from decoder_fpga.backends import CsimGenerator, Int8Generator  # noqa: E402
from decoder_fpga.board_backend import STAGES, PynqSimGenerator  # noqa: E402
from decoder_fpga.driver import EngineDriver  # noqa: E402
from decoder_fpga.program import compile_program  # noqa: E402
from decoder_fpga.sim_device import SimDevice, default_ip_dict  # noqa: E402

SIZE = 64
TINY = GraceSConfig(size=SIZE, enc=(8, 8, 16), motion=(8, 16, 24), dec=(24, 8, 8), dec_blocks=2)


@pytest.fixture(scope="module")
def program():
    torch.manual_seed(1)
    m = GraceS(TINY).eval()
    with torch.no_grad():
        m.mot_head.weight.normal_(0, 0.05)
        m.out.weight.normal_(0, 0.05)
        m.out.bias.normal_(0, 0.02)
    return compile_program(Q.quantize_model(m, Q.synthetic_samples(SIZE, 3, seed=4)))


def face(shift=(0.0, 0.0), mouth=0.0) -> np.ndarray:
    k = SIZE / 256
    pts = mean_face(SIZE) + np.float32(np.array(shift) * k)
    pts[57:60, 1] += mouth * k
    return pts


def key_frame(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8).repeat(8, 0).repeat(8, 1)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    return np.clip(img.astype(int) + ((xs + ys) % 16)[..., None] * 4, 0, 255).astype(np.uint8)


def clip():
    rng = np.random.default_rng(7)
    out = []
    for k in range(2):  # two key frames, three frames each
        out.append((key_frame(k), face()))
        for _ in range(2):
            out.append((None, face(rng.normal(0, 4, 2), mouth=rng.uniform(0, 8))))
    return out


def decode(gen, frames) -> list[np.ndarray]:
    out = []
    for img, lm in frames:
        if img is not None:
            gen.set_reference(img, lm)
        out.append(gen.render(lm))
    return out


# ---- the ladder of equalities -----------------------------------------------------------


def test_registered():
    assert {"pynq", "pynq-sim"} <= set(backend_names())


def test_pynq_sim_equals_csim_and_int8(program):
    frames = clip()
    dev = SimDevice()
    gen = PynqSimGenerator(program=program, device=dev)
    c = decode(gen, frames)
    a = decode(Int8Generator(program=program), frames)
    b = decode(CsimGenerator(program=program), frames)
    for x, y, z in zip(a, b, c):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)
    assert not np.array_equal(c[1], c[2])
    # every engine step went through the registers; flushes only where the CPU wrote
    n_ref, n_frame = (
        len([s for s in program.steps(st) if s["op"] != "arm"]) for st in ("reference", "frame")
    )
    assert dev.starts == 2 * n_ref + 6 * n_frame  # two key frames, six frames
    assert dev.starts == sum(e.starts for e in dev._engines.values())
    assert gen.board.flushes < dev.starts
    # the trace: one record per stage run, all stages timed
    assert [r["stage"] for r in gen.trace[:2]] == ["reference", "frame"]
    assert set(STAGES) <= set(gen.trace[1]) and gen.trace[1]["run"] > 0
    gen.close()
    assert dev.buffers == []


def test_rendered_frames_are_double_buffered(program):
    gen = PynqSimGenerator(program=program)
    gen.set_reference(key_frame(0), face())
    f1 = gen.render(face((2.0, 0.0)))
    f2 = gen.render(face((-2.0, 1.0)))
    assert f1.base is None or f1.base is not gen.board.frames[0].array  # a copy
    np.testing.assert_array_equal(gen.board.frames[0].array.reshape(f1.shape), f1)
    np.testing.assert_array_equal(gen.board.frames[1].array.reshape(f2.shape), f2)


# ---- bad input and faults ---------------------------------------------------------------


def test_program_for_another_model(program):
    with pytest.raises(ModelMismatchError):
        PynqSimGenerator(program=program, model_digest=b"\x01" * 8)


def test_device_timeout_is_an_error_not_a_hang(program):
    dev = SimDevice(hang_on_start=3)
    gen = PynqSimGenerator(program=program, device=dev, timeout_s=0.05)
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="no ap_done after 0.05 s"):
        gen.set_reference(key_frame(0), face())
    assert time.monotonic() - t0 < 2.0
    with pytest.raises(DeviceError, match="busy"):  # the hung engine refuses a new start
        gen.set_reference(key_frame(0), face())


def test_allocation_failure_releases_what_it_took(program):
    dev = SimDevice(capacity=program.weights_bytes + 8192)
    with pytest.raises(DeviceError, match="cannot allocate .* activations"):
        PynqSimGenerator(program=program, device=dev)
    assert dev.buffers == []


def test_overlay_missing_ip_or_wrong_version():
    ips = default_ip_dict()
    del ips["gridsample_engine_0"]
    with pytest.raises(DeviceError, match="no gridsample_engine"):
        SimDevice(ip_dict=ips)
    ips = default_ip_dict()
    ips["conv_engine_0"]["type"] = "gracecodec:hls:conv_engine:0.9"
    with pytest.raises(DeviceError, match="conv_engine:0.9, this driver needs .*conv_engine:1.0"):
        SimDevice(ip_dict=ips)


def conv_setup(dev: SimDevice, rng, cin=8, cout=16, hw=8):
    x = rng.integers(-128, 128, (cin, hw, hw)).astype(np.int8)
    w = rng.integers(-127, 128, (cout, cin, 3, 3)).astype(np.int8)  # weights in [-127, 127]
    params = np.stack([rng.integers(-999, 999, cout), np.full(cout, 1 << 20), np.full(cout, 28)], 1)
    params = params.astype(np.int32)
    bx, bw, by = (
        dev.allocate(x.nbytes, "x"),
        dev.allocate(w.nbytes + params.nbytes, "w"),
        dev.allocate(cout * hw * hw, "y"),
    )
    bx.array[:] = x.reshape(-1).view(np.uint8)
    bw.array[: w.nbytes] = w.reshape(-1).view(np.uint8)
    bw.array[w.nbytes :] = params.reshape(-1).view(np.uint8)
    cfg = dict(cin=cin, cout=cout, h=hw, w=hw, k=3, stride=1, depthwise=0, relu=0, upsample=0,
               residual=0, res_m=0, res_s=0, tile_rows=0)  # fmt: skip
    args = dict(x=bx.physical_address, w=bw.physical_address, params=bw.physical_address + w.nbytes,
                res=0, y=by.physical_address, x1=bx.physical_address, cfg=cfg)  # fmt: skip
    expect = ref.conv2d_int8(x, w, params[:, 0], params[:, 1], params[:, 2])
    return (bx, bw, by), args, expect


def test_engine_through_registers_and_coherence_rules():
    rng = np.random.default_rng(0)
    dev = SimDevice()
    (bx, bw, by), args, expect = conv_setup(dev, rng)
    eng = EngineDriver(dev.engine("conv"), R.CONV, timeout_s=0.5)
    with pytest.raises(DeviceError, match="not flushed"):  # the CPU wrote x, w: no flush
        eng.run(**args)
    bx.flush()
    bw.flush()
    eng.run(**args)
    with pytest.raises(DeviceError, match="without an invalidate"):
        by.cpu_access(0, 16)
    assert not by.array.any()  # the CPU still sees its stale (zero) lines
    by.invalidate()
    by.cpu_access(0, by.nbytes)
    np.testing.assert_array_equal(by.array.view(np.int8).reshape(expect.shape), expect)
    bx.array[0] ^= 1  # a CPU write not flushed, then an invalidate would drop it
    with pytest.raises(DeviceError, match="never flushed"):
        bx.invalidate()


def test_conv_reads_odd_channels_through_x1():
    """The conv engine's second read port is real: x1 (gmem1) carries the odd input
    channels, so a register map whose x1 points at another copy of the input computes
    with that copy's odd channels and x's even ones."""
    rng = np.random.default_rng(2)
    dev = SimDevice()
    (bx, bw, by), args, _ = conv_setup(dev, rng)
    x = bx.array.view(np.int8).reshape(8, 8, 8).copy()
    x_alt = rng.integers(-128, 128, x.shape).astype(np.int8)
    b_alt = dev.allocate(x.nbytes, "x_alt")
    b_alt.array[:] = x_alt.reshape(-1).view(np.uint8)
    for b in (bx, bw, by, b_alt):
        b.flush()
    EngineDriver(dev.engine("conv"), R.CONV).run(**{**args, "x1": b_alt.physical_address})
    by.invalidate()
    mixed = x.copy()
    mixed[1::2] = x_alt[1::2]
    wp = bw.array.view(np.uint8)
    w = wp[: 16 * 8 * 9].view(np.int8).reshape(16, 8, 3, 3)
    params = wp[16 * 8 * 9 :].view(np.int32).reshape(16, 3)
    expect = ref.conv2d_int8(mixed, w, params[:, 0], params[:, 1], params[:, 2])
    np.testing.assert_array_equal(by.array.view(np.int8).reshape(expect.shape), expect)


def test_busy_start_unaligned_and_out_of_range():
    rng = np.random.default_rng(1)
    dev = SimDevice(latency_polls=5)
    bufs, args, _ = conv_setup(dev, rng)
    for b in bufs:
        b.flush()
    eng = EngineDriver(dev.engine("conv"), R.CONV, timeout_s=0.5)
    eng.write_args(**args)
    eng.start()
    with pytest.raises(DeviceError, match="busy"):
        eng.start()  # the driver checks ap_idle
    with pytest.raises(DeviceError, match="busy"):
        dev.engine("conv").write(R.CTRL, R.AP_START)  # the device refuses too
    assert eng.wait() == 0
    with pytest.raises(DeviceError, match="aligned"):
        eng.run(**{**args, "x": args["x"] + 4})
    with pytest.raises(DeviceError, match="outside every allocated buffer"):
        eng.run(**{**args, "y": args["y"] + 8192})
    with pytest.raises(DeviceError, match="not in its map"):
        dev.engine("conv").write(0x14, 1)  # reserved
    bad = {**args, "cfg": {**args["cfg"], "k": 5}}
    with pytest.raises(DeviceError, match="BAD_KERNEL"):
        eng.run(**bad)


def test_pynq_unavailable_here():
    if "pynq" in sys.modules or _has_pynq():
        pytest.skip("pynq is installed here")
    with pytest.raises(BackendUnavailableError, match="docs/board.md"):
        make_generator("pynq", "grace-s")


def _has_pynq() -> bool:
    import importlib.util

    return importlib.util.find_spec("pynq") is not None


# ---- the pynq device code against a stand-in pynq (built on the simulated device) -------


def fake_pynq(dev: SimDevice, ip_dict=None) -> types.ModuleType:
    mod = types.ModuleType("pynq")
    registry: dict[str, type] = {}

    class DefaultIP:
        def __init_subclass__(cls, **kw):
            super().__init_subclass__(**kw)
            for v in getattr(cls, "bindto", []):
                registry[v] = cls

        def __init__(self, description):
            self.description = description
            self._regs = dev.engine(
                "conv" if "conv_engine" in description["type"] else "grid_sample"
            )

        def read(self, offset):
            return self._regs.read(offset)

        def write(self, offset, value):
            self._regs.write(offset, value)

    class Overlay:
        def __init__(self, path, download=True):
            self.ip_dict = ip_dict or default_ip_dict()
            for name, d in self.ip_dict.items():
                setattr(self, name, registry.get(d["type"], DefaultIP)(d))

    class Buf(np.ndarray):
        pass

    def allocate(shape, dtype):
        sb = dev.allocate(int(np.prod(shape)), "pynq")
        arr = sb.array.view(Buf)
        arr.physical_address = sb.physical_address
        arr.flush, arr.invalidate, arr.freebuffer = sb.flush, sb.invalidate, sb.free
        return arr

    mod.DefaultIP, mod.Overlay, mod.allocate = DefaultIP, Overlay, allocate
    return mod


def test_pynq_device_code_with_a_stand_in_pynq(program, tmp_path, monkeypatch):
    from decoder_fpga import board_backend, pynq_device

    dev = SimDevice()
    monkeypatch.setitem(sys.modules, "pynq", fake_pynq(dev))
    monkeypatch.setattr(pynq_device, "_DRIVERS", {})
    with pytest.raises(DeviceError, match="no overlay"):
        pynq_device.PynqDevice(tmp_path / "grace.bit")
    (tmp_path / "grace.bit").write_bytes(b"bit")
    (tmp_path / "grace.hwh").write_text("<hwh/>")
    monkeypatch.setenv(pynq_device.OVERLAY_ENV, str(tmp_path / "grace.bit"))
    gen = board_backend.PynqGenerator(program=program)
    assert gen.name == "pynq" and isinstance(
        gen.device.engine("conv"), pynq_device._DRIVERS["conv"]
    )
    frames = clip()[:3]
    np.testing.assert_array_equal(
        np.stack(decode(gen, frames)), np.stack(decode(Int8Generator(program=program), frames))
    )
    assert dev.starts > 0


# ---- on the board (skipped here) ---------------------------------------------------------


@pytest.mark.board
def test_board_engines_match_int8_ref():
    pytest.importorskip("pynq", reason="needs a PYNQ-Z1 with the gracecodec overlay")
    from decoder_fpga.pynq_device import PynqDevice

    dev = PynqDevice()
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (8, 8, 8)).astype(np.int8)
    w = rng.integers(-128, 128, (16, 8, 3, 3)).astype(np.int8)
    params = np.stack([rng.integers(-999, 999, 16), np.full(16, 1 << 20), np.full(16, 28)], 1)
    params = params.astype(np.int32)
    bx, bw, by = (
        dev.allocate(x.nbytes, "x"),
        dev.allocate(w.nbytes + 192, "w"),
        dev.allocate(1024, "y"),
    )
    bx.array[:] = x.reshape(-1).view(np.uint8)
    bw.array[: w.nbytes] = w.reshape(-1).view(np.uint8)
    bw.array[w.nbytes :] = params.reshape(-1).view(np.uint8)
    bx.flush()
    bw.flush()
    cfg = dict(cin=8, cout=16, h=8, w=8, k=3, stride=1, depthwise=0, relu=0, upsample=0,
               residual=0, res_m=0, res_s=0, tile_rows=0)  # fmt: skip
    EngineDriver(dev.engine("conv"), R.CONV).run(
        x=bx.physical_address, w=bw.physical_address, params=bw.physical_address + w.nbytes,
        res=0, y=by.physical_address, x1=bx.physical_address, cfg=cfg,
    )  # fmt: skip
    by.invalidate()
    expect = ref.conv2d_int8(x, w, params[:, 0], params[:, 1], params[:, 2])
    np.testing.assert_array_equal(np.asarray(by.array).view(np.int8).reshape(expect.shape), expect)


@pytest.mark.board
def test_board_decode_equals_pynq_sim(program):
    pytest.importorskip("pynq", reason="needs a PYNQ-Z1 with the gracecodec overlay")
    from decoder_fpga.board_backend import PynqGenerator

    frames = clip()
    a = decode(PynqGenerator(program=program), frames)
    b = decode(PynqSimGenerator(program=program), frames)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_overlapped_schedule_equals_csim_and_int8(program):
    """render_many (ARM worker thread preparing frame t+1 and converting t-1 while the
    engines run frame t) gives csim's and int8's frames bit for bit, and the simulated
    device checked every engine start and the coherence as in the serial schedule."""
    rng = np.random.default_rng(3)
    lms = [face(rng.normal(0, 4, 2), mouth=rng.uniform(0, 8)) for _ in range(5)]
    dev = SimDevice()
    gen = PynqSimGenerator(program=program, device=dev)
    gen.yield_while_polling = True  # the board's polling (yield the GIL to the worker)
    want_c, want_i = CsimGenerator(program=program), Int8Generator(program=program)
    for k in range(2):  # two key frames, a batch of frames after each
        for g in (gen, want_c, want_i):
            g.set_reference(key_frame(k), face())
        starts = dev.starts
        got = list(gen.render_many(lms))
        assert dev.starts - starts == len(lms) * sum(
            1 for s in program.steps("frame") if s["op"] != "arm"
        )
        for x, lm in zip(got, lms):
            np.testing.assert_array_equal(x, want_c.render(lm))
            np.testing.assert_array_equal(x, want_i.render(lm))
    assert not np.array_equal(got[0], got[1])
    assert all(e.yield_gil is None for e in gen.board.engines.values())  # restored
    for r in gen.trace[-len(lms) :]:  # motion_head's 128/256 px parts ran on the worker
        assert r["arm_deferred"] > 0 and r["wait"] >= 0
        assert set(r["arm_by_op"]) >= {"motion_head", "late:g128+occ128", "write:g256+occ256"}
    # the last frames sit in the two frame buffers; the serial path still agrees after
    np.testing.assert_array_equal(gen.render(lms[0]), want_c.render(lms[0]))
    gen.close()


def test_overlapped_schedule_still_refuses_unflushed_inputs(program, monkeypatch):
    """The worker never touches the arena: an ARM op that wrote it behind the driver's
    back (no cpu_view, so no flush) is refused by the simulated engine in render_many
    too."""
    from decoder_fpga import backends

    gen = PynqSimGenerator(program=program)
    gen.set_reference(key_frame(0), face())
    orig = backends.ARM_OPS["frame_inputs"]

    def sneaky(run, **kw):
        orig(run, **kw)
        t = run.program.tensor("grid64")
        gen.board.cpu_wrote = False  # pretend it was flushed
        gen.board.arena.array[t["offset"]] ^= 1

    monkeypatch.setitem(backends.ARM_OPS, "frame_inputs", sneaky)
    with pytest.raises(DeviceError, match="not flushed"):
        list(gen.render_many([face(), face((1.0, 0.0))]))
    gen.close()


def test_deferred_motion_head_writes_go_through_the_driver(program, monkeypatch):
    """render_many writes motion_head's deferred parts into the arena at the join, through
    cpu_view (invalidate, then a flush before the next engine start); the same bytes
    written behind the driver's back are refused by the simulated engine that reads them
    (wf1), as the board would read stale DDR."""
    from decoder_fpga import backends

    gen = PynqSimGenerator(program=program)
    gen.set_reference(key_frame(0), face())
    want = gen.render(face((1.0, 0.0)))
    np.testing.assert_array_equal(list(gen.render_many([face((1.0, 0.0))]))[0], want)

    def sneaky(self, names, arrays):
        for n, a in zip(names, arrays):
            lo, hi = backends.tensor_span(self.program, n)
            gen.board.arena.array[lo:hi] = np.ascontiguousarray(a).view(np.uint8).reshape(-1)
            gen.board.arena.array[lo] ^= 1

    monkeypatch.setattr(backends.ProgramRunner, "_write", sneaky)
    with pytest.raises(DeviceError, match="argument grid .*not flushed"):
        list(gen.render_many([face(), face((1.0, 0.0))]))
    gen.close()
