"""Models that arrive as ONNX: fix the input's free dimensions from the spec, fold constants, convert the graph to a
torch.fx module with onnx2torch, and prove the module computes what ONNX Runtime computes before any pass runs.

Every later pass (analysis, PAGCP, QAT, export, every target flow) then sees an ordinary contract model whose
`forward(x)` returns `{task: tensor}`; the check against ONNX Runtime is recorded, and a mismatch stops the load.
onnx2torch is installed with `--no-deps` (it declares torchvision and would replace the pinned torch), so it is
imported here behind a stand-in for the two torchvision functions its NonMaxSuppression / RoiAlign converters use.
"""

from __future__ import annotations

import sys
import tempfile
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from edgemtl.errors import EdgemtlError, first_line
from edgemtl.manifest import prov
from edgemtl.model.contract import example_input
from edgemtl.model.onnx_static import bind_constant_arguments
from edgemtl.model.spec import ModelSpec

ONNX2TORCH_INSTALL = "pip install --no-deps onnx2torch==1.5.15 (`make setup` does it)"
CONVERTER_OPSET = 17  # the newest ai.onnx opset onnx2torch 1.5.15 converts throughout (Reshape-19, Pad-19 ... are not)
CHECK_SAMPLES = 2
CHECK_RTOL = 1e-3  # of the output's largest magnitude: float32 reassociation in converted convs stays far below it


class OnnxTaskModel(nn.Module):
    """The converted graph as a contract model: `{task: output}` from the graph's positional outputs."""

    def __init__(self, graph: nn.Module, output_index: dict[str, int]) -> None:
        super().__init__()
        self.graph = graph
        self.output_index = dict(output_index)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with warnings.catch_warnings():  # onnx2torch's Slice indexes with a list (a torch deprecation, not the user's)
            warnings.simplefilter("ignore", UserWarning)
            outputs = self.graph(x)
        outputs = tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)
        return {task: outputs[index] for task, index in self.output_index.items()}


def load_onnx_model(path: Path, spec: ModelSpec) -> tuple[OnnxTaskModel, dict[str, Any]]:
    """The converted model and what the import did (fixed dims, folding, batch handling, error vs ONNX Runtime)."""
    proto = read_onnx(path)
    image_input = image_input_of(proto, path)
    fixed = _fix_input_dims(image_input, spec, path)
    outputs = [o.name for o in proto.graph.output]
    output_index = _map_outputs(outputs, spec, path)
    if len({*output_index.values()}) != len(output_index):
        raise EdgemtlError(f"two tasks of the spec read the same ONNX output of {path}: give each its own onnx_output")
    reference = _onnxruntime_outputs(proto, spec, outputs)  # the graph as given, sample by sample
    batch_fixed = fixed["batch"] == 1
    if batch_fixed:  # fold with a free batch, so shapes read from the input stay symbolic
        batch_dim = image_input.type.tensor_type.shape.dim[0]
        batch_dim.Clear()
        batch_dim.dim_param = "N"
    folded = _fold_constants(proto, path)
    graph = _convert(_at_converter_opset(folded, path), path)
    bound = bind_constant_arguments(graph, batch_first=batch_fixed)
    model = OnnxTaskModel(graph, output_index).eval()
    errors = _errors_vs_reference(model, spec, reference, output_index)
    if errors is None:
        raise EdgemtlError(f"the PyTorch module onnx2torch made from {path} does not run a batch of {CHECK_SAMPLES} "
                           "with ONNX Runtime's output shapes (a reshape bakes in the batch): export the model with a "
                           "dynamic batch axis (torch.onnx.export(..., dynamic_axes={'input': {0: 'N'}}))")
    worst, relative = _worst(errors)
    if relative > CHECK_RTOL:
        raise EdgemtlError(
            f"the PyTorch module onnx2torch made from {path} disagrees with ONNX Runtime on task {worst!r}: max abs "
            f"error {errors[worst]['max_abs']:.3g} ({relative:.2%} of the output's range); please report the model's op list")
    details = {
        "converter": "onnx2torch " + _onnx2torch_version(),
        "opset": {(o.domain or "ai.onnx"): o.version for o in proto.opset_import},
        "converted_at_opset": min(_onnx_opset(proto), CONVERTER_OPSET),
        "input": image_input.name,
        "fixed_dims": fixed["fixed"],
        "overridden_dims": fixed["overridden"],
        "batch": "fixed at 1 in the ONNX graph: freed, constant reshapes keep the batch" if batch_fixed else "dynamic",
        "outputs": {task: outputs[index] for task, index in output_index.items()},
        "ignored_outputs": [name for k, name in enumerate(outputs) if k not in output_index.values()],
        "constant_folding": "onnxruntime ORT_ENABLE_BASIC",
        "constant_arguments_bound": bound,
        "check_vs_onnxruntime": {"provenance": prov("measured", source="converted PyTorch module vs ONNX Runtime",
                                                                 detail="this host"),
                                 "samples": CHECK_SAMPLES, "input": "seeded standard normal of the spec's shape",
                                 "max_abs_error": {t: e["max_abs"] for t, e in errors.items()}, "rtol": CHECK_RTOL},
    }
    return model, details


def read_onnx(path: Path) -> onnx.ModelProto:
    """The model, weights no longer listed as graph inputs; one line when the file is not ONNX."""
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError and friends: the bytes are not an ONNX model
        raise EdgemtlError(f"{path} is not a readable ONNX model: {type(exc).__name__}") from None
    if not proto.graph.node:
        raise EdgemtlError(f"{path} is not an ONNX model with a graph (no nodes found)")
    initializers = {t.name for t in proto.graph.initializer}
    weights_as_inputs = [i for i in proto.graph.input if i.name in initializers]  # IR < 4 exporters list weights as inputs
    for value in weights_as_inputs:
        proto.graph.input.remove(value)
    return proto


def image_input_of(proto: onnx.ModelProto, path: Path) -> onnx.ValueInfoProto:
    """The one (N, C, H, W) input edgemtl models take."""
    inputs = list(proto.graph.input)
    if len(inputs) != 1:
        raise EdgemtlError(f"{path} takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); edgemtl models "
                           "take one image tensor (N, C, H, W)")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise EdgemtlError(f"{path}'s input {inputs[0].name!r} has rank {len(dims)}; edgemtl models take (N, C, H, W)")
    return inputs[0]


def _fix_input_dims(image_input: onnx.ValueInfoProto, spec: ModelSpec, path: Path) -> dict[str, Any]:
    """Set C/H/W to the spec's. A free dim takes the spec's value; a fixed one that differs is overridden and
    recorded (exporters often write a dummy size into fully convolutional graphs); a graph that cannot run at the
    spec's size then fails in ONNX Runtime, before anything else, as one line."""
    dims = image_input.type.tensor_type.shape.dim
    fixed, overridden = [], []
    for axis, (dim, want) in enumerate(zip(list(dims)[1:], spec.input.shape), start=1):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            if dim.dim_value == want:
                continue
            overridden.append({"axis": axis, "was": dim.dim_value, "now": want})
        else:
            fixed.append({"axis": axis, "was": dim.dim_param or "unnamed", "now": want})
        dim.Clear()
        dim.dim_value = want
    batch = dims[0].dim_value if dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None
    if batch not in (None, 1):  # a dummy batch: run it at 1, like any fixed batch
        overridden.append({"axis": 0, "was": batch, "now": 1})
        dims[0].Clear()
        dims[0].dim_value = batch = 1
    return {"fixed": fixed, "overridden": overridden, "batch": batch}


def _map_outputs(outputs: list[str], spec: ModelSpec, path: Path) -> dict[str, int]:
    index = {}
    for task in spec.tasks:
        name = task.onnx_output or task.name
        if name not in outputs:
            raise EdgemtlError(f"the spec's task {task.name!r} reads ONNX output {name!r}, but {path} outputs "
                               f"{', '.join(outputs)}: name the task like its output or set onnx_output: NAME")
        index[task.name] = outputs.index(name)
    return index


def _fold_constants(proto: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """Constant / Identity-fed weights folded into initializers (onnx2torch looks weights up as initializers)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3  # unused-initializer notes of old exporters are not the user's business
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(Path(tmp) / "folded.onnx")
        try:
            ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ONNX Runtime rejects the graph itself: nothing downstream could run it either
            raise EdgemtlError(f"ONNX Runtime cannot load {path}: {first_line(exc)}") from None
        return onnx.load(options.optimized_model_filepath)


def _onnx_opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _at_converter_opset(proto: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """Newer graphs taken down to the opset onnx2torch knows (checked against ONNX Runtime on the original after)."""
    if _onnx_opset(proto) <= CONVERTER_OPSET:
        return proto
    from onnx import version_converter

    try:
        return version_converter.convert_version(proto, CONVERTER_OPSET)
    except Exception as exc:  # an op without an adapter to the older opset
        raise EdgemtlError(f"{path} uses opset {_onnx_opset(proto)} and onnx's version converter cannot take it to "
                           f"opset {CONVERTER_OPSET} for onnx2torch ({first_line(exc)}): export it with "
                           f"opset_version={CONVERTER_OPSET}") from None


def _import_onnx2torch() -> Any:
    """onnx2torch, with a stand-in for torchvision when the real one does not load beside this torch."""
    try:
        import torchvision  # noqa: F401  (a working torchvision needs no stand-in)
    except Exception:
        def unavailable(*args: Any, **kwargs: Any) -> Any:
            raise EdgemtlError("this ONNX graph uses NonMaxSuppression or RoiAlign, which need torchvision; "
                               "export the model without its post-processing")

        stand_in = types.ModuleType("torchvision")
        stand_in.ops = types.ModuleType("torchvision.ops")
        stand_in.ops.nms = stand_in.ops.roi_align = stand_in.ops.box_convert = unavailable
        saved = {name: sys.modules.get(name) for name in ("torchvision", "torchvision.ops")}
        sys.modules.update({"torchvision": stand_in, "torchvision.ops": stand_in.ops})
        try:
            return _import_converter()
        finally:  # only onnx2torch holds the stand-in; nothing else sees a fake torchvision
            for name, module in saved.items():
                if module is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = module
    return _import_converter()


def _import_converter() -> Any:
    try:
        import onnx2torch
    except ImportError:
        raise EdgemtlError(f"reading ONNX models needs onnx2torch: {ONNX2TORCH_INSTALL}") from None
    return onnx2torch


def _onnx2torch_version() -> str:
    from importlib.metadata import version

    return version("onnx2torch")


def _convert(proto: onnx.ModelProto, path: Path) -> nn.Module:
    onnx2torch = _import_onnx2torch()
    try:
        return onnx2torch.convert(proto)
    except NotImplementedError as exc:  # "Converter is not implemented (OperationDescription(... operation_type='X' ...))"
        raise EdgemtlError(f"{path} uses an op onnx2torch {_onnx2torch_version()} cannot convert: "
                           f"{first_line(exc)}") from None
    except Exception as exc:  # any other converter failure is still about this graph, not about edgemtl
        raise EdgemtlError(f"onnx2torch could not convert {path}: {type(exc).__name__}: {first_line(exc)}") from None


def _onnxruntime_outputs(proto: onnx.ModelProto, spec: ModelSpec, outputs: list[str]) -> list[list[np.ndarray]]:
    """ONNX Runtime's outputs, one sample at a time (a graph with a fixed batch of 1 runs too)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime rejects the graph itself (IR too new, bad node): nothing could run it
        raise EdgemtlError(f"ONNX Runtime {ort.__version__} cannot load the ONNX model with the spec's input "
                           f"{[1, *spec.input.shape]}: {first_line(exc)}") from None
    name = session.get_inputs()[0].name
    x = example_input(spec, batch=CHECK_SAMPLES).numpy()
    try:
        runs = [session.run(outputs, {name: x[i:i + 1]}) for i in range(CHECK_SAMPLES)]
    except Exception as exc:  # e.g. a flatten + dense layer sized for another input than the spec's
        raise EdgemtlError(f"ONNX Runtime cannot run the ONNX model on the spec's input {[1, *spec.input.shape]}: "
                           f"{first_line(exc)}") from None
    return [np.concatenate([run[k] for run in runs]) for k in range(len(outputs))]


def _errors_vs_reference(model: OnnxTaskModel, spec: ModelSpec, reference: list[np.ndarray],
                         output_index: dict[str, int]) -> dict[str, dict[str, float]] | None:
    """Per task: max abs error and its share of the output's largest magnitude; None when shapes differ."""
    try:
        with torch.no_grad():
            got = model(example_input(spec, batch=CHECK_SAMPLES))
    except Exception:  # a graph that fails at batch > 1 is handled by the caller like a shape mismatch
        return None
    errors = {}
    for task, index in output_index.items():
        want, have = reference[index], got[task].numpy()
        if want.shape != have.shape:
            return None
        max_abs = float(np.max(np.abs(want.astype(np.float64) - have))) if want.size else 0.0
        errors[task] = {"max_abs": max_abs, "relative": max_abs / max(1.0, float(np.max(np.abs(want))))}
    return errors


def _worst(errors: dict[str, dict[str, float]]) -> tuple[str, float]:
    task = max(errors, key=lambda t: errors[t]["relative"])
    return task, errors[task]["relative"]
