"""Frame quality metrics, each on a pair (original, decoded) of uint8 (H, W, 3) RGB frames.

=========  ============================================================  ==================
metric     how                                                           better
=========  ============================================================  ==================
PSNR       10 log10(255^2 / MSE), MSE over all pixels and RGB channels   higher (dB)
SSIM       scikit-image ``structural_similarity``, 7x7 uniform window,   higher (0..1)
           ``channel_axis=2``, ``data_range=255`` (mean over channels)
MS-SSIM    pytorch-msssim ``ms_ssim``, 5 scales, ``data_range=255``,     higher (0..1)
           on the 256x256 crops (sides must exceed 160 px)
AKD        mean Euclidean distance (px) between the 68 dlib landmarks    lower (px)
           of original and decoded frame, both fitted in the face box
           the dlib HOG detector finds on the ORIGINAL
AED        Euclidean distance between the dlib ResNet 128-d face         lower
           descriptors of original and decoded frame, each computed
           from its landmarks fitted in that same box
LPIPS      ``lpips`` (AlexNet), only if the package and its weights are  lower
           already on disk (never downloaded)
DISTS      ``DISTS_pytorch``, same condition                             lower
AKD-MT     AKD with an independent detector, MTCNN (`mtcnn`): its box    lower (px)
           on the original, its 5 landmarks (eyes, nose, mouth corners)
           of both frames in that box; only if facenet-pytorch (which
           ships the weights) is installed. The codec tracks with dlib,
           so dlib's AKD judges it kindly; MTCNN does not
AKD-FA     the same with face_alignment (S3FD box, 68 2D-FAN landmarks),  lower (px)
           only if its weights are already in the torch hub cache
=========  ============================================================  ==================

A frame whose original has no face the detector finds gets no AKD/AED (NaN); clip means
skip those frames and `clip_scores` reports how many frames were scored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, InputError

Box = tuple[float, float, float, float]
BatchMetric = Callable[[np.ndarray, np.ndarray], np.ndarray]

# name -> True when a higher value is better (plots and BD-rate need the direction).
HIGHER_IS_BETTER = {
    "psnr": True,
    "ssim": True,
    "ms_ssim": True,
    "akd": False,
    "aed": False,
    "lpips": False,
    "dists": False,
    "akd_mt": False,
    "akd_fa": False,
}
LABELS = {
    "psnr": "PSNR (dB)",
    "ssim": "SSIM",
    "ms_ssim": "MS-SSIM",
    "akd": "AKD (px)",
    "aed": "AED",
    "lpips": "LPIPS",
    "dists": "DISTS",
    "akd_mt": "AKD-MT (px)",
    "akd_fa": "AKD-FA (px)",
}
CORE_METRICS = ("psnr", "ssim", "ms_ssim", "akd", "aed")
# name -> decimals in the Markdown tables
DIGITS = {"psnr": 2, "ssim": 4, "ms_ssim": 4, "akd": 2, "aed": 3, "lpips": 4, "dists": 4}
DIGITS |= {"akd_mt": 2, "akd_fa": 2}


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    for x in (a, b):
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 3 or x.shape[2] != 3:
            raise InputError("metrics take uint8 (H, W, 3) RGB frames")
    if a.shape != b.shape:
        raise InputError(f"frame shapes differ: {a.shape} vs {b.shape}")


def psnr(original: np.ndarray, decoded: np.ndarray) -> float:
    """PSNR in dB of 8-bit RGB frames (peak 255); inf for identical frames."""
    _check_pair(original, decoded)
    mse = np.mean((original.astype(np.float64) - decoded.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def ssim(original: np.ndarray, decoded: np.ndarray) -> float:
    """SSIM of RGB frames (scikit-image, mean over the three channels), 1 for identical."""
    from skimage.metrics import structural_similarity

    _check_pair(original, decoded)
    return float(structural_similarity(original, decoded, channel_axis=2, data_range=255))


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise BackendUnavailableError(
            "MS-SSIM needs torch and pytorch-msssim: pip install torch==2.13.0 pytorch-msssim"
        ) from None
    return torch


def _nchw(frames: np.ndarray) -> Any:
    """uint8 (N, H, W, 3) -> float32 torch (N, 3, H, W), 0..255."""
    return _torch().from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()


def ms_ssim_batch(originals: np.ndarray, decoded: np.ndarray) -> np.ndarray:
    """MS-SSIM per frame of uint8 (N, H, W, 3) stacks; returns float64 (N,)."""
    torch = _torch()
    try:
        from pytorch_msssim import ms_ssim as _ms_ssim
    except ImportError:
        raise BackendUnavailableError(
            "MS-SSIM needs pytorch-msssim: pip install pytorch-msssim"
        ) from None
    if originals.shape != decoded.shape or originals.ndim != 4:
        raise InputError(
            f"stacks differ or are not (N, H, W, 3): {originals.shape} vs {decoded.shape}"
        )
    if min(originals.shape[1:3]) <= 160:
        # 5 scales of an 11-tap window need more than (11 - 1) * 2^4 = 160 px.
        raise InputError(f"MS-SSIM needs frames larger than 160 px, got {originals.shape[1:3]}")
    with torch.no_grad():
        v = _ms_ssim(_nchw(originals), _nchw(decoded), data_range=255, size_average=False)
    return v.double().numpy()


def ms_ssim(original: np.ndarray, decoded: np.ndarray) -> float:
    """MS-SSIM of two RGB frames (pytorch-msssim), 1 for identical."""
    _check_pair(original, decoded)
    return float(ms_ssim_batch(original[None], decoded[None])[0])


def ms_ssim_available() -> bool:
    """torch and pytorch-msssim are importable (neither is a hard dependency)."""
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "pytorch_msssim"))


# ------------------------------------------------------------------------------------------
# Face metrics (dlib)
# ------------------------------------------------------------------------------------------

_FACE_MODELS: tuple[Any, Any, Any] | None = None


def _face_model_path(name: str) -> str:
    # face_recognition_models' own helper needs pkg_resources; find the file from its spec.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError(
            "AED needs dlib's models: pip install face-recognition-models"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", name)
    if not os.path.isfile(path):
        raise BackendUnavailableError(f"{path} is missing: reinstall face-recognition-models")
    return path


def _face_models() -> tuple[Any, Any, Any]:
    """(encoder's dlib detector, 68-point shape predictor, ResNet face descriptor), once."""
    global _FACE_MODELS
    if _FACE_MODELS is None:
        import dlib

        from encoder.landmarks import DlibDetector, _dlib_models

        recognizer = dlib.face_recognition_model_v1(
            _face_model_path("dlib_face_recognition_resnet_model_v1.dat")
        )
        _FACE_MODELS = (DlibDetector(), _dlib_models()[1], recognizer)
    return _FACE_MODELS


@dataclasses.dataclass(frozen=True, eq=False)
class FaceReference:
    """What the original frame gives the face metrics: its face box, landmarks, descriptor.

    box is None when the detector finds no face (the frame then gets no AKD/AED).
    """

    box: Box | None
    landmarks: np.ndarray | None = None  # float32 (68, 2) px
    descriptor: np.ndarray | None = None  # float64 (128,)


def _fit(image: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks (68, 2) and face descriptor (128,) of `image`, shape fitted in `box`."""
    import dlib

    _, predictor, recognizer = _face_models()
    image = np.ascontiguousarray(image)
    x0, y0, x1, y1 = box
    shape = predictor(image, dlib.rectangle(round(x0), round(y0), round(x1) - 1, round(y1) - 1))
    pts = np.array([(p.x, p.y) for p in shape.parts()], np.float32)
    return pts, np.array(recognizer.compute_face_descriptor(image, shape), np.float64)


def face_reference(original: np.ndarray) -> FaceReference:
    """Detects the largest face in the original frame and fits landmarks and descriptor."""
    detector, _, _ = _face_models()
    faces = detector.detect(original)
    if not faces:
        return FaceReference(None)
    box = max(faces, key=lambda f: f.area).box
    return FaceReference(box, *_fit(original, box))


def face_scores(ref: FaceReference, decoded: np.ndarray) -> tuple[float, float]:
    """(AKD px, AED) of a decoded frame against its original's reference; NaN without a box."""
    if ref.box is None:
        return math.nan, math.nan
    pts, desc = _fit(decoded, ref.box)
    akd_px = float(np.linalg.norm(pts - ref.landmarks, axis=1).mean())
    return akd_px, float(np.linalg.norm(desc - ref.descriptor))


def akd(original: np.ndarray, decoded: np.ndarray) -> float:
    """Average keypoint distance (px) between the 68 landmarks, fitted in the original's box."""
    _check_pair(original, decoded)
    return face_scores(face_reference(original), decoded)[0]


def aed(original: np.ndarray, decoded: np.ndarray) -> float:
    """Distance between the dlib face descriptors of original and decoded (same box)."""
    _check_pair(original, decoded)
    return face_scores(face_reference(original), decoded)[1]


# ------------------------------------------------------------------------------------------
# Optional learned metrics: only with weights already on disk
# ------------------------------------------------------------------------------------------


def _hub_file(name: str) -> str | None:
    """Path of a torchvision checkpoint in the torch hub cache, if it is there."""
    import torch

    path = os.path.join(torch.hub.get_dir(), "checkpoints", name)
    return path if os.path.isfile(path) else None


def _package_file(module: str, *parts: str) -> str | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
    return path if os.path.isfile(path) else None


def _lpips() -> BatchMetric:
    import lpips
    import torch

    model = lpips.LPIPS(net="alex", pretrained=True, verbose=False).eval()

    def run(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with torch.no_grad():  # LPIPS takes RGB in -1..1
            return model(_nchw(a) / 127.5 - 1, _nchw(b) / 127.5 - 1).flatten().double().numpy()

    return run


def _dists() -> BatchMetric:
    import torch
    from DISTS_pytorch import DISTS

    model = DISTS().eval()

    def run(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with torch.no_grad():  # DISTS takes RGB in 0..1
            return (
                model(_nchw(a) / 255, _nchw(b) / 255, batch_average=False)
                .flatten()
                .double()
                .numpy()
            )

    return run


def akd_independent(detector) -> BatchMetric:
    """AKD measured by another landmark detector (`detect`, `landmarks_in_box`, as in
    `encoder.landmarks`): its largest face box on the original, both frames' landmarks
    fitted in that box; NaN for a frame whose original has no face it finds.

    An eval scores every codec against the same originals, so each original's box and
    landmarks are found once and kept (keyed by the frame's bytes).
    """
    references: dict[bytes, tuple[Box, np.ndarray] | None] = {}

    def reference(original: np.ndarray) -> tuple[Box, np.ndarray] | None:
        key = hashlib.blake2b(original.tobytes(), digest_size=16).digest()
        if key not in references:
            if len(references) >= 4096:  # a few clips' worth; the eval goes clip by clip
                references.clear()
            faces = detector.detect(original)
            box = max(faces, key=lambda f: f.area).box if faces else None
            references[key] = (
                None if box is None else (box, detector.landmarks_in_box(original, box))
            )
        return references[key]

    def run(originals: np.ndarray, decoded: np.ndarray) -> np.ndarray:
        out = np.full(len(originals), math.nan)
        for i, (a, b) in enumerate(zip(originals, decoded)):
            ref = reference(a)
            if ref is not None:
                box, pa = ref
                out[i] = float(
                    np.linalg.norm(pa - detector.landmarks_in_box(b, box), axis=1).mean()
                )
        return out

    return run


def optional_metrics() -> tuple[dict[str, BatchMetric], list[str]]:
    """AKD-MT / AKD-FA / LPIPS / DISTS batch functions whose weights are already local, and
    notes for the rest.

    MTCNN's weights come installed with facenet-pytorch; the torchvision backbones and
    face_alignment are only used when their checkpoints are in the torch hub cache, so
    nothing is ever downloaded.
    """
    found: dict[str, BatchMetric] = {}
    notes: list[str] = []
    from encoder.landmarks import FaceAlignmentDetector

    from .mtcnn import MtcnnDetector

    for name, make in (("akd_mt", MtcnnDetector), ("akd_fa", FaceAlignmentDetector)):
        try:
            found[name] = akd_independent(make())
        except BackendUnavailableError as e:
            notes.append(f"{LABELS[name]} (independent detector) skipped: {e}")
    wanted = {
        # name: (module, package weight file, torchvision checkpoint, factory)
        "lpips": ("lpips", ("weights", "v0.1", "alex.pth"), "alexnet-owt-7be5be79.pth", _lpips),
        "dists": ("DISTS_pytorch", ("weights.pt",), "vgg16-397923af.pth", _dists),
    }
    for name, (module, weights, backbone, factory) in wanted.items():
        missing = [m for m in ("torch", module) if importlib.util.find_spec(m) is None]
        if missing:
            notes.append(f"{name.upper()} skipped: {' and '.join(missing)} not installed")
        elif _package_file(module, *weights) is None or _hub_file(backbone) is None:
            notes.append(
                f"{name.upper()} skipped: weights not on disk ({'/'.join(weights)} in {module}, "
                f"{backbone} in the torch hub cache); they are never downloaded"
            )
        else:
            found[name] = factory()
    return found, notes


# ------------------------------------------------------------------------------------------
# Per clip
# ------------------------------------------------------------------------------------------


def face_references(originals: Sequence[np.ndarray], stride: int = 1) -> list[FaceReference | None]:
    """References for every `stride`-th original frame (None for the frames not scored)."""
    return [face_reference(f) if i % stride == 0 else None for i, f in enumerate(originals)]


def clip_scores(
    originals: Sequence[np.ndarray],
    decoded: Sequence[np.ndarray],
    refs: Sequence[FaceReference | None] | None = None,
    extra: dict[str, BatchMetric] | None = None,
    use_ms_ssim: bool = True,
    batch: int = 16,
) -> dict[str, float]:
    """Per-frame metrics averaged over a clip, frames paired in order.

    refs: from `face_references` (computed once per clip and reused for every codec);
    a None entry leaves that frame out of AKD/AED. extra: optional batch metrics.
    use_ms_ssim: False where torch / pytorch-msssim are missing (see `ms_ssim_available`).
    Returns the mean of each metric plus `face_frames`, the frames AKD/AED were scored on.
    """
    if len(originals) != len(decoded):
        raise InputError(f"frame counts differ: {len(originals)} originals, {len(decoded)} decoded")
    if not originals:
        raise InputError("no frames to score")
    if refs is None:
        refs = face_references(originals)
    per: dict[str, list[float]] = {"psnr": [], "ssim": [], "akd": [], "aed": []}
    for a, b, ref in zip(originals, decoded, refs, strict=True):
        per["psnr"].append(psnr(a, b))
        per["ssim"].append(ssim(a, b))
        if ref is not None:
            k, e = face_scores(ref, b)
            per["akd"].append(k)
            per["aed"].append(e)
    batched = ({"ms_ssim": ms_ssim_batch} if use_ms_ssim else {}) | (extra or {})
    for name, fn in batched.items():
        values = []
        for i in range(0, len(originals), batch):
            values.append(fn(np.stack(originals[i : i + batch]), np.stack(decoded[i : i + batch])))
        per[name] = list(np.concatenate(values))
    out = {}
    for name, values in per.items():
        v = np.asarray(values, np.float64)
        v = v[~np.isnan(v)]
        out[name] = float(v.mean()) if len(v) else math.nan
    out["face_frames"] = float(len([r for r in refs if r is not None and r.box is not None]))
    return out
