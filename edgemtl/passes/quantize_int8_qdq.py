"""The `quantize_int8_qdq` pass: every task path as an int8 QDQ ONNX graph (ONNX Runtime's static quantizer,
`ort_qdq/quantize.py`), calibrated on real training images and scored against float on the held-out split.

The standard remedies when a task loses accuracy are knobs of `OrtQuantConfig`: more calibration samples,
percentile calibration instead of min/max, and keeping the task's last layer(s) in float. `run` tries
`QdqConfig.remedies` (`ort_qdq/config.py`) in order until the task's metric stays within its accuracy budget
(edgemtl.passes.budget; a task the data does not label: 1 - cosine against the float model), keeps the best attempt
and records every one with its measured host latency (the remedy's cost). The int8 graphs go into the bundle at
`INT8_ONNX`; without data the pass is skipped (float ships).
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgemtl.data import TaskData
from edgemtl.data.teacher import teach_missing
from edgemtl.errors import EdgemtlError
from edgemtl.evaluate import Predictor, evaluate
from edgemtl.manifest import prov
from edgemtl.model.onnx_export import export_task
from edgemtl.model.ort_session import make_session, run as run_session
from edgemtl.model.spec import TaskSpec
from edgemtl.timing import measure
from edgemtl.passes.base import PassInput, PassResult, no_data
from edgemtl.passes.budget import agreement_loss, load_unseen, relative_loss, unseen_check
from edgemtl.passes.ort_qdq.config import METHODS, REMEDIES, OrtQuantConfig, QdqConfig
from edgemtl.passes.ort_qdq.quantize import QuantizeResult, SampleReader, last_compute_nodes, quantize_qdq

__all__ = ["INT8_ONNX", "METHODS", "REMEDIES", "OrtQuantConfig", "QdqConfig", "QdqPassRecord", "QuantizeResult",
           "SampleReader", "last_compute_nodes", "quantize_qdq", "run"]

INT8_ONNX = "tasks/{task}/model.int8.onnx"   # where `run` writes each task's int8 graph in the bundle
TOOL = "onnxruntime.quantization quant_pre_process + quantize_static (QDQ)"
RUNTIME = "onnxruntime (this host, CPUExecutionProvider)"
Judge = Callable[[Path], tuple[float, dict[str, Any], dict[str, Any]]]  # int8 graph -> (score, record, attempt row)


@dataclass
class QdqPassRecord:
    """What quantizing every task path did: the data and targets, and each task's manifest entry (`tasks`)."""

    calibration: str
    metrics: str
    config: QdqConfig
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> {"ok": ...} as tasks.<task>.int8

    def to_manifest(self) -> dict[str, Any]:
        return {"tool": TOOL, "calibration": self.calibration, "metrics": self.metrics,
                "target_max_relative_loss": {"default": self.config.max_relative_loss, **self.config.budgets},
                "remedies_in_order": [f"{name}: {remedy.describe()}" for name, remedy in self.config.remedies]}


def run(inputs: PassInput, config: QdqConfig) -> PassResult[Path]:
    """Every task path in `inputs.tasks` as an int8 QDQ graph in the bundle (`INT8_ONNX`), calibrated on training
    images, float vs int8 metrics on the held-out split. A task ONNX Runtime's quantizer fails on under every remedy
    is recorded and the others go on (it stays float). Without data: skipped, said why."""
    if inputs.source is None:
        return PassResult.skip(inputs, str(no_data("int8 calibration")))
    if inputs.bundle is None:
        raise EdgemtlError("quantize_int8_qdq writes each task's int8 graph into the bundle: it was given none")
    source, data = inputs.source, inputs.need_held_out("int8 scoring")

    @functools.cache
    def calibration(samples: int) -> np.ndarray:
        """Normalised training images (never the held-out split the metrics use), loaded once per count."""
        train = source.load("train", n=samples)
        return train.normalise(train.images[:samples])

    record = QdqPassRecord(f"{data.name}/train (real images, normalised by the spec)",
                           f"{data.name}/{data.split} ({len(data)} samples)", config)
    unseen = load_unseen(source, len(data))
    paths: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="edgemtl-qdq-") as scratch:
        for task in inputs.each(inputs.tasks, "int8 QDQ"):
            int8_path = inputs.bundle / INT8_ONNX.format(task=task)
            try:
                float_path = export_task(inputs.task_model(task), inputs.spec, task, Path(scratch) / f"{task}.onnx")
                record.tasks[task] = _quantize_task(inputs, config, task, float_path, int8_path, data, calibration,
                                                    record.metrics)
                threads = config.threads or os.cpu_count() or 1
                record.tasks[task]["unseen"] = unseen_check(
                    inputs.spec.task(task), unseen, task in inputs.labelled, inputs.task_model(task),
                    _ort_predictor(float_path, threads), _ort_predictor(int8_path, threads))
            except EdgemtlError as exc:  # an op ONNX Runtime cannot quantize: this task stays float, the others go on
                int8_path.unlink(missing_ok=True)
                record.tasks[task] = {"ok": False, "error": str(exc)}
                continue
            paths[task] = int8_path
    return PassResult(inputs.model, inputs.spec, record, paths)


def _quantize_task(inputs: PassInput, config: QdqConfig, task: str, float_path: Path, int8_path: Path, data: TaskData,
                   calibration: Callable[[int], np.ndarray], scored_on: str) -> dict[str, Any]:
    """The task's remedies in order until its int8 graph is within its budget (`config.budget(task)`): a labelled
    task by its metric's relative loss, a task the data does not label by 1 - cosine against the float model."""
    spec = inputs.spec.task(task)
    threads = config.threads or os.cpu_count() or 1
    budget = config.budget(task)
    timer = functools.partial(_latency_ms, image=calibration(1)[:1], threads=threads, runs=config.latency_runs)
    common = {"metrics_data": scored_on, "runtime": RUNTIME, "target_max_relative_loss": budget,
              "float_cost": timer(float_path)}
    if task not in inputs.labelled:  # judged by its agreement with the float model on the held-out split (a raw head
        # the data labels, whose metric is "none", too: its labels are set aside)
        unlabelled = replace(data, targets={name: values for name, values in data.targets.items() if name != task})
        taught = teach_missing(unlabelled, inputs.task_model(task), [task])

        def agree(path: Path) -> tuple[float, dict[str, Any], dict[str, Any]]:
            agreement = _metrics(path, spec, taught, threads)
            loss = agreement_loss(agreement)
            return loss, {"agreement_with_float": agreement, "relative_loss": loss}, {**agreement, "relative_loss": loss}

        name, result, scored, attempts = _search_remedies(config.remedies, float_path, int8_path, calibration, agree,
                                                          budget, timer)
        return {"ok": True, "metrics": f"no labels for task {task!r} in {data.name}", **scored,
                "agreement_provenance": prov("evaluated", source="ONNX Runtime int8", detail="vs PyTorch float, host"),
                "meets_target": scored["relative_loss"] <= budget, "remedy": name, "calibration": result.to_dict(),
                "attempts": attempts, **common}
    metric_float = _metrics(float_path, spec, data, threads)

    def score(path: Path) -> tuple[float, dict[str, Any], dict[str, Any]]:
        metric_int8 = _metrics(path, spec, data, threads)
        change, loss = relative_loss(metric_float[spec.metric], metric_int8[spec.metric], spec.higher_is_better)
        scored = {"relative_change": change, "relative_loss": loss}
        return loss, {"metric_int8": metric_int8, **scored}, {"metric_int8": metric_int8[spec.metric], **scored}

    name, result, scored, attempts = _search_remedies(config.remedies, float_path, int8_path, calibration, score,
                                                      budget, timer)
    return {"ok": True, "metric": spec.metric, "higher_is_better": spec.higher_is_better, "metric_float": metric_float,
            **scored, "meets_target": scored["relative_loss"] <= budget, "remedy": name,
            "calibration": result.to_dict(), "attempts": attempts, **common}


def _latency_ms(path: Path, image: np.ndarray, threads: int, runs: int) -> dict[str, Any]:
    """What an attempt costs: its median ONNX Runtime latency on this host at batch 1 (measured, `runs` runs)."""
    session = make_session(path, threads)
    latency = measure(lambda: run_session(session, image), runtime="onnxruntime", threads=threads, warmup=3, runs=runs,
                      max_seconds=2.0)
    return {"latency_ms": latency.median, "latency_runs": latency.runs,
            "provenance": prov("measured", source="ONNX Runtime, this host", detail=f"median of {latency.runs} runs, batch 1")}


def _search_remedies(remedies: tuple[tuple[str, OrtQuantConfig], ...], float_path: Path, int8_path: Path,
                     calibration: Callable[[int], np.ndarray], judge: Judge, good_enough: float,
                     cost: Callable[[Path], dict[str, Any]]) -> tuple[str, QuantizeResult, dict[str, Any], list[dict[str, Any]]]:
    """`remedies` in order until `judge`'s score (lower is better; with its record and its row for `attempts`)
    reaches `good_enough`; the best attempt is written to `int8_path`. Each row carries its `cost`. A remedy ONNX
    Runtime's quantizer fails on is recorded and the next one tried."""
    attempts: list[dict[str, Any]] = []
    best: tuple[float, str, QuantizeResult, dict[str, Any]] | None = None
    trial = int8_path.with_suffix(".try.onnx")
    for name, remedy in remedies:
        try:
            result = quantize_qdq(float_path, trial, calibration(remedy.calibration_samples), remedy)
        except EdgemtlError as exc:
            attempts.append({"remedy": name, "description": remedy.describe(), "error": str(exc)})
            continue
        score, record, row = judge(trial)
        attempts.append({"remedy": name, "description": remedy.describe(), **row, "cost": cost(trial)})
        if best is None or score < best[0]:
            best = (score, name, result, record)
            trial.replace(int8_path)
        if score <= good_enough:
            break
    trial.unlink(missing_ok=True)
    if best is None:
        raise EdgemtlError(attempts[0]["error"])
    return best[1], best[2], best[3], attempts


def _metrics(path: Path, task: TaskSpec, data: TaskData, threads: int) -> dict[str, float]:
    """The task's metrics of an ONNX file in ONNX Runtime on `data` (a task without labels: `data` with the float
    model's outputs as targets, for SQNR and cosine against them)."""
    return evaluate(_ort_predictor(path, threads), [task], data)[task.name]


def _ort_predictor(path: Path, threads: int) -> Predictor:
    session = make_session(path, threads)

    def predict(images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v) for k, v in run_session(session, images.numpy()).items()}

    return predict
