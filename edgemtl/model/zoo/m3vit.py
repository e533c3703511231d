"""`m3vit`: an M3ViT-style mixture-of-experts ViT whose router is conditioned on the task.

Every other transformer block (config `moe_every`; 0 makes a plain ViT of the same blocks) replaces its MLP with `MoELayer`: E experts, top-k routing per token, the
router reading the token concatenated with a learned task embedding (as in M3ViT). Running one task means
running the backbone with that task's routing plus its head; `forward(x)` does this for every task.

Two expert-major dispatches, both gathering each expert's tokens, running one matmul per expert and
scatter-adding the weighted results back (the M3ViT reordering: each expert's weights are needed once):
- training (`forward_capacity`): a fixed capacity per expert (V-MoE style): each expert takes the C tokens
  with the largest gate weight for it (TopK), static shapes, one batched matmul over all experts; tokens
  beyond an expert's capacity are dropped (counted in `tokens_dropped`);
- inference and export (`forward_expert_major`): dropless, each expert takes exactly the tokens routed to
  it (NonZero / Gather / MatMul / ScatterElements in ONNX), so it computes only top-k experts per token
  and equals the token-major reference (`forward_reference`) to float tolerance.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgemtl.model.spec import DENSE_KINDS, ModelSpec, TaskSpec

DEFAULT_CONFIG: dict[str, Any] = {
    "patch": 8,
    "dim": 64,
    "depth": 4,
    "heads": 4,
    "mlp_ratio": 2.0,
    "num_experts": 8,
    "top_k": 2,
    "task_dim": 16,
    "capacity_factor": 2.0,
    "head_width": 16,
    "aux_loss_weight": 0.01,     # weight of the Switch load-balancing loss (routing_loss "switch")
    "routing_loss": "mi",        # "mi": Mod-Squad's task-expert mutual information, which concentrates each task on a
                                 # few experts (task paths that shrink); "switch": balance expert use over all tokens
                                 # (every task then uses every expert). docs/experts.md has the measurements
    "mi_loss_weight": 0.05,      # weight of the mutual-information loss (Mod-Squad: 0.005, too weak here: docs/experts.md)
    "task_embed_std": 1.0,       # initial spread of the task embeddings the router reads: the MI loss has no gradient
                                 # where every task routes alike (0.02, the usual ViT init, left the tasks unseparated)
    "moe_every": 2,          # every n-th block's MLP is a MoE layer (blocks n-1, 2n-1 ...); 0: a plain ViT
}


ROUTING_LOSSES = ("switch", "mi")
# a config saved before routing_loss existed (2026-12-05) was trained with Switch balancing
LEGACY_DEFAULTS: dict[str, Any] = {"routing_loss": "switch"}


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


class Attention(nn.Module):
    """Multi-head self-attention. The head count follows the qkv layer's width (`heads`), so a model whose heads
    were pruned (passes/prune_units.py) and a pruned checkpoint resized on load run unchanged."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    @property
    def heads(self) -> int:
        return self.qkv.out_features // (3 * self.head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, task_vector: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def expert_major(x: torch.Tensor, combine: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                 b2: torch.Tensor) -> torch.Tensor:
    """Expert-major MoE: for each expert, gather its routed tokens (combine weight > 0), run the expert MLP
    on them in one matmul, scatter-add the weighted results back. `combine` is (B,T,E); weights (E,...)."""
    b, t, d = x.shape
    tokens, weights = x.reshape(b * t, d), combine.reshape(b * t, -1)
    out = torch.zeros_like(tokens)
    for e in range(w1.shape[0]):
        rows = torch.nonzero(weights[:, e] > 0).squeeze(1)
        picked = tokens.index_select(0, rows)
        result = (F.gelu(picked @ w1[e] + b1[e]) @ w2[e] + b2[e]) * weights.index_select(0, rows)[:, e : e + 1]
        out = out.scatter_add(0, rows.unsqueeze(1).expand(-1, d), result)
    return out.reshape(b, t, d)


class MoELayer(nn.Module):
    """Task-conditioned top-k mixture of expert MLPs with capacity-based expert-major dispatch."""

    def __init__(self, dim: int, hidden: int, num_experts: int, top_k: int, task_dim: int,
                 capacity_factor: float | None) -> None:
        super().__init__()
        self.num_experts, self.top_k, self.capacity_factor = num_experts, top_k, capacity_factor
        self.router = nn.Linear(dim + task_dim, num_experts)
        scale1, scale2 = 1 / math.sqrt(dim), 1 / math.sqrt(hidden)
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, hidden).uniform_(-scale1, scale1))
        self.b1 = nn.Parameter(torch.zeros(num_experts, 1, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, dim).uniform_(-scale2, scale2))
        self.b2 = nn.Parameter(torch.zeros(num_experts, 1, dim))
        self.aux_loss = torch.zeros(())
        self.routing_loss = "switch"
        self.task = 0                                          # the task whose routing runs now (set by M3ViT)
        self.task_probs: dict[int, list[torch.Tensor]] = {}   # training, "mi": each task's mean router probabilities
        self.usage: dict[int, torch.Tensor] = {}               # training: tokens routed to each expert, per task
        self.tokens_routed = 0
        self.tokens_dropped = 0
        # static shapes for torch.export-based cost analysis: ceil(k*T/E) tokens per expert, i.e. exactly
        # the k*T routed tokens of the dropless dispatch whenever E divides k*T (set by analysis/cost.py)
        self.static_dispatch = False

    def balanced_capacity(self, tokens: int) -> int:
        return min(tokens, math.ceil(self.top_k * tokens / self.num_experts))

    def capacity(self, tokens: int) -> int:
        """Tokens each expert takes per image: C = ceil(k*T/E * capacity_factor), at most T."""
        if self.capacity_factor is None:
            return tokens
        return min(tokens, math.ceil(self.top_k * tokens / self.num_experts * self.capacity_factor))

    @staticmethod
    def dropless_capacity(combine: torch.Tensor) -> int:
        """The most tokens any expert takes in this batch: MI training concentrates each task on few experts, so a
        balanced capacity would drop a large share of its tokens (measured 6-50%) and train a computation that
        dropless inference never runs."""
        return max(1, int((combine > 0).sum(dim=1).max()))

    def gates(self, x: torch.Tensor, task_vector: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Router probabilities (B,T,E) and the dense combine weights (B,T,E): softmax over each token's top-k."""
        b, t, _ = x.shape
        logits = self.router(torch.cat([x, task_vector.expand(b, t, -1)], dim=-1))
        top_logits, top_index = logits.topk(self.top_k, dim=-1)
        combine = torch.zeros_like(logits).scatter(-1, top_index, top_logits.softmax(dim=-1))
        return logits.softmax(dim=-1), combine

    def expert(self, e: int, tokens: torch.Tensor) -> torch.Tensor:
        return F.gelu(tokens @ self.w1[e] + self.b1[e]) @ self.w2[e] + self.b2[e]

    def forward(self, x: torch.Tensor, task_vector: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.forward_capacity(x, task_vector)
        if self.static_dispatch:
            return self.forward_capacity(x, task_vector, self.balanced_capacity(x.shape[1]))
        return self.forward_expert_major(x, task_vector)

    def forward_expert_major(self, x: torch.Tensor, task_vector: torch.Tensor) -> torch.Tensor:
        """Dropless expert-by-expert execution: only the tokens routed to an expert pass through it."""
        _, combine = self.gates(x, task_vector)
        if not _tracing():
            self.tokens_routed += int((combine > 0).sum())
        return expert_major(x, combine, self.w1, self.b1, self.w2, self.b2)

    def forward_capacity(self, x: torch.Tensor, task_vector: torch.Tensor, capacity: int | None = None) -> torch.Tensor:
        """Training dispatch with a per-expert capacity: one batched matmul. Switch training: the balanced capacity
        (tokens past it are dropped); MI training: the batch's busiest expert's load (none dropped)."""
        b, t, d = x.shape
        probs, combine = self.gates(x, task_vector)
        if capacity is None:
            capacity = self.dropless_capacity(combine) if self.routing_loss == "mi" else self.capacity(t)
        weight, index = combine.transpose(1, 2).topk(capacity, dim=-1)  # (B,E,C): each expert's tokens
        gathered = x.unsqueeze(1).expand(b, self.num_experts, t, d).gather(
            2, index.unsqueeze(-1).expand(b, self.num_experts, capacity, d))
        hidden = F.gelu(gathered @ self.w1 + self.b1)
        expert_out = (hidden @ self.w2 + self.b2) * weight.unsqueeze(-1)
        out = torch.zeros_like(x).scatter_add(
            1, index.reshape(b, -1, 1).expand(b, self.num_experts * capacity, d),
            expert_out.reshape(b, self.num_experts * capacity, d))
        if not _tracing():
            self._record(probs, combine, capacity)
        return out

    def _record(self, probs: torch.Tensor, combine: torch.Tensor, capacity: int) -> None:
        """The routing loss's terms, each task's expert use and the tokens lost to expert overflow."""
        routed = combine > 0
        per_expert = routed.sum(dim=1)  # (B,E)
        self.tokens_routed += int(routed.sum())
        self.tokens_dropped += int((per_expert - capacity).clamp(min=0).sum())
        if self.training:
            self.usage[self.task] = self.usage.get(self.task, 0) + per_expert.sum(dim=0).detach()
            if self.routing_loss == "mi":
                self.task_probs.setdefault(self.task, []).append(probs.mean(dim=(0, 1)))
            else:
                top1 = F.one_hot(probs.argmax(-1), self.num_experts).float().mean(dim=(0, 1))
                self.aux_loss = self.aux_loss + self.num_experts * (top1 * probs.mean(dim=(0, 1))).sum()

    def take_routing_loss(self) -> torch.Tensor:
        """The unweighted routing loss of the forward passes since the last call; resets it."""
        if self.routing_loss == "mi":
            per_task = [torch.stack(means).mean(dim=0) for means in self.task_probs.values()]
            self.task_probs = {}
            return mutual_information_loss(torch.stack(per_task)) if per_task else torch.zeros(())
        loss, self.aux_loss = self.aux_loss, torch.zeros(())
        return loss

    def forward_reference(self, x: torch.Tensor, task_vector: torch.Tensor) -> torch.Tensor:
        """Token-major reference: every token through each of its top-k experts (no capacity limit)."""
        _, combine = self.gates(x, task_vector)
        out = torch.zeros_like(x)
        for e in range(self.num_experts):
            out = out + self.expert(e, x) * combine[..., e : e + 1]
        return out


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: nn.Module) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), mlp

    def forward(self, x: torch.Tensor, task_vector: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x), task_vector)


class PatchDecoder(nn.Module):
    """Token grid -> 1x1 projection -> upsample x4 -> 3x3 refine -> prediction at the output size."""

    def __init__(self, dim: int, width: int, out_channels: int, out_size: list[int]) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, width, 1)
        self.refine = nn.Conv2d(width, width, 3, padding=1)
        self.predict = nn.Conv2d(width, out_channels, 1)
        self.out_size = tuple(out_size)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(F.gelu(self.proj(grid)), scale_factor=4, mode="bilinear", align_corners=False)
        x = self.predict(F.gelu(self.refine(x)))
        return F.interpolate(x, size=self.out_size, mode="bilinear", align_corners=False)


class PooledHead(nn.Module):
    def __init__(self, dim: int, out_features: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, out_features)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return self.fc(grid.mean(dim=(2, 3)))


class M3ViT(nn.Module):
    """Patch embedding, transformer blocks with MoE every other MLP, task-conditioned routing, per-task heads."""

    def __init__(self, spec: ModelSpec, cfg: dict[str, Any]) -> None:
        super().__init__()
        channels, height, width = spec.input.shape
        patch, dim = int(cfg["patch"]), int(cfg["dim"])
        if height % patch or width % patch:
            raise ValueError(f"input {height}x{width} is not divisible by the patch size {patch}")
        self.grid = (height // patch, width // patch)
        self.task_index = {t.name: i for i, t in enumerate(spec.tasks)}
        self.patch_embed = nn.Conv2d(channels, dim, patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid[0] * self.grid[1], dim) * 0.02)
        self.task_embed = nn.Parameter(torch.randn(len(spec.tasks), int(cfg["task_dim"])) * float(cfg["task_embed_std"]))
        hidden = int(dim * float(cfg["mlp_ratio"]))
        blocks = []
        every = int(cfg["moe_every"])
        for i in range(int(cfg["depth"])):
            mlp: nn.Module = (
                MoELayer(dim, hidden, int(cfg["num_experts"]), int(cfg["top_k"]), int(cfg["task_dim"]),
                         cfg["capacity_factor"])
                if every > 0 and i % every == every - 1 else MLP(dim, hidden)
            )
            blocks.append(Block(dim, int(cfg["heads"]), mlp))
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim)
        self.heads = nn.ModuleDict({t.name: self._head(t, dim, int(cfg["head_width"])) for t in spec.tasks})
        self.routing_loss = str(cfg["routing_loss"])
        if self.routing_loss not in ROUTING_LOSSES:
            raise ValueError(f"routing_loss must be one of {', '.join(ROUTING_LOSSES)}, got {self.routing_loss!r}")
        self.aux_loss_weight = float(cfg["mi_loss_weight" if self.routing_loss == "mi" else "aux_loss_weight"])
        for layer in self.moe_layers():
            layer.routing_loss = self.routing_loss

    @staticmethod
    def _head(task: TaskSpec, dim: int, width: int) -> nn.Module:
        if task.kind in DENSE_KINDS:
            return PatchDecoder(dim, width, task.output_shape[0], task.output_shape[1:])
        return PooledHead(dim, task.output_shape[0])

    def moe_layers(self) -> list[MoELayer]:
        return [b.mlp for b in self.blocks if isinstance(b.mlp, MoELayer)]

    def backbone(self, x: torch.Tensor, task: str) -> torch.Tensor:
        """Token features (B, D, h, w) under `task`'s routing."""
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        task_vector = self.task_embed[self.task_index[task]]
        for layer in self.moe_layers():
            layer.task = self.task_index[task]
        for block in self.blocks:
            tokens = block(tokens, task_vector)
        tokens = self.norm(tokens)
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, *self.grid)

    def forward(self, x: torch.Tensor, task: str | None = None) -> dict[str, torch.Tensor]:
        names = list(self.heads) if task is None else [task]
        return {name: self.heads[name](self.backbone(x, name)) for name in names}

    def auxiliary_loss(self) -> torch.Tensor:
        """The routing loss accumulated since the last call (all MoE layers, all tasks), weighted; resets it."""
        return self.aux_loss_weight * sum((layer.take_routing_loss() for layer in self.moe_layers()), torch.zeros(()))

    def expert_usage(self, reset: bool = False) -> dict[str, dict[str, list[float]]]:
        """Per MoE layer and task: the share of the task's routed tokens each expert took in training since the last
        reset (what training logs, to show whether tasks specialise)."""
        names = list(self.task_index)
        usage = {}
        for index, block in enumerate(self.blocks):
            if isinstance(block.mlp, MoELayer):
                usage[f"blocks.{index}"] = {names[t]: (counts / counts.sum().clamp(min=1)).tolist()
                                            for t, counts in sorted(block.mlp.usage.items())}
                if reset:
                    block.mlp.usage = {}
        return usage


def mutual_information_loss(task_probs: torch.Tensor) -> torch.Tensor:
    """-I(task; expert), Mod-Squad's loss (Chen et al., CVPR 2023): L = -sum_{t,e} P(t,e) log(P(t,e) / (P(t) P(e))),
    with P(t,e) = P(t) x task t's mean router probability of expert e (`task_probs`, T x E) and every task equally
    likely. Minimising it concentrates each task on few experts (H(E|T) falls) while keeping all experts used
    overall (H(E) rises): per-task balancing would force every task onto every expert instead. Where every task routes
    alike, I = 0 is a stationary point (the gradient vanishes there), so the tasks' routing must start apart: the
    `task_embed_std` config (measured on scenes, 800 steps, weight 0.05: at 0.02 every task kept 7 and 5 of 8 experts
    at 95% coverage, as without the loss; at 1.0, 1-5)."""
    joint = task_probs / task_probs.sum(dim=1, keepdim=True) / task_probs.shape[0]
    independent = joint.sum(dim=1, keepdim=True) * joint.sum(dim=0, keepdim=True)
    return -(joint * (joint.clamp(min=1e-12).log() - independent.clamp(min=1e-12).log())).sum()


def build(spec: ModelSpec, config: dict[str, Any]) -> M3ViT:
    return M3ViT(spec, config)
