"""One ONNX artifact that serves every task of a task-conditioned model ("zero-overhead task switching").

M3ViT switches tasks by changing the router's task vector only, so the shared weights (patch embedding,
attention, experts, norms) are stored once. The artifact takes `input` (float, (B,C,H,W), dynamic batch)
and `task_id` (int64, shape [1]; the task's position in `tasks`, 0..n-1). The backbone runs once with the
task vector gathered from a table of the selected tasks' embedding rows (an out-of-range id fails in that
Gather); a chain of ONNX `If` nodes then runs only the chosen head (`task_id == 0` -> first task, ..., the
final else -> last task). Metadata properties: `task_ids` (json `{task: id}`) and `task_output_shapes`
(json `{task: [per-sample shape]}`).

Output shapes, decided by experiment (onnx 1.23, onnxruntime 1.31): the heads give different ranks
((B,5,64,64) against (B,3)). ONNX Runtime runs an If whose branches differ in rank and returns each
branch's own shape, but `onnx.checker` rejects a graph output without a declared rank ("Field 'shape' of
'type' is required"), and no rank fits every branch. So each head's output is flattened to (B, elements)
inside its branch: ONE output `output` of shape (batch, elements) that passes the checker with full shape
inference; callers reshape it to (B, *task_output_shapes[task]). Per-task gated outputs would also
check, but they need every branch to emit n outputs (empty ones for the other tasks) for no gain.

The backbone and each head are exported separately with the TorchScript exporter (as `onnx_export`
does) and composed with `onnx` helpers: each head graph's names get a `<task>/` prefix and its input
becomes an outer-scope reference to the backbone's `features`.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from onnx import TensorProto, helper
from torch import nn

from edgemtl.model.onnx_export import INPUT_NAME, OPSET
from edgemtl.errors import EdgemtlError
from edgemtl.model.contract import example_input
from edgemtl.model.spec import ModelSpec

TASK_ID_NAME = "task_id"
OUTPUT_NAME = "output"
FEATURES_NAME = "features"


class TaskIdBackbone(nn.Module):
    """`M3ViT.backbone` with the task given as an id tensor, so the task vector is a Gather in the graph."""

    def __init__(self, model: nn.Module, rows: list[int]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("task_table", model.task_embed.detach()[rows].clone())

    def forward(self, x: torch.Tensor, task_id: torch.Tensor) -> torch.Tensor:
        m = self.model
        tokens = m.patch_embed(x).flatten(2).transpose(1, 2) + m.pos_embed
        task_vector = self.task_table.index_select(0, task_id).reshape(-1)
        for block in m.blocks:
            tokens = block(tokens, task_vector)
        tokens = m.norm(tokens)
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, *m.grid)


def check_switchable(model: nn.Module, tasks: list[str]) -> None:
    """Fail before exporting anything when the model cannot switch or `tasks` are not its tasks."""
    if not all(hasattr(model, name) for name in ("task_embed", "backbone", "task_index", "heads")):
        raise EdgemtlError(f"{type(model).__name__} is not task-conditioned (no task_embed/backbone): "
                           "there is nothing to switch, export its tasks separately")
    unknown = [t for t in tasks if t not in model.task_index]
    if unknown:
        raise EdgemtlError(f"unknown task(s) {unknown} for the switchable artifact; "
                           f"the model has {list(model.task_index)}")
    if len(tasks) < 2 or len(set(tasks)) != len(tasks):
        raise EdgemtlError(f"a switchable artifact needs at least two distinct tasks, got {tasks}")


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], inputs: list[str], batched: list[str],
            output: str, path: Path) -> onnx.ModelProto:
    quiet = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(path), input_names=inputs, output_names=[output], dynamo=False,
                              opset_version=OPSET, dynamic_axes={n: {0: "batch"} for n in [*batched, output]})
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgemtlError(f"ONNX export of the switchable artifact's {output} failed: {detail}") from None
    return onnx.load(str(path))


def _flat_output(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", "elements"])


def _head_branch(head: onnx.ModelProto, task: str) -> onnx.GraphProto:
    """The head as an If branch: names prefixed with the task, no inputs (reads the outer `features`)."""
    graph = onnx.compose.add_prefix_graph(head.graph, f"{task}/", rename_inputs=False)
    del graph.input[:]
    graph.name = f"{task}_head"
    return graph


def _chain(branches: list[onnx.GraphProto], name: str, first_id: int = 0) -> onnx.GraphProto:
    """`if task_id == first_id: branches[0] elif task_id == first_id + 1: ... else: branches[-1]`."""
    if len(branches) == 1:
        return branches[0]
    cond = f"{name}/is_task_{first_id}"
    nodes = [
        helper.make_node("Constant", [], [f"{cond}/id"],
                         value=helper.make_tensor("id", TensorProto.INT64, [1], [first_id])),
        helper.make_node("Equal", [TASK_ID_NAME, f"{cond}/id"], [cond]),
        helper.make_node("If", [cond], [name], then_branch=branches[0],
                         else_branch=_chain(branches[1:], f"{name}/else", first_id + 1)),
    ]
    return helper.make_graph(nodes, name, [], [_flat_output(name)])


def export_switchable(model: nn.Module, spec: ModelSpec, tasks: list[str], path: Path) -> Path:
    """Write the artifact for `tasks` (task_id = position in `tasks`) to `path`, checked by onnx.checker."""
    check_switchable(model, tasks)
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    backbone = TaskIdBackbone(model, [model.task_index[t] for t in tasks]).eval()
    x, task_id = example_input(spec, batch=2), torch.tensor([0])
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        main = _export(backbone, (x, task_id), [INPUT_NAME, TASK_ID_NAME], [INPUT_NAME], FEATURES_NAME,
                       Path(tmp) / "backbone.onnx")
        features = backbone(x, task_id)
        branches = [
            _head_branch(_export(nn.Sequential(model.heads[t], nn.Flatten(1)), (features,), [FEATURES_NAME],
                                 [FEATURES_NAME], OUTPUT_NAME, Path(tmp) / f"head{i}.onnx"), t)
            for i, t in enumerate(tasks)
        ]
    switch = _chain(branches, OUTPUT_NAME)
    main.graph.node.extend(switch.node)
    main.graph.output[0].CopyFrom(switch.output[0])
    main.graph.name = "switchable"
    shapes = {t: list(spec.task(t).output_shape) for t in tasks}
    helper.set_model_props(main, {"task_ids": json.dumps({t: i for i, t in enumerate(tasks)}),
                                  "task_output_shapes": json.dumps(shapes)})
    onnx.checker.check_model(main, full_check=True)
    onnx.save(main, str(path))
    return path
