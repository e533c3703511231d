"""The parts of the `quantize_int8_qdq` pass, one job each: config (one graph's and the pass's) and quantize (one
float ONNX graph to int8 QDQ with ONNX Runtime). Import the pass from `edgemtl.passes.quantize_int8_qdq`."""
