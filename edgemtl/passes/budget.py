"""The accuracy budget every quantizing flow works to: how much of its metric each task may lose, relative to float.

One number per task (`--max-drop task=0.02`, else the target file's `max_drop`), used the same way by every flow's
quantization pass: its remedies are tried in order until the task's loss is within it, and the compile fails on a
task over it unless the user allows it. A task the data does not label is judged by its agreement with the float
model instead: its loss is 1 - the cosine similarity of its quantized and float outputs (flattened), so one
number means the same share for both kinds of task. `unseen_check` scores the shipped path once more on the test
split, which no remedy decision saw.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from edgemtl.data import TaskData
from edgemtl.data.teacher import teach_missing
from edgemtl.errors import EdgemtlError
from edgemtl.evaluate import Predictor, evaluate
from edgemtl.model.spec import TaskSpec

AGREEMENT_METRIC = "cosine_vs_float"   # what an unlabelled task is judged by (evaluate's agreement metrics)


@dataclass(frozen=True)
class Budget:
    """Each task's allowed relative loss: `per_task` where the user named the task, else `default` (the target's)."""

    default: float
    per_task: Mapping[str, float] = field(default_factory=dict)
    source: str = ""                 # where `default` came from, e.g. "target zcu104"
    allow_over: bool = False         # --allow-over-budget: a task over its budget ships, said so in red

    def __post_init__(self) -> None:
        for task, value in {"(default)": self.default, **self.per_task}.items():
            check_value(value, task)

    def of(self, task: str) -> float:
        return self.per_task.get(task, self.default)

    def origin(self, task: str) -> str:
        return "--max-drop" if task in self.per_task else self.source


def check_value(value: float, task: str) -> None:
    if not 0.0 < value < 1.0:
        raise EdgemtlError(f"--max-drop {task}={value:g}: a budget is a relative loss in (0, 1), e.g. 0.02 for 2%")


def resolve(asked: Mapping[str, float], tasks: list[str], target_default: float | None, target_name: str,
            allow_over: bool = False) -> Budget:
    """The budget of a compile: the user's per-task values (a key "*" sets every task) over the target's default.
    An unknown task or a value outside (0, 1) is the user's error, said in one line."""
    unknown = sorted(set(asked) - set(tasks) - {"*"})
    if unknown:
        raise EdgemtlError(f"--max-drop names unknown task(s) {', '.join(unknown)}; this model has {', '.join(tasks)}")
    for task, value in asked.items():
        check_value(value, task)
    default, source = target_default, f"target {target_name}"
    if "*" in asked:
        default, source = asked["*"], "--max-drop"
    if default is None:
        raise EdgemtlError(f"target {target_name} states no max_drop: give --max-drop VALUE (e.g. 0.02)")
    return Budget(default, {t: v for t, v in asked.items() if t != "*"}, source, allow_over)


def relative_loss(before: float, after: float, higher_is_better: bool) -> tuple[float, float]:
    """(relative change, relative loss): change = (after - before) / |before|; loss > 0 means worse."""
    change = (after - before) / abs(before) if abs(before) > 1e-12 else after - before
    return change, (-change if higher_is_better else change)


def agreement_loss(agreement: Mapping[str, float]) -> float:
    """An unlabelled task's loss: 1 - cosine similarity of its quantized and float outputs."""
    return 1.0 - float(agreement[AGREEMENT_METRIC])


UNSEEN_SPLIT = "test"   # scored once at the end, never by a remedy decision: the budget's numbers on unseen data


def load_unseen(source: Any, samples: int) -> TaskData | None:
    """The data source's test split (its first `samples`), or None where it has none."""
    try:
        data = source.load(UNSEEN_SPLIT, n=samples)
    except EdgemtlError:
        return None
    return data if len(data) else None


def unseen_check(task: TaskSpec, data: TaskData | None, labelled: bool, float_model: nn.Module,
                 float_predict: Predictor, quant_predict: Predictor) -> dict[str, Any]:
    """The shipped quantized path against float on the test split, which no remedy decision saw: the decisions (which
    remedy ships, when QAT stops) are taken on the held-out split the budget is judged on, so that split's loss is
    the one they optimised; this one is not. A task the data does not label: 1 - cosine against `float_model`."""
    if data is None:
        return {"split": None, "reason": f"the data has no {UNSEEN_SPLIT} split"}
    out: dict[str, Any] = {"split": f"{data.name}/{data.split}", "samples": len(data)}
    if labelled and task.name in data.targets:
        before = evaluate(float_predict, [task], data)[task.name][task.metric]
        after = evaluate(quant_predict, [task], data)[task.name][task.metric]
        return {**out, "metric": task.metric, "float": before, "quantized": after,
                "relative_loss": relative_loss(before, after, bool(task.higher_is_better))[1]}
    unlabelled = replace(data, targets={name: values for name, values in data.targets.items() if name != task.name})
    agreement = evaluate(quant_predict, [task], teach_missing(unlabelled, float_model, [task.name]))[task.name]
    return {**out, "metric": None, AGREEMENT_METRIC: agreement[AGREEMENT_METRIC], "relative_loss": agreement_loss(agreement)}
