"""The compiler: every layer becomes engine steps within the limits, output-channel splits
give the same frames, the memory plan never overlaps live tensors, the JSON + blob round
trip, and shapes the engines cannot take are rejected with a clear error."""

import copy
import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from codec.errors import GraceError  # noqa: E402
from codec.models.grace_s import GraceS, GraceSConfig  # noqa: E402
from codec.motion import default_shape_model  # noqa: E402
from decoder_fpga import backends  # noqa: E402
from decoder_fpga import int8_ref as ref  # noqa: E402
from decoder_fpga import quantize as Q  # noqa: E402
from decoder_fpga.backends import Int8Generator  # noqa: E402
from decoder_fpga.program import (  # noqa: E402
    CompileError,
    Program,
    _lifetimes,
    compile_program,
    plan_memory,
    split_output_channels,
)

SIZE = 64
# Some layers wider than one 16-channel output group, so small weight banks force splits.
CONFIG = GraceSConfig(size=SIZE, enc=(8, 16, 24), motion=(8, 16, 40), dec=(24, 16, 8), dec_blocks=1)


@pytest.fixture(scope="module")
def qm():
    torch.manual_seed(0)
    m = GraceS(CONFIG).eval()
    with torch.no_grad():
        m.mot_head.weight.normal_(0, 0.05)
        m.out.weight.normal_(0, 0.05)
    return Q.quantize_model(m, Q.synthetic_samples(SIZE, 3, seed=2))


@pytest.fixture(scope="module")
def program(qm):
    return compile_program(qm)


def face(shift=(0.0, 0.0)) -> np.ndarray:
    sm = default_shape_model()
    k = SIZE / 256
    return (sm.mean.reshape(68, 2) * sm.scale0 * k + SIZE / 2 + np.array(shift) * k).astype(
        np.float32
    )


def frames(program, n=2) -> list[np.ndarray]:
    gen = Int8Generator(program=program)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8).repeat(8, 0).repeat(8, 1)
    gen.set_reference(img, face())
    return [gen.render(face(shift=rng.normal(0, 3, 2))) for _ in range(n)]


def all_steps(program):
    return program.steps("reference") + program.steps("frame")


def test_every_layer_is_compiled_in_order(qm, program):
    graph = qm.graph()
    names = [n.name for n in graph.nodes]
    compiled = []
    for st in all_steps(program):
        if not compiled or compiled[-1] != st["node"]:
            compiled.append(st["node"])
    assert compiled == [n.name for n in graph.nodes if n.stage == "reference"] + [
        n.name for n in graph.nodes if n.stage == "frame"
    ]
    assert set(compiled) == set(names)
    kinds = {st["node"]: st["op"] for st in all_steps(program)}
    for n in graph.nodes:
        want = {Q.ConvNode: "conv", Q.GridNode: "grid_sample", Q.ArmNode: "arm"}[type(n)]
        assert kinds[n.name] == want
    assert program.digest == qm.digest
    assert program.meta["arch"] == "grace-s"


def test_steps_fit_the_engines(program):
    for st in all_steps(program):
        c = st.get("cfg")
        if st["op"] == "conv":
            tr = ref.check_conv(
                c["cin"], c["cout"], c["h"], c["w"], k=c["k"], stride=c["stride"],
                depthwise=c["depthwise"], upsample=c["upsample"], relu=c["relu"],
                residual=c["residual"],
            )  # fmt: skip
            assert c["tile_rows"] == tr
            assert sorted(c) == sorted(f[0] for f in _conv_cfg_fields())
        elif st["op"] == "grid_sample":
            ref.check_grid_sample(
                c["c"], c["h"], c["w"], c["ho"], c["wo"], occlusion=c["occlusion"]
            )


def _conv_cfg_fields():
    from decoder_fpga.csim import ConvConfig

    return ConvConfig._fields_


def test_memory_plan_never_overlaps_live_tensors(qm, program):
    graph = qm.graph()
    _, life = _lifetimes(graph)
    tensors = program.meta["tensors"]
    roots = [n for n in life if graph.tensors[n].parent is None]
    n_ref = sum(1 for n in graph.nodes if n.stage == "reference")

    def span(n):
        t = tensors[n]
        return t["offset"], t["offset"] + int(np.prod(t["shape"])) * np.dtype(t["dtype"]).itemsize

    def live(n):  # persistent tensors live for ever once written
        a, b = life[n]
        return (a, 10**9) if a < n_ref <= b else (a, b)

    for i, a in enumerate(roots):
        assert span(a)[1] <= program.arena_bytes
        assert tensors[a]["offset"] % 64 == 0
        for b in roots[i + 1 :]:
            (la, ha), (lb, hb) = live(a), live(b)
            if la <= hb and lb <= ha:
                (s0, e0), (s1, e1) = span(a), span(b)
                assert e0 <= s1 or e1 <= s0, (a, b)
    persistent = {n for n in roots if tensors[n]["persistent"]}
    assert {"ref_in", "enc0", "enc1b", "enc2b", "ref64", "ref_heat"} <= persistent
    assert "enc1a" not in persistent and "mot0" not in persistent
    # the planner reuses memory: the arena is smaller than all tensors side by side
    total = sum(span(n)[1] - span(n)[0] for n in roots)
    assert program.arena_bytes < total
    assert plan_memory(graph)[1] == program.arena_bytes


def test_output_channel_splits_respect_the_limits_and_change_nothing(qm, program):
    small = dataclasses.replace(ref.CONV_LIMITS, w_bank_bytes=512)
    split = compile_program(qm, conv_limits=small)
    parts = {}
    for st in all_steps(split):
        if st["op"] == "conv":
            c = st["cfg"]
            ref.check_conv(
                c["cin"], c["cout"], c["h"], c["w"], k=c["k"], stride=c["stride"],
                depthwise=c["depthwise"], upsample=c["upsample"], limits=small,
            )  # fmt: skip
            parts.setdefault(st["node"], []).append(st["channels"])
    assert parts["mot2b"] == [[0, 32], [32, 40]]  # 40 x 40 x 3x3: 360 B a 32-channel group
    for ch in parts.values():  # the parts tile [0, cout) in order
        assert ch[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ch, ch[1:]))
    assert split.weights == program.weights  # a split is a sub-range, no repacking
    for a, b in zip(frames(split), frames(program)):
        np.testing.assert_array_equal(a, b)
    assert split_output_channels(40, 40, 3, False, ref.CONV_LIMITS) == [(0, 40)]


def test_serialisation_round_trip(tmp_path, program):
    program.save(tmp_path / "p")
    back = Program.load(tmp_path / "p")
    assert back.meta == program.meta and back.weights == program.weights
    assert json.loads((tmp_path / "p" / "program.json").read_text())["digest"] == program.digest
    for a, b in zip(frames(back, 1), frames(program, 1)):
        np.testing.assert_array_equal(a, b)
    # damaged blob / wrong version / missing file: clear errors
    blob = bytearray((tmp_path / "p" / "weights.bin").read_bytes())
    blob[10] ^= 1
    (tmp_path / "p" / "weights.bin").write_bytes(bytes(blob))
    with pytest.raises(CompileError, match="sha256"):
        Program.load(tmp_path / "p")
    program.save(tmp_path / "q")
    meta = json.loads((tmp_path / "q" / "program.json").read_text())
    meta["version"] = 99
    (tmp_path / "q" / "program.json").write_text(json.dumps(meta))
    with pytest.raises(CompileError, match="version"):
        Program.load(tmp_path / "q")
    with pytest.raises(CompileError):
        Program.load(tmp_path / "missing")
    meta = copy.deepcopy(program.meta)
    meta["stages"]["frame"][3]["y"] = program.arena_bytes  # out of the arena
    bad = tmp_path / "r"
    Program(meta, program.weights).save(bad)
    with pytest.raises(CompileError, match="out of range"):
        Program.load(bad)


def test_too_wide_is_rejected(qm):
    wide = copy.deepcopy(qm)
    wide.config["size"] = 512  # 512 px rows: the engines take 256 at most
    with pytest.raises(CompileError, match="enc0.*BAD_SIZE") as e:
        compile_program(wide)
    assert isinstance(e.value, GraceError) and isinstance(e.value, ValueError)


def test_input_buffer_overflow_is_rejected(qm):
    small = dataclasses.replace(ref.CONV_LIMITS, in_buf_bytes=1024)
    with pytest.raises(CompileError, match="TILE_TOO_BIG"):
        compile_program(qm, conv_limits=small)


def test_weights_that_cannot_be_split_are_rejected(qm):
    tiny_bank = dataclasses.replace(ref.CONV_LIMITS, w_bank_bytes=100)  # < 8 ch x 3x3 + ...
    with pytest.raises(CompileError, match="WEIGHTS_TOO_BIG"):
        compile_program(qm, conv_limits=tiny_bank)


def test_grid_sample_limits_are_checked(qm):
    narrow = dataclasses.replace(ref.GRID_LIMITS, max_w=32)
    with pytest.raises(CompileError, match="ref64.*BAD_SIZE"):
        compile_program(qm, grid_limits=narrow)


def test_bad_requant_is_rejected(qm):
    bad = copy.deepcopy(qm)
    c = bad.convs["mot_up1"]
    bad.convs["mot_up1"] = dataclasses.replace(c, S=np.full_like(c.S, 8))  # residual: S >= 9
    with pytest.raises(CompileError, match="mot_up1.*BAD_REQUANT"):
        compile_program(bad)


def test_performance_model(program):
    from codec.models.grace_s import count_macs
    from decoder_fpga import perf

    r = perf.report(program)
    convs = [s for s in r["steps"] if s["op"] == "conv"]
    macs = count_macs(GraceS(CONFIG))
    macs.pop("reference")
    macs.pop("grid_sample")
    assert sum(s["macs"] for s in convs) == sum(macs.values())
    for s in r["steps"]:
        assert 0 < s["mac_bound"] <= s["overlapped"] <= s["serial"]
    assert r["mac_bound"]["fps"] > r["overlapped"]["fps"] > r["serial"]["fps"]
    assert "arm" not in r  # the ARM side only when its host times are given
    ra = perf.report(program, arm_host={"frame_inputs": 1.0, "output": 0.5})
    assert ra["arm"]["ms"] == pytest.approx(perf.A.arm_factor * 1.5)
    period = max(ra["overlapped"]["ms"], ra["arm"]["ms"])
    assert ra["system"]["ms"] == pytest.approx(period)
    assert ra["system_serial"]["ms"] == pytest.approx(ra["overlapped"]["ms"] + ra["arm"]["ms"])
    assert "with the ARM" in perf.format_report(ra)
    # render_many's schedule: motion_head's 64 px part and the arena writes in series,
    # its deferred parts on the worker; a waiting step waits for max(engine time since
    # the split, the part's ARM time) (the worker is free at the split here)
    steps = program.steps("frame")
    eng = iter(x["overlapped"] for x in r["steps"])
    cyc = [0.0 if st["op"] == "arm" else next(eng) for st in steps]
    split = next(i for i, st in enumerate(steps) if st.get("node") == "motion_head")
    j1 = backends.join_step(program, "frame", split, ("g128", "occ128"))
    j2 = backends.join_step(program, "frame", split, ("g256", "occ256"))
    assert steps[j1]["node"] == "wf1" and steps[j2]["node"] == "wf0"
    ms = 1e3 / perf.A.clock_hz / perf.A.arm_factor  # host ms a cycle at the factor
    before_wf1, before_wf0 = sum(cyc[split + 1 : j1]), sum(cyc[split + 1 : j2])
    eng_ms = r["overlapped"]["ms"]
    for late128, late256 in ((0.5, 0.5), (before_wf1 * ms * 1.5, 0.1), (0.1, before_wf0 * ms * 2)):
        host = {"frame_inputs": 0.01, "motion_head": 0.3, "output": 0.01,
                "late:g128+occ128": late128, "write:g128+occ128": 0.02,
                "late:g256+occ256": late256, "write:g256+occ256": 0.05}  # fmt: skip
        rs = perf.report(program, arm_host=host)["system_runtime"]
        k = perf.A.arm_factor
        w1 = max(0.0, k * late128 - before_wf1 * 1e3 / perf.A.clock_hz)
        w2 = k * (late128 + late256) - before_wf0 * 1e3 / perf.A.clock_hz - w1 - k * 0.02
        w2 = max(0.0, w2)  # after wf1's wait and writes
        assert rs["stall_ms"] == pytest.approx(w1 + w2) and rs["input_wait_ms"] == 0
        assert rs["ms"] == pytest.approx(eng_ms + k * (0.3 + 0.07) + w1 + w2)
    # without deferred parts: the whole motion_head in series, as before
    host = {"frame_inputs": 0.2, "motion_head": 1.0, "output": 0.1}
    assert perf.report(program, arm_host=host)["system_runtime"]["ms"] == pytest.approx(
        eng_ms + perf.A.arm_factor * 1.0
    )
    # ARM-bound: the period is the worker's load
    host = {"frame_inputs": 3 * eng_ms, "motion_head": 0.1, "output": 0.1}
    rs = perf.report(program, arm_host=host)["system_runtime"]
    assert rs["ms"] == pytest.approx(perf.A.arm_factor * (3 * eng_ms + 0.1))
    assert r["overlapped"]["uj_per_pixel"] == pytest.approx(
        2.5 * r["overlapped"]["ms"] * 1e3 / SIZE**2
    )
    text = perf.format_report(r)
    assert "MODELLED" in text and text.count("(modelled)") >= 4
    assert sum(r["dsp"].values()) <= perf.XC7Z020["DSP48E1"]
    assert sum(r["bram36"].values()) <= perf.XC7Z020["BRAM36"]
    assert sum(r["lut"].values()) <= perf.XC7Z020["LUT"]
