"""Our Vitis HLS C++ backend (the ZCU104's MoE path): IntGraph -> HLS project, C-simulated bit-exactly with g++."""
