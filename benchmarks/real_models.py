"""A real pretrained model from a PyPI package on every quantizing target: MTCNN's ONet (facenet-pytorch's weights,
PReLU, ceil-mode max pools, a permute before the dense layers, a softmax) on scikit-image's LFW subset.

Loads the package's state_dict through examples/mtcnn's factory, exactly as a user would, and runs the real
`edgemtl compile` for the gap9, the zcu104 and the arm64 with their defaults, then reads each manifest:
1. the labelled task (face) float vs quantized on the 100 held-out images, against the target's budget (relative:
   gap9 2%, zcu104 3%, arm64 1%);
2. the unlabelled tasks (box, landmarks): cosine and SQNR of the quantized output against float;
3. bit-exactness where the target has an exact reference: gap9 generated C vs the int8 reference executor (host
   gcc and qemu rv32), zcu104 hls4ml C simulation and g++ testbench vs the quantized model; arm64 int8 vs float.

    .venv/bin/python benchmarks/real_models.py

Prints a table and writes benchmarks/results/real_models.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgemtl.compile import compile_model
from edgemtl.flow import CompileOptions
from edgemtl.model.checkpoint import load

from common import met, relative_change, start_run, write_results

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mtcnn"
RESULTS = Path(__file__).parent / "results" / "real_models.json"
BUDGETS = {"gap9": 0.02, "zcu104": 0.03, "arm64": 0.01}  # relative drop of the labelled task's metric
console = Console(width=200)


def quantized_metrics(target: str, entry: dict) -> tuple[dict, dict] | None:
    """(float, quantized) metrics of one task as the target's manifest records them, or None if unlabelled."""
    record = entry.get("quantization") if target == "zcu104" else entry.get("int8")
    if not record or "metric_float" not in record:
        return None
    return record["metric_float"], record["metric_quant" if target == "zcu104" else "metric_int8"]


def agreement(target: str, entry: dict) -> dict | None:
    """Cosine / SQNR of an unlabelled task's quantized output against float."""
    if target == "zcu104":
        metrics = entry["quantization"]["metric_quant"]
        return metrics if "cosine_vs_float" in metrics else None
    return (entry.get("int8") or {}).get("agreement_with_float")


def verification(target: str, entry: dict) -> dict:
    """What the target checks its output against: bit for bit (gap9, zcu104) or within its tolerances (arm64)."""
    if target == "gap9":
        return {"c_host_bit_exact": entry["c"]["host"]["bit_exact"], "c_qemu_bit_exact": entry["c"]["qemu"]["bit_exact"]}
    if target == "zcu104":
        hls = entry.get("hls4ml", {})
        return {"hls4ml_ok": bool(hls.get("ok")), "csim_exact": bool((hls.get("csim") or {}).get("exact")),
                "testbench_matches_csim": (hls.get("testbench") or {}).get("matches_csim"), "error": hls.get("error")}
    return {"verification_passed": entry["verification"]["passed"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="*", default=list(BUDGETS), choices=list(BUDGETS))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    run = start_run()
    sys.path.insert(0, str(EXAMPLE))
    from make_data import package_file, write_faces

    weights = package_file("facenet_pytorch", "data/onet.pt")
    loaded = load(weights, factory="onet:mtcnn_onet", spec_path=EXAMPLE / "spec.yaml")
    results, seconds = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        faces = write_faces(Path(scratch) / "faces.npz")
        for target in args.targets:
            options = CompileOptions(data=str(faces), resize=True, measure_latency=False, threads=1)
            start = time.perf_counter()
            bundle = compile_model(loaded, target, Path(scratch) / target, options)
            seconds[target] = time.perf_counter() - start
            manifest = json.loads((bundle / "manifest.json").read_text())
            rows = {}
            for task in loaded.spec.tasks:
                entry = manifest["tasks"][task.name]
                row = {"verified": verification(target, entry)}
                pair = quantized_metrics(target, entry)
                if pair is not None and task.metric in pair[0]:
                    before, after = pair[0][task.metric], pair[1][task.metric]
                    row.update(metric=task.metric, float=before, quantized=after,
                               change=relative_change(before, after, task.higher_is_better))
                else:
                    row["agreement_with_float"] = agreement(target, entry)
                rows[task.name] = row
            results[target] = {"tasks": rows, "compile_seconds": seconds[target],
                               "precision": (manifest.get("passes", {}).get("quantize_brevitas") or {}).get("precision")}
    targets = evaluate_targets(results)
    _print(results, targets)
    write_results(args.output, {
        "setup": {"model": "MTCNN ONet, facenet-pytorch 2.6.0 data/onet.pt via examples/mtcnn/onet.py",
                  "data": "scikit-image lfw_subset.npy (100 faces, 100 non-faces; originals alternately val / test, "
                          "mirrored copies train), --resize 25 -> 48", "budgets": BUDGETS, "options": "target defaults"},
        "targets_run": results, "targets": targets,
    }, run)
    console.print(f"wrote {args.output} ({run.seconds():.0f} s)")


def evaluate_targets(results: dict) -> dict[str, bool]:
    """Per target: the labelled task within its budget, and every task verified (bit-exact on gap9 and zcu104)."""
    out = {}
    for target, result in results.items():
        rows = result["tasks"].values()
        out[f"{target}_labelled_task_within_{BUDGETS[target]:.0%}"] = all(r["change"] <= BUDGETS[target]
                                                                          for r in rows if "change" in r)
        out[f"{target}_verified"] = all(all(v is not False and v is not None for k, v in r["verified"].items()
                                            if k != "error") for r in rows)
    return out


def _print(results: dict, targets: dict) -> None:
    table = Table(title="MTCNN ONet (facenet-pytorch weights) on scikit-image's LFW subset, target defaults")
    for column in ("target", "task", "float", "quantized", "change", "vs float (unlabelled)", "verified"):
        table.add_column(column)
    for target, result in results.items():
        for name, row in result["tasks"].items():
            agreement_row = row.get("agreement_with_float") or {}
            table.add_row(target, f"{name} ({row.get('metric', 'raw')})",
                          f"{row['float']:.4f}" if "float" in row else "", f"{row['quantized']:.4f}" if "quantized" in row else "",
                          f"{row['change']:+.2%}" if "change" in row else "",
                          f"cosine {agreement_row['cosine_vs_float']:.4f}, SQNR {agreement_row['sqnr_db_vs_float']:.1f} dB"
                          if agreement_row else "",
                          ", ".join(f"{k}={v}" for k, v in row["verified"].items() if k != "error"))
    console.print(table)
    console.print(met(targets))


if __name__ == "__main__":
    main()
