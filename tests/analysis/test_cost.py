"""Cost facts checked against hand arithmetic and against torch's own FlopCounterMode."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from edgemtl.analysis.cost import ModelCost, model_cost, path_cost
from edgemtl.errors import EdgemtlError
from edgemtl.model.spec import ModelSpec

SPEC = ModelSpec.model_validate(
    {
        "input": {"shape": [3, 8, 8]},
        "tasks": [
            {"name": "a", "kind": "classification", "output_shape": [3]},
            {"name": "b", "kind": "segmentation", "output_shape": [2, 8, 8]},
        ],
    }
)

# Hand arithmetic for TwoTask on a 1x3x8x8 input.
TRUNK_PARAMS = (3 * 4 * 3 * 3 + 4) + (4 + 4)  # conv3x3 3->4 with bias, BN affine = 120
HEAD_A_PARAMS = 4 * 3 + 3  # Linear(4->3) = 15
HEAD_B_PARAMS = 4 * 2 + 2  # conv1x1 4->2 = 10
TRUNK_MACS = (4 * 8 * 8) * (3 * 3 * 3)  # 256 outputs, a 3x3x3 window each = 6912
HEAD_A_MACS = 4 * 3  # after global pooling = 12
HEAD_B_MACS = (2 * 8 * 8) * 4  # 128 outputs, 4 inputs each = 512


class TwoTask(nn.Module):
    """Shared conv-BN-ReLU trunk; head a pools then classifies, head b is a 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head_a = nn.Linear(4, 3)
        self.head_b = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor, task: str | None = None) -> dict[str, torch.Tensor]:
        features = self.trunk(x)
        outputs = {}
        if task in (None, "a"):
            outputs["a"] = self.head_a(features.mean((2, 3)))
        if task in (None, "b"):
            outputs["b"] = self.head_b(features)
        return outputs


class TwoTaskNoKeyword(TwoTask):
    """The same model whose forward always runs both heads."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return super().forward(x)


@pytest.fixture(scope="module")
def two_task_cost() -> ModelCost:
    return model_cost(TwoTask(), SPEC)


def test_params_per_task_exclude_the_other_head(two_task_cost: ModelCost) -> None:
    assert two_task_cost.tasks["a"].params == TRUNK_PARAMS + HEAD_A_PARAMS == 135
    assert two_task_cost.tasks["b"].params == TRUNK_PARAMS + HEAD_B_PARAMS == 130
    assert two_task_cost.all_tasks.params == two_task_cost.total_params == 145
    assert two_task_cost.tasks["a"].param_names == {
        "trunk.0.weight", "trunk.0.bias", "trunk.1.weight", "trunk.1.bias", "head_a.weight", "head_a.bias"
    }


def test_macs_per_task(two_task_cost: ModelCost) -> None:
    a, b = two_task_cost.tasks["a"], two_task_cost.tasks["b"]
    assert a.macs == TRUNK_MACS + HEAD_A_MACS == 6924
    assert a.macs_by_op == {"conv": TRUNK_MACS, "linear": HEAD_A_MACS, "matmul": 0, "attention": 0}
    assert b.macs == TRUNK_MACS + HEAD_B_MACS == 7424
    assert two_task_cost.all_tasks.macs == TRUNK_MACS + HEAD_A_MACS + HEAD_B_MACS


def test_shared_params(two_task_cost: ModelCost) -> None:
    assert two_task_cost.shared_params == {"a": TRUNK_PARAMS, "b": TRUNK_PARAMS}
    assert two_task_cost.shared_fraction("a") == pytest.approx(120 / 135)
    report = json.loads(json.dumps(two_task_cost.to_dict()))
    assert report["tasks"]["b"]["shared_fraction"] == pytest.approx(120 / 130)
    assert report["all_tasks"]["macs"] == 7436 and report["total_params"] == 145


def test_two_task_peak(two_task_cost: ModelCost) -> None:
    # Live at the BN node: the conv output and the BN output, 4x8x8 floats each; the input died at the conv.
    assert two_task_cost.tasks["b"].peak_activation_bytes == 2 * 4 * 8 * 8 * 4
    assert two_task_cost.tasks["b"].largest_tensor_bytes == 4 * 8 * 8 * 4


def test_model_without_task_keyword_drops_dead_heads(two_task_cost: ModelCost) -> None:
    model = TwoTaskNoKeyword()
    model.load_state_dict(TwoTask().state_dict())
    cost = model_cost(model, SPEC)
    for task in ("a", "b"):
        assert cost.tasks[task] == two_task_cost.tasks[task]


def test_peak_of_a_chain_counts_the_input_and_not_views() -> None:
    x = torch.randn(1, 3, 8, 8)  # 768 bytes
    single = path_cost(nn.Conv2d(3, 1, 1), x)
    assert single.peak_activation_bytes == 768 + 1 * 8 * 8 * 4  # input and output live at the conv
    assert single.largest_tensor_bytes == 768
    chain = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Dropout(), nn.Flatten(), nn.Linear(256, 10))
    cost = path_cost(chain, x)
    # conv: x + conv (768 + 1024); relu: conv + relu (2048); dropout and flatten alias relu's storage;
    # linear: relu + 10 floats (1064). Counting the flatten view as its own tensor would give 2088.
    assert cost.peak_activation_bytes == 2048
    assert cost.largest_tensor_bytes == 1024
    assert cost.macs == TRUNK_MACS + 256 * 10


class Tokens(nn.Module):
    """Patch-free tokeniser with a learned position embedding used directly in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 8)
        self.pos = nn.Parameter(torch.zeros(1, 64, 8))
        self.head_a = nn.Linear(8, 3)
        self.head_b = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens = self.proj(x.flatten(2).transpose(1, 2)) + self.pos  # (1, 64, 8)
        grid = tokens.transpose(1, 2).reshape(1, 8, 8, 8)
        return {"a": self.head_a(tokens.mean(1)), "b": self.head_b(grid)}


def test_bare_parameter_and_linear_on_tokens() -> None:
    cost = model_cost(Tokens(), SPEC, tasks=["a"])
    a = cost.tasks["a"]
    assert "pos" in a.param_names and "head_b.weight" not in a.param_names
    assert a.params == (3 * 8 + 8) + 64 * 8 + (8 * 3 + 3)
    # A Linear on (B, T, D) costs T * D * out: 64 tokens * 3 * 8, then the pooled head 8 * 3.
    assert a.macs_by_op["linear"] == 64 * 3 * 8 + 8 * 3
    assert list(cost.tasks) == ["a"] and cost.all_tasks == a


class Tied(nn.Module):
    """Two heads tied to one weight matrix, each with its own bias."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(3 * 8 * 8, 16)
        self.head_a, self.head_b = nn.Linear(16, 3), nn.Linear(16, 3)
        self.head_b.weight = self.head_a.weight

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.enc(x.flatten(1))
        return {"a": self.head_a(z), "b": self.head_b(z)}


def test_tied_weights_use_the_canonical_name() -> None:
    cost = model_cost(Tied(), SPEC)
    # Export calls the tied weight head_b.weight on b's path; named_parameters() calls it head_a.weight.
    assert cost.tasks["b"].param_names == {"enc.weight", "enc.bias", "head_a.weight", "head_b.bias"}
    enc = 192 * 16 + 16
    assert cost.tasks["b"].params == enc + 16 * 3 + 3
    assert cost.shared_params == {"a": enc + 16 * 3, "b": enc + 16 * 3}
    assert cost.total_params == cost.all_tasks.params == enc + 16 * 3 + 3 + 3


class Attention(nn.Module):
    """Multi-head self-attention over (B, T, D), with SDPA or with explicit matmuls."""

    def __init__(self, dim: int = 8, heads: int = 2, fused: bool = True) -> None:
        super().__init__()
        self.heads, self.fused = heads, fused
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.fused:
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            weights = (q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)).softmax(-1)
            y = weights @ v
        return self.out(y.transpose(1, 2).reshape(b, t, d))


def test_sdpa_and_explicit_attention_cost_the_same() -> None:
    x = torch.randn(1, 16, 8)
    fused = path_cost(Attention(fused=True), x)
    explicit = path_cost(Attention(fused=False), x)
    # Per head: Q@K^T is T*T*d and weights@V another T*T*d; 2 heads of d = 4 over T = 16 tokens.
    attention = 2 * (2 * 16 * 16 * 4)
    assert fused.macs_by_op["attention"] == attention and fused.macs_by_op["matmul"] == 0
    assert explicit.macs_by_op["matmul"] == attention and explicit.macs_by_op["attention"] == 0
    assert fused.macs == explicit.macs == attention + 16 * 8 * 24 + 16 * 8 * 8


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8),  # depthwise
            nn.Conv2d(8, 16, 1), nn.ReLU(),
            nn.ConvTranspose2d(16, 4, 2, stride=2, groups=2),
        )
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.body(x), 1).flatten(1))


class Block(nn.Module):
    def __init__(self, dim: int = 16, fused: bool = True) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads=4, fused=fused)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Einsums(nn.Module):
    """Two-operand, ellipsis, full-contraction and three-operand einsums (torch contracts left to right)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.einsum("bij,jk->bik", x, self.w)
        b = torch.einsum("...ij,...kj->...ik", x, x)
        c = torch.einsum("bij,bij", x, x)
        d = torch.einsum("bij,bkj,bkl->bil", x, x, x)
        return a.sum() + b.sum() + c + d.sum()


def _flops(module: nn.Module, x: torch.Tensor) -> int:
    # The math SDPA backend runs as matmuls FlopCounterMode can see (it has no formula for the CPU kernel).
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        module.eval()(x)
    return counter.get_total_flops()


@pytest.mark.parametrize(
    ("module", "x"),
    [
        (SmallCNN(), torch.randn(1, 3, 16, 16)),
        (Block(fused=True), torch.randn(1, 10, 16)),
        (Block(fused=False), torch.randn(1, 10, 16)),
        (Einsums(), torch.randn(2, 5, 4)),
    ],
    ids=["cnn", "block-sdpa", "block-matmul", "einsum"],
)
def test_macs_match_flop_counter(module: nn.Module, x: torch.Tensor) -> None:
    assert 2 * path_cost(module, x).macs == _flops(module, x)


def test_training_flags_are_restored() -> None:
    model = TwoTask().train()
    model.trunk[1].eval()  # a frozen BN must stay frozen, the rest in training
    before = [m.training for m in model.modules()]
    model_cost(model, SPEC)
    assert [m.training for m in model.modules()] == before


class Untraceable(TwoTask):
    def forward(self, x: torch.Tensor, task: str | None = None) -> dict[str, torch.Tensor]:
        if x.sum() > 0:  # data-dependent control flow
            x = -x
        return super().forward(x, task)


def test_untraceable_path_is_one_line_error() -> None:
    with pytest.raises(EdgemtlError, match=r"^task path 'a' could not be traced") as info:
        model_cost(Untraceable(), SPEC)
    assert "\n" not in str(info.value)
