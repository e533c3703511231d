"""What task switching costs at run time: resident memory of loaded sessions and first-call latency.

`resident_memory` measures in a fresh interpreter so nothing this process already loaded (torch, other
sessions, freed-but-kept heap) hides or inflates the figure; the child imports only onnxruntime and onnx
(importing edgemtl would pull in torch: seconds per child). `switch_latency` interleaves switches and
repeats in one loop so a background load drifting over the measurement hits both figures alike.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edgemtl.model.onnx_export import INPUT_NAME
from edgemtl.backends.onnxruntime import make_session
from edgemtl.backends.switchable import TASK_ID_NAME
from edgemtl.errors import EdgemtlError
from edgemtl.manifest import prov
from edgemtl.model.spec import ModelSpec
from edgemtl.timing import host_cpu_name

RSS_REPEATS = 3
# glibc's default mmap threshold grows after the first large free, so later sessions' freed load-time
# temporaries (the parsed model) stay in the heap: two sessions of a 16 MiB model read 52 MiB, not 32.
# Pinning it to its static default (128 KiB) makes the figure count live memory, linear in the copies.
_CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}

# The child: baseline RSS after `import onnxruntime` and one tiny session (so the runtime's own one-off
# allocations are not charged to the models), then sessions for every path plus one batch-1 inference each
# (so lazily allocated arenas and buffers count); prints the difference in bytes.
_RSS_CHILD = """
import json, sys
import numpy as np, onnx, onnxruntime as ort
from onnx import TensorProto, helper

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

def session(model, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = threads, 1, 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

def run_once(sess):
    dtypes = {"tensor(float)": np.float32, "tensor(int64)": np.int64}
    sess.run(None, {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], dtypes[i.type])
                    for i in sess.get_inputs()})

paths, threads = json.loads(sys.argv[1]), int(sys.argv[2])
tiny = helper.make_model(
    helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny",
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]),
    opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
run_once(session(tiny.SerializeToString(), threads))
before = rss()
sessions = [session(p, threads) for p in paths]
for s in sessions:
    run_once(s)
print(rss() - before)
"""


def _child_rss(paths: list[Path], threads: int) -> int:
    done = subprocess.run([sys.executable, "-c", _RSS_CHILD, json.dumps([str(p) for p in paths]), str(threads)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **_CHILD_ENV})
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["no output"]
        raise EdgemtlError(f"measuring resident memory of {[p.name for p in paths]} failed: {lines[-1]}")
    return int(done.stdout.strip().splitlines()[-1])


def resident_memory(paths: list[Path], threads: int = 1) -> int:
    """Bytes of RSS that loading and running once an ONNX Runtime session per path adds (glibc mmap
    threshold pinned, see `_CHILD_ENV`); the median of three fresh processes, as a single run can catch
    one-off heap growth."""
    return int(statistics.median(_child_rss(paths, threads) for _ in range(RSS_REPEATS)))


def _task_ids(session: ort.InferenceSession, tasks: list[str]) -> dict[str, int]:
    ids = json.loads(session.get_modelmeta().custom_metadata_map.get("task_ids", "{}"))
    missing = [t for t in tasks if t not in ids]
    if missing or len(tasks) < 2:
        raise EdgemtlError(f"task(s) {missing or tasks} cannot be switched in this artifact; it has {list(ids)}")
    return {t: ids[t] for t in tasks}


def _timed_ms(run: Any) -> float:
    start = time.perf_counter_ns()
    run()
    return (time.perf_counter_ns() - start) / 1e6


def switch_latency(path: Path, spec: ModelSpec, tasks: list[str], threads: int = 1, rounds: int = 30,
                   repeats: int = 2) -> dict[str, Any]:
    """Batch-1 latency of a switchable artifact: each round visits every task in turn; the first call of a
    visit (the previous call ran another task) is timed as first-after-switch, the `repeats` calls after
    it as steady state. Medians pool all tasks (each task weighs the same in both); one warm-up round."""
    session = make_session(path, threads)
    ids = _task_ids(session, tasks)
    image = np.random.default_rng(0).standard_normal((1, *spec.input.shape), dtype=np.float32)
    feeds = {t: {INPUT_NAME: image, TASK_ID_NAME: np.array([i], dtype=np.int64)} for t, i in ids.items()}
    first: dict[str, list[float]] = {t: [] for t in tasks}
    steady: dict[str, list[float]] = {t: [] for t in tasks}
    for round_index in range(rounds + 1):
        for task in tasks:
            samples = [_timed_ms(lambda: session.run(None, feeds[task])) for _ in range(1 + repeats)]
            if round_index:  # round 0 is the warm-up
                first[task].append(samples[0])
                steady[task].extend(samples[1:])
    steady_ms = statistics.median(v for t in tasks for v in steady[t])
    first_ms = statistics.median(v for t in tasks for v in first[t])
    device = f"host CPU ({host_cpu_name()}, {threads} thread{'s' if threads != 1 else ''})"
    return {
        "steady_ms": steady_ms,
        "first_after_switch_ms": first_ms,
        "ratio": first_ms / steady_ms,
        "per_task": {t: {"steady_ms": statistics.median(steady[t]),
                         "first_after_switch_ms": statistics.median(first[t])} for t in tasks},
        "runs": rounds * len(tasks) * (1 + repeats),
        "provenance": prov("measured", source=f"onnxruntime {ort.__version__}", device=device,
                           detail="median over task switches, the first run after each switch timed apart"),
        "runtime": f"onnxruntime {ort.__version__}",
        "device": device,
        "threads": threads,
    }
