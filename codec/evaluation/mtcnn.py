"""MTCNN face detector with 5 landmarks: the evaluation's independent judge of AKD.

The codec finds and tracks faces with dlib (HOG box, 68-point iBUG shape predictor), so
AKD measured by dlib judges it kindly. MTCNN (Zhang et al., "Joint Face Detection and
Alignment using Multi-task Cascaded Convolutional Networks", 2016) is a different model
trained on different data (WIDER FACE boxes, CelebA landmarks); it gives 5 points (eye
centres, nose tip, mouth corners) and works offline.

The network is written here; only its trained weights come from the `facenet-pytorch`
wheel (MIT licence), which ships them as PyTorch state dicts in `facenet_pytorch/data`.
The package itself is never imported (it pins an old torch and needs torchvision), so
install it with `pip install --no-deps facenet-pytorch==2.6.0`.

Conventions kept from the original Caffe release, which the weights expect: pixels
scaled as (x - 127.5) / 128, the dense layers read their input flattened width-major,
and the 10 landmark outputs are 5 x then 5 y, as fractions of the box.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any

import numpy as np

from encoder.landmarks import check_image

from ..errors import BackendUnavailableError, InputError

Box = tuple[float, float, float, float]
NUM_POINTS = 5
PACKAGE = "facenet_pytorch"
WEIGHT_FILES = ("pnet.pt", "rnet.pt", "onet.pt")
INSTALL_HINT = "pip install --no-deps facenet-pytorch==2.6.0"


def weight_paths() -> tuple[str, ...]:
    """Paths of the three state dicts inside the installed facenet-pytorch package.

    Raises BackendUnavailableError (with the install command) where they are missing.
    """
    spec = importlib.util.find_spec(PACKAGE)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError(f"MTCNN weights need facenet-pytorch: {INSTALL_HINT}")
    folder = os.path.join(list(spec.submodule_search_locations)[0], "data")
    paths = tuple(os.path.join(folder, f) for f in WEIGHT_FILES)
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise BackendUnavailableError(f"MTCNN weights missing: {', '.join(missing)}")
    return paths


@dataclasses.dataclass(frozen=True, eq=False)
class MtcnnFace:
    """box (x0, y0, x1, y1) in pixels, landmarks float32 5x2 (x, y), score in 0..1."""

    box: Box
    landmarks: np.ndarray
    score: float

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)


def _networks(torch: Any) -> tuple[Any, Any, Any]:
    """The proposal (P), refine (R) and output (O) networks, layer names as in the weights."""
    nn = torch.nn

    class Flatten(nn.Module):
        def forward(self, x):  # width-major, as the Caffe weights were trained
            return x.permute(0, 3, 2, 1).reshape(len(x), -1)

    class PNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
            self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
            self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
            self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
            return self.conv4_1(x).softmax(1)[:, 1], self.conv4_2(x)

    class RNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
            self.flatten = Flatten()
            self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
            self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.prelu4(self.dense4(self.flatten(self.prelu3(self.conv3(x)))))
            return self.dense5_1(x).softmax(1)[:, 1], self.dense5_2(x)

    class ONet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
            self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
            self.flatten = Flatten()
            self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
            self.dense6_1, self.dense6_2 = nn.Linear(256, 2), nn.Linear(256, 4)
            self.dense6_3 = nn.Linear(256, 10)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.pool3(self.prelu3(self.conv3(x)))
            x = self.prelu5(self.dense5(self.flatten(self.prelu4(self.conv4(x)))))
            return self.dense6_1(x).softmax(1)[:, 1], self.dense6_2(x), self.dense6_3(x)

    return PNet(), RNet(), ONet()


def _nms(boxes: np.ndarray, scores: np.ndarray, limit: float, over_min: bool = False) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first.

    Overlap is intersection over union, or over the smaller box (`over_min`), as MTCNN's
    last stage uses so that a box inside a larger one is dropped.
    """
    x0, y0, x1, y1 = boxes.T
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while len(order):
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + 1)
        inter = w * h
        base = np.minimum(area[i], area[rest]) if over_min else area[i] + area[rest] - inter
        order = rest[inter / base <= limit]
    return np.asarray(keep, dtype=np.int64)


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply the networks' box regression (offsets as fractions of the box size)."""
    size = np.stack([boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1], 1)
    return boxes + offsets * np.concatenate([size, size], 1)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Each box grown to a square about its centre (the R and O networks see squares)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    x0, y0 = boxes[:, 0] + (w - side) / 2, boxes[:, 1] + (h - side) / 2
    return np.stack([x0, y0, x0 + side, y0 + side], 1)


class MtcnnDetector:
    """MTCNN on CPU: a P-network over an image pyramid proposes boxes, the R- and
    O-networks refine them; the O-network also places the 5 landmarks.

    min_face: smallest face side searched, in pixels. thresholds: the three stages'
    face-probability cut-offs (the values of the original release).
    """

    name = "mtcnn"

    def __init__(
        self,
        min_face: int = 40,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        pyramid_factor: float = 0.709,
    ) -> None:
        try:
            import torch
        except ImportError as exc:
            raise BackendUnavailableError("the MTCNN detector needs torch (see README)") from exc
        self._torch = torch
        paths = weight_paths()
        self._pnet, self._rnet, self._onet = _networks(torch)
        for net, path in zip((self._pnet, self._rnet, self._onet), paths, strict=True):
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            net.eval()
        self.min_face = int(min_face)
        self.thresholds = thresholds
        self.pyramid_factor = float(pyramid_factor)

    # -- image helpers ----------------------------------------------------------------

    def _tensor(self, image: np.ndarray) -> Any:
        t = self._torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
        return (t.float() - 127.5) * 0.0078125

    def _patches(self, image: Any, boxes: np.ndarray, side: int) -> Any:
        """Crops of `boxes` (zero outside the image) resized to side x side."""
        f = self._torch.nn.functional
        _, _, h, w = image.shape
        out = []
        for x0, y0, x1, y1 in np.rint(boxes).astype(np.int64):
            x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
            patch = image.new_zeros((1, 3, y1 - y0, x1 - x0))
            sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
            if sx1 > sx0 and sy1 > sy0:
                patch[:, :, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[
                    :, :, sy0:sy1, sx0:sx1
                ]
            out.append(f.interpolate(patch, size=(side, side), mode="area"))
        return self._torch.cat(out)

    # -- the three stages ---------------------------------------------------------------

    def _propose(self, image: Any) -> np.ndarray:
        """P-network boxes (N, 5: x0 y0 x1 y1 score) over the pyramid, regressed, squared."""
        f = self._torch.nn.functional
        _, _, h, w = image.shape
        scale = 12.0 / self.min_face
        found = []
        while min(h, w) * scale >= 12:
            size = (int(np.ceil(h * scale)), int(np.ceil(w * scale)))
            prob, reg = self._pnet(f.interpolate(image, size=size, mode="area"))
            prob, reg = prob[0].numpy(), reg[0].numpy()
            ys, xs = np.nonzero(prob >= self.thresholds[0])
            if len(ys):
                # Each output cell sees a 12 x 12 window at stride 2 of the scaled image.
                cells = np.stack([xs, ys], 1).astype(np.float64)
                start, end = np.floor((2 * cells + 1) / scale), np.floor((2 * cells + 12) / scale)
                boxes = np.concatenate([start, end], 1)
                scores = prob[ys, xs]
                offsets = reg[:, ys, xs].T
                keep = _nms(boxes, scores, 0.5)
                found.append(np.concatenate([boxes, scores[:, None], offsets], 1)[keep])
            scale *= self.pyramid_factor
        if not found:
            return np.zeros((0, 5))
        cand = np.concatenate(found)
        cand = cand[_nms(cand[:, :4], cand[:, 4], 0.7)]
        return np.concatenate([_square(_regress(cand[:, :4], cand[:, 5:])), cand[:, 4:5]], 1)

    def _refine(self, image: Any, boxes: np.ndarray) -> np.ndarray:
        prob, reg = self._rnet(self._patches(image, boxes[:, :4], 24))
        prob, reg = prob.numpy(), reg.numpy()
        ok = prob >= self.thresholds[1]
        boxes, prob, reg = boxes[ok], prob[ok], reg[ok]
        keep = _nms(boxes[:, :4], prob, 0.7)
        return np.concatenate([_square(_regress(boxes[keep, :4], reg[keep])), prob[keep, None]], 1)

    def _output(self, image: Any, boxes: np.ndarray) -> tuple[Any, Any, Any]:
        """O-network (score, regression, landmarks in pixels) for square boxes."""
        boxes = np.rint(boxes)  # the patches are cut on whole pixels
        prob, reg, marks = self._onet(self._patches(image, boxes, 48))
        size = (boxes[:, 2:4] - boxes[:, 0:2] + 1)[:, None, :]
        rel = marks.numpy().reshape(len(boxes), 2, NUM_POINTS).transpose(0, 2, 1)
        points = boxes[:, None, 0:2] + rel * size
        return prob.numpy(), reg.numpy(), points.astype(np.float32)

    # -- public interface (as encoder.landmarks detectors) ------------------------------

    def detect(self, image: np.ndarray) -> list[MtcnnFace]:
        """Every face in a uint8 HxWx3 RGB image, with its 5 landmarks."""
        image = check_image(image)
        with self._torch.no_grad():
            t = self._tensor(image)
            boxes = self._propose(t)
            if len(boxes):
                boxes = self._refine(t, boxes)
            if not len(boxes):
                return []
            prob, reg, points = self._output(t, boxes[:, :4])
        ok = prob >= self.thresholds[2]
        final = _regress(boxes[ok, :4], reg[ok])
        prob, points = prob[ok], points[ok]
        keep = _nms(final, prob, 0.7, over_min=True)
        return [
            MtcnnFace(
                box=tuple(float(v) for v in final[i]), landmarks=points[i], score=float(prob[i])
            )
            for i in keep
        ]

    def landmarks_in_box(self, image: np.ndarray, box: Box) -> np.ndarray:
        """The O-network's 5 landmarks in `box` (squared about its centre); float32 5x2."""
        image = check_image(image)
        boxes = _square(np.asarray([box], dtype=np.float64))
        if not np.all(np.isfinite(boxes)) or boxes[0, 2] <= boxes[0, 0]:
            raise InputError(f"box must be finite with x0 < x1 and y0 < y1, got {box!r}")
        with self._torch.no_grad():
            return self._output(self._tensor(image), boxes)[2][0]
