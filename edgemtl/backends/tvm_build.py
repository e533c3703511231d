"""Apache TVM (0.27, Relax): float ONNX -> Relax -> a shared library for an aarch64 board or this x86_64 host.

`relax.frontend.onnx.from_onnx` at a static batch-1 shape, `DecomposeOpsForInference` and the "zero"
pipeline (legalise + fuse) under the target, `relax.build`, then `export_library`: cross-linked with Debian's
`aarch64-linux-gnu-g++` for the board, with the host's compiler for the x86_64 build used for local profiling
and for checking the build against ONNX Runtime. The modules are UNTUNED: on a CPU they run far slower than
ONNX Runtime (see TOOLCHAIN-NOTES); whether a TVM build ships is decided by measurement (`edgemtl profile`,
which may tune them on the device).

TVM is optional (`pip install edgemtl[tvm]`): every function raises a one-line EdgemtlError naming the
install command when TVM or the cross compiler is missing.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgemtl.model.onnx_export import INPUT_NAME
from edgemtl.errors import EdgemtlError

INSTALL_TVM = "pip install edgemtl[tvm]"
CROSS_CXX = {"aarch64": "aarch64-linux-gnu-g++"}
INSTALL_CROSS = {"aarch64": "apt-get install g++-aarch64-linux-gnu"}
# Relax targets are JSON dicts. NEON is baseline on every AArch64 core (Cortex-A53/A72/A76 ...).
AARCH64_TARGET: dict[str, Any] = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
ARCHES = ("aarch64", "x86_64")


@dataclass
class TvmBuild:
    """One exported module (or why there is none)."""

    arch: str
    target: dict[str, Any]
    path: Path | None = None
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # import / build / export seconds
    reason: str | None = None                                  # set when not built

    @property
    def built(self) -> bool:
        return self.path is not None

    def to_dict(self, root: Path | None = None) -> dict[str, Any]:
        record: dict[str, Any] = {"built": self.built, "target": self.target, "seconds": round(self.seconds, 3)}
        if self.path is not None:
            record["path"] = str(self.path.relative_to(root)) if root is not None else str(self.path)
            record["timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        if self.reason is not None:
            record["reason"] = self.reason
        return record


def tvm_missing() -> str | None:
    """Why TVM cannot be used here (None when it can): the check the flows, `edgemtl profile` and doctor share."""
    try:
        import tvm  # noqa: F401
        from tvm import relax  # noqa: F401
        from tvm.relax.frontend.onnx import from_onnx  # noqa: F401
    except ImportError as exc:
        return f"apache-tvm is not installed ({exc.name or exc}): {INSTALL_TVM}"
    except Exception as exc:  # noqa: BLE001 - a broken install (its native library fails to load) is no TVM either
        return f"apache-tvm does not load here ({type(exc).__name__}: {exc}): {INSTALL_TVM}"
    return None


def cross_compiler_missing(arch: str) -> str | None:
    """Why modules for `arch` cannot be linked here (None when they can)."""
    if arch == host_arch():
        return None if (shutil.which("g++") or shutil.which("c++") or shutil.which("gcc")) else \
            "no host C++ compiler (g++) to link TVM modules: apt-get install g++"
    cxx = CROSS_CXX.get(arch)
    if cxx is None:
        raise EdgemtlError(f"no cross compiler known for {arch!r}; known: {', '.join(CROSS_CXX)}")
    return None if shutil.which(cxx) else f"{cxx} not found: {INSTALL_CROSS[arch]}"


def host_arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def host_target() -> dict[str, Any]:
    """This machine's CPU as a Relax target (x86_64 with its own -mcpu, so local timings are fair)."""
    _require_tvm()
    from tvm.target import codegen

    target: dict[str, Any] = {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}
    if host_arch() == "x86_64":
        target["mcpu"] = str(codegen.llvm_get_system_cpu())
    return target


def target_for(arch: str) -> dict[str, Any]:
    if arch == "aarch64":
        return dict(AARCH64_TARGET)
    if arch == "x86_64":
        return host_target() if host_arch() == "x86_64" else {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}
    raise EdgemtlError(f"unknown TVM architecture {arch!r}; known: {', '.join(ARCHES)}")


def _require_tvm() -> None:
    missing = tvm_missing()
    if missing:
        raise EdgemtlError(missing)


def tvm_version() -> str | None:
    try:
        import tvm

        return str(tvm.__version__)
    except ImportError:
        return None


def import_onnx(onnx_path: Path, input_shape: list[int]):
    """The ONNX graph as a Relax IRModule at a fixed input shape (e.g. [1, C, H, W])."""
    _require_tvm()
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    try:
        return from_onnx(onnx.load(str(onnx_path)), shape_dict={INPUT_NAME: list(input_shape)})
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgemtlError(f"TVM cannot import {onnx_path.name}: {detail}") from None


def build_onnx(onnx_path: Path, output: Path, arch: str, input_shape: list[int], target: dict[str, Any] | None = None) -> TvmBuild:
    """Build `onnx_path` for `arch` ("aarch64" | "x86_64") and export the shared library to `output`.

    Raises EdgemtlError when TVM or the linker for `arch` is missing, or when TVM cannot import / build.
    """
    _require_tvm()
    missing = cross_compiler_missing(arch)
    if missing:
        raise EdgemtlError(missing)
    import tvm
    from tvm import relax

    target = target or target_for(arch)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    mod = import_onnx(onnx_path, input_shape)
    timings["import"] = time.perf_counter() - start
    try:
        with _native_stderr_quiet():  # TVM's C++ warnings (e.g. "Unknown pragma") would flood the console
            tvm_target = tvm.target.Target(target)
            stage = time.perf_counter()
            mod = relax.transform.DecomposeOpsForInference()(mod)
            with tvm_target:  # the CPU default pipeline does not fuse on its own
                mod = relax.get_pipeline("zero")(mod)
            executable = relax.build(mod, target=tvm_target)
            timings["build"] = time.perf_counter() - stage
            stage = time.perf_counter()
            output.parent.mkdir(parents=True, exist_ok=True)
            if arch == host_arch():
                executable.export_library(str(output))
            else:
                from tvm.support import cc

                executable.export_library(str(output), fcompile=cc.cross_compiler(CROSS_CXX[arch]))
            timings["export"] = time.perf_counter() - stage
    except EdgemtlError:
        raise
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgemtlError(f"TVM build of {onnx_path.name} for {arch} failed: {detail}") from None
    return TvmBuild(arch, target, output, time.perf_counter() - start, timings)


@contextlib.contextmanager
def _native_stderr_quiet() -> Iterator[None]:
    """Send file descriptor 2 (where TVM's C++ logging writes) to a scratch file for the duration."""
    try:
        saved: int | None = os.dup(2)
    except OSError:  # no real stderr (embedded interpreters): nothing to silence
        saved = None
    if saved is None:
        yield
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def build_all(onnx_path: Path, out_dir: Path, input_shape: list[int], arches: tuple[str, ...] = ARCHES) -> dict[str, TvmBuild]:
    """One build per architecture at `out_dir/<arch>/model.so`; a missing linker or a failed build is recorded
    (`reason`), not raised, so the other architectures still build. A missing TVM raises (nothing can build)."""
    _require_tvm()
    builds = {}
    for arch in arches:
        target = target_for(arch)
        try:
            builds[arch] = build_onnx(onnx_path, out_dir / arch / "model.so", arch, input_shape, target)
        except EdgemtlError as exc:
            builds[arch] = TvmBuild(arch, target, reason=str(exc))
    return builds


def run_module(library: Path, inputs: np.ndarray) -> list[np.ndarray]:
    """Run a module built for THIS machine on a batch, one sample at a time (the build is batch 1).

    Returns one array per model output, each stacked over the batch.
    """
    _require_tvm()
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())
    per_sample = []
    for sample in np.ascontiguousarray(inputs, dtype=np.float32):
        result = vm["main"](tvm.runtime.tensor(sample[None]))
        outputs = [result] if hasattr(result, "numpy") else list(result)
        per_sample.append([o.numpy() for o in outputs])
    return [np.concatenate([s[i] for s in per_sample]) for i in range(len(per_sample[0]))]
