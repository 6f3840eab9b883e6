"""The `torch` backend: the learned generator in float32 on the CPU.

The checkpoint (`codec/assets/<model>.pt`, written by `codec.training.train.export`)
carries the architecture name, its config, the weights and their digest; a sidecar
`<model>.json` repeats name, config and digest so the encoder can name the model in the
stream header without importing torch.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError, ModelMismatchError
from .flow import landmark_heatmaps, network_inputs


def model_path(model_id: str) -> Path:
    """The shipped checkpoint of `model_id` (a file inside the package)."""
    return Path(str(resources.files("codec") / "assets" / f"{model_id}.pt"))


def model_card(model_id: str) -> dict | None:
    """The sidecar JSON of a shipped model ({"arch", "config", "digest"}), or None."""
    path = model_path(model_id).with_suffix(".json")
    return json.loads(path.read_text()) if path.is_file() else None


def load_model(path: Path, expected_digest: bytes = b""):
    """Loads and checks a checkpoint; returns the torch module in eval mode."""
    try:
        import torch
    except ImportError:
        raise BackendUnavailableError(
            "the torch backend needs PyTorch: pip install torch==2.13.0 (CPU build)"
        ) from None
    from ..models import ARCHITECTURES, weights_digest

    if not path.is_file():
        raise BackendUnavailableError(f"no weights for this model: {path} is missing")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    arch = ckpt.get("arch")
    if arch not in ARCHITECTURES:
        raise ModelMismatchError(f"{path}: unknown architecture {arch!r}")
    module_name, cls_name = ARCHITECTURES[arch].split(":")
    import importlib

    module = importlib.import_module(module_name)
    cls = getattr(module, cls_name)
    config_cls = getattr(module, cls_name + "Config")
    config = config_cls(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["config"].items()}
    )
    model = cls(config)
    model.load_state_dict(ckpt["state_dict"], strict=True)
    digest = weights_digest(model.state_dict())
    if digest.hex() != ckpt.get("digest"):
        raise ModelMismatchError(f"{path}: weights do not match their recorded digest")
    if expected_digest and digest != expected_digest:
        raise ModelMismatchError(
            f"the stream was made for weights {expected_digest.hex()}, these are {digest.hex()}"
        )
    return model.eval()


class TorchGenerator:
    """Float32 rendering with the learned generator; reference features cached per key frame."""

    name = "torch"

    def __init__(
        self,
        model_id: str = "grace-s",
        model_digest: bytes = b"",
        checkpoint=None,
        threads: int | None = None,
    ):
        import torch

        if threads:
            torch.set_num_threads(threads)
        if model_id == "warp":
            model_id = "grace-s"  # a warp stream carries no model: use the shipped one
            model_digest = b""
        self.torch = torch
        self.model = load_model(
            Path(checkpoint) if checkpoint else model_path(model_id), model_digest
        )
        # NHWC weights: PyTorch's CPU convolutions (depthwise above all) run about 1.8x
        # faster than with NCHW; the values and the digest are unchanged.
        self.model.to(memory_format=torch.channels_last)
        self.size = self.model.config.size
        self._ref = None

    def set_reference(self, image: np.ndarray, landmarks: np.ndarray) -> None:
        """image: uint8 (S, S, 3) RGB; landmarks: float32 (68, 2) in its pixels."""
        torch = self.torch
        if image.shape[:2] != (self.size, self.size):
            raise ValueError(f"the model renders {self.size}x{self.size}, got {image.shape[:2]}")
        ref = (
            torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div(255)[None]
        )
        with torch.inference_mode():
            self._feats = self.model.encode_reference(ref)
        self._ref = ref
        self._ref_lm = np.asarray(landmarks, np.float64)
        self._ref_heat = torch.from_numpy(
            landmark_heatmaps(self._ref_lm, self.size, self.size // 4)
        )[None]

    def render(self, landmarks: np.ndarray) -> np.ndarray:
        """landmarks: float32 (68, 2) -> uint8 (S, S, 3) RGB."""
        if self._ref is None:
            raise RuntimeError("render() before set_reference()")
        torch = self.torch
        grid, heat = network_inputs(self._ref_lm, landmarks, self.size)
        with torch.inference_mode():
            out = self.model.render(
                self._ref,
                self._feats,
                torch.from_numpy(grid)[None],
                torch.from_numpy(heat)[None],
                self._ref_heat,
            )
        img = out[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0)
        return img.numpy()
