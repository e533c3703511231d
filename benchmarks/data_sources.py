"""Compile time from a user's own data vs the built-in set: the default model compiled with `--data scenes` and
with `--data scenes.npz` (the same built-in images and labels, saved as a user would, with their split), for
the host and the GAP9 targets, after one untimed warm-up compile, interleaved (scenes then npz, npz then scenes, ...)
so that machine load and caches hit both alike.

Target (floor from issue 14): compiling from the npz takes at most 1.1x the time of `--data scenes`, per target
(median of the per-repeat ratios). The host compile runs without latency timing: a fixed number of timed runs
would hide the data path's share. Prints a table and writes benchmarks/results/data_sources.json.

    .venv/bin/python benchmarks/data_sources.py [--repeats 3] [--targets host gap9] [--output PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

import edgemtl
from edgemtl.compile import compile_model
from edgemtl.data import SPLITS, data_spec, load_data
from edgemtl.flow import CompileOptions
from edgemtl.model.zoo import build_model, zoo_spec

from common import met, start_run, write_results

RESULTS = Path(__file__).parent / "results" / "data_sources.json"
MAX_RATIO = 1.1


def save_builtin_as_npz(path: Path) -> Path:
    """Every split of `scenes` in one npz: float images in [0, 1] (as stored, so no rounding), labels per task,
    and a `split` array, so both sources feed the flows identical samples."""
    parts = [load_data("scenes", split) for split in SPLITS]
    arrays = {"images": np.concatenate([np.asarray(p.images, dtype=np.float32) for p in parts]),
              "split": np.concatenate([np.full(len(p), p.split) for p in parts])}
    for task in parts[0].targets:
        arrays[task] = np.concatenate([np.asarray(p.targets[task]) for p in parts])
    np.savez(path, **arrays)
    return path


def timed_compile(loaded, target: str, data: str, out: Path, console: Console) -> tuple[float, dict]:
    options = CompileOptions(data=data, measure_latency=False)
    start = time.perf_counter()
    bundle = compile_model(loaded, target, out, options, console)
    seconds = time.perf_counter() - start
    return seconds, json.loads((bundle / "manifest.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--targets", nargs="+", default=["host", "gap9"])
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    run = start_run()
    console = Console(stderr=True)
    rows = []
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        input_spec, tasks = data_spec("scenes")
        spec = zoo_spec("mtl-cnn", input_spec, tasks, data="scenes")
        torch.manual_seed(0)  # compile time does not depend on what the weights learnt
        loaded = edgemtl.load(edgemtl.save(build_model(spec), spec, scratch / "mtl-cnn.pt"))
        npz = str(save_builtin_as_npz(scratch / "scenes.npz"))
        for target in args.targets:
            seconds: dict[str, list[float]] = {"scenes": [], "npz": []}
            metrics: dict[str, dict] = {}
            timed_compile(loaded, target, npz, scratch / f"{target}-warm-up", console)  # imports, caches: untimed
            for repeat in range(args.repeats):
                order = [("scenes", "scenes"), ("npz", npz)]
                for label, data in order if repeat % 2 == 0 else order[::-1]:  # neither always goes first
                    took, manifest = timed_compile(loaded, target, data, scratch / f"{target}-{label}-{repeat}", console)
                    seconds[label].append(took)
                    metrics[label] = {t: e.get("metrics") or (e.get("int8") or {}).get("metric_int8")
                                      for t, e in manifest["tasks"].items()}
            ratios = [n / s for n, s in zip(seconds["npz"], seconds["scenes"])]
            rows.append({"target": target, "seconds_scenes": seconds["scenes"], "seconds_npz": seconds["npz"],
                         "ratios": ratios, "median_ratio": statistics.median(ratios),
                         "same_metrics": metrics["scenes"] == metrics["npz"], "metrics": metrics["npz"]})
    targets = {f"npz_within_{MAX_RATIO}x_of_scenes_{r['target']}": r["median_ratio"] <= MAX_RATIO for r in rows}
    targets.update({f"same_metrics_{r['target']}": r["same_metrics"] for r in rows})
    table = Table(title=f"compile time, --data FILE.npz vs --data scenes (same images; {args.repeats} interleaved repeats)")
    for column in ("target", "scenes s (median)", "npz s (median)", "npz / scenes (median of ratios)", "same metrics"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["target"], f"{statistics.median(r['seconds_scenes']):.1f}",
                      f"{statistics.median(r['seconds_npz']):.1f}", f"{r['median_ratio']:.3f}", str(r["same_metrics"]))
    Console().print(table)
    for name, verdict in met(targets).items():
        Console().print(f"{name}: {verdict}")
    path = write_results(args.output, {"rows": rows, "targets": targets, "max_ratio": MAX_RATIO}, run)
    Console().print(f"results: {path}")


if __name__ == "__main__":
    main()
