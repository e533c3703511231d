"""Mixed precision to a budget: the rungs the FPGA flow climbs, per task, until the quantized path is within the
task's accuracy budget (edgemtl.passes.budget). Each rung's QAT is checked before its first step and every
`check_every` steps: it stops once the task is within the budget and keeps the best state it saw (measured: on the
100 training faces of the MTCNN example, 300 QAT steps took a w8a8 path from 1.4% to 10% loss).

Rungs, cheapest in logic first (the default precision w4a4; --precision w8a8 starts at the third):
1. w4a4 with the first and last compute layers at w8a8 (the usual start for low-bit networks);
2. and 3. the most sensitive quarter, then half, of the remaining 4-bit layers raised to w8a8 as well. Sensitivity
   is measured as the issue of mixed precision asks: one layer at a time raised to 8 bits on the rung-1 widths,
   calibrated without QAT, each task's loss on the held-out split; a layer whose raise lowers the loss most is the
   most sensitive;
4. w8a8 everywhere;
5. the w8a8 path trained for another `qat_steps` (more QAT).
A task whose widths are pinned (--layer-bits FILE.json) runs one rung at those widths. Every rung's loss, QAT steps
and cost (estimated bit operations and weight memory, from the path's MACs and widths) are recorded, so the trade is
visible; the best rung ships when none is within the budget.

The decisions (when QAT stops, which state and rung ship) are taken on the held-out split the metric is reported on,
as the arm64 flow's remedy search does: that loss is the one the decisions saw; the pass scores the shipped path on
the unseen test split too (budget.unseen_check).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from edgemtl.analysis.fpga_cost import layers_from_model
from edgemtl.data import TaskData
from edgemtl.manifest import prov
from edgemtl.model.spec import ModelSpec, TaskSpec
from edgemtl.passes.brevitas_qat.config import PRECISIONS, QuantConfig
from edgemtl.passes.brevitas_qat.path import QuantTaskPath
from edgemtl.passes.brevitas_qat.quantizers import build_quant_graph, layer_bit_widths
from edgemtl.passes.brevitas_qat.training import calibrate, check_quantized_path_runs, qat, task_images
from edgemtl.passes.budget import AGREEMENT_METRIC, agreement_loss, relative_loss

SENSITIVE_SHARES = (0.25, 0.5)   # rungs 2 and 3: this share of the remaining 4-bit layers raised to 8 bits
HIGH = (8, 8)
Metric = Callable[[nn.Module], dict[str, float]]


@dataclass
class Attempt:
    """One rung: the widths it tried, what QAT it ran and what it reached."""

    name: str
    precision: str
    overrides: dict[str, tuple[int, int]]
    qmodel: QuantTaskPath
    metric: dict[str, float]
    loss: float
    qat_steps: int
    seconds: float


def task_loss(task_spec: TaskSpec, distilled: bool, metric_float: dict[str, float], metric: dict[str, float]) -> float:
    """The relative loss the budget is judged by: the task's metric against float, or, for a task the data does not
    label (its targets distilled from float), 1 - cosine against float."""
    if distilled or AGREEMENT_METRIC in metric and task_spec.metric not in metric:
        return agreement_loss(metric)
    return relative_loss(metric_float[task_spec.metric], metric[task_spec.metric], bool(task_spec.higher_is_better))[1]


def bit_cost(model: nn.Module, spec: ModelSpec, task: str, qmodel: QuantTaskPath) -> dict[str, Any]:
    """A rung's cost in logic and memory, estimated from the float path's MACs and the rung's widths: bit operations
    (MACs x weight bits x activation bits; the activation bits are those of the quantizer at the layer's output)
    and weight memory. FPGA multipliers and LUTs grow with both widths, so this orders rungs as the fabric would."""
    widths = layer_bit_widths(qmodel)
    bops, weight_bits = 0, 0
    for layer in layers_from_model(model, spec, task):
        bits = widths.get(layer.name)
        if bits is None:
            continue
        act = bits.get("act_bits", bits["weight_bits"])
        bops += layer.macs * bits["weight_bits"] * act
        weight_bits += layer.weights * bits["weight_bits"]
    return {"bit_operations": int(bops), "weight_kib": weight_bits / 8 / 1024,
            "provenance": prov("estimated", source="edgemtl: MACs x weight bits x activation bits per layer",
                               detail="the float path's MACs; not synthesised")}


class Ladder:
    """The rungs of one task path, sharing its data, float metric and QAT settings."""

    def __init__(self, model: nn.Module, spec: ModelSpec, task: str, train: TaskData, val: TaskData,
                 config: QuantConfig, metric: Metric, metric_float: dict[str, float], budget: float | None,
                 resolve: Callable[[dict[str, tuple[int, int]]], dict[str, tuple[int, int]]]) -> None:
        self.model, self.spec, self.task, self.train, self.config = model, spec, task, train, config
        self.metric, self.metric_float, self.budget, self.resolve = metric, metric_float, budget, resolve
        self.task_spec = spec.task(task)
        self.distilled = task in val.distilled
        self.calibration = task_images(train, min(config.calibration_samples, len(train)), config.seed)

    def loss(self, metric: dict[str, float]) -> float:
        return task_loss(self.task_spec, self.distilled, self.metric_float, metric)

    def build(self, precision: str, overrides: dict[str, tuple[int, int]]) -> QuantTaskPath:
        config = replace(self.config, precision=precision, overrides=self.resolve(overrides))
        torch.manual_seed(config.seed)
        graph, host_resize, host_softmax = build_quant_graph(self.model, self.spec, self.task, config)
        qmodel = QuantTaskPath(graph, self.task, host_resize, host_softmax)
        calibrate(qmodel, self.calibration, config.batch_size)
        check_quantized_path_runs(qmodel, self.calibration[:2])
        return qmodel

    def train_to_budget(self, qmodel: QuantTaskPath, steps: int, lr: float) -> tuple[int, dict[str, float]]:
        """QAT for at most `steps`, the held-out loss checked before the first step and every `check_every` steps:
        stops once within budget, and ends on the best state it saw (QAT on a small data set can make a path worse
        than calibration alone left it). Returns (the steps of the state kept, its metric)."""
        if self.budget is None or not self.config.check_every:
            run = qat(qmodel, self.task_spec, self.train, replace(self.config, qat_steps=steps, lr=lr))
            return run, self.metric(qmodel)
        best: dict[str, Any] = {}

        def within(step: int) -> bool:
            metric = self.metric(qmodel)
            loss = self.loss(metric)
            if not best or loss < best["loss"]:
                best.update(loss=loss, metric=metric, step=step,
                            state={k: v.detach().clone() for k, v in qmodel.state_dict().items()})
            return loss <= self.budget  # type: ignore[operator]  (checked above)

        qmodel.eval()
        if within(0) or not steps:
            return 0, best["metric"]
        run = qat(qmodel, self.task_spec, self.train, replace(self.config, qat_steps=steps, lr=lr), stop=within)
        if run == steps and best["step"] != run:  # the last step was not checked by `stop`
            within(run)
        if best["step"] != run:
            qmodel.load_state_dict(best["state"])
            qmodel.eval()
        return best["step"], best["metric"]

    def attempt(self, name: str, precision: str, overrides: dict[str, tuple[int, int]]) -> Attempt:
        start = time.perf_counter()
        qmodel = self.build(precision, overrides)
        steps, metric = self.train_to_budget(qmodel, self.config.qat_steps, self.config.lr)
        return Attempt(name, precision, dict(overrides), qmodel, metric, self.loss(metric), steps,
                       time.perf_counter() - start)

    def sensitivity(self, precision: str, base: dict[str, tuple[int, int]], layers: list[str]) -> dict[str, float]:
        """Each layer's loss with it alone raised to 8 bits on the `base` widths, calibrated, no QAT."""
        return {layer: self.loss(self.metric(self.build(precision, {**base, layer: HIGH}))) for layer in layers}


def climb(ladder: Ladder, pinned: dict[str, Any] | None) -> tuple[Attempt, list[dict[str, Any]], dict[str, float]]:
    """The rungs in order until one is within the budget: (the attempt that ships, every rung's row, the measured
    sensitivity of each 4-bit layer, when it was measured)."""
    config, attempts, rows, sensitivity = ladder.config, [], [], {}

    def run(attempt: Attempt) -> bool:
        attempts.append(attempt)
        rows.append({"rung": attempt.name, "precision": attempt.precision,
                     "layers_at_8_bits": sorted(k for k, v in ladder.resolve(attempt.overrides).items() if v == HIGH),
                     "relative_loss": attempt.loss, "within": attempt.loss <= ladder.budget,
                     "qat_steps": attempt.qat_steps, "seconds": round(attempt.seconds, 2),
                     "cost": bit_cost(ladder.model, ladder.spec, ladder.task, attempt.qmodel)})
        return attempt.loss <= ladder.budget

    user = dict(config.overrides)
    if pinned is not None:
        run(ladder.attempt("pinned widths (--layer-bits file)", pinned["precision"], dict(pinned["layers"])))
    else:
        done = False
        if PRECISIONS[config.precision] != HIGH:
            start = {"first": HIGH, "last": HIGH, **user}
            done = run(ladder.attempt(f"{config.precision}, first and last layers w8a8", config.precision, start))
            if not done:
                resolved = ladder.resolve(start)
                low = [name for name, bits in layer_bit_widths(attempts[0].qmodel).items()
                       if resolved.get(name) != HIGH and name not in user]
                sensitivity = ladder.sensitivity(config.precision, start, low)
                order = sorted(low, key=lambda name: sensitivity[name])
                for share in SENSITIVE_SHARES:
                    raised = order[:max(1, math.ceil(share * len(order)))]
                    done = run(ladder.attempt(f"{config.precision}, first/last and the {len(raised)} most sensitive "
                                              "layers w8a8", config.precision, {**start, **{n: HIGH for n in raised}}))
                    if done:
                        break
        if not done:
            w8 = ladder.attempt("w8a8", "w8a8", user)
            if not run(w8):  # more QAT on a copy, so the w8a8 rung keeps the path its metric was measured on
                start, more = time.perf_counter(), copy.deepcopy(w8.qmodel)
                steps, metric = ladder.train_to_budget(more, config.qat_steps, config.lr / 3)
                run(Attempt("w8a8, more QAT", "w8a8", user, more, metric, ladder.loss(metric),
                            w8.qat_steps + steps, time.perf_counter() - start))
    best = next((a for a in attempts if a.loss <= ladder.budget), None) or min(attempts, key=lambda a: a.loss)
    for row in rows:
        row["shipped"] = row["rung"] == best.name
    return best, rows, sensitivity
