"""A first-order estimate of one generated HLS C++ design (generate.py) on an FPGA part, before Vitis HLS runs.

Why: the synthesis report is the real figure, but it needs Vitis HLS; whoever picks a task, a coverage or a model
size wants to know now whether a task design fits the part and roughly how fast it runs. Every figure here is
labelled estimated and the assumptions are returned with it.

The design as generated: one kernel call per integer-graph node, each a loop nest pipelined at II = 1 on its
innermost loop (one multiply-accumulate or one element per cycle), the tensors in static arrays (each reused once its
tensor is dead, arrays.py), the weights ROMs
(the MoE layers' expert weights too: the generated top passes them as ROMs into the ping-pong buffers).
- latency: the C simulation's count of pipelined loop iterations (kernels.h, EMH_CYCLES) per sample, at the
  project's clock. A lower bound of the schedule Vitis builds (no pipeline fill, loop entry, unpipelined control
  loop or m_axi latency), and an upper bound where HLS overlaps the ping-pong loads with the expert computing;
- DSP: each multiplying kernel instance one DSP48E2 for its int8 x int8 product, each requantisation
  (ACC_W-bit accumulator x 32-bit multiplier) ceil(ACC_W / 17) x 2 DSP48E2 (27 x 18 signed multipliers), softmax
  and layernorm a fixed amount for their wide scale products;
- memory: every array (weights, tables, requantisation multipliers, activations (one array per tensor alive at
  once: arrays.py), the MoE layers' buffers and token lists) in BRAM18 blocks at the block's aspect ratio for its
  word width (2048 x 9, 1024 x 18, 512 x 36; wider words side by side), except arrays of at most LUTRAM_MAX_BITS,
  which go to LUTRAM (64 bits per LUT);
- LUT: a fixed amount per kernel instance (loop counters, address generation, pipeline registers, the FSM), per
  requantisation (rounding, clipping), the LUTRAM above, and the AXI interfaces (two m_axi, one s_axilite).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgemtl.analysis.fpga_cost import FabricSpec
from edgemtl.backends.hls_cpp.arrays import array_bits, graph_arrays
from edgemtl.backends.hls_cpp.generate import CLOCK_PERIOD_NS, moe_widths, node_widths
from edgemtl.manifest import prov
from edgemtl.model.intgraph import INT8_PARAMS, IntGraph, Node

if TYPE_CHECKING:
    from edgemtl.backends.hls_cpp.multitask import MultiTaskSources

PROVENANCE = prov("estimated", source="edgemtl HLS C++ design estimate (backends/hls_cpp/estimate.py)")
MAC_OPS = ("conv", "conv_transpose", "gemm", "matmul")
LUTRAM_MAX_BITS = 1024      # arrays this small become LUTRAM (Vitis's default storage choice, roughly)
LUT_PER_KERNEL = 500        # loop counters, address generation, pipeline registers, FSM per kernel instance (rough)
LUT_PER_REQUANT = 300       # rounding, shifting and clipping of one requantisation (rough)
LUT_INTERFACES = 2 * 2000 + 300   # two m_axi adapters (input, output) and the s_axilite control (rough)
DSP_WIDE_SCALE = 8          # softmax / layernorm: their 48 x 56-bit scale products and divisions (rough)
BRAM18_DEPTH = {9: 2048, 18: 1024, 36: 512}   # BRAM18 aspect ratios by word width


@dataclass
class DesignEstimate:
    """One task design's estimated resources and, when a C simulation counted them, its cycles."""

    part: str
    clock_mhz: float
    dsp: int
    lut: int
    bram18: int
    kernels: int
    array_bits: int
    utilisation: dict[str, float]
    cycles_per_sample: list[int] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)

    @property
    def latency_ms(self) -> float | None:
        return max(self.cycles_per_sample) / (self.clock_mhz * 1e3) if self.cycles_per_sample else None

    def fits(self, lut_share: float = 1.0) -> bool:
        """Within the part, the LUTs within `lut_share` of the part's (headroom for routing and timing closure)."""
        return self.utilisation["lut"] <= lut_share and self.utilisation["dsp"] <= 1 and self.utilisation["bram18"] <= 1

    def to_dict(self) -> dict[str, Any]:
        latency = self.latency_ms
        return asdict(self) | {"latency_ms": latency, "fps": 1e3 / latency if latency else None, "fits": self.fits(),
                               "provenance": PROVENANCE}


def bram18_blocks(elements: int, bits: int) -> int:
    """BRAM18 blocks of an array of `elements` words of `bits` each (0 when it is small enough for LUTRAM)."""
    if elements * bits <= LUTRAM_MAX_BITS:
        return 0
    for width, depth in BRAM18_DEPTH.items():
        if bits <= width:
            return math.ceil(elements / depth)
    return math.ceil(bits / 36) * math.ceil(elements / 512)


def _arrays(graph: IntGraph) -> list[tuple[int, int]]:
    """(elements, bits) of every array the generated design declares: activations (reused, arrays.py), weights, MoE
    buffers."""
    arrays = array_bits(graph_arrays(graph)[1])
    for node in graph.nodes:
        for key, values in node.params.items():
            arrays.append((int(np.asarray(values).size), 8 if key in INT8_PARAMS else 32))
        if node.op == "moe":
            arrays += moe_arrays(graph, node)
    return arrays


def moe_arrays(graph: IntGraph, node: Node) -> list[tuple[int, int]]:
    """The moe kernel's own arrays (kernels.h): token lists and gates, accumulators, the token and hidden tiles, two
    expert buffers."""
    experts, hidden, d = node.params["fc1"].shape
    tokens = graph.tensors[node.inputs[0]].shape[0]
    acc_bits = moe_widths(graph, node)[-2]
    buffer = [(hidden * d, 8), (d * hidden, 8), (hidden, 32), (hidden, 32), (d, 32), (d, 32)]
    return [(experts * tokens, max(tokens - 1, 1).bit_length()), (experts * tokens, 8), (tokens * d, acc_bits),
            (tokens * d, 8), (tokens * hidden, 8), *buffer, *buffer]


def _requant_dsp(acc_bits: int) -> int:
    return math.ceil(acc_bits / 17) * 2


def _kernel_cost(graph: IntGraph, node: Node) -> tuple[int, int, int]:
    """(kernel instances, DSPs, requantisations) of one node as generate.py emits it."""
    if node.op == "flatten":
        return 0, 0, 0
    if node.op == "moe":
        widths = moe_widths(graph, node)   # router, fc1, fc2 (acc, rq), then the output's
        requants = [widths[0], widths[2], widths[4], widths[6]]
        return 5, 3 + sum(_requant_dsp(bits) for bits in requants), 4   # route, load, expert, zero, output
    instances = len(node.inputs) if node.op == "concat" else 1
    dsp = 1 if node.op in MAC_OPS else 0
    requants = 0
    if "mul" in node.params:
        acc_bits, _ = node_widths(graph, node)
        dsp, requants = dsp + _requant_dsp(acc_bits), 1
    if node.op in ("softmax", "layernorm"):
        dsp += DSP_WIDE_SCALE
    return instances, dsp, requants


def estimate_design(graph: IntGraph, fabric: FabricSpec, cycles_per_sample: list[int] | None = None) -> DesignEstimate:
    """The generated design of `graph` on `fabric` (resources from the graph; cycles from an EMH_CYCLES C simulation
    when given)."""
    return estimate_calls([(graph, node) for node in graph.nodes], _arrays(graph), fabric, cycles_per_sample)


def estimate_calls(calls: list[tuple[IntGraph, Node]], arrays: list[tuple[int, int]], fabric: FabricSpec,
                   cycles_per_sample: list[int] | None = None, copies: int = 2) -> DesignEstimate:
    """A design of the kernel `calls` (each a node of a graph, as generate.py emits it) and the `arrays` it declares,
    (elements, bits) each; `copies`: its input and output copy kernels."""
    kernels = dsp = requants = 0
    for graph, node in calls:
        k, d, r = _kernel_cost(graph, node)
        kernels, dsp, requants = kernels + k, dsp + d, requants + r
    kernels += copies
    bram18 = sum(bram18_blocks(n, bits) for n, bits in arrays)
    lutram = sum(math.ceil(n * bits / 64) for n, bits in arrays if n * bits <= LUTRAM_MAX_BITS)
    lut = kernels * LUT_PER_KERNEL + requants * LUT_PER_REQUANT + lutram + LUT_INTERFACES
    clock = 1e3 / CLOCK_PERIOD_NS
    return DesignEstimate(
        part=fabric.part, clock_mhz=clock, dsp=dsp, lut=lut, bram18=bram18, kernels=kernels,
        array_bits=sum(n * bits for n, bits in arrays),
        utilisation={"dsp": dsp / fabric.dsp, "lut": lut / fabric.lut, "bram18": bram18 / fabric.bram18},
        cycles_per_sample=list(cycles_per_sample or []),
        assumptions=[
            "the design as generated: one kernel per node, innermost loops pipelined at II = 1, tensors in static "
            "arrays reused once dead, "
            "weights (the kept experts' too) in on-chip ROM",
            f"latency: the C simulation's pipelined loop iterations at {clock:g} MHz, one cycle each; pipeline fill, "
            "loop entry, unpipelined control loops and m_axi latency not counted, ping-pong loads not overlapped",
            f"DSP48E2: 1 per int8 multiply-accumulate kernel, ceil(accumulator bits / 17) x 2 per requantisation, "
            f"{DSP_WIDE_SCALE} per softmax / layernorm",
            f"BRAM18 per array at 2048 x 9 / 1024 x 18 / 512 x 36; arrays of at most {LUTRAM_MAX_BITS} bits in "
            "LUTRAM (64 bits per LUT)",
            f"LUT: {LUT_PER_KERNEL} per kernel instance, {LUT_PER_REQUANT} per requantisation, {LUT_INTERFACES:,} "
            "for the AXI interfaces: rough figures; Vitis HLS's synthesis report replaces them",
        ],
    )


def estimate_multitask(sources: "MultiTaskSources", fabric: FabricSpec,
                       cycles_per_sample: list[int] | None = None) -> DesignEstimate:
    """The design serving every task (multitask.py): its kernel calls (a call under `switch (task)` counts once per
    form), its ROMs, tensors and MoE engines; one input copy and one output copy per task."""
    arrays = sources.rom_bits + sources.activation_bits + sources.engine_bits
    return estimate_calls(sources.calls, arrays, fabric, cycles_per_sample, copies=1 + len(sources.tasks))


def cycles_from_log(log: str) -> list[int]:
    """The per-sample pipelined-iteration counts an EMH_CYCLES test bench prints to stderr, in sample order."""
    counts = {}
    for line in log.splitlines():
        if line.startswith("EMH_CYCLES "):
            _, sample, count = line.split()
            counts[int(sample)] = int(count)
    return [counts[s] for s in sorted(counts)]
