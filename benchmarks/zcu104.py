"""The zcu104 flow on the default mtl-cnn: w4a4 QAT per task, C simulation against the quantized model,
FINN and roofline estimates against the ZCU104's resources, and how long the compile takes.

Trains `mtl-cnn` on `scenes` (fixed seed; or reuses --checkpoint), then runs the real
`edgemtl compile --target zcu104` flow and reads its manifest:
1. every task's held-out metric, float vs w4a4 after QAT (the QAT budget is stated in the output);
2. the HLS C simulation against the quantized model, in output LSBs, for every head;
3. FINN's estimates (when `make finn-venv` was run) and edgemtl's roofline: LUT / BRAM / DSP shares of the
   XCZU7EV and fps at the target file's fps values;
4. the compile's wall time with and without the QAT step: "without QAT" is the compile minus the whole
   `quantize_brevitas` step (QAT plus its calibration and model rewrites), measured in the same run.

    .venv/bin/python benchmarks/zcu104.py [--train-steps 600] [--qat-steps 300] [--checkpoint PATH]

Prints a table and writes benchmarks/results/zcu104.json.
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

from edgemtl.compile import compile_model
from edgemtl.flow import CompileOptions
from edgemtl.model.checkpoint import load
from edgemtl.targets import load_target

from common import met, relative_change, start_run, trained_checkpoint, write_results

RESULTS = Path(__file__).parent / "results" / "zcu104.json"
LIMITS = {"lut": 0.70, "bram18": 0.80, "dsp": 0.80}
COMPILE_WITHOUT_QAT_LIMIT_S = 600.0
console = Console(width=200)


def finn_fit(finn: dict, fps: str, part) -> dict | None:
    """FINN's estimate at one target fps as shares of the part, or None when FINN gave none."""
    entry = (finn.get("by_target_fps") or {}).get(fps) if finn.get("ok") else None
    if not entry:
        return None
    shares = {"lut": entry["lut"] / part.lut, "bram18": entry["bram18"] / part.bram18, "dsp": entry["dsp"] / part.dsp}
    return {"estimated_fps": entry["estimated_fps"], **shares,
            "fits": all(shares[k] <= LIMITS[k] for k in LIMITS), "provenance": finn.get("provenance")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--qat-steps", type=int, default=300)
    parser.add_argument("--csim-samples", type=int, default=8)
    parser.add_argument("--layer-bits", nargs="*", default=[], metavar="LAYER=W,A",
                        help="per-layer bit widths, e.g. first=8,8 last=8,8 (as compile --layer-bits)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="reuse this trained mtl-cnn (written on first run)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    run = start_run()
    torch.manual_seed(0)
    loaded = load(trained_checkpoint(args.checkpoint, args.train_steps, console=console))
    layer_bits = {item.partition("=")[0]: tuple(int(b) for b in item.partition("=")[2].split(",")) for item in args.layer_bits}
    options = CompileOptions(data="scenes", qat_steps=args.qat_steps, csim_samples=args.csim_samples, measure_latency=False,
                             layer_bits=layer_bits)
    with tempfile.TemporaryDirectory() as scratch:
        compile_start = time.perf_counter()
        bundle = compile_model(loaded, "zcu104", Path(scratch) / "bundle", options)
        compile_seconds = time.perf_counter() - compile_start
        manifest = json.loads((bundle / "manifest.json").read_text())
    steps = {s["name"]: s["seconds"] for s in manifest["steps"]}
    part, rows = load_target("zcu104").fabric, {}
    for task in loaded.spec.tasks:
        entry = manifest["tasks"][task.name]
        quant, hls = entry["quantization"], entry.get("hls4ml", {})
        before, after = quant["metric_float"][task.metric], quant["metric_quant"][task.metric]
        rows[task.name] = {
            "metric": task.metric, "float": before, "w4a4": after,
            "change": relative_change(before, after, task.higher_is_better),
            "qonnx_max_diff_lsb": entry["export_check"]["qonnx_max_diff_lsb"],
            "qcdq_max_diff_lsb": entry["export_check"]["onnxruntime_max_diff_lsb"],
            "hls4ml_ok": bool(hls.get("ok")), "hls4ml_error": hls.get("error"),
            "csim": hls.get("csim"), "testbench": hls.get("testbench"),
            "finn": {fps: finn_fit(entry.get("finn", {}), fps, part) for fps in map(str, map(int, manifest_fps(manifest)))},
            "finn_raw": entry.get("finn"), "roofline": entry.get("roofline"),
        }
    targets = evaluate_targets(rows, compile_seconds, steps)
    _print(rows, targets, compile_seconds, steps, args.qat_steps)
    write_results(args.output, {
        "setup": {"model": "mtl-cnn", "config": loaded.spec.config, "data": "scenes", "train_steps": args.train_steps,
                  "precision": "w4a4", "layer_bits": layer_bits, "qat_steps_per_task": args.qat_steps, "csim_samples": args.csim_samples,
                  "rewrites": manifest["passes"]["quantize_brevitas"].get("rewrites"),
                  "compile_seconds": compile_seconds, "compile_seconds_without_qat": compile_seconds - steps["quantize_brevitas"],
                  "compile_seconds_without_qat_means": "compile wall time minus the whole quantize_brevitas step, same run",
                  "steps": steps},
        "tasks": rows, "targets": targets,
    }, run)
    console.print(f"wrote {args.output} ({run.seconds():.0f} s)")


def evaluate_targets(rows: dict, compile_seconds: float, steps: dict) -> dict[str, bool]:
    """Every target from what this run measured."""
    return {
        "every_task_within_3pct_of_float": all(r["change"] <= 0.03 for r in rows.values()),
        "csim_within_1_lsb_every_head": all(r["hls4ml_ok"] and r["csim"]["max_abs_diff_lsb"] <= 1 for r in rows.values()),
        "fits_zcu104_at_1000_fps_finn": all((r["finn"].get("1000") or {}).get("fits", False) for r in rows.values()),
        "compile_without_qat_under_10_min": compile_seconds - steps["quantize_brevitas"] < COMPILE_WITHOUT_QAT_LIMIT_S,
    }


def manifest_fps(manifest: dict) -> list[float]:
    for entry in manifest["tasks"].values():
        fps = (entry.get("finn") or {}).get("by_target_fps")
        if fps:
            return [float(k) for k in fps]
    return [1000.0, 10000.0]


def _print(rows: dict, targets: dict, compile_seconds: float, steps: dict, qat_steps: int) -> None:
    table = Table(title=f"mtl-cnn on zcu104, w4a4, {qat_steps} QAT steps per task; C-sim = hls4ml (simulated); FINN / roofline = estimated")
    for column in ("task", "float", "w4a4", "change", "QONNX / QCDQ LSB", "C-sim LSB", "FINN @1000 fps: LUT / BRAM / DSP, fps",
                   "roofline fps"):
        table.add_column(column)
    for name, row in rows.items():
        finn = row["finn"].get("1000")
        table.add_row(f"{name} ({row['metric']})", f"{row['float']:.4f}", f"{row['w4a4']:.4f}", f"{row['change']:+.2%}",
                      f"{row['qonnx_max_diff_lsb']:.0f} / {row['qcdq_max_diff_lsb']:.0f}",
                      f"{row['csim']['max_abs_diff_lsb']:.0f}" if row["hls4ml_ok"] else (row["hls4ml_error"] or "")[:60],
                      f"{finn['lut']:.1%} / {finn['bram18']:.1%} / {finn['dsp']:.1%}, {finn['estimated_fps']:.0f}" if finn
                      else str((row["finn_raw"] or {}).get("reason") or (row["finn_raw"] or {}).get("how_to_create") or "")[:60],
                      f"{(row['roofline'] or {}).get('fps', float('nan')):.0f}")
    console.print(table)
    console.print(f"compile {compile_seconds:.0f} s, of which QAT step {steps['quantize_brevitas']:.0f} s")
    console.print(met(targets))


if __name__ == "__main__":
    main()
