"""Golden vectors for the C++ testbenches of hw/, computed by the int8 reference.

    python -m decoder_fpga.vectors            # (re)write hw/vectors/*.grv and MANIFEST.sha256
    python -m decoder_fpga.vectors --check    # exit 1 if the committed files differ

The same files are read by `hw/conv/tb_conv.cpp`, `hw/gridsample/tb_gridsample.cpp` (via
`make csim`) and by `tests/decoder_fpga/test_int8_ref.py`, which also rewrites them when
run with GENERATE_EXPECTED=1.

File format (.grv, little-endian): b"GRV1", u32 entry count, then per entry a 16-byte
NUL-padded name, u32 dtype (1 int8, 2 uint8, 3 int16, 4 int32), u32 value count, values.
Conv files hold `cfg` (the 13 int32 fields of grace_conv_cfg_t), `x`, `w`, `params`
(int32 [cout][3] = bias, M, S), optionally `res`, and the expected `y`; grid-sample files
hold `cfg` (the 8 fields of grace_gs_cfg_t), `x`, `grid`, optionally `occ`, and `y`.
"""

from __future__ import annotations

import argparse
import hashlib
import struct
import sys
from pathlib import Path

import numpy as np

from . import int8_ref as ref

HW_VECTORS = Path(__file__).resolve().parents[1] / "hw" / "vectors"
MAGIC = b"GRV1"
_DTYPES = {1: np.dtype("<i1"), 2: np.dtype("<u1"), 3: np.dtype("<i2"), 4: np.dtype("<i4")}
_CODES = {np.dtype(v).str: k for k, v in _DTYPES.items()}


def encode(entries: dict[str, np.ndarray]) -> bytes:
    out = [MAGIC, struct.pack("<I", len(entries))]
    for name, arr in entries.items():
        arr = np.asarray(arr)
        code = _CODES[arr.dtype.newbyteorder("<").str]
        raw = name.encode("ascii")
        if len(raw) > 16:
            raise ValueError(f"entry name too long: {name}")
        out += [raw.ljust(16, b"\0"), struct.pack("<II", code, arr.size)]
        out.append(np.ascontiguousarray(arr, dtype=_DTYPES[code]).tobytes())
    return b"".join(out)


def decode(data: bytes) -> dict[str, np.ndarray]:
    if data[:4] != MAGIC:
        raise ValueError("not a .grv vector file")
    (n,) = struct.unpack_from("<I", data, 4)
    pos, out = 8, {}
    for _ in range(n):
        name = data[pos : pos + 16].rstrip(b"\0").decode("ascii")
        code, count = struct.unpack_from("<II", data, pos + 16)
        pos += 24
        dt = _DTYPES[code]
        out[name] = np.frombuffer(data, dtype=dt, count=count, offset=pos).copy()
        pos += count * dt.itemsize
    if pos != len(data):
        raise ValueError("trailing bytes in a .grv vector file")
    return out


# ---------------------------------------------------------------------------------------
# The cases


def _multipliers(rng: np.random.Generator, n_terms: int, cout: int, target: float = 40.0):
    """Per-channel M, S giving outputs of roughly +-target from n_terms random products."""
    spread = np.sqrt(n_terms) * 128 * 127 / 3
    return ref.quantize_multiplier(target / spread * rng.uniform(0.5, 2.0, cout))


def conv_case(
    seed: int,
    cin: int,
    cout: int,
    h: int,
    w: int,
    *,
    k: int = 3,
    stride: int = 1,
    depthwise: bool = False,
    relu: bool = False,
    upsample: bool = False,
    residual: bool = False,
    extreme: bool = False,
) -> dict[str, np.ndarray]:
    """Random operands for one conv configuration and the int8_ref output."""
    rng = np.random.default_rng(seed)
    wcin = 1 if depthwise else cin
    if extreme:  # saturation: only the extreme codes, large multipliers
        x = rng.choice(np.array([-128, 127], np.int8), (cin, h, w))
        wt = rng.choice(np.array([-127, 127], np.int8), (cout, wcin, k, k))
        b = rng.choice(np.array([-(2**30), 2**30, 0]), cout).astype(np.int32)
        M, S = ref.quantize_multiplier(rng.uniform(0.01, 2.0, cout))
    else:
        x = rng.integers(-128, 128, (cin, h, w), dtype=np.int8)
        wt = rng.integers(-127, 128, (cout, wcin, k, k), dtype=np.int8)
        b = rng.integers(-20000, 20000, cout, dtype=np.int32)
        M, S = _multipliers(rng, wcin * k * k, cout)
    ho = ref.conv_out_size(h, k, stride, upsample)
    wo = ref.conv_out_size(w, k, stride, upsample)
    res = res_M = res_S = None
    if residual:
        res = (
            rng.choice(np.array([-128, 127], np.int8), (cout, ho, wo))
            if extreme
            else rng.integers(-128, 128, (cout, ho, wo), dtype=np.int8)
        )
        rm, rs = ref.quantize_multiplier(rng.uniform(0.3, 3.0))
        res_M, res_S = int(rm), int(rs)
    y = ref.conv2d_int8(
        x, wt, b, M, S, stride=stride, depthwise=depthwise, relu=relu, upsample=upsample,
        residual=res, res_M=res_M, res_S=res_S,
    )  # fmt: skip
    cfg = [cin, cout, h, w, k, stride, int(depthwise), int(relu), int(upsample), int(residual),
           res_M or 0, res_S or 0, 0]  # fmt: skip
    entries = {
        "cfg": np.array(cfg, np.int32),
        "x": x,
        "w": wt,
        "params": np.stack([b, M, S], axis=1).astype(np.int32),
    }
    if res is not None:
        entries["res"] = res
    entries["y"] = y
    return entries


def grid_coords(rng: np.random.Generator, shape: tuple[int, int], size: int) -> np.ndarray:
    """Q9.6 coordinates for an input of `size` px: inside, on pixels and borders, just and
    far outside, and the int16 extremes."""
    one = ref.GRID_ONE
    kinds = rng.integers(0, 6, shape)
    inside = rng.integers(-one, size * one + 1, shape)
    on_pixels = rng.integers(-1, size + 1, shape) * one
    borders = rng.choice(np.array([-one, 0, (size - 1) * one, size * one]), shape) + rng.integers(
        -1, 2, shape
    )
    far = rng.choice(np.array([-1, 1]), shape) * rng.integers(size * one, 512 * one, shape)
    extremes = rng.choice(np.array([-32768, 32767]), shape)
    q = np.select(
        [kinds == 0, kinds == 1, kinds == 2, kinds == 3, kinds == 4],
        [on_pixels, borders, far, extremes, inside],
        inside,
    )
    return q.astype(np.int16)


def gs_case(
    seed: int, c: int, h: int, w: int, ho: int, wo: int, *, occlusion: bool, resize: bool = False,
    extreme: bool = False,
) -> dict[str, np.ndarray]:  # fmt: skip
    rng = np.random.default_rng(seed)
    if extreme:
        x = rng.choice(np.array([-128, 127], np.int8), (c, h, w))
    else:
        x = rng.integers(-128, 128, (c, h, w), dtype=np.int8)
    if resize:
        grid = ref.resize_grid(h, w, ho, wo)
    else:
        grid = np.stack([grid_coords(rng, (ho, wo), w), grid_coords(rng, (ho, wo), h)])
    occ = None
    if occlusion:
        occ = rng.integers(0, 256, (ho, wo), dtype=np.uint8)
        occ[rng.random((ho, wo)) < 0.2] = 255
        occ[rng.random((ho, wo)) < 0.1] = 0
    s_in, s_out = 1.0, (0.5 if extreme else 1.0)
    M, S = ref.grid_sample_multiplier(s_in, s_out, occlusion)
    y = ref.grid_sample_int8(x, grid, M, S, occlusion=occ)
    entries = {
        "cfg": np.array([c, h, w, ho, wo, int(occlusion), M, S], np.int32),
        "x": x,
        "grid": grid,
    }
    if occ is not None:
        entries["occ"] = occ
    entries["y"] = y
    return entries


def all_cases() -> dict[str, dict[str, np.ndarray]]:
    return {
        "conv_dense3_s1_relu.grv": conv_case(1, 5, 7, 7, 9, relu=True),
        "conv_dense3_s2_odd.grv": conv_case(2, 6, 9, 9, 7, stride=2),
        "conv_dense1_cout17.grv": conv_case(3, 11, 17, 5, 6, k=1),
        "conv_dense1_s2.grv": conv_case(4, 4, 3, 7, 7, k=1, stride=2),
        "conv_dw3_res_relu.grv": conv_case(
            5, 10, 10, 6, 7, depthwise=True, residual=True, relu=True
        ),
        "conv_dw3_s2_odd.grv": conv_case(6, 9, 9, 7, 9, depthwise=True, stride=2),
        "conv_up_dense3_res.grv": conv_case(7, 4, 6, 4, 5, upsample=True, residual=True, relu=True),
        "conv_up_dw3.grv": conv_case(8, 8, 8, 3, 4, depthwise=True, upsample=True),
        "conv_saturate_res.grv": conv_case(9, 6, 5, 5, 5, residual=True, extreme=True),
        "conv_saturate_relu.grv": conv_case(10, 7, 4, 4, 6, relu=True, extreme=True),
        # the packed PE array at the extreme codes: 3 input groups, 2 output groups (P = 1)
        "conv_pack_extreme.grv": conv_case(11, 24, 34, 5, 5, extreme=True),
        # 2-pixel groups (cout 12) with stride 2 on an odd width and a residual, saturating
        "conv_group2_s2_res.grv": conv_case(
            12, 10, 12, 7, 11, stride=2, residual=True, extreme=True
        ),
        "gs_occ_borders.grv": gs_case(11, 5, 7, 9, 6, 8, occlusion=True),
        "gs_plain_borders.grv": gs_case(12, 3, 5, 4, 5, 7, occlusion=False),
        "gs_resize_x2.grv": gs_case(13, 2, 4, 4, 8, 8, occlusion=False, resize=True),
        "gs_saturate.grv": gs_case(14, 4, 6, 5, 5, 6, occlusion=True, extreme=True),
    }


def case_call(entries: dict[str, np.ndarray]) -> tuple[str, tuple, dict, np.ndarray]:
    """A decoded vector file -> (kind, args, kwargs, expected y) for conv2d/grid_sample.

    kind is "conv" or "gs"; args/kwargs fit int8_ref.conv2d_int8 / grid_sample_int8 and
    the csim functions of the same signatures.
    """
    c = [int(v) for v in entries["cfg"]]
    if len(c) == 13:
        cin, cout, h, w, k, stride, dw, relu, up, has_res, res_m, res_s, _ = c
        ho, wo = (
            ref.conv_out_size(h, k, stride, bool(up)),
            ref.conv_out_size(w, k, stride, bool(up)),
        )
        p = entries["params"].reshape(cout, 3)
        args = (
            entries["x"].reshape(cin, h, w),
            entries["w"].reshape(cout, 1 if dw else cin, k, k),
            p[:, 0], p[:, 1], p[:, 2],
        )  # fmt: skip
        kwargs = dict(stride=stride, depthwise=bool(dw), relu=bool(relu), upsample=bool(up))
        if has_res:
            kwargs.update(residual=entries["res"].reshape(cout, ho, wo), res_M=res_m, res_S=res_s)
        return "conv", args, kwargs, entries["y"].reshape(cout, ho, wo)
    ch, h, w, ho, wo, occ, m, s = c
    kwargs = {"occlusion": entries["occ"].reshape(ho, wo)} if occ else {}
    args = (entries["x"].reshape(ch, h, w), entries["grid"].reshape(2, ho, wo), m, s)
    return "gs", args, kwargs, entries["y"].reshape(ch, ho, wo)


def manifest(files: dict[str, bytes]) -> str:
    return "".join(
        f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in sorted(files.items())
    )


def build() -> dict[str, bytes]:
    files = {name: encode(entries) for name, entries in all_cases().items()}
    files["MANIFEST.sha256"] = manifest(files).encode()
    return files


def write(out: Path = HW_VECTORS) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in build().items():
        (out / name).write_bytes(data)
        paths.append(out / name)
    return paths


def differences(out: Path = HW_VECTORS) -> list[str]:
    """Names of the files in `out` that differ from (or are missing against) a rebuild."""
    return [
        name
        for name, data in build().items()
        if not (out / name).is_file() or (out / name).read_bytes() != data
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m decoder_fpga.vectors", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--out", type=Path, default=HW_VECTORS)
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args(argv)
    if args.check:
        diff = differences(args.out)
        for name in diff:
            print(f"differs: {args.out / name}", file=sys.stderr)
        return 1 if diff else 0
    paths = write(args.out)
    print(f"wrote {len(paths)} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
