"""Every pass by name: what flows and `CompileOptions.passes` refer to. Adding a pass adds one line here."""

from __future__ import annotations

from edgemtl.errors import EdgemtlError
from edgemtl.model.spec import ModelSpec
from edgemtl.passes.base import PassInfo, PassRequest
from edgemtl.passes.brevitas_qat.config import QuantConfig
from edgemtl.passes.int8.config import Int8Config
from edgemtl.passes.ort_qdq.config import QdqConfig
from edgemtl.passes.partition_experts import PartitionConfig
from edgemtl.passes.prune_pagcp import PAGCPConfig
from edgemtl.passes.slice_widths import SliceConfig

PASSES: dict[str, PassInfo] = {info.name: info for info in (
    PassInfo("prune_pagcp", PAGCPConfig, "edgemtl.passes.prune_pagcp",
             "PAGCP channel pruning to a MACs target, every task's loss guarded; later steps see the pruned model",
             needs_data="pruning needs real images for its loss oracle and fine-tuning"),
    PassInfo("slice_widths", SliceConfig, "edgemtl.passes.slice_widths",
             "slimmable models: the narrow model at one width configuration (--widths); later steps see it"),
    PassInfo("partition_experts", PartitionConfig, "edgemtl.passes.partition_experts",
             "MoE models: each task's expert path, keeping the experts that carry its routing (skipped otherwise)"),
    PassInfo("quantize_brevitas", QuantConfig, "edgemtl.passes.quantize_brevitas",
             "power-of-two QAT of every task path with brevitas (calibration on real images, then fine-tuning)"),
    PassInfo("quantize_int8", Int8Config, "edgemtl.passes.quantize_int8",
             "int8 post-training quantization of every task path into an integer graph (per-channel weights)"),
    PassInfo("quantize_int8_qdq", QdqConfig, "edgemtl.passes.quantize_int8_qdq",
             "int8 QDQ ONNX of every task path (ONNX Runtime static quantization), remedies tried in order until the metric holds"),
)}


def pass_info(name: str) -> PassInfo:
    if name not in PASSES:
        raise EdgemtlError(f"no pass called {name!r} in this edgemtl; available: {', '.join(PASSES)}")
    return PASSES[name]


def check_request(request: PassRequest, spec: ModelSpec, has_data: bool) -> None:
    """One-line errors for a pass a compile was asked to run, before any work: an unknown name, a config of
    another pass, settings the model contradicts, or no data for a pass that needs it."""
    info = pass_info(request.name)
    if not isinstance(request.config, info.config):
        raise EdgemtlError(f"pass {info.name!r} takes a {info.config.__name__}, not a {type(request.config).__name__}")
    if info.needs_data and not has_data:
        raise EdgemtlError(f"{info.needs_data}: pass --data (see docs/own-model.md)")
    request.config.check(spec)
