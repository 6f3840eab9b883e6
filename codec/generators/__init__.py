"""Generator backends, chosen by name.

A generator animates a reference (key) frame to follow target landmarks::

    gen = make_generator("warp")
    gen.set_reference(image, landmarks)   # once per key frame: caches what depends on it
    frame = gen.render(target_landmarks)  # per frame

Backends register lazily as "module:factory" strings, so `import codec` never imports
torch, and a backend whose dependencies are missing fails only when it is chosen, with
`BackendUnavailableError` saying what to install.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import numpy as np

from ..errors import BackendUnavailableError, GraceError


class Generator(Protocol):
    name: str

    def set_reference(self, image: np.ndarray, landmarks: np.ndarray) -> None:
        """image: uint8 (H, W, 3) RGB key frame; landmarks: its motion points in its pixels,
        float32 (68, 2), (72, 2) with the camera's, (88, 2) with the ring's too
        (`codec.generators.flow`)."""

    def render(self, landmarks: np.ndarray) -> np.ndarray:
        """landmarks: the target's motion points (as above) -> uint8 (H, W, 3) RGB frame."""


# name -> "module:factory"; later backends (torch, int8, csim, pynq, pynq-sim) add lines here.
_BACKENDS: dict[str, str] = {
    "warp": "codec.generators.warp:WarpGenerator",
    "torch": "codec.generators.torch_backend:TorchGenerator",
    "int8": "decoder_fpga.backends:Int8Generator",
    "csim": "decoder_fpga.backends:CsimGenerator",
    "pynq": "decoder_fpga.board_backend:PynqGenerator",
    "pynq-sim": "decoder_fpga.board_backend:PynqSimGenerator",
}

# The model id a stream's header names -> the backend that decodes it by default.
MODEL_BACKENDS: dict[str, str] = {
    "warp": "warp",
    "grace-s": "torch",
}


def default_model() -> tuple[str, bytes]:
    """The model a new stream names: the shipped learned generator when its card marks it
    the default (it must beat `warp` in `gracecodec eval` first), else the weight-free
    `warp`. Reads only the sidecar JSON (no torch)."""
    from .torch_backend import model_card

    card = model_card("grace-s")
    if card is None or not card.get("default", False):
        return "warp", b""
    return card["arch"], bytes.fromhex(card["digest"])


def backend_names() -> list[str]:
    return sorted(_BACKENDS)


def make_generator(name: str, model_id: str = "warp", model_digest: bytes = b"") -> Generator:
    """Builds the backend `name` for a stream made for model (`model_id`, `model_digest`)."""
    if name not in _BACKENDS:
        raise GraceError(f"unknown backend {name!r} (choose from {', '.join(backend_names())})")
    module_name, factory_name = _BACKENDS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise BackendUnavailableError(f"backend {name!r} cannot load: {e}") from None
    return getattr(module, factory_name)(model_id=model_id, model_digest=model_digest)
