"""The profile job (`edgemtl profile`) and the local device.

A job reads a bundle, opens a device (`local`: this machine; `rpc://HOST:PORT/KEY`: a board from a TVM
RPC tracker, see `edgemtl.profile.rpc`), and for every task times each runtime whose artifact the bundle
holds: ONNX Runtime on the float and the int8 ONNX files, TVM on the Relax VM .so built for the device's
architecture (and a tuned one with `tune`). Each output is checked against the bundle's reference vectors.
Every measurement is appended to the results store as soon as it is taken; at the end the job writes
`BUNDLE/profile/<device>.json` and, per task, records the figures under `tasks.<task>.profile.<device>` in
the manifest. The shipped runtime `tasks.<task>.runtime` becomes the fastest runtime whose output check
passed, but only from a *measured* profile: an emulated board's timings never decide what ships.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from edgemtl.bundle import file_slug, write_json_atomically
from edgemtl.errors import EdgemtlError
from edgemtl.timing import sample_ms
from edgemtl.targets import load_target
from edgemtl.profile.store import Measurement, ResultsStore, sha256_file
from edgemtl.timing import host_cpu_name

MANIFEST = "manifest.json"
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
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.is_dir() or not manifest_path.is_file():
        raise EdgemtlError(f"{path} is not an edgemtl bundle (no {MANIFEST}); pass the folder `edgemtl compile` wrote")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EdgemtlError(f"{manifest_path} cannot be read as JSON: {exc}") from None
    tasks = manifest.get("tasks") if isinstance(manifest, dict) else None
    if not isinstance(tasks, dict) or not tasks:
        raise EdgemtlError(f"{manifest_path} lists no tasks; is {path} an edgemtl bundle?")
    resolved = path.resolve()
    return Bundle(resolved, manifest, {name: TaskArtifacts(name, entry or {}, resolved) for name, entry in tasks.items()})


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


def tvm_missing() -> str | None:
    try:
        import tvm  # noqa: F401
        from tvm import relax  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means "no TVM here"
        return f"apache-tvm is not installed here ({type(exc).__name__}); pip install 'edgemtl[tvm]'"
    return None


class LocalDevice:
    """This machine: ONNX Runtime sessions and TVM's Relax VM in this process."""

    key = "local"
    provenance = "measured"

    def __init__(self, threads: int = 0):
        self.threads = threads
        self.arch = normalise_arch(platform.machine())
        self.cores = cores = os.cpu_count() or 1
        self.description = (f"this machine: {host_cpu_name()} ({self.arch}, {cores} cores, "
                            f"{'default' if not threads else threads} threads)")

    def run(self, task: TaskArtifacts, runtime: str, artifact: Path, x: np.ndarray, runs: int, max_seconds: float) -> Timing:
        if runtime in (ORT_FLOAT, ORT_INT8):
            import onnxruntime as ort

            from edgemtl.backends.onnxruntime import make_session

            try:
                session = make_session(artifact, self.threads)
            except Exception as exc:  # noqa: BLE001 - an artifact ONNX Runtime rejects is a skipped runtime
                raise SkipRuntime(f"ONNX Runtime cannot load {artifact.name}: {_first_line(exc)}") from None
            feed = {session.get_inputs()[0].name: x}
            output = session.run(None, feed)[0]
            samples = sample(lambda: session.run(None, feed), runs, max_seconds)
            return Timing(samples, output, {"onnxruntime": ort.__version__, "threads": self.threads or "default",
                                            "arch": self.arch})
        missing = tvm_missing()
        if missing:
            raise SkipRuntime(missing)
        import tvm
        from tvm import relax

        try:
            lib = tvm.runtime.load_module(str(artifact))
            dev = tvm.cpu()
            vm = relax.VirtualMachine(lib, dev)
        except Exception as exc:  # noqa: BLE001
            raise SkipRuntime(f"TVM cannot load {artifact.name}: {_first_line(exc)}") from None
        samples, output = time_vm(vm, dev, tvm.runtime.tensor(x, dev), runs, max_seconds)
        return Timing(samples, output, {"tvm": tvm.__version__, "timer": "time_evaluator", "arch": self.arch})

    def end_task(self) -> None:
        pass

    def close(self) -> None:
        pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines and "Traceback" in lines[0] else lines[0] if lines else type(exc).__name__)[:300]


def open_device(spec: str, *, timeout: float, retries: int) -> Device:
    """`local` or `rpc://HOST:PORT/KEY`."""
    if spec == "local":
        return LocalDevice()
    from edgemtl.profile.rpc import RpcDevice, parse_device

    return RpcDevice(parse_device(spec), timeout=timeout, retries=retries)


# ------------------------------------------------------------------------------------------------- the job

@dataclass
class RuntimeResult:
    runtime: str
    artifact: str | None = None
    measurement: Measurement | None = None
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.measurement is None:
            return {"skipped": self.skipped, **({"artifact": self.artifact} if self.artifact else {})}
        m = self.measurement
        return {"median_ms": round(m.median_ms, 5), "p90_ms": round(m.p90_ms, 5), "min_ms": round(m.min_ms, 5),
                "runs": m.runs, "provenance": m.provenance, "artifact": m.artifact, "sha256": m.artifact_sha256,
                "max_abs_diff": m.max_abs_diff, "check_passed": m.check_passed, "store_id": m.id,
                "details": m.details}


@dataclass
class ProfileResult:
    bundle: Path
    device_key: str
    description: str
    provenance: str
    store: Path
    arch: str = ""                        # the device's CPU architecture (aarch64, x86_64)
    tasks: dict[str, dict[str, RuntimeResult]] = field(default_factory=dict)
    chosen: dict[str, str | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    profile_path: Path | None = None
    complete: bool = False
    reference: dict[str, Any] | None = None  # where the reference vectors came from when not the bundle's own
    timestamp: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device_key, "description": self.description, "provenance": self.provenance,
                "timestamp": self.timestamp, "complete": self.complete, "store": str(self.store),
                "tasks": {t: {"runtimes": {r: v.to_dict() for r, v in rs.items()}, "fastest_passed": self.chosen.get(t)}
                          for t, rs in self.tasks.items()},
                "reference": self.reference or "the bundle's own (made at compile time)", "notes": self.notes}


def device_slug(key: str) -> str:
    return file_slug(key, "device")


def profile_bundle(bundle_path: Path, device: str | Device, *, runs: int = 100, timeout: float = 60.0, retries: int = 2,
                   store: ResultsStore | Path | None = None, tune: int = 0, max_seconds: float = 10.0,
                   tasks: list[str] | None = None, on_step: StepCallback | None = None,
                   data: DataReference | None = None) -> ProfileResult:
    """Profile every task of a bundle on one device; see the module docstring. With `data`, outputs are checked
    against reference vectors made now from those images (`edgemtl.profile.reference`) instead of the bundle's."""
    bundle = read_bundle(bundle_path)
    selected = list(bundle.tasks) if tasks is None else tasks
    unknown = [t for t in selected if t not in bundle.tasks]
    if unknown:
        raise EdgemtlError(f"bundle {bundle.path} has no task(s) {', '.join(unknown)}; it has {', '.join(bundle.tasks)}")
    reference = None
    if data is not None:  # bad data fails before a device is opened
        from edgemtl.profile.reference import write_data_reference

        paths, reference = write_data_reference(bundle.path, bundle.manifest, selected, data.reference,
                                                resize=data.resize, holdout=data.holdout)
        for name in selected:
            bundle.tasks[name].use_reference(paths.get(name, {}))
    results = store if isinstance(store, ResultsStore) else ResultsStore(store)
    dev = open_device(device, timeout=timeout, retries=retries) if isinstance(device, str) else device
    on_step = on_step or (lambda *args: None)
    result = ProfileResult(bundle.path, dev.key, dev.description, dev.provenance, results.path, arch=dev.arch,
                           reference=reference)
    try:
        for name in selected:
            task = bundle.tasks[name]
            result.tasks[name] = {}
            runtimes = list(RUNTIMES)
            if tune:
                runtimes.append(TVM_TUNED)
            for runtime in runtimes:
                on_step("start", name, runtime, {})
                outcome = _profile_one(bundle, task, runtime, dev, results, runs=runs, max_seconds=max_seconds,
                                       tune=tune, timeout=timeout)
                result.tasks[name][runtime] = outcome
                on_step("skip" if outcome.measurement is None else "done", name, runtime,
                        {"result": outcome})
            dev.end_task()
            result.chosen[name] = _fastest_passed(result.tasks[name])
        result.complete = True
    except DeviceLost as exc:
        result.notes.append(f"incomplete: {exc}")
        _write_profile(bundle, result)
        raise
    finally:
        dev.close()
    _write_profile(bundle, result)
    _update_manifest(bundle, result)
    return result


def _profile_one(bundle: Bundle, task: TaskArtifacts, runtime: str, dev: Device, store: ResultsStore, *, runs: int,
                 max_seconds: float, tune: int, timeout: float) -> RuntimeResult:
    try:
        if runtime == TVM_TUNED:
            from edgemtl.profile.tune import tuned_artifact

            dev.end_task()  # tuning's runner asks the tracker for the device itself: release our session
            artifact = tuned_artifact(bundle, task, dev, trials=tune, timeout=timeout)
        else:
            artifact = task.artifact(runtime, dev.arch)
    except SkipRuntime as exc:
        return RuntimeResult(runtime, skipped=str(exc))
    relative = task.relative(artifact)
    try:
        x, real_input = task.input()
        timing = dev.run(task, runtime, artifact, x, runs, max_seconds)
    except SkipRuntime as exc:
        return RuntimeResult(runtime, artifact=relative, skipped=str(exc))
    median, p90, low = timing.stats()
    max_diff, passed, check = check_output(timing.output, task, runtime)
    if not real_input:
        check = {**check, "input": "seeded noise (no reference input in the bundle)"}
    measurement = Measurement(
        device_key=dev.key, device_description=dev.description, bundle=str(bundle.path), task=task.name,
        artifact=relative, artifact_sha256=sha256_file(artifact), runtime=runtime, runs=len(timing.samples_ms),
        median_ms=median, p90_ms=p90, min_ms=low, provenance=dev.provenance, max_abs_diff=max_diff,
        check_passed=passed, details={**timing.details, **check, "target": bundle.target})
    (row_id,) = store.append(measurement)
    return RuntimeResult(runtime, relative, _with_id(measurement, row_id))


def _with_id(m: Measurement, row_id: int) -> Measurement:
    from dataclasses import replace

    return replace(m, id=row_id)


def _fastest_passed(results: dict[str, RuntimeResult]) -> str | None:
    passed = [r for r in results.values() if r.measurement is not None and r.measurement.check_passed]
    return min(passed, key=lambda r: r.measurement.median_ms).runtime if passed else None


def _write_profile(bundle: Bundle, result: ProfileResult) -> None:
    result.profile_path = bundle.path / "profile" / f"{device_slug(result.device_key)}.json"
    write_json_atomically(result.profile_path, {"bundle": str(bundle.path), **result.to_dict()})


def _update_manifest(bundle: Bundle, result: ProfileResult) -> None:
    """Read-modify-write of manifest.json under a lock on the bundle folder itself (no lock file left behind),
    replaced atomically (`edgemtl profile` then writes the report again from it)."""
    slug = device_slug(result.device_key)
    folder = os.open(bundle.path, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        manifest = json.loads((bundle.path / MANIFEST).read_text(encoding="utf-8"))
        target_arch = bundle_arch(manifest)
        manifest.setdefault("profiles", {})[slug] = {
            "file": f"profile/{slug}.json", "device": result.device_key, "description": result.description,
            "provenance": result.provenance, "timestamp": result.timestamp}
        for name, runtimes in result.tasks.items():
            entry = manifest["tasks"].setdefault(name, {})
            chosen = result.chosen.get(name)
            entry.setdefault("profile", {})[slug] = {
                "device": result.device_key, "provenance": result.provenance, "timestamp": result.timestamp,
                "runtimes": {r: v.to_dict() for r, v in runtimes.items()}, "fastest_passed": chosen}
            for runtime, outcome in runtimes.items():  # a tuned build made by this job becomes an artifact
                if runtime == TVM_TUNED and outcome.measurement is not None:
                    arch = outcome.measurement.details.get("arch")
                    if arch:
                        entry.setdefault("artifacts", {}).setdefault("tvm_tuned", {})[arch] = outcome.artifact
            if chosen is None:
                result.notes.append(f"{name}: no runtime passed the output check; its shipped runtime is unchanged")
            elif result.provenance != "measured":
                result.notes.append(f"{name}: {result.provenance} timings do not choose the shipped runtime "
                                    f"(fastest here: {chosen}); profile on a real device or locally")
            elif target_arch and result.arch and result.arch != target_arch:
                result.notes.append(f"{name}: timed on {result.arch}, but the bundle is for {target_arch}: the shipped "
                                    f"runtime is chosen on a {target_arch} device (fastest here: {chosen})")
            else:
                entry["runtime"] = chosen
                entry["runtime_chosen_by"] = {"device": result.device_key, "profile": f"profile/{slug}.json",
                                              "median_ms": {r: v.measurement.median_ms for r, v in runtimes.items()
                                                            if v.measurement is not None}}
        write_json_atomically(bundle.path / MANIFEST, manifest)
    finally:
        os.close(folder)  # releases the lock
