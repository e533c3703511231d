"""M3ViT expert paths on scenes: single-task MACs, memory of both execution orders, partition, task switching.

Trains `m3vit` on `scenes` (5 tasks, 8 experts per MoE layer, top-2) with a fixed seed, then measures:
1. single-task inference MACs against running all tasks with the same model (the paper: 88% fewer);
2. peak on-chip memory and weight traffic of the MoE layers, token-major vs expert-major, at the ZCU104's
   on-chip memory (targets/zcu104.toml) and 8-bit weights (the paper: 2.4x less memory);
3. every task's held-out metric after partition at 100% and 95% routing-mass coverage, params saved;
4. the one switchable ONNX artifact: resident memory against the per-task artifacts loaded together, and
   the first inference after a task switch against steady state (ONNX Runtime, this CPU, same run).

    .venv/bin/python benchmarks/moe.py [--train-steps 1500] [--threads 1]

Prints a table and writes benchmarks/results/moe.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from edgemtl.analysis.memory_plan import on_chip_bytes_of, precision_bytes
from edgemtl.analysis.moe_cost import moe_macs
from edgemtl.backends.onnx_export import export_task
from edgemtl.backends.switchable import export_switchable
from edgemtl.data import data_spec, load_data
from edgemtl.evaluate import evaluate, torch_predictor
from edgemtl.flows.experts import path_memory_plan
from edgemtl.model.checkpoint import load, save
from edgemtl.model.zoo import build_model, zoo_spec
from edgemtl.passes.partition_experts import PartitionConfig, partition_experts
from edgemtl.profile.switching import resident_memory, switch_latency
from edgemtl.targets import load_target
from edgemtl.training import TrainConfig, train

from common import machine_load

RESULTS = Path(__file__).parent / "results" / "moe.json"
PAPER = {"single_task_flops_reduction": 0.88, "memory_reduction": 2.4}
console = Console(width=200)


def relative_change(before: float, after: float, higher_is_better: bool) -> float:
    """Relative loss of the metric, positive = worse."""
    worse = (before - after) if higher_is_better else (after - before)
    return worse / abs(before) if before else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calibration", type=int, default=256, help="calibration samples of the expert profile")
    parser.add_argument("--checkpoint", type=Path, default=None, help="reuse this trained m3vit (written on first run)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    torch.manual_seed(0)
    input_spec, tasks = data_spec("scenes")
    spec = zoo_spec("m3vit", input_spec, tasks, {}, data="scenes")
    train_data, val_data = load_data("scenes", "train"), load_data("scenes", "val")
    if args.checkpoint is not None and args.checkpoint.is_file():
        loaded = load(args.checkpoint)
        model, spec = loaded.model, loaded.spec
    else:
        model = build_model(spec)
        console.print(f"training m3vit ({args.train_steps} steps, seed 0) ...")
        train(model, spec, train_data, TrainConfig(steps=args.train_steps, lr=args.lr, seed=0))
        if args.checkpoint is not None:
            save(model, spec, args.checkpoint)
    model.eval()
    names = spec.task_names
    macs = moe_macs(model, spec, names)
    metrics = evaluate(torch_predictor(model), spec.tasks, val_data)

    calibration = load_data("scenes", "train", n=args.calibration)
    target = load_target("zcu104")
    weight_bytes, activation_bytes = precision_bytes("w8a8")
    partitions = {}
    for coverage in (1.0, 0.95):
        paths, record, usage = partition_experts(model, spec, calibration, val_data, names,
                                                 PartitionConfig(coverage=coverage, calibration_samples=args.calibration))
        partitions[coverage] = (paths, record, usage)
    paths, record, usage = partitions[1.0]
    plans = {task: path_memory_plan(path, usage, on_chip_bytes_of(target), weight_bytes, activation_bytes).to_dict()
             for task, path in paths.items()}

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        switchable = export_switchable(model, spec, names, folder / "switchable.onnx")
        per_task = [export_task(paths[t], spec, t, folder / f"{t}.onnx") for t in names]
        memory = {"switchable_bytes": resident_memory([switchable], threads=args.threads),
                  "per_task_artifacts_bytes": resident_memory(per_task, threads=args.threads),
                  "switchable_file_bytes": switchable.stat().st_size,
                  "per_task_file_bytes": sum(p.stat().st_size for p in per_task)}
        switching = switch_latency(switchable, spec, names, threads=args.threads)

    rows = {}
    for task in spec.tasks:
        full, cut = partitions[1.0][1].tasks[task.name], partitions[0.95][1].tasks[task.name]
        plan = plans[task.name]
        rows[task.name] = {
            "macs": macs["tasks"][task.name]["macs"], "share_of_all_tasks": macs["tasks"][task.name]["share_of_all_tasks"],
            "metric": task.metric, "metric_full_model": metrics[task.name][task.metric],
            "coverage_1.0": {"experts_kept": full.experts_kept, "params": full.params_after, "params_full_path": full.params_before,
                             "metric_after": full.metric_after,
                             "change": relative_change(full.metric_before, full.metric_after, task.higher_is_better)},
            "coverage_0.95": {"experts_kept": cut.experts_kept, "params": cut.params_after,
                              "params_saved": 1 - cut.params_after / cut.params_before, "metric_after": cut.metric_after,
                              "rerouted_share": cut.rerouted_share,
                              "change": relative_change(cut.metric_before, cut.metric_after, task.higher_is_better)},
            "memory_plan": plan,
        }
    worst_share = max(r["share_of_all_tasks"] for r in rows.values())
    worst_memory_ratio = min(r["memory_plan"]["ratio"] for r in rows.values())
    targets = {
        "single_task_macs_at_most_25pct_of_all_tasks": worst_share <= 0.25,
        "expert_major_peak_on_chip_at_least_2.4x_lower": worst_memory_ratio >= 2.4,
        "coverage_1.0_every_task_within_1pct": all(r["coverage_1.0"]["change"] <= 0.01 for r in rows.values()),
        "first_inference_after_switch_within_10pct": switching["ratio"] <= 1.10,
        "switchable_uses_less_resident_memory": memory["switchable_bytes"] < memory["per_task_artifacts_bytes"],
    }
    _print(rows, macs, memory, switching, targets, worst_share)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "setup": {"machine": machine_load(), "model": "m3vit", "config": spec.config, "data": "scenes (train 2000 / val 256)", "train_steps": args.train_steps,
                  "lr": args.lr, "calibration_samples": args.calibration, "memory_target": target.name,
                  "on_chip_bytes": on_chip_bytes_of(target), "precision": "w8a8", "threads": args.threads,
                  "latency": f"ONNX Runtime, measured on this CPU, {args.threads} thread(s), batch 1",
                  "seconds_total": time.perf_counter() - started},
        "paper": PAPER, "macs": macs, "metrics": metrics, "tasks": rows, "resident_memory": memory,
        "switch_latency": switching, "expert_usage": usage.to_dict(), "targets": targets,
    }, indent=2, default=float))
    console.print(f"wrote {args.output} ({time.perf_counter() - started:.0f} s)")


def _print(rows, macs, memory, switching, targets, worst_share) -> None:
    table = Table(title="m3vit / scenes: expert paths (memory plan: ZCU104 on-chip, 8-bit weights)")
    for column in ("task", "MACs (share of all tasks)", "experts kept @100%", "metric change @100%",
                   "params saved @95%", "metric change @95%", "peak on-chip token/expert-major", "weight traffic token/expert"):
        table.add_column(column)
    for name, row in rows.items():
        plan = row["memory_plan"]
        table.add_row(name, f"{row['macs'] / 1e6:.2f} M ({row['share_of_all_tasks']:.1%})",
                      " ".join(str(len(k)) for k in row["coverage_1.0"]["experts_kept"]),
                      f"{row['coverage_1.0']['change']:+.2%}", f"{row['coverage_0.95']['params_saved']:.1%}",
                      f"{row['coverage_0.95']['change']:+.2%}",
                      f"{plan['totals']['token_major']['peak_on_chip_bytes'] / 1024:.0f} / {plan['totals']['expert_major']['peak_on_chip_bytes'] / 1024:.0f} KiB ({plan['ratio']:.1f}x)",
                      f"{plan['totals']['token_major']['weight_traffic_bytes'] / 1024:.0f} / {plan['totals']['expert_major']['weight_traffic_bytes'] / 1024:.0f} KiB")
    console.print(table)
    console.print(f"single task = {worst_share:.1%} of all tasks' MACs at most, a {1 - worst_share:.0%} reduction (paper: {PAPER['single_task_flops_reduction']:.0%})")
    console.print(f"resident memory: switchable {memory['switchable_bytes'] / 2**20:.1f} MiB vs per-task artifacts "
                  f"{memory['per_task_artifacts_bytes'] / 2**20:.1f} MiB; first inference after a switch "
                  f"{switching['ratio']:.2f}x steady state ({switching['first_after_switch_ms']:.3f} vs {switching['steady_ms']:.3f} ms)")
    console.print({k: ("met" if v else "NOT met") for k, v in targets.items()})


if __name__ == "__main__":
    main()
