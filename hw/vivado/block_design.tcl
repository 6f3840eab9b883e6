# hw/vivado/block_design.tcl -- Vivado block design of the gracecodec overlay for PYNQ-Z1.
#
# NOT RUN HERE. There is no Vivado (nor Vitis HLS, nor a PYNQ-Z1) on the machines this
# project is developed on; this script has never been executed and may need adjustments
# for a given Vivado version. It states the intended system:
#   * Zynq-7000 PS7 (xc7z020clg400-1): DDR, FCLK_CLK0 = 100 MHz for the PL, M_AXI_GP0 for
#     control, S_AXI_HP0..HP3 (64-bit) for the engines' data, IRQ_F2P for interrupts;
#   * the two HLS engines (exported by hw/conv/hls.tcl and hw/gridsample/hls.tcl):
#     s_axi_control on GP0 (registers: ap_ctrl start/done/idle, the pointer offsets and
#     the config struct), m_axi_gmem0..2 (grid sample: ..3) on the HP ports through AXI interconnects;
#   * an AXI interrupt controller (axi_intc) collecting both engines' `interrupt` lines,
#     as PYNQ expects for asyncio waits;
#   * output: overlay/grace.bit and overlay/grace.hwh (PYNQ's Overlay reads the .hwh).
#
# Usage (Vivado 2020.2 or newer, after running both hls.tcl scripts):
#   cd hw/vivado && vivado -mode batch -source block_design.tcl

set here [file dirname [file normalize [info script]]]
set proj_dir [file join $here grace_overlay]
set out_dir [file join $here overlay]

create_project -force grace_overlay $proj_dir -part xc7z020clg400-1
# The Digilent board files give the PYNQ-Z1 PS7 preset (DDR timing, MIO); use them when
# installed, otherwise the PS7 block below is configured by hand.
catch {set_property board_part www.digilentinc.com:pynq-z1:part0:1.0 [current_project]}

set_property ip_repo_paths [list \
    [file join $here .. conv conv_engine_prj solution1 impl ip] \
    [file join $here .. gridsample gridsample_engine_prj solution1 impl ip]] [current_project]
update_ip_catalog

create_bd_design grace

# ---- processing system --------------------------------------------------------------------
set ps [create_bd_cell -type ip -vlnv xilinx.com:ip:processing_system7:5.5 processing_system7_0]
catch {apply_bd_automation -rule xilinx.com:bd_rule:processing_system7 \
    -config {make_external "FIXED_IO, DDR" apply_board_preset "1"} $ps}
set_property -dict [list \
    CONFIG.PCW_FPGA0_PERIPHERAL_FREQMHZ {100} \
    CONFIG.PCW_USE_M_AXI_GP0 {1} \
    CONFIG.PCW_USE_S_AXI_HP0 {1} CONFIG.PCW_S_AXI_HP0_DATA_WIDTH {64} \
    CONFIG.PCW_USE_S_AXI_HP1 {1} CONFIG.PCW_S_AXI_HP1_DATA_WIDTH {64} \
    CONFIG.PCW_USE_S_AXI_HP2 {1} CONFIG.PCW_S_AXI_HP2_DATA_WIDTH {64} \
    CONFIG.PCW_USE_S_AXI_HP3 {1} CONFIG.PCW_S_AXI_HP3_DATA_WIDTH {64} \
    CONFIG.PCW_USE_FABRIC_INTERRUPT {1} CONFIG.PCW_IRQ_F2P_INTR {1} \
] $ps

# ---- engines ------------------------------------------------------------------------------
set conv [create_bd_cell -type ip -vlnv gracecodec:hls:conv_engine:1.0 conv_engine_0]
set gs [create_bd_cell -type ip -vlnv gracecodec:hls:gridsample_engine:1.0 gridsample_engine_0]

# Control: GP0 -> interconnect -> both engines' s_axi_control (and the interrupt controller).
foreach slave [list conv_engine_0/s_axi_control gridsample_engine_0/s_axi_control] {
    apply_bd_automation -rule xilinx.com:bd_rule:axi4 -config [list \
        Master /processing_system7_0/M_AXI_GP0 Clk_master {Auto} Clk_slave {Auto} Clk_xbar {Auto} \
        intc_ip {New AXI Interconnect}] [get_bd_intf_pins $slave]
}

# Data: conv gmem0 (input, even channels) + gridsample gmem3 (occlusion) -> HP0, conv
# gmem1 (weights, params before the tile loop; the input's odd channels through port x1
# during it) + gridsample gmem1 (grid) -> HP1, conv gmem2 (residual, output) -> HP2,
# gridsample gmem0 (planes) + gmem2 (output) -> HP3. So the conv engine streams on three
# HP ports at once (two input reads, the residual read and the output write), within the
# DDR's ~1.6 GB/s sustained (decoder_fpga/perf.py Assumptions.ddr_bytes_per_cycle). (The
# engines run one call at a time, so two masters on one HP port do not compete.)
set data_map [list \
    conv_engine_0/m_axi_gmem0 S_AXI_HP0 \
    gridsample_engine_0/m_axi_gmem3 S_AXI_HP0 \
    conv_engine_0/m_axi_gmem1 S_AXI_HP1 \
    gridsample_engine_0/m_axi_gmem1 S_AXI_HP1 \
    conv_engine_0/m_axi_gmem2 S_AXI_HP2 \
    gridsample_engine_0/m_axi_gmem0 S_AXI_HP3 \
    gridsample_engine_0/m_axi_gmem2 S_AXI_HP3]
foreach {master hp} $data_map {
    apply_bd_automation -rule xilinx.com:bd_rule:axi4 -config [list \
        Master /$master Slave /processing_system7_0/$hp Clk_master {Auto} Clk_slave {Auto} \
        Clk_xbar {Auto} intc_ip {New AXI Interconnect}] [get_bd_intf_pins processing_system7_0/$hp]
}

# ---- interrupts ---------------------------------------------------------------------------
set concat [create_bd_cell -type ip -vlnv xilinx.com:ip:xlconcat:2.1 irq_concat]
set_property CONFIG.NUM_PORTS {2} $concat
connect_bd_net [get_bd_pins conv_engine_0/interrupt] [get_bd_pins irq_concat/In0]
connect_bd_net [get_bd_pins gridsample_engine_0/interrupt] [get_bd_pins irq_concat/In1]
set intc [create_bd_cell -type ip -vlnv xilinx.com:ip:axi_intc:4.1 axi_intc_0]
set_property CONFIG.C_IRQ_CONNECTION {1} $intc
connect_bd_net [get_bd_pins irq_concat/dout] [get_bd_pins axi_intc_0/intr]
apply_bd_automation -rule xilinx.com:bd_rule:axi4 -config [list \
    Master /processing_system7_0/M_AXI_GP0 Clk_master {Auto} Clk_slave {Auto} Clk_xbar {Auto} \
    intc_ip {Auto}] [get_bd_intf_pins axi_intc_0/s_axi]
connect_bd_net [get_bd_pins axi_intc_0/irq] [get_bd_pins processing_system7_0/IRQ_F2P]

# ---- addresses, wrapper, bitstream ---------------------------------------------------------
assign_bd_address
validate_bd_design
save_bd_design

set bd_file [get_files grace.bd]
make_wrapper -files $bd_file -top
add_files -norecurse [file join $proj_dir grace_overlay.gen sources_1 bd grace hdl grace_wrapper.v]
set_property top grace_wrapper [current_fileset]

launch_runs impl_1 -to_step write_bitstream -jobs 4
wait_on_run impl_1
if {[get_property PROGRESS [get_runs impl_1]] != "100%"} {
    error "implementation failed: see $proj_dir"
}
report_utilization -file [file join $here utilization.rpt]
report_timing_summary -file [file join $here timing.rpt]

file mkdir $out_dir
file copy -force [file join $proj_dir grace_overlay.runs impl_1 grace_wrapper.bit] [file join $out_dir grace.bit]
file copy -force [file join $proj_dir grace_overlay.gen sources_1 bd grace hw_handoff grace.hwh] [file join $out_dir grace.hwh]
puts "overlay written to $out_dir (grace.bit, grace.hwh)"
