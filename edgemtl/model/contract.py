"""The runtime side of the contract: run a multi-task model whole, or one task's path alone.

A contract model is an `nn.Module` whose `forward(x)` returns `{task_name: tensor}`. If its `forward`
also takes a `task=` keyword, `forward(x, task=t)` must return `{t: tensor}` computing only what task `t`
needs (the zoo models do; for the MoE model it selects the task's routing). Models without that keyword
still work: the task path runs the whole forward and keeps one output, and exporters drop the unused
heads as dead code.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from edgemtl.errors import EdgemtlError
from edgemtl.model.spec import ModelSpec


def accepts_task_argument(model: nn.Module) -> bool:
    """Whether `model.forward` takes `task=` (so a single task can run without the other heads)."""
    try:
        return "task" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def run_task(model: nn.Module, x: torch.Tensor, task: str) -> torch.Tensor:
    """The output of one task, computing only that task's path when the model allows it."""
    outputs = model(x, task=task) if accepts_task_argument(model) else model(x)
    if not isinstance(outputs, dict) or task not in outputs:
        raise EdgemtlError(f"the model's forward did not return an output for task {task!r}")
    return outputs[task]


class TaskPath(nn.Module):
    """One task's path as a single-output module: what gets exported, analysed and timed per task."""

    def __init__(self, model: nn.Module, task: str) -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_task(self.model, x, self.task)


class AllTasks(nn.Module):
    """Every task's output as a tuple in spec order (ONNX graphs want positional outputs)."""

    def __init__(self, model: nn.Module, task_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.task_names = list(task_names)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(x)
        return tuple(outputs[name] for name in self.task_names)


def example_input(spec: ModelSpec, batch: int = 1) -> torch.Tensor:
    """A random normalised input of the spec's shape (for tracing, not for accuracy)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, *spec.input.shape, generator=generator)


def validate_model(model: nn.Module, spec: ModelSpec) -> None:
    """Check that the model's outputs match the spec, task by task; one clear error line otherwise."""
    model.eval()
    x = example_input(spec, batch=2)
    try:
        with torch.no_grad():
            outputs = model(x)
    except Exception as exc:  # the user's forward failing on the spec's input shape is bad input
        raise EdgemtlError(
            f"the model's forward fails on an input of shape {[2, *spec.input.shape]} from the spec: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    if not isinstance(outputs, dict):
        raise EdgemtlError(f"the model's forward must return a dict task -> tensor, got {type(outputs).__name__}")
    missing = [n for n in spec.task_names if n not in outputs]
    extra = [n for n in outputs if n not in spec.task_names]
    if missing or extra:
        raise EdgemtlError(
            f"the model's outputs {sorted(outputs)} do not match the spec's tasks {spec.task_names}"
            + (f" (missing: {', '.join(missing)})" if missing else "")
            + (f" (not in spec: {', '.join(extra)})" if extra else "")
        )
    for task in spec.tasks:
        got = list(outputs[task.name].shape[1:])
        if got != task.output_shape:
            raise EdgemtlError(
                f"task {task.name!r} outputs shape {got} per sample but the spec says {task.output_shape}"
            )
