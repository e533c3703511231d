"""Flows by name (a target file's `flow` field picks one). Imported on use: the FPGA flow pulls in
brevitas, qonnx and hls4ml, which a host compile never needs."""

from __future__ import annotations

import importlib

from edgemtl.errors import EdgemtlError
from edgemtl.flow import CompileOptions, Step
from edgemtl.manifest import Manifest
from edgemtl.model.checkpoint import LoadedModel
from edgemtl.targets import Target

FLOWS: dict[str, str] = {"cpu-onnxruntime": "edgemtl.flows.cpu_onnxruntime", "fpga-hls4ml": "edgemtl.flows.fpga_hls4ml",
                         "mcu-gap9": "edgemtl.flows.mcu_gap9", "cpu-arm64": "edgemtl.flows.cpu_arm64"}


def flow_steps(name: str) -> list[Step]:
    if name not in FLOWS:
        raise EdgemtlError(f"no flow called {name!r} in this edgemtl; available: {', '.join(FLOWS)}")
    return list(importlib.import_module(FLOWS[name]).STEPS)


def flow_manifest_model(name: str) -> type[Manifest]:
    """The manifest model a flow's bundles validate against (its task entries and top-level sections)."""
    if name not in FLOWS:
        raise EdgemtlError(f"no flow called {name!r} in this edgemtl; available: {', '.join(FLOWS)}")
    return importlib.import_module(FLOWS[name]).MANIFEST


def check_flow_options(target: Target, loaded: LoadedModel, options: CompileOptions) -> None:
    """One-line errors, before any work, for options the target's flow cannot honour for this model: a flow module's
    optional `check_options(model, target, options)`."""
    check = getattr(importlib.import_module(FLOWS[target.flow]), "check_options", None)
    if check is not None:
        check(loaded.model, target, options)
