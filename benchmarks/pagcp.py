"""PAGCP against two baselines at the same final MACs and fine-tuning budget, on the 32-wide mtl-cnn (to 50% of its
MACs) and on the m3vit (to 60%), on scenes.

1. uniform L1: the same removal ratio in every prunable unit, lowest group-L1 channels first;
2. single-task: global Taylor pruning (torch-pruning's GroupTaylorImportance, one global ranking; |w * grad| for
   attention heads and experts' hidden channels) whose importance comes from the classification (`scene`) loss
   only, the "single-task backbone pruning" PAGCP argues against;
3. PAGCP (edgemtl.passes.prune_pagcp).
Both baselines are tuned (a grid over their ratio) to PAGCP's final MACs and fine-tuned on all tasks for
as many steps as PAGCP used in total, the same way (task losses + distillation from the unpruned model); so is
the unpruned model ("unpruned+ft"), and each task's degradation is against the better of the two unpruned models.
ONNX Runtime latencies of the all-task graphs are measured interleaved in the same run, on this CPU, and quoted as
ratios to the unpruned model. Options: `--ablation` (each kept change of the pass switched off once, on the
mtl-cnn), `--cli-check` (`edgemtl prune --flops-target 0.5` on the default model), `--oracle-tradeoff` (how the
loss oracle's sample count changes round 1's decisions).

    .venv/bin/python benchmarks/pagcp.py [--checkpoint-dir DIR] [--ablation [--workers 2]] [--cli-check] [--threads 1]

PAGCP's oracle and the pass's own record use the validation split; the table's metrics come from a separate,
larger test split (1,024 samples), so the decisions are not graded on the samples that made them.

Prints a table per architecture and writes benchmarks/results/pagcp.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import subprocess
import sys
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
from edgemtl.model.zoo import saved_config, zoo_spec
from edgemtl.passes import prune_units
from edgemtl.passes.prune_pagcp import (LossOracle, PAGCPConfig, Surgeon, _greedy_round, _macs, _out_channels,
                                        prune_pagcp, removable)
from edgemtl.training import train

from common import interleaved_latencies_ms, met, start_run, trained_checkpoint, write_results

RESULTS = Path(__file__).parent / "results" / "pagcp.json"
# 32 channels everywhere: a 16-wide layer can only be halved once widths are rounded to multiples of 8
BENCH_CONFIG = {"width": 32, "blocks": [1, 1, 1], "head_width": 32}
# the baselines round kept widths as PAGCP does (multiples of 8) where that can match PAGCP's MACs, else to any width
# (a 32-wide layer takes only 32, 24, 16 or 8 channels: uniform pruning then jumps from 100% to 56% of the MACs); they
# have no width floor: the floor is PAGCP's own
BASELINE_MULTIPLES = (8, 1)
MATCH_POINTS = 0.03   # the "matched MACs": within 3 points
console = Console(width=200)


def match_macs(prune_at, target_macs: float, example: torch.Tensor, step: float = 0.025):
    """The removal ratio (on a grid) whose pruned model's MACs are closest to the target. A grid, not a continuous
    search: with widths rounded to multiples of 8 the MACs are a step function of the ratio. The MACs never grow
    with the ratio, so the grid is bisected for the first ratio at or under the target, and it is compared with the
    ratio before it."""
    ratios = [index * step for index in range(int(0.95 / step) + 1)]
    tried: dict[int, tuple[float, torch.nn.Module]] = {}

    def at(index: int) -> tuple[float, torch.nn.Module]:
        if index not in tried:
            model = prune_at(ratios[index])
            tried[index] = (_macs(model, example), model)
        return tried[index]

    low, high = 0, len(ratios) - 1
    while low < high:
        middle = (low + high) // 2
        low, high = (middle + 1, high) if at(middle)[0] > target_macs else (low, middle)
    best = min({low, max(low - 1, 0)}, key=lambda index: abs(at(index)[0] - target_macs))
    return ratios[best], at(best)[1]


def matched(prune_at, target_macs: float, base_macs: float, example: torch.Tensor) -> tuple[float, torch.nn.Module, int]:
    """A baseline at PAGCP's MACs: `prune_at(ratio, multiple)` matched on the ratio grid, kept widths in multiples of 8
    where that comes within 3 points, else of 1. Returns the ratio, the pruned model and the multiple used."""
    for multiple in BASELINE_MULTIPLES:
        ratio, model = match_macs(lambda r: prune_at(r, multiple), target_macs, example)
        if abs(_macs(model, example) - target_macs) <= MATCH_POINTS * base_macs:
            break
    return ratio, model, multiple


def uniform_l1(model: torch.nn.Module, spec: ModelSpec, ratio: float, units: list[str] | None = None,
               multiple: int = 8) -> torch.nn.Module:
    """The same removal ratio in every unit (`units`: the model's prunable units, when already known); kept widths
    rounded up to a `multiple`."""
    surgeon = Surgeon(spec)
    surgeon.importance = tp.importance.GroupMagnitudeImportance(p=1)
    pruned = copy.deepcopy(model)  # never the input itself: the caller fine-tunes what comes back
    for root in units if units is not None else surgeon.prunable_groups(model):
        count = removable(surgeon.width(pruned, root), ratio, PAGCPConfig(channel_multiple=multiple))
        if count > 0:
            pruned = surgeon.remove(pruned, root, count)
    return pruned


def single_task_taylor(model: torch.nn.Module, spec: ModelSpec, data, ratio: float,
                       scores: dict[str, torch.Tensor] | None = None, multiple: int = 8) -> torch.nn.Module:
    """Global pruning ranked by Taylor importance of the classification loss alone: the channels with the
    lowest |w * dL_scene/dw| across all groups go first (scores normalised by their group's mean, as
    torch-pruning's global pruning does); kept widths rounded like PAGCP's. `scores`: `taylor_scores`, when known."""
    surgeon = Surgeon(spec)
    scores = scores if scores is not None else taylor_scores(model, spec, data)
    threshold = torch.quantile(torch.cat(list(scores.values())), ratio) if ratio > 0 else -1.0
    pruned = copy.deepcopy(model)  # never the input itself (ratio 0 removes nothing)
    for root_name, values in scores.items():
        width = len(values)
        below = int((values <= threshold).sum())
        count = removable(width, below / width, PAGCPConfig(channel_multiple=multiple)) if below else 0
        if count > 0:
            pruned = surgeon.remove(pruned, root_name, count, idxs=torch.argsort(values)[:count].tolist())
    return pruned.eval()


def taylor_scores(model: torch.nn.Module, spec: ModelSpec, data) -> dict[str, torch.Tensor]:
    """Each prunable unit's channels scored by the classification loss's Taylor importance (group-mean normalised)."""
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
        if prune_units.is_custom(root_name):   # attention heads, experts' hidden channels: no torch-pruning group
            taylor, magnitude = prune_units.taylor(scored, root_name), prune_units.saliency(scored, root_name)
        else:
            root = scored.get_submodule(root_name)
            group = graph.get_pruning_group(root, tp.prune_conv_out_channels if isinstance(root, torch.nn.Conv2d)
                                            else tp.prune_linear_out_channels, idxs=list(range(_out_channels(root))))
            taylor, magnitude = importance(group), magnitude_importance(group)
        # channels the classification loss ignores (other tasks' heads) tie at 0: break ties by magnitude
        scores[root_name] = taylor / taylor.mean().clamp(min=1e-12) + 1e-6 * magnitude / magnitude.mean().clamp(min=1e-12)
    return scores


def latencies_ms(models: dict, spec, threads: int, runs: int, scratch: Path, repeats: int = 3) -> dict[str, dict]:
    """ONNX Runtime latency of every model's all-task graph, measured interleaved (model after model,
    `repeats` times) so that machine load hits all alike; the median of the repeats' medians is kept."""
    image = torch.randn(1, *spec.input.shape).numpy()
    sessions = {name: ort_backend.make_session(export_all_tasks(model.eval(), spec, spec.task_names, scratch / f"{name}.onnx"), threads)
                for name, model in models.items()}
    return interleaved_latencies_ms(sessions, image, threads, runs, repeats, max_seconds=30.0)


def degradation(spec: ModelSpec, before: dict, after: dict) -> dict[str, float]:
    """Per task: relative loss of the primary metric, positive = worse (the issue's "within 2% relative")."""
    result = {}
    for task in spec.tasks:
        b, a = before[task.name][task.metric], after[task.name][task.metric]
        worse = (b - a) if task.higher_is_better else (a - b)
        result[task.name] = worse / abs(b)
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


# per architecture: the benchmark model's config overrides, the MACs PAGCP aims at, the base model's training steps,
# PAGCP settings of its own. The m3vit has no sparsity phase: the group-norm regulariser reaches torch-pruning's groups
# only (its decoders), not the attention heads and experts the pass cuts there, so the steps would buy nothing; its
# routing stays Switch, as its cached base was trained (PAGCP does not depend on it)
ARCHS = {"mtl-cnn": {"config": BENCH_CONFIG, "flops_target": 0.5, "train_steps": 3000, "pagcp": {}},
         "m3vit": {"config": {"routing_loss": "switch"}, "flops_target": 0.6, "train_steps": 1500, "pagcp": {"sparsity_steps": 0}}}
# each kept change of the pass switched off once (ablation on the mtl-cnn)
ABLATIONS = {"per-round guard": {"guard": "per-round"}, "no sparsity phase": {"sparsity_steps": 0},
             "no distillation": {"distill_weight": 0.0}, "no adaptive BN": {"bn_recalibration_samples": 0},
             "no width floor": {"min_share": 0.0}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="mtl-cnn,m3vit")
    parser.add_argument("--checkpoint-dir", type=Path, help="trained unpruned models (<arch>.pt): loaded if there, else "
                        "trained and saved there")
    parser.add_argument("--train-steps", type=int, help="base models' training steps (default: per architecture, ARCHS)")
    parser.add_argument("--test-samples", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="--ablation: processes running its arms in parallel")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--budget", type=float, default=PAGCPConfig.default_max_drop, help="PAGCP loss-increase budget of every task")
    parser.add_argument("--sparsity-steps", type=int, default=PAGCPConfig.sparsity_steps)
    parser.add_argument("--min-share", type=float, default=PAGCPConfig.min_share)
    parser.add_argument("--max-rounds", type=int, default=8)
    parser.add_argument("--finetune-steps", type=int, default=PAGCPConfig.finetune_steps)
    parser.add_argument("--final-finetune-steps", type=int, default=300)
    parser.add_argument("--oracle-tradeoff", action="store_true", help="also replay round 1 with 16 / 32 / 128 oracle samples")
    parser.add_argument("--ablation", action="store_true", help="also run PAGCP on the mtl-cnn with each kept change "
                        "switched off once: " + ", ".join(ABLATIONS) + " (alone, beside another run: --archs '' --output ...)")
    parser.add_argument("--cli-check", action="store_true", help="also run `edgemtl prune --flops-target 0.5` on the "
                        "default model and record whether it reached the target or which tasks stopped it")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    run = start_run()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results, targets = {}, {}
    for arch in filter(None, args.archs.split(",")):   # --archs "" --ablation: the ablation alone
        results[arch], arch_targets = compare(arch, args)
        targets.update({f"{arch}: {name}": verdict for name, verdict in arch_targets.items()})
    if args.cli_check:
        results["cli_check"] = cli_check(args)
        targets["cli: prune --flops-target 0.5 on the default model reaches it or names the tasks"] = \
            results["cli_check"]["reached"] or bool(results["cli_check"]["stopped_by"])
    if args.archs:
        results["seconds_without_ablation"] = round(run.seconds(), 1)   # base models' training included when not cached
        targets["whole benchmark under 45 minutes (without the ablation)"] = run.seconds() < 45 * 60
    if args.ablation:
        results["ablation"] = ablation(args)
    console.print(met(targets))
    write_results(args.output, {"results": results, "targets": met(targets), "args": {k: str(v) for k, v in vars(args).items()}},
                  run)
    console.print(f"wrote {args.output} ({run.seconds():.0f} s)")


def pagcp_config(arch: str, args, **overrides) -> PAGCPConfig:
    settings = dict(flops_target=ARCHS[arch]["flops_target"], default_max_drop=args.budget, max_rounds=args.max_rounds,
                    finetune_steps=args.finetune_steps, final_finetune_steps=args.final_finetune_steps,
                    sparsity_steps=args.sparsity_steps, min_share=args.min_share)
    return PAGCPConfig(**(settings | ARCHS[arch]["pagcp"] | overrides))


def compare(arch: str, args) -> tuple[dict, dict]:
    """PAGCP and the two baselines at PAGCP's MACs, each fine-tuned for as many steps; the table and the floors."""
    input_spec, tasks = data_spec("scenes")
    spec = zoo_spec(arch, input_spec, tasks, ARCHS[arch]["config"], data="scenes")
    train_data, val_data = load_data("scenes", "train"), load_data("scenes", "val")
    test_data = load_data("scenes", "test", n=args.test_samples)
    base = _trained_base(arch, spec, args)
    config = pagcp_config(arch, args)
    tradeoff = []
    if args.oracle_tradeoff:
        console.print(f"{arch}: oracle size trade-off (round 1 decisions) ...")
        tradeoff = oracle_tradeoff(base, spec, val_data, train_data, config)
    console.print(f"{arch}: PAGCP to {config.flops_target:.0%} of the MACs ...")
    pagcp, _, record = prune_pagcp(base, spec, train_data, val_data, config)
    finetune_budget = config.sparsity_steps + record.rounds * config.finetune_steps + config.final_finetune_steps
    example = Surgeon(spec).example
    target = _macs(pagcp, example)
    console.print(f"{arch}: baselines at {target / _macs(base, example):.1%} of the MACs, {finetune_budget} fine-tuning steps each ...")
    units, scores = Surgeon(spec).prunable_groups(base), taylor_scores(base, spec, train_data)
    base_macs = _macs(base, example)
    uniform_ratio, uniform, uniform_multiple = matched(lambda r, m: uniform_l1(base, spec, r, units, m), target, base_macs,
                                                       example)
    single_ratio, single, single_multiple = matched(lambda r, m: single_task_taylor(base, spec, train_data, r, scores, m),
                                                    target, base_macs, example)
    # the unpruned model gets the same extra training: a pruned model must not look good for its extra steps;
    # every model is fine-tuned as PAGCP's rounds are (task losses + distillation from the unpruned model)
    longer, teacher = copy.deepcopy(base), copy.deepcopy(base)
    for model in (longer, uniform, single):
        train(model, spec, train_data, config.finetuning(finetune_budget, 0), teacher=teacher if config.distill_weight else None)
    models = {"unpruned": base, "unpruned+ft": longer, "uniform-l1": uniform, "single-task-taylor": single, "pagcp": pagcp}
    rows = score_models(models, spec, test_data)
    with tempfile.TemporaryDirectory() as scratch:
        for name, latency in latencies_ms(models, spec, args.threads, args.runs, Path(scratch)).items():
            rows[name]["latency_ms"] = latency
    for row in rows.values():
        row["latency_ratio"] = row["latency_ms"]["median"] / rows["unpruned"]["latency_ms"]["median"]
    rows["uniform-l1"] |= {"ratio": uniform_ratio, "channel_multiple": uniform_multiple}
    rows["single-task-taylor"] |= {"ratio": single_ratio, "channel_multiple": single_multiple}
    pagcp_row = rows["pagcp"]
    within = {t: pagcp_row["degradation"][t] <= 0.02 for t in spec.task_names}
    worst = {name: max(row["degradation"].values()) for name, row in rows.items()}
    matched_macs = all(abs(rows[b]["macs_ratio"] - pagcp_row["macs_ratio"]) <= MATCH_POINTS for b in ("uniform-l1", "single-task-taylor"))
    targets = {
        f"MACs at most {config.flops_target:.0%}": pagcp_row["macs_ratio"] <= config.flops_target + 1e-9,
        "baselines matched within 3 points of MACs": matched_macs,
        "PAGCP's worst task better than uniform L1's and single-task's": matched_macs and all(
            worst["pagcp"] < worst[b] for b in ("uniform-l1", "single-task-taylor")),
        "every task within 2% of the unpruned model fine-tuned as long": all(within.values()),
        "latency at most 0.6x (ONNX Runtime, interleaved)": pagcp_row["latency_ratio"] <= 0.6,
    }
    _print(spec, rows, tradeoff, targets, record, finetune_budget, args.threads)
    return {"setup": {"model": arch, "config": spec.config, "train_steps": args.train_steps or ARCHS[arch]["train_steps"],
                      "data": f"scenes (train / val: oracle / test {len(test_data)}: table)",
                      "pagcp_config": record.to_dict() | {"decisions": len(record.decisions)},
                      "finetune_steps_each": finetune_budget,
                      "latency": f"ONNX Runtime, measured on this CPU, {args.threads} thread(s), batch 1"},
            "models": rows, "within_2pct": within, "oracle_tradeoff": tradeoff,
            "pagcp_layers": [d.__dict__ | {"removed": len(d.removed)} for d in record.decisions]}, targets


def score_models(models: dict, spec: ModelSpec, test_data) -> dict:
    """MACs, params and test metrics of every model; each task's degradation against the better of the two unpruned
    references (as given, and fine-tuned as long as the pruned ones): the stricter comparison."""
    rows = {}
    for name, model in models.items():
        model.eval()
        cost = model_cost(model, spec)
        rows[name] = {"macs": cost.all_tasks.macs, "params": cost.total_params,
                      "metrics": evaluate(torch_predictor(model), spec.tasks, test_data)}
    for name, row in rows.items():
        row["macs_ratio"] = row["macs"] / rows["unpruned"]["macs"]
        row["params_ratio"] = row["params"] / rows["unpruned"]["params"]
        against = [degradation(spec, rows[r]["metrics"], row["metrics"]) for r in ("unpruned", "unpruned+ft") if r in rows]
        row["degradation"] = {task: max(d[task] for d in against) for task in spec.task_names}
        row["worst_task"] = max(row["degradation"], key=row["degradation"].get)
    return rows


def ablation(args) -> dict:
    """PAGCP on the mtl-cnn, the full pass and each kept change switched off once: MACs reached and each task's
    degradation against the better of the unpruned model and the unpruned model fine-tuned for as many steps as the
    full pass can take (sparsity phase + every round + the final fine-tuning: no arm gets more), trained once. The
    arms run in `--workers` processes of `--threads` threads each."""
    spec, train_data, _, _ = _ablation_setting(args)
    base = _trained_base("mtl-cnn", spec, args)   # trained (and cached) once, before the workers start
    full = pagcp_config("mtl-cnn", args)
    most_steps = full.sparsity_steps + full.max_rounds * full.finetune_steps + full.final_finetune_steps
    arms = {"full pass": {}}
    out: dict = {"reference_finetune_steps": most_steps}
    for name, overrides in ABLATIONS.items():
        if all(getattr(pagcp_config("mtl-cnn", args, **overrides), k) == getattr(full, k) for k in overrides):
            out[name] = {"skipped": "already off in the full pass"}
        else:
            arms[name] = overrides
    console.print(f"ablation: the unpruned reference ({most_steps} fine-tuning steps) and {len(arms)} arms, "
                  f"{args.workers} at a time ...")
    with concurrent.futures.ProcessPoolExecutor(args.workers) as pool:
        reference = pool.submit(_ablation_reference, args, base, most_steps)
        pruned = {name: pool.submit(_ablation_arm, args, base, overrides) for name, overrides in arms.items()}
        longer = reference.result()
        _, _, _, test_data = _ablation_setting(args)
        for name, future in pruned.items():
            model, record, config = future.result()
            rows = score_models({"unpruned": base, "unpruned+ft": longer, "pagcp": model}, spec, test_data)
            out[name] = {"macs_ratio": rows["pagcp"]["macs_ratio"], "degradation": rows["pagcp"]["degradation"],
                         "worst_task": rows["pagcp"]["worst_task"], "rounds": record.rounds, "stopped_by": record.stopped_by,
                         "finetune_steps": config.sparsity_steps + record.rounds * config.finetune_steps
                         + config.final_finetune_steps, "seconds": round(record.seconds, 1)}
            console.print(f"ablation: {name}: {out[name]['macs_ratio']:.1%} of the MACs, worst task "
                          f"{out[name]['worst_task']} {out[name]['degradation'][out[name]['worst_task']]:+.1%}")
    return out


def _ablation_setting(args):
    input_spec, tasks = data_spec("scenes")
    spec = zoo_spec("mtl-cnn", input_spec, tasks, ARCHS["mtl-cnn"]["config"], data="scenes")
    return spec, load_data("scenes", "train"), load_data("scenes", "val"), load_data("scenes", "test", n=args.test_samples)


def _ablation_reference(args, base: torch.nn.Module, steps: int) -> torch.nn.Module:
    """(A worker) the unpruned model fine-tuned for `steps`, as the arms are (task losses + distillation)."""
    torch.set_num_threads(args.threads)
    spec, train_data, _, _ = _ablation_setting(args)
    longer = copy.deepcopy(base)
    train(longer, spec, train_data, pagcp_config("mtl-cnn", args).finetuning(steps, 0), teacher=copy.deepcopy(base),
          show_progress=False)
    return longer


def _ablation_arm(args, base: torch.nn.Module, overrides: dict):
    """(A worker) one arm: PAGCP with `overrides`; the pruned model, its record and its settings."""
    torch.set_num_threads(args.threads)
    spec, train_data, val_data, _ = _ablation_setting(args)
    config = pagcp_config("mtl-cnn", args, **overrides)
    pruned, _, record = prune_pagcp(base, spec, train_data, val_data, config, show_progress=False)
    return pruned, record, config


def cli_check(args) -> dict:
    """`edgemtl prune --flops-target 0.5` on the default model (`make demo`'s: mtl-cnn, default config, 600 steps), as
    a user runs it."""
    default = trained_checkpoint(args.checkpoint_dir / "default.pt" if args.checkpoint_dir else None, 600, {}, console)
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "edgemtl", "prune", str(default), "--flops-target", "0.5",
                               "-o", str(Path(scratch) / "pruned.pt")], capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            return {"reached": False, "stopped_by": {}, "error": done.stderr.strip().splitlines()[-1:], "seconds": seconds}
        record = torch.load(Path(scratch) / "pruned.pt", weights_only=True)["meta"]["pagcp"]
    return {"reached": record["target_reached"], "stopped_by": record["stopped_by"], "seconds": round(seconds, 1),
            "macs_ratio": record["macs_after"] / record["macs_before"], "metrics_before": record["metrics_before"],
            "metrics_after": record["metrics_after"]}


def _trained_base(arch: str, spec: ModelSpec, args) -> torch.nn.Module:
    """The unpruned model: from --checkpoint-dir when it holds one (same config), else trained with seed 0 (and saved)."""
    path = args.checkpoint_dir / f"{arch}.pt" if args.checkpoint_dir else None
    steps = args.train_steps or ARCHS[arch]["train_steps"]
    loaded = load(trained_checkpoint(path, steps, spec.config, console, arch=arch))
    if saved_config(arch, loaded.spec.config) != spec.config:   # a key added since it was saved: its legacy value
        raise SystemExit(f"{path} holds config {loaded.spec.config}, the benchmark asks for {spec.config}")
    return loaded.model


def _print(spec, rows, tradeoff, targets, record, budget, threads) -> None:
    table = Table(title=f"{spec.arch} / scenes test, equal MACs, {budget} fine-tuning steps each; latency ratio measured (ORT, {threads} thread)")
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
