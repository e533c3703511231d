"""The parts of the `quantize_brevitas` pass, one job each: config, the quantized path, tracing and graph rewrites,
quantizer placement, calibration and QAT. Import the pass from `edgemtl.passes.quantize_brevitas`."""
