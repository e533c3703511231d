"""The one adapter between passes and flows: `pass_step(name)` runs a registered pass on the flow's context.

It hands the pass what the flow knows (`PassInput`), writes the pass's record under manifest["passes"][name],
lets later steps see a model the pass changed (pruning), and leaves what the pass built per task to the flow's
`keep` hook, which puts it in the typed state (`FlowState`) and the task entries. A flow never calls a pass itself.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from edgemtl.flow import CompileOptions, FlowContext, Skipped, Step
from edgemtl.flows.common import task_list
from edgemtl.passes.base import PassInput, PassResult, Skip
from edgemtl.passes.registry import pass_info

StepFn = Callable[[FlowContext], "Skipped | None"]


def pass_input(ctx: FlowContext, tasks: list[str]) -> PassInput:
    """What a pass may read of the flow: the model, the data, and what earlier steps found."""
    state = ctx.state
    return PassInput(ctx.loaded.model, ctx.loaded.spec, tasks, task_models=state.task_models, source=state.source,
                     held_out=state.data, labelled=state.labelled_tasks, cost=state.cost, bundle=ctx.bundle,
                     model_sha256=ctx.loaded.sha256, progress=ctx.progress)


def requested_config(options: CompileOptions, name: str) -> Any:
    """The config the user asked for this pass (`CompileOptions.passes`), else the pass's defaults."""
    for request in options.passes:
        if request.name == name:
            return request.config
    return pass_info(name).config()


def pass_step(name: str, *, config: Callable[[FlowContext], Any] | None = None,
              tasks: Callable[[FlowContext], list[str]] | None = None,
              skip: Callable[[FlowContext], str | None] | None = None,
              keep: Callable[[FlowContext, PassResult[Any]], None] | None = None) -> StepFn:
    """A step running pass `name`: `config` builds its config from the context (default: `requested_config`),
    `tasks` picks the tasks it works on (default: all), `skip` gives a reason this flow cannot use it (recorded as
    the pass's entry), and `keep` takes what it built, once its record is in the manifest."""
    info = pass_info(name)

    def step(ctx: FlowContext) -> Skipped | None:
        entries = ctx.manifest.setdefault("passes", {})
        reason = skip(ctx) if skip is not None else None
        if reason is None:
            chosen = config(ctx) if config is not None else requested_config(ctx.options, name)
            result = info.run(pass_input(ctx, tasks(ctx) if tasks is not None else task_list(ctx)), chosen)
            reason = result.skipped
        if reason is not None:
            entries[name] = Skip(reason).to_manifest()
            return Skipped(reason)
        entries[name] = result.record.to_manifest()
        if result.model is not ctx.loaded.model or result.spec is not ctx.loaded.spec:
            ctx.loaded = replace(ctx.loaded, model=result.model, spec=result.spec)  # later steps see the new model
        if keep is not None:
            keep(ctx, result)
        return None

    step.__name__ = step.__qualname__ = name
    step.__doc__ = info.description
    return step


def requested_steps(options: CompileOptions) -> list[Step]:
    """The passes a compile was asked to run before its flow (`--prune-flops`), as steps, in order."""
    return [(request.name, pass_step(request.name, config=lambda _ctx, chosen=request.config: chosen))
            for request in options.passes]
