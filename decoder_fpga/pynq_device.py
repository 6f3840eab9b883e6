"""The PYNQ-Z1 device: the gracecodec overlay through PYNQ (`Overlay`, `DefaultIP`,
`allocate`). `pynq` is imported here only, when the device is made: on any machine that
is not the board the `pynq` backend is unavailable with a message saying where it runs.

Untested on hardware (no board here): tests/decoder_fpga/test_board.py drives this module
through a stand-in `pynq` module built on the simulated device, and the `board`-marked
tests run it for real on a PYNQ-Z1 (docs/board.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from codec.errors import BackendUnavailableError, DeviceError

from . import regmap as R
from .driver import find_engines

OVERLAY_ENV = "GRACECODEC_OVERLAY"
DEFAULT_OVERLAY = Path.home() / "gracecodec" / "overlay" / "grace.bit"
_DRIVERS: dict[str, type] = {}


def import_pynq():
    try:
        import pynq
    except ImportError:
        raise BackendUnavailableError(
            "the pynq backend runs on a PYNQ-Z1 board (PYNQ image 2.7 or 3.0, Python with "
            "the `pynq` package) with the gracecodec overlay loaded; see docs/board.md. "
            "Here, `--backend pynq-sim` runs the same driver on a simulated board"
        ) from None
    return pynq


def driver_classes(pynq) -> dict[str, type]:
    """DefaultIP subclasses bound to the engines' VLNVs. PYNQ registers a subclass when it
    is defined, so these exist before the Overlay is opened and it binds them."""
    if not _DRIVERS:
        for kind, m in R.ENGINES.items():

            def init(self, description, _m=m):
                pynq.DefaultIP.__init__(self, description=description)
                self.regmap = _m

            cls = type(
                f"{''.join(p.title() for p in m.name.split('_'))}Driver",
                (pynq.DefaultIP,),
                {"bindto": [m.vlnv], "__init__": init},
            )
            _DRIVERS[kind] = cls
    return _DRIVERS


class PynqBufferWrapper:
    """A `pynq.allocate` buffer behind the driver.Buffer protocol."""

    def __init__(self, buf, name: str):
        self.buf = buf
        self.name = name
        self.array = buf  # PynqBuffer is an ndarray
        addr = getattr(buf, "physical_address", None)
        self.physical_address = int(addr if addr is not None else buf.device_address)

    def flush(self) -> None:
        self.buf.flush()

    def invalidate(self) -> None:
        self.buf.invalidate()

    def cpu_access(self, offset: int, nbytes: int) -> None:
        pass  # the board has no check: the driver's discipline is what the sim verifies

    def free(self) -> None:
        close = getattr(self.buf, "freebuffer", None) or self.buf.close
        close()


class PynqDevice:
    """The overlay on the board. `bitfile`: the overlay's .bit (its .hwh beside it), else
    $GRACECODEC_OVERLAY, else ~/gracecodec/overlay/grace.bit."""

    name = "pynq"

    def __init__(self, bitfile: str | os.PathLike | None = None, download: bool = True):
        pynq = import_pynq()
        self.pynq = pynq
        path = Path(bitfile or os.environ.get(OVERLAY_ENV) or DEFAULT_OVERLAY)
        if not path.is_file() or not path.with_suffix(".hwh").is_file():
            raise DeviceError(
                f"no overlay at {path} (with {path.with_suffix('.hwh').name} beside it): copy "
                f"grace.bit and grace.hwh there or set {OVERLAY_ENV} (docs/board.md)"
            )
        drivers = driver_classes(pynq)
        try:
            self.overlay = pynq.Overlay(str(path), download=download)
        except (OSError, RuntimeError, ValueError, KeyError) as e:
            raise DeviceError(f"cannot load the overlay {path}: {e}") from None
        names = find_engines(self.overlay.ip_dict, str(path))
        self._engines = {}
        for kind, name in names.items():
            ip = getattr(self.overlay, name)
            if not isinstance(ip, drivers[kind]):
                raise DeviceError(
                    f"{path}: {name} is bound to {type(ip).__name__}, not the gracecodec "
                    "driver (another DefaultIP subclass claims its VLNV)"
                )
            self._engines[kind] = ip

    def engine(self, kind: str):
        return self._engines[kind]

    def allocate(self, nbytes: int, name: str) -> PynqBufferWrapper:
        try:
            buf = self.pynq.allocate(shape=(int(nbytes),), dtype=np.uint8)
        except (MemoryError, RuntimeError, OSError, ValueError) as e:
            raise DeviceError(
                f"cannot allocate {nbytes} bytes of contiguous memory for {name}: {e}"
            ) from None
        return PynqBufferWrapper(buf, name)

    def close(self) -> None:
        pass
