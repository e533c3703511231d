"""hls4ml backend: one task's QONNX graph -> an hls4ml Vitis `io_stream` project, checked by C simulation.

`build_hls_project` cleans the QONNX graph the way hls4ml's QONNX frontend documents (qonnx `cleanup_model`,
`ConvertToChannelsLastAndClean`, `GemmToMatMul`, `cleanup_model` again), converts it with the Vitis backend
and `io_stream`, writes the project and compiles its bit-accurate C++ emulation (g++, ~12 s).

Precision scheme. Every type hls4ml can derive is left `auto`: hls4ml turns each power-of-two `Quant` node
into the result type of the layer before it (`ufixed<8,1,RND_CONV,SAT>` for an unsigned 8-bit quantizer of
scale 2^-7, `RND_CONV` = brevitas' round-half-even, `SAT`/`SAT_SYM` = its clamp) and folds the weight
quantizers into the weight types; its `infer_precision_types` pass then sizes each conv / dense / add /
concat accumulator exactly (input bits + weight bits + log2(fan-in) and the fractional bits of both), so no
accumulator can overflow or round. What is left over - float biases, pooling results, the model-wide
fallback - gets `precision` (default `fixed<32,16>`, hls4ml's own `fixed<16,6>` overflows and truncates).
The graph input gets the input quantizer's own type, so the float -> fixed conversion in the C++ wrapper
rounds exactly as the quantizer does (a wide input type would first truncate and then round again).
Only power-of-two scales and quantized biases are exact in hls4ml: a float-scale quantizer (e.g.
`Int8ActPerTensorFloat`) can leave an output off by a constant factor, and a float bias is rounded to
`precision` (16 fractional bits), which flips an output near a rounding tie by 1 LSB. edgemtl's quantizer
makes neither (fixed-point quantizers, `Int32Bias`), so `csim_check` demands equality: 0 LSB on every value
of every sample (measured on the tiny mtl-cnn, 32 real samples per task path: 0 LSB on all five paths at
w4a4 and on scene, depth, segmentation at w8a8); a mismatch fails naming the likely cause.

Layout: the HLS top function takes the input channels-last (NHWC, a pixel stream) and gives 4-D outputs
channels-last too (the trailing Transposes back to NCHW are dropped: in io_stream each would buffer a whole
frame); `csim_check` and `build_testbench` transpose to and from the NCHW layout of the quantized model.

The graph preparation that hls4ml 1.3.0 needs beyond the documented cleaning: hls4ml_graph.py; the ops it cannot map
and the one-line refusals: hls4ml_ops.py; the C simulation and the g++ testbench: hls4ml_csim.py (their public names
are importable from here too).
"""

from __future__ import annotations

import io
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgemtl.backends import hls4ml_ext
from edgemtl.backends.hls4ml_csim import (PROJECT_NAME, build_testbench, constant_factor, csim_check,
                                          csim_provenance, hls_predict, write_tb_data)
from edgemtl.backends.hls4ml_graph import (_clean, _float_biases, _graph_inputs, _non_power_of_two_quants,
                                           _one_line, _output_shapes, _parser_fixes, _quant_grid, _quant_type, _quiet,
                                           _set_input_precision, _shape)
from edgemtl.backends.hls4ml_ops import (_REWRITTEN, HANDLER_LIMITS, _import_hls4ml, _precheck_ops, _supported_ops,
                                         _unmappable, float_graph_refusal)
from edgemtl.errors import EdgemtlError

# What flows/ and the tests import from this module (the last three for flows/operators.py's table).
__all__ = ["BACKEND", "DEFAULT_PRECISION", "HANDLER_LIMITS", "IO_TYPE", "PROJECT_NAME", "HlsProject",
           "build_hls_project", "build_testbench", "constant_factor", "csim_check", "csim_provenance",
           "float_graph_refusal", "hls_predict", "precision_table", "write_tb_data", "_REWRITTEN", "_supported_ops"]

DEFAULT_PRECISION = "fixed<32,16>"
BACKEND = "Vitis"
IO_TYPE = "io_stream"
_PRECISION = re.compile(r"^(ap_)?u?(fixed<\d+,-?\d+(,\w+){0,3}>|int<\d+>)$")


@dataclass
class HlsProject:
    """A written and compiled hls4ml project for one task path."""

    task: str
    hls_model: Any  # hls4ml.model.ModelGraph, compiled (predict() works)
    out_dir: Path
    precision_table: dict[str, dict[str, str]]  # layer -> {type name: precision}, as hls4ml emitted them
    seconds: float  # clean + convert + write + compile
    part: str
    clock_period_ns: float
    hls4ml_version: str
    clean_onnx: Path  # the cleaned channels-last QONNX graph hls4ml converted
    input_shape: tuple[int, ...]  # one sample, the quantized model's layout (NCHW)
    input_channels_last: bool  # the HLS top function takes NHWC
    outputs: list[str]  # the QONNX graph's output names, in the HLS top function's order
    output_shapes: dict[str, tuple[int, ...]]  # one sample, the quantized model's layout
    output_channels_last: dict[str, bool]  # the HLS output is NHWC
    non_power_of_two_quants: list[str] = field(default_factory=list)  # "node (scale s)" of float-scale Quants
    float_biases: list[str] = field(default_factory=list)  # Conv / Gemm nodes with an unquantized, nonzero bias
    default_precision: str = DEFAULT_PRECISION  # what the float biases and other left-over types got
    log: str = ""  # hls4ml's console output
    last_csim: dict[str, Any] | None = None  # inputs / HLS outputs of the last csim_check, for the testbench

    def summary(self) -> dict[str, Any]:
        return {"task": self.task, "out_dir": str(self.out_dir), "part": self.part,
                "clock_period_ns": self.clock_period_ns, "backend": BACKEND, "io_type": IO_TYPE,
                "hls4ml": self.hls4ml_version, "seconds": round(self.seconds, 2), "outputs": list(self.outputs),
                "precision": self.precision_table, "non_power_of_two_quants": list(self.non_power_of_two_quants)}


def build_hls_project(qonnx_path: Path, out_dir: Path, task: str, part: str, clock_period_ns: float,
                      precision: str | None = None) -> HlsProject:
    """Clean, configure, convert (Vitis, io_stream), write and compile one task's QONNX graph.

    An op hls4ml 1.3.0 cannot map is one EdgemtlError line naming the op type, the node and the task.
    """
    hls4ml = _import_hls4ml(task)
    hls4ml_ext.register(BACKEND)
    start = time.perf_counter()
    qonnx_path, out_dir = Path(qonnx_path), Path(out_dir).resolve()
    if not qonnx_path.is_file():
        raise EdgemtlError(f"task {task!r}: QONNX graph {qonnx_path} does not exist")
    default_precision = (precision or DEFAULT_PRECISION).replace(" ", "")
    if not _PRECISION.match(default_precision):
        raise EdgemtlError(f"task {task!r}: precision {precision!r} is not an hls4ml fixed-point type; "
                           "write e.g. fixed<32,16> (total bits, integer bits)")
    out_dir.mkdir(parents=True, exist_ok=True)
    log = io.StringIO()

    original = onnx.load(str(qonnx_path))
    model, input_channels_last, output_channels_last = _clean(original, task, log)
    table_types = hls4ml_ext.elementwise_tables(model, _quant_grid, _quant_type)
    clean_path = out_dir / f"{qonnx_path.stem}_hls4ml_clean.onnx"
    onnx.save(model.model, str(clean_path))
    _precheck_ops(model.model, task, hls4ml.__version__)
    clean_outputs = [o.name for o in model.graph.output]
    original_outputs = [o.name for o in original.graph.output]
    rename = dict(zip(clean_outputs, original_outputs))

    try:
        with _quiet(log), _parser_fixes():
            config = hls4ml.utils.config_from_onnx_model(model.model, granularity="name", backend=BACKEND,
                                                         default_precision=default_precision)
            _set_input_precision(config, model)
            for name, types in hls4ml_ext.exact_precisions(model, _quant_type, table_types).items():
                config.setdefault("LayerName", {}).setdefault(name, {}).setdefault("Precision", {}).update(types)
            hls_model = hls4ml.converters.convert_from_onnx_model(
                model.model, output_dir=str(out_dir), project_name=PROJECT_NAME, backend=BACKEND,
                io_type=IO_TYPE, part=part, clock_period=clock_period_ns, hls_config=config)
    except EdgemtlError:
        raise
    except Exception as exc:  # hls4ml raises bare Exceptions / RuntimeErrors / KeyErrors
        raise _unmappable(exc, model.model, task, hls4ml.__version__) from None

    try:
        with _quiet(log):
            hls_model.compile()  # writes the project, then builds the C++ emulation library
    except Exception as exc:
        detail = _one_line(exc)
        raise EdgemtlError(f"task {task!r}: compiling the hls4ml C simulation in {out_dir} failed: {detail}; "
                           f"see {out_dir}/build_lib.sh and its g++ output") from None

    # hls4ml orders its outputs as their producer nodes appear in the graph (not as graph.output does)
    produced = [node.output[0] for node in model.graph.node if node.output and node.output[0] in rename]
    hls_outputs = [rename[name] for name in produced]
    sizes = [int(np.prod(v.shape)) for v in hls_model.get_output_variables()]
    orig_shapes = _output_shapes(original)
    if len(hls_outputs) != len(sizes) or any(int(np.prod(orig_shapes[n])) != s for n, s in zip(hls_outputs, sizes)):
        raise EdgemtlError(f"task {task!r}: cannot match hls4ml's outputs {hls_model.outputs} (sizes {sizes}) "
                           f"to the graph outputs {original_outputs}")
    input_shape = tuple(_shape(_graph_inputs(original)[0])[1:])
    seconds = time.perf_counter() - start
    return HlsProject(
        task=task, hls_model=hls_model, out_dir=out_dir, precision_table=precision_table(hls_model), seconds=seconds,
        part=part, clock_period_ns=float(clock_period_ns), hls4ml_version=hls4ml.__version__,
        clean_onnx=clean_path, input_shape=input_shape, input_channels_last=input_channels_last,
        outputs=hls_outputs, output_shapes={name: orig_shapes[name] for name in hls_outputs},
        output_channels_last={rename.get(k, k): v for k, v in output_channels_last.items()},
        non_power_of_two_quants=_non_power_of_two_quants(model.model), float_biases=_float_biases(original),
        default_precision=default_precision, log=log.getvalue())


def precision_table(hls_model: Any) -> dict[str, dict[str, str]]:
    """Layer name -> {type name (result_t, accum_t, weight_t ...): precision} as hls4ml will emit them."""
    table = {}
    for layer in hls_model.get_layers():
        table[layer.name] = {name: str(t.precision) for name, t in sorted(layer.types.items())}
    return table
