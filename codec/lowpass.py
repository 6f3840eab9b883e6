"""Low-pass residual: a few bits that put back the coarse shading the generator loses.

One key frame animated for seconds drifts in its coarse structure (light on a turned
cheek, a shoulder, a background the camera brings in): the very scales MS-SSIM weighs
most. Every `interval` frames the sender renders the frame as the receiver will (the
same generator, from the decoded key frame and the decoded motion), takes the residual
original - rendered at 16x16 (luma) and 8x8 (chroma, YCbCr), quantises its change since
the last update and sends it in a LOWPASS packet where it is worth its bits (the
encoder's gate: PSNR gained on that frame per kbit, `DEFAULT_MIN_GAIN`). The receiver
holds the last residual and adds it, upsampled, to every frame it renders until the next
update; a key frame resets it to zero. Loop closed at the sender: quantisation errors do
not add up.

Payload (docs/bitstream.md, "LOWPASS payload"): u8 luma step, u8 chroma step, u8 the
two Laplace tables (luma in the high nibble), then 32-bit little-endian range-coder
words (`constriction`) of the 16*16 luma then 8*8*2 chroma change symbols, row-major.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import binary
from .errors import BitstreamError

# The sender's default gate (encode --lowpass-min-gain): an update must gain this many dB
# of PSNR on its frame per kbit it costs. Chosen on six val clips, docs/results.md.
DEFAULT_MIN_GAIN = 2.0

LUMA_GRID = 16
CHROMA_GRID = 8
MAX_SYMBOL = 47  # changes are clamped to +-47 steps (the sender reconstructs the clamp)

# ITU-R BT.601 full range, RGB -> YCbCr (the residual is a difference: no offsets).
_TO_YCC = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
    np.float32,
)
_TO_RGB = np.linalg.inv(_TO_YCC).astype(np.float32)


def _laplace_tables() -> np.ndarray:
    """16 discrete two-sided geometric tables over -MAX_SYMBOL..MAX_SYMBOL.

    Table i falls by 256 / (256 + round(2^(9 - i/2))) a step: from 1/3 (sharpest, mostly
    zeros) to 0.99 (nearly flat). The weights are integers so that sender and receiver
    agree bit for bit on every machine; float64 only for the final normalisation.
    """
    tables = []
    for i in range(16):
        num, den = 256, 256 + round(2 ** (9 - i / 2))
        w = [1 << 40]
        for _ in range(MAX_SYMBOL):
            w.append(max(1, w[-1] * num // den))
        weights = np.array(w[:0:-1] + w, np.float64)  # symmetric about 0
        tables.append(weights / weights.sum())
    return np.stack(tables)


TABLES = _laplace_tables()


def _categorical(p: np.ndarray):
    import constriction  # local import: keeps `import codec` light

    return constriction.stream.model.Categorical(p, perfect=False)


def _bits(symbols: np.ndarray, table: np.ndarray) -> float:
    return float(-np.log2(table[symbols + MAX_SYMBOL]).sum())


def _best_table(symbols: np.ndarray) -> int:
    return int(np.argmin([_bits(symbols, t) for t in TABLES]))


def downsample(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 or float (S, S, 3) RGB -> luma (16, 16), chroma (8, 8, 2), area-averaged."""
    import cv2  # local imports: the CLI reads DEFAULT_MIN_GAIN without loading OpenCV

    ycc = frame.astype(np.float32) @ _TO_YCC.T
    y = cv2.resize(ycc[..., 0], (LUMA_GRID, LUMA_GRID), interpolation=cv2.INTER_AREA)
    c = cv2.resize(ycc[..., 1:], (CHROMA_GRID, CHROMA_GRID), interpolation=cv2.INTER_AREA)
    return y, c


def upsample(luma: np.ndarray, chroma: np.ndarray, size: int) -> np.ndarray:
    """The residual at full size, float32 (size, size, 3) RGB."""
    import cv2

    y = cv2.resize(luma.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    c = cv2.resize(chroma.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    return np.concatenate([y[..., None], c], 2) @ _TO_RGB.T


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))


@dataclasses.dataclass(frozen=True)
class LowpassUpdate:
    """A proposed update: its payload, the residual it leads to, and its PSNR gain (dB) on
    the frame it was made for, against keeping the held residual."""

    payload: bytes
    luma: np.ndarray
    chroma: np.ndarray
    full: np.ndarray
    gain_db: float


class LowpassResidual:
    """The residual both ends hold: zero after a key frame, replaced by each update.

    luma_step, chroma_step: quantiser steps in 8-bit levels (the sender's choice; they
    travel in every payload).
    """

    def __init__(self, size: int, luma_step: int = 12, chroma_step: int = 8) -> None:
        if not (1 <= luma_step <= 255 and 1 <= chroma_step <= 255):
            raise ValueError("low-pass steps must be 1..255")
        self.size = size
        self.luma_step, self.chroma_step = luma_step, chroma_step
        self.reset()

    def reset(self) -> None:
        """At a key frame: nothing to correct yet."""
        self.luma = np.zeros((LUMA_GRID, LUMA_GRID), np.float32)
        self.chroma = np.zeros((CHROMA_GRID, CHROMA_GRID, 2), np.float32)
        self._full: np.ndarray | None = None

    @property
    def active(self) -> bool:
        return self._full is not None

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """A rendered uint8 frame with the held residual added."""
        if self._full is None:
            return frame
        return np.clip(frame + self._full, 0, 255).round().astype(np.uint8)

    def _hold(self, luma: np.ndarray, chroma: np.ndarray, full: np.ndarray) -> None:
        self.luma, self.chroma, self._full = luma, chroma, full

    # -- sender -------------------------------------------------------------------------

    def propose(self, original: np.ndarray, rendered: np.ndarray) -> LowpassUpdate | None:
        """The update that would bring the held residual to original - rendered, with its
        payload and what it buys on this frame; None where it would change nothing. The
        held residual changes only at `commit` (the sender may decide it is not worth its
        bits)."""
        import constriction

        y, c = downsample(original.astype(np.float32) - rendered.astype(np.float32))
        sy = np.clip(np.round((y - self.luma) / self.luma_step), -MAX_SYMBOL, MAX_SYMBOL)
        sc = np.clip(np.round((c - self.chroma) / self.chroma_step), -MAX_SYMBOL, MAX_SYMBOL)
        sy, sc = sy.astype(np.int32).ravel(), sc.astype(np.int32).ravel()
        if not (sy.any() or sc.any()):
            return None
        ty, tc = _best_table(sy), _best_table(sc)
        coder = constriction.stream.queue.RangeEncoder()
        coder.encode(sy + MAX_SYMBOL, _categorical(TABLES[ty]))
        coder.encode(sc + MAX_SYMBOL, _categorical(TABLES[tc]))
        words = coder.get_compressed().astype("<u4").tobytes()
        payload = (
            binary.u8(self.luma_step)
            + binary.u8(self.chroma_step)
            + binary.u8(ty << 4 | tc)
            + words
        )
        luma, chroma = self._updated(sy, sc)
        full = upsample(luma, chroma, self.size)
        held_mse = _mse(original, self.apply(rendered))
        new_mse = _mse(original, np.clip(rendered + full, 0, 255).round())
        gain = 10 * np.log10(max(held_mse, 1e-6) / max(new_mse, 1e-6))
        return LowpassUpdate(payload, luma, chroma, full, float(gain))

    def commit(self, update: LowpassUpdate) -> None:
        """Holds the proposed residual (the update is being sent)."""
        self._hold(update.luma, update.chroma, update.full)

    def encode(self, original: np.ndarray, rendered: np.ndarray) -> bytes | None:
        """propose + commit: the payload of the update, or None where nothing changes."""
        update = self.propose(original, rendered)
        if update is None:
            return None
        self.commit(update)
        return update.payload

    def _updated(self, sy: np.ndarray, sc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The held residual plus the change symbols sy, sc (luma, chroma grids)."""
        luma = self.luma + sy.reshape(LUMA_GRID, LUMA_GRID).astype(np.float32) * self.luma_step
        chroma = (
            self.chroma
            + sc.reshape(CHROMA_GRID, CHROMA_GRID, 2).astype(np.float32) * self.chroma_step
        )
        return luma, chroma

    # -- receiver -----------------------------------------------------------------------

    def decode(self, payload: bytes, pts: int) -> None:
        """Reads a LOWPASS payload and updates the held residual (BitstreamError if bad)."""
        import constriction

        r = binary.ByteReader(payload, f"LOWPASS packet at pts {pts}")
        luma_step, chroma_step, tables = r.u8(), r.u8(), r.u8()
        data = r.take(r.remaining)
        if not luma_step or not chroma_step or len(data) % 4 or not data:
            raise BitstreamError(f"LOWPASS at pts {pts}: bad steps or coded data")
        decoder = constriction.stream.queue.RangeDecoder(
            np.frombuffer(data, "<u4").astype(np.uint32)
        )
        try:
            sy = decoder.decode(_categorical(TABLES[tables >> 4]), LUMA_GRID**2)
            sc = decoder.decode(_categorical(TABLES[tables & 15]), 2 * CHROMA_GRID**2)
        except (ValueError, RuntimeError, AssertionError) as e:
            raise BitstreamError(f"LOWPASS at pts {pts}: undecodable ({e})") from None
        self.luma_step, self.chroma_step = luma_step, chroma_step
        luma, chroma = self._updated(
            np.asarray(sy, np.int32) - MAX_SYMBOL, np.asarray(sc, np.int32) - MAX_SYMBOL
        )
        self._hold(luma, chroma, upsample(luma, chroma, self.size))
