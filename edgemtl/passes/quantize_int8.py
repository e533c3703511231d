"""Post-training int8 quantization of one task path into the integer graph the MCU backends consume.

The float path is exported with the project's ONNX exporter (BatchNorm folded into the convolutions),
its batch fixed to 1 so that onnxruntime's basic graph optimizer constant-folds the shape arithmetic the
exporter leaves (Resize sizes computed from Shape), and then converted node by node into an
`edgemtl.model.intgraph.IntGraph`:

- weights: per-output-channel symmetric int8 (scale = max|w_c| / 127); biases int32 at s_in * s_w[c],
  folded into the requantisation as `add = bias_q * mul`;
- activations: symmetric, int8 where the float tensor can be negative, uint8 where it cannot (after a
  ReLU, and through max pools / resizes / pools / concatenations of such tensors). Each scale comes from
  calibration on real images: by default the clipping range that minimises the quantization MSE of the
  tensor's calibration values (percentile and max are the alternatives);
- requantisation: the real multiplier of every channel as mul_c / 2**shift, one shift per node, the
  largest shift for which the worst-case accumulator times mul plus add still fits in int32.

Concatenations need every input at the output's scale and dtype; an input whose producer requantizes
anyway (a conv, a bilinear resize ...) and feeds only the concatenation is produced at that scale
directly, any other gets a `requant` node.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from edgemtl.data import TaskData
from edgemtl.data.teacher import teach_missing
from edgemtl.errors import EdgemtlError
from edgemtl.evaluate import Predictor, evaluate
from edgemtl.manifest import prov
from edgemtl.model.contract import run_task
from edgemtl.model.intgraph import IntGraph, check_int32, dequantize, quantize_input, run_reference
from edgemtl.model.spec import ModelSpec
from edgemtl.passes.base import PassInput, PassResult
from edgemtl.passes.budget import agreement_loss, load_unseen, relative_loss, unseen_check
from edgemtl.passes.int8.build import Builder, choose_requant, mul_bits
from edgemtl.passes.int8.calibration import calibration_values, choose_scale, layer_sqnr
from edgemtl.passes.int8.config import SCALE_METHODS, Int8Config
from edgemtl.passes.int8.float_graph import float_graph
from edgemtl.passes.int8.units import SUPPORTED_OPS, Converter

__all__ = ["SCALE_METHODS", "SUPPORTED_OPS", "Int8Config", "Int8PassRecord", "Int8Record", "build_int_graph",
           "check_int8_ops", "choose_requant", "choose_scale", "float_graph", "int8_predictor", "quantize_int8", "run"]

SQNR_SAMPLES = 16   # held-out images each layer's error against float is measured on


@dataclass
class Int8Record:
    """What quantizing one task path did and what it cost in the task's metric (on `val`)."""

    task: str
    metric: str                                   # the task's primary metric
    higher_is_better: bool
    calibration_samples: int
    scale_method: str
    metric_float: dict[str, float]
    metric_int8: dict[str, float]
    input_scale: float
    output_scale: float
    layers: dict[str, dict[str, Any]]             # node name -> op, output dtype / scale, shift, mul bits, sqnr_db
    weight_bytes: int                             # every integer parameter (weights, mul, add)
    seconds: float
    relative_change: float = field(init=False)    # (int8 - float) / |float| of the primary metric

    def __post_init__(self) -> None:
        before, after = self.metric_float[self.metric], self.metric_int8[self.metric]
        self.relative_change = (after - before) / abs(before) if before else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)



# -- the pass ------------------------------------------------------------------------------------------------
@dataclass
class Int8PassRecord:
    """What quantizing every task path did: the data and settings, and each task's manifest entry (`tasks`)."""

    calibration: str
    metrics: str
    scale_method: str
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> {"ok": ...} as tasks.<task>.int8
    failed: dict[str, str] = field(default_factory=dict)             # task -> the op the int8 backends lack

    def to_manifest(self) -> dict[str, Any]:
        return {"calibration": self.calibration, "metrics": self.metrics, "scales": self.scale_method,
                "weights": "int8 per output channel", "activations": "int8 / uint8 after ReLU", "failed": self.failed}


def run(inputs: PassInput, config: Int8Config) -> PassResult[IntGraph]:
    """Every task path in `inputs.tasks` as an integer graph, calibrated on training images; float vs int8 metrics on
    the held-out split (a task the data does not label: its agreement with the float model). With a budget, each
    task's remedies (`config.remedies`) in order until it is within it, the best kept and every one recorded. A task
    with an op the int8 backends lack is recorded and the others go on; if none can be quantized, the first reason is
    raised."""
    source = inputs.need_source("quantize_int8 (int8 calibration)")
    data, spec = inputs.need_held_out("quantize_int8"), inputs.spec
    remedies = config.remedies if config.max_relative_loss is not None or config.budgets else config.remedies[:1]
    samples = max(replace(config, **changes).calibration_samples for _, changes in remedies)
    calibration = source.load("train", n=samples)
    scored_on = f"{data.name}/{data.split}, {len(data)} samples"
    record = Int8PassRecord(f"{data.name}/train, up to {len(calibration)} images", scored_on, config.scale_method)
    graphs: dict[str, IntGraph] = {}
    unseen = load_unseen(source, len(data))
    for task in inputs.each(inputs.tasks, "int8 calibration"):
        try:
            graph, record.tasks[task] = _quantize_to_budget(inputs, task, calibration, data, config, remedies)
        except EdgemtlError as exc:  # an op the int8 backends lack: this task stops here, the others go on
            record.tasks[task] = {"ok": False, "error": str(exc)}
            record.failed[task] = str(exc)
            continue
        model = inputs.task_model(task)
        record.tasks[task].update(metrics_data=scored_on, unseen=unseen_check(
            spec.task(task), unseen, task in inputs.labelled, model, _float_predictor(model, task), int8_predictor(graph)))
        graphs[task] = graph
    if not graphs:
        raise EdgemtlError(f"no task could be quantized to int8; first: {next(iter(record.failed.values()))}")
    return PassResult(inputs.model, spec, record, graphs)


def _quantize_to_budget(inputs: PassInput, task: str, calibration: TaskData, data: TaskData, config: Int8Config,
                        remedies: tuple[tuple[str, dict[str, Any]], ...]) -> tuple[IntGraph, dict[str, Any]]:
    """The task's remedies in order until its loss (its metric's relative loss, or 1 - cosine against float for a
    task the data does not label) is within `config.budget(task)`; the best attempt ships."""
    model, spec, budget = inputs.task_model(task), inputs.spec, config.budget(task)
    labelled = task in set(inputs.labelled)
    # a task judged by its agreement with float: any labels it has (a raw head's, whose metric is "none") set aside
    unlabelled = replace(data, targets={name: values for name, values in data.targets.items() if name != task})
    taught = None if labelled else teach_missing(unlabelled, model, [task])
    attempts: list[dict[str, Any]] = []
    best: tuple[float, IntGraph, dict[str, Any]] | None = None
    for name, changes in remedies:
        chosen = replace(config, **changes)
        if labelled:
            graph, task_record = quantize_int8(model, spec, task, calibration, data, chosen)
            entry = {"ok": True, **task_record.to_dict()}
            loss = relative_loss(task_record.metric_float[task_record.metric], task_record.metric_int8[task_record.metric],
                                 task_record.higher_is_better)[1]
        else:  # no labels for this task in the data: judged by its agreement with the float model
            graph = build_int_graph(model, spec, task, calibration, chosen)
            agreement = evaluate(int8_predictor(graph), [spec.task(task)], taught)[task]
            entry = {"ok": True, "metrics": f"no labels for task {task!r} in {data.name}", "agreement_with_float": agreement,
                     "agreement_provenance": prov("evaluated", source="edgemtl int8 reference executor",
                                                  detail="vs PyTorch float, host")}
            loss = agreement_loss(agreement)
        attempts.append({"remedy": name, "scale_method": chosen.scale_method,
                         "calibration_samples": chosen.calibration_samples, "relative_loss": loss,
                         "cost": {"weight_bytes": graph.weight_bytes(), "note": "scales only: ops, weights and cycles "
                                                                               "are those of every other remedy"}})
        if best is None or loss < best[0]:
            best = (loss, graph, {**entry, "relative_loss": loss, "remedy": name})
        if budget is None or loss <= budget:
            break
    assert best is not None
    loss, graph, entry = best
    if budget is not None:
        entry.update(target_max_relative_loss=budget, meets_target=loss <= budget, attempts=attempts)
    return graph, entry


def int8_predictor(graph: IntGraph) -> Predictor:
    """Normalised images -> the integer graph's dequantized output, as `evaluate` wants it."""

    def predict(images: torch.Tensor) -> dict[str, torch.Tensor]:
        q = quantize_input(graph, images.numpy().astype(np.float64))
        out = run_reference(graph, q)[graph.output]
        return {graph.task: torch.from_numpy(dequantize(graph, out).astype(np.float32))}

    return predict


def _float_predictor(model: nn.Module, task: str) -> Predictor:
    def predict(images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {task: run_task(model, images, task)}

    return predict


def check_int8_ops(graph: onnx.ModelProto, task: str) -> None:
    """Raise, naming op, node and task, where the task's float graph has a layer the int8 path cannot take: the
    same checks as `build_int_graph`'s first pass, without calibrating anything (an early answer)."""
    Converter(graph, task).units()


def build_int_graph(model: nn.Module, spec: ModelSpec, task: str, calibration: TaskData,
                    config: Int8Config = Int8Config()) -> IntGraph:
    """The task path as a validated, int32-safe integer graph (no evaluation)."""
    return _build(model, spec, task, calibration, config)[0]


def _build(model: nn.Module, spec: ModelSpec, task: str, calibration: TaskData, config: Int8Config
           ) -> tuple[IntGraph, onnx.ModelProto]:
    spec.task(task)
    model.eval()
    with tempfile.TemporaryDirectory(prefix="edgemtl-int8-") as folder:
        onnx_model = float_graph(model, spec, task, Path(folder))
    converter = Converter(onnx_model, task)
    units = converter.units()
    builder = Builder(converter, units)
    images = calibration.normalise(calibration.images[:config.calibration_samples])
    stats = calibration_values(onnx_model, images, builder.needs_calibration(), config)
    builder.decide_scales(stats, config)
    graph = builder.build()
    graph.validate()
    check_int32(graph)
    expected = spec.task(task).output_shape
    if graph.tensors[graph.output].shape != list(expected):
        raise EdgemtlError(f"task {task!r}: the integer graph outputs {graph.tensors[graph.output].shape}, "
                           f"the spec says {expected}")
    return graph, onnx_model


def quantize_int8(model: nn.Module, spec: ModelSpec, task: str, calibration: TaskData, val: TaskData,
                  config: Int8Config = Int8Config()) -> tuple[IntGraph, Int8Record]:
    """Quantize one task path to an integer graph; score float and int8 on `val` with the task's metrics."""
    start = time.perf_counter()
    task_spec = spec.task(task)
    graph, onnx_model = _build(model, spec, task, calibration, config)
    sqnr = layer_sqnr(onnx_model, graph, val.normalise(val.images[:SQNR_SAMPLES]))

    metric_float = evaluate(_float_predictor(model, task), [task_spec], val, config.eval_batch_size)[task]
    metric_int8 = evaluate(int8_predictor(graph), [task_spec], val, config.eval_batch_size)[task]
    layers = {}
    for node in graph.nodes:
        info = graph.tensors[node.output]
        entry: dict[str, Any] = {"op": node.op, "dtype": info.dtype, "scale": info.scale}
        if "mul" in node.params:
            entry.update(shift=int(node.attrs["shift"]), mul_bits=mul_bits(node.params["mul"]))
        if node.op == "add":
            entry["mul_bits"] = max(abs(node.attrs["mul_a"]), abs(node.attrs["mul_b"])).bit_length()
        if node.name in sqnr:
            entry["sqnr_db"] = sqnr[node.name]
        layers[node.name] = entry
    record = Int8Record(
        task=task, metric=task_spec.metric, higher_is_better=bool(task_spec.higher_is_better),
        calibration_samples=min(config.calibration_samples, len(calibration)), scale_method=config.scale_method,
        metric_float=metric_float, metric_int8=metric_int8, input_scale=graph.tensors[graph.input].scale,
        output_scale=graph.tensors[graph.output].scale, layers=layers, weight_bytes=graph.weight_bytes(),
        seconds=time.perf_counter() - start)
    return graph, record
