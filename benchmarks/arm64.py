"""The arm64 flow and `edgemtl profile` on the default mtl-cnn: int8 vs float metrics, ONNX Runtime float / int8
and untuned / tuned TVM timed on this host in one run, and a profile of every task on the EMULATED arm64 board
through a TVM RPC tracker on 127.0.0.1.

Trains `mtl-cnn` on `scenes` (fixed seed; or reuses --checkpoint), runs the real `edgemtl compile --target arm64`
flow, then:
1. per task, the held-out metric of the float and the int8 QDQ ONNX (from the manifest; target: int8 within 1%
   relative of float);
2. `profile --device local --tune N` on this machine's CPU (the only real silicon here): per task the medians of
   ONNX Runtime float, ONNX Runtime int8, TVM untuned and TVM meta-schedule-tuned (N trials), all measured in the
   same run at batch 1; the ratios int8 / float and tuned TVM / ONNX Runtime float; the runtime the profile ships
   for this CPU (its fastest whose output passed) against a named reference timed on the same host in the
   same run: PyTorch eager on the trained model's task path, batch 1, torch's default threads (target: the
   shipped runtime's median at most 0.5x PyTorch eager's for every task, i.e. compiling buys at least 2x over
   running the trained model as it is; a task that ships nothing fails it). Shipped / ONNX Runtime float is
   reported too, without a target: ONNX Runtime float is one of the candidates, so the fastest passing one
   can only be slower than it when its output failed the check. The arm64 manifest's own runtime is left as
   the compile chose it: only an aarch64 device's timings change it;
3. a profile of every task through a tracker on 127.0.0.1 to the emulated arm64 board (make emulated-arm64),
   timed end to end including the board server's start (target: under 5 minutes), its rows in the results
   store labelled "emulated". Emulated timings are qemu-user translation, NOT device latencies: they are
   reported only as "the path works", never as the speed of any board.

    .venv/bin/python benchmarks/arm64.py [--train-steps 600] [--checkpoint PATH] [--tune 64] [--runs 100]
                                         [--emulated-runs 10] [--store PATH] [--output PATH]

Prints a table and writes benchmarks/results/arm64.json. Set OMP_NUM_THREADS / TVM_NUM_THREADS to pin threads.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from edgemtl.compile import compile_model
from edgemtl.flow import CompileOptions
from edgemtl.model.checkpoint import load
from edgemtl.model.contract import example_input, run_task
from edgemtl.profile.device import ORT_FLOAT, ORT_INT8, TVM, TVM_TUNED
from edgemtl.profile.job import profile_bundle
from edgemtl.profile.store import ResultsStore
from edgemtl.timing import measure

from common import met, start_run, trained_checkpoint, write_results

RESULTS = Path(__file__).parent / "results" / "arm64.json"
EMULATED_KEY = "arm64-emu-bench"
EMULATED_LIMIT_S = 300.0
# the shipped runtime must be at least this much faster than PyTorch eager (same host, same run, batch 1)
MIN_SPEEDUP_OVER_EAGER = 2.0
console = Console(width=220)


def int8_row(entry: dict) -> dict:
    int8 = entry.get("int8") or {}
    if not int8.get("ok"):
        return {"ok": False, "error": int8.get("error")}
    metric = int8["metric"]
    return {"ok": True, "metric": metric, "higher_is_better": int8["higher_is_better"],
            "float": int8["metric_float"][metric], "int8": int8["metric_int8"][metric],
            "relative_loss": int8["relative_loss"], "remedy": int8["remedy"], "meets_target": int8["meets_target"]}


def _median(runtimes: dict, runtime: str) -> float | None:
    outcome = runtimes.get(runtime)
    return outcome.measurement.median_ms if outcome is not None and outcome.measurement is not None else None


def _passed(runtimes: dict, runtime: str) -> bool | None:
    outcome = runtimes.get(runtime)
    return outcome.measurement.check_passed if outcome is not None and outcome.measurement is not None else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def local_row(runtimes: dict, shipped: str | None, bundle_runtime: str | None, eager: dict) -> dict:
    """`shipped`: what the profile ships for this host's CPU (its fastest runtime whose output passed; the
    manifest of an arm64 bundle keeps `bundle_runtime`, as only an aarch64 device chooses for it); `eager`:
    PyTorch eager's latency of the same task path on this host, same run."""
    medians = {r: _median(runtimes, r) for r in (ORT_FLOAT, ORT_INT8, TVM, TVM_TUNED)}
    skipped = {r: o.skipped for r, o in runtimes.items() if o.measurement is None}
    shipped_ms = medians.get(shipped) if shipped else None
    return {
        "median_ms": medians,
        "check_passed": {r: _passed(runtimes, r) for r in medians},
        "pytorch_eager_ms": eager,
        "int8_over_float": _ratio(medians[ORT_INT8], medians[ORT_FLOAT]),
        "tvm_untuned_over_ort_float": _ratio(medians[TVM], medians[ORT_FLOAT]),
        "tvm_tuned_over_ort_float": _ratio(medians[TVM_TUNED], medians[ORT_FLOAT]),
        "tvm_tuned_over_untuned": _ratio(medians[TVM_TUNED], medians[TVM]),
        "shipped": shipped, "shipped_median_ms": shipped_ms, "bundle_runtime": bundle_runtime,
        "bundle_runtime_median_ms": medians.get(bundle_runtime),
        "shipped_over_pytorch_eager": _ratio(shipped_ms, eager.get("median")),
        "shipped_over_ort_float": _ratio(shipped_ms, medians[ORT_FLOAT]),
        "skipped": skipped,
    }


def shipped_beats_eager(rows: dict[str, dict], speedup: float = MIN_SPEEDUP_OVER_EAGER) -> bool:
    """The target: every task's shipped runtime at least `speedup` x faster than PyTorch eager on this host in
    the same run. False without tasks, and for a task that shipped nothing or lacks either median."""
    ratios = [r.get("shipped_over_pytorch_eager") for r in rows.values()]
    return bool(ratios) and all(ratio is not None and ratio <= 1 / speedup for ratio in ratios)


def eager_latency(loaded, task: str, runs: int) -> dict[str, Any]:
    """PyTorch eager on the trained model's task path, batch 1, torch's default threads: the named reference."""
    model, x = loaded.model.eval(), example_input(loaded.spec)

    def call() -> None:
        with torch.no_grad():
            run_task(model, x, task)

    return measure(call, runtime=f"pytorch-eager {torch.__version__}", threads=torch.get_num_threads(), runs=runs).to_dict()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def emulated_profile(bundle: Path, store: ResultsStore, runs: int, timeout: float) -> dict:
    """Tracker + emulated board server on 127.0.0.1, then a profile of every task; timed end to end."""
    from edgemtl.profile.emulated_board import board_dir_and_reason, start_emulated_server, stop_emulated_server

    board, why = board_dir_and_reason()
    if board is None:
        return {"ran": False, "skipped": why}
    from tvm.rpc.tracker import Tracker

    started = time.perf_counter()
    port = _free_port()
    tracker = Tracker("127.0.0.1", port=port, port_end=port + 1, silent=True)
    server = None
    try:
        server = start_emulated_server("127.0.0.1", tracker.port, EMULATED_KEY)
        server_ready = time.perf_counter() - started
        profile_start = time.perf_counter()
        result = profile_bundle(bundle, f"rpc://127.0.0.1:{tracker.port}/{EMULATED_KEY}", runs=runs, timeout=timeout,
                                store=store)
        profile_seconds = time.perf_counter() - profile_start
    finally:
        if server is not None:
            stop_emulated_server(server)
        tracker.terminate()
    total = time.perf_counter() - started
    rows = store.query(device=EMULATED_KEY, bundle=str(Path(bundle).resolve()))
    tasks = {name: {r: {"median_ms_emulated": o.measurement.median_ms, "check_passed": o.measurement.check_passed}
                    if o.measurement is not None else {"skipped": o.skipped} for r, o in runtimes.items()}
             for name, runtimes in result.tasks.items()}
    return {
        "ran": True, "device": EMULATED_KEY, "description": result.description, "provenance": result.provenance,
        "complete": result.complete, "seconds_total": total, "seconds_tracker_and_server_start": server_ready,
        "seconds_profile": profile_seconds, "runs": runs, "store_rows": len(rows),
        "store_rows_emulated": sum(r.provenance == "emulated" for r in rows),
        "every_check_passed": all(r.check_passed for r in rows) and bool(rows),
        "tasks": tasks, "notes": result.notes,
        "warning": "EMULATED (qemu-user on this host's x86 CPU): these times are NOT device latencies",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--checkpoint", type=Path, default=None, help="reuse this trained mtl-cnn (written on first run)")
    parser.add_argument("--tune", type=int, default=64, help="meta-schedule trials per task for the tuned TVM build")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per measurement on this host")
    parser.add_argument("--emulated-runs", type=int, default=10, help="timed runs per measurement on the emulated board")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for any remote call (emulated board)")
    parser.add_argument("--no-emulated", action="store_true", help="skip the emulated-board profile")
    parser.add_argument("--store", type=Path, default=None,
                        help="results database (default $EDGEMTL_RESULTS or ~/.cache/edgemtl/results.sqlite)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    run = start_run()
    loaded = load(trained_checkpoint(args.checkpoint, args.train_steps, console=console))
    store = ResultsStore(args.store)
    options = CompileOptions(data="scenes", measure_latency=False)
    with tempfile.TemporaryDirectory() as scratch:
        compile_start = time.perf_counter()
        bundle = compile_model(loaded, "arm64", Path(scratch) / "bundle", options)
        compile_seconds = time.perf_counter() - compile_start
        manifest = json.loads((bundle / "manifest.json").read_text())
        compiled_runtime = {t: manifest["tasks"][t].get("runtime") for t in manifest["tasks"]}
        tvm_built = {t: {"aarch64": manifest["tasks"][t]["tvm"]["builds"]["aarch64"]["built"],
                         "x86_64": manifest["tasks"][t]["tvm"]["builds"]["x86_64"]["built"]} for t in manifest["tasks"]}

        # PyTorch first: ONNX Runtime's idle worker threads spin for a while and would steal its cores
        console.print(f"PyTorch eager, batch 1, {args.runs} runs per task ...")
        eager = {name: eager_latency(loaded, name, args.runs) for name in manifest["tasks"]}
        console.print(f"profile --device local --tune {args.tune} --runs {args.runs} ...")
        local_start = time.perf_counter()
        local = profile_bundle(bundle, "local", runs=args.runs, tune=args.tune, store=store)
        local_seconds = time.perf_counter() - local_start
        manifest = json.loads((bundle / "manifest.json").read_text())
        local_rows = {name: local_row(runtimes, local.chosen.get(name), manifest["tasks"][name].get("runtime"), eager[name])
                      for name, runtimes in local.tasks.items()}

        emulated: dict = {"ran": False, "skipped": "--no-emulated"}
        if not args.no_emulated:
            console.print(f"profile --device rpc://127.0.0.1:PORT/{EMULATED_KEY} (emulated arm64 board) ...")
            emulated = emulated_profile(bundle, store, args.emulated_runs, args.timeout)
    int8_rows = {name: int8_row(entry) for name, entry in manifest["tasks"].items()}
    targets = {
        "int8_within_1pct_of_float_every_task": all(r["ok"] and r["relative_loss"] <= 0.01 for r in int8_rows.values()),
        f"shipped_at_least_{MIN_SPEEDUP_OVER_EAGER:g}x_faster_than_pytorch_eager_on_this_host": shipped_beats_eager(local_rows),
        "emulated_profile_all_tasks_under_5_min": bool(emulated.get("ran") and emulated.get("complete")
                                                       and emulated["seconds_total"] < EMULATED_LIMIT_S
                                                       and emulated["store_rows_emulated"] == emulated["store_rows"] > 0),
    }
    _print(int8_rows, local_rows, emulated, targets, local.description, args)
    write_results(args.output, {
        "setup": {"model": "mtl-cnn", "config": loaded.spec.config, "data": "scenes", "train_steps": args.train_steps,
                  "checkpoint": str(args.checkpoint) if args.checkpoint else None, "tune_trials_per_task": args.tune,
                  "runs": args.runs, "emulated_runs": args.emulated_runs, "pytorch_threads": torch.get_num_threads(),
                  "compile_seconds": compile_seconds, "compile_steps": {s["name"]: s["seconds"] for s in manifest["steps"]},
                  "local_profile_seconds": local_seconds, "store": str(store.path),
                  "compiled_runtime": compiled_runtime, "tvm_built": tvm_built,
                  "quantization": manifest["passes"].get("quantize_int8_qdq"),
                  "provenance": {"metrics": "measured (ONNX Runtime on this host, scenes/val)",
                                 "local": "measured (this host's CPU, batch 1, one run: every runtime in the same job)",
                                 "pytorch_eager": "measured (this host's CPU, batch 1, same run, before the local profile)",
                                 "emulated": "emulated (qemu-user; not a device latency)"}},
        "int8": int8_rows, "local": {"device": local.description, "tasks": local_rows, "notes": local.notes},
        "emulated": emulated, "targets": targets,
    }, run)
    console.print(f"wrote {args.output} ({run.seconds():.0f} s)")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _print(int8_rows: dict, local_rows: dict, emulated: dict, targets: dict, host: str, args: argparse.Namespace) -> None:
    table = Table(title=f"mtl-cnn, arm64 flow: int8 vs float metric (measured); batch-1 medians on {host} (measured, "
                        f"same run; TVM tuned with {args.tune} trials/task)")
    for column in ("task", "metric", "float", "int8", "loss", "ORT float ms", "ORT int8 ms", "TVM ms", "TVM tuned ms",
                   "int8/float", "tuned/ORT float", "shipped here", "PyTorch eager ms", "shipped/eager", "shipped/ORT float",
                   "bundle's runtime"):
        table.add_column(column)
    for name, local in local_rows.items():
        q, m = int8_rows.get(name, {}), local["median_ms"]
        table.add_row(name, q.get("metric", "-"), f"{q['float']:.4f}" if q.get("ok") else "-",
                      f"{q['int8']:.4f}" if q.get("ok") else "-", f"{q['relative_loss']:+.2%}" if q.get("ok") else "-",
                      _ms(m[ORT_FLOAT]), _ms(m[ORT_INT8]), _ms(m[TVM]), _ms(m[TVM_TUNED]),
                      _x(local["int8_over_float"]), _x(local["tvm_tuned_over_ort_float"]), str(local["shipped"]),
                      _ms(local["pytorch_eager_ms"].get("median")), _x(local["shipped_over_pytorch_eager"]),
                      _x(local["shipped_over_ort_float"]), str(local["bundle_runtime"]))
    console.print(table)
    console.print("shipped here: the fastest runtime whose output passed on this host (what `profile --device local` "
                  "ships for this CPU); bundle's runtime: the arm64 manifest's, which only an aarch64 device changes")
    for name, local in local_rows.items():
        for runtime, why in local["skipped"].items():
            console.print(f"skipped {name} / {runtime}: {why}")
    if emulated.get("ran"):
        console.print(f"emulated arm64 board (EMULATED, not device latency): {len(emulated['tasks'])} tasks, "
                      f"{emulated['store_rows']} rows in the store ({emulated['store_rows_emulated']} labelled emulated), "
                      f"checks {'all passed' if emulated['every_check_passed'] else 'NOT all passed'}; "
                      f"{emulated['seconds_total']:.0f} s end to end (tracker + server start "
                      f"{emulated['seconds_tracker_and_server_start']:.0f} s, profile {emulated['seconds_profile']:.0f} s)")
    else:
        console.print(f"emulated arm64 board: not run ({emulated.get('skipped')})")
    console.print(met(targets))


if __name__ == "__main__":
    main()
