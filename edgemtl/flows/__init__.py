"""Flows by name (a target file's `flow` field picks one)."""

from __future__ import annotations

from edgemtl.errors import EdgemtlError
from edgemtl.flow import Step
from edgemtl.flows import cpu_onnxruntime

FLOWS: dict[str, list[Step]] = {"cpu-onnxruntime": cpu_onnxruntime.STEPS}


def flow_steps(name: str) -> list[Step]:
    if name not in FLOWS:
        raise EdgemtlError(f"no flow called {name!r} in this edgemtl; available: {', '.join(FLOWS)}")
    return list(FLOWS[name])
