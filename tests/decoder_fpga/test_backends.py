"""The `int8` and `csim` generator backends: the Generator contract, every frame identical
between the numpy reference and the C-simulated engines, and where programs come from
(given, shipped next to the checkpoint, the user cache keyed by digest, quantised once)."""

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from codec.errors import BackendUnavailableError, InputError, ModelMismatchError  # noqa: E402
from codec.generators import backend_names, make_generator  # noqa: E402
from codec.models.grace_s import GraceS, GraceSConfig  # noqa: E402
from codec.motion import mean_face  # noqa: E402
from codec.training.train import export  # noqa: E402
from decoder_fpga import backends  # noqa: E402
from decoder_fpga import quantize as Q  # noqa: E402
from decoder_fpga.backends import CsimGenerator, Int8Generator  # noqa: E402
from decoder_fpga.program import compile_program  # noqa: E402

SIZE = 64
TINY = GraceSConfig(size=SIZE, enc=(8, 8, 16), motion=(8, 16, 24), dec=(24, 8, 8), dec_blocks=2)
HAVE_GXX = shutil.which("g++") is not None and shutil.which("make") is not None


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    m = GraceS(TINY).eval()
    with torch.no_grad():
        m.mot_head.weight.normal_(0, 0.05)
        m.out.weight.normal_(0, 0.05)
        m.out.bias.normal_(0, 0.02)
    return m


@pytest.fixture(scope="module")
def samples():
    return Q.synthetic_samples(SIZE, 3, seed=4)


@pytest.fixture(scope="module")
def program(model, samples):
    return compile_program(Q.quantize_model(model, samples))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    export(model, path)
    return path


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


def decode(gen, clip) -> list[np.ndarray]:
    """clip: [(key frame or None, landmarks)] -> rendered frames."""
    out = []
    for img, lm in clip:
        if img is not None:
            gen.set_reference(img, lm)
        out.append(gen.render(lm))
    return out


def short_clip():
    rng = np.random.default_rng(7)
    clip = []
    for k in range(2):  # two key frames, four frames each
        clip.append((key_frame(k), face()))
        for _ in range(3):
            clip.append((None, face(rng.normal(0, 4, 2), mouth=rng.uniform(0, 8))))
    return clip


def test_registered():
    assert {"int8", "csim"} <= set(backend_names())


@pytest.mark.skipif(not HAVE_GXX, reason="the csim backend needs g++ and make")
def test_every_frame_identical_between_int8_and_csim(program):
    clip = short_clip()
    a = decode(Int8Generator(program=program), clip)
    b = decode(CsimGenerator(program=program), clip)
    assert len(a) == len(b) == 8
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[1], a[2])  # the frames do move


def test_contract(program):
    gen = Int8Generator(program=program)
    assert gen.name == "int8" and gen.size == SIZE
    with pytest.raises(RuntimeError):
        gen.render(face())
    with pytest.raises(InputError):
        gen.set_reference(np.zeros((32, 32, 3), np.uint8), face())
    with pytest.raises(InputError):
        gen.set_reference(np.zeros((SIZE, SIZE, 3), np.float32), face())
    gen.set_reference(key_frame(0), face())
    first = gen.render(face((3.0, 1.0)))
    assert first.shape == (SIZE, SIZE, 3) and first.dtype == np.uint8
    gen.render(face((-4.0, 2.0), mouth=6))
    # the cached reference survives frames (temporaries share memory, features do not)
    np.testing.assert_array_equal(gen.render(face((3.0, 1.0))), first)
    gen.set_reference(key_frame(1), face())
    assert not np.array_equal(gen.render(face((3.0, 1.0))), first)


def test_program_is_cached_by_digest(tmp_path, monkeypatch, checkpoint, samples):
    cache = tmp_path / "cache"
    g1 = Int8Generator(checkpoint=checkpoint, calibration=samples, cache_dir=cache)
    folders = list(cache.iterdir())
    assert len(folders) == 1 and folders[0].name.startswith(f"grace-s-{g1.program.digest}")
    assert (folders[0] / "program.json").is_file() and (folders[0] / "quantized.npz").is_file()

    def no_quantising(*a, **k):
        raise AssertionError("quantised twice")

    monkeypatch.setattr(Q, "quantize_model", no_quantising)
    g2 = Int8Generator(checkpoint=checkpoint, cache_dir=cache)
    assert g2.program.meta == g1.program.meta
    with pytest.raises(ModelMismatchError):
        Int8Generator(checkpoint=checkpoint, model_digest=b"\x01" * 8, cache_dir=cache)


def test_shipped_program_next_to_the_checkpoint(tmp_path, monkeypatch, checkpoint, program):
    ckpt = tmp_path / "model.pt"
    shutil.copy(checkpoint, ckpt)
    program.save(tmp_path / "model.int8")
    monkeypatch.setattr(Q, "quantize_model", lambda *a, **k: pytest.fail("quantised"))
    gen = Int8Generator(checkpoint=ckpt, cache_dir=tmp_path / "unused")
    assert gen.program.meta == program.meta
    digest = bytes.fromhex(program.digest)
    Int8Generator(checkpoint=ckpt, model_digest=digest, cache_dir=tmp_path / "unused")
    with pytest.raises(ModelMismatchError):
        Int8Generator(checkpoint=ckpt, model_digest=b"\x00" * 8)
    assert not (tmp_path / "unused").exists()


def test_without_program_or_data_the_backend_is_unavailable(tmp_path, monkeypatch, checkpoint):
    monkeypatch.setattr(backends, "default_calibration", lambda: None)
    with pytest.raises(BackendUnavailableError, match="decoder_fpga.quantize"):
        Int8Generator(checkpoint=checkpoint, cache_dir=tmp_path)


def test_registry_builds_the_backend_or_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("GRACECODEC_CACHE", str(tmp_path))
    monkeypatch.setattr(backends, "default_calibration", lambda: None)
    try:
        gen = make_generator("int8", "grace-s")
    except BackendUnavailableError as e:  # no shipped weights/program here yet
        assert "grace-s" in str(e)
    else:
        assert gen.name == "int8"


def test_arm_resize_matches_torch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 16, 16)).astype(np.float32)
    for size in (4, 32, 64):
        want = torch.nn.functional.interpolate(
            torch.from_numpy(x)[None], size=(size, size), mode="bilinear", align_corners=False
        )[0].numpy()
        np.testing.assert_allclose(backends.resize_bilinear(x, size), want, atol=1e-5)


def test_stale_shipped_program_is_refused(tmp_path, checkpoint, program):
    ckpt = tmp_path / "model.pt"
    shutil.copy(checkpoint, ckpt)
    program.save(tmp_path / "model.int8")
    (tmp_path / "model.json").write_text('{"arch": "grace-s", "digest": "00000000000000ff"}')
    with pytest.raises(ModelMismatchError, match="decoder_fpga.quantize"):
        Int8Generator(checkpoint=ckpt)


# ---- the ARM side: the faster ops give the same bits as the straightforward ones ---------


def _landmark_sets(size, n=5):
    rng = np.random.default_rng(11)
    base = mean_face(size).astype(np.float64)
    return base, [base + rng.normal(0, size / 64, base.shape) for _ in range(n)]


def _straightforward_network_inputs(ref_lm, lm, size):
    """The backward map and heatmaps as first written (a (H, W, 2, 3) affine table, full
    coordinate grids): the reference the faster code in codec.generators.flow must equal."""
    import cv2

    from codec import motion as flow_geometry
    from codec.generators import flow

    ref_ring, border = flow_geometry.face_ring(ref_lm), flow._border(size, size)
    skull = list(flow_geometry.SKULL_POINTS)
    pose = flow.similarity_fit(ref_lm[skull], lm[skull])
    ring = ref_ring @ pose[:, :2].T + pose[:, 2]
    src, dst = np.vstack([ref_lm, ref_ring, border]), np.vstack([lm, ring, border])
    tri = flow._triangles(size, size)
    affines = flow._triangle_affines(dst[tri], src[tri])
    ids = np.full((size, size), -1, np.int32)
    for i, corners in enumerate(dst[tri]):
        cv2.fillConvexPoly(ids, np.round(corners * 16).astype(np.int32), i, cv2.LINE_8, 4)
    covered = ids >= 0
    a = affines[np.where(covered, ids, 0)]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    map_x = np.where(covered, a[..., 0, 0] * xs + a[..., 0, 1] * ys + a[..., 0, 2], xs)
    map_y = np.where(covered, a[..., 1, 0] * xs + a[..., 1, 1] * ys + a[..., 1, 2], ys)
    grid = flow.normalised_grid(map_x.astype(np.float32), map_y.astype(np.float32))
    q = size // 4
    pts = (np.asarray(lm, np.float64) + 0.5) * (q / size) - 0.5
    ys, xs = np.mgrid[0:q, 0:q].astype(np.float64)
    heat = np.empty((len(flow.LANDMARK_GROUPS), q, q), np.float32)
    for g, idx in enumerate(flow.LANDMARK_GROUPS):
        p = pts[list(idx)]
        d2 = (xs[None] - p[:, 0, None, None]) ** 2 + (ys[None] - p[:, 1, None, None]) ** 2
        heat[g] = np.exp(-d2.min(axis=0) / (2 * 1.5**2))
    return grid, heat


@pytest.mark.parametrize("size", [64, 256])
def test_fast_backward_map_and_heatmaps_equal_the_straightforward_ones(size):
    from codec.generators.flow import network_inputs

    ref_lm, lms = _landmark_sets(size)
    for lm in lms:
        grid, heat = _straightforward_network_inputs(ref_lm, lm, size)
        fast_grid, fast_heat = network_inputs(ref_lm, lm, size)
        np.testing.assert_array_equal(fast_grid, grid)
        np.testing.assert_array_equal(fast_heat, heat)


def test_arm_output_table_equals_the_float_formula():
    rng = np.random.default_rng(2)
    w = rng.integers(-128, 128, (3, 16, 16)).astype(np.int8)
    o = rng.integers(-128, 128, (3, 16, 16)).astype(np.int8)
    for s1, s2 in ((0.5 / 127, 0.0041), (0.5 / 127, 0.013)):
        img = w.astype(np.float64) * s1 + 0.5 + o.astype(np.float64) * s2
        want = np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(1, 2, 0)
        np.testing.assert_array_equal(backends.output_image(w, o, s1, s2), want)


def test_arm_grid_to_fixed_equals_int8_ref():
    from decoder_fpga import int8_ref as ref

    rng = np.random.default_rng(5)
    g = rng.uniform(-1.3, 1.3, (2, 32, 48))
    g[0, 0, 0] = np.nan
    want = ref.grid_to_fixed(g, 20, 30)
    want[0] = np.clip(want[0], 0, 29 * ref.GRID_ONE)
    want[1] = np.clip(want[1], 0, 19 * ref.GRID_ONE)
    np.testing.assert_array_equal(backends.grid_to_fixed_clamped(g, 20, 30), want)


def test_render_many_equals_render(program):
    lms = [face((3.0 * k, -1.0 * k), mouth=2.0 * k) for k in range(4)]
    gen = Int8Generator(program=program)
    with pytest.raises(RuntimeError):
        list(gen.render_many(lms))
    gen.set_reference(key_frame(0), face())
    want = [gen.render(lm) for lm in lms]
    got = list(gen.render_many(iter(lms)))
    assert len(got) == len(want)
    for x, y in zip(want, got):
        np.testing.assert_array_equal(x, y)
    assert list(gen.render_many([])) == []
    # inputs prepared for other landmarks are not used: the op recomputes them
    p = gen.runner.prepare(np.asarray(lms[0], np.float64))
    gen.runner.run("frame", landmarks=np.asarray(lms[1], np.float64), prepared=p)
    np.testing.assert_array_equal(gen.runner.state.pop("image"), want[1])


def test_render_many_defers_the_late_motion_head_to_the_worker(program, monkeypatch):
    """render_many computes motion_head's 128/256 px parts on the ARM worker and writes
    them into the arena only just before wf1 / wf0 (the first steps touching them); the
    frames stay render's, csim's and int8's bit for bit."""
    import threading

    steps = program.steps("frame")
    split = next(i for i, st in enumerate(steps) if st.get("node") == "motion_head")
    at = {n: steps[backends.join_step(program, "frame", split, n)]["node"] for n in
          (("g128", "occ128"), ("g256", "occ256"))}  # fmt: skip
    assert at == {("g128", "occ128"): "wf1", ("g256", "occ256"): "wf0"}
    threads, writes = [], []
    late, write = backends.motion_head_late, backends.ProgramRunner._write

    def spy_late(*args):
        threads.append(threading.current_thread().name)
        return late(*args)

    def spy_write(self, names, arrays):
        writes.append((tuple(names), threading.current_thread() is threading.main_thread()))
        write(self, names, arrays)

    monkeypatch.setattr(backends, "motion_head_late", spy_late)
    monkeypatch.setattr(backends.ProgramRunner, "_write", spy_write)
    lms = [face((2.0 * k, 1.0 - k), mouth=3.0 * k) for k in range(3)]
    gens = [Int8Generator(program=program)]
    if HAVE_GXX:
        gens.append(CsimGenerator(program=program))
    for g in gens:
        g.set_reference(key_frame(1), face())
    want = [gens[0].render(lm) for lm in lms]
    assert threads == ["MainThread"] * 2 * len(lms)  # render: in place, in program order
    for g in gens:
        threads.clear(), writes.clear()
        got = list(g.render_many(lms))
        assert threads == ["grace-arm"] * 2 * len(lms)
        assert writes == [(("g128", "occ128"), True), (("g256", "occ256"), True)] * len(lms)
        for x, y in zip(want, got):
            np.testing.assert_array_equal(x, y)
        assert g.runner.worker is None and not g.runner._pending


def test_arm_worker_runs_urgent_jobs_first():
    import threading

    gate, order = threading.Event(), []
    with backends._ArmWorker() as w:
        first = w.submit(gate.wait)  # occupies the worker
        jobs = [w.submit(order.append, "a"), w.submit(order.append, "b")]
        jobs.append(w.submit(order.append, "urgent", first=True))
        boom = w.submit(lambda: 1 / 0)
        assert w.busy()
        gate.set()
        for j in (first, *jobs):
            j.result(timeout=10)
        with pytest.raises(ZeroDivisionError):
            boom.result(timeout=10)
    assert order == ["urgent", "a", "b"] and not w.busy()
