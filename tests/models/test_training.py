"""The training command on a tiny synthetic cache: it trains, checkpoints, resumes, exports
a checkpoint that loads strictly and renders, and its loss terms behave."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pytorch_msssim")

from codec import cli, motion  # noqa: E402
from codec.generators.flow import landmark_heatmaps  # noqa: E402
from codec.generators.torch_backend import TorchGenerator  # noqa: E402
from codec.models.grace_s import GraceS, GraceSConfig  # noqa: E402
from codec.motion import mean_face  # noqa: E402
from codec.training import train as T  # noqa: E402


def tiny_cache(root, frames=3, size=256, clips=("a", "b")):
    """A cache in prepare-data's layout: clips of random crops around a moving face."""
    rng = np.random.default_rng(0)
    for name in clips:
        (root / name).mkdir(parents=True)
        np.save(root / name / "crops.npy", rng.integers(0, 256, (frames, size, size, 3), np.uint8))
        lms = np.stack([mean_face(256) + rng.normal(0, 2, (68, 2)) for _ in range(frames)])
        np.save(root / name / "decoded.npy", lms.astype(np.float32))
        np.save(root / name / "landmarks.npy", lms.astype(np.float32))
        np.save(root / name / "segment.npy", np.zeros(frames, np.int32))
    (root / "index.json").write_text(json.dumps([{"clip": name} for name in clips]))


def face_crop() -> np.ndarray:
    """A real face no clip of ours holds (scikit-image's astronaut), cut to a 256x256 crop."""
    import cv2
    from skimage import data as skdata

    return cv2.resize(skdata.astronaut()[:320, 96:416], (256, 256), interpolation=cv2.INTER_AREA)


@pytest.mark.slow
def test_training_runs_resumes_and_exports(tmp_path):
    data = tmp_path / "data"
    tiny_cache(data / "train")
    tiny_cache(data / "val")
    run = tmp_path / "run"
    common = ["--data", str(data), "--run", str(run), "--batch", "2", "--threads", "1"]
    common += ["--eval-every", "2", "--val-pairs", "2", "--seed", "3"]
    assert cli.main(["train", *common, "--steps", "2"]) == 0  # options pass through in order
    first = torch.load(run / "checkpoint.pt", weights_only=False)
    assert first["step"] == 2
    assert (run / "samples_000002.png").is_file()
    T.main(common + ["--steps", "4", "--lr", "1e-5", "--keep-exports"])  # resumes from step 2
    assert sorted(p.name for p in run.glob("export-*.pt")) == ["export-000004.pt"]
    second = torch.load(run / "checkpoint.pt", weights_only=False)
    assert second["step"] == 4
    assert second["opt"]["param_groups"][0]["lr"] == 1e-5  # a new rate applies on resume
    moved = [k for k in first["model"] if not torch.equal(first["model"][k], second["model"][k])]
    assert moved, "resumed training did not update the weights"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    vals = [r for r in log if "val" in r]
    assert [r["step"] for r in vals] == [2, 4]
    assert np.isfinite(vals[-1]["val"]["psnr_model"])
    # The exported checkpoint loads strictly through the torch backend and renders.
    ckpt = torch.load(run / "grace-s.pt", weights_only=True)
    assert ckpt["step"] == 4
    gen = TorchGenerator(checkpoint=run / "grace-s.pt", model_digest=bytes.fromhex(ckpt["digest"]))
    frame = np.random.default_rng(1).integers(0, 256, (256, 256, 3), np.uint8)
    gen.set_reference(frame, mean_face(256))
    out = gen.render(mean_face(256) + 1.0)
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8


def test_face_weight_map_covers_the_features_only():
    lm = mean_face(256)
    heat = torch.from_numpy(landmark_heatmaps(lm, 256, 64))[None]
    face = T.face_weight_map(heat, 256)[0, 0].numpy()
    assert face.shape == (256, 256)
    x, y = np.round(lm[48]).astype(int)  # a mouth corner
    assert face[y, x] > 0.8
    assert face[:16, :16].max() < 1e-3  # the crop's corner is background


def test_loss_terms_are_zero_for_a_perfect_output_and_grow_with_error():
    target = torch.rand(1, 3, 256, 256)
    face = torch.zeros(1, 1, 256, 256)
    face[..., 100:150, 100:150] = 1
    perfect, parts = T.loss_fn(target, target, 4.0, face, 1.0, 16.0)
    assert perfect.item() == pytest.approx(0.0, abs=1e-4)
    assert parts["face_l1"] == 0 and parts["sharp_l1"] == 0
    noisy = (target + 0.1 * torch.randn_like(target)).clamp(0, 1)
    off_face = target.clone()
    off_face[..., :50, :50] = noisy[..., :50, :50]
    on_face = target.clone()
    on_face[..., 100:150, 100:150] = noisy[..., 100:150, 100:150]
    loss_off, _ = T.loss_fn(off_face, target, 4.0, face, 1.0, 16.0)
    loss_on, _ = T.loss_fn(on_face, target, 4.0, face, 1.0, 16.0)
    assert loss_on > loss_off > perfect  # the same error costs more on the face


def test_ssim_and_keypoint_terms_are_zero_for_a_perfect_output_and_grow_with_error():
    from codec.training import landmark_proxy as P

    proxy = P.load_proxy(P.COMMITTED)
    target = torch.from_numpy(T.to_chw(face_crop()))[None]
    extra = dict(ssim_weight=0.5, proxy=proxy, kp_weight=0.1)
    perfect, parts = T.loss_fn(target, target, 4.0, **extra)
    assert perfect.item() == pytest.approx(0.0, abs=1e-3)
    assert parts["ssim"] == pytest.approx(1.0, abs=1e-4) and parts["keypoints"] < 1e-2
    moved, parts = T.loss_fn(target.roll(6, dims=-1), target, 4.0, **extra)
    assert parts["ssim"] < 0.8 and parts["keypoints"] > 3.0 and moved > perfect


def test_near_pairs_stay_close_and_far_ones_spread(tmp_path):
    tiny_cache(tmp_path, frames=200, size=8, clips=("a",))  # one 200-frame segment
    data = T.PairDataset(tmp_path)
    rng = np.random.default_rng(0)
    near = [data.pair(rng, near=1.0, near_gap=8) for _ in range(200)]
    assert max(abs(i - j) for _, i, j in near) <= 8
    far = [data.pair(rng) for _ in range(200)]
    assert np.mean([abs(i - j) for _, i, j in far]) > 30
    pairs = T.distinct_pairs(data, 20, seed=0, min_gap=0, max_gap=3)
    assert all(0 < abs(i - j) <= 3 for _, i, j in pairs)


def test_ring_motion_of_a_pair_follows_the_driving_frame(tmp_path):
    """A driving frame that is the source moved 4 px right but for the landmarks (the hair
    swings, the face stays): the ring's points (rows 72-87) move 4 px right, the skull's
    pose would leave them."""
    import cv2

    tiny_cache(tmp_path, frames=2, clips=("a",))
    data = T.PairDataset(tmp_path)
    src = face_crop()
    dst = cv2.warpAffine(src, np.float32([[1, 0, 4], [0, 1, 0]]), (256, 256))
    src_lm = np.vstack([mean_face(256), motion.crop_corners(256, 256)]).astype(np.float32)
    pts = data.ring_motion(src, dst, src_lm, src_lm)
    assert pts.shape == (88, 2)
    np.testing.assert_array_equal(pts[:72], src_lm)
    ring = motion.face_ring(src_lm)
    inside = ((ring > 16) & (ring < 240)).all(1)
    np.testing.assert_allclose(pts[72:][inside], ring[inside] + [4.0, 0.0], atol=1.0)
    sample = data.sample(0, 0, 1, None, 256, ring=False)
    assert sample["grid"].shape == (2, 256, 256)


def test_sharpness_charges_blur_more_than_a_small_shift():
    """A sharp picture two pixels off keeps its detail; the same picture blurred loses it.
    Pixel L1 prefers the blur, the sharpness term the shift."""
    rng = np.random.default_rng(0)
    target = torch.from_numpy(rng.random((1, 3, 64, 64), np.float32))
    target = torch.nn.functional.interpolate(target, scale_factor=4, mode="nearest")
    shifted = torch.roll(target, 2, dims=3)
    blurred = torch.nn.functional.avg_pool2d(target, 5, 1, 2, count_include_pad=False)
    assert (blurred - target).abs().mean() < (shifted - target).abs().mean()
    assert T.sharpness_l1(shifted, target) < 0.5 * T.sharpness_l1(blurred, target)


def test_pair_check_scores_a_checkpoint_against_the_warp(tmp_path):
    """pair_check on a cache of real face pixels (the astronaut, moving): every row has
    finite PSNR, SSIM, MS-SSIM, AKD and AED, and the untrained model equals the warp's scores."""
    from codec.training import pair_check

    face = face_crop()
    root = tmp_path / "data" / "val"
    (root / "a").mkdir(parents=True)
    np.save(root / "a" / "crops.npy", np.stack([np.roll(face, 2 * k, axis=1) for k in range(4)]))
    lms = np.stack([mean_face(256) + [2 * k, 0] for k in range(4)]).astype(np.float32)
    np.save(root / "a" / "decoded.npy", lms)
    np.save(root / "a" / "segment.npy", np.zeros(4, np.int32))
    (root / "index.json").write_text(json.dumps([{"clip": "a"}]))
    torch.manual_seed(0)
    ckpt = tmp_path / "untrained.pt"
    T.export(GraceS(GraceSConfig()), ckpt)
    result = pair_check.score([ckpt], tmp_path / "data", pairs=2, seed=0, key_quality=30, min_gap=0)
    assert set(result) == {"warp", str(ckpt)}
    for row in result.values():
        assert row.shape == (5,) and np.all(np.isfinite(row))
    np.testing.assert_allclose(result[str(ckpt)], result["warp"], rtol=0.05, atol=0.05)
