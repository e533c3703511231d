"""MACs of a task-conditioned MoE model, counted the way it runs: top-k experts per token, per task.

A task's inference runs the backbone under that task's routing (k of E experts per token, plus the
router) and that task's head. Running every task with the same model repeats the backbone once per task,
since routing depends on the task. The comparison point M3ViT argues against is a dense ViT of equal
per-token compute (an MLP of hidden k*h in place of each MoE layer, no router) whose shared encoder runs
once for all heads ("encoder-focused" multi-task inference). All figures are batch 1 and come from
`analysis/cost.py` (the MoE layers traced with a balanced dispatch: exactly k*T routed tokens when E
divides k*T); the dense ViT's figures are derived from them, not measured on a trained dense model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgemtl.analysis.cost import ModelCost, model_cost, path_cost
from edgemtl.model.contract import example_input
from edgemtl.manifest import prov
from edgemtl.model.spec import ModelSpec


class _Backbone(nn.Module):
    def __init__(self, model: nn.Module, task: str) -> None:
        super().__init__()
        self.model, self.task = model, task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.backbone(x, self.task)


def moe_macs(model: nn.Module, spec: ModelSpec, tasks: list[str], cost: ModelCost | None = None) -> dict[str, Any]:
    """Per task: single-task MACs and their share of running all tasks; the dense-ViT comparison.
    `cost` is `model_cost(model, spec, tasks)` when the caller has it already (tracing is the slow part)."""
    cost = cost or model_cost(model, spec, tasks)
    x = example_input(spec)
    backbone = path_cost(_Backbone(model, tasks[0]), x).macs
    tokens = model.grid[0] * model.grid[1]
    router = sum(tokens * layer.router.in_features * layer.num_experts for layer in model.moe_layers())
    experts = sum(tokens * layer.top_k * 2 * layer.w1.shape[1] * layer.w1.shape[2] for layer in model.moe_layers())
    heads = {t: cost.tasks[t].macs - backbone for t in tasks}
    all_tasks = cost.all_tasks.macs
    dense_backbone = backbone - router
    dense_all = dense_backbone + sum(heads.values())
    return {
        "tokens_per_image": tokens,
        "backbone_macs": backbone,
        "router_macs": router,
        "expert_macs": experts,
        "all_tasks_same_model_macs": all_tasks,
        "dense_vit_all_tasks_macs": dense_all,
        "tasks": {t: {"macs": cost.tasks[t].macs, "head_macs": heads[t],
                      "share_of_all_tasks": cost.tasks[t].macs / all_tasks,
                      "reduction_vs_all_tasks": 1 - cost.tasks[t].macs / all_tasks,
                      "dense_vit_single_task_macs": dense_backbone + heads[t],
                      "share_of_dense_vit_all_tasks": cost.tasks[t].macs / dense_all}
                  for t in tasks},
        "provenance": prov("static", source="edgemtl analysis", detail="counted; dense-ViT figures derived"),
        "counting": "batch 1; MoE layers count top-k experts per token plus the router (edgemtl analysis); "
                    "the dense ViT of equal per-token compute is derived (MoE -> MLP of hidden k*h, no router)",
    }
