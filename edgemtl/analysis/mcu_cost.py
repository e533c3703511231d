"""Where one task path's integer graph lives on a GAP9-class MCU, and a first-order cycle / energy estimate.

Why: before any Deeploy tiling or board run, a user wants to know whether a task fits L2 (or needs the
external L3 RAM) and roughly how long and how much energy an inference costs on the 8-core cluster. Every
number here is *estimated* (an analytical model; the returned dicts list its assumptions); qemu instruction
counts, when given, are *simulated* and are never called cycles.

Placement (per task path; bytes):
- arena   = `plan_arena(graph, alignment).arena_bytes` (every activation, liveness-shared; stays in L2)
- weights = per node: int8 weights x 1 + int32 mul / add x 4 (what `backends.c` stores)
- code    = CODE_BASE_BYTES + CODE_BYTES_PER_LAYER x layers (an allowance, see the constants) + MoE layers' static scratch
- If arena + weights + code <= L2: everything in L2 ("fits-l2").
- Else weight blocks (one node's parameters each) move to L3, largest first, until
  arena + code + kept weights + staging <= L2, where staging = 2 x min(largest spilled block, L1) is the
  double-buffered L2 landing zone of weights streamed from L3 ("weights-in-l3").
- Else activations go to L3 too ("activations-in-l3"; only when even with every weight in L3 the arena does not
  fit): activation buffers (a tensor and the flattens aliasing it) move to L3, largest first, until
  L2 arena (the liveness plan of the buffers left in L2) + code + weight staging + activation staging <= L2, where
  activation staging = max over layers of sum over the layer's L3-resident inputs and output of
  2 x min(tensor bytes, L1) (each streamed through a double-buffered L2 window). Then weight blocks come back
  from L3 into L2, largest first, while it still fits. Extra L3 traffic per inference: every layer reads its
  L3-resident inputs and writes its L3-resident output once (`activation_l3_traffic_bytes`).
- Else "too-big": the verdict names the memory (L2: code + staging even with every weight and activation in
  L3, or activations + weights + code with no L3 at all; or L3: the spilled weights + activations, which L3
  holds without liveness sharing) and by how many bytes it overflows. Nothing raises.
- Verdict: "fits" for fits-l2, weights-in-l3 and activations-in-l3 (each says what streams from L3), "does not
  fit" for too-big; `fits` holds it as a bool.

Cycles per layer (f = cluster clock; B2, B3 = L2<->L1 and L3->L2 bandwidths in bytes per cycle at f):
- compute  = work / throughput, with work and throughput from the layer's kernel class (KERNELS below:
  MACs for conv / gemm, output elements for elementwise and resize, window elements for pools; the
  data-movement ops cost DMA only)
- dma_l2   = (input + output + parameter bytes) / (B2 x DMA_EFFICIENCY): each byte crosses L2<->L1 once, except in
  the token layers analysis/l1_tiling.py tiles (attention matmuls, gemms over token rows, softmax / layernorm rows),
  whose re-reads are counted; a layer whose smallest tile does not fit L1 is listed (`l1_overflows`)
- dma_l3   = (spilled parameter bytes + the layer's L3-resident input / output bytes) / (B3 x L3_EFFICIENCY),
  every inference
- cycles   = max(compute, dma_l2) + dma_l3  (L2<->L1 double-buffered under compute; L3 not overlapped)
- latency  = sum(cycles) / f; energy = POWER_MW x latency
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from edgemtl.analysis.arena_plan import _alias_roots, _place, _round_up, liveness, plan_arena, tensor_bytes
from edgemtl.analysis.l1_tiling import tile_layer
from edgemtl.errors import EdgemtlError
from edgemtl.manifest import prov
from edgemtl.model.intgraph import INT8_PARAMS, IntGraph, Node
from edgemtl.targets import Target

PROVENANCE = prov("estimated", source="edgemtl analytical model (analysis/mcu_cost.py)",
                  detail="PULP-NN-class int8 kernels on GAP9's 8-core cluster, DMA at the target's bandwidths")
SIM_PROVENANCE = prov("simulated", source="qemu rv32imac", detail="one core, no SIMD")

# -- the allowance for code in L2 ------------------------------------------------------------------------
# Our kernels.c compiles to ~10.4 KB of rv32imac text at -O2 (riscv64-unknown-elf-gcc 12, picolibc); the
# PMSIS runtime, libc printf, stacks of the FC and the cluster and the harness come on top. 64 KiB covers
# them with margin; each layer adds its call and its constant geometry / requantisation structs.
CODE_BASE_BYTES = 65536
CODE_BYTES_PER_LAYER = 256

# -- DMA efficiencies (share of the target's peak bandwidth a transfer sustains) --------------------------
DMA_EFFICIENCY = 0.8   # L2<->L1 cluster DMA: 2-D tile descriptors, setup per tile (edgemtl assumption)
L3_EFFICIENCY = 0.5    # HyperBus: command/address phase and latency per burst (edgemtl assumption)

# -- power ----------------------------------------------------------------------------------------------
# GreenWaves' GAP8/GAP9 comparison page: 150.8 GOPS at 0.33 mW/GOP = 49.8 mW at full load; GreenWaves' GAP9
# launch (eeNews Europe, 2020): "50 GOPS ... using only 50 mW". A whole-SoC, full-load, typical figure: it
# does not vary with the layer type here, and a real board's figure depends on voltage and frequency.
POWER_MW = 50.0

# Published context, not a result of this model: TinyMyo (Fasulo et al., "TinyMyo: a Tiny Foundation Model for
# Flexible EMG Signal Processing at the Edge", arXiv:2512.15729), a 3.6M-parameter Transformer encoder
# deployed int8 on GAP9: 0.785 s per inference, 44.91 mJ, 57.18 mW average power (measured by its authors).
TINYMYO = {"model": "TinyMyo (Fasulo et al., arXiv:2512.15729)", "parameters": 3_600_000, "device": "GAP9",
           "latency_s": 0.785, "energy_mj": 44.91, "power_mw": 57.18,
           "provenance": prov("measured", source="published by TinyMyo's authors", device="GAP9",
                              detail="not this model")}


@dataclass(frozen=True)
class Kernel:
    """Sustained throughput of one kernel class on the 8-core cluster, and where the figure comes from."""

    throughput: float   # work units per cluster cycle
    unit: str           # what `work` counts
    source: str


KERNELS: dict[str, Kernel] = {
    "conv": Kernel(15.5, "MAC", "PULP-NN (Garofalo et al., Phil. Trans. R. Soc. A 378:20190155, 2020): up to "
                                "15.5 int8 MACs/cycle on an 8-core PULP cluster (3x3 convolution); a peak figure"),
    "pointwise": Kernel(12.0, "MAC", "edgemtl assumption: ~80% of the 3x3 peak; same PULP-NN matmul kernel, but a "
                                     "1x1 layer does 9x fewer MACs per requantised output"),
    "depthwise": Kernel(4.0, "MAC", "edgemtl assumption: one input channel per output leaves the 4x8-bit SIMD dot "
                                    "product mostly idle; depthwise kernels run several times below the dense peak"),
    "gemm": Kernel(8.0, "MAC", "edgemtl assumption: ~1 MAC per core-cycle; a batch-1 fully connected layer reuses "
                               "no weight, so loads bound the SIMD dot products"),
    "elementwise": Kernel(1.0, "output element", "edgemtl assumption: ~8 instructions per output per core "
                                                 "(loads, multiplies, requantise, clip, store), 8 cores"),
    "pool": Kernel(4.0, "window element", "edgemtl assumption: ~2 instructions (load, add or max) per element per "
                                          "core, 8 cores"),
    "resize": Kernel(0.5, "output element", "edgemtl assumption: ~16 instructions per output per core (four taps, "
                                            "index arithmetic, requantise), 8 cores"),
    "matmul": Kernel(8.0, "MAC", "edgemtl assumption: the gemm figure for a product of two activations (attention "
                                 "scores and context): int8 SIMD dot products, neither operand reused from registers"),
    "normalise": Kernel(0.25, "input element", "edgemtl assumption: ~32 instructions per element per core for the "
                                               "integer softmax / layernorm (three passes over each row, int64 "
                                               "arithmetic on a 32-bit core, a division or isqrt per row), 8 cores"),
    "copy": Kernel(0.0, "byte", "data movement only: costs its DMA traffic, no compute"),
}

Status = Literal["fits-l2", "weights-in-l3", "activations-in-l3", "too-big"]


@dataclass(frozen=True)
class McuSpec:
    """What the placement and the estimate read from a target (explicit, so tests can shrink memories)."""

    l1_bytes: int
    l2_bytes: int
    l3_bytes: int | None            # None: no external RAM
    clock_mhz: float                # cluster clock
    l2_l1_gbps: float               # cluster DMA peak, GB/s
    l3_gbps: float                  # L3 -> L2 peak, GB/s (0 when there is no L3)
    source: str = ""

    @classmethod
    def from_target(cls, target: Target) -> "McuSpec":
        """L1 / L2 are the on-chip levels named l1 / l2, L3 the first off-chip level; the cluster's clock."""
        by_name = {m.name: m for m in target.memory}
        cluster = [c for c in target.compute if c.kind == "cluster"]
        if "l1" not in by_name or "l2" not in by_name or not cluster:
            raise EdgemtlError(f"target {target.name} needs memories named l1 and l2 and a compute unit of kind "
                               "'cluster' for the MCU cost model")
        l3 = next((m for m in target.memory if m.level == "off-chip"), None)
        return cls(l1_bytes=by_name["l1"].size_bytes, l2_bytes=by_name["l2"].size_bytes,
                   l3_bytes=None if l3 is None else l3.size_bytes, clock_mhz=cluster[0].clock_mhz,
                   l2_l1_gbps=by_name["l2"].bandwidth_gbps, l3_gbps=0.0 if l3 is None else l3.bandwidth_gbps,
                   source=target.source)

    def bytes_per_cycle(self, gbps: float) -> float:
        return gbps * 1e9 / (self.clock_mhz * 1e6)


def _spec(target: Target | McuSpec) -> McuSpec:
    return target if isinstance(target, McuSpec) else McuSpec.from_target(target)


def param_bytes(node: Node) -> int:
    """Bytes of a node's parameters as the C backend stores them: int8 weights, int32 everything else."""
    return int(sum(v.size * (1 if key in INT8_PARAMS else 4) for key, v in node.params.items()))


def scratch_bytes(graph: IntGraph, node: Node) -> int:
    """Static working memory a kernel keeps beside the arena: an MoE layer's chosen experts and gates per token, one
    token's hidden activations and an int32 accumulator per token and feature (emk_moe_s8)."""
    if node.op != "moe":
        return 0
    tokens, d = graph.tensors[node.inputs[0]].shape
    top_k, hidden = int(node.attrs["top_k"]), node.params["fc1"].shape[1]
    return tokens * top_k * 5 + 2 * hidden + 4 * tokens * d


# -- placement --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Placement:
    """Where a task's bytes live. `arena_bytes` is the activation arena held in L2 (the whole arena, except in
    activations-in-l3, where `full_arena_bytes` is the all-in-L2 arena); `staging_bytes` = weight + activation
    staging; `l3_used_bytes` = weight bytes in L3 and `activation_l3_bytes` = activation bytes in L3,
    `l3_total_bytes` both (what L3 must hold)."""

    task: str
    status: Status
    arena_bytes: int
    weight_bytes: int
    code_bytes: int
    staging_bytes: int
    l2_used_bytes: int
    l2_bytes: int
    l3_used_bytes: int
    l3_bytes: int | None
    weights_in_l3: list[dict[str, Any]]          # {"layer": index, "name", "bytes"}, in spill order
    overflow: dict[str, Any] | None              # {"memory", "part", "needed_bytes", "capacity_bytes", "bytes"}
    verdict: str
    assumptions: list[str] = field(default_factory=list)
    fits: bool = True
    full_arena_bytes: int = 0
    weight_staging_bytes: int = 0
    activation_staging_bytes: int = 0
    activations_in_l3: list[dict[str, Any]] = field(default_factory=list)  # {"tensor", "bytes", "tensors"}
    activation_l3_bytes: int = 0
    activation_l3_traffic_bytes: int = 0          # extra L3 bytes moved per inference by activations
    l3_total_bytes: int = 0

    @property
    def spilled_layers(self) -> set[int]:
        return {entry["layer"] for entry in self.weights_in_l3}

    @property
    def l3_tensors(self) -> set[str]:
        """Every activation tensor that lives in L3 (aliases included)."""
        return {name for entry in self.activations_in_l3 for name in entry["tensors"]}

    def to_dict(self) -> dict[str, Any]:
        return {"provenance": PROVENANCE, **asdict(self)}


class _Arena:
    """The liveness arena of a subset of a graph's activation buffers (`arena_plan`'s allocator), and which
    L3-resident buffers each layer streams."""

    def __init__(self, graph: IntGraph, alignment: int) -> None:
        self.graph, self.alignment = graph, alignment
        intervals = liveness(graph)
        self.aliases = _alias_roots(graph, True)
        self.root = {name: self.aliases.get(name, name) for name in intervals}
        self.members: dict[str, list[str]] = {}
        self.interval: dict[str, tuple[int, int]] = {}
        for name, (first, last) in intervals.items():
            root = self.root[name]
            self.members.setdefault(root, []).append(name)
            old = self.interval.get(root, (first, last))
            self.interval[root] = (min(old[0], first), max(old[1], last))
        self.size = {root: max(tensor_bytes(graph, n) for n in names) for root, names in self.members.items()}

    def bytes_without(self, moved: set[str]) -> int:
        order = sorted((r for r in self.interval if r not in moved),
                       key=lambda r: (-self.size[r], self.interval[r][0], r))
        placed: list[tuple[int, int, tuple[int, int]]] = []
        for root in order:
            allocated = _round_up(self.size[root], self.alignment)
            placed.append((_place(allocated, self.interval[root], placed), allocated, self.interval[root]))
        return max((offset + used for offset, used, _ in placed), default=0)

    def streamed(self, node: Node) -> list[str]:
        """The tensors a layer reads or writes through L3 traffic (an aliasing flatten moves nothing)."""
        if node.op == "flatten" and node.output in self.aliases:
            return []
        return [*node.inputs, node.output]

    def staging(self, moved: set[str], l1_bytes: int) -> int:
        best = 0
        for node in self.graph.nodes:
            roots = {self.root[t] for t in self.streamed(node)} & moved
            best = max(best, sum(2 * min(self.size[r], l1_bytes) for r in roots))
        return best

    def traffic(self, moved: set[str]) -> int:
        return sum(tensor_bytes(self.graph, t) for node in self.graph.nodes for t in self.streamed(node)
                   if self.root[t] in moved)


def place_in_memory(graph: IntGraph, target: Target | McuSpec, alignment: int = 4,
                    code_base_bytes: int = CODE_BASE_BYTES,
                    code_bytes_per_layer: int = CODE_BYTES_PER_LAYER) -> Placement:
    """Everything in L2; else weights spilled to L3 largest first; else activations in L3 too; else a too-big
    verdict (module docstring)."""
    spec = _spec(target)
    arenas = _Arena(graph, alignment)
    full_arena = plan_arena(graph, alignment=alignment).arena_bytes
    blocks = [(i, node.name, param_bytes(node)) for i, node in enumerate(graph.nodes) if node.params]
    weights = sum(size for _, _, size in blocks)
    code = (code_base_bytes + code_bytes_per_layer * len(graph.nodes)
            + sum(scratch_bytes(graph, node) for node in graph.nodes))
    assumptions = [
        f"activations: one static arena of {full_arena:,} B (liveness plan, {alignment}-byte alignment) in L2; only "
        "when it cannot fit even with every weight in L3 do the largest activation buffers move to L3, each "
        "streamed through a double-buffered L2 window of min(tensor, L1) per tensor a layer touches",
        "weights: int8 weights 1 B, int32 mul / add 4 B each (as the C backend stores them); copied from "
        "non-volatile memory to L2 / L3 at boot, not per inference",
        f"code, runtime and stacks: an allowance of {code_base_bytes:,} B + {code_bytes_per_layer} B per layer, plus "
        "the static scratch of MoE layers (routes, gates and int32 accumulators per token)",
        "spilling moves whole per-layer weight blocks to L3, largest first; weights streamed from L3 need an "
        "L2 staging area of 2 x min(largest spilled block, L1) (double-buffered)",
        "L3 holds spilled weights and L3-resident activations side by side (no liveness sharing in L3)",
    ]

    spilled: list[tuple[int, str, int]] = []
    moved: list[str] = []                 # activation buffer roots in L3, in move order
    state = {"arena": full_arena}

    def weight_staging() -> int:
        return 2 * min(max((s for _, _, s in spilled), default=0), spec.l1_bytes)

    def act_staging() -> int:
        return arenas.staging(set(moved), spec.l1_bytes) if moved else 0

    def l2_need() -> int:
        kept = weights - sum(s for _, _, s in spilled)
        return state["arena"] + code + kept + weight_staging() + act_staging()

    if spec.l3_bytes is not None:
        for block in sorted(blocks, key=lambda b: (-b[2], b[0])):
            if l2_need() <= spec.l2_bytes:
                break
            spilled.append(block)
        if l2_need() > spec.l2_bytes:     # even with every weight in L3: activations go to L3 too
            for root in sorted(arenas.interval, key=lambda r: (-arenas.size[r], arenas.interval[r][0], r)):
                if l2_need() <= spec.l2_bytes:
                    break
                moved.append(root)
                state["arena"] = arenas.bytes_without(set(moved))
            if moved and l2_need() <= spec.l2_bytes:   # bring weight blocks back while they fit
                for block in sorted(spilled, key=lambda b: (-b[2], b[0])):
                    spilled.remove(block)
                    if l2_need() > spec.l2_bytes:
                        spilled.append(block)
                spilled.sort(key=lambda b: (-b[2], b[0]))

    need, spill_bytes = l2_need(), sum(s for _, _, s in spilled)
    kept, arena = weights - spill_bytes, state["arena"]
    act_bytes = sum(arenas.size[r] for r in moved)
    entries = [{"layer": i, "name": name, "bytes": size} for i, name, size in spilled]
    activations = [{"tensor": r, "bytes": arenas.size[r], "tensors": sorted(arenas.members[r])} for r in moved]
    traffic = arenas.traffic(set(moved))
    common = dict(task=graph.task, arena_bytes=arena, weight_bytes=weights, code_bytes=code,
                  staging_bytes=weight_staging() + act_staging(), l2_used_bytes=need, l2_bytes=spec.l2_bytes,
                  l3_used_bytes=spill_bytes, l3_bytes=spec.l3_bytes, weights_in_l3=entries, assumptions=assumptions,
                  full_arena_bytes=full_arena, weight_staging_bytes=weight_staging(),
                  activation_staging_bytes=act_staging(), activations_in_l3=activations, activation_l3_bytes=act_bytes,
                  activation_l3_traffic_bytes=traffic, l3_total_bytes=spill_bytes + act_bytes)

    if need > spec.l2_bytes:
        if spec.l3_bytes is None:
            part, what = "activations + weights + code", "and the target has no L3 to move weights or activations to"
        else:
            part, what = "code + L3 staging", "even with every weight and every activation in L3"
        overflow = {"memory": "l2", "part": part, "needed_bytes": need, "capacity_bytes": spec.l2_bytes,
                    "bytes": need - spec.l2_bytes}
        verdict = (f"does not fit: L2 needs {need:,} B ({part}: arena {arena:,} + code {code:,} + weights kept "
                   f"{kept:,} + staging {weight_staging() + act_staging():,}) but holds {spec.l2_bytes:,} B, "
                   f"{need - spec.l2_bytes:,} B over, {what}")
        return Placement(status="too-big", overflow=overflow, verdict=verdict, fits=False, **common)
    if spec.l3_bytes is not None and spec.l3_bytes > 0 and spill_bytes + act_bytes > spec.l3_bytes:
        total = spill_bytes + act_bytes
        part = "spilled weights + activations" if moved else "spilled weights"
        overflow = {"memory": "l3", "part": part, "needed_bytes": total, "capacity_bytes": spec.l3_bytes,
                    "bytes": total - spec.l3_bytes}
        what = (f"the {len(spilled)} weight blocks ({spill_bytes:,} B) and {len(moved)} activation buffers "
                f"({act_bytes:,} B)" if moved else f"the {len(spilled)} weight blocks")
        verdict = (f"does not fit: {what} placed in L3 take {total:,} B but L3 holds {spec.l3_bytes:,} B, "
                   f"{total - spec.l3_bytes:,} B over")
        return Placement(status="too-big", overflow=overflow, verdict=verdict, fits=False, **common)
    if moved:
        verdict = (f"fits with activations in L3: the activation arena ({full_arena:,} B) does not fit L2 even with "
                   f"every weight in L3, so {len(moved)} activation buffers ({act_bytes:,} B, largest first) live in "
                   f"L3 and stream through L2 ({traffic:,} B of extra L3 traffic per inference), and {len(spilled)} "
                   f"of {len(blocks)} weight blocks ({spill_bytes:,} B) stream from L3; L2 holds {need:,} of "
                   f"{spec.l2_bytes:,} B, L3 {spill_bytes + act_bytes:,} B")
        return Placement(status="activations-in-l3", overflow=None, verdict=verdict, **common)
    if spilled:
        verdict = (f"fits with weights in L3: {len(spilled)} of {len(blocks)} weight blocks ({spill_bytes:,} B) "
                   f"streamed from L3 every inference; L2 holds {need:,} of {spec.l2_bytes:,} B")
        return Placement(status="weights-in-l3", overflow=None, verdict=verdict, **common)
    verdict = (f"fits in L2: {need:,} of {spec.l2_bytes:,} B (arena {arena:,} + weights {weights:,} + code "
               f"{code:,})")
    return Placement(status="fits-l2", overflow=None, verdict=verdict, **common)


# -- per-layer work ---------------------------------------------------------------------------------------
def layer_work(graph: IntGraph, node: Node) -> tuple[str, int, int]:
    """(kernel class, MACs, work in the class's unit) of one node, from the IntGraph's shapes."""
    out = graph.tensors[node.output]
    x = graph.tensors[node.inputs[0]]
    if node.op == "conv":
        k, cg, kh, kw = node.params["weight"].shape
        macs = int(out.elements) * int(cg * kh * kw)
        groups = int(node.attrs.get("groups", 1))
        kind = "depthwise" if cg == 1 and groups > 1 else "pointwise" if kh == kw == 1 else "conv"
        return kind, macs, macs
    if node.op == "conv_transpose":  # kernel == stride: every output value is one dot product over the inputs
        macs = int(out.elements) * int(node.params["weight"].shape[1])
        return "pointwise", macs, macs
    if node.op == "gemm":  # over rows (tokens) the weights are reused like a 1x1 convolution's
        rows = x.elements // int(node.params["weight"].shape[1])
        macs = int(node.params["weight"].size) * rows
        return "gemm" if rows == 1 else "pointwise", macs, macs
    if node.op == "matmul":
        macs = int(out.elements) * int(x.shape[-1])
        return "matmul", macs, macs
    if node.op == "moe":  # the router for every token, then each token through its top-k experts only
        experts, hidden, d = node.params["fc1"].shape
        tokens = x.elements // d
        macs = tokens * (experts * d + int(node.attrs["top_k"]) * 2 * d * hidden)
        return "pointwise", macs, macs
    if node.op in ("softmax", "layernorm"):
        return "normalise", 0, x.elements
    if node.op in ("add", "requant", "add_const"):
        return "elementwise", 0, out.elements
    if node.op in ("avgpool_global", "reduce_mean"):
        return "pool", 0, x.elements
    if node.op in ("maxpool", "avgpool"):
        kh, kw = node.attrs["kernel"]
        return "pool", 0, out.elements * int(kh) * int(kw)
    if node.op == "resize_bilinear":
        return "resize", 0, out.elements
    if node.op in ("resize_nearest", "concat", "flatten", "transpose", "slice", "lut"):
        return "copy", 0, tensor_bytes(graph, node.output)
    raise EdgemtlError(f"task {graph.task!r}: layer {node.name!r} has op {node.op!r}, which the MCU cost model lacks")


# -- the cycle estimate -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerEstimate:
    index: int
    name: str
    op: str
    kernel: str
    macs: int
    work: int
    work_unit: str
    throughput: float
    compute_cycles: float
    l2_l1_bytes: int
    dma_l2_l1_cycles: float
    l3_bytes: int
    dma_l3_cycles: float
    cycles: float
    bound: str            # "compute", "dma-l2" or "dma-l3"
    l1_working_set_bytes: int | None = None   # token layers: the L1 bytes their tiles need (l1_tiling.py)
    l1_plan: str = ""                          # what stays in L1 and what streams, in one line
    l1_fits: bool = True


@dataclass(frozen=True)
class CycleEstimate:
    task: str
    layers: list[LayerEstimate]
    cycles: float
    macs: int
    clock_mhz: float
    latency_s: float
    power_mw: float
    energy_j: float
    placement: Placement
    spec: McuSpec
    assumptions: list[str]

    @property
    def provenance(self) -> dict[str, str]:
        return PROVENANCE

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: totals, per-layer rows, the placement, the figures used and the published context."""
        return {
            "provenance": self.provenance,
            "task": self.task,
            "totals": {"cycles": self.cycles, "macs": self.macs, "clock_mhz": self.clock_mhz,
                       "latency_ms": self.latency_s * 1e3, "power_mw": self.power_mw, "energy_mj": self.energy_j * 1e3,
                       "macs_per_cycle": self.macs / self.cycles if self.cycles else 0.0,
                       "fits": self.placement.fits, "placement": self.placement.status,
                       "l1_overflows": [f"{layer.name}: {layer.l1_plan}" for layer in self.layers if not layer.l1_fits]},
            "layers": [asdict(layer) for layer in self.layers],
            "placement": self.placement.to_dict(),
            "kernels": {name: asdict(kernel) for name, kernel in KERNELS.items()},
            "spec": asdict(self.spec),
            "assumptions": list(self.assumptions),
            "context": {"tinymyo": dict(TINYMYO)},
        }


def estimate_cycles(graph: IntGraph, target: Target | McuSpec, power_mw: float = POWER_MW,
                    dma_efficiency: float = DMA_EFFICIENCY, l3_efficiency: float = L3_EFFICIENCY,
                    placement: Placement | None = None, alignment: int = 4) -> CycleEstimate:
    """Per-layer and total cycles, latency and energy of `graph` on the cluster (arithmetic in the docstring)."""
    spec = _spec(target)
    for label, value in (("dma_efficiency", dma_efficiency), ("l3_efficiency", l3_efficiency)):
        if not 0 < value <= 1:
            raise EdgemtlError(f"{label} must lie in (0, 1], got {value}")
    if spec.clock_mhz <= 0 or spec.l2_l1_gbps <= 0:
        raise EdgemtlError("the MCU cost model needs a cluster clock_mhz and an l2 bandwidth_gbps above 0")
    placement = placement or place_in_memory(graph, spec, alignment=alignment)
    aliases = plan_arena(graph, alignment=alignment).aliases
    b2 = spec.bytes_per_cycle(spec.l2_l1_gbps) * dma_efficiency
    b3 = spec.bytes_per_cycle(spec.l3_gbps) * l3_efficiency
    spilled, l3_tensors = placement.spilled_layers, placement.l3_tensors
    if (spilled or l3_tensors) and b3 <= 0:
        raise EdgemtlError("weights or activations are placed in L3 but the target's off-chip level has no "
                           "bandwidth_gbps")

    layers = []
    for index, node in enumerate(graph.nodes):
        kind, macs, work = layer_work(graph, node)
        kernel = KERNELS[kind]
        if node.op == "flatten" and node.output in aliases:
            work, l2_bytes = 0, 0           # shares its input's bytes: no code, no traffic
        else:
            l2_bytes = (sum(tensor_bytes(graph, name) for name in node.inputs) + tensor_bytes(graph, node.output)
                        + param_bytes(node))
        tile = tile_layer(graph, node, spec.l1_bytes, param_bytes(node))
        if tile is not None:
            l2_bytes = tile.traffic_bytes
        l3_bytes = param_bytes(node) if index in spilled else 0
        if l3_tensors and not (node.op == "flatten" and node.output in aliases):
            l3_bytes += sum(tensor_bytes(graph, t) for t in [*node.inputs, node.output] if t in l3_tensors)
        compute = work / kernel.throughput if kernel.throughput > 0 else 0.0
        dma_l2 = l2_bytes / b2
        dma_l3 = l3_bytes / b3 if l3_bytes else 0.0
        cycles = max(compute, dma_l2) + dma_l3
        bound = "dma-l3" if dma_l3 > max(compute, dma_l2) else "dma-l2" if dma_l2 > compute else "compute"
        layers.append(LayerEstimate(index, node.name, node.op, kind, macs, work, kernel.unit, kernel.throughput,
                                    compute, l2_bytes, dma_l2, l3_bytes, dma_l3, cycles, bound,
                                    *((tile.working_set_bytes, tile.plan, tile.fits) if tile else ())))

    total = float(sum(layer.cycles for layer in layers))
    latency = total / (spec.clock_mhz * 1e6)
    assumptions = [
        f"the network runs layer by layer on GAP9's 8-core cluster at {spec.clock_mhz:g} MHz with PULP-NN-class "
        "int8 kernels (throughput per kernel class in 'kernels', each with its source); NE16 is not used",
        f"L2<->L1: every input, output and parameter byte of a layer crosses once (ideal tiling) at "
        f"{spec.l2_l1_gbps:g} GB/s x {dma_efficiency:g}, double-buffered under compute (max of the two); token "
        f"layers are tiled for the {spec.l1_bytes:,} B L1 (a head's K / V or a gemm's weights resident, else in "
        "column blocks with the rows re-read per block; softmax / layernorm a row at a time): their re-reads "
        "count (analysis/l1_tiling.py)",
        f"L3<->L2: spilled weights are re-streamed every inference, and L3-resident activations read by each "
        f"layer that takes them and written by the layer that makes them, at {spec.l3_gbps:g} GB/s x "
        f"{l3_efficiency:g}, not overlapped with compute",
        "no per-layer launch, fork / barrier or tile-setup overhead and no cache / bank-conflict stalls; small "
        "layers are therefore optimistic",
        f"energy = {power_mw:g} mW x latency: a whole-SoC full-load figure (GreenWaves: 150.8 GOPS at "
        "0.33 mW/GOP), not varied per layer",
        *placement.assumptions,
    ]
    return CycleEstimate(task=graph.task, layers=layers, cycles=total, macs=sum(layer.macs for layer in layers),
                         clock_mhz=spec.clock_mhz, latency_s=latency, power_mw=power_mw,
                         energy_j=power_mw * 1e-3 * latency, placement=placement, spec=spec, assumptions=assumptions)


# -- simulated instruction counts beside the estimate ------------------------------------------------------
def simulated_instructions(graph: IntGraph, layer_instructions: np.ndarray,
                           estimate: CycleEstimate | None = None) -> dict[str, Any]:
    """Per-layer retired instructions from qemu (`QemuRun.layer_instructions`, shape (samples, layers)) as
    instructions per MAC, the median over samples; with `estimate`, its cycles sit beside each row, each
    column carrying its own provenance. Instructions on one rv32imac core are not GAP9 cycles."""
    counts = np.asarray(layer_instructions)
    if counts.ndim != 2 or counts.shape[1] != len(graph.nodes) or counts.shape[0] == 0:
        raise EdgemtlError(f"task {graph.task!r}: expected instruction counts of shape (samples, "
                           f"{len(graph.nodes)}), got {counts.shape}")
    median = np.median(counts, axis=0)
    rows = []
    for index, node in enumerate(graph.nodes):
        _, macs, _ = layer_work(graph, node)
        row: dict[str, Any] = {"layer": index, "name": node.name, "op": node.op, "macs": macs,
                               "instructions": float(median[index]),
                               "instructions_per_mac": float(median[index]) / macs if macs else None}
        if estimate is not None:
            row["estimated_cycles"] = estimate.layers[index].cycles
        rows.append(row)
    total_macs = sum(row["macs"] for row in rows)
    table: dict[str, Any] = {
        "provenance": SIM_PROVENANCE,
        "samples": int(counts.shape[0]),
        "totals": {"instructions": float(median.sum()), "macs": total_macs,
                   "instructions_per_mac": float(median.sum()) / total_macs if total_macs else None},
        "layers": rows,
        "note": "retired instructions (minstret under qemu -icount), median over samples; not cycles, not GAP9 "
                "timing (no cluster, no DMA, no Xpulp SIMD)",
    }
    if estimate is not None:
        table["estimated_cycles_provenance"] = estimate.provenance
    return table
