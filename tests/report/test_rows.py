"""Flat rows of a manifest and of a comparison (edgemtl.report.rows), as the notebooks read them: hand-made bundles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgemtl.report.compare import compare_bundles
from edgemtl.report.rows import (ALL_TASKS, bundle_rows, comparison_rows, html_table, latency_rows, layer_rows, op_rows,
                                 speedup_rows, task_rows, width_rows)

DEVICE = "host CPU (AMD EPYC, 1 thread)"


def _timing(median: float, runtime: str) -> dict[str, Any]:
    return {"median": median, "p90": median * 1.2, "runs": 20, "runtime": runtime, "device": DEVICE, "threads": 1,
            "batch": 1, "provenance": {"kind": "measured", "source": runtime, "device": DEVICE}}


def _manifest(task: str, latency: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "kind": "classification", "params": 5000, "macs": 200_000, "shared_fraction": 0.9,
        "peak_activation_bytes": 12_288, "cost_provenance": {"kind": "static", "source": "edgemtl analysis"},
        "primary_metric": "accuracy", "higher_is_better": True, "metrics": {"accuracy": 0.5},
        "artifacts": {"onnx": f"tasks/{task}/model.onnx"}}
    if latency:
        entry.update(latency_ms=_timing(0.05, "onnxruntime 1.31.1"), latency_ms_pytorch=_timing(0.5, "pytorch-eager"))
    return {"target": {"name": "host", "flow": "cpu-onnxruntime"},
            "model": {"arch": "mtl-cnn", "sha256": "ab" * 32, "input": {"shape": [1, 8, 8]}},
            "host": {"platform": "Linux-x86_64", "cpu": "AMD EPYC"}, "tasks": {task: entry},
            "all_tasks": {"tasks": [task], "params": 5000, "macs": 200_000}}


def _bundle(folder: Path, manifest: dict[str, Any]) -> Path:
    (folder / "tasks" / "digit").mkdir(parents=True)
    (folder / "tasks" / "digit" / "model.onnx").write_bytes(b"\0" * 100)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _timer(onnx: Path, x: Any, label: str) -> dict[str, Any]:
    return {"source": "onnxruntime profiler", "graph": label, "nodes": 2,
            "layers": [{"name": "conv", "op": "Conv", "ms": 0.03, "share": 0.75},
                       {"name": "fc", "op": "Gemm", "ms": 0.01, "share": 0.25}],
            "by_op": {"Conv": {"ms": 0.03, "share": 0.75}, "Gemm": {"ms": 0.01, "share": 0.25}},
            "provenance": {"kind": "measured", "source": "a profiled session", "device": "this host"}}


def test_task_rows_keep_each_number_beside_its_kind() -> None:
    rows = task_rows(_manifest("digit", latency=True))
    assert [row["task"] for row in rows] == ["digit", ALL_TASKS]
    digit = rows[0]
    assert (digit["params"], digit["macs"], digit["peak_activation_bytes"]) == (5000, 200_000, 12_288)
    assert digit["cost_provenance"].startswith("static") and digit["activation_provenance"].startswith("estimated")
    assert digit["latency_ms"] == 0.05 and digit["latency_kind"] == "measured"
    assert digit["latency_provenance"].startswith("measured") and digit["latency_runtime"] == "onnxruntime 1.31.1"
    unmeasured = task_rows(_manifest("digit", latency=False))[0]  # a flow that leaves timing to `edgemtl profile`
    assert unmeasured["latency_ms"] is None and unmeasured["latency_kind"] is None


def test_comparison_rows_read_the_comparison_as_it_stands(tmp_path: Path) -> None:
    bundles = [_bundle(tmp_path / "a", _manifest("digit", latency=True)),
               _bundle(tmp_path / "b", _manifest("digit", latency=False))]
    document = compare_bundles(bundles, layer_timer=_timer)
    assert [row["bundle"] for row in bundle_rows(document)] == ["host (a)", "host (b)"]
    headline = {row["bundle"]: row for row in comparison_rows(document)}
    assert headline["host (a)"]["latency_ms"] == 0.05 and headline["host (a)"]["latency_kind"] == "measured"
    assert headline["host (b)"]["latency_ms"] is None and headline["host (a)"]["model_size_bytes"] == 100
    latencies = latency_rows(document)
    assert {(row["runtime"], row["headline"]) for row in latencies} == {("onnxruntime-float", True),
                                                                        ("pytorch-eager", False)}
    assert all(row["device"] == DEVICE and row["bundle"] == "host (a)" for row in latencies)
    ratio = next(row for row in speedup_rows(document) if row["ratio"] is not None)
    assert ratio["fast"] == "host (a) · onnxruntime-float" and abs(ratio["ratio"] - 10) < 1e-9
    layers = layer_rows(document)
    assert [(row["rank"], row["layer"], row["kind"]) for row in layers if row["bundle"] == "host (a)"] == [
        (1, "conv", "measured"), (2, "fc", "measured")]
    assert {row["op"] for row in op_rows(document)} == {"Conv", "Gemm"}
    without = layer_rows(compare_bundles(bundles))  # layer timing off: one row per task and bundle says why
    assert all(row["layer"] is None and "turned off" in row["none"] for row in without)


def test_html_table_escapes_and_writes_human_units() -> None:
    page = html_table([{"task": "<script>x</script>", "macs": 2_000_000, "peak_activation_bytes": 2048,
                        "latency_ms": 0.05, "share": 0.25, "ratio": 3.0, "note": None}])
    assert "<script>" not in page and "&lt;script&gt;" in page
    for shown in ("2 M", "2 KiB", "50 µs", "25%", "3.00×", "—"):
        assert shown in page, shown
    assert html_table([{"a": 1, "b": 2}], ["b"]).count("<th>") == 1


def test_width_rows_read_the_configuration_a_bundle_was_cut_to() -> None:
    record = {"widths": {"encoder": {"stage0": 0.5}, "decoders": {"depth": 0.25, "scene": 1.0}},
              "part_channels": {"encoder": {"stage0": [8, 4]}, "decoders": {"depth": [4, 1], "scene": [0, 0]}}}
    assert width_rows({"passes": {"slice_widths": record}}) == [
        {"part": "encoder stage", "name": "stage0", "multiplier": 0.5, "channels_full": 8, "channels_kept": 4},
        {"part": "decoder", "name": "depth", "multiplier": 0.25, "channels_full": 4, "channels_kept": 1},
        {"part": "decoder", "name": "scene", "multiplier": 1.0, "channels_full": None, "channels_kept": None}]
    assert width_rows({"passes": {}}) == [] == width_rows({"passes": {"slice_widths": {"widths": "bad"}}})
