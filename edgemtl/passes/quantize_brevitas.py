"""Quantization-aware training of one task path with brevitas, power-of-two (fixed-point) scales only.

For the FPGA target every task is compiled as its own path (shared backbone + that task's head). The pass
builds that path as a brevitas model with brevitas' own graph tools:

1. brevitas' fx backport traces `TaskPath(model, task)`; shape arithmetic that does not depend on the batch (the
   `skip.shape[-2:]` an interpolation targets) is folded into constants, and spatial means become
   `AdaptiveAvgPool2d + flatten` (brevitas' own `MeanMethodToAdaptiveAvgPool2d` fails when `dim=` is a
   keyword).
2. `brevitas.graph.quantize.preprocess_for_quantize` turns functionals into modules and folds every
   BatchNorm into the preceding conv / linear (hls4ml and FINN want it folded).
3. Two signed output quantizers (`output_bits`) are inserted: one at the graph output, so the path has a
   defined output LSB, and one right after the head's last compute layer when a resize / reshape
   separates it from the output (otherwise brevitas would requantize the prediction at activation bits).
4. brevitas' graph handlers (`inp_placeholder_handler`, `act_handler`, `residual_handler`,
   `layer_handler` ...) quantize the graph with custom fixed-point maps: the input at `input_bits`
   (`Int8ActPerTensorFixedPoint`), ReLUs unsigned (`Uint8ActPerTensorFixedPoint`), requantizations
   before adds / concatenations / compute layers aligned to shared power-of-two scales, conv / linear
   weights `Int8WeightPerTensorFixedPoint` at the weight bits, biases `Int32Bias` (input scale x weight
   scale: a power of two too).
5. Activation ranges are calibrated on real images (`calibration_mode`), then the path is fine-tuned
   (QAT) on that task's loss with AdamW.
6. With an accuracy budget (passes/budget.py), steps 1-5 are one rung of the mixed-precision ladder
   (brevitas_qat/ladder.py): rungs with more layers at 8 bits until the task is within it, QAT stopped early once it
   is; the shipped path is then scored once more on the unseen test split.

Why power-of-two: hls4ml (and FINN's thresholding) is only exact with power-of-two scales; a
non-power-of-two scale made one head wrong by a constant factor.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from edgemtl.data import TaskData
from edgemtl.data.teacher import teach_missing
from edgemtl.errors import EdgemtlError
from edgemtl.evaluate import evaluate
from edgemtl.model.contract import TaskPath, example_input
from edgemtl.model.spec import ModelSpec, TaskSpec
from edgemtl.passes.base import PassInput, PassResult
from edgemtl.passes.budget import load_unseen, unseen_check
from edgemtl.passes.brevitas_qat.config import PRECISIONS, QuantConfig
from edgemtl.passes.brevitas_qat.graph import COMPUTE_LAYERS
from edgemtl.passes.brevitas_qat.ladder import Ladder, climb
from edgemtl.passes.brevitas_qat.path import (PRELU_SLOPE_BITS, FixedPointPReLU, QuantTaskPath, grid_align,
                                              output_lsb)
from edgemtl.passes.brevitas_qat.quantizers import layer_bit_widths, layer_name, quantizer_scales

__all__ = ["PRECISIONS", "PRELU_SLOPE_BITS", "FixedPointPReLU", "QatRecord", "QuantConfig", "QuantRecord",
           "QuantTaskPath", "grid_align", "layer_bit_widths", "output_lsb", "quantize_task", "quantizer_scales", "run"]

# What the QAT graph changes against the float model, and where the PS takes over (quantization.<key> per task), by
# the config flag that asks for it; PReLU slopes are always snapped.
REWRITES: dict[str, str] = {
    "host_resize": "a resize that ends a task path runs on the PS (ARM), bilinear as in the float model "
                   "(tasks.<task>.quantization.host_resize; the PYNQ driver applies it); the PL outputs the map before it",
    "nearest_upsampling": "every other bilinear resize -> nearest upsampling in the PL (hls4ml has no bilinear Resize); "
                          "metric_quant includes both",
    "host_softmax": "a softmax that ends a task path runs on the PS too (quantization.host_softmax): the PL outputs "
                    "the logits",
    "prelu": "PReLU slopes on a 2^-8 grid (quantization.fixed_point_prelus), so hls4ml's fixed-point PReLU is exact",
}


@dataclass
class QuantRecord:
    """What quantizing one task path did and cost."""

    task: str
    precision: str
    input_bits: int
    output_bits: int
    metric_float: dict[str, float]
    metric_quant: dict[str, float]
    qat_steps: int                  # the steps the shipped path was trained (early stopping may end it before the cap)
    calibration_samples: int
    seconds: float                  # the whole pass (build, calibration, QAT, both evaluations)
    qat_seconds: float              # build, calibration and QAT of every rung
    layers: dict[str, dict[str, int]]  # compute layer -> {"weight_bits", "act_bits"} (act: its output's quantizer)
    output_lsb: float
    host_resize: dict[str, Any] | None = None  # F.interpolate arguments of the resize left to the host
    host_softmax: dict[str, int] | None = None  # {"dim": d} of the softmax left to the host (d counts the batch)
    fixed_point_prelus: list[str] = field(default_factory=list)  # PReLUs whose slopes are on the 2^-8 grid
    overrides: dict[str, list[int]] = field(default_factory=dict)  # layer -> [weight, act] bits set apart from precision
    relative_loss: float | None = None     # the budget's measure of the shipped path (metric, or 1 - cosine)
    max_relative_loss: float | None = None  # the task's budget (None: no budget, one run of qat_steps)
    rungs: list[dict[str, Any]] = field(default_factory=list)  # the ladder's rungs in order (ladder.climb)
    sensitivity: dict[str, float] = field(default_factory=dict)  # 4-bit layer -> loss with it alone at 8 bits
    unseen: dict[str, Any] = field(default_factory=dict)  # the shipped path on the test split (budget.unseen_check)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["qat_seconds_per_step"] = self.qat_seconds / self.qat_steps if self.qat_steps else 0.0
        return out


@dataclass
class QatRecord:
    """What quantizing every task path did: the settings, the data, and each task's own record."""

    precision: str
    qat_steps: int
    rewrites: list[str]
    data: str
    tasks: dict[str, QuantRecord] = field(default_factory=dict)

    def to_manifest(self) -> dict[str, Any]:
        """The settings only: each task's record goes to its own manifest entry (tasks.<task>.quantization)."""
        return {"precision": self.precision, "qat_steps": self.qat_steps, "rewrites": self.rewrites, "data": self.data}


def rewrites(config: QuantConfig) -> list[str]:
    """The graph rewrites `config` asks for, in words."""
    return [text for flag, text in REWRITES.items() if flag == "prelu" or getattr(config, flag)]


def run(inputs: PassInput, config: QuantConfig) -> PassResult[QuantTaskPath]:
    """Every task path in `inputs.tasks`, calibrated and fine-tuned on the train split, scored on the held-out one;
    a task the data does not label distils from the float model and is judged by its agreement with it."""
    source = inputs.need_source("quantize_brevitas (calibration and QAT)")
    train = teach_missing(source.load("train"), inputs.model, inputs.tasks)
    val = teach_missing(inputs.need_held_out("quantize_brevitas"), inputs.model, inputs.tasks)
    record = QatRecord(config.precision, config.qat_steps, rewrites(config),
                       f"{source.reference}/train (calibration, QAT), {source.reference}/val (metrics)")
    unseen = load_unseen(source, len(val))
    paths = {}
    for task in inputs.each(inputs.tasks, "QAT"):
        paths[task], record.tasks[task] = quantize_task(inputs.model, inputs.spec, task, train, val, config)
        record.tasks[task].unseen = unseen_check(inputs.spec.task(task), unseen, task in inputs.labelled, inputs.model,
                                                 _predictor(TaskPath(inputs.model, task).eval(), task),
                                                 _predictor(paths[task], task))
    return PassResult(inputs.model, inputs.spec, record, paths)


def _predictor(path: nn.Module, task: str) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    def predict(images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {task: path(images)}

    return predict


def _metric(predict_one: Callable[[torch.Tensor], torch.Tensor], task_spec: TaskSpec, data: TaskData) -> dict[str, float]:
    return evaluate(_predictor(predict_one, task_spec.name), [task_spec], data)[task_spec.name]


def _resolve_edge_layers(model: nn.Module, spec: ModelSpec, task: str,
                         overrides: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """Replace the `first` / `last` aliases by this task path's first / last compute layer, in execution order."""
    if not {"first", "last"} & set(overrides):
        return dict(overrides)
    names, order = {m: n for n, m in model.named_modules() if isinstance(m, COMPUTE_LAYERS)}, []
    hooks = [m.register_forward_hook(lambda module, *_: order.append(names[module])) for m in names]
    try:
        with torch.no_grad():
            TaskPath(model, task).eval()(example_input(spec, batch=1))
    finally:
        for hook in hooks:
            hook.remove()
    resolved = {name: bits for name, bits in overrides.items() if name not in ("first", "last")}
    for alias, layer in (("first", order[0]), ("last", order[-1])):
        if alias in overrides:
            resolved.setdefault(layer, overrides[alias])
    return resolved


def quantize_task(model: nn.Module, spec: ModelSpec, task: str, train_data: TaskData, val_data: TaskData,
                  config: QuantConfig = QuantConfig()) -> tuple[QuantTaskPath, QuantRecord]:
    """Quantize one task path: calibrate on real images, then QAT on that task's loss; returns the path. With an
    accuracy budget (`config.budget(task)`), the mixed-precision ladder's rungs until the path is within it."""
    if task not in spec.task_names:
        raise EdgemtlError(f"unknown task {task!r}: this model has {', '.join(spec.task_names)}")
    all_layers = {n for n, m in model.named_modules() if isinstance(m, COMPUTE_LAYERS)}
    unknown = sorted(set(_resolve_edge_layers(model, spec, task, config.overrides)) - all_layers)
    if unknown:
        raise EdgemtlError(f"bit-width overrides name unknown layer(s) {', '.join(unknown)}")
    task_spec = spec.task(task)
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    metric_float = _metric(TaskPath(model, task).eval(), task_spec, val_data)
    budget = config.budget(task)
    ladder = Ladder(model, spec, task, train_data, val_data, config, lambda q: _metric(q, task_spec, val_data),
                    metric_float, budget, lambda overrides: _resolve_edge_layers(model, spec, task, overrides))
    rungs: list[dict[str, Any]] = []
    sensitivity: dict[str, float] = {}
    if budget is None:
        shipped = ladder.attempt(config.precision, config.precision, dict(config.overrides))
    else:
        shipped, rungs, sensitivity = climb(ladder, config.pinned.get(task))
    qmodel, graph = shipped.qmodel, shipped.qmodel.graph_module
    record = QuantRecord(
        task=task, precision=shipped.precision, input_bits=config.input_bits, output_bits=config.output_bits,
        metric_float=metric_float, metric_quant=shipped.metric, qat_steps=shipped.qat_steps,
        calibration_samples=int(len(ladder.calibration)), seconds=time.perf_counter() - start,
        qat_seconds=sum(row["seconds"] for row in rungs) if rungs else shipped.seconds,
        layers=layer_bit_widths(qmodel), output_lsb=output_lsb(qmodel), host_resize=qmodel.host_resize,
        host_softmax=qmodel.host_softmax, fixed_point_prelus=[layer_name(name) for name, module in graph.named_modules()
                                                              if isinstance(module, FixedPointPReLU)],
        overrides={name: list(bits) for name, bits in ladder.resolve(shipped.overrides).items()},
        relative_loss=shipped.loss, max_relative_loss=budget, rungs=rungs, sensitivity=sensitivity)
    return qmodel, record
