"""Which task paths a target can take, answered before any long step runs (`edgemtl inspect --target T`).

Each task's float graph (the one every flow starts from: BatchNorm and shape arithmetic folded) is put through the
checks of the target's own lowering: the int8 converter's for the GAP9 and for an MoE model on the ZCU104 (its HLS
C++ starts from the integer graph), hls4ml's ONNX handlers for any other model on the ZCU104. The
CPU targets run any graph the exporter writes (ONNX Runtime, TVM), so they refuse nothing here. The same checks run
inside `compile`, which records a refused task and compiles the others.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from torch import nn

from edgemtl.errors import EdgemtlError
from edgemtl.model.spec import ModelSpec
from edgemtl.targets import Target

CHECKED_FLOWS = ("mcu-gap9", "fpga-hls4ml")


def task_support(model: nn.Module, spec: ModelSpec, target: Target, tasks: list[str]) -> dict[str, str | None]:
    """{task: None when the target's lowering takes every op of its path, else the one-line reason it does not}."""
    if target.flow not in CHECKED_FLOWS:
        return dict.fromkeys(tasks)
    from edgemtl.passes.partition_experts import has_experts
    from edgemtl.passes.quantize_int8 import float_graph

    lowering = "int8" if target.flow == "mcu-gap9" or has_experts(model) else "hls4ml"  # MoE on the FPGA: HLS C++
    support: dict[str, str | None] = {}
    for task in tasks:
        with tempfile.TemporaryDirectory(prefix="edgemtl-ops-") as folder:
            try:
                graph = float_graph(model, spec, task, Path(folder))
            except Exception:  # noqa: BLE001 - only an early answer: the lowering itself still checks later
                support[task] = None
                continue
        support[task] = _reason(graph, task, lowering)
    return support


def _reason(graph, task: str, lowering: str) -> str | None:
    if lowering == "hls4ml":
        from edgemtl.backends.hls4ml_backend import float_graph_refusal

        refusal = float_graph_refusal(graph, task)
        return None if refusal is None else str(refusal)
    from edgemtl.passes.quantize_int8 import check_int8_ops

    try:
        check_int8_ops(graph, task)
    except EdgemtlError as exc:
        return str(exc)
    return None


def target_note(model: nn.Module, target: Target) -> str | None:
    """What a compile for this target does differently for the model as a whole (the FPGA flow and an MoE model)."""
    from edgemtl.passes.partition_experts import has_experts

    if target.flow == "fpga-hls4ml" and has_experts(model):
        from edgemtl.flows.fpga_hls_cpp import MOE_NOTE

        return MOE_NOTE
    return None
