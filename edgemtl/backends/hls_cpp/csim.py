"""C simulation of a generated HLS project with plain g++ and the ap_int.h headers hls4ml ships: bit-exactness
checks without a Vitis installation.

Asserts stay on (no -DNDEBUG) by default: the ap_types then abort on an out-of-range bit access ("Attempting to
read bit beyond MSB") and print WARNING / ERROR lines for other misuse, which `run_csim` turns into an error, so a
width the generator got wrong fails loudly instead of wrapping silently. They cost little here: the kernels use
arithmetic, not bit access, on widths <= 64 bits (ap_private's single-word path). `ndebug=True` drops them.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgemtl.backends.c.build import _run
from edgemtl.backends.hls_cpp.generate import HlsSources
from edgemtl.backends.hls_cpp.multitask import MultiTaskSources, as_input_bytes
from edgemtl.errors import EdgemtlError, VerificationError
from edgemtl.model.intgraph import RANGES

COMPILER = "g++"
# HLS style g++ would flag: pragmas, loop labels (HLS names loops by them) and ap_private's default constructor, whose
# unset word g++ reports as uninitialized wherever it inlines one
FLAGS = ["-std=c++14", "-O2", "-Wall", "-Wextra", "-Werror", "-Wno-unknown-pragmas", "-Wno-unused-label",
         "-Wno-uninitialized", "-Wno-maybe-uninitialized"]
NUMPY_TYPE = {"int8": np.int8, "uint8": np.uint8}


def ap_types_dir() -> Path:
    """hls4ml's copy of Xilinx's ap_types headers (<site-packages>/hls4ml/templates/vivado/ap_types), found without
    importing hls4ml."""
    spec = importlib.util.find_spec("hls4ml")
    if spec is None or spec.origin is None:
        raise EdgemtlError("hls4ml is not installed: the HLS C simulation takes its ap_int.h headers from it "
                           "(pip install hls4ml==1.3.0, an edgemtl dependency)")
    folder = Path(spec.origin).parent / "templates" / "vivado" / "ap_types"
    if not (folder / "ap_int.h").is_file():
        raise EdgemtlError(f"hls4ml at {Path(spec.origin).parent} has no ap_types/ap_int.h; reinstall hls4ml==1.3.0")
    return folder


def _compiler() -> str:
    path = shutil.which(COMPILER)
    if path is None:
        raise EdgemtlError(f"{COMPILER} is not on PATH; install a C++ compiler (sudo apt-get install g++)")
    return path


def _compile(unity: Path, exe: Path, include: Path, timeout_s: float, defines: Sequence[str], ndebug: bool,
             what: str) -> Path:
    command = [_compiler(), *FLAGS, *(["-DNDEBUG"] if ndebug else []), *(f"-D{d}" for d in defines),
               "-I", str(include), "-isystem", str(ap_types_dir()), str(unity), "-o", str(exe)]
    _run(command, timeout_s, what)
    return exe


def build_csim(sources: HlsSources, timeout_s: float = 600, defines: Sequence[str] = (), ndebug: bool = False) -> Path:
    """Compile the test bench and the top function (warnings are errors; `defines` e.g. EMH_MOE_TRACE) as one
    translation unit: ap_int.h, parsed once instead of twice, is most of a small project's build time."""
    name = "_".join([sources.top, *(d.split("=")[0].lower() for d in defines)])
    folder = sources.folder / "csim"
    folder.mkdir(exist_ok=True)
    unity = folder / f"{name}.cpp"
    unity.write_text(f'#include "{(sources.folder / f"{sources.top}_test.cpp").resolve()}"\n'
                     f'#include "{(sources.folder / "firmware" / f"{sources.top}.cpp").resolve()}"\n')
    return _compile(unity, folder / name, sources.folder / "firmware", timeout_s, defines, ndebug,
                    f"C simulation build of {sources.top}")


def build_csim_batch(projects: Sequence[HlsSources], folder: Path, timeout_s: float = 600,
                     defines: Sequence[str] = (), ndebug: bool = False) -> Path:
    """One C simulation binary for several projects (distinct tops): `exe TOP INPUTS.bin OUTPUTS.bin` runs TOP's
    test bench. One translation unit for all, so ap_int.h and the shared kernel templates compile once."""
    tops = [p.top for p in projects]
    if len(set(tops)) != len(tops):
        raise EdgemtlError(f"a batched C simulation needs distinct tops, got {tops}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    includes = "".join(f'#include "{(p.folder / f"{p.top}_test.cpp").resolve()}"\n'
                       f'#include "{(p.folder / "firmware" / f"{p.top}.cpp").resolve()}"\n' for p in projects)
    dispatch = "".join(f'    if (std::strcmp(argv[1], "{top}") == 0) {{\n        return {top}_test(argc - 1, argv + 1);\n    }}\n'
                       for top in tops)
    unity = folder / "batch.cpp"
    unity.write_text(f"#define EDGEMTL_TB_NO_MAIN\n{includes}\nint main(int argc, char **argv) {{\n"
                     f'    if (argc < 2) {{\n        return 2;\n    }}\n{dispatch}    std::fprintf(stderr, "no top %s\\n", argv[1]);\n'
                     "    return 2;\n}\n")
    return _compile(unity, folder / "batch", projects[0].folder / "firmware", timeout_s, defines, ndebug,
                    f"batched C simulation build of {len(projects)} projects")


def as_samples(sources: HlsSources, q_inputs: np.ndarray) -> np.ndarray:
    """(N, *input shape) integers in the input dtype's range, as the bytes the test bench reads."""
    q_inputs = np.asarray(q_inputs)
    lo, hi = RANGES[sources.input_dtype]
    if q_inputs.ndim != len(sources.input_shape) + 1 or list(q_inputs.shape[1:]) != sources.input_shape or not len(q_inputs):
        raise EdgemtlError(f"{sources.top}: inputs have shape {q_inputs.shape}, expected (N, {', '.join(map(str, sources.input_shape))})")
    if not np.issubdtype(q_inputs.dtype, np.integer) or q_inputs.min() < lo or q_inputs.max() > hi:
        raise EdgemtlError(f"{sources.top}: inputs must be integers in [{lo}, {hi}] ({sources.input_dtype})")
    return q_inputs.astype(NUMPY_TYPE[sources.input_dtype])


def write_tb_data(sources: HlsSources, q_inputs: np.ndarray, expected: np.ndarray | None = None) -> Path:
    """tb_data/inputs.bin (and expected.bin) for build_prj.tcl's C simulation; returns the folder."""
    folder = sources.folder / "tb_data"
    folder.mkdir(exist_ok=True)
    (folder / "inputs.bin").write_bytes(as_samples(sources, q_inputs).tobytes())
    if expected is not None:
        (folder / "expected.bin").write_bytes(np.asarray(expected).astype(NUMPY_TYPE[sources.output_dtype]).tobytes())
    return folder


def _refuse_complaints(top: str, stderr: str) -> None:
    """The ap_types' WARNING / ERROR lines (a width the generator got wrong) fail the check."""
    complaints = [line for line in stderr.splitlines() if line.startswith(("WARNING:", "ERROR:"))]
    if complaints:
        raise VerificationError(f"{top}: the ap_types complained during C simulation: {complaints[0]}")


def run_binary(sources: HlsSources, exe: Path, q_inputs: np.ndarray, workdir: Path, timeout_s: float = 600,
               batched: bool = False) -> tuple[np.ndarray, str]:
    """Run a built C simulation (a `build_csim_batch` one with `batched`) on integer inputs (N, ...): outputs as int64
    (N, *output shape), and its stderr."""
    samples = as_samples(sources, q_inputs)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    inputs, outputs = workdir / "inputs.bin", workdir / "outputs.bin"
    inputs.write_bytes(samples.tobytes())
    done = _run([str(exe), *([sources.top] if batched else []), str(inputs), str(outputs)], timeout_s,
                f"C simulation of {sources.top}")
    _refuse_complaints(sources.top, done.stderr)
    values = np.frombuffer(outputs.read_bytes(), dtype=NUMPY_TYPE[sources.output_dtype])
    if values.size != len(samples) * sources.output_elements:
        raise EdgemtlError(f"{sources.top}: the C simulation wrote {values.size} values, expected "
                           f"{len(samples) * sources.output_elements}")
    return values.astype(np.int64).reshape(len(samples), *sources.output_shape), done.stderr


def run_csim(sources: HlsSources, q_inputs: np.ndarray, workdir: Path, timeout_s: float = 600,
             exe: Path | None = None) -> np.ndarray:
    """Build (unless `exe` is given) and run the C simulation: outputs as int64 (N, *output shape)."""
    exe = exe if exe is not None else build_csim(sources, timeout_s)
    return run_binary(sources, exe, q_inputs, workdir, timeout_s)[0]


def run_multitask_binary(sources: MultiTaskSources, exe: Path, q_inputs: np.ndarray, tasks: Sequence[str],
                         workdir: Path, timeout_s: float = 600) -> tuple[list[np.ndarray], str]:
    """Run a built C simulation of a design serving every task (multitask.py): sample i as task tasks[i]. Returns
    each sample's output as int64 in its task's shape, and the stderr."""
    if len(tasks) != len(q_inputs) or any(t not in sources.tasks for t in tasks):
        raise EdgemtlError(f"{sources.top}: one task of {sources.tasks} per sample, got {list(tasks)}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    inputs, ids, outputs = workdir / "inputs.bin", workdir / "tasks.bin", workdir / "outputs.bin"
    inputs.write_bytes(as_input_bytes(sources, q_inputs))
    ids.write_bytes(bytes(sources.tasks.index(t) for t in tasks))
    done = _run([str(exe), str(inputs), str(ids), str(outputs)], timeout_s, f"C simulation of {sources.top}")
    _refuse_complaints(sources.top, done.stderr)
    raw, results, offset = outputs.read_bytes(), [], 0
    for task in tasks:
        size = sources.output_elements(task)
        values = np.frombuffer(raw[offset:offset + size], dtype=NUMPY_TYPE[sources.output_dtypes[task]])
        if values.size != size:
            raise EdgemtlError(f"{sources.top}: the C simulation wrote fewer values than {len(tasks)} samples need")
        results.append(values.astype(np.int64).reshape(sources.output_shapes[task]))
        offset += size
    return results, done.stderr
