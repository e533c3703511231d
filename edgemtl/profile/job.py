"""The profile job (`edgemtl profile`).

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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgemtl.bundle import file_sha256, file_slug, write_json_atomically
from edgemtl.errors import EdgemtlError
from edgemtl.manifest import check_provenances, prov
from edgemtl.profile.device import (MANIFEST, RUNTIMES, TVM_TUNED, Bundle, DataReference, Device, DeviceLost,
                                    SkipRuntime, StepCallback, TaskArtifacts, bundle_arch, check_output, read_bundle)
from edgemtl.profile.local import LocalDevice
from edgemtl.profile.store import Measurement, ResultsStore


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
                "runs": m.runs, "provenance": prov(m.provenance, source=self.runtime, device=m.device_key),  # type: ignore[arg-type]
                "artifact": m.artifact, "sha256": m.artifact_sha256,
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

    def provenance_object(self) -> dict[str, str]:
        """How the manifest says what these timings are: measured on a device, or emulated (never a device's speed)."""
        return prov(self.provenance, source="edgemtl profile", device=self.device_key,  # type: ignore[arg-type]
                    detail=self.description)

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device_key, "description": self.description, "provenance": self.provenance_object(),
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
        artifact=relative, artifact_sha256=file_sha256(artifact), runtime=runtime, runs=len(timing.samples_ms),
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
            "provenance": result.provenance_object(), "timestamp": result.timestamp}
        for name, runtimes in result.tasks.items():
            entry = manifest["tasks"].setdefault(name, {})
            chosen = result.chosen.get(name)
            entry.setdefault("profile", {})[slug] = {
                "device": result.device_key, "provenance": result.provenance_object(), "timestamp": result.timestamp,
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
        check_provenances(manifest)  # the profile's figures keep the one provenance shape
        write_json_atomically(bundle.path / MANIFEST, manifest)
    finally:
        os.close(folder)  # releases the lock
