"""`edgemtl profile --tune N`: a meta-schedule-tuned TVM build of a task, measured on the device it is for.

The float ONNX graph is imported into Relax, tuned with N trials (candidates built here, timed on the
device: `LocalRunner` for `local`, `RPCRunner` through the same tracker and key for an RPC device), and
rebuilt from the tuning database. The database lives in `BUNDLE/tasks/<task>/tvm/tuning/<arch>/` and a
re-run reuses it (no new trials when it already holds as many as asked for); the tuned library is
`tasks/<task>/tvm/<arch>/model.tuned.so`. Candidates are built by a `LocalBuilder` with a long timeout and
a build function that skips the slow tensor-intrinsic import (the stock one times out silently on a
loaded machine, leaving the model untuned); aarch64 candidates are cross-linked with aarch64-linux-gnu-g++
into .so files, so the board needs no compiler.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgemtl.bundle import file_sha256
from edgemtl.profile.device import ORT_FLOAT, Bundle, SkipRuntime, TaskArtifacts, tvm_missing

CROSS_CXX = {"aarch64": "aarch64-linux-gnu-g++"}
BUILD_TIMEOUT_S = 120.0


def _target(arch: str, cores: int) -> Any:
    import tvm

    if arch == "x86_64":
        return tvm.target.Target({"kind": "llvm", "num-cores": cores})
    if arch == "aarch64":
        return tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "num-cores": cores})
    raise SkipRuntime(f"no TVM tuning target for a {arch} device")


def build_candidate(mod: Any, target: Any, _params: Any) -> Any:
    """A meta-schedule candidate: TVM's default build without `import tvm.s_tir.tensor_intrin` (20-30 s on a
    loaded machine, which made every candidate time out)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def export_candidate(module: Any) -> str:
    """A shared library the device loads directly (cross-linked for aarch64)."""
    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(), "candidate.so")
    cxx = os.environ.get("EDGEMTL_TUNE_CXX")
    module.export_library(path, fcompile=cc.cross_compiler(cxx) if cxx else None)
    return path


def tuned_artifact(bundle: Bundle, task: TaskArtifacts, device: Any, *, trials: int, timeout: float) -> Path:
    """The tuned .so for `device`'s architecture, tuning (or reusing the bundle's database) as needed."""
    missing = tvm_missing()
    if missing:
        raise SkipRuntime(missing)
    arch = device.arch
    onnx_path = task.artifact(ORT_FLOAT, arch)
    folder = bundle.path / "tasks" / task.name / "tvm"
    work = folder / "tuning" / arch
    output = folder / arch / "model.tuned.so"
    record_path = work / "tuned.json"
    source = file_sha256(onnx_path)
    if output.is_file() and record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("onnx_sha256") == source and record.get("trials", 0) >= trials:
            return output
    cxx = CROSS_CXX.get(arch) if arch != _host_arch() else None
    if cxx and shutil.which(cxx) is None:
        raise SkipRuntime(f"tuning for {arch} needs the cross compiler {cxx} (apt-get install g++-aarch64-linux-gnu)")
    import numpy as np
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx
    from tvm.s_tir import meta_schedule as ms
    from tvm.support import cc

    x, _ = task.input()
    cores = int(getattr(device, "cores", 0) or os.cpu_count() or 1)
    target = _target(arch, cores)
    mod = from_onnx(onnx.load(str(onnx_path)), shape_dict={"input": list(np.shape(x))})
    with target:
        mod = relax.transform.DecomposeOpsForInference()(mod)
        fused = _fuse(mod, target)  # the workloads compile_relax will look up in the database
    work.mkdir(parents=True, exist_ok=True)
    if cxx:
        os.environ["EDGEMTL_TUNE_CXX"] = cxx  # inherited by the builder's worker processes
    builder = ms.builder.LocalBuilder(f_build=build_candidate, f_export=export_candidate, timeout_sec=BUILD_TIMEOUT_S,
                                      max_workers=1)
    address = getattr(device, "address", None)
    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=0, enable_cpu_cache_flush=False)
    if address is None:
        runner = ms.runner.LocalRunner(timeout_sec=timeout, evaluator_config=evaluator)
    else:
        runner = ms.runner.RPCRunner(ms.runner.RPCConfig(tracker_host=address.host, tracker_port=address.port,
                                                         tracker_key=address.key, session_timeout_sec=timeout),
                                     evaluator_config=evaluator, max_workers=1)
    # meta-schedule prints its task tables to stdout at the level its logger has now; keep them in logs/
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    database = ms.database.JSONDatabase(work_dir=str(work))
    done = len(database)
    if done < trials:
        ms.relax_integration.tune_relax(fused, params={}, target=target, work_dir=str(work), max_trials_global=trials - done,
                                        num_trials_per_iter=min(32, max(1, trials - done)), builder=builder, runner=runner,
                                        database=database)
    measured = sum(1 for r in database.get_all_tuning_records() if r.run_secs and all(float(s) < 1e9 for s in r.run_secs))
    if measured == 0:
        raise SkipRuntime(f"tuning measured no candidate ({len(database)} records; builds or runs failed); "
                          f"see {work}")
    executable = ms.relax_integration.compile_relax(database, mod, target, params=None)
    output.parent.mkdir(parents=True, exist_ok=True)
    executable.export_library(str(output), fcompile=cc.cross_compiler(cxx) if cxx else None)
    record_path.write_text(json.dumps({"trials": max(trials, done), "onnx_sha256": source, "records": len(database),
                                       "measured_records": measured, "target": str(target), "tvm": tvm.__version__}, indent=2))
    return output


def _fuse(mod: Any, target: Any) -> Any:
    """compile_relax's own preparation (dispatch, legalize, fuse): its fused kernels are the tuning tasks."""
    import tvm
    from tvm import relax
    from tvm.relax import pipeline

    try:
        dispatch = pipeline.library_dispatch_passes(target)
    except (ValueError, AttributeError):
        dispatch = []
    return tvm.transform.Sequential([*dispatch, relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                                     relax.transform.FoldConstant(), relax.transform.FuseOps(),
                                     relax.transform.FuseTIR()])(mod)


def _host_arch() -> str:
    import platform

    from edgemtl.profile.device import normalise_arch

    return normalise_arch(platform.machine())

