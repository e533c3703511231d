"""Per-layer time of one ONNX graph on this host, from ONNX Runtime's own profiler: what `edgemtl report` shows in
a CPU bundle's per-layer table. It lives here, not in the report, because it runs a model (edgemtl.report only
renders what it is given); the CLI hands `ort_layer_profile` to the comparison as its layer timer."""

from __future__ import annotations

import json
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgemtl.manifest import prov
from edgemtl.timing import host_cpu_name

RUNS = 20
WARMUP = 3
TOP_LAYERS = 10


def ort_layer_profile(onnx_path: Path, x: np.ndarray, label: str, runs: int = RUNS,
                      warmup: int = WARMUP) -> dict[str, Any]:
    """Time per node of one ONNX graph with ONNX Runtime's profiler on this host (1 thread): median per node over
    `runs` runs after `warmup`, the top layers by time and their share of the summed node time, and the time per
    op type; `label` names the graph (its bundle-relative path) in the result."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgemtl-ortprof-") as scratch:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "ort")
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        for _ in range(warmup + runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
    per_node: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    for event in events if isinstance(events, list) else []:
        name = event.get("name", "") if isinstance(event, dict) else ""
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        node = name[: -len("_kernel_time")]
        per_node.setdefault(node, []).append(float(event.get("dur", 0)) / 1000.0)  # µs -> ms
        args = event.get("args")
        ops.setdefault(node, str(args.get("op_name") or "") if isinstance(args, dict) else "")
    medians = {node: float(np.median(times[warmup:] if len(times) > warmup else times))
               for node, times in per_node.items()}
    total = sum(medians.values())
    top = sorted(medians.items(), key=lambda item: item[1], reverse=True)[:TOP_LAYERS]
    by_op: dict[str, float] = {}
    for node, value in medians.items():
        by_op[ops.get(node) or "?"] = by_op.get(ops.get(node) or "?", 0.0) + value
    return {
        "source": "onnxruntime profiler",
        "graph": label,
        "nodes": len(medians),
        "total_node_ms": total,
        "layers": [{"name": node, "op": ops.get(node), "ms": value, "share": value / total if total else None}
                   for node, value in top],
        "by_op": {op: {"ms": value, "share": value / total if total else None}
                  for op, value in sorted(by_op.items(), key=lambda item: item[1], reverse=True)},
        "provenance": prov("measured", source=f"a profiled session of {label} run by `edgemtl report`",
                           detail=f"ONNX Runtime {ort.__version__} profiler (SessionOptions.enable_profiling), median "
                                  f"per node over {runs} runs after {warmup} warm-up, batch 1; the profiler's overhead "
                                  "inflates small nodes, compare shares rather than absolute times",
                           device=f"this host: {host_cpu_name()} ({platform.machine()}), 1 thread"),
    }
