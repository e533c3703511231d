"""The part of a task path Deeploy can take when it cannot take the whole: the mappable prefix.

Deeploy's PULPOpen platform (deeploy-pulp 0.2.1) refuses a model with any layer it has no mapping for (see
`deeploy_onnx.unmapped_reason`; on our dense heads, the bilinear Resize). Rather than give no Deeploy code at all,
the flow hands Deeploy the largest part it can run on its own: every node that PULPOpen maps AND that reads nothing
computed by an unmapped node, directly or through other nodes. Those nodes, in the path's topological order, form a
closed integer graph from the path's input; its outputs are the tensors the remaining nodes (the unmapped ones and
everything downstream of them) read, e.g. on a dense head both the encoder's skip feature and the head's reduced deep
feature. Deeploy takes several graph outputs (it names them output_0, output_1, ... in order), also one that a later
layer of the prefix still reads, so the prefix is exported with all of them: nothing is concatenated or dropped.

Nodes that no output needs are left out of the prefix (they would only cost Deeploy time and memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgemtl.backends.deeploy_onnx import unmapped_reason
from edgemtl.model.intgraph import IntGraph


def mappable_prefix(graph: IntGraph) -> tuple[IntGraph, list[str]] | None:
    """The subgraph Deeploy can map that depends on no unmapped node, and its output tensors.

    Returns (prefix, outputs): `prefix` is an IntGraph of the same task and input whose nodes are the graph's own
    Node objects (shared, not copied), in the graph's order; `outputs` are the tensors, in the order they are
    computed, that the nodes outside the prefix read (plus the graph's output when the prefix computes it), and
    `prefix.output` is the last of them. When the whole graph maps, the prefix is the whole graph and outputs is
    [graph.output]. None when no node qualifies (the first node is unmapped, or only dead nodes would be left).
    """
    outside: set[str] = set()            # tensors computed by unmapped nodes or downstream of one
    kept = []
    for node in graph.nodes:
        if unmapped_reason(node, graph) is not None or any(i in outside for i in node.inputs):
            outside.add(node.output)
        else:
            kept.append(node)
    produced = {n.output for n in kept}
    read_outside = {i for n in graph.nodes if n.output in outside for i in n.inputs}
    outputs = [n.output for n in kept if n.output in read_outside or n.output == graph.output]
    # keep only what the outputs need
    needed, live = set(outputs), []
    for node in reversed(kept):
        if node.output in needed:
            live.append(node)
            needed.update(i for i in node.inputs if i in produced)
    live.reverse()
    if not live:
        return None
    tensors = {name: info for name, info in graph.tensors.items()
               if name == graph.input or name in {n.output for n in live}}
    prefix = IntGraph(graph.task, graph.input, outputs[-1], tensors, live)
    prefix.validate()
    return prefix, outputs


@dataclass
class Split:
    """Which layers of a task run in Deeploy's prefix, which run elsewhere, and the prefix's share of the MACs."""

    layers_in_deeploy: list[str]
    layers_elsewhere: list[str]
    prefix_macs: int
    task_macs: int
    outputs: list[dict[str, Any]]

    @property
    def macs_share(self) -> float:
        return self.prefix_macs / self.task_macs if self.task_macs else 0.0


def describe_split(graph: IntGraph, prefix: IntGraph, outputs: list[str]) -> Split:
    """The layer lists, MAC counts (edgemtl's per-layer count, `mcu_cost.layer_work`) and, per prefix output, the
    name Deeploy gives it (output_<i>), its tensor, shape, integer type and the layers outside that read it."""
    from edgemtl.analysis.mcu_cost import layer_work

    inside = {id(n) for n in prefix.nodes}
    macs = {id(n): layer_work(graph, n)[1] for n in graph.nodes}
    elsewhere = [n for n in graph.nodes if id(n) not in inside]
    described = []
    for index, tensor in enumerate(outputs):
        info = graph.tensors[tensor]
        described.append({"deeploy_name": f"output_{index}", "tensor": tensor, "shape": list(info.shape),
                          "dtype": info.dtype, "scale": info.scale,
                          "read_by": [n.name for n in elsewhere if tensor in n.inputs]})
    return Split([n.name for n in prefix.nodes], [n.name for n in elsewhere],
                 sum(macs[id(n)] for n in prefix.nodes), sum(macs.values()), described)
