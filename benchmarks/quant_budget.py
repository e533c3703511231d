"""Quantization that meets its accuracy budget by default: the default mtl-cnn compiled with no flags for the zcu104,
the gap9 and the arm64, the zcu104's mixed precision against all-w8a8 in FINN's LUT estimate, and a real pretrained
model from a PyPI package (MTCNN's ONet, facenet-pytorch's weights, on scikit-image's LFW faces) through all three.

    .venv/bin/python benchmarks/quant_budget.py [--checkpoint .cache/bench/mtl-cnn-600.pt]

Every number comes from the compile's own manifest (tasks.<task>.budget, flows/budget.py): the relative loss on the
held-out split the remedies were chosen on (what the compile enforces) and on the test split none of them saw.
Prints a table and writes benchmarks/results/quant_budget.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from edgemtl.compile import compile_model
from edgemtl.flow import CompileOptions
from edgemtl.model.checkpoint import LoadedModel, load
from edgemtl.targets import load_target

from common import met, start_run, trained_checkpoint, write_results

RESULTS = Path(__file__).parent / "results" / "quant_budget.json"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mtcnn"
TARGETS = ("zcu104", "gap9", "arm64")
COMPILE_LIMIT_S = 600.0   # the default zcu104 compile on 2 cores
console = Console(width=220)


def compile_once(loaded: LoadedModel, target: str, folder: Path, options: CompileOptions) -> dict[str, Any]:
    """One real compile; per task its budget record, and the zcu104's FINN LUT estimate at each target fps."""
    start = time.perf_counter()
    bundle = compile_model(loaded, target, folder / target, options)
    seconds = time.perf_counter() - start
    manifest = json.loads((bundle / "manifest.json").read_text())
    tasks = {}
    for name, entry in manifest["tasks"].items():
        budget = entry.get("budget") or {}
        unseen = budget.get("unseen") or {}
        finn = entry.get("finn") or {}
        tasks[name] = {
            "budget": budget.get("max_relative_loss"), "judged_by": budget.get("judged_by"), "metric": budget.get("metric"),
            "float": budget.get("float"), "quantized": budget.get("quantized"), "relative_loss": budget.get("relative_loss"),
            "within": budget.get("within"), "shipped": budget.get("shipped"),
            "remedies": [{k: row.get(k) for k in ("name", "relative_loss", "qat_steps", "cost", "layers_at_8_bits")
                          if k in row} for row in budget.get("remedies", [])],
            "unseen_relative_loss": unseen.get("relative_loss"), "unseen_split": unseen.get("split"),
            "finn_lut": {fps: fold["lut"] for fps, fold in (finn.get("by_target_fps") or {}).items()} if finn.get("ok") else None,
            "precision": (entry.get("quantization") or {}).get("precision"),
        }
    return {"compile_seconds": round(seconds, 1), "steps": {s["name"]: s["seconds"] for s in manifest["steps"]},
            "tasks": tasks}


def every_within(run: dict[str, Any], key: str = "relative_loss") -> bool:
    rows = [row for row in run["tasks"].values() if row["budget"] is not None]
    return bool(rows) and all(row[key] is not None and row[key] <= row["budget"] for row in rows)


def lut_sums(run: dict[str, Any]) -> dict[str, float] | None:
    """FINN's LUT estimate summed over the tasks' designs, per target fps (None: FINN gave none for some task)."""
    per_task = [row["finn_lut"] for row in run["tasks"].values()]
    if not per_task or any(not luts for luts in per_task):
        return None
    return {fps: sum(luts[fps] for luts in per_task) for fps in per_task[0]}


def real_model(folder: Path) -> tuple[LoadedModel, str]:
    """MTCNN's ONet from facenet-pytorch's package data, through examples/mtcnn's factory, and its LFW faces."""
    sys.path.insert(0, str(EXAMPLE))
    from make_data import package_file, write_faces

    loaded = load(package_file("facenet_pytorch", "data/onet.pt"), factory="onet:mtcnn_onet", spec_path=EXAMPLE / "spec.yaml")
    return loaded, str(write_faces(folder / "faces.npz"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--checkpoint", type=Path, default=None, help="reuse this trained mtl-cnn (written on first run)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    run = start_run()
    default = load(trained_checkpoint(args.checkpoint, args.train_steps, console=console))
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for target in TARGETS:  # no flags: the CLI's defaults
            console.print(f"default mtl-cnn -> {target} (no flags) ...")
            runs[f"default/{target}"] = compile_once(default, target, folder / "default", CompileOptions())
        console.print("default mtl-cnn -> zcu104 --precision w8a8 ...")
        runs["default/zcu104-w8a8"] = compile_once(default, "zcu104", folder / "w8a8", CompileOptions(precision="w8a8"))
        onet, faces = real_model(folder)
        for target in TARGETS:
            console.print(f"MTCNN ONet -> {target} (defaults, --data faces --resize) ...")
            runs[f"onet/{target}"] = compile_once(onet, target, folder / "onet", CompileOptions(data=faces, resize=True))
    mixed, w8a8 = lut_sums(runs["default/zcu104"]), lut_sums(runs["default/zcu104-w8a8"])
    budgets = {target: load_target(target).max_drop for target in TARGETS}
    targets: dict[str, bool | None] = {
        **{f"default_{t}_every_task_within_{budgets[t]:.0%}": every_within(runs[f"default/{t}"]) for t in TARGETS},
        **{f"default_{t}_every_task_within_{budgets[t]:.0%}_on_the_unseen_test_split":
           every_within(runs[f"default/{t}"], "unseen_relative_loss") for t in TARGETS},
        "zcu104_mixed_fewer_luts_than_all_w8a8_both_within_budget":
            None if mixed is None or w8a8 is None else (every_within(runs["default/zcu104"])
                                                        and every_within(runs["default/zcu104-w8a8"])
                                                        and all(mixed[fps] < w8a8[fps] for fps in mixed)),
        **{f"pretrained_onet_{t}_every_task_within_{budgets[t]:.0%}": every_within(runs[f"onet/{t}"]) for t in TARGETS},
        f"default_zcu104_compile_within_{COMPILE_LIMIT_S:.0f}_s": runs["default/zcu104"]["compile_seconds"] <= COMPILE_LIMIT_S,
    }
    _print(runs, mixed, w8a8, targets)
    write_results(args.output, {
        "setup": {"default_model": f"mtl-cnn (zoo defaults), scenes, {args.train_steps} steps, seed 0",
                  "pretrained_model": "MTCNN ONet, facenet-pytorch data/onet.pt via examples/mtcnn/onet.py, "
                                      "scikit-image lfw_subset (--resize 25 -> 48)",
                  "budgets": budgets, "options": "target defaults (no flags); zcu104-w8a8: --precision w8a8",
                  "loss": "relative loss vs float on the held-out split the remedies were chosen on (what the compile "
                          "enforces); unseen: the same on the test split no remedy decision saw",
                  "finn_lut": "FINN analytical estimate (finn-plus, its own venv), summed over the tasks' designs"},
        "runs": runs, "zcu104_finn_lut_sum": {"mixed": mixed, "w8a8": w8a8}, "targets": targets,
    }, run)
    console.print(f"wrote {args.output} ({run.seconds():.0f} s)")


def _print(runs: dict[str, Any], mixed: dict | None, w8a8: dict | None, targets: dict) -> None:
    table = Table(title="Accuracy budget: relative loss vs float per task (held-out split / unseen test split)")
    for column in ("model / target", "task", "budget", "float -> quantized", "loss", "unseen", "within", "shipped",
                   "compile s"):
        table.add_column(column)
    for name, result in runs.items():
        for task, row in result["tasks"].items():
            values = (f"{row['metric']} {row['float']:.4g} -> {row['quantized']:.4g}" if row["metric"] else "agreement")
            loss = f"{row['relative_loss']:+.2%}" if row["relative_loss"] is not None else "-"
            unseen = f"{row['unseen_relative_loss']:+.2%}" if row["unseen_relative_loss"] is not None else "-"
            table.add_row(name, task, f"{row['budget']:.0%}" if row["budget"] else "-", values, loss, unseen,
                          str(row["within"]), str(row["shipped"]), f"{result['compile_seconds']:.0f}")
    console.print(table)
    console.print(f"zcu104 FINN LUT, summed over tasks: mixed {mixed}, all-w8a8 {w8a8}")
    console.print(met(targets))


if __name__ == "__main__":
    main()
