"""Board-side ONNX Runtime runner for `edgemtl profile`, called over a TVM RPC session.

Loaded into the board's TVM RPC server with `hw/arm64/rpc_server.py --preload ort_runner.py` (the
emulated board's `bin/rpc_server` preloads it automatically); the server calls `register()` once, and every
RPC session forked afterwards sees these global functions (the client reaches them with
`remote.get_function(NAME)`):

    edgemtl.ort.info()                              -> JSON: machine, python, onnxruntime version (or the
                                                       import error), cpu, cores, emulated (bool) and why
    edgemtl.ort.load(file_name, threads)            -> handle (int); file_name as given to remote.upload
    edgemtl.ort.run(handle, input)                  -> JSON: [{"shape", "dtype"}] of the outputs, kept
    edgemtl.ort.fetch(handle, index, out)           -> 0; copies output `index` of the last run into `out`
    edgemtl.ort.time(handle, input, warmup, runs, max_seconds)
                                                    -> JSON: {"ms": [one wall-clock time per run]}
    edgemtl.ort.free(handle)                        -> 0

`input` and `out` are TVM tensors on the session's CPU device (float32 NCHW input). Timing happens on the
board (perf_counter around each `session.run`), so no RPC round trip is counted. Nothing here imports
edgemtl: the board only needs numpy, onnxruntime and TVM's runtime.

The board says it is EMULATED (its timings are not device latencies) when EDGEMTL_EMULATED=1 is set, or
when it runs under qemu-user the way hw/arm64/make_emulated_board.sh starts it (QEMU_LD_PREFIX set).
"""

from __future__ import annotations

import json
import os
import platform
import time

PREFIX = "edgemtl.ort."


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("model name", "hardware", "cpu model"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _emulation() -> str | None:
    """Why this process believes it runs emulated, or None."""
    if os.environ.get("EDGEMTL_EMULATED", "").lower() not in ("", "0", "false", "no"):
        return "EDGEMTL_EMULATED is set"
    if os.environ.get("QEMU_LD_PREFIX"):
        return "running under qemu-user (QEMU_LD_PREFIX is set)"
    return None


def info() -> str:
    facts = {"machine": platform.machine(), "python": platform.python_version(), "cpu": _cpu_name(),
             "cores": os.cpu_count(), "hostname": platform.node()}
    try:
        import onnxruntime

        facts["onnxruntime"] = onnxruntime.__version__
    except Exception as exc:  # noqa: BLE001 - reported to the client, which skips ONNX Runtime with the reason
        facts["onnxruntime"] = None
        facts["onnxruntime_error"] = f"{type(exc).__name__}: {exc}"
    why = _emulation()
    facts["emulated"] = why is not None
    if why:
        facts["emulation"] = why
    return json.dumps(facts)


_SESSIONS: dict[int, dict] = {}


def _resolve(file_name: str) -> str:
    if os.path.isabs(file_name):
        return file_name
    import tvm_ffi

    workpath = tvm_ffi.get_global_func("tvm.rpc.server.workpath", allow_missing=True)
    return str(workpath(file_name)) if workpath is not None else file_name


def load(file_name: str, threads: int) -> int:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(_resolve(file_name), options, providers=["CPUExecutionProvider"])
    handle = max(_SESSIONS, default=0) + 1
    _SESSIONS[handle] = {"session": session, "input": session.get_inputs()[0].name, "outputs": []}
    return handle


def _feed(entry: dict, tensor) -> dict:
    import numpy as np

    return {entry["input"]: np.ascontiguousarray(tensor.numpy(), dtype=np.float32)}


def run(handle: int, tensor) -> str:
    entry = _SESSIONS[int(handle)]
    entry["outputs"] = entry["session"].run(None, _feed(entry, tensor))
    return json.dumps([{"shape": list(o.shape), "dtype": str(o.dtype)} for o in entry["outputs"]])


def fetch(handle: int, index: int, out) -> int:
    import numpy as np

    out.copyfrom(np.ascontiguousarray(_SESSIONS[int(handle)]["outputs"][int(index)]))
    return 0


def time_runs(handle: int, tensor, warmup: int, runs: int, max_seconds: float) -> str:
    entry = _SESSIONS[int(handle)]
    session, feed = entry["session"], _feed(entry, tensor)
    for _ in range(int(warmup)):
        session.run(None, feed)
    samples: list[float] = []
    deadline = time.perf_counter() + float(max_seconds)
    while len(samples) < int(runs) and (len(samples) < 5 or time.perf_counter() < deadline):
        start = time.perf_counter()
        session.run(None, feed)
        samples.append((time.perf_counter() - start) * 1000.0)
    return json.dumps({"ms": samples})


def free(handle: int) -> int:
    _SESSIONS.pop(int(handle), None)
    return 0


def register() -> None:
    """Register the functions above as TVM global functions (idempotent)."""
    import tvm_ffi

    for name, function in (("info", info), ("load", load), ("run", run), ("fetch", fetch),
                           ("time", time_runs), ("free", free)):
        tvm_ffi.register_global_func(PREFIX + name, function, override=True)
