"""The operator table: which ONNX op each target takes, how, how that is verified, and what to do when it is not.

One entry per ONNX op the int8 converter (GAP9 C backend, Deeploy) accepts; tests check that the entries and the
converter's, the reference executor's, the C backend's and the cost model's op lists agree, so the table cannot
drift from the code. The ZCU104 column is read from hls4ml's own ONNX handler registry at generation time; the CPU
targets run whatever ONNX Runtime runs. `docs/operators.md` is this module's output (`make docs`), and a test
compares the two.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

BIT_EXACT = "C = reference, bit for bit (host gcc and qemu rv32), tests/backends/test_c_backend.py"


@dataclass(frozen=True)
class Int8Op:
    onnx: tuple[str, ...]        # the ONNX op types
    lowered: tuple[str, ...]     # the integer-graph ops they become (edgemtl.model.intgraph.OPS)
    how: str                     # kernel, approximation, bits
    error: str                   # the float-vs-int8 error it adds
    limits: str = ""             # what is refused, and what to do then


INT8_OPS: tuple[Int8Op, ...] = (
    Int8Op(("Conv",), ("conv",), "int8 weights per output channel, int32 accumulator, requantised per channel "
           "(mul / 2^shift); dense, depthwise, grouped, any stride and padding", "weight and output rounding",
           "no dilation or auto_pad: export with explicit padding"),
    Int8Op(("ConvTranspose",), ("conv_transpose",), "kernel == stride (a learnt upsampling), int8 weights per channel",
           "weight and output rounding", "other kernels, padding or groups: use Resize + Conv"),
    Int8Op(("Gemm", "MatMul"), ("gemm",), "constant weights, int8 per output feature, over a vector or every row "
           "of a token tensor; a following Add of a constant is its bias", "weight and output rounding"),
    Int8Op(("MatMul",), ("matmul",), "two activations (attention scores, context): int8 x int8 -> int32, one "
           "requantisation per tensor", "output rounding",
           "equal leading axes only (no broadcasting): reshape the operands"),
    Int8Op(("Relu",), ("requant",), "fused into the producing conv / gemm / add (uint8 output), else a requant",
           "none beyond the requantisation"),
    Int8Op(("Add",), ("add", "add_const", "lut"), "two activations: two scalar multipliers then one requantisation; "
           "a constant of one value or one per channel: a table; a constant of the sample's shape (position "
           "embedding): add_const", "output rounding"),
    Int8Op(("Concat",), ("concat",), "along channels; inputs requantised to one scale", "none (a copy)",
           "only along channels, no constant inputs"),
    Int8Op(("Resize",), ("resize_bilinear", "resize_nearest"), "integer factors: bilinear (PyTorch's "
           "align_corners=False, exact integer weights) or nearest", "output rounding (bilinear)",
           "non-integer factors or other coordinate modes: resize to an integer factor"),
    Int8Op(("MaxPool",), ("maxpool",), "any window, stride, padding; ceil_mode as end padding; same scale", "none",
           "no dilation or indices output"),
    Int8Op(("AveragePool",), ("avgpool",), "window sums, one divisor kh * kw folded into the requantisation",
           "output rounding", "count_include_pad=0 with padding, ceil_mode: pad explicitly"),
    Int8Op(("GlobalAveragePool", "ReduceMean"), ("avgpool_global", "reduce_mean"), "sums over H x W or any "
           "consecutive axes (tokens), divisor folded into the requantisation", "output rounding",
           "non-consecutive axes: transpose first"),
    Int8Op(("Softmax",), ("softmax",), "integer-only (after I-BERT): d = max - x, a 256-entry exp table at 2^16, "
           "one integer division per row, uint8 output at a calibrated scale", "<= 1 LSB of the output plus the "
           "table's 2^-16 rounding", "opset < 13 softmax over a flattened block of axes"),
    Int8Op(("LayerNormalization",), ("layernorm",), "integer-only: exact mean and variance in int64, an exact "
           "integer square root, a 2^62 reciprocal, z at 2^16, gamma and beta folded per feature",
           "~2^-16 relative in z, then output rounding", "over the last axis only, at most 4096 features"),
    Int8Op(("TopK",), ("moe",), "a mixture-of-experts layer as edgemtl's m3vit exports it (TopK over a router's "
           "logits, then NonZero / Gather / ScatterElements per expert), one node: int8 router logits (the task "
           "embedding folded into the bias), top-k with integer-softmax gates, each kept expert's fc1 -> GELU table "
           "-> fc2 (one scale per stage for all experts), the gated sum in int32; the C runs it expert by expert "
           "over the routed tokens only", "output rounding at every stage (router, gates, fc1, GELU, fc2, sum)",
           "any other use of TopK, or experts that are not two linear layers around one elementwise function"),
    Int8Op(("Transpose",), ("transpose",), "a copy (axes of size 1 ignored); none when only size-1 axes move",
           "none"),
    Int8Op(("Split", "Slice", "Gather"), ("slice",), "a copy of one range along one axis (constant, step 1)", "none",
           "run-time indices, steps or several axes: not supported"),
    Int8Op(("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout"), ("flatten",),
           "a relabelling of the same bytes (no code when the buffer can alias)", "none",
           "a reshape that mixes samples of the batch"),
    Int8Op(("Sigmoid", "HardSigmoid", "Tanh", "LeakyRelu", "PRelu", "HardSwish", "Elu", "Clip", "Gelu", "Erf", "Exp",
            "Neg", "Abs", "Softplus", "Sqrt", "Reciprocal", "Pow", "Mul", "Sub", "Div"), ("lut",),
           "a 256-entry table per tensor (per channel for PRelu slopes or per-channel constants); a chain of them on "
           "one value (GELU as exported, SiLU, HardSwish, Mish) is one table", "half an output step (the table's "
           "rounding)", "a constant that varies along more than the channels; Mul of two different activations"),
)

PRECISION_NOTE = ("Every activation is int8 or uint8 with one scale per tensor (calibrated: MSE-optimal clipping by "
                  "default), every accumulator int32 (int64 inside softmax and layernorm), requantisation "
                  "`clip((acc * mul + add + 2^(shift-1)) >> shift)`.")


def int8_onnx_ops() -> set[str]:
    return {op for entry in INT8_OPS for op in entry.onnx}


def _hls4ml_ops() -> tuple[str, set[str]]:
    try:
        import hls4ml

        from edgemtl.backends.hls4ml_backend import _REWRITTEN, _supported_ops
    except ImportError:  # pragma: no cover - the test extra installs hls4ml
        return "absent", set()
    return hls4ml.__version__, _supported_ops() | _REWRITTEN


def _hls4ml_answer(op: str, hls4ml_ops: set[str]) -> str:
    from edgemtl.backends.hls4ml_backend import HANDLER_LIMITS

    return HANDLER_LIMITS.get(op, "yes") if op in hls4ml_ops else "no"


def render_markdown() -> str:
    """docs/operators.md."""
    from edgemtl.backends.deeploy_onnx import UNMAPPED_OPS

    version, hls4ml_ops = _hls4ml_ops()
    lines = [
        "# Operators per target",
        "",
        "Generated by `python -m edgemtl.flows.operators` (`make docs`) from the code's own registry "
        "(`edgemtl/flows/operators.py`); `tests/test_operators.py` fails when this file and the code "
        "disagree. `edgemtl inspect MODEL --target T` answers the same question for one model in seconds.",
        "",
        "- **host, arm64**: every op ONNX Runtime (and, where tuned, TVM Relax) runs; nothing is refused.",
        f"- **gap9** (int8 reference executor, generated C, Deeploy): the ops below. {PRECISION_NOTE} "
        f"Verified: {BIT_EXACT}; the float-vs-int8 error of each task is measured on its own data in every compile "
        "(manifest: per-task metric float -> int8, SQNR for unlabelled tasks).",
        "- **Deeploy** (deeploy-pulp 0.2.1, PULPOpen): the integer-graph ops it maps; an unmapped op is written as "
        "a placeholder and Deeploy runs on the mappable prefix; the generated C always runs the whole path.",
        f"- **zcu104** (hls4ml {version}): whether hls4ml has an ONNX handler for the op (read from hls4ml's "
        "registry, less the forms its kernels were found not to take); the flow's QAT (brevitas) and C simulation "
        "check the rest. An op without a handler, or in a form it cannot take, refuses the task in one line, "
        "before QAT (`edgemtl inspect --target zcu104`).",
        "",
        "| ONNX op | gap9: integer form | error added | Deeploy | zcu104 (hls4ml handler) | refused, and what to do |",
        "|---|---|---|---|---|---|",
    ]
    for entry in INT8_OPS:
        deeploy = ", ".join(f"{op}: {'no' if op in UNMAPPED_OPS else 'yes'}" for op in entry.lowered)
        fpga = ", ".join(f"{op}: {_hls4ml_answer(op, hls4ml_ops)}" for op in entry.onnx)
        lowered = " / ".join(f"`{op}`" for op in entry.lowered)
        lines.append(f"| {', '.join(entry.onnx)} | {lowered}: {entry.how} | {entry.error} | {deeploy} | {fpga} | "
                     f"{entry.limits or '-'} |")
    others = sorted(hls4ml_ops - int8_onnx_ops() - {"BatchNormalization", "Constant"})
    lines += ["", "Any other ONNX op is refused on the gap9 path with one line naming the op, the node and the task "
              "(the task's other paths still compile). BatchNormalization after a Conv is folded before any of this.",
              "", f"ONNX ops hls4ml {version} handles that the int8 path does not: {', '.join(others) or 'none'}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render_markdown())
