"""C simulation of the hw/ engines: the HLS C++ sources compiled by g++, called via ctypes.

`conv2d` and `grid_sample` take the arguments of `int8_ref.conv2d_int8` and
`int8_ref.grid_sample_int8` and must return identical arrays. The shared library
`hw/build/libgrace_hw.so` is built on first use (`make -C hw lib`) and rebuilt when a
source is newer. Configurations the engines cannot take are rejected by the engine's own
check (the C code), raised here as `int8_ref.UnsupportedConfigError` with the engine's
status; missing tools raise `BackendUnavailableError` with what to install.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np

from codec.errors import BackendUnavailableError, DeviceError

from . import int8_ref as ref

HW_DIR = Path(__file__).resolve().parents[1] / "hw"
LIB_PATH = HW_DIR / "build" / "libgrace_hw.so"
ABI_VERSION = 3

_lock = threading.Lock()  # the engines keep static buffers: one call at a time
_lib: ctypes.CDLL | None = None

_i32 = ctypes.c_int32


class ConvConfig(ctypes.Structure):
    """grace_conv_cfg_t of hw/common/grace_hw.h."""

    _fields_ = [
        (name, _i32)
        for name in (
            "cin", "cout", "h", "w", "k", "stride", "depthwise", "relu", "upsample",
            "residual", "res_m", "res_s", "tile_rows",
        )
    ]  # fmt: skip


class GridConfig(ctypes.Structure):
    """grace_gs_cfg_t of hw/common/grace_hw.h."""

    _fields_ = [(name, _i32) for name in ("c", "h", "w", "ho", "wo", "occlusion", "m", "s")]


def _sources() -> list[Path]:
    return [HW_DIR / "bridge.cpp", HW_DIR / "Makefile"] + sorted(
        p
        for d in ("common", "conv", "gridsample")
        for p in (HW_DIR / d).glob("*")
        if p.suffix in (".cpp", ".h") and not p.name.startswith("tb_")
    )


def _stale() -> bool:
    if not LIB_PATH.is_file():
        return True
    built = LIB_PATH.stat().st_mtime
    return any(p.stat().st_mtime > built for p in _sources() if p.is_file())


def build_library() -> Path:
    """Build (or rebuild when stale) hw/build/libgrace_hw.so with `make -C hw lib`."""
    if not (HW_DIR / "Makefile").is_file():
        raise BackendUnavailableError(
            f"the hw/ sources are not here ({HW_DIR}); the csim backend needs a source checkout"
        )
    cxx = os.environ.get("CXX", "g++")
    for tool in ("make", cxx):
        if shutil.which(tool) is None:
            raise BackendUnavailableError(
                f"the csim backend compiles hw/ with {cxx} and make; '{tool}' is not on PATH "
                "(Debian/Ubuntu: apt-get install g++ make)"
            )
    LIB_PATH.parent.mkdir(parents=True, exist_ok=True)
    with open(LIB_PATH.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent test processes build once
        if _stale():
            proc = subprocess.run(
                ["make", "-C", str(HW_DIR), "lib"], capture_output=True, text=True, check=False
            )
            if proc.returncode != 0:
                raise BackendUnavailableError(
                    f"building {LIB_PATH} failed (make -C hw lib):\n{proc.stdout}{proc.stderr}"
                )
    return LIB_PATH


def load_library() -> ctypes.CDLL:
    """The loaded library (built on demand), with its ABI and struct layout checked."""
    global _lib
    if _lib is not None:
        return _lib
    build_library()
    lib = ctypes.CDLL(str(LIB_PATH))
    p8, pu8, p16, p32 = (
        ctypes.POINTER(t) for t in (ctypes.c_int8, ctypes.c_uint8, ctypes.c_int16, _i32)
    )
    for name, args in {
        "grace_hw_abi_version": [],
        "grace_conv_cfg_size": [],
        "grace_gs_cfg_size": [],
        "grace_hw_limits": [p32, _i32],
        "grace_conv_check": [ctypes.POINTER(ConvConfig), p32],
        "grace_conv2d": [p8, p8, p32, p8, p8, ctypes.POINTER(ConvConfig)],
        "grace_conv2d_ports": [p8, p8, p32, p8, p8, p8, ctypes.POINTER(ConvConfig)],
        "grace_gs_check": [ctypes.POINTER(GridConfig), p32],
        "grace_grid_sample": [p8, p16, pu8, p8, ctypes.POINTER(GridConfig)],
    }.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, _i32
    if lib.grace_hw_abi_version() != ABI_VERSION:
        raise BackendUnavailableError(
            f"{LIB_PATH} has ABI {lib.grace_hw_abi_version()}, expected {ABI_VERSION}; "
            "run `make -C hw clean lib`"
        )
    if lib.grace_conv_cfg_size() != ctypes.sizeof(
        ConvConfig
    ) or lib.grace_gs_cfg_size() != ctypes.sizeof(GridConfig):
        raise BackendUnavailableError(f"{LIB_PATH}: config struct layout differs from csim.py")
    _lib = lib
    return lib


def limits() -> list[int]:
    """The engine limits compiled into the library, in the order of grace_hw_limits()."""
    lib = load_library()
    n = lib.grace_hw_limits(None, 0)
    out = (_i32 * n)()
    lib.grace_hw_limits(out, n)
    return list(out)


def _ptr(a: np.ndarray | None, ctype):
    return None if a is None else a.ctypes.data_as(ctypes.POINTER(ctype))


def _raise_status(code: int, what: str, detail: str) -> None:
    status = ref.EngineStatus(-code) if -code in ref.EngineStatus._value2member_map_ else None
    if status is None:
        raise DeviceError(f"{what} returned an unknown status {code} ({detail})")
    raise ref.UnsupportedConfigError(
        f"{what} rejected the configuration: {status.name}: {ref.STATUS_TEXT[status]} ({detail})"
    )


def conv_check_status(cfg: ConvConfig) -> tuple[int, int]:
    """(status, tile_rows) of the engine's own configuration check (no memory touched)."""
    tr = _i32(0)
    code = load_library().grace_conv_check(ctypes.byref(cfg), ctypes.byref(tr))
    return -code, tr.value


def grid_check_status(cfg: GridConfig) -> tuple[int, int]:
    """(status, planes per pass) of the grid-sample engine's configuration check."""
    planes = _i32(0)
    code = load_library().grace_gs_check(ctypes.byref(cfg), ctypes.byref(planes))
    return -code, planes.value


def conv2d(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray,
    M: np.ndarray,
    S: np.ndarray,
    *,
    stride: int = 1,
    depthwise: bool = False,
    relu: bool = False,
    upsample: bool = False,
    residual: np.ndarray | None = None,
    res_M: int | None = None,
    res_S: int | None = None,
    tile_rows: int = 0,
) -> np.ndarray:
    """The conv engine in C simulation; same arguments and result as int8_ref.conv2d_int8.

    tile_rows: output rows per tile (0: the engine picks the largest that fits); the
    result does not depend on it.
    """
    x = np.ascontiguousarray(ref._as_int(x, np.int8, "x", 3))
    w = np.ascontiguousarray(ref._as_int(w, np.int8, "w", 4))
    cin, h, wd = x.shape
    cout, wcin, k, k2 = w.shape
    if k != k2:
        raise ref.UnsupportedConfigError(f"non-square kernel {k}x{k2}")
    if wcin != (1 if depthwise else cin):
        raise ref.UnsupportedConfigError(
            f"weights {w.shape} do not match input {x.shape} (depthwise={bool(depthwise)})"
        )
    if residual is not None and (res_M is None or res_S is None):
        raise ref.UnsupportedConfigError("a residual needs res_M and res_S")
    cfg = ConvConfig(
        cin, cout, h, wd, k, int(stride), int(depthwise), int(relu), int(upsample),
        int(residual is not None), int(res_M or 0), int(res_S or 0), int(tile_rows),
    )  # fmt: skip
    detail = (
        f"cin={cin} cout={cout} h={h} w={wd} k={k} stride={stride} depthwise={bool(depthwise)} "
        f"upsample={bool(upsample)} tile_rows={tile_rows}"
    )
    status, _ = conv_check_status(cfg)
    if status:
        _raise_status(-status, "conv engine", detail)
    ho = ref.conv_out_size(h, k, stride, bool(upsample))
    wo = ref.conv_out_size(wd, k, stride, bool(upsample))
    params = np.ascontiguousarray(
        np.stack(
            [
                ref._per_channel(b, cout, "b"),
                ref._per_channel(M, cout, "M"),
                ref._per_channel(S, cout, "S"),
            ],
            axis=1,
        ),
        dtype=np.int32,
    )
    res = None
    if residual is not None:
        res = np.ascontiguousarray(ref._as_int(residual, np.int8, "residual", 3))
        if res.shape != (cout, ho, wo):
            raise ref.UnsupportedConfigError(
                f"residual must have shape {(cout, ho, wo)}, got {res.shape}"
            )
    y = np.empty((cout, ho, wo), np.int8)
    lib = load_library()
    with _lock:
        code = lib.grace_conv2d(
            _ptr(x, ctypes.c_int8), _ptr(w, ctypes.c_int8), _ptr(params, _i32),
            _ptr(res, ctypes.c_int8), _ptr(y, ctypes.c_int8), ctypes.byref(cfg),
        )  # fmt: skip
    if code:
        _raise_status(code, "conv engine", detail)
    return y


def grid_sample(
    x: np.ndarray,
    grid: np.ndarray,
    M: int,
    S: int,
    *,
    occlusion: np.ndarray | None = None,
) -> np.ndarray:
    """The grid-sample engine in C simulation; same as int8_ref.grid_sample_int8."""
    x = np.ascontiguousarray(ref._as_int(x, np.int8, "x", 3))
    grid = np.ascontiguousarray(ref._as_int(grid, np.int16, "grid", 3))
    c, h, w = x.shape
    if grid.shape[0] != 2:
        raise ref.UnsupportedConfigError(f"grid must have shape (2, Ho, Wo), got {grid.shape}")
    ho, wo = grid.shape[1:]
    occ = None
    if occlusion is not None:
        occ = np.ascontiguousarray(ref._as_int(occlusion, np.uint8, "occlusion", 2))
        if occ.shape != (ho, wo):
            raise ref.UnsupportedConfigError(f"occlusion must have shape {(ho, wo)}")
    m, s = int(M), int(S)
    if not (-(2**31) <= m < 2**31 and -(2**31) <= s < 2**31):
        _raise_status(-int(ref.EngineStatus.BAD_REQUANT), "grid-sample engine", f"M={m} S={s}")
    cfg = GridConfig(c, h, w, ho, wo, int(occ is not None), m, s)
    detail = f"c={c} in {h}x{w} out {ho}x{wo} occlusion={occ is not None} M={m} S={s}"
    y = np.empty((c, ho, wo), np.int8)
    lib = load_library()
    with _lock:
        code = lib.grace_grid_sample(
            _ptr(x, ctypes.c_int8), _ptr(grid, ctypes.c_int16), _ptr(occ, ctypes.c_uint8),
            _ptr(y, ctypes.c_int8), ctypes.byref(cfg),
        )  # fmt: skip
    if code:
        _raise_status(code, "grid-sample engine", detail)
    return y
