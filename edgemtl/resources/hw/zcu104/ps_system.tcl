# The processing system every edgemtl ZCU104 block design starts from (sourced by block_design.tcl and
# hls_cpp_design.tcl after create_bd_design, with their `opt` array): the Zynq UltraScale+ PS with the ZCU104 board
# preset, M_AXI_HPM0_FPD (GP0: control), S_AXI_HP0_FPD (GP2: data into DDR), pl_ps_irq0, the PL clock at
# opt(clock_mhz) and its reset. Leaves `clk` (pl_clk0) and `aresetn` (peripheral reset) set for the caller.
set ps [create_bd_cell -type ip -vlnv xilinx.com:ip:zynq_ultra_ps_e zynq_ultra_ps_e_0]
apply_bd_automation -rule xilinx.com:bd_rule:zynq_ultra_ps_e -config {apply_board_preset "1"} $ps
set_property -dict [list \
    CONFIG.PSU__USE__M_AXI_GP0 {1} \
    CONFIG.PSU__USE__M_AXI_GP1 {0} \
    CONFIG.PSU__USE__M_AXI_GP2 {0} \
    CONFIG.PSU__USE__S_AXI_GP2 {1} \
    CONFIG.PSU__USE__IRQ0 {1} \
    CONFIG.PSU__FPGA_PL0_ENABLE {1} \
    CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ $opt(clock_mhz) \
] $ps
set clk [get_bd_pins zynq_ultra_ps_e_0/pl_clk0]
set rst [create_bd_cell -type ip -vlnv xilinx.com:ip:proc_sys_reset rst_pl0]
connect_bd_net $clk [get_bd_pins rst_pl0/slowest_sync_clk]
connect_bd_net [get_bd_pins zynq_ultra_ps_e_0/pl_resetn0] [get_bd_pins rst_pl0/ext_reset_in]
set aresetn [get_bd_pins rst_pl0/peripheral_aresetn]
connect_bd_net $clk [get_bd_pins zynq_ultra_ps_e_0/maxihpm0_fpd_aclk] [get_bd_pins zynq_ultra_ps_e_0/saxihp0_fpd_aclk]
