"""On-chip memory and weight traffic of mixture-of-experts layers under the two execution orders of M3ViT.

Token-major execution runs token by token; each token needs its k experts, so to never reload a weight
ALL of the layer's experts must stay on chip. When they do not fit, each token reloads its k experts.
Expert-major execution gathers the tokens routed to expert e, loads e's weights once, runs them and
scatters the results back: one expert is on chip at a time (two when double-buffered, so the next
expert's load overlaps compute) and every expert crosses the memory bus once per image. This module does
the arithmetic for both so a target's on-chip capacity can be checked before anything is synthesized.

Arithmetic per layer (d = dim, h = hidden, E = experts considered, k = top-k, T = tokens per image,
wb / ab = bytes per weight / activation value, C = on-chip capacity in bytes, 0 = unbounded):
- expert_bytes = (d*h + h + h*d + d) * wb                (w1, b1, w2, b2 of one expert)
- router_bytes = (router_in + 1) * E * wb                (the router rows of the considered experts)
- token-major, all weights resident: weights = E*expert_bytes + router_bytes,
  activations = (d + k*h + d) * ab                       (one token's input, its k hidden vectors, output).
  If C == 0 or weights + activations <= C: traffic = E*expert_bytes + router_bytes.
  Otherwise it reloads per token: weights = k*expert_bytes + router_bytes (same activations),
  traffic = T*k*expert_bytes + router_bytes.
- expert-major: weights = B*expert_bytes + router_bytes with B = 2 when double-buffered (1 if E == 1),
  else 1; activations = (T*d + T*d + M*h) * ab (all inputs, the output accumulators, the hidden
  activations of the largest expert batch M = max(tokens_per_expert), or ceil(k*T/E) when unknown);
  traffic = E*expert_bytes + router_bytes.
- peak_on_chip_bytes = weights + activations of the working set actually held; fits_on_chip says
  whether that peak is within C (a token-major plan can reload per token AND fit, or not even fit then).
- A model's plan: peak = max over its MoE layers, traffic = sum over them, ratio = token-major peak /
  expert-major peak. Byte counts are floats: sub-byte precisions are counted exactly, without packing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from torch import nn

from edgemtl.errors import EdgemtlError
from edgemtl.manifest import prov
from edgemtl.targets import Target

Order = Literal["token-major", "expert-major"]

PRECISION_BYTES: dict[str, tuple[float, float]] = {
    "fp32": (4.0, 4.0),
    "int8": (1.0, 1.0),
    "w8a8": (1.0, 1.0),
    "w4a4": (0.5, 0.5),
}


@dataclass(frozen=True)
class ExecutionOrderPlan:
    """What one execution order of one MoE layer holds on chip and moves over the memory bus per image."""

    order: Order
    peak_on_chip_bytes: float
    weight_bytes_on_chip: float
    activation_bytes_on_chip: float
    weight_traffic_bytes: float  # off-chip -> on-chip, per inference
    fits_on_chip: bool
    reloads_per_token: bool
    notes: str


@dataclass(frozen=True)
class MoELayerPlan:
    name: str
    experts: int  # experts considered (all of the layer's, or the ones a task keeps)
    expert_bytes: float
    tokens: int
    token_major: ExecutionOrderPlan
    expert_major: ExecutionOrderPlan

    def by_order(self, order: Order) -> ExecutionOrderPlan:
        return self.token_major if order == "token-major" else self.expert_major


@dataclass(frozen=True)
class MemoryPlan:
    """Every MoE layer of a model; layers run one after another, so peaks take the max and traffic adds."""

    layers: list[MoELayerPlan]
    on_chip_bytes: int  # 0 = unbounded
    weight_bytes_per_value: float
    activation_bytes_per_value: float

    def __post_init__(self) -> None:
        if not self.layers:
            raise EdgemtlError("a memory plan needs at least one mixture-of-experts layer")

    def peak_bytes(self, order: Order) -> float:
        return max(layer.by_order(order).peak_on_chip_bytes for layer in self.layers)

    def traffic_bytes(self, order: Order) -> float:
        return sum(layer.by_order(order).weight_traffic_bytes for layer in self.layers)

    @property
    def ratio(self) -> float:
        """How many times more on-chip memory token-major needs than expert-major."""
        return self.peak_bytes("token-major") / self.peak_bytes("expert-major")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; `totals` alone is enough to plot the plan."""
        totals = {
            key: {
                "peak_on_chip_bytes": self.peak_bytes(order),
                "weight_traffic_bytes": self.traffic_bytes(order),
                "fits_on_chip": all(layer.by_order(order).fits_on_chip for layer in self.layers),
                "reloads_per_token": any(layer.by_order(order).reloads_per_token for layer in self.layers),
            }
            for key, order in (("token_major", "token-major"), ("expert_major", "expert-major"))
        }
        return {
            "provenance": prov("estimated", source="edgemtl memory-plan arithmetic (analysis/memory_plan.py)"),
            "on_chip_bytes": self.on_chip_bytes,
            "weight_bytes_per_value": self.weight_bytes_per_value,
            "activation_bytes_per_value": self.activation_bytes_per_value,
            "ratio": self.ratio,
            "totals": totals,
            "layers": [asdict(layer) for layer in self.layers],
        }


def plan_moe_layer(name: str, dim: int, hidden: int, experts: int, top_k: int, tokens: int, router_in: int,
                   on_chip_bytes: int, weight_bytes: float, activation_bytes: float, double_buffer: bool = True,
                   tokens_per_expert: list[int] | None = None) -> MoELayerPlan:
    """Both execution orders of one MoE layer (arithmetic in the module docstring)."""
    _check_layer(name, experts, top_k, tokens, tokens_per_expert)
    expert_bytes = (dim * hidden + hidden + hidden * dim + dim) * weight_bytes
    router_bytes = (router_in + 1) * experts * weight_bytes
    all_weights = experts * expert_bytes + router_bytes
    token_major = _token_major(all_weights, expert_bytes, router_bytes, (2 * dim + top_k * hidden) * activation_bytes,
                               experts, top_k, tokens, on_chip_bytes)
    batch = max(tokens_per_expert) if tokens_per_expert is not None else math.ceil(top_k * tokens / experts)
    buffers = min(2, experts) if double_buffer else 1
    expert_major = _order_plan(
        "expert-major", buffers * expert_bytes + router_bytes, (2 * tokens * dim + batch * hidden) * activation_bytes,
        all_weights, on_chip_bytes, reloads=False,
        notes=f"{buffers} of {experts} experts on chip at a time, each loaded once per image; "
              f"largest expert batch {batch} tokens")
    return MoELayerPlan(name, experts, expert_bytes, tokens, token_major, expert_major)


def plan_moe_model(model: nn.Module, tokens: int, on_chip_bytes: int, weight_bytes: float, activation_bytes: float,
                   experts_per_layer: list[int] | None = None,
                   tokens_per_expert: list[list[int]] | None = None) -> MemoryPlan:
    """Plan every MoE layer of `model` (modules with num_experts, top_k, w1, w2 and router), in model order.

    E is each layer's own w1.shape[0], so a per-task partitioned model is planned with the experts it kept;
    `experts_per_layer` overrides E (e.g. the experts a task uses) and top-k shrinks to E if fewer remain.
    `tokens_per_expert[i]` is layer i's routed-token count per expert for one image.
    """
    found = [(name, module) for name, module in model.named_modules()
             if all(hasattr(module, a) for a in ("num_experts", "top_k", "w1", "w2", "router"))]
    if not found:
        raise EdgemtlError("the model has no mixture-of-experts layer "
                           "(a module with num_experts, top_k, w1, w2 and router)")
    for label, given in (("experts_per_layer", experts_per_layer), ("tokens_per_expert", tokens_per_expert)):
        if given is not None and len(given) != len(found):
            raise EdgemtlError(f"{label} has {len(given)} entries but the model has {len(found)} MoE layers")
    layers = []
    for i, (name, module) in enumerate(found):
        held, dim, hidden = module.w1.shape
        experts = held if experts_per_layer is None else experts_per_layer[i]
        if not 1 <= experts <= held:
            raise EdgemtlError(f"MoE layer {name} holds {held} experts; cannot plan for {experts}")
        layers.append(plan_moe_layer(
            name, dim, hidden, experts, min(int(module.top_k), experts), tokens, module.router.weight.shape[1],
            on_chip_bytes, weight_bytes, activation_bytes,
            tokens_per_expert=None if tokens_per_expert is None else tokens_per_expert[i]))
    return MemoryPlan(layers, on_chip_bytes, weight_bytes, activation_bytes)


def on_chip_bytes_of(target: Target) -> int:
    """The target's on-chip memory (every on-chip level summed); 0 when none is sized."""
    return sum(level.size_bytes for level in target.memory if level.level == "on-chip")


def precision_bytes(precision: str) -> tuple[float, float]:
    """(bytes per weight, bytes per activation) of a precision name."""
    if precision not in PRECISION_BYTES:
        raise EdgemtlError(f"unknown precision {precision!r}; valid: {', '.join(sorted(PRECISION_BYTES))}")
    return PRECISION_BYTES[precision]


def _check_layer(name: str, experts: int, top_k: int, tokens: int, tokens_per_expert: list[int] | None) -> None:
    if not 1 <= top_k <= experts:
        raise EdgemtlError(f"MoE layer {name}: top-k must lie in 1..{experts} (the experts), got {top_k}")
    if tokens < 1:
        raise EdgemtlError(f"MoE layer {name}: tokens per image must be at least 1, got {tokens}")
    if tokens_per_expert is not None and (len(tokens_per_expert) != experts
                                          or not all(0 <= n <= tokens for n in tokens_per_expert)):
        raise EdgemtlError(f"MoE layer {name}: tokens_per_expert needs {experts} counts in 0..{tokens}, "
                           f"got {tokens_per_expert}")


def _token_major(all_weights: float, expert_bytes: float, router_bytes: float, activations: float, experts: int,
                 top_k: int, tokens: int, on_chip_bytes: int) -> ExecutionOrderPlan:
    """All experts resident when they fit; otherwise each token reloads its k experts."""
    if on_chip_bytes == 0 or all_weights + activations <= on_chip_bytes:
        return _order_plan("token-major", all_weights, activations, all_weights, on_chip_bytes, reloads=False,
                           notes=f"all {experts} experts resident, each loaded once per image")
    return _order_plan(
        "token-major", top_k * expert_bytes + router_bytes, activations,
        tokens * top_k * expert_bytes + router_bytes, on_chip_bytes, reloads=True,
        notes=f"all {experts} experts ({all_weights + activations:,.0f} B with activations) exceed on-chip; "
              f"each of the {tokens} tokens reloads its {top_k} experts")


def _order_plan(order: Order, weights: float, activations: float, traffic: float, on_chip_bytes: int,
                reloads: bool, notes: str) -> ExecutionOrderPlan:
    peak = weights + activations
    fits = on_chip_bytes == 0 or peak <= on_chip_bytes
    if not fits:
        notes += f"; working set {peak:,.0f} B exceeds the {on_chip_bytes:,} B on chip"
    return ExecutionOrderPlan(order, peak, weights, activations, traffic, fits, reloads, notes)
