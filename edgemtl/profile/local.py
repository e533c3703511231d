"""The local device: this machine, ONNX Runtime sessions and TVM's Relax VM in this process."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np

from edgemtl.profile.device import (ORT_FLOAT, ORT_INT8, SkipRuntime, TaskArtifacts, Timing, first_line, normalise_arch,
                                    sample, time_vm, tvm_missing)
from edgemtl.timing import host_cpu_name


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
                raise SkipRuntime(f"ONNX Runtime cannot load {artifact.name}: {first_line(exc)}") from None
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
            raise SkipRuntime(f"TVM cannot load {artifact.name}: {first_line(exc)}") from None
        samples, output = time_vm(vm, dev, tvm.runtime.tensor(x, dev), runs, max_seconds)
        return Timing(samples, output, {"tvm": tvm.__version__, "timer": "time_evaluator", "arch": self.arch})

    def end_task(self) -> None:
        pass

    def close(self) -> None:
        pass
