"""Host-CPU latency of every task path of both default zoo models: ONNX Runtime vs PyTorch eager.

Runs the real `compile` flow (export, verification, timing) on default-size models with seeded random
weights (latency does not depend on the weights: the MoE dispatch has static shapes), once per thread
count, and reports the ratio of medians measured in the same run. Prints a table and writes
benchmarks/results/host_latency.json.

    .venv/bin/python benchmarks/host_latency.py [--threads 1 2] [--runs 200] [--output PATH]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import edgemtl
from edgemtl.compile import compile_model
from edgemtl.data import data_spec
from edgemtl.flow import CompileOptions
from edgemtl.model.zoo import ARCHS, build_model, zoo_spec

from common import start_run, write_results

RESULTS = Path(__file__).parent / "results" / "host_latency.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    run = start_run()
    console = Console()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as scratch:
        for arch in ARCHS:
            input_spec, tasks = data_spec("scenes")
            spec = zoo_spec(arch, input_spec, tasks, data="scenes")
            torch.manual_seed(0)
            checkpoint = edgemtl.save(build_model(spec), spec, Path(scratch) / f"{arch}.pt")
            loaded = edgemtl.load(checkpoint)
            for threads in args.threads:
                options = CompileOptions(threads=threads, latency_runs=args.runs, latency_max_seconds=20.0)
                bundle = compile_model(loaded, "host", Path(scratch) / f"{arch}-{threads}", options, console)
                manifest = json.loads((bundle / "manifest.json").read_text())
                entries = {**manifest["tasks"], "all tasks": manifest["all_tasks"]}
                for name, entry in entries.items():
                    rows.append({"arch": arch, "threads": threads, "graph": name, "macs": entry["macs"],
                                 "onnxruntime_ms": entry["latency_ms"], "pytorch_ms": entry["latency_ms_pytorch"],
                                 "speedup_vs_pytorch": entry["speedup_vs_pytorch"]})
    table = Table(title="Host CPU, batch 1, measured (median of runs; ratio from the same run)")
    for column in ("arch", "threads", "graph", "MMACs", "ORT ms", "PyTorch ms", "ORT speed-up"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["arch"], str(row["threads"]), row["graph"], f"{row['macs'] / 1e6:.1f}",
                      f"{row['onnxruntime_ms']['median']:.3f}", f"{row['pytorch_ms']['median']:.3f}",
                      f"{row['speedup_vs_pytorch']:.2f}x")
    console.print(table)
    write_results(args.output, {"setup": {"threads": args.threads, "runs": args.runs, "archs": list(ARCHS), "weights": "seeded random (seed 0)"},
                            "device": rows[0]["onnxruntime_ms"]["device"] if rows else None, "rows": rows}, run)
    console.print(f"wrote {args.output} ({run.seconds():.0f} s)")


if __name__ == "__main__":
    main()
