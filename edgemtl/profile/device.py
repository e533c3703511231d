"""What the profile job and every device share: runtime names, the bundle reader, output checks, the timing types
and the Device protocol. LocalDevice (local.py), RpcDevice (rpc.py) and tuning (tune.py) depend only on this; the
job (job.py) drives them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from edgemtl.backends.tvm_build import tvm_missing  # noqa: F401 - the profile runners import it from here
from edgemtl.bundle import MANIFEST, read_manifest  # noqa: F401 - job.py reads MANIFEST from here
from edgemtl.errors import EdgemtlError
from edgemtl.targets import load_target
from edgemtl.timing import sample_ms

ORT_FLOAT, ORT_INT8, TVM, TVM_TUNED = "onnxruntime-float", "onnxruntime-int8", "tvm", "tvm-tuned"
RUNTIMES = (ORT_FLOAT, ORT_INT8, TVM)
WARMUP = 5
# An output passes when max |out - ref| <= tol * max(1, max |ref|): float runtimes must agree closely;
# int8 ones may differ by a few quantisation steps between CPUs (VNNI vs NEON rounding).
TOLERANCE = {"float": 1e-3, "int8": 5e-2}

StepCallback = Callable[[str, str, str, dict], None]  # (event: start|done|skip, task, runtime, info)


@dataclass(frozen=True)
class DataReference:
    """`profile --data`: the user's images to make the reference vectors from, read as `open_data` reads them."""

    reference: str
    resize: bool = False
    holdout: tuple[float, float] | None = None  # val, test fractions when the data names no split (None: default)


class SkipRuntime(Exception):
    """This runtime cannot run this task on this device; the message says why (recorded, not fatal)."""


class DeviceLost(EdgemtlError):
    """The device went away and no retry could get it (or another with its key) back."""


# ----------------------------------------------------------------------------------------------- the bundle

@dataclass
class TaskArtifacts:
    name: str
    entry: dict[str, Any]
    bundle: Path

    def _path(self, relative: Any) -> Path | None:
        return self.bundle / relative if isinstance(relative, str) and relative else None

    @property
    def artifacts(self) -> dict[str, Any]:
        return self.entry.get("artifacts") or {}

    def reference(self, which: str) -> Path | None:
        reference = self.artifacts.get("reference") or {}
        return self._path(reference.get(which))

    def use_reference(self, paths: dict[str, str]) -> None:
        """Check against these reference files (bundle-relative) for this job only; the manifest keeps its own."""
        self.entry = {**self.entry, "artifacts": {**self.artifacts, "reference": paths}}

    def artifact(self, runtime: str, arch: str) -> Path:
        """The file `runtime` runs for this task on an `arch` device; SkipRuntime says why there is none."""
        if runtime == ORT_FLOAT:
            key, path = "onnx", self._path(self.artifacts.get("onnx"))
        elif runtime == ORT_INT8:
            key, path = "int8_onnx", self._path(self.artifacts.get("int8_onnx"))
        else:
            builds = self.artifacts.get("tvm_tuned" if runtime == TVM_TUNED else "tvm") or {}
            key = f"{'tvm_tuned' if runtime == TVM_TUNED else 'tvm'}.{arch}"
            path = self._path(builds.get(arch)) if isinstance(builds, dict) else None
            if path is None and builds:
                raise SkipRuntime(f"the bundle has TVM builds for {', '.join(sorted(builds))}, not for this "
                                  f"{arch} device")
        if path is None:
            raise SkipRuntime(f"no {key} artifact in the manifest")
        if not path.is_file():
            raise SkipRuntime(f"{path.relative_to(self.bundle)} is listed in the manifest but missing")
        return path

    def relative(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.bundle))
        except ValueError:
            return str(path)

    def input(self) -> tuple[np.ndarray, bool]:
        """The first reference sample at batch 1 (and True), else seeded noise shaped like the ONNX input at
        batch 1 (False). Every runtime is timed at batch 1: the TVM builds are compiled for it, and latency
        figures must compare like with like."""
        path = self.reference("input")
        if path is not None and path.is_file():
            return np.ascontiguousarray(np.load(path)[:1], dtype=np.float32), True
        onnx_path = self._path(self.artifacts.get("onnx")) or self._path(self.artifacts.get("int8_onnx"))
        if onnx_path is None or not onnx_path.is_file():
            raise SkipRuntime("no reference input and no ONNX file to take the input shape from")
        import onnx

        graph = onnx.load(str(onnx_path), load_external_data=False).graph
        initializers = {t.name for t in graph.initializer}
        first = next(i for i in graph.input if i.name not in initializers)
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
                 for d in first.type.tensor_type.shape.dim]
        return np.random.default_rng(0).standard_normal(shape).astype(np.float32), False


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]
    tasks: dict[str, TaskArtifacts]

    @property
    def target(self) -> str:
        return str((self.manifest.get("target") or {}).get("name", ""))


def read_bundle(path: Path) -> Bundle:
    """The bundle at `path` (edgemtl.bundle.read_manifest's one-line error when it is not one) with its tasks."""
    manifest = read_manifest(path)
    resolved = Path(path).resolve()
    return Bundle(resolved, manifest, {name: TaskArtifacts(name, entry or {}, resolved)
                                       for name, entry in manifest["tasks"].items()})


# --------------------------------------------------------------------------------------------- output check

def check_output(output: np.ndarray | None, task: TaskArtifacts, runtime: str) -> tuple[float | None, bool | None, dict]:
    """(max |diff|, passed, details) against the bundle's reference; (None, None, ...) without one.

    ONNX Runtime int8 is compared with the int8 reference, float ONNX Runtime with the float one, TVM with
    the float one unless the manifest says its build came from the QDQ graph (`artifacts.tvm_source:
    "int8_onnx"`), then with the int8 reference and tolerance."""
    if output is None:
        return None, None, {"check": "no output fetched"}
    int8 = runtime == ORT_INT8 or (runtime in (TVM, TVM_TUNED) and task.artifacts.get("tvm_source") == "int8_onnx")
    name, kind = ("output_int8", "int8") if int8 else ("output_float", "float")
    path = task.reference(name)
    if path is None or not path.is_file():
        return None, None, {"check": f"no {name} reference in the bundle"}
    reference = np.load(path)
    if reference.ndim == output.ndim and reference.shape[1:] == output.shape[1:] and output.shape[0] <= reference.shape[0]:
        reference = reference[: output.shape[0]]  # the reference holds N samples; the profiler runs the first
    if reference.shape != output.shape:
        return None, False, {"reference": name, "check": f"shape {list(output.shape)} != reference {list(reference.shape)}"}
    max_diff = float(np.abs(output.astype(np.float64) - reference.astype(np.float64)).max()) if reference.size else 0.0
    tolerance = TOLERANCE[kind] * max(1.0, float(np.abs(reference).max()) if reference.size else 1.0)
    passed = bool(np.isfinite(output).all()) and max_diff <= tolerance
    return max_diff, passed, {"reference": name, "tolerance": tolerance}


# ------------------------------------------------------------------------------------------------- timing

@dataclass
class Timing:
    samples_ms: list[float]
    output: np.ndarray | None
    details: dict[str, Any] = field(default_factory=dict)

    def stats(self) -> tuple[float, float, float]:
        values = np.asarray(self.samples_ms, dtype=np.float64)
        return float(np.median(values)), float(np.percentile(values, 90)), float(values.min())


def sample(run: Callable[[], object], runs: int, max_seconds: float, warmup: int = WARMUP) -> list[float]:
    """Wall-clock ms of `runs` calls after `warmup`; stops early after `max_seconds` (keeps at least 5)."""
    return sample_ms(run, runs, max_seconds, warmup)


def time_vm(vm: Any, dev: Any, x: Any, runs: int, max_seconds: float, call: Callable[[Callable[[], Any], str], Any] | None = None,
            warmup: int = WARMUP) -> tuple[list[float], np.ndarray]:
    """Time a Relax VM's `main` with TVM's `time_evaluator` (on the device itself, local or remote):
    warm-up calls, one probe run to size the repeat count to `max_seconds`, then `repeat` single runs.
    `call(fn, what)` wraps each (remote) call, e.g. with a timeout."""
    call = call or (lambda fn, what: fn())
    call(lambda: vm.set_input("main", x), "set the input")
    for _ in range(warmup):
        call(lambda: vm.invoke_stateful("main"), "run the model")
    output = call(lambda: vm.get_outputs("main"), "fetch the output")
    while isinstance(output, (tuple, list)):
        output = output[0]
    values = call(lambda: output.numpy(), "copy the output back")
    probe = call(lambda: vm.time_evaluator("invoke_stateful", dev, number=1, repeat=1)("main").results[0], "time one run")
    repeat = max(5, min(runs, int(max_seconds / max(probe, 1e-6))))
    results = call(lambda: vm.time_evaluator("invoke_stateful", dev, number=1, repeat=repeat)("main").results,
                   f"time {repeat} runs")
    return [float(r) * 1000 for r in results], values


class Device(Protocol):
    key: str
    description: str
    provenance: str
    arch: str

    def run(self, task: TaskArtifacts, runtime: str, artifact: Path, x: np.ndarray, runs: int, max_seconds: float) -> Timing: ...

    def end_task(self) -> None: ...

    def close(self) -> None: ...


def normalise_arch(name: str) -> str:
    name = name.lower()
    if name in ("aarch64", "arm64", "armv8") or name.startswith("aarch64"):
        return "aarch64"
    if name in ("x86_64", "amd64", "x64") or name.startswith("x86_64"):
        return "x86_64"
    return name


def bundle_arch(manifest: dict[str, Any]) -> str | None:
    """The CPU architecture a bundle's target names (None: any machine, e.g. the host target)."""
    try:
        target = load_target(manifest["target"]["name"])
    except (EdgemtlError, KeyError, TypeError):
        return None
    isa = next((unit.isa for unit in target.compute if unit.kind == "cpu" and unit.isa), "")
    if isa.startswith(("armv8", "aarch64", "arm64")):
        return "aarch64"
    return "x86_64" if isa.startswith(("x86", "amd64")) else None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines and "Traceback" in lines[0] else lines[0] if lines else type(exc).__name__)[:300]
