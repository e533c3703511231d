# Vivado block design for one hls4ml task model on the ZCU104: Zynq UltraScale+ PS (board preset), the
# exported HLS IP (`myproject`), one AXI DMA per AXI4-Stream port, SmartConnect interconnects, address
# map, bitstream, and the .bit/.hwh pair PYNQ loads.
#
# Usage (Vivado 2023.2 or later, with the ZCU104 board files installed):
#   vivado -mode batch -source block_design.tcl -tclargs IP_REPO N_OUTPUTS beats=PORT:N[,PORT:N...] \
#          [name=edgemtl] [proj_dir=./zcu104_prj] [out_dir=./overlay] [top=myproject] [clock_mhz=200] \
#          [jobs=4] [build=1]
#
#   IP_REPO    the folder with the exported IP: <hls4ml project>/myproject_prj/solution1/impl/ip
#   N_OUTPUTS  how many output streams the IP must have (one per task output); checked against the IP
#   beats=     beats per frame of each OUTPUT port (e.g. layer13_out:1024,layer15_out:1): the DMA's S2MM
#              channel only completes on TLAST, which hls4ml's streams lack, so an adapter raises TLAST
#              every N beats. `python3 driver.py tclargs io.json` prints this argument.
#   build=0    stop after writing the block design and its wrapper (no synthesis)
#
# Every stream is adapted (axis_adapters.v): the DMA side is the next power-of-two byte width of the HLS
# port (AXI DMA accepts 8..1024-bit streams), zero-padded / trimmed, and output streams get TLAST.
# DMA cells are named dma_<port> (e.g. dma_input_1, dma_layer13_out): PYNQ exposes them under those
# names and driver.py finds them by port name.

set kit_dir [file dirname [file normalize [info script]]]

proc fail {msg} {
    puts "ERROR: \[edgemtl zcu104\] $msg"
    exit 1
}

proc next_pow2 {n} {
    set p 1
    while {$p < $n} { set p [expr {$p * 2}] }
    return $p
}

# ---- arguments ---------------------------------------------------------------------------------------
if {[llength $argv] < 2} {
    fail "usage: vivado -mode batch -source block_design.tcl -tclargs IP_REPO N_OUTPUTS beats=PORT:N,... \[key=value ...\]"
}
set ip_repo [file normalize [lindex $argv 0]]
set n_outputs [lindex $argv 1]
if {![string is integer -strict $n_outputs] || $n_outputs < 1} { fail "N_OUTPUTS must be a positive integer, got '$n_outputs'" }
array set opt {name edgemtl proj_dir ./zcu104_prj out_dir ./overlay top myproject clock_mhz 200 jobs 4 build 1 beats "" part xczu7ev-ffvc1156-2-e bd design_1}
foreach arg [lrange $argv 2 end] {
    set eq [string first "=" $arg]
    if {$eq < 1} { fail "option '$arg' is not key=value" }
    set key [string range $arg 0 [expr {$eq - 1}]]
    if {![info exists opt($key)]} { fail "unknown option '$key'; valid: [lsort [array names opt]]" }
    set opt($key) [string range $arg [expr {$eq + 1}] end]
}
array set beats {}
foreach item [split $opt(beats) ","] {
    if {$item eq ""} { continue }
    set parts [split $item ":"]
    if {[llength $parts] != 2 || ![string is integer -strict [lindex $parts 1]] || [lindex $parts 1] < 1} {
        fail "beats entry '$item' is not PORT:N with N >= 1"
    }
    set beats([lindex $parts 0]) [lindex $parts 1]
}
if {![file isdirectory $ip_repo]} { fail "IP repository $ip_repo does not exist (run vitis_hls with export=1 first)" }

# ---- project -----------------------------------------------------------------------------------------
create_project $opt(name) $opt(proj_dir) -part $opt(part) -force
set board [lindex [lsort [get_board_parts -quiet *:zcu104:*]] end]
if {$board eq ""} { fail "no ZCU104 board part found: install the board files (Vivado > Tools > Vivado Store > Boards)" }
set_property board_part $board [current_project]
set_property ip_repo_paths [list $ip_repo] [current_project]
update_ip_catalog -rebuild
set hls_vlnv [lindex [get_ipdefs -filter "NAME == $opt(top)"] 0]
if {$hls_vlnv eq ""} { fail "no IP named $opt(top) in $ip_repo" }
add_files -norecurse [file join $kit_dir axis_adapters.v]
update_compile_order -fileset sources_1
create_bd_design $opt(bd)

# ---- processing system, clock, reset -----------------------------------------------------------------
source [file join [file dirname [file normalize [info script]]] ps_system.tcl]

# ---- the HLS IP --------------------------------------------------------------------------------------
set hls [create_bd_cell -type ip -vlnv $hls_vlnv $opt(top)_0]
connect_bd_net $clk [get_bd_pins $opt(top)_0/ap_clk]
connect_bd_net $aresetn [get_bd_pins $opt(top)_0/ap_rst_n]
# block-level handshake (ap_ctrl_chain / ap_ctrl_hs): held started, so the dataflow runs whenever data arrive
set one [create_bd_cell -type ip -vlnv xilinx.com:ip:xlconstant const_one]
set_property -dict [list CONFIG.CONST_VAL {1} CONFIG.CONST_WIDTH {1}] $one
foreach pin {ap_start ap_continue} {
    set p [get_bd_pins -quiet $opt(top)_0/$pin]
    if {$p ne ""} { connect_bd_net [get_bd_pins const_one/dout] $p }
}

set in_ports [get_bd_intf_pins -of_objects $hls -filter {MODE == Slave && VLNV =~ "*axis*"}]
set out_ports [get_bd_intf_pins -of_objects $hls -filter {MODE == Master && VLNV =~ "*axis*"}]
if {[llength $in_ports] < 1} { fail "$opt(top) has no AXI4-Stream input: was the hls4ml project built with io_stream?" }
if {[llength $out_ports] != $n_outputs} {
    fail "$opt(top) has [llength $out_ports] output stream(s) ([join $out_ports {, }]), N_OUTPUTS says $n_outputs"
}

# ---- one DMA (and adapter) per stream ----------------------------------------------------------------
set dmas {}
set irqs {}
foreach pin [concat $in_ports $out_ports] {
    set port [get_property NAME $pin]
    set is_input [expr {[lsearch -exact $in_ports $pin] >= 0}]
    set hls_bytes [get_property CONFIG.TDATA_NUM_BYTES $pin]
    set dma_bytes [next_pow2 $hls_bytes]
    if {$dma_bytes > 128} { fail "stream $port is $hls_bytes bytes wide; AXI DMA streams stop at 128 bytes (1024 bits)" }
    set bits [expr {$dma_bytes * 8}]
    set mm_bits [expr {$bits < 32 ? 32 : $bits}]
    set dma [create_bd_cell -type ip -vlnv xilinx.com:ip:axi_dma dma_$port]
    set common [list CONFIG.c_include_sg {0} CONFIG.c_sg_length_width {26} CONFIG.c_sg_include_stscntrl_strm {0}]
    if {$is_input} {
        set_property -dict [concat $common [list CONFIG.c_include_mm2s {1} CONFIG.c_include_s2mm {0} \
            CONFIG.c_m_axis_mm2s_tdata_width $bits CONFIG.c_m_axi_mm2s_data_width $mm_bits CONFIG.c_mm2s_burst_size {16}]] $dma
        set adapter [create_bd_cell -type module -reference axis_from_dma adapt_$port]
        set_property -dict [list CONFIG.IN_BYTES $dma_bytes CONFIG.OUT_BYTES $hls_bytes] $adapter
        connect_bd_intf_net [get_bd_intf_pins dma_$port/M_AXIS_MM2S] [get_bd_intf_pins adapt_$port/s_axis]
        connect_bd_intf_net [get_bd_intf_pins adapt_$port/m_axis] $pin
        connect_bd_net $clk [get_bd_pins dma_$port/m_axi_mm2s_aclk]
        lappend dmas [list $port dma_$port/M_AXI_MM2S]
        lappend irqs dma_$port/mm2s_introut
    } else {
        if {![info exists beats($port)]} { fail "no beats=$port:N given for output stream $port (see driver.py tclargs)" }
        set_property -dict [concat $common [list CONFIG.c_include_mm2s {0} CONFIG.c_include_s2mm {1} \
            CONFIG.c_s_axis_s2mm_tdata_width $bits CONFIG.c_m_axi_s2mm_data_width $mm_bits CONFIG.c_s2mm_burst_size {16}]] $dma
        set adapter [create_bd_cell -type module -reference axis_to_dma adapt_$port]
        set_property -dict [list CONFIG.IN_BYTES $hls_bytes CONFIG.OUT_BYTES $dma_bytes CONFIG.BEATS $beats($port)] $adapter
        connect_bd_intf_net $pin [get_bd_intf_pins adapt_$port/s_axis]
        connect_bd_intf_net [get_bd_intf_pins adapt_$port/m_axis] [get_bd_intf_pins dma_$port/S_AXIS_S2MM]
        connect_bd_net $clk [get_bd_pins dma_$port/m_axi_s2mm_aclk]
        lappend dmas [list $port dma_$port/M_AXI_S2MM]
        lappend irqs dma_$port/s2mm_introut
    }
    connect_bd_net $clk [get_bd_pins dma_$port/s_axi_lite_aclk] [get_bd_pins adapt_$port/aclk]
    connect_bd_net $aresetn [get_bd_pins dma_$port/axi_resetn] [get_bd_pins adapt_$port/aresetn]
    puts "INFO: \[edgemtl zcu104\] stream $port: HLS $hls_bytes B -> DMA $dma_bytes B[expr {$is_input ? {} : ", TLAST every $beats($port) beats"}]"
}

# ---- interconnect: PS -> DMA registers, DMA -> PS DDR ------------------------------------------------
set n_dma [llength $dmas]
set ctrl [create_bd_cell -type ip -vlnv xilinx.com:ip:smartconnect smc_ctrl]
set_property -dict [list CONFIG.NUM_SI {1} CONFIG.NUM_MI $n_dma] $ctrl
set data [create_bd_cell -type ip -vlnv xilinx.com:ip:smartconnect smc_data]
set_property -dict [list CONFIG.NUM_SI $n_dma CONFIG.NUM_MI {1}] $data
connect_bd_net $clk [get_bd_pins smc_ctrl/aclk] [get_bd_pins smc_data/aclk]
connect_bd_net [get_bd_pins rst_pl0/interconnect_aresetn] [get_bd_pins smc_ctrl/aresetn] [get_bd_pins smc_data/aresetn]
connect_bd_intf_net [get_bd_intf_pins zynq_ultra_ps_e_0/M_AXI_HPM0_FPD] [get_bd_intf_pins smc_ctrl/S00_AXI]
connect_bd_intf_net [get_bd_intf_pins smc_data/M00_AXI] [get_bd_intf_pins zynq_ultra_ps_e_0/S_AXI_HP0_FPD]
set i 0
foreach entry $dmas {
    lassign $entry port master
    connect_bd_intf_net [get_bd_intf_pins smc_ctrl/[format M%02d_AXI $i]] [get_bd_intf_pins dma_$port/S_AXI_LITE]
    connect_bd_intf_net [get_bd_intf_pins $master] [get_bd_intf_pins smc_data/[format S%02d_AXI $i]]
    incr i
}
if {[llength $irqs] > 8} { fail "[llength $irqs] DMA interrupts exceed the 8 lines of pl_ps_irq0" }
set concat [create_bd_cell -type ip -vlnv xilinx.com:ip:xlconcat irq_concat]
set_property CONFIG.NUM_PORTS [llength $irqs] $concat
set i 0
foreach irq $irqs {
    connect_bd_net [get_bd_pins $irq] [get_bd_pins irq_concat/In$i]
    incr i
}
connect_bd_net [get_bd_pins irq_concat/dout] [get_bd_pins zynq_ultra_ps_e_0/pl_ps_irq0]

source [file join $kit_dir finish_design.tcl]
