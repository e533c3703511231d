"""The gap9 flow on the default mtl-cnn (--arch vit: a plain ViT of the m3vit's blocks; --arch m3vit: the MoE ViT, each task
its own expert path, its MoE layers run expert by expert): int8 metrics, bit-exact C on the host and under qemu rv32, the L2
placement, Deeploy's memory map, the cycle estimate, and how long the compile takes.

Trains `mtl-cnn` on `scenes` (fixed seed; or reuses --checkpoint), then runs the real
`edgemtl compile --target gap9` flow and reads its manifest:
1. every task's held-out metric, float vs int8 (post-training quantization, calibrated on training images);
2. the generated C against the reference executor, bit for bit, on --samples real images per task, compiled
   with the host gcc and for rv32imac under qemu-system-riscv32 (retired instructions per inference: simulated);
3. the L2 / L3 placement verdict and the cluster cycle / latency / energy estimate (estimated, analytical);
4. Deeploy's static memory map per level where it ran (static allocation at compile time);
5. the compile's wall time (calibration included), and that of a second compile with `edgemtl compile
   --target gap9 --data scenes`'s default settings (4 qemu samples instead of --samples), timed in the same run
   (--no-default-compile skips it; its target is then "not measured").

    .venv/bin/python benchmarks/gap9.py [--arch mtl-cnn|vit|m3vit] [--train-steps 600] [--checkpoint PATH] [--samples 32]
                                        [--no-default-compile]

Prints a table and writes benchmarks/results/gap9.json (--arch vit: gap9_vit.json, m3vit: gap9_m3vit.json; for the ViTs
"fits L2" is met when it fits or the placement names what goes to L3).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from edgemtl.compile import compile_model
from edgemtl.flow import CompileOptions
from edgemtl.model.checkpoint import load

from common import met, relative_change, start_run, trained_checkpoint, write_results

RESULTS = {"mtl-cnn": Path(__file__).parent / "results" / "gap9.json",
           "vit": Path(__file__).parent / "results" / "gap9_vit.json",
           "m3vit": Path(__file__).parent / "results" / "gap9_m3vit.json"}
ARCHS = {"mtl-cnn": ("mtl-cnn", {}), "vit": ("m3vit", {"moe_every": 0}), "m3vit": ("m3vit", {})}   # zoo arch, config
COMPILE_LIMIT_S = 300.0
console = Console(width=220)


def op_errors(layers: dict) -> dict[str, dict]:
    """Per integer op kind: the SQNR (dB) of its outputs against float on real held-out images (cumulative: each
    layer's output carries the error of every layer before it), worst and median over the op's layers."""
    by_op: dict[str, list[float]] = {}
    for layer in layers.values():
        if "sqnr_db" in layer:
            by_op.setdefault(layer["op"], []).append(layer["sqnr_db"])
    return {op: {"layers": len(v), "worst_db": min(v), "median_db": sorted(v)[len(v) // 2]} for op, v in sorted(by_op.items())}


def task_row(task, entry: dict) -> dict:
    int8, c = entry["int8"], entry["c"]
    before, after = int8["metric_float"][task.metric], int8["metric_int8"][task.metric]
    qemu = c.get("qemu", {})
    deeploy = entry.get("deeploy", {})
    return {
        "metric": task.metric, "float": before, "int8": after,
        "change": relative_change(before, after, task.higher_is_better),
        "host_bit_exact": c["host"]["bit_exact"], "host_samples": c["host"]["samples"],
        "qemu_bit_exact": qemu.get("bit_exact", False), "qemu_samples": qemu.get("samples", 0),
        "qemu_skipped": qemu.get("skipped"),
        "qemu_instructions_per_inference": (qemu.get("instructions") or {}).get("totals"),
        "arena_bytes": c["arena"]["arena_bytes"],
        "placement": entry["memory_placement"], "cycle_estimate": entry["cycle_estimate"]["totals"],
        "op_sqnr_db_on_real_activations": op_errors(int8["layers"]),
        "experts_kept": entry.get("expert_path", {}).get("experts_kept"),
        "deeploy": {k: deeploy.get(k) for k in ("available", "ok", "scope", "memory", "fits", "reason",
                                                 "prefix_macs_share", "how_to_create") if k in deeploy},
    }


def timed_compile(loaded, options: CompileOptions) -> tuple[dict, float]:
    """The manifest of a gap9 compile in a scratch folder, and its wall time."""
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        bundle = compile_model(loaded, "gap9", Path(scratch) / "bundle", options)
        seconds = time.perf_counter() - started
        return json.loads((bundle / "manifest.json").read_text()), seconds


def default_compile(loaded) -> dict[str, Any]:
    """What a user waits for: the compile with the CLI's defaults (`--target gap9 --data scenes`)."""
    options = CompileOptions(data="scenes")
    manifest, seconds = timed_compile(loaded, options)
    return {"ran": True, "seconds": seconds, "steps": {s["name"]: s["seconds"] for s in manifest["steps"]},
            "settings": f"edgemtl compile --target gap9 --data scenes (c_samples {options.c_samples}, "
                        f"qemu_samples {options.qemu_samples}, latency {'on' if options.measure_latency else 'off'})"}


def evaluate_targets(rows: dict, compile_seconds: float, steps: dict, default: dict, arch: str = "mtl-cnn"
                     ) -> dict[str, bool | None]:
    """Every target from what this run measured; None where the run skipped the measurement."""
    placed = {"every_task_fits_l2_or_names_its_l3_spill": all(
        r["placement"]["status"] == "fits-l2" or r["placement"]["weights_in_l3"] or r["placement"]["activations_in_l3"]
        for r in rows.values())} if arch in ("vit", "m3vit") else {
        "every_task_fits_l2": all(r["placement"]["status"] == "fits-l2" for r in rows.values())}
    return {
        "every_task_within_2pct_of_float": all(r["change"] <= 0.02 for r in rows.values()),
        "c_bit_exact_host_32_samples": all(r["host_bit_exact"] and r["host_samples"] >= 32 for r in rows.values()),
        "c_bit_exact_qemu_32_samples": all(r["qemu_bit_exact"] and r["qemu_samples"] >= 32 for r in rows.values()),
        **placed,
        "compile_under_5_min_without_qemu": compile_seconds - steps.get("verify_c_qemu", 0.0) < COMPILE_LIMIT_S,
        "compile_under_5_min_default_settings": default["seconds"] < COMPILE_LIMIT_S if default.get("ran") else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="mtl-cnn")
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--checkpoint", type=Path, default=None, help="reuse this trained model (written on first run)")
    parser.add_argument("--samples", type=int, default=32, help="real samples checked bit for bit per task, host and qemu")
    parser.add_argument("--no-default-compile", action="store_true", help="skip the second, default-settings compile")
    parser.add_argument("--output", type=Path, default=None, help="default: benchmarks/results/gap9[_vit|_m3vit].json")
    args = parser.parse_args()
    args.output = args.output or RESULTS[args.arch]
    run = start_run()
    arch, config = ARCHS[args.arch]
    loaded = load(trained_checkpoint(args.checkpoint, args.train_steps, config, console=console, arch=arch))
    options = CompileOptions(data="scenes", measure_latency=False, c_samples=args.samples, qemu_samples=args.samples)
    manifest, compile_seconds = timed_compile(loaded, options)
    steps = {s["name"]: s["seconds"] for s in manifest["steps"]}
    rows = {task.name: task_row(task, manifest["tasks"][task.name]) for task in loaded.spec.tasks}
    default = {"ran": False, "skipped": "--no-default-compile"}
    if not args.no_default_compile:
        console.print("compile with the default settings (timed) ...")
        default = default_compile(loaded)
    targets = evaluate_targets(rows, compile_seconds, steps, default, args.arch)
    _print(rows, targets, compile_seconds, steps, default, args.arch)
    write_results(args.output, {
        "setup": {"model": arch, "config": loaded.spec.config, "data": "scenes", "train_steps": args.train_steps,
                  "quantization": manifest["passes"]["quantize_int8"], "samples_checked": args.samples,
                  "compile_seconds": compile_seconds, "steps": steps,
                  "provenance": {"metrics": "measured: " + manifest["tasks"][loaded.spec.tasks[0].name]["int8"]["metric_int8_source"],
                                 "instructions": "simulated (qemu rv32imac, one core, no SIMD)",
                                 "placement / cycles / energy": "estimated (edgemtl.analysis.mcu_cost)",
                                 "deeploy memory": "static (Deeploy's allocation at compile time)",
                                 "compile seconds": "measured (wall time on this machine, see provenance.load_average_1_5_15_min)"}},
        "default_compile": default, "tasks": rows, "targets": targets,
    }, run)
    console.print(f"wrote {args.output} ({run.seconds():.0f} s)")


def _print(rows: dict, targets: dict, compile_seconds: float, steps: dict, default: dict, arch: str) -> None:
    table = Table(title=f"{arch} on gap9, int8 PTQ; C = bit-exact check vs the reference executor; qemu instr. = simulated; "
                        "L2 / cycles = estimated")
    for column in ("task", "float", "int8", "change", "C host", "C qemu", "qemu instr./inf.", "L2 placement",
                   "est. latency @clock", "est. energy", "Deeploy"):
        table.add_column(column)
    for name, row in rows.items():
        cycles, deeploy = row["cycle_estimate"], row["deeploy"]
        memory = deeploy.get("memory") or {}
        deeploy_text = (f"{deeploy.get('scope', 'whole')}: L1 {memory['L1']['total']:,} / L2 {memory['L2']['total']:,} B"
                        if deeploy.get("ok") else str(deeploy.get("reason") or deeploy.get("how_to_create") or "")[:50])
        instructions = row["qemu_instructions_per_inference"] or {}
        table.add_row(f"{name} ({row['metric']})", f"{row['float']:.4f}", f"{row['int8']:.4f}", f"{row['change']:+.2%}",
                      f"{'exact' if row['host_bit_exact'] else 'DIFF'} ({row['host_samples']})",
                      f"{'exact' if row['qemu_bit_exact'] else (row['qemu_skipped'] or 'DIFF')[:30]} ({row['qemu_samples']})",
                      f"{instructions['instructions']:,.0f} ({instructions['instructions_per_mac']:.2f}/MAC)" if instructions else "-",
                      row["placement"]["status"], f"{cycles['latency_ms']:.2f} ms", f"{cycles['energy_mj']:.3f} mJ", deeploy_text)
    console.print(table)
    for name, row in rows.items():
        errors = row["op_sqnr_db_on_real_activations"]
        console.print(f"{name}: SQNR vs float on real images, worst / median dB per op (cumulative): " + ", ".join(
            f"{op} {e['worst_db']:.1f}/{e['median_db']:.1f}" for op, e in errors.items()))
    console.print(f"compile {compile_seconds:.0f} s (qemu step {steps.get('verify_c_qemu', 0):.0f} s)")
    if default.get("ran"):
        console.print(f"default-settings compile {default['seconds']:.0f} s ({default['settings']})")
    console.print(met(targets))


if __name__ == "__main__":
    main()
