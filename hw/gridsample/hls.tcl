# hw/gridsample/hls.tcl -- Vitis HLS: C simulation, synthesis and IP export of the
# grid-sample engine.
#
# NOT RUN HERE. There is no Vitis HLS (nor Vivado, nor a board) on the machines this
# project is developed on; this script has never been executed. What is verified here is
# the C++ itself: `make -C hw csim` (g++) and tests/decoder_fpga/test_csim.py, bit for bit
# against decoder_fpga/int8_ref.py. Synthesis results, II, resources and timing at 100 MHz
# are unverified until someone runs this on a machine with the tools.
#
# Usage (Vitis HLS 2020.2 or newer):   cd hw/gridsample && vitis_hls -f hls.tcl
# Output: gridsample_engine_prj/solution1/impl/ip (VLNV gracecodec:hls:gridsample_engine:1.0).

set here [file dirname [file normalize [info script]]]
set vectors [file normalize [file join $here .. vectors]]

open_project -reset gridsample_engine_prj
set_top gridsample_engine
add_files [file join $here gridsample_engine.cpp] -cflags "-I[file join $here .. common]"
add_files -tb [file join $here tb_gridsample.cpp] -cflags "-I[file join $here .. common] -Wno-unknown-pragmas"

open_solution -reset solution1 -flow_target vivado
set_part xc7z020clg400-1
create_clock -period 10 -name default   ;# 100 MHz
set_clock_uncertainty 12.5%
config_interface -m_axi_addr64=false
config_interface -m_axi_max_widen_bitwidth 64   ;# 8-byte beats (the engine moves 8 bytes an iteration)

csim_design -argv "$vectors 50"
csynth_design
export_design -format ip_catalog -vendor gracecodec -library hls -version 1.0 -ipname gridsample_engine
exit
