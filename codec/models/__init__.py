"""Learned generator architectures (torch). Imported only by the torch backend and training.

A checkpoint is a dict: {"arch": name, "config": dict, "state_dict": ..., "digest": hex}
where the digest is the SHA-256 of the weights (see `weights_digest`); the stream header
names the architecture and the first 8 bytes of the digest.
"""

from __future__ import annotations

import hashlib

ARCHITECTURES = {"grace-s": "codec.models.grace_s:GraceS"}


def weights_digest(state_dict) -> bytes:
    """First 8 bytes of the SHA-256 over the weights in key order (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.digest()[:8]
