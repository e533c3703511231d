"""A roofline cost model of a model on an FPGA fabric (the ZCU104's XCZU7EV), for what FINN cannot take.

FINN's analytical estimates (`edgemtl.backends.finn`) need a graph that streamlines into FINN's hardware
layers; a mixture-of-experts ViT (softmax attention, routing, gathers) does not. This module gives such a
model a first-order estimate instead. Every number it returns is labelled "estimated (edgemtl roofline)"
and the returned dict lists the assumptions it rests on.

The machine it models: one MAC array spanning all of the part's DSP slices, running the layers one after
another (layer-sequential, batch 1, no overlap between layers or images), weights either resident in
on-chip BRAM/URAM or streamed from the off-chip DDR once per inference, activations on chip.

Per layer (clock f, D DSPs, m MACs per DSP per cycle, utilisation u, DDR bandwidth B, efficiency e):
- compute time  = MACs / (D * m * f * u)
  m = 2 when weights AND activations are <= 4 bits (two products packed into one DSP48E2 multiplier,
  as in Xilinx WP521's INT4 packing), else 1 (one 27x18 multiply per DSP for 5..16-bit operands).
- memory time   = off-chip bytes / (B * e); off-chip bytes = the layer's streamed weights (0 when resident)
  plus its activations when even one layer's input + output do not fit on chip.
- latency       = max(compute time, memory time); the model's latency is the sum, fps = 1 / latency.
- MoE layers use the expert-major plan of `analysis.memory_plan` (one expert loaded at a time, double
  buffered, every expert crossing the bus once per image): when the layer is not resident, its traffic
  is the plan's weight traffic and its working set (two experts + the router) is reserved on chip.
- Placement: usable on-chip bytes = (BRAM + URAM) * packing efficiency, minus the largest layer's
  activations (input + output) and the largest MoE streaming working set. Layers are made resident
  greedily, those that would stall longest per byte when streamed first; a layer is resident whole or not
  at all. Weights fill URAM first, activations and buffers BRAM first.
- Resources: DSP = all of them (the array's premise); LUT = LUT per DSP lane * DSPs + a fixed amount for
  the DMA, interconnect and control (rough); BRAM18 / URAM blocks = bytes / block size, rounded up
  (no width/depth fragmentation beyond the packing efficiency).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from edgemtl.analysis.cost import model_cost
from edgemtl.analysis.memory_plan import on_chip_bytes_of, plan_moe_layer
from edgemtl.errors import EdgemtlError
from edgemtl.manifest import prov
from edgemtl.model.contract import AllTasks, TaskPath, example_input
from edgemtl.model.spec import ModelSpec
from edgemtl.targets import Target

PROVENANCE = prov("estimated", source="edgemtl roofline (analysis/fpga_cost.py)")
BRAM18_BYTES = 2304  # 18 Kb
URAM_BYTES = 36864  # 288 Kb

# Defaults of the assumptions (each can be overridden per call and is echoed in the result)
DSP_UTILISATION = 0.7  # share of the MAC array's peak a layer keeps busy (tiling, edges, control)
DDR_EFFICIENCY = 0.7  # share of the DDR peak a streaming DMA sustains through the PS-PL ports
ON_CHIP_PACKING = 0.8  # share of BRAM/URAM bits usable once widths and depths are rounded to blocks
LUT_PER_DSP = 30  # operand muxing, packing and accumulation around each DSP lane (rough)
LUT_FIXED = 20_000  # AXI DMA, interconnect, control state machines (rough)


@dataclass(frozen=True)
class FabricSpec:
    """The fabric a roofline runs on: logic from the part, memories and clock from the target file."""

    part: str
    clock_mhz: float
    dsp: int
    lut: int
    bram18: int
    uram: int
    on_chip_bytes: int  # every on-chip level of the target summed (BRAM + URAM for the ZCU104)
    ddr_bandwidth_gbps: float  # GB/s (1e9 bytes per second), the off-chip level's peak
    source: str = ""

    def __post_init__(self) -> None:
        if self.clock_mhz <= 0 or self.dsp <= 0 or self.ddr_bandwidth_gbps <= 0:
            raise EdgemtlError(f"fabric {self.part or '?'} needs a clock, DSPs and a DDR bandwidth above 0")


@dataclass(frozen=True)
class MoEShape:
    """What the expert-major memory plan needs to know about one mixture-of-experts layer."""

    dim: int
    hidden: int
    experts: int
    top_k: int
    tokens: int
    router_in: int


@dataclass(frozen=True)
class LayerCost:
    """One layer as the roofline sees it: MACs, weight values read, activation values held on chip."""

    name: str
    macs: int
    weights: int  # weight values (parameters) the layer reads per inference
    activations: int = 0  # values of its input + output, held on chip while it runs
    kind: str = "dense"  # "conv", "linear", "moe", "other", "unattributed"
    moe: MoEShape | None = None
    weights_key: str = ""  # layers sharing a key share one weight set (a module run once per task); "" = name

    @property
    def key(self) -> str:
        return self.weights_key or self.name


@dataclass(frozen=True)
class LayerEstimate:
    name: str
    kind: str
    macs: int
    weight_bytes: float
    resident: bool
    offchip_bytes: float
    compute_s: float
    memory_s: float
    latency_s: float
    bound: str  # "compute" or "memory"


@dataclass(frozen=True)
class RooflineEstimate:
    layers: list[LayerEstimate]
    latency_s: float
    fps: float
    compute_s: float  # sum of the layers' compute times (the compute roof alone)
    memory_s: float  # sum of the layers' memory times (the memory roof alone)
    offchip_bytes: float
    resources: dict[str, Any]
    weight_bits: int
    act_bits: int
    macs_per_dsp_per_cycle: int
    fabric: FabricSpec
    assumptions: list[str] = field(default_factory=list)

    @property
    def provenance(self) -> dict[str, str]:
        return PROVENANCE

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; every figure sits under a dict that carries the provenance."""
        return {
            "provenance": self.provenance,
            "latency_ms": self.latency_s * 1e3,
            "fps": self.fps,
            "compute_bound_ms": self.compute_s * 1e3,
            "memory_bound_ms": self.memory_s * 1e3,
            "offchip_bytes_per_inference": self.offchip_bytes,
            "weight_bits": self.weight_bits,
            "act_bits": self.act_bits,
            "macs_per_dsp_per_cycle": self.macs_per_dsp_per_cycle,
            "resources": {"provenance": self.provenance, **self.resources},
            "layers": [{"provenance": self.provenance, **asdict(layer)} for layer in self.layers],
            "fabric": asdict(self.fabric),
            "assumptions": list(self.assumptions),
        }


def fabric_from_target(target: Target) -> FabricSpec:
    """The target's fpga-fabric clock, on-chip bytes, off-chip bandwidth and the part's logic (its [fabric] table)."""
    fabric = [c for c in target.compute if c.kind == "fpga-fabric"]
    if not fabric:
        raise EdgemtlError(f"target {target.name} has no fpga-fabric compute unit; the FPGA roofline needs one")
    if fabric[0].clock_mhz <= 0:
        raise EdgemtlError(f"target {target.name}: the fpga-fabric unit {fabric[0].name} has no clock_mhz")
    off_chip = [m for m in target.memory if m.level == "off-chip" and m.bandwidth_gbps > 0]
    if not off_chip:
        raise EdgemtlError(f"target {target.name} has no off-chip memory with a bandwidth_gbps")
    logic = target.fabric
    if logic is None:
        raise EdgemtlError(f"target {target.name}: its file has no [fabric] table (lut, ff, dsp, bram18, uram of part "
                           f"{target.part!r}, from the part's data sheet); the FPGA roofline needs it")
    on_chip = on_chip_bytes_of(target)
    if on_chip <= 0:
        raise EdgemtlError(f"target {target.name} lists no on-chip memory size; the roofline needs BRAM/URAM")
    return FabricSpec(part=target.part, clock_mhz=fabric[0].clock_mhz, dsp=logic.dsp, lut=logic.lut,
                      bram18=logic.bram18, uram=logic.uram, on_chip_bytes=on_chip,
                      ddr_bandwidth_gbps=off_chip[0].bandwidth_gbps, source=target.source)


def macs_per_dsp_per_cycle(weight_bits: int, act_bits: int) -> int:
    """2 when both operands are <= 4 bits (packed into one DSP48E2), 1 up to 16 bits."""
    for label, bits in (("weight", weight_bits), ("activation", act_bits)):
        if not 1 <= bits <= 16:
            raise EdgemtlError(f"the FPGA roofline models 1..16-bit integer {label}s, got {bits} bits")
    return 2 if weight_bits <= 4 and act_bits <= 4 else 1


def precision_bits(precision: str) -> tuple[int, int]:
    """(weight bits, activation bits) of a precision name like "w4a4"."""
    match = re.fullmatch(r"w(\d+)a(\d+)", precision)
    if not match:
        raise EdgemtlError(f"precision {precision!r} is not of the form w<bits>a<bits> (e.g. w8a8, w4a4)")
    return int(match.group(1)), int(match.group(2))


def roofline(layers: list[LayerCost], fabric: FabricSpec, weight_bits: int, act_bits: int,
             dsp_utilisation: float = DSP_UTILISATION, ddr_efficiency: float = DDR_EFFICIENCY,
             on_chip_packing: float = ON_CHIP_PACKING, lut_per_dsp: int = LUT_PER_DSP,
             lut_fixed: int = LUT_FIXED) -> RooflineEstimate:
    """Latency, fps, off-chip traffic and resources of `layers` run one after another on `fabric`."""
    if not layers:
        raise EdgemtlError("the FPGA roofline needs at least one layer")
    for name, value in (("dsp_utilisation", dsp_utilisation), ("ddr_efficiency", ddr_efficiency),
                        ("on_chip_packing", on_chip_packing)):
        if not 0 < value <= 1:
            raise EdgemtlError(f"{name} must lie in (0, 1], got {value}")
    m = macs_per_dsp_per_cycle(weight_bits, act_bits)
    wb, ab = weight_bits / 8, act_bits / 8
    macs_per_s = fabric.dsp * m * fabric.clock_mhz * 1e6 * dsp_utilisation
    bytes_per_s = fabric.ddr_bandwidth_gbps * 1e9 * ddr_efficiency
    capacity = fabric.on_chip_bytes * on_chip_packing

    # per layer: resident size, streamed traffic, streaming working set, activation bytes
    resident_bytes, traffic, stream_set, act_bytes = [], [], [], []
    for layer in layers:
        if layer.macs < 0 or layer.weights < 0 or layer.activations < 0:
            raise EdgemtlError(f"layer {layer.name}: MACs, weights and activations must be >= 0")
        if layer.moe is not None:
            s = layer.moe
            plan = plan_moe_layer(layer.name, s.dim, s.hidden, s.experts, s.top_k, s.tokens, s.router_in,
                                  on_chip_bytes=0, weight_bytes=wb, activation_bytes=ab)
            resident_bytes.append(plan.token_major.weight_bytes_on_chip)  # all experts + router
            traffic.append(plan.expert_major.weight_traffic_bytes)
            stream_set.append(plan.expert_major.weight_bytes_on_chip)  # two experts + router
            act_bytes.append(plan.expert_major.activation_bytes_on_chip)
        else:
            resident_bytes.append(layer.weights * wb)
            traffic.append(layer.weights * wb)
            stream_set.append(0.0)
            act_bytes.append(layer.activations * ab)
    compute = [layer.macs / macs_per_s for layer in layers]

    act_reserve = max(act_bytes)
    spill_activations = act_reserve > capacity
    if spill_activations:
        act_reserve = 0.0
    stream_reserve = max(stream_set)
    budget = max(0.0, capacity - act_reserve - stream_reserve)

    # greedy residency over weight sets (a module run once per task is one set): the sets that would
    # stall longest per byte when streamed go on chip first
    sets: dict[str, list[int]] = {}
    for i, layer in enumerate(layers):
        sets.setdefault(layer.key, []).append(i)
    for key, members in sets.items():
        if len({resident_bytes[i] for i in members}) > 1:
            raise EdgemtlError(f"layers sharing weights {key!r} disagree on their weight bytes")

    def stall_per_byte(members: list[int]) -> float:
        stall = sum(max(0.0, traffic[i] / bytes_per_s - compute[i]) for i in members)
        return stall / resident_bytes[members[0]]

    resident = [resident_bytes[i] == 0 for i in range(len(layers))]
    order = sorted((k for k, members in sets.items() if resident_bytes[members[0]] > 0),
                   key=lambda k: (-stall_per_byte(sets[k]), resident_bytes[sets[k][0]], sets[k][0]))
    left = budget
    for key in order:
        size = resident_bytes[sets[key][0]]
        if size <= left:
            left -= size
            for i in sets[key]:
                resident[i] = True

    estimates = []
    for i, layer in enumerate(layers):
        offchip = (0.0 if resident[i] else traffic[i]) + (act_bytes[i] if spill_activations else 0.0)
        memory = offchip / bytes_per_s
        latency = max(compute[i], memory)
        estimates.append(LayerEstimate(
            name=layer.name, kind=layer.kind, macs=layer.macs, weight_bytes=resident_bytes[i],
            resident=resident[i], offchip_bytes=offchip, compute_s=compute[i], memory_s=memory,
            latency_s=latency, bound="memory" if memory > compute[i] else "compute"))
    latency = sum(e.latency_s for e in estimates)

    resident_weights = sum(resident_bytes[m[0]] for m in sets.values() if resident[m[0]])
    buffers = act_reserve + (stream_reserve if not all(resident) else 0.0)
    uram_cap, bram_cap = fabric.uram * URAM_BYTES, fabric.bram18 * BRAM18_BYTES
    weights_uram = min(resident_weights, uram_cap)
    weights_bram = resident_weights - weights_uram
    buffers_bram = min(buffers, max(0.0, bram_cap - weights_bram))
    buffers_uram = buffers - buffers_bram
    # packing: blocks hold on_chip_packing of their bits on average
    bram18 = math.ceil((weights_bram + buffers_bram) / (BRAM18_BYTES * on_chip_packing))
    uram = math.ceil((weights_uram + buffers_uram) / (URAM_BYTES * on_chip_packing))
    lut = lut_per_dsp * fabric.dsp + lut_fixed
    resources = {
        "dsp": fabric.dsp, "lut": lut, "bram18": bram18, "uram": uram,
        "resident_weight_bytes": resident_weights, "activation_buffer_bytes": act_reserve,
        "moe_stream_buffer_bytes": stream_reserve if not all(resident) else 0.0,
        "utilisation": {"dsp": 1.0, "lut": lut / fabric.lut, "bram18": bram18 / fabric.bram18,
                        "uram": uram / fabric.uram if fabric.uram else 0.0},
        "fits": bram18 <= fabric.bram18 and uram <= fabric.uram and lut <= fabric.lut,
    }
    assumptions = [
        "layer-sequential execution at batch 1: one MAC array spanning every DSP runs one layer at a time; "
        "no overlap between layers or images (fps = 1 / latency)",
        f"{m} MAC(s) per DSP per cycle: 2 only when weights and activations are both <= 4 bits (two "
        f"products packed in one DSP48E2), else 1; here w{weight_bits}a{act_bits}",
        f"DSP utilisation {dsp_utilisation:g} of the array's peak {fabric.dsp} DSPs x {m} x "
        f"{fabric.clock_mhz:g} MHz",
        f"DDR: {fabric.ddr_bandwidth_gbps:g} GB/s peak (the target's off-chip level) x efficiency {ddr_efficiency:g}; "
        "the input image and the outputs' own transfers are not counted",
        f"on chip: {fabric.on_chip_bytes:,} B (the target's on-chip levels) x packing {on_chip_packing:g} = "
        f"{capacity:,.0f} B usable; the largest layer's input + output activations and the largest MoE "
        "streaming working set are reserved first",
        "weights are resident whole or streamed from DDR each time their layer runs (once per inference, or "
        "once per task when all tasks rerun a task-routed backbone); residency is greedy, most stall per "
        "byte first; streaming overlaps compute within a layer (latency = max of the two)",
        "MoE layers: the expert-major plan (analysis.memory_plan): resident = all experts + router; "
        "streamed = every expert once per image, two experts + router double-buffered on chip",
        f"LUT = {lut_per_dsp} per DSP + {lut_fixed:,} fixed (DMA, interconnect, control): a rough figure",
        "BRAM18 / URAM blocks = bytes / (block size x packing), rounded up; weights fill URAM first",
    ]
    if spill_activations:
        assumptions.append(f"activations spill: the largest layer's input + output ({max(act_bytes):,.0f} B) "
                           "exceed the usable on-chip bytes, so every layer's activations cross the DDR")
    return RooflineEstimate(
        layers=estimates, latency_s=latency, fps=1.0 / latency if latency > 0 else math.inf,
        compute_s=sum(compute), memory_s=sum(e.memory_s for e in estimates),
        offchip_bytes=sum(e.offchip_bytes for e in estimates), resources=resources,
        weight_bits=weight_bits, act_bits=act_bits, macs_per_dsp_per_cycle=m, fabric=fabric,
        assumptions=assumptions)


def _is_moe(module: nn.Module) -> bool:
    return all(hasattr(module, a) for a in ("num_experts", "top_k", "w1", "w2", "router"))


def _module_macs(module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> tuple[str, int]:
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return "conv", out.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return "conv", x.numel() * (module.out_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return "linear", x.numel() * module.out_features
    return "other", 0


def layers_from_model(model: nn.Module, spec: ModelSpec, task: str | None = None) -> list[LayerCost]:
    """The layers of one task's path (all tasks together when `task` is None), in execution order.

    A layer is a module that owns parameters directly (conv, linear, norms, embeddings) or a whole
    mixture-of-experts layer (its router and experts); MACs of convs and linears come from the shapes seen
    in one batch-1 forward pass, MoE MACs are T*k*2*d*h + T*router_in*E. Whatever MACs and parameters
    `analysis.cost.model_cost` counts for the path beyond these (attention products, functional matmuls)
    form one last "unattributed" layer, so the totals match the cost analysis.
    """
    names = [t.name for t in spec.select([task] if task else None)]
    cost = model_cost(model, spec, names)
    path_cost = cost.tasks[task] if task else cost.all_tasks
    path: nn.Module = TaskPath(model, task) if task else AllTasks(model, names)

    moe_modules = {id(m) for m in model.modules() if _is_moe(m)}
    inside_moe = {id(sub) for m in model.modules() if _is_moe(m) for sub in m.modules() if sub is not m}
    module_names = {id(m): n or type(m).__name__ for n, m in model.named_modules()}
    calls: dict[int, int] = {}
    layers: list[LayerCost] = []

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        out = output if isinstance(output, torch.Tensor) else None
        key = id(module)
        calls[key] = calls.get(key, 0) + 1
        base = module_names[key]
        name = base if calls[key] == 1 else f"{base}#{calls[key]}"  # a module run again (once per task)
        weights = sum(p.numel() for p in module.parameters(recurse=key in moe_modules))
        if key in moe_modules and x is not None:
            held, dim, hidden = module.w1.shape
            tokens = x.numel() // (x.shape[0] * dim)
            router_in = module.router.weight.shape[1]
            top_k = min(int(module.top_k), held)
            shape = MoEShape(dim, hidden, held, top_k, tokens, router_in)
            macs = tokens * top_k * 2 * dim * hidden + tokens * router_in * held
            activations = 2 * tokens * dim + math.ceil(top_k * tokens / held) * hidden
            layers.append(LayerCost(name, macs, weights, activations, "moe", shape, base))
        else:
            kind, macs = _module_macs(module, x, out) if x is not None and out is not None else ("other", 0)
            activations = x.numel() + out.numel() if x is not None and out is not None else 0
            layers.append(LayerCost(name, macs, weights, activations, kind, None, base))

    handles = []
    for module in model.modules():
        if id(module) in inside_moe:
            continue
        if id(module) in moe_modules or any(True for _ in module.parameters(recurse=False)):
            handles.append(module.register_forward_hook(hook))
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            path(example_input(spec))
    finally:
        for handle in handles:
            handle.remove()
        for m, training in flags:
            m.training = training

    extra_macs = path_cost.macs - sum(layer.macs for layer in layers)
    extra_weights = path_cost.params - sum({layer.key: layer.weights for layer in layers}.values())
    if extra_macs > 0 or extra_weights > 0:
        layers.append(LayerCost(name="unattributed (attention products, functional matmuls)",
                                macs=max(0, extra_macs), weights=max(0, extra_weights), kind="unattributed"))
    return layers


def estimate_model(model: nn.Module, spec: ModelSpec, target: Target, task: str | None = None,
                   precision: str | None = None, **assumptions: Any) -> dict[str, Any]:
    """`roofline` of one task path (or all tasks) on the target's fabric, as a JSON-ready dict."""
    weight_bits, act_bits = precision_bits(precision or target.precisions[0])
    estimate = roofline(layers_from_model(model, spec, task), fabric_from_target(target), weight_bits, act_bits,
                        **assumptions)
    return {"task": task or "all", "target": target.name, "precision": f"w{weight_bits}a{act_bits}",
            **estimate.to_dict()}
