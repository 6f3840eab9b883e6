"""The register maps (decoder_fpga/regmap.py) against the HLS sources in hw/: the top
functions' parameter order, their `#pragma HLS INTERFACE` lists, the config structs and
the hls.tcl settings (address width, alignment, VLNV)."""

import re
from pathlib import Path

import pytest

from decoder_fpga import regmap as R

HW = Path(__file__).resolve().parents[2] / "hw"
SOURCES = {
    "conv_engine": HW / "conv" / "conv_engine.cpp",
    "gridsample_engine": HW / "gridsample" / "gridsample_engine.cpp",
}
TCL = {"conv_engine": HW / "conv" / "hls.tcl", "gridsample_engine": HW / "gridsample" / "hls.tcl"}


def top_params(name: str) -> list[tuple[str, str]]:
    """[(type, name)] of the top function's definition."""
    src = SOURCES[name].read_text()
    m = re.search(rf"^int32_t\s+{name}\s*\(([^)]*)\)\s*\{{", src, re.M)
    if m is None:
        pytest.fail(f"no definition of {name} in {SOURCES[name]}")
    out = []
    for p in m.group(1).split(","):
        p = " ".join(p.split())
        pm = re.match(r"(.*?)\s*(\w+)$", p)
        out.append((pm.group(1).replace(" *", "*").strip(), pm.group(2)))
    return out


def pragmas(name: str) -> dict[str, dict[str, dict[str, str]]]:
    """{mode: {port: {key: value}}} of the `#pragma HLS INTERFACE` lines."""
    out: dict = {}
    for line in SOURCES[name].read_text().splitlines():
        m = re.match(r"\s*#pragma HLS INTERFACE\s+(\w+)\s+(.*)", line)
        if not m:
            continue
        kv = dict(re.findall(r"(\w+)\s*=\s*(\w+)", m.group(2)))
        out.setdefault(m.group(1), {})[kv["port"]] = kv
    return out


def struct_fields(typedef: str) -> list[str]:
    src = (HW / "common" / "grace_hw.h").read_text()
    m = re.search(r"typedef struct \{([^{}]*)\}\s*" + typedef + ";", src, re.S)
    body = re.sub(r"//.*", "", m.group(1))
    fields = []
    for decl in body.split(";"):
        decl = decl.strip()
        if decl:
            if not decl.startswith("int32_t"):
                pytest.fail(f"{typedef}: non-int32 member {decl!r}")
            fields += [f.strip() for f in decl[len("int32_t") :].split(",")]
    return fields


@pytest.mark.parametrize("m", [R.CONV, R.GRIDSAMPLE], ids=lambda m: m.name)
def test_arguments_follow_the_top_function(m):
    params = top_params(m.name)
    assert [a.name for a in m.args] == [n for _, n in params]
    for a, (ctype, _) in zip(m.args, params):
        if a.kind == "pointer":
            assert ctype.endswith("*"), a.name
            base = ctype.replace("const", "").replace("*", "").strip()
            assert base == f"{a.dtype}_t"
        else:
            assert ctype.endswith("_cfg_t")
            assert list(a.fields) == struct_fields(ctype)


@pytest.mark.parametrize("m", [R.CONV, R.GRIDSAMPLE], ids=lambda m: m.name)
def test_interface_pragmas(m):
    p = pragmas(m.name)
    # every argument and the return value sit on the one s_axilite bundle `control`
    assert set(p["s_axilite"]) == {a.name for a in m.args} | {"return"}
    assert {kv["bundle"] for kv in p["s_axilite"].values()} == {"control"}
    # every pointer is an m_axi port with its offset in the register map, on its bundle
    assert set(p["m_axi"]) == {a.name for a in m.pointers()}
    for a in m.pointers():
        assert p["m_axi"][a.name]["offset"] == "slave"
        assert p["m_axi"][a.name]["bundle"] == a.bundle


@pytest.mark.parametrize("m", [R.CONV, R.GRIDSAMPLE], ids=lambda m: m.name)
def test_hls_tcl_settings(m):
    tcl = TCL[m.name].read_text()
    assert f"set_top {m.name}" in tcl
    assert re.search(r"-m_axi_addr64=false", tcl) and not m.addr64
    export = re.search(
        r"export_design .*-vendor (\S+) -library (\S+) -version (\S+) -ipname (\S+)", tcl
    )
    assert export.groups() == (R.VENDOR, R.LIBRARY, R.VERSION, m.name)
    assert m.vlnv in (HW / "vivado" / "block_design.tcl").read_text()
    align = re.search(r"-m_axi_alignment_byte_size (\d+)", tcl)
    assert m.align == (int(align.group(1)) if align else 2)


@pytest.mark.parametrize("addr64", [False, True])
def test_layout_rules(addr64):
    for m in (R.conv_map(addr64), R.gridsample_map(addr64)):
        off = R.FIRST_ARG
        for a in m.args:
            assert a.offset == off and a.offset % 4 == 0
            if a.kind == "pointer":
                assert a.words == (2 if addr64 else 1)
            off += 4 * (a.words + 1)  # data words + one reserved word
        assert m.span >= off and m.span & (m.span - 1) == 0
    assert R.conv_map(False).arg("cfg").offset == 0x48
    assert R.conv_map(True).arg("y").offset == 0x48
    assert R.gridsample_map(False).arg("cfg").offset == 0x38
    assert (R.CTRL, R.GIE, R.IER, R.ISR, R.AP_RETURN) == (0, 4, 8, 12, 16)
    assert (R.AP_START, R.AP_DONE, R.AP_IDLE, R.AP_READY, R.AUTO_RESTART) == (1, 2, 4, 8, 128)


def test_words_round_trip():
    m = R.conv_map(True)
    regs = dict(m.words("x", 0x1_2345_6780))
    assert regs == {m.arg("x").offset: 0x23456780, m.arg("x").offset + 4: 1}
    assert m.decode(regs, "x") == 0x1_2345_6780
    cfg = {f: i - 3 for i, f in enumerate(R.CONV_CFG_FIELDS)}
    regs = dict(m.words("cfg", cfg))
    assert regs[m.arg("cfg").offset] == 0xFFFFFFFD  # int32 -3, two's complement
    assert m.decode(regs, "cfg") == cfg
    assert "conv_engine" in R.describe(R.CONV)
