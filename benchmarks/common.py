"""What the benchmarks share: the trained model they start from, how a metric change is graded, and how a
results file is stamped and written.

A results file must say which code made it on which machine under what load, so that every number in it
can be traced to one run of one script: `start_run()` when a benchmark starts, `write_results()` at the
end, and nothing in the file is added by hand afterwards.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from edgemtl.backends import onnxruntime as ort_backend
from edgemtl.bundle import write_json_atomically
from edgemtl.data import data_spec, load_data
from edgemtl.model.checkpoint import save
from edgemtl.model.zoo import build_model, zoo_spec
from edgemtl.timing import host_cpu_name
from edgemtl.training import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
# Libraries whose version changes the numbers; recorded when the benchmark imported them.
VERSIONED = ("torch", "onnxruntime", "onnx", "numpy", "tvm", "brevitas", "hls4ml", "qonnx", "torch_pruning")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TVM_NUM_THREADS")
DIRTY_PATHS_KEPT = 50
RESULTS_FOLDER = "benchmarks/results/"


def relative_change(before: float, after: float, higher_is_better: bool) -> float:
    """Positive = worse, relative to `before`."""
    worse = (before - after) if higher_is_better else (after - before)
    return worse / abs(before) if before else 0.0


def trained_checkpoint(checkpoint: Path | None, train_steps: int, config: dict | None = None,
                       console: Console | None = None, arch: str = "mtl-cnn") -> Path:
    """`checkpoint` when that file exists; else `arch` (zoo config + `config`) trained on scenes with seed 0
    for `train_steps`, saved there (or in a temporary folder) so that a re-run can reuse it."""
    if checkpoint is not None and checkpoint.is_file():
        return checkpoint
    input_spec, tasks = data_spec("scenes")
    spec = zoo_spec(arch, input_spec, tasks, config or {}, data="scenes")
    torch.manual_seed(0)
    model = build_model(spec)
    (console or Console()).print(f"training {arch} {config or ''} ({train_steps} steps, seed 0) ...")
    train(model, spec, load_data("scenes", "train"), TrainConfig(steps=train_steps, seed=0))
    return save(model, spec, checkpoint or Path(tempfile.mkdtemp()) / f"{arch}.pt", meta={"train_steps": train_steps})


# ------------------------------------------------------------------------------------------------ provenance

def load_average() -> list[float]:
    """1 / 5 / 15-minute load: wall times are only comparable between runs on a machine as quiet."""
    return [round(value, 2) for value in os.getloadavg()]


def git_commit(repo: Path = REPO) -> dict[str, Any]:
    """The checked-out commit and whether the tree differs from it (`git status --porcelain`, untracked
    files included): a dirty tree means the numbers may come from code that no commit holds.
    `dirty_outside_results` leaves out benchmarks/results/, which the benchmarks of one session rewrite."""
    try:
        sha = _git(repo, "rev-parse", "HEAD").strip()
        changes = [line for line in _git(repo, "status", "--porcelain").splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError) as exc:
        return {"sha": None, "dirty": None, "error": f"{type(exc).__name__}: {exc}"}
    outside = [line for line in changes if not line[3:].strip('"').startswith(RESULTS_FOLDER)]
    return {"sha": sha, "dirty": bool(changes), "dirty_outside_results": bool(outside),
            "changes": changes[:DIRTY_PATHS_KEPT], "changes_left_out": max(0, len(changes) - DIRTY_PATHS_KEPT)}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, timeout=30).stdout


def invocation() -> dict[str, Any]:
    """The command as run (interpreter included), where, and the thread variables that change timings."""
    return {"line": shlex.join(sys.orig_argv), "argv": list(sys.argv), "cwd": os.getcwd(),
            "thread_variables": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ}}


def machine_facts() -> dict[str, Any]:
    """The machine and the versions of the libraries this process imported (read at the end of a run)."""
    versions = {name: getattr(sys.modules[name], "__version__", None) for name in VERSIONED if name in sys.modules}
    return {"platform": platform.platform(), "arch": platform.machine(), "cpu": host_cpu_name(),
            "cpus": os.cpu_count(), "memory_bytes": _memory_bytes(), "python": platform.python_version(),
            "versions": versions}


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Run:
    """What is known when a benchmark starts: the commit is read before the work, so it is the code that ran."""

    commit: dict[str, Any] = field(default_factory=git_commit)
    command: dict[str, Any] = field(default_factory=invocation)
    started_utc: str = field(default_factory=_utc_now)
    load_start: list[float] = field(default_factory=load_average)
    started: float = field(default_factory=time.perf_counter)

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def provenance(self) -> dict[str, Any]:
        """The full stamp, taken now (the end of the run)."""
        return {"commit": self.commit, "command": self.command, "machine": machine_facts(),
                "load_average_1_5_15_min": {"start": self.load_start, "end": load_average()},
                "started_utc": self.started_utc, "ended_utc": _utc_now(), "wall_seconds": round(self.seconds(), 3)}


def start_run() -> Run:
    """Call first thing in `main()`."""
    return Run()


def write_results(path: Path, results: dict[str, Any], run: Run) -> Path:
    """`{"provenance": ..., **results}` as JSON, written atomically (temporary file in the same folder, then
    os.replace): a crashed or interrupted run leaves the previous file whole, never half of a new one."""
    if "provenance" in results:
        raise ValueError("results carry their own 'provenance' key; write_results stamps it")
    return write_json_atomically(path, {"provenance": run.provenance(), **results})


def met(targets: dict[str, bool | None]) -> dict[str, str]:
    """Targets as printed: met, NOT met, or not measured (None: the run skipped what the target needs)."""
    return {k: "not measured" if v is None else ("met" if v else "NOT met") for k, v in targets.items()}


def interleaved_latencies_ms(sessions: dict[str, Any], image: Any, threads: int, runs: int, repeats: int = 3,
                             max_seconds: float = 10.0) -> dict[str, dict]:
    """Batch-1 ONNX Runtime latency of every session, interleaved (one after the other, `repeats` times) so that
    machine load hits all alike; the median of the repeats' medians is kept."""
    samples: dict[str, list[dict]] = {name: [] for name in sessions}
    for _ in range(repeats):
        for name, session in sessions.items():
            samples[name].append(ort_backend.time_session(session, image, threads, runs, max_seconds=max_seconds).to_dict())
    result = {}
    for name, measured in samples.items():
        middle = sorted(measured, key=lambda m: m["median"])[len(measured) // 2]
        result[name] = middle | {"runs": sum(m["runs"] for m in measured), "repeats": repeats,
                                 "medians": [m["median"] for m in measured]}
    return result
