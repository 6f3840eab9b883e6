# hw/conv/hls.tcl -- Vitis HLS: C simulation, synthesis and IP export of the conv engine.
#
# NOT RUN HERE. There is no Vitis HLS (nor Vivado, nor a board) on the machines this
# project is developed on; this script has never been executed. What is verified here is
# the C++ itself: `make -C hw csim` (g++) and tests/decoder_fpga/test_csim.py, bit for bit
# against decoder_fpga/int8_ref.py. Synthesis results, II, resources and timing at 100 MHz
# are unverified until someone runs this on a machine with the tools.
#
# Usage (Vitis HLS 2020.2 or newer):   cd hw/conv && vitis_hls -f hls.tcl
# Output: conv_engine_prj/solution1/impl/ip (IP catalog zip, VLNV gracecodec:hls:conv_engine:1.0),
# used by hw/vivado/block_design.tcl.

set here [file dirname [file normalize [info script]]]
set vectors [file normalize [file join $here .. vectors]]

open_project -reset conv_engine_prj
set_top conv_engine
add_files [file join $here conv_engine.cpp] -cflags "-I[file join $here .. common]"
add_files -tb [file join $here tb_conv.cpp] -cflags "-I[file join $here .. common] -Wno-unknown-pragmas"

open_solution -reset solution1 -flow_target vivado
set_part xc7z020clg400-1
create_clock -period 10 -name default   ;# 100 MHz
set_clock_uncertainty 12.5%
config_interface -m_axi_addr64=false    ;# Zynq-7000 HP ports take 32-bit addresses
config_interface -m_axi_alignment_byte_size 64 -m_axi_max_widen_bitwidth 64
# x and x1 are the same input through two bundles (gmem0, gmem1): two beats a cycle

# C simulation with the committed golden vectors and 50 random cases (as make csim).
csim_design -argv "$vectors 50"
csynth_design
export_design -format ip_catalog -vendor gracecodec -library hls -version 1.0 -ipname conv_engine
exit
