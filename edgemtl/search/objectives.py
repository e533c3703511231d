"""What a tune search optimises: each task's metric on held-out data and one cost of the target, with provenance.

The cost is the one the user's budget names (`--budget macs=0.5 | latency_ms=X | memory_kib=X`) and is obtained as
the target can give it: MACs counted from the traced graph (static, every target); latency measured with ONNX Runtime
on a device through the profiler's TVM RPC client (`--device rpc://TRACKER:PORT/KEY`: a real board, or the emulated
one, whose numbers say `emulated`), or on this host (host and arm64 without a device: the host's number, not the
board's), or the FPGA roofline's estimate (zcu104); memory
as weights plus the peak of live activations at the target's precision (estimated, from the traced graph's
liveness). A target whose cost cannot be obtained per configuration says so in one line.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from edgemtl.analysis.cost import all_tasks_cost
from edgemtl.analysis.fpga_cost import estimate_model, precision_bits
from edgemtl.errors import EdgemtlError
from edgemtl.manifest import prov
from edgemtl.model.contract import example_input
from edgemtl.model.onnx_export import export_all_tasks
from edgemtl.model.ort_session import make_session
from edgemtl.model.spec import ModelSpec
from edgemtl.profile.device import ORT_FLOAT, SkipRuntime, TaskArtifacts
from edgemtl.profile.rpc import RpcDevice, parse_device
from edgemtl.targets import Target
from edgemtl.timing import measure

COST_UNITS = {"macs": "MACs", "latency_ms": "ms", "memory_kib": "KiB"}
CPU_FLOWS = ("cpu-onnxruntime", "cpu-arm64")
FPGA_FLOWS = ("fpga-hls4ml",)


@dataclass(frozen=True)
class Budget:
    """The cost the configuration must stay within: `macs` as a fraction of the widest configuration's MACs,
    `latency_ms` and `memory_kib` as absolute limits."""

    kind: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Budget:
        kind, _, value = text.partition("=")
        kind = kind.strip()
        if kind not in COST_UNITS or not value:
            raise EdgemtlError(f"--budget {text!r}: expected macs=FRACTION, latency_ms=X or memory_kib=X")
        try:
            number = float(value)
        except ValueError:
            raise EdgemtlError(f"--budget {text!r}: {value!r} is not a number") from None
        if not number > 0 or (kind == "macs" and number > 1):
            raise EdgemtlError(f"--budget {text!r}: {'a fraction in (0, 1]' if kind == 'macs' else 'a positive number'}"
                               " is needed")
        return cls(kind, number)

    def limit(self, widest_cost: float) -> float:
        """The budget in the cost objective's own unit."""
        return self.value * widest_cost if self.kind == "macs" else self.value

    def check_reachable(self, narrowest_cost: float, widest_cost: float) -> None:
        """One line when no configuration can meet the budget, or every one does (the budget decides nothing)."""
        limit = self.limit(widest_cost)
        if limit < narrowest_cost * (1 - 1e-9) or limit > widest_cost * (1 + 1e-9):
            unit = COST_UNITS[self.kind]
            reach = (f"{narrowest_cost / widest_cost:.3g}-1" if self.kind == "macs"
                     else f"{narrowest_cost:.4g}-{widest_cost:.4g} {unit}")
            raise EdgemtlError(f"--budget {self.kind}={self.value:g} is outside the reachable range {reach} "
                               "(narrowest to widest configuration)")


def parse_preference(text: str | None, tasks: list[str]) -> dict[str, float]:
    """`taskA=3,taskB=1` -> weights summing to 1 over `tasks` (a task not named gets weight 1; none given: equal)."""
    weights = {task: 1.0 for task in tasks}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in weights:
            raise EdgemtlError(f"--prefer names unknown task {name!r}; the searched tasks are {', '.join(tasks)}")
        try:
            weights[name] = float(value)
        except ValueError:
            raise EdgemtlError(f"--prefer {item.strip()!r}: expected TASK=WEIGHT with a number") from None
        if not weights[name] > 0:
            raise EdgemtlError(f"--prefer {item.strip()!r}: a preference must be positive")
    total = sum(weights.values())
    return {task: weight / total for task, weight in weights.items()}


class CostMeter:
    """Obtains one cost of a narrow model on a target, with the provenance of the number."""

    def __init__(self, kind: str, target: Target, threads: int = 1, runs: int = 30, device: str | None = None) -> None:
        if kind not in COST_UNITS:
            raise EdgemtlError(f"unknown cost {kind!r}; choose {', '.join(COST_UNITS)}")
        if kind == "latency_ms" and target.flow not in CPU_FLOWS + FPGA_FLOWS:
            raise EdgemtlError(f"--budget latency_ms on {target.name}: its latency needs a quantized graph per "
                               "configuration (cycle estimate); budget macs or memory_kib instead")
        if device is not None and (kind != "latency_ms" or target.flow not in CPU_FLOWS):
            raise EdgemtlError(f"--device measures latency on a CPU board: it needs --budget latency_ms and a CPU "
                               f"target (host, arm64), not {kind} on {target.name}")
        self.kind, self.target, self.threads, self.runs = kind, target, threads, runs
        self.device = None if device is None else RpcDevice(parse_device(device))

    @property
    def unit(self) -> str:
        return COST_UNITS[self.kind]

    def __call__(self, model: nn.Module, spec: ModelSpec) -> tuple[float, dict[str, Any]]:
        if self.kind == "macs":
            return float(all_tasks_cost(model, spec).macs), prov(
                "static", source="edgemtl analysis", detail="MACs counted from the traced graph, all tasks, batch 1")
        if self.kind == "memory_kib":
            return self._memory(model, spec)
        if self.target.flow in FPGA_FLOWS:
            estimate = estimate_model(model, spec, self.target)
            return float(estimate["latency_ms"]), prov(
                "estimated", source="edgemtl FPGA roofline", device=self.target.name,
                detail=f"all tasks, {estimate['precision']}, the target's fabric (assumptions in docs/zcu104.md)")
        return self._host_latency(model, spec) if self.device is None else self._device_latency(model, spec)

    def _device_latency(self, model: nn.Module, spec: ModelSpec) -> tuple[float, dict[str, Any]]:
        """ONNX Runtime on the board, timed board-side by the profiler's runner (docs/arm64.md)."""
        with tempfile.TemporaryDirectory(prefix="edgemtl-tune-") as folder:
            path = export_all_tasks(model, spec, spec.task_names, Path(folder) / "model.onnx")
            task = TaskArtifacts(name="all-tasks", entry={}, bundle=Path(folder))
            try:   # the session stays open for the next configuration; the runner frees each model
                timing = self.device.run(task, ORT_FLOAT, path, example_input(spec, batch=1).numpy(), self.runs, 5.0)
            except SkipRuntime as exc:
                raise EdgemtlError(f"cannot time on {self.device.key}: {exc}") from None
        median, _, _ = timing.stats()
        return median, prov(self.device.provenance, source="onnxruntime over TVM RPC", device=self.device.description,
                            detail=f"median of {len(timing.samples_ms)} board-side runs, all tasks, batch 1")

    def close(self) -> None:
        if self.device is not None:
            self.device.close()

    def _host_latency(self, model: nn.Module, spec: ModelSpec) -> tuple[float, dict[str, Any]]:
        with tempfile.TemporaryDirectory(prefix="edgemtl-tune-") as folder:
            path = export_all_tasks(model, spec, spec.task_names, Path(folder) / "model.onnx")
            session = make_session(path, self.threads)
            feed = {session.get_inputs()[0].name: example_input(spec, batch=1).numpy()}
            latency = measure(lambda: session.run(None, feed), runtime="onnxruntime", threads=self.threads,
                              warmup=3, runs=self.runs, max_seconds=2.0)
        note = "" if self.target.flow == "cpu-onnxruntime" else f"; this host, not the {self.target.name} board"
        return latency.median, prov("measured", source="onnxruntime", device=latency.device,
                                    detail=f"median of {latency.runs} runs, all tasks, batch 1{note}")

    def _memory(self, model: nn.Module, spec: ModelSpec) -> tuple[float, dict[str, Any]]:
        precision = self.target.precisions[0]
        weight_bits, act_bits = (32, 32) if precision == "fp32" else (8, 8) if precision == "int8" \
            else precision_bits(precision)
        cost = all_tasks_cost(model, spec)
        weights = cost.params * weight_bits / 8
        activations = cost.peak_activation_bytes * act_bits / 32   # traced in float32
        return (weights + activations) / 1024, prov(
            "estimated", source="edgemtl analysis", device=self.target.name,
            detail=f"weights at {weight_bits} bits + peak live activations at {act_bits} bits (traced-graph liveness)")
