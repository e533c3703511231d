"""FINN (finn-plus) resource and throughput estimates of a QONNX model, from FINN's own analytical models.

finn-plus pins numpy, onnx, onnxruntime, protobuf and setuptools versions the main environment cannot
share, so it lives in its own venv (`.venv-finn`, made by `edgemtl toolchain install finn`) and runs as a subprocess:
`finn_worker.py` (in this folder, standard library only at import) reads a versioned JSON request and
writes a JSON result. This module never imports FINN.

The build is FINN's estimate-only flow (no HLS, no Vivado): folding of brevitas' 32-bit bias quantizers
into float biases, QONNX -> FINN-ONNX, tidy-up, streamlining, custom steps that move scale and
transpose/flatten nodes past the branch point of multi-head graphs and past residual adds, skip
concatenations and nearest resizes, nearest Resize -> UpsampleNearestNeighbour and GlobalAveragePool ->
GlobalAccPool (a bilinear Resize is refused: FINN has no layer for it), conversion to hardware layers,
folding for each target fps (FINN's `SetFolding`), then FINN's estimate reports: LUT / BRAM18 / URAM / DSP
totals and expected cycles per layer. fps = clock / slowest layer's cycles (the dataflow pipeline's
throughput); latency = FINN's critical-path cycles / clock, which it calls pessimistic (no overlap between
layers assumed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from edgemtl.backends.venv_worker import last_line, worker_env
from edgemtl.errors import EdgemtlError
from edgemtl.manifest import prov

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_FINN_VENV = Path(os.environ.get("EDGEMTL_FINN_VENV", REPO_ROOT / ".venv-finn"))
WORKER = Path(__file__).resolve().with_name("finn_worker.py")
PROTOCOL_VERSION = 1
PROVENANCE = prov("estimated", source="FINN analytical model")
HOW_TO_CREATE = "edgemtl toolchain install finn"
# A Vivado path FINN can parse; nothing under it is run by an estimate-only build.
DUMMY_XILINX_VIVADO = "/opt/edgemtl-dummy/Xilinx/Vivado/2024.2"

UTILISED = ("lut", "bram18", "uram", "dsp")  # the estimates' resources that are shares of the part's logic


def finn_python(venv: Path = DEFAULT_FINN_VENV) -> Path | None:
    """The venv's interpreter when finn-plus is installed in it, else None."""
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    if not any(venv.glob("lib/python3*/site-packages/finn/builder/build_dataflow.py")):
        return None
    return python


def finn_estimates(qonnx_path: Path, task: str, part: str, clock_mhz: float, target_fps: list[float],
                   work_dir: Path, venv: Path = DEFAULT_FINN_VENV, timeout_s: int = 600,
                   logic: dict[str, int] | None = None) -> dict[str, Any]:
    """FINN's estimates of a QONNX model at each target fps.

    Returns {"available": False, "how_to_create": "edgemtl toolchain install finn", ...} when the FINN venv is missing;
    {"available": True, "ok": False, "reason": one line} when FINN cannot take the model; otherwise
    {"available": True, "ok": True, "provenance": ..., "by_target_fps": {"<fps>": {lut, bram18, uram, dsp,
    cycles_per_layer, estimated_fps, latency_ms, ...}}}. `task` names the graph output to build when the
    graph has several outputs and one is called so (other heads are dropped); otherwise the whole graph.
    """
    python = finn_python(Path(venv))
    if python is None:
        return {"available": False, "how_to_create": HOW_TO_CREATE,
                "reason": f"no finn-plus venv at {venv}"}
    qonnx_path = Path(qonnx_path)
    if not qonnx_path.is_file():
        raise EdgemtlError(f"QONNX model {qonnx_path} does not exist")
    if not target_fps or any(float(f) <= 0 for f in target_fps):
        raise EdgemtlError(f"target_fps needs one or more values above 0, got {target_fps}")
    if clock_mhz <= 0:
        raise EdgemtlError(f"clock_mhz must be above 0, got {clock_mhz}")
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    request = {"version": PROTOCOL_VERSION, "qonnx_path": str(qonnx_path.resolve()), "task": task, "part": part,
               "clock_mhz": float(clock_mhz), "target_fps": [float(f) for f in target_fps],
               "work_dir": str(work_dir)}
    request_file, result_file = work_dir / "finn_request.json", work_dir / "finn_result.json"
    request_file.write_text(json.dumps(request, indent=1))
    result_file.unlink(missing_ok=True)
    base = {"available": True, "task": task, "part": part, "clock_mhz": float(clock_mhz),
            "provenance": PROVENANCE, "work_dir": str(work_dir)}

    start = time.perf_counter()
    try:
        with open(work_dir / "finn_worker.log", "w", encoding="utf-8") as log:
            # -P: the worker's folder (edgemtl/backends, which has an onnxruntime.py) must not go on sys.path
            proc = subprocess.run([str(python), "-P", str(WORKER), str(request_file), str(result_file)],
                                  cwd=work_dir, env=worker_env(XILINX_VIVADO=DUMMY_XILINX_VIVADO, NUM_DEFAULT_WORKERS="1"),
                                  stdout=log, stderr=subprocess.STDOUT,
                                  timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {**base, "ok": False, "reason": f"FINN estimate did not finish within {timeout_s} s"}
    seconds = time.perf_counter() - start
    if not result_file.exists():
        return {**base, "ok": False, "seconds": seconds,
                "reason": f"FINN worker exited with status {proc.returncode} without a result: "
                          f"{last_line(work_dir / 'finn_worker.log')}"}
    result = json.loads(result_file.read_text())
    if result.get("version") != PROTOCOL_VERSION:
        return {**base, "ok": False, "reason": f"FINN worker speaks version {result.get('version')}, "
                                               f"edgemtl expects {PROTOCOL_VERSION}"}
    if not result.get("ok"):
        return {**base, "ok": False, "seconds": seconds, "reason": str(result.get("reason", "unknown")),
                "nodes_unmapped": result.get("nodes_unmapped", [])}
    return {**base, "ok": True, "seconds": seconds, "tool": f"finn-plus {result.get('finn_version', '?')}",
            "nodes_unmapped": result.get("nodes_unmapped", []),
            "note": "fps = clock / slowest layer's cycles; latency = FINN's critical-path cycles / clock "
                    "(pessimistic: no overlap between layers); LUT omits layers FINN charges 0 "
                    "(see layers_without_lut_estimate)",
            "by_target_fps": {key: _entry(entry, logic) for key, entry in result["by_fps"].items()}}


def _entry(raw: dict[str, Any], logic: dict[str, int] | None) -> dict[str, Any]:
    entry = {
        "provenance": PROVENANCE,
        "target_fps": raw["target_fps"],
        "lut": raw["lut"], "bram18": raw["bram18"], "uram": raw["uram"], "dsp": raw["dsp"],
        "estimated_fps": raw["estimated_fps"],
        "meets_target": raw["estimated_fps"] >= raw["target_fps"],
        "latency_ms": raw["estimated_latency_ms"],
        "max_cycles": raw["max_cycles"],
        "bottleneck_layer": raw["bottleneck_layer"],
        "critical_path_cycles": raw["critical_path_cycles"],
        "cycles_per_layer": raw["cycles_per_layer"],
        "resources_per_layer": raw["resources_per_layer"],
        "layers_without_lut_estimate": raw["layers_without_lut_estimate"],
        "folding": raw["folding"],
    }
    if logic:  # the target file's [fabric] table
        entry["utilisation"] = {k: entry[k] / logic[k] for k in UTILISED if logic.get(k)}
    return entry


def main(argv: list[str]) -> int:  # pragma: no cover - a manual entry point
    """python -m edgemtl.backends.finn MODEL.onnx TASK [FPS ...]: print the estimate as JSON."""
    if len(argv) < 3:
        print("usage: python -m edgemtl.backends.finn MODEL.onnx TASK [FPS ...]", file=sys.stderr)
        return 2
    fps = [float(f) for f in argv[3:]] or [1000.0]
    out = finn_estimates(Path(argv[1]), argv[2], "xczu7ev-ffvc1156-2-e", 200.0, fps,
                         Path(argv[1]).with_suffix(".finn"))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv))
