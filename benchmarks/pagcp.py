"""PAGCP against two baselines on mtl-cnn / scenes, at the same final MACs and fine-tuning budget.

1. uniform L1: the same removal ratio in every prunable channel group, lowest group-L1 channels first;
2. single-task: global Taylor pruning (torch-pruning's GroupTaylorImportance, one global ranking) whose importance comes
   from the classification (`scene`) loss only, the "single-task backbone pruning" PAGCP argues against;
3. PAGCP (edgemtl.passes.prune_pagcp).
Both baselines are tuned (a grid over their ratio) to PAGCP's final MACs and fine-tuned on all tasks for
as many steps as PAGCP used in total, the same way (task losses + distillation from the unpruned model).
Also measures how the loss oracle's sample count changes the greedy decisions (agreement with a 128-sample
oracle) and what it costs. ONNX Runtime latencies of the all-task graphs are measured in the same run, on
this CPU, and quoted as ratios to the unpruned model.

    .venv/bin/python benchmarks/pagcp.py [--train-steps 3000] [--checkpoint base.pt] [--flops-target 0.35] [--threads 1]

PAGCP's oracle and the pass's own record use the validation split; the table's metrics come from a separate,
larger test split (1,024 samples), so the decisions are not graded on the samples that made them.

Prints a table and writes benchmarks/results/pagcp.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch
import torch_pruning as tp
from rich.console import Console
from rich.table import Table

from edgemtl.analysis.cost import model_cost
from edgemtl.backends import onnxruntime as ort_backend
from edgemtl.model.onnx_export import export_all_tasks
from edgemtl.data import data_spec, load_data
from edgemtl.evaluate import evaluate, torch_predictor
from edgemtl.model.checkpoint import load
from edgemtl.model.losses import task_loss
from edgemtl.model.spec import ModelSpec
from edgemtl.model.zoo import zoo_spec
from edgemtl.passes.prune_pagcp import (LossOracle, PAGCPConfig, Surgeon, _greedy_round, _macs, _out_channels,
                                        prune_pagcp, removable)
from edgemtl.training import train

from common import interleaved_latencies_ms, met, start_run, trained_checkpoint, write_results

RESULTS = Path(__file__).parent / "results" / "pagcp.json"
# 32 channels everywhere: a 16-wide layer can only be halved once widths are rounded to multiples of 8
BENCH_CONFIG = {"width": 32, "blocks": [1, 1, 1], "head_width": 32}
console = Console(width=200)


def match_macs(prune_at, target_macs: float, example: torch.Tensor, step: float = 0.025):
    """The removal ratio (on a grid) whose pruned model's MACs are closest to the target. A grid, not a
    bisection: with widths rounded to multiples of 8 the MACs are a step function of the ratio."""
    best = None
    for index in range(int(0.95 / step) + 1):
        ratio = index * step
        model = prune_at(ratio)
        gap = abs(_macs(model, example) - target_macs)
        if best is None or gap < best[0]:
            best = (gap, ratio, model)
    return best[1], best[2]


def uniform_l1(model: torch.nn.Module, spec: ModelSpec, ratio: float) -> torch.nn.Module:
    surgeon = Surgeon(spec)
    surgeon.importance = tp.importance.GroupMagnitudeImportance(p=1)
    pruned = copy.deepcopy(model)  # never the input itself: the caller fine-tunes what comes back
    for root in surgeon.prunable_groups(model):
        count = removable(_out_channels(pruned.get_submodule(root)), ratio, PAGCPConfig())  # same width rounding as PAGCP
        if count > 0:
            pruned = surgeon.remove(pruned, root, count)
    return pruned


def single_task_taylor(model: torch.nn.Module, spec: ModelSpec, data, ratio: float) -> torch.nn.Module:
    """Global pruning ranked by Taylor importance of the classification loss alone: the channels with the
    lowest |w * dL_scene/dw| across all groups go first (scores normalised by their group's mean, as
    torch-pruning's global pruning does); kept widths rounded like PAGCP's."""
    surgeon = Surgeon(spec)
    scored = copy.deepcopy(model).eval()
    images, targets = next(data.batches(64, shuffle=False))
    task_loss(spec.task("scene"), scored(images)["scene"], targets["scene"]).backward()
    for parameter in scored.parameters():  # other tasks' heads get no signal from the classification loss
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
    # normalizer=None: torch-pruning's default divides by the group mean, 0/0 = NaN where the classification
    # loss gives no gradient (the dense heads), and NaN scores never fall below any threshold
    graph = surgeon.graph(scored)
    importance = tp.importance.GroupTaylorImportance(normalizer=None)
    magnitude_importance = tp.importance.GroupMagnitudeImportance(p=2, normalizer=None)
    scores = {}
    for root_name in surgeon.prunable_groups(model):
        root = scored.get_submodule(root_name)
        group = graph.get_pruning_group(root, tp.prune_conv_out_channels if isinstance(root, torch.nn.Conv2d)
                                        else tp.prune_linear_out_channels, idxs=list(range(_out_channels(root))))
        taylor, magnitude = importance(group), magnitude_importance(group)
        # channels the classification loss ignores (other tasks' heads) tie at 0: break ties by magnitude
        scores[root_name] = taylor / taylor.mean().clamp(min=1e-12) + 1e-6 * magnitude / magnitude.mean().clamp(min=1e-12)
    threshold = torch.quantile(torch.cat(list(scores.values())), ratio) if ratio > 0 else -1.0
    config, pruned = PAGCPConfig(), copy.deepcopy(model)  # never the input itself (ratio 0 removes nothing)
    for root_name, values in scores.items():
        width = len(values)
        below = int((values <= threshold).sum())
        count = removable(width, below / width, config) if below else 0
        if count > 0:
            pruned = surgeon.remove(pruned, root_name, count, idxs=torch.argsort(values)[:count].tolist())
    return pruned.eval()


def latencies_ms(models: dict, spec, threads: int, runs: int, scratch: Path, repeats: int = 3) -> dict[str, dict]:
    """ONNX Runtime latency of every model's all-task graph, measured interleaved (model after model,
    `repeats` times) so that machine load hits all alike; the median of the repeats' medians is kept."""
    image = torch.randn(1, *spec.input.shape).numpy()
    sessions = {name: ort_backend.make_session(export_all_tasks(model.eval(), spec, spec.task_names, scratch / f"{name}.onnx"), threads)
                for name, model in models.items()}
    return interleaved_latencies_ms(sessions, image, threads, runs, repeats, max_seconds=30.0)


def degradation(spec: ModelSpec, before: dict, after: dict) -> dict[str, float]:
    """Per task: relative loss of the primary metric (accuracy: absolute points), positive = worse."""
    result = {}
    for task in spec.tasks:
        b, a = before[task.name][task.metric], after[task.name][task.metric]
        worse = (b - a) if task.higher_is_better else (a - b)
        result[task.name] = worse if task.kind == "classification" else worse / abs(b)
    return result


def oracle_tradeoff(model, spec, val, train_data, config: PAGCPConfig, sizes=(16, 32, 128)) -> list[dict]:
    """Round-1 greedy decisions and time per oracle size; agreement with the largest oracle."""
    surgeon, budgets = Surgeon(spec), {t: config.default_max_drop for t in spec.task_names}
    runs = []
    for size in sizes:
        start = time.perf_counter()
        oracle = LossOracle(spec, val, size, train_data, config.bn_recalibration_samples)
        decisions = _greedy_round(model, surgeon, oracle, budgets, config, 0.0, 1,
                                  lambda *_: None)
        runs.append({"oracle_samples": size, "seconds": time.perf_counter() - start,
                     "removed": {d.group: d.channels_removed for d in decisions}})
    reference = runs[-1]["removed"]
    groups = set().union(*(r["removed"] for r in runs))
    for run in runs:
        same = sum(run["removed"].get(g, 0) == reference.get(g, 0) for g in groups)
        run["agreement_with_largest"] = same / max(1, len(groups))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=3000)
    parser.add_argument("--checkpoint", type=Path, help="trained unpruned model: loaded if it exists, else trained and saved there")
    parser.add_argument("--test-samples", type=int, default=1024)
    parser.add_argument("--flops-target", type=float, default=0.35)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--config", default=json.dumps(BENCH_CONFIG), help="mtl-cnn config overrides as JSON")
    parser.add_argument("--budget", type=float, default=1.0, help="PAGCP per-round loss-increase budget of every task")
    parser.add_argument("--keep-fraction", type=float, default=PAGCPConfig.keep_fraction,
                        help="PAGCP filter: share of pruned groups kept per round")
    parser.add_argument("--max-rounds", type=int, default=14)
    parser.add_argument("--planned-rounds", type=int, default=PAGCPConfig.planned_rounds,
                        help="PAGCP: rounds over which the MACs fall geometrically to the target (0 = no per-round quota)")
    parser.add_argument("--final-finetune-steps", type=int, default=600)
    parser.add_argument("--distill-weight", type=float, default=PAGCPConfig.distill_weight,
                        help="fine-tuning's distillation weight (0 = task losses only), for every model alike")
    parser.add_argument("--oracle-tradeoff", action="store_true", help="also replay round 1 with 16 / 32 / 128 oracle samples")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    run = start_run()
    torch.manual_seed(0)
    input_spec, tasks = data_spec("scenes")
    spec = zoo_spec("mtl-cnn", input_spec, tasks, json.loads(args.config), data="scenes")
    train_data, val_data = load_data("scenes", "train"), load_data("scenes", "val")
    test_data = load_data("scenes", "test", n=args.test_samples)
    base = _trained_base(spec, args)
    config = PAGCPConfig(flops_target=args.flops_target, default_max_drop=args.budget, keep_fraction=args.keep_fraction,
                         max_rounds=args.max_rounds, planned_rounds=args.planned_rounds,
                         final_finetune_steps=args.final_finetune_steps,
                         distill_weight=args.distill_weight)
    tradeoff = []
    if args.oracle_tradeoff:
        console.print("oracle size trade-off (round 1 decisions) ...")
        tradeoff = oracle_tradeoff(base, spec, val_data, train_data, config)
    console.print("PAGCP ...")
    pagcp, _, record = prune_pagcp(base, spec, train_data, val_data, config)
    finetune_budget = record.rounds * config.finetune_steps + config.final_finetune_steps
    example = Surgeon(spec).example
    target = _macs(pagcp, example)
    console.print(f"baselines at {target / _macs(base, example):.1%} of the MACs, {finetune_budget} fine-tuning steps each ...")
    uniform_ratio, uniform = match_macs(lambda r: uniform_l1(base, spec, r), target, example)
    single_ratio, single = match_macs(lambda r: single_task_taylor(base, spec, train_data, r), target, example)
    # the unpruned model gets the same extra training: a pruned model must not look good for its extra steps;
    # every model is fine-tuned as PAGCP's rounds are (task losses + distillation from the unpruned model)
    longer, teacher = copy.deepcopy(base), copy.deepcopy(base)
    for model in (longer, uniform, single):
        train(model, spec, train_data, config.finetuning(finetune_budget, 0), teacher=teacher if config.distill_weight else None)
    models = {"unpruned": base, "unpruned+ft": longer, "uniform-l1": uniform, "single-task-taylor": single, "pagcp": pagcp}
    rows = {}
    for name, model in models.items():
        model.eval()
        cost = model_cost(model, spec)
        rows[name] = {"macs": cost.all_tasks.macs, "params": cost.total_params,
                      "metrics": evaluate(torch_predictor(model), spec.tasks, test_data)}
    with tempfile.TemporaryDirectory() as scratch:
        for name, latency in latencies_ms(models, spec, args.threads, args.runs, Path(scratch)).items():
            rows[name]["latency_ms"] = latency
    reference = rows["unpruned"]
    for name, row in rows.items():
        row["macs_ratio"] = row["macs"] / reference["macs"]
        row["params_ratio"] = row["params"] / reference["params"]
        row["latency_ratio"] = row["latency_ms"]["median"] / reference["latency_ms"]["median"]
        # against the better of the two unpruned references, per task: the stricter comparison
        against = [degradation(spec, rows[r]["metrics"], row["metrics"]) for r in ("unpruned", "unpruned+ft")]
        row["degradation"] = {task: max(d[task] for d in against) for task in spec.task_names}
        row["worst_task"] = max(row["degradation"], key=row["degradation"].get)
    rows["uniform-l1"]["ratio"], rows["single-task-taylor"]["ratio"] = uniform_ratio, single_ratio
    pagcp_row = rows["pagcp"]
    within = {t.name: pagcp_row["degradation"][t.name] <= (0.01 if t.kind == "classification" else 0.02) for t in spec.tasks}
    targets = {
        "macs_reduced_60pct": pagcp_row["macs_ratio"] <= 0.40,
        "params_reduced_50pct": pagcp_row["params_ratio"] <= 0.50,
        "every_task_within_tolerance": all(within.values()),
        "pagcp_worst_task_beats_both_baselines": all(
            max(pagcp_row["degradation"].values()) < max(rows[b]["degradation"].values()) for b in ("uniform-l1", "single-task-taylor")),
        "latency_at_most_0.6x": pagcp_row["latency_ratio"] <= 0.6,
    }
    _print(spec, rows, tradeoff, targets, record, finetune_budget, args.threads)
    write_results(args.output, {
        "setup": {"model": "mtl-cnn", "config": spec.config, "data": f"scenes (train 2000 / val 256: oracle / test {len(test_data)}: table)",
                  "train_steps": args.train_steps,
                  "flops_target": args.flops_target, "pagcp_config": record.to_dict() | {"decisions": len(record.decisions)},
                  "finetune_steps_each": finetune_budget, "latency": f"ONNX Runtime, measured on this CPU, {args.threads} thread(s), batch 1"},
        "models": rows, "within_tolerance": within, "targets": targets, "oracle_tradeoff": tradeoff,
        "pagcp_layers": [d.__dict__ | {"removed": len(d.removed)} for d in record.decisions],
    }, run)
    console.print(f"wrote {args.output} ({run.seconds():.0f} s)")


def _trained_base(spec: ModelSpec, args) -> torch.nn.Module:
    """The unpruned model: from --checkpoint when it exists (same config), else trained with seed 0 (and saved)."""
    loaded = load(trained_checkpoint(args.checkpoint, args.train_steps, spec.config, console))
    if loaded.spec.config != spec.config:
        raise SystemExit(f"{args.checkpoint} holds config {loaded.spec.config}, the benchmark asks for {spec.config}")
    return loaded.model


def _print(spec, rows, tradeoff, targets, record, budget, threads) -> None:
    table = Table(title=f"mtl-cnn / scenes test, equal MACs, {budget} fine-tuning steps each; latency ratio measured (ORT, {threads} thread)")
    for column in ["model", "MACs", "params", "latency", *[f"{t.name} {t.metric}" for t in spec.tasks], "worst task"]:
        table.add_column(column)
    for name, row in rows.items():
        table.add_row(name, f"{row['macs'] / 1e6:.1f} M ({row['macs_ratio']:.0%})", f"{row['params'] / 1e3:.0f} k ({row['params_ratio']:.0%})",
                      f"{row['latency_ratio']:.2f}x", *[f"{row['metrics'][t.name][t.metric]:.4f}" for t in spec.tasks],
                      f"{row['worst_task']} {row['degradation'][row['worst_task']]:+.3f}")
    console.print(table)
    oracle = Table(title="loss oracle size vs round-1 greedy decisions")
    for column in ("samples", "seconds", "agreement with 128"):
        oracle.add_column(column)
    for run in tradeoff:
        oracle.add_row(str(run["oracle_samples"]), f"{run['seconds']:.1f}", f"{run['agreement_with_largest']:.0%}")
    if tradeoff:
        console.print(oracle)
    console.print(met(targets), f"PAGCP rounds: {record.rounds}")


if __name__ == "__main__":
    main()
