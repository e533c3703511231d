"""The parts of the `quantize_int8` pass, one job each: config, the float graph, units (what the int8 backends
take), calibration, and building the integer graph. Import the pass from `edgemtl.passes.quantize_int8`."""
