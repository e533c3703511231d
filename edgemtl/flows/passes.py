"""Model passes as flow steps, shared by every target's flow (prepended when the user asks for them)."""

from __future__ import annotations

from dataclasses import replace

from edgemtl.errors import EdgemtlError
from edgemtl.flow import CompileOptions, FlowContext
from edgemtl.flows.common import data_source
from edgemtl.model.checkpoint import save
from edgemtl.model.spec import ModelSpec
from edgemtl.passes.prune_pagcp import PAGCPConfig, prune_pagcp

PRUNED_CHECKPOINT = "model/pruned.pt"


def check_prune_request(options: CompileOptions, spec: ModelSpec) -> PAGCPConfig:
    """The pass's config, or a one-line error before any work is done."""
    if (options.data or spec.data) is None:
        raise EdgemtlError("pruning needs real images for its loss oracle and fine-tuning: pass --data "
                           "(see docs/own-model.md)")
    assert options.prune is not None
    options.prune.check_tasks(spec)
    return options.prune


def prune_step(ctx: FlowContext) -> None:
    """PAGCP on the loaded model; later steps see the pruned model; the pruned checkpoint joins the bundle."""
    config = check_prune_request(ctx.options, ctx.loaded.spec)
    source = data_source(ctx, "pruning")
    name = source.reference
    model, spec, record = prune_pagcp(ctx.loaded.model, ctx.loaded.spec, source.load("train"),
                                      source.load("val"), config, show_progress=False)
    save(model, spec, ctx.bundle / PRUNED_CHECKPOINT, meta={"pagcp": record.to_dict()})
    ctx.loaded = replace(ctx.loaded, model=model, spec=spec)
    summary = record.to_dict()
    summary.pop("decisions")
    ctx.manifest.setdefault("passes", {})["prune_pagcp"] = {
        **summary, "data": f"{name}/train (fine-tuning), {name}/val (oracle, metrics)",
        "macs_provenance": "counted (edgemtl analysis, batch 1)", "artifacts": {"checkpoint": PRUNED_CHECKPOINT},
        "layers": [{k: v for k, v in d.items() if k != "removed"} for d in record.to_dict()["decisions"]],
    }
