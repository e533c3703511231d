# Vivado block design for one edgemtl HLS C++ task top (mixture-of-experts models) on the ZCU104: Zynq
# UltraScale+ PS (board preset), the exported HLS IP, SmartConnect interconnects, address map, bitstream, and
# the .bit/.hwh pair PYNQ loads; hls_cpp_driver.py drives the result.
#
# Usage (Vivado 2023.2 or later, with the ZCU104 board files installed):
#   vivado -mode batch -source hls_cpp_design.tcl -tclargs IP_REPO TOP \
#          [name=edgemtl] [proj_dir=./zcu104_prj] [out_dir=./overlay] [clock_mhz=200] [jobs=4] [build=1] \
#          [part=xczu7ev-ffvc1156-2-e] [bd=design_1]
#
#   IP_REPO    the exported IP: tasks/<task>/hls/<top>_prj/solution1/impl/ip (vitis_hls -f build_prj.tcl there)
#   TOP        the HLS top function, edgemtl_<task> (io.json's "top")
#   build=0    stop after writing the block design and its wrapper (no synthesis)
#
# Why no DMA (unlike block_design.tcl for hls4ml): the HLS C++ top reads its input and writes its output itself
# through two AXI4 masters (m_axi_gmem0: input, m_axi_gmem1: output) at addresses the PS writes into its AXI4-Lite
# control registers (s_axi_control), next to ap_start / ap_done. So the PS's HPM0 master reaches the control port,
# and both data masters reach DDR through one SmartConnect into the PS's S_AXI_HP0_FPD slave. The IP cell is
# <TOP>_0: PYNQ exposes it under that name and hls_cpp_driver.py finds it there.

proc fail {msg} {
    puts "ERROR: \[edgemtl zcu104\] $msg"
    exit 1
}

# ---- arguments ---------------------------------------------------------------------------------------
if {[llength $argv] < 2} {
    fail "usage: vivado -mode batch -source hls_cpp_design.tcl -tclargs IP_REPO TOP \[key=value ...\]"
}
set ip_repo [file normalize [lindex $argv 0]]
set top [lindex $argv 1]
if {![regexp {^[A-Za-z_][A-Za-z0-9_]*$} $top]} { fail "TOP '$top' is not a C++ identifier (io.json's \"top\", e.g. edgemtl_<task>)" }
array set opt {name edgemtl proj_dir ./zcu104_prj out_dir ./overlay clock_mhz 200 jobs 4 build 1 part xczu7ev-ffvc1156-2-e bd design_1}
foreach arg [lrange $argv 2 end] {
    set eq [string first "=" $arg]
    if {$eq < 1} { fail "option '$arg' is not key=value" }
    set key [string range $arg 0 [expr {$eq - 1}]]
    if {![info exists opt($key)]} { fail "unknown option '$key'; valid: [lsort [array names opt]]" }
    set opt($key) [string range $arg [expr {$eq + 1}] end]
}
if {![string is double -strict $opt(clock_mhz)] || $opt(clock_mhz) <= 0} { fail "clock_mhz must be a positive number, got '$opt(clock_mhz)'" }
if {![string is integer -strict $opt(jobs)] || $opt(jobs) < 1} { fail "jobs must be a positive integer, got '$opt(jobs)'" }
if {$opt(build) ni {0 1}} { fail "build must be 0 or 1, got '$opt(build)'" }
if {![file isdirectory $ip_repo]} {
    fail "IP repository $ip_repo does not exist (run vitis_hls -f build_prj.tcl in tasks/<task>/hls first: it exports the IP)"
}

# ---- project -----------------------------------------------------------------------------------------
create_project $opt(name) $opt(proj_dir) -part $opt(part) -force
set board [lindex [lsort [get_board_parts -quiet *:zcu104:*]] end]
if {$board eq ""} { fail "no ZCU104 board part found: install the board files (Vivado > Tools > Vivado Store > Boards)" }
set_property board_part $board [current_project]
set_property ip_repo_paths [list $ip_repo] [current_project]
update_ip_catalog -rebuild
set hls_vlnv [lindex [get_ipdefs -filter "NAME == $top"] 0]
if {$hls_vlnv eq ""} {
    fail "no IP named $top in $ip_repo: was it exported from edgemtl's tasks/<task>/hls project (its build_prj.tcl)?"
}
create_bd_design $opt(bd)

# ---- processing system, clock, reset -----------------------------------------------------------------
source [file join [file dirname [file normalize [info script]]] ps_system.tcl]

# ---- the HLS IP and its three AXI interfaces --------------------------------------------------------
set cell ${top}_0
set hls [create_bd_cell -type ip -vlnv $hls_vlnv $cell]
set missing {}
foreach intf {s_axi_control m_axi_gmem0 m_axi_gmem1} {
    if {[get_bd_intf_pins -quiet $cell/$intf] eq ""} { lappend missing $intf }
}
if {[llength $missing] > 0} {
    fail "$top lacks the interface(s) [join $missing {, }] (an edgemtl HLS C++ top has s_axi_control, m_axi_gmem0 for\
          the input and m_axi_gmem1 for the output): was it exported from edgemtl's tasks/<task>/hls project?"
}
connect_bd_net $clk [get_bd_pins $cell/ap_clk]
connect_bd_net $aresetn [get_bd_pins $cell/ap_rst_n]

# ---- interconnect: PS HPM0 -> control registers; input and output masters -> PS HP0 (DDR) -------------
set ctrl [create_bd_cell -type ip -vlnv xilinx.com:ip:smartconnect smc_ctrl]
set_property -dict [list CONFIG.NUM_SI {1} CONFIG.NUM_MI {1}] $ctrl
set data [create_bd_cell -type ip -vlnv xilinx.com:ip:smartconnect smc_data]
set_property -dict [list CONFIG.NUM_SI {2} CONFIG.NUM_MI {1}] $data
connect_bd_net $clk [get_bd_pins smc_ctrl/aclk] [get_bd_pins smc_data/aclk]
connect_bd_net [get_bd_pins rst_pl0/interconnect_aresetn] [get_bd_pins smc_ctrl/aresetn] [get_bd_pins smc_data/aresetn]
connect_bd_intf_net [get_bd_intf_pins zynq_ultra_ps_e_0/M_AXI_HPM0_FPD] [get_bd_intf_pins smc_ctrl/S00_AXI]
connect_bd_intf_net [get_bd_intf_pins smc_ctrl/M00_AXI] [get_bd_intf_pins $cell/s_axi_control]
connect_bd_intf_net [get_bd_intf_pins $cell/m_axi_gmem0] [get_bd_intf_pins smc_data/S00_AXI]
connect_bd_intf_net [get_bd_intf_pins $cell/m_axi_gmem1] [get_bd_intf_pins smc_data/S01_AXI]
connect_bd_intf_net [get_bd_intf_pins smc_data/M00_AXI] [get_bd_intf_pins zynq_ultra_ps_e_0/S_AXI_HP0_FPD]

# the ap_done interrupt, where the IP has one (the driver polls ap_done either way)
set irq [get_bd_pins -quiet $cell/interrupt]
if {$irq ne ""} {
    connect_bd_net $irq [get_bd_pins zynq_ultra_ps_e_0/pl_ps_irq0]
} else {
    puts "INFO: \[edgemtl zcu104\] $top has no interrupt pin: pl_ps_irq0 left unconnected (the driver polls ap_done)"
}

source [file join [file dirname [file normalize [info script]]] finish_design.tcl]
