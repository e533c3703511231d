"""The `edgemtl` command line: parse arguments, call the library, print. No logic of its own.

Every error is one `edgemtl: error:` line on stderr, no traceback, with one exit status per kind: 2 bad input or
usage (`EdgemtlError`, a wrong option), 3 a failed verification (`VerificationError`: a graph, C or HLS output
off its reference), 1 a bug (anything else keeps its traceback).
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgemtl.cli_tune import tune_app
from edgemtl.cli_tables import (expert_usage_table, history_table, human, metrics_table, moe_table, profile_table, prune_tables, widths_json,
                                widths_table)
from edgemtl.cli_parse import parse_holdout, parse_layer_bits, parse_overrides, parse_task_values, split_tasks
from edgemtl.errors import EdgemtlError, VerificationError
from edgemtl.passes.prune_pagcp import PAGCPConfig

if TYPE_CHECKING:
    from edgemtl.passes.base import PassRequest

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Compile trained multi-task PyTorch models for edge hardware.")
EXIT_BAD_INPUT, EXIT_VERIFICATION_FAILED = 2, 3
# Piped or redirected, rich would squeeze tables into 80 columns and cut cells ("onnxrun…"): give it room instead,
# so every cell is printed whole (a terminal keeps its own width).
out = Console() if Console().is_terminal else Console(width=400)
err = Console(stderr=True) if Console(stderr=True).is_terminal else Console(stderr=True, width=400)

ModelPath = Annotated[Path, typer.Argument(help="edgemtl checkpoint (.pt), or a state_dict with --model-factory")]
FactoryOpt = Annotated[Optional[str], typer.Option("--model-factory", help="package.module:function returning the nn.Module")]
SpecOpt = Annotated[Optional[Path], typer.Option("--spec", help="YAML/TOML spec (input shape, tasks) for non-zoo models")]
TrustOpt = Annotated[bool, typer.Option("--trust", help="allow unpickling a fully pickled module (runs code from the file)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
DATA_HELP = "scenes | digits | FILE.npz | FOLDER of images | package.module:function (default: the model's built-in set)"
ResizeOpt = Annotated[bool, typer.Option("--resize", help="resize the data's images to the model's input (recorded)")]
HoldoutOpt = Annotated[Optional[str], typer.Option(
    "--holdout", help="VAL,TEST: fractions held out when the data names no split (default 0.15,0.15; seeded; recorded)")]


def _load(path: Path, factory: str | None, spec: Path | None, trust: bool):
    from edgemtl.model.checkpoint import load

    return load(path, factory=factory, spec_path=spec, trust=trust)


@app.command()
def train(
    arch: Annotated[str, typer.Option(help="zoo architecture: mtl-cnn | m3vit")] = "mtl-cnn",
    data: Annotated[str, typer.Option(help=DATA_HELP + "; own data needs --model-factory and --spec")] = "scenes",
    steps: Annotated[int, typer.Option(min=1)] = 600,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    lr: Annotated[float, typer.Option(min=0)] = 3e-3,
    seed: int = 0,
    train_samples: Annotated[Optional[int], typer.Option(min=1, help="training set size")] = None,
    config: Annotated[list[str], typer.Option("--config", help="architecture option key=value (repeatable)")] = [],
    resize: ResizeOpt = False,
    holdout: HoldoutOpt = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="checkpoint to write")] = Path("model.pt"),
    model_factory: Annotated[Optional[str], typer.Option(
        "--model-factory", help="package.module:function building YOUR module (trained from its initial weights)")] = None,
    spec: SpecOpt = None,
    slimmable: Annotated[bool, typer.Option("--slimmable", help="train every width of its width space (docs/widths.md)")] = False,
    random_configs: Annotated[int, typer.Option(min=0, help="--slimmable: random configurations per step")] = 2,
    distill_weight: Annotated[float, typer.Option(min=0, help="--slimmable: weight of the feature distillation")] = 0.1,
    private_affine: Annotated[bool, typer.Option(
        "--private-affine/--no-private-affine", help="--slimmable: a private affine per narrower width (docs/widths.md)")] = True,
) -> None:
    """Train a zoo model on a built-in data set (an edgemtl checkpoint), or your own module from --model-factory
    on any --data (a plain state_dict, as --model-factory reads it); --slimmable: at every width of its width space."""
    import torch

    from edgemtl.data.sources import open_data
    from edgemtl.evaluate import evaluate, torch_predictor
    from edgemtl.model.checkpoint import save, save_state_dict
    from edgemtl.model.width_masks import WidthMasks
    from edgemtl.model.zoo import build_model, slimmable_spec, zoo_spec
    from edgemtl.training import TrainConfig, train as run_training
    from edgemtl.training.slimmable import SlimmableConfig, configured, train_slimmable

    torch.manual_seed(seed)
    if model_factory is not None:
        model, model_spec = _factory_for_training(model_factory, spec)
        source = open_data(data, model_spec, seed=seed, resize=resize, holdout=parse_holdout(holdout))
        if not source.labelled:
            raise EdgemtlError(f"data {data!r} labels none of the tasks {', '.join(model_spec.task_names)}: "
                               "nothing to train on")
        train_set, val_set, scored = source.load("train", n=train_samples), source.load("val"), source.labelled
    else:
        if spec is not None:
            raise EdgemtlError("--spec describes your own module: pass --model-factory with it")
        from edgemtl.data import data_spec, load_data

        input_spec, tasks = data_spec(data)  # a zoo model trains on a built-in set (its tasks come from it)
        model_spec = zoo_spec(arch, input_spec, tasks, parse_overrides(config), data=data)
        model = build_model(model_spec)
        train_set, val_set = load_data(data, "train", n=train_samples, seed=seed), load_data(data, "val")
        scored = model_spec.task_names
    if slimmable:  # before any training: a model whose convs cannot be sliced is one line
        model_spec = model_spec if model_spec.widths is not None else slimmable_spec(model_spec)
        masks = WidthMasks(model, model_spec)   # BatchNorm statistics per width: recalibrated when sliced
    trained_spec = model_spec.model_copy(update={"tasks": [model_spec.task(t) for t in scored]})  # losses need labels
    settings = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    if slimmable:
        slim = SlimmableConfig(random_configs=random_configs, distill_weight=distill_weight, private_affine=private_affine)
        result, _ = train_slimmable(model, trained_spec, train_set, settings, slim, masks=masks)
    else:
        result = run_training(model, trained_spec, train_set, settings)
        if result.expert_usage:   # a mixture-of-experts model: do its tasks specialise?
            out.print(expert_usage_table(result.expert_usage))
    metrics = evaluate(torch_predictor(model), [model_spec.task(t) for t in scored], val_set)
    record = {"train": {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "data": data,
                        "seconds": round(result.seconds, 1), "expert_usage": getattr(result, "expert_usage", {})},
              "val_metrics": metrics}
    if slimmable:
        with configured(model, masks, model_spec.widths.narrowest(), train_set, batch_size=batch_size):
            narrowest = evaluate(torch_predictor(model), [model_spec.task(t) for t in scored], val_set)
        record["train"]["slimmable"] = result.record(narrowest)
        out.print(result.summary())
    if model_factory is not None:
        save_state_dict(model, output)
    else:
        save(model, model_spec, output, meta=record)
    name = model_factory or arch
    out.print(metrics_table(f"{name} on {data} (val split), {steps} steps in {result.seconds:.0f} s", metrics, model_spec))
    untrained = [t for t in model_spec.task_names if t not in scored]
    if untrained:
        err.print(f"note: {data} labels no {', '.join(untrained)}: those heads were not trained (no loss without labels)")
    out.print(f"{'state_dict' if model_factory else 'checkpoint'}: {output}")


def _factory_for_training(factory: str, spec_path: Path | None):
    """The user's freshly built module and its spec, checked against each other before any training."""
    from edgemtl.model.checkpoint import build_from_factory
    from edgemtl.model.contract import validate_model
    from edgemtl.model.spec import read_spec_file

    if spec_path is None:
        raise EdgemtlError("--model-factory needs --spec FILE (YAML or TOML: input shape and tasks)")
    model_spec = read_spec_file(spec_path)
    model = build_from_factory(factory)
    validate_model(model, model_spec)
    return model, model_spec


@app.command(name="eval")
def eval_command(
    model: ModelPath,
    data: Annotated[Optional[str], typer.Option(help=DATA_HELP)] = None,
    split: str = "val",
    resize: ResizeOpt = False,
    holdout: HoldoutOpt = None,
    samples: Annotated[Optional[int], typer.Option("--n", min=1, help="number of samples")] = None,
    as_json: JsonOpt = False,
    model_factory: FactoryOpt = None, spec: SpecOpt = None, trust: TrustOpt = False,
) -> None:
    """Per-task metrics of a model on the tasks its data labels (built-in set, npz, folder or Dataset factory)."""
    from edgemtl.data.sources import open_data
    from edgemtl.evaluate import evaluate, torch_predictor

    loaded = _load(model, model_factory, spec, trust)
    name = data or loaded.spec.data
    if name is None:
        raise EdgemtlError("this model does not say which data it was trained on: pass --data (see docs/own-model.md)")
    source = open_data(name, loaded.spec, resize=resize, holdout=parse_holdout(holdout))
    if not source.labelled:
        raise EdgemtlError(f"data {name!r} labels none of the tasks {', '.join(loaded.spec.task_names)}: nothing to score")
    dataset = source.load(split, n=samples)
    metrics = evaluate(torch_predictor(loaded.model), [loaded.spec.task(t) for t in source.labelled], dataset)
    if as_json:
        out.print_json(json.dumps({"data": f"{name}/{split}", "samples": len(dataset), "metrics": metrics}))
    else:
        out.print(metrics_table(f"{model} on {name}/{split} ({len(dataset)} samples)", metrics, loaded.spec))


@app.command()
def inspect(
    model: ModelPath,
    tasks: Annotated[Optional[str], typer.Option(help="comma-separated task names (default: all)")] = None,
    target: Annotated[Optional[str], typer.Option(
        help="also say which task paths this target's lowering cannot take, and the op that stops each")] = None,
    as_json: JsonOpt = False,
    model_factory: FactoryOpt = None, spec: SpecOpt = None, trust: TrustOpt = False,
) -> None:
    """Per task: parameters, MACs, peak activation memory of its path, and the shared fraction; a slimmable model's
    width space; with --target, the ops that target cannot take (seconds, before any compile)."""
    from edgemtl.analysis.cost import model_cost

    from edgemtl.analysis.moe_cost import moe_macs
    from edgemtl.passes.partition_experts import has_experts

    chosen = None
    if target is not None:
        from edgemtl.targets import load_target

        chosen = load_target(target)  # an unknown target fails before the model is read
    loaded = _load(model, model_factory, spec, trust)
    names = [t.name for t in loaded.spec.select(split_tasks(tasks))]
    support = None
    if chosen is not None:
        from edgemtl.flows.op_support import target_note, task_support

        support = task_support(loaded.model, loaded.spec, chosen, names)
        if all(reason is not None for reason in support.values()):
            raise EdgemtlError(f"no task path of {model} fits target {target}: {next(iter(support.values()))}")
    analysed = model_cost(loaded.model, loaded.spec, names)
    cost = analysed.to_dict()
    moe = moe_macs(loaded.model, loaded.spec, names, analysed) if has_experts(loaded.model) else None
    if as_json:
        checked = {} if support is None else {"target": {"name": target, "note": target_note(loaded.model, chosen), "tasks": {
            t: {"supported": reason is None, **({"reason": reason} if reason else {})} for t, reason in support.items()}}}
        out.print_json(json.dumps({"model": str(model), "arch": loaded.spec.arch, **cost, **({"moe": moe} if moe else {}),
                                   **widths_json(loaded.spec), **checked}))
        return
    table = Table(title=f"{model} ({loaded.spec.arch}), batch 1, MACs of conv/linear/matmul/attention")
    for column in ("task", "params", "MACs", "peak activation", "shared params"):
        table.add_column(column, justify="right" if column != "task" else "left")
    for name, entry in cost["tasks"].items():
        table.add_row(name, human(entry["params"]), human(entry["macs"]), f"{entry['peak_activation_bytes'] / 1024:.1f} KiB",
                      f"{entry['shared_fraction']:.0%}")
    total = cost["all_tasks"]
    table.add_row("[b]all tasks[/b]", human(total["params"]), human(total["macs"]),
                  f"{total['peak_activation_bytes'] / 1024:.1f} KiB", "")
    out.print(table)
    if moe:
        out.print(moe_table(moe))
    if (space := widths_table(loaded.spec)) is not None:   # a slimmable model's width space, or where it was sliced
        out.print(space)
    for name, reason in (support or {}).items():
        out.print(f"{target}: task {name!r}: {'no op refused' if reason is None else reason}")
    if chosen is not None and target_note(loaded.model, chosen):
        out.print(f"{target}: note: {target_note(loaded.model, chosen)}")


MaxDropOpt = Annotated[list[str], typer.Option(
    "--max-drop", help="task=budget: relative loss increase over the original model the task may take (repeatable)")]
PruneMaxDropOpt = Annotated[list[str], typer.Option(
    "--prune-max-drop", help="with --prune-flops: task=budget, PAGCP's allowed relative loss increase (repeatable)")]


def _prune_budgets(items: list[str], option: str = "--max-drop") -> dict[str, float]:
    return parse_task_values(items, option, "a relative loss increase such as 0.5")


@app.command()
def prune(
    model: ModelPath,
    flops_target: Annotated[float, typer.Option(help="fraction of the original MACs to keep, in (0, 1)")] = PAGCPConfig.flops_target,
    data: Annotated[Optional[str], typer.Option(help=DATA_HELP)] = None,
    resize: ResizeOpt = False,
    holdout: HoldoutOpt = None,
    max_drop: MaxDropOpt = [],
    finetune_steps: Annotated[int, typer.Option(min=0, help="fine-tuning steps after each round")] = PAGCPConfig.finetune_steps,
    final_finetune_steps: Annotated[int, typer.Option(min=0)] = PAGCPConfig.final_finetune_steps,
    oracle_samples: Annotated[int, typer.Option(min=1, help="held-out samples of the loss oracle")] = PAGCPConfig.oracle_samples,
    sparsity_steps: Annotated[int, typer.Option(
        min=0, help="group-sparsity training steps before the first round (0: off)")] = PAGCPConfig.sparsity_steps,
    output: Annotated[Optional[Path], typer.Option(
        "-o", "--output", help="pruned model to write: a checkpoint (.pt), or .onnx for a model read from ONNX "
                               "(default pruned.pt / pruned.onnx)")] = None,
    model_factory: FactoryOpt = None, spec: SpecOpt = None, trust: TrustOpt = False,
) -> None:
    """PAGCP: performance-aware global channel pruning guarding every task's loss."""
    from edgemtl.backends.onnxruntime import export_as_given
    from edgemtl.data.sources import open_data
    from edgemtl.model.checkpoint import save
    from edgemtl.passes.prune_pagcp import prune_pagcp

    config = PAGCPConfig(flops_target=flops_target, max_drop=_prune_budgets(max_drop), finetune_steps=finetune_steps,
                         final_finetune_steps=final_finetune_steps, oracle_samples=oracle_samples,
                         sparsity_steps=sparsity_steps)
    from_onnx = model.suffix.lower() == ".onnx"
    output = output or Path("pruned.onnx" if from_onnx else "pruned.pt")
    if from_onnx != (output.suffix.lower() == ".onnx"):
        raise EdgemtlError(f"-o {output}: a model read from ONNX is pruned to an .onnx file (loaded again with the same "
                           "--spec)" if from_onnx else f"-o {output}: the pruned model is an edgemtl checkpoint; "
                           "give -o NAME.pt")
    loaded = _load(model, model_factory, spec, trust)
    config.check_tasks(loaded.spec)
    name = data or loaded.spec.data
    if name is None:
        raise EdgemtlError("pruning needs real images for its loss oracle and fine-tuning: pass --data (see docs/own-model.md)")
    source = open_data(name, loaded.spec, resize=resize, holdout=parse_holdout(holdout))
    pruned, pruned_spec, record = prune_pagcp(loaded.model, loaded.spec, source.load("train"), source.load("val"), config)
    if from_onnx:  # the graph is the user's: hand back a graph, not a checkpoint only edgemtl could rebuild
        export_errors = export_as_given(pruned, pruned_spec, output)
    else:
        save(pruned, pruned_spec, output, meta={"pagcp": record.to_dict(), "pruned_from": str(model)})
    for table in prune_tables(record, loaded.spec, pruned_spec):
        out.print(table)
    if not record.target_reached:
        stoppers = ", ".join(f"{t} ({n} groups)" for t, n in record.stopped_by.items()) or "none (nothing left to cut)"
        err.print(f"note: the FLOPs target {flops_target} was not reached (kept {record.macs_after / record.macs_before:.0%}"
                  f" of the MACs); the last round's cuts were stopped by the loss budget of: {stoppers}; raise --max-drop")
    if from_onnx:
        worst = max(export_errors.values())
        out.print(f"pruned ONNX: {output} (ONNX Runtime vs PyTorch max |diff| {worst:.2g}; load it with the same --spec)")
    else:
        out.print(f"pruned checkpoint: {output}")


@app.command(name="spec")
def spec_command(
    model: Annotated[Path, typer.Argument(help="model.onnx, or a state_dict with --model-factory")],
    input_shape: Annotated[Optional[str], typer.Option(help="C,H,W: needed for a factory model or free ONNX dims")] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="spec file to write (default: print)")] = None,
    model_factory: FactoryOpt = None,
) -> None:
    """Write a starter spec (input shape, one task per output with its real shape and a guessed kind) to edit."""
    from edgemtl.bundle import write_text_atomically
    from edgemtl.model.spec_starter import starter_spec

    shape = None
    if input_shape is not None:
        try:
            shape = [int(v) for v in input_shape.split(",")]
        except ValueError:
            shape = []
        if len(shape) != 3 or min(shape) < 1:
            raise EdgemtlError(f"--input-shape takes C,H,W such as 3,224,224, got {input_shape!r}")
    text = starter_spec(model, factory=model_factory, input_shape=shape)
    if output is None:
        print(text, end="")
        return
    if output.exists():
        raise EdgemtlError(f"{output} exists: edgemtl spec does not overwrite a spec; pick another -o or remove it")
    write_text_atomically(output, text)
    err.print(f"starter spec: {output} (check each task's kind and input.mean / input.std)")


@app.command()
def targets(as_json: JsonOpt = False) -> None:
    """The targets found in targets/*.toml (and EDGEMTL_TARGETS_PATH) with their key facts."""
    from edgemtl.targets import available_targets, read_target

    found = {name: (read_target(path), path) for name, path in sorted(available_targets().items())}
    if as_json:
        print(json.dumps([{"name": name, "description": target.description, "flow": target.flow,
                           "max_drop": target.max_drop, "facts": target.summary(), "file": str(path)}
                          for name, (target, path) in found.items()],
                         indent=2))
        return
    table = Table(title="edgemtl targets")
    for column in ("name", "description", "facts", "file"):
        table.add_column(column)
    for name, (target, path) in found.items():
        table.add_row(name, target.description, target.summary(), str(path))
    out.print(table)


@app.command()
def doctor(
    target: Annotated[Optional[str], typer.Option(help="only this target's toolchains")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The optional toolchains each target can use here: present or missing, and the command that adds each."""
    from edgemtl.doctor import diagnose
    from edgemtl.targets import load_target

    if target is not None:
        load_target(target)  # an unknown target is one line
    rows = diagnose(target)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="edgemtl doctor: optional toolchains on this machine")
    for column in ("targets", "toolchain", "status", "serves", "to add it"):
        table.add_column(column)
    for row in rows:
        status = "[green]present[/green]" if row["present"] else f"[red]missing[/red]: {row['why_missing']}"
        table.add_row(", ".join(row["targets"]), str(row["toolchain"]), status, str(row["serves"]), str(row["add"] or ""))
    out.print(table)


toolchain_app = typer.Typer(no_args_is_help=True, help="Install the optional toolchains (apt packages, venvs, the "
                            "emulated arm64 board); list them.")
app.add_typer(toolchain_app, name="toolchain")
app.add_typer(tune_app)  # `edgemtl tune` (edgemtl/cli_tune.py)


@toolchain_app.command(name="install")
def toolchain_install(
    names: Annotated[list[str], typer.Argument(help="toolchains to install (`edgemtl toolchain list` names them)")],
    print_only: Annotated[bool, typer.Option("--print", help="print the commands instead of running them")] = False,
) -> None:
    """Install toolchains by name; what is already installed is skipped. apt needs root or sudo."""
    from edgemtl import toolchain

    tools = toolchain.lookup(names)
    if print_only:
        for command in toolchain.plan(tools):
            print(shlex.join(command))
        return
    for line in toolchain.install(tools):
        err.print(line)


@toolchain_app.command(name="list")
def toolchain_list(as_json: JsonOpt = False) -> None:
    """Every toolchain `edgemtl toolchain install` knows: present or missing, and what it adds."""
    from edgemtl import toolchain

    rows = toolchain.status()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="edgemtl toolchains")
    for column in ("name", "status", "what", "to install it"):
        table.add_column(column)
    for row in rows:
        status = "[green]present[/green]" if row["present"] else f"[red]missing[/red]: {row['why_missing']}"
        table.add_row(str(row["name"]), status, escape(str(row["what"])), "" if row["present"] else str(row["install"]))
    out.print(table)


def _pass_requests(widths: Path | None, prune_flops: float | None, prune_max_drop: list[str],
                   read: bool = True) -> tuple[PassRequest, ...]:
    """The passes compile flags ask for, in the order they run: --widths slices (slice_widths), then --prune-flops
    prunes (prune_pagcp). `read=False` (--list-steps) names them without reading the --widths file (or its front)."""
    from edgemtl.passes.base import PassRequest
    from edgemtl.passes.slice_widths import SliceConfig, read_slice_config

    passes = []
    if widths is not None:
        config = read_slice_config(widths) if read else SliceConfig()
        passes.append(PassRequest("slice_widths", config))
    if prune_flops is not None:
        passes.append(PassRequest("prune_pagcp", PAGCPConfig(flops_target=prune_flops, max_drop=_prune_budgets(prune_max_drop, "--prune-max-drop"))))
    return tuple(passes)


@app.command(name="compile")
def compile_command(
    model: Annotated[Optional[Path], typer.Argument(
        help="edgemtl checkpoint (.pt), or a state_dict with --model-factory, or model.onnx with --spec")] = None,
    target: Annotated[str, typer.Option(help="target name (see `edgemtl targets`)")] = "host",
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="bundle folder (default build/<model>-<target>)")] = None,
    tasks: Annotated[Optional[str], typer.Option(help="comma-separated task names (default: all)")] = None,
    data: Annotated[Optional[str], typer.Option(help=DATA_HELP)] = None,
    resize: ResizeOpt = False,
    holdout: HoldoutOpt = None,
    threads: Annotated[int, typer.Option(min=0, help="CPU threads for timing (0 = all cores)")] = 0,
    runs: Annotated[int, typer.Option(min=5, help="timed runs per latency measurement")] = 100,
    latency: Annotated[bool, typer.Option("--latency/--no-latency", help="measure latency")] = True,
    widths: Annotated[Optional[Path], typer.Option(
        help="slimmable models: compile the width configuration in this JSON file (docs/widths.md)")] = None,
    prune_flops: Annotated[Optional[float], typer.Option(help="run PAGCP first, keeping this fraction of the MACs")] = None,
    prune_max_drop: PruneMaxDropOpt = [],
    max_drop: Annotated[list[str], typer.Option(
        "--max-drop", help="quantized targets: task=budget, the relative metric loss a task may take (0.02 = 2%; a "
                           "bare value sets every task; default: the target's, see `edgemtl targets`)")] = [],
    allow_over_budget: Annotated[bool, typer.Option(
        "--allow-over-budget", help="ship a task over its budget (the report says so) instead of failing")] = False,
    expert_coverage: Annotated[Optional[float], typer.Option(
        help="MoE models: share of each task's routing mass its expert path keeps, in (0, 1], cut as asked (default "
             "0.95, where a task whose held-out metric would move by more than 1% keeps every expert it uses)")] = None,
    precision: Annotated[Optional[str], typer.Option(help="quantized targets: w4a4 | w8a8 (default: the target's first)")] = None,
    qat_steps: Annotated[int, typer.Option(min=0, help="quantized targets: QAT steps per task (at most: stops early "
                                                        "once the task is within its budget)")] = 300,
    layer_bits: Annotated[list[str], typer.Option(
        help="quantized FPGA targets: LAYER=W,A bit widths of one layer (repeatable; LAYER may be first or last), or "
             "a bundle's layer_bits.json to pin every task's widths")] = [],
    model_factory: FactoryOpt = None, spec: SpecOpt = None, trust: TrustOpt = False,
    stop_after: Annotated[Optional[str], typer.Option(
        help="run the flow up to this step and write that partial bundle (see --list-steps)")] = None,
    list_steps: Annotated[bool, typer.Option("--list-steps", help="print the target's steps in order and exit")] = False,
) -> None:
    """(Optionally slice to a width configuration, prune,) validate, export per-task ONNX graphs, verify them against
    PyTorch, time them, write the bundle."""
    from edgemtl.compile import compile_model, compile_steps
    from edgemtl.flow import CompileOptions
    from edgemtl.targets import load_target

    from edgemtl.passes.layer_bits import read_layer_bits
    from edgemtl.passes.partition_experts import PartitionConfig

    chosen = load_target(target)  # an unknown target fails before any work
    if list_steps:
        options = CompileOptions(passes=_pass_requests(widths, prune_flops, prune_max_drop, read=False))
        for index, (name, step) in enumerate(compile_steps(chosen, options), 1):
            out.print(f"{index:2d}  {name:<20s} {(step.__doc__ or '').strip().splitlines()[0] if step.__doc__ else ''}")
        return
    if model is None:
        raise EdgemtlError("compile needs a MODEL (or --list-steps to see the target's steps)")
    if precision is not None and precision not in chosen.precisions:
        raise EdgemtlError(f"target {target} supports precisions {', '.join(chosen.precisions)}, not {precision!r}")
    experts = PartitionConfig() if expert_coverage is None else PartitionConfig(coverage=expert_coverage,
                                                                                 max_metric_change=None)
    experts.check()
    passes = _pass_requests(widths, prune_flops, prune_max_drop)  # a bad --widths file fails before the model loads
    budgets = parse_task_values(max_drop, "--max-drop", "a relative metric loss such as 0.02", every_task=True)
    pinned, bits_file = parse_layer_bits(layer_bits)
    loaded = _load(model, model_factory, spec, trust)
    task_bits = read_layer_bits(bits_file, loaded.model, loaded.spec) if bits_file is not None else {}
    destination = output or Path("build") / f"{model.stem}-{target}"
    options = CompileOptions(tasks=split_tasks(tasks), data=data, resize=resize,
                             holdout=parse_holdout(holdout), threads=threads, latency_runs=runs,
                             measure_latency=latency, passes=passes, experts=experts, precision=precision,
                             qat_steps=qat_steps, layer_bits=pinned, task_layer_bits=task_bits, max_drop=budgets,
                             allow_over_budget=allow_over_budget, stop_after=stop_after)
    bundle = compile_model(loaded, target, destination, options, console=err)
    out.print(f"bundle: {bundle}")
    out.print(f"report: {bundle / 'report.html'}")


@app.command()
def profile(
    bundle: Annotated[Optional[Path], typer.Argument(help="bundle folder written by `edgemtl compile`")] = None,
    device: Annotated[Optional[str], typer.Option(
        help="local | rpc://HOST:PORT/KEY (a TVM RPC tracker and a device key); with --history: a device key filter")] = None,
    runs: Annotated[int, typer.Option(min=5, help="timed runs per measurement (fewer if one takes long)")] = 100,
    timeout: Annotated[float, typer.Option(min=1, help="seconds to wait for a free device and for any remote call")] = 60.0,
    retries: Annotated[int, typer.Option(min=0, help="retries on a dropped device connection")] = 2,
    store: Annotated[Optional[Path], typer.Option(
        help="results database (default $EDGEMTL_RESULTS or ~/.cache/edgemtl/results.sqlite)")] = None,
    tune: Annotated[int, typer.Option(min=0, help="meta-schedule trials per task for a tuned TVM build (0: no tuning)")] = 0,
    tasks: Annotated[Optional[str], typer.Option(help="comma-separated task names (default: all)")] = None,
    data: Annotated[Optional[str], typer.Option(
        help=DATA_HELP.replace(" (default: the model's built-in set)", "") + ": check outputs on these images "
             "(references made now on this host; default: the bundle's own)")] = None,
    resize: ResizeOpt = False,
    holdout: HoldoutOpt = None,
    history: Annotated[bool, typer.Option("--history", help="list stored measurements instead of profiling")] = False,
    task: Annotated[Optional[str], typer.Option(help="with --history: only this task")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Time every task's artifacts on a device (this machine or a board from a TVM RPC tracker), check outputs,
    store the results, and ship each task's fastest correct runtime."""
    from edgemtl.profile.store import ResultsStore

    results = ResultsStore(store)
    if history:
        if device and "://" in device:
            from edgemtl.profile.rpc import parse_device

            device = parse_device(device).key
        rows = results.query(device=device, task=task, bundle=str(bundle.resolve()) if bundle else None)
        if as_json:
            out.print_json(json.dumps([r.to_dict() for r in rows], default=str))
            return
        out.print(history_table(rows, results.path))
        return
    if bundle is None or device is None:
        raise EdgemtlError("profile needs a BUNDLE and --device local|rpc://HOST:PORT/KEY (or --history)")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgemtl.profile.device import DataReference, read_bundle
    from edgemtl.profile.job import profile_bundle

    selected = split_tasks(tasks)
    images = None if data is None else DataReference(data, resize, parse_holdout(holdout))
    count = len(selected or read_bundle(bundle).tasks) * (3 + (1 if tune else 0))
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as progress:
        bar = progress.add_task("profiling", total=count)

        def on_step(event: str, name: str, runtime: str, info: dict) -> None:
            if event == "start":
                progress.update(bar, description=f"{name} / {runtime}")
            else:
                progress.advance(bar)

        result = profile_bundle(bundle, device, runs=runs, timeout=timeout, retries=retries, store=results, tune=tune,
                                tasks=selected, on_step=on_step, data=images)
    _rewrite_report(bundle)  # the bundle's report shows what was just measured
    if as_json:
        out.print_json(json.dumps(result.to_dict(), default=str))
    else:
        out.print(profile_table(result))
        for name, runtimes in result.tasks.items():
            for runtime, outcome in runtimes.items():
                if outcome.skipped:
                    out.print(f"skipped {name} / {runtime}: {outcome.skipped}")
    for note in result.notes:
        err.print(f"note: {note}")
    out.print(f"profile: {result.profile_path}")
    out.print(f"results store: {result.store}")


def _rewrite_report(bundle: Path) -> None:
    from edgemtl.bundle import MANIFEST
    from edgemtl.report import write_report

    write_report(json.loads((bundle / MANIFEST).read_text(encoding="utf-8")), bundle)


@app.command()
def report(
    bundles: Annotated[list[Path], typer.Argument(help="bundle folders written by `edgemtl compile` (any targets)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="folder for comparison.html + comparison.json")] = Path(
        "comparison"),
    layers: Annotated[bool, typer.Option("--layers/--no-layers",
                                         help="profile each ONNX Runtime graph per layer on this host")] = True,
) -> None:
    """Compare bundles side by side (latency, memory, model size, metric, energy), every number with its provenance."""
    from edgemtl.profile.layers import ort_layer_profile
    from edgemtl.report.compare import write_comparison

    html_path, json_path = write_comparison(bundles, output, layer_timer=ort_layer_profile if layers else None)
    out.print(f"report: {html_path}")
    out.print(f"json: {json_path}")


def _version(value: bool) -> None:
    if value:
        from edgemtl import __version__

        out.print(f"edgemtl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="print the version and exit")] = False) -> None:
    """Compile trained multi-task PyTorch models for edge hardware."""


def _fail(message: str, code: int) -> None:
    print(f"edgemtl: error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one error line and its exit status (module docstring); click's own exits (--help) pass through."""
    from typer._click.exceptions import NoArgsIsHelpError, UsageError  # typer 0.29 vendors click here

    try:
        code = app(args=argv, prog_name="edgemtl", standalone_mode=False)
    except NoArgsIsHelpError as exc:  # `edgemtl` or `edgemtl profile` alone: the help, as asked
        print(exc.format_message(), file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except UsageError as exc:
        command = exc.ctx.command_path if exc.ctx is not None else "edgemtl"
        _fail(f"{exc.format_message()} (see `{command} --help`)", EXIT_BAD_INPUT)
    except typer.Abort:
        _fail("interrupted", 130)
    except VerificationError as exc:
        _fail(str(exc), EXIT_VERIFICATION_FAILED)
    except EdgemtlError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    sys.exit(code if isinstance(code, int) else 0)
