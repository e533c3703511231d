"""Read-only cost facts of each task path: parameters used, MACs and peak activation memory.

Everything is read from a `torch.export` graph of the path, pruned to the nodes its outputs depend on, so a
path is charged only for what it computes: another task's head costs it nothing, even in a model whose
`forward` has no `task=` keyword and runs every head anyway.

Counting conventions (batch 1, the example's dtype):
- MACs count only the ops that dominate edge inference: convolutions (grouped, depthwise and transposed),
  linear layers, matrix products (mm / addmm / bmm / baddbmm / matmul / mv / addmv / dot / einsum) and
  scaled dot-product attention. Elementwise ops, activations, norms, pooling, softmax and bias additions
  count zero. Attention costs 2*L*S*D per head (Q@K^T plus weights@V, with D the head size), the same
  as writing it with two matmuls. A convolution counts every output position's full window, padding
  included (the usual convention, and FlopCounterMode's). Subgraphs of control-flow operators
  (`torch.cond`) are not entered.
- Peak activation memory is a liveness sweep over the graph in execution order: a tensor lives from the
  node that makes it to its last use, and graph outputs live to the end. Tensors are tracked by storage,
  so views and reshapes that alias their input cost nothing extra (they extend the input's life instead),
  a reshape that has to copy counts as a new tensor, and dropout (a no-op in inference) aliases its input.
  The input counts; parameters, buffers, constants and views of them do not.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import fx, nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._pytree import tree_leaves

from edgemtl.errors import EdgemtlError
from edgemtl.manifest import prov
from edgemtl.model.contract import AllTasks, TaskPath, example_input
from edgemtl.model.spec import ModelSpec

MAC_KINDS = ("conv", "linear", "matmul", "attention")
COST_PROVENANCE = prov("static", source="edgemtl analysis (torch.export)", detail="counted from the traced graph, batch 1")
ACTIVATION_PROVENANCE = prov("estimated", source="edgemtl analysis (torch.export)",
                             detail="liveness of the traced graph's float32 tensors, not a measured allocation")

_CONV = {"conv1d", "conv2d", "conv3d", "convolution", "_convolution"}
_CONV_TRANSPOSE = {"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
# Matrix products and the argument index of their left matrix; MACs = output elements * its last dim.
_MATMUL_LEFT = {"mm": 0, "matmul": 0, "bmm": 0, "mv": 0, "dot": 0, "vdot": 0, "addmm": 1, "baddbmm": 1, "addmv": 1}
_ATTENTION = {
    "scaled_dot_product_attention",
    "_scaled_dot_product_attention_math",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
}
_DROPOUT = {"dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout"}


@dataclass(frozen=True)
class PathCost:
    """What one exported path costs at batch 1."""

    params: int
    macs: int
    peak_activation_bytes: int
    largest_tensor_bytes: int
    param_names: frozenset[str]
    macs_by_op: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "macs": self.macs,
            "peak_activation_bytes": self.peak_activation_bytes,
            "largest_tensor_bytes": self.largest_tensor_bytes,
            "macs_by_op": dict(self.macs_by_op),
            "cost_provenance": COST_PROVENANCE,
            "activation_provenance": ACTIVATION_PROVENANCE,
        }


@dataclass(frozen=True)
class ModelCost:
    """Per-task path costs, the cost of all analysed tasks run together, and how much they share."""

    tasks: dict[str, PathCost]
    all_tasks: PathCost
    total_params: int
    shared_params: dict[str, int]

    def shared_fraction(self, task: str) -> float:
        """Share of the task's parameters that some other analysed task also uses (0 for no parameters)."""
        params = self.tasks[task].params
        return self.shared_params[task] / params if params else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; tasks sit under "tasks" so no task name can clash with "all_tasks"."""
        return {
            "tasks": {
                name: {
                    **cost.to_dict(),
                    "shared_params": self.shared_params[name],
                    "shared_fraction": self.shared_fraction(name),
                }
                for name, cost in self.tasks.items()
            },
            "all_tasks": self.all_tasks.to_dict(),
            "total_params": self.total_params,
        }


def path_cost(module: nn.Module, example: torch.Tensor) -> PathCost:
    """Cost of any single-input module on `example`; parameter names as in `module.named_parameters()`."""
    with _eval_mode(module):
        return _trace_cost(module, example, "the module")


def model_cost(model: nn.Module, spec: ModelSpec, tasks: list[str] | None = None) -> ModelCost:
    """Cost of each task path of a contract model, and of the chosen tasks (all by default) together.

    Sharing is counted among the analysed tasks only: a parameter is shared when at least one other of
    them uses it too.
    """
    names = [t.name for t in spec.select(tasks)]
    x = example_input(spec)
    with _eval_mode(model):
        per_task = {
            name: _strip_prefix(_trace_cost(TaskPath(model, name), x, f"task path {name!r}")) for name in names
        }
        together = _strip_prefix(_trace_cost(AllTasks(model, names), x, f"the path of tasks {', '.join(names)}"))
    sizes = {name: p.numel() for name, p in model.named_parameters()}
    shared = {}
    for name, cost in per_task.items():
        others = set().union(*(c.param_names for n, c in per_task.items() if n != name))
        shared[name] = sum(sizes[p] for p in cost.param_names & others)
    return ModelCost(
        tasks=per_task,
        all_tasks=together,
        total_params=sum(sizes.values()),
        shared_params=shared,
    )


def all_tasks_cost(model: nn.Module, spec: ModelSpec) -> PathCost:
    """The cost of every task run together, one trace (a search costs many configurations and needs only this)."""
    with _eval_mode(model):
        return _strip_prefix(_trace_cost(AllTasks(model, spec.task_names), example_input(spec), "the model"))


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode for the analysis, then every submodule's own flag back (some may have been frozen apart)."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


# Loggers that print a traceback or a whole graph before export raises; the raised error says it in one line.
_NOISY_LOGGERS = ("torch._subclasses.fake_tensor", "torch.fx.experimental.symbolic_shapes", "torch.export._trace")


@contextmanager
def _quiet_export_logs() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with redirect_stderr(io.StringIO()):  # export also prints its partial graph straight to stderr
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@contextmanager
def _static_dispatch(module: nn.Module) -> Iterator[None]:
    """Mixture-of-experts layers with a data-dependent dispatch trace with static shapes instead."""
    layers = [m for m in module.modules() if hasattr(m, "static_dispatch")]
    for layer in layers:
        layer.static_dispatch = True
    try:
        yield
    finally:
        for layer in layers:
            layer.static_dispatch = False


def _trace_cost(module: nn.Module, example: torch.Tensor, what: str) -> PathCost:
    try:
        with _quiet_export_logs(), _static_dispatch(module):
            exported = torch.export.export(module.eval(), (example,))
    except EdgemtlError:
        raise
    except Exception as exc:  # any tracing failure means this path cannot be analysed as written
        lines = str(exc).strip().splitlines()
        detail = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
        raise EdgemtlError(f"{what} could not be traced by torch.export: {detail}") from None
    return _graph_cost(exported, module)


def _strip_prefix(cost: PathCost) -> PathCost:
    """Parameter names of the wrapped model, without the contract wrapper's `model.` prefix."""
    return replace(cost, param_names=frozenset(n.removeprefix("model.") for n in cost.param_names))


def _graph_cost(exported: torch.export.ExportedProgram, module: nn.Module) -> PathCost:
    graph = exported.graph
    live = _needed_nodes(graph)
    signature = exported.graph_signature
    # Export may name a tied parameter by another of its paths; use the one named_parameters() reports.
    canonical = {id(p): name for name, p in module.named_parameters()}
    param_names = {}
    for node in live:
        if node.op == "placeholder" and node.name in signature.inputs_to_parameters:
            param = module.get_parameter(signature.inputs_to_parameters[node.name])
            param_names[canonical[id(param)]] = param.numel()
    macs_by_op = dict.fromkeys(MAC_KINDS, 0)
    for node in graph.nodes:
        if node in live and node.op == "call_function":
            kind, macs = _node_macs(node)
            if kind:
                macs_by_op[kind] += macs
    peak, largest = _activation_peak(graph, live, set(signature.user_inputs))
    return PathCost(
        params=sum(param_names.values()),
        macs=sum(macs_by_op.values()),
        peak_activation_bytes=peak,
        largest_tensor_bytes=largest,
        param_names=frozenset(param_names),
        macs_by_op=macs_by_op,
    )


def _needed_nodes(graph: fx.Graph) -> set[fx.Node]:
    """Nodes the outputs depend on: export keeps dead code (heads whose outputs are dropped)."""
    output = next(n for n in reversed(graph.nodes) if n.op == "output")
    needed, stack = {output}, [output]
    while stack:
        for parent in stack.pop().all_input_nodes:
            if parent not in needed:
                needed.add(parent)
                stack.append(parent)
    return needed


def _val(arg: Any) -> Any:
    return arg.meta.get("val") if isinstance(arg, fx.Node) else arg


def _op_name(node: fx.Node) -> str:
    target = node.target
    packet = getattr(target, "overloadpacket", None)
    return packet.__name__ if packet is not None and getattr(target, "namespace", "") == "aten" else ""


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _node_macs(node: fx.Node) -> tuple[str, int]:
    """The MAC kind and count of one aten node; ("", 0) for ops that are not counted."""
    op = _op_name(node)
    out = _val(node)
    if op == "linear":
        x, weight = _val(node.args[0]), _val(node.args[1])
        return "linear", x.numel() * (weight.shape[0] if weight.dim() == 2 else 1)
    if op in _CONV or op in _CONV_TRANSPOSE:
        x, weight = _val(node.args[0]), _val(node.args[1])
        transposed = op in _CONV_TRANSPOSE or (
            op in {"convolution", "_convolution"} and bool(_arg(node, 6, "transposed", False))
        )
        # weight is (Cout, Cin/groups, *k), or (Cin, Cout/groups, *k) when transposed: a conv gathers one
        # window per output element, a transposed conv scatters one per input element.
        window = math.prod(weight.shape[1:])
        return "conv", (x.numel() if transposed else out.numel()) * window
    if op in _MATMUL_LEFT:
        left = _val(node.args[_MATMUL_LEFT[op]])
        return "matmul", out.numel() * left.shape[-1]
    if op == "einsum":
        return "matmul", _einsum_macs(node.args[0], [_val(a) for a in node.args[1]])
    if op in _ATTENTION:
        q, k, v = (_val(a) for a in node.args[:3])
        heads = math.prod(q.shape[:-2])
        return "attention", heads * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
    return "", 0


def _einsum_macs(equation: str, operands: list[torch.Tensor]) -> int:
    """Left-to-right pairwise contraction, torch's own order without opt_einsum: each step costs the
    product of every index it touches."""
    lhs, arrow, rhs = equation.replace(" ", "").partition("->")
    raw = lhs.split(",")
    hidden = [op.dim() - len(t.replace("...", "")) for t, op in zip(raw, operands, strict=True)]  # dims under "..."
    width = max((n for t, n in zip(raw, hidden) if "..." in t), default=0)
    terms = [_name_ellipsis(t, n) for t, n in zip(raw, hidden)]
    sizes: dict[str, int] = {}
    for term, operand in zip(terms, operands):
        for letter, size in zip(term, operand.shape):
            sizes[letter] = max(sizes.get(letter, 1), int(size))
    if arrow:
        out = set(_name_ellipsis(rhs, width))
    else:  # implicit output: the broadcast dims and every letter used once
        joined = "".join(raw)
        out = {c for c in joined if c != "." and joined.count(c) == 1} | set(_name_ellipsis("...", width))
    macs, current = 0, set(terms[0])
    for i in range(1, len(terms)):
        touched = current | set(terms[i])
        macs += math.prod(sizes[c] for c in touched)
        current = touched & (set("".join(terms[i + 1 :])) | out)
    return macs


def _name_ellipsis(term: str, count: int) -> str:
    """Give the dims under "..." private names aligned from the right, so broadcast dims share a name."""
    if "..." not in term:
        return term
    return term.replace("...", "".join(chr(0x1000 + i) for i in reversed(range(count))))


def _activation_peak(graph: fx.Graph, live: set[fx.Node], user_inputs: set[str]) -> tuple[int, int]:
    """Peak bytes of simultaneously-live activation storages, and the largest one."""
    nodes = list(graph.nodes)
    order = {node: i for i, node in enumerate(nodes)}
    storages: dict[fx.Node, list[StorageWeakRef]] = {}
    weights: set[StorageWeakRef] = set()
    birth: dict[StorageWeakRef, int] = {}
    death: dict[StorageWeakRef, int] = {}
    size: dict[StorageWeakRef, int] = {}
    for i, node in enumerate(nodes):
        if node not in live or node.op == "output":
            continue
        if _op_name(node) in _DROPOUT and not _arg(node, 2, "train", True):
            storages[node] = storages.get(node.args[0], [])
            continue
        keys = []
        for t in tree_leaves(node.meta.get("val")):
            if not isinstance(t, torch.Tensor):
                continue
            key = StorageWeakRef(t.untyped_storage())
            keys.append(key)
            if node.op in {"placeholder", "get_attr"} and node.name not in user_inputs:
                weights.add(key)
            elif key not in birth and key not in weights:
                birth[key], size[key] = i, t.untyped_storage().nbytes()
        storages[node] = keys
    for node in nodes:
        if node not in live:
            continue
        for key in storages.get(node, []):
            death[key] = max(death.get(key, 0), order[node])
        for parent in node.all_input_nodes:
            for key in storages.get(parent, []):
                death[key] = max(death.get(key, 0), order[node])
    change = [0] * (len(nodes) + 1)
    for key, start in birth.items():
        change[start] += size[key]
        change[death[key] + 1] -= size[key]
    peak = running = 0
    for delta in change:
        running += delta
        peak = max(peak, running)
    return peak, max(size.values(), default=0)
