"""Build and run generated C: natively with the host gcc, and for rv32imac bare metal under qemu.

Why: every C build is checked against `intgraph.run_reference` bit for bit, and the rv32 run gives
*simulated* per-layer retired-instruction counts (qemu `-icount shift=0`, minstret; not cycles, not GAP9
timing: no cluster, no DMA, no SIMD). Every subprocess has a timeout; a missing tool is an EdgemtlError
naming the packages that provide it.

Bare-metal image: picolibc's crt0 with semihosting (`--oslib=semihost --crt0=semihost`, stdout and exit
status through the debugger interface), its `picolibc.ld` with flash at 0x80000000 (where qemu's `virt`
machine starts executing with `-bios none`) and RAM above it.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgemtl.backends.c.generate import CSources, generate_c
from edgemtl.backends.c.harness import write_harness
from edgemtl.errors import EdgemtlError
from edgemtl.model.intgraph import RANGES, IntGraph

HOST_CC = "gcc"
RISCV_CC = "riscv64-unknown-elf-gcc"
QEMU = "qemu-system-riscv32"
RISCV_PACKAGES = ("edgemtl toolchain install riscv, or: sudo apt-get install gcc-riscv64-unknown-elf "
                  "picolibc-riscv64-unknown-elf qemu-system-misc")
WARNINGS = ["-std=c99", "-Wall", "-Wextra", "-Werror"]
RISCV_ARCH = ["-march=rv32imac", "-mabi=ilp32"]
RISCV_LINK = ["--specs=picolibc.specs", "--oslib=semihost", "--crt0=semihost", "-DPICOLIBC_INTEGER_PRINTF_SCANF",
              "-ffunction-sections", "-fdata-sections",
              "-Wl,--defsym=__flash=0x80000000", "-Wl,--defsym=__flash_size=0x01000000",
              "-Wl,--defsym=__ram=0x81000000", "-Wl,--defsym=__ram_size=0x07000000",
              "-Wl,--defsym=__stack_size=0x10000"]
# -nographic's job split out: no display, no monitor or UART; semihosting console on our stdout.
QEMU_ARGS = ["-M", "virt", "-m", "128M", "-bios", "none", "-display", "none", "-monitor", "none", "-serial", "none",
             "-chardev", "stdio,id=semihost", "-semihosting-config", "enable=on,target=native,chardev=semihost",
             "-icount", "shift=0"]


@dataclass
class QemuRun:
    """Outputs (N, *shape) and simulated retired instructions: per layer (N, layers), per sample (N,)."""

    outputs: np.ndarray
    layer_instructions: np.ndarray
    total_instructions: np.ndarray
    elf: Path


def find_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        hint = f"install it: {RISCV_PACKAGES}" if name != HOST_CC else "install a C compiler (sudo apt-get install gcc)"
        raise EdgemtlError(f"{name} is not on PATH; {hint}")
    return path


def riscv_tools_missing() -> str | None:
    """Why a qemu rv32 run cannot happen here (None when it can): for tests to skip on."""
    for name in (RISCV_CC, QEMU):
        if shutil.which(name) is None:
            return f"{name} is not on PATH ({RISCV_PACKAGES})"
    found = subprocess.run([RISCV_CC, "-print-file-name=picolibc.specs"], capture_output=True, text=True, timeout=30)
    if not Path(found.stdout.strip()).is_absolute():
        return f"picolibc for {RISCV_CC} is missing ({RISCV_PACKAGES})"
    return None


def _run(command: list[str], timeout_s: float, what: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=cwd,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise EdgemtlError(f"{what} took more than {timeout_s:g} s and was stopped") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-20:]
        raise EdgemtlError(f"{what} failed (exit {done.returncode}): " + " | ".join(tail))
    return done


def as_samples(graph: IntGraph, q_inputs: np.ndarray) -> np.ndarray:
    """(N, *input shape) integers, checked against the input dtype's range, as int8 / uint8."""
    info = graph.tensors[graph.input]
    q_inputs = np.asarray(q_inputs)
    if q_inputs.ndim != len(info.shape) + 1 or list(q_inputs.shape[1:]) != list(info.shape) or len(q_inputs) == 0:
        raise EdgemtlError(f"task {graph.task!r}: inputs have shape {q_inputs.shape}, expected (N, {', '.join(map(str, info.shape))})")
    lo, hi = RANGES[info.dtype]
    if not np.issubdtype(q_inputs.dtype, np.integer) or q_inputs.min() < lo or q_inputs.max() > hi:
        raise EdgemtlError(f"task {graph.task!r}: inputs must be integers in [{lo}, {hi}] ({info.dtype})")
    return q_inputs.astype(np.int8 if info.dtype == "int8" else np.uint8)


def _decode(graph: IntGraph, raw: bytes, samples: int) -> np.ndarray:
    info = graph.tensors[graph.output]
    values = np.frombuffer(raw, dtype=np.int8 if info.dtype == "int8" else np.uint8)
    if values.size != samples * info.elements:
        raise EdgemtlError(f"task {graph.task!r}: the C program wrote {values.size} output bytes, expected {samples * info.elements}")
    return values.astype(np.int64).reshape(samples, *info.shape)


def _c_files(folder: Path) -> list[str]:
    return sorted(str(path) for path in folder.glob("*.c"))


def build_host(graph: IntGraph, workdir: Path, opt: str = "-O2", timeout_s: float = 120.0) -> Path:
    """Generate the sources and the host harness into `workdir` and compile them (warnings are errors)."""
    workdir = Path(workdir)
    sources = generate_c(graph, workdir / "src")
    write_harness(sources, workdir / "host")
    exe = workdir / "host" / "network"
    _run([find_tool(HOST_CC), *WARNINGS, opt, "-I", str(sources.folder), *_c_files(sources.folder),
          *_c_files(workdir / "host"), "-o", str(exe)], timeout_s, f"host build of task {graph.task!r}")
    return exe


def run_on_host(graph: IntGraph, q_inputs: np.ndarray, workdir: Path, opt: str = "-O2",
                timeout_s: float = 120.0) -> np.ndarray:
    """Outputs of the host-compiled C for integer inputs (N, ...), as int64 (N, *output shape)."""
    samples = as_samples(graph, q_inputs)
    exe = build_host(graph, workdir, opt, timeout_s)
    inputs, outputs = exe.parent / "inputs.bin", exe.parent / "outputs.bin"
    inputs.write_bytes(samples.tobytes())
    _run([str(exe), str(inputs), str(outputs)], timeout_s, f"host run of task {graph.task!r}")
    return _decode(graph, outputs.read_bytes(), len(samples))


def build_riscv(graph: IntGraph, q_inputs: np.ndarray, workdir: Path, opt: str = "-O2",
                timeout_s: float = 120.0) -> tuple[CSources, Path]:
    """Generate the sources and a bare-metal harness holding `q_inputs`; cross-compile for rv32imac."""
    samples = as_samples(graph, q_inputs)
    reason = riscv_tools_missing()
    if reason:
        raise EdgemtlError(f"cannot build for rv32: {reason}")
    workdir = Path(workdir)
    sources = generate_c(graph, workdir / "src")
    write_harness(sources, workdir / "riscv", samples)
    elf = workdir / "riscv" / "network.elf"
    _run([find_tool(RISCV_CC), *WARNINGS, opt, *RISCV_ARCH, *RISCV_LINK, "-I", str(sources.folder),
          *_c_files(sources.folder), *_c_files(workdir / "riscv"), "-o", str(elf)], timeout_s,
         f"rv32imac build of task {graph.task!r}")
    return sources, elf


def _parse_qemu(graph: IntGraph, text: str, samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    layers = np.zeros((samples, len(graph.nodes)), dtype=np.int64)
    totals = np.zeros(samples, dtype=np.int64)
    raw: dict[int, bytes] = {}
    for line in text.splitlines():
        fields = line.split()
        if fields[:1] == ["out"]:
            raw[int(fields[1])] = bytes.fromhex(fields[2] if len(fields) > 2 else "")
        elif fields[:1] == ["layer"]:
            layers[int(fields[1]), int(fields[2])] = int(fields[3])
        elif fields[:1] == ["total"]:
            totals[int(fields[1])] = int(fields[2])
    if "done" not in text.split() or sorted(raw) != list(range(samples)):
        raise EdgemtlError(f"task {graph.task!r}: the rv32 program stopped early; its output ends: {text[-300:]!r}")
    return _decode(graph, b"".join(raw[s] for s in range(samples)), samples), layers, totals


def run_on_qemu(graph: IntGraph, q_inputs: np.ndarray, workdir: Path, timeout_s: float = 120.0,
                opt: str = "-O2") -> QemuRun:
    """Cross-compile with `q_inputs` as compiled-in vectors, run under qemu-system-riscv32, parse stdout."""
    _, elf = build_riscv(graph, q_inputs, workdir, opt, timeout_s)
    done = _run([find_tool(QEMU), *QEMU_ARGS, "-kernel", str(elf)], timeout_s, f"qemu run of task {graph.task!r}")
    outputs, layers, totals = _parse_qemu(graph, done.stdout, len(q_inputs))
    return QemuRun(outputs=outputs, layer_instructions=layers, total_instructions=totals, elf=elf)
