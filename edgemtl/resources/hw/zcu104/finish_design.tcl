# The end every edgemtl ZCU104 block design shares (sourced by block_design.tcl and hls_cpp_design.tcl, with their
# `opt` array and `fail` proc): address map, validation, HDL wrapper; with build=1 the bitstream, and the .bit / .hwh
# pair PYNQ loads copied to out_dir under one base name.

# ---- address map, checks, wrapper --------------------------------------------------------------------
assign_bd_address
validate_bd_design
save_bd_design
set wrapper [make_wrapper -files [get_files $opt(bd).bd] -top]
add_files -norecurse $wrapper
set_property top $opt(bd)_wrapper [current_fileset]
update_compile_order -fileset sources_1

if {!$opt(build)} {
    puts "INFO: \[edgemtl zcu104\] block design written to $opt(proj_dir) (build=0: no bitstream)"
    return
}

# ---- bitstream and the files PYNQ needs (same base name for .bit and .hwh) ----------------------------
launch_runs impl_1 -to_step write_bitstream -jobs $opt(jobs)
wait_on_run impl_1
if {[get_property PROGRESS [get_runs impl_1]] ne "100%"} { fail "implementation did not finish: see $opt(proj_dir)" }
file mkdir $opt(out_dir)
set bit [file join [get_property DIRECTORY [get_runs impl_1]] $opt(bd)_wrapper.bit]
set hwh [lindex [concat \
    [glob -nocomplain [file join $opt(proj_dir) $opt(name).gen sources_1 bd $opt(bd) hw_handoff $opt(bd).hwh]] \
    [glob -nocomplain [file join $opt(proj_dir) $opt(name).srcs sources_1 bd $opt(bd) hw_handoff $opt(bd).hwh]]] 0]
if {![file exists $bit] || $hwh eq ""} { fail "bitstream or hardware handoff missing under $opt(proj_dir)" }
file copy -force $bit [file join $opt(out_dir) $opt(name).bit]
file copy -force $hwh [file join $opt(out_dir) $opt(name).hwh]
puts "INFO: \[edgemtl zcu104\] wrote [file join $opt(out_dir) $opt(name).bit] and .hwh"
