"""`edgemtl doctor`: which optional toolchains each target can use on this machine, and the exact command that adds
each one that is missing.

Each check is the one the flows themselves use (so doctor and compile never disagree). A missing toolchain never
fails a compile: the step it serves is skipped and says why. This lists them all in one place, before any compile.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Toolchain:
    name: str
    targets: tuple[str, ...]
    serves: str  # what a compile or profile does with it
    missing: Callable[[], str | None]  # None when present, else why not
    add: str  # the exact command (or the vendor's installer) that adds it

    def check(self) -> dict[str, object]:
        reason = self.missing()
        return {"toolchain": self.name, "targets": list(self.targets), "present": reason is None, "why_missing": reason,
                "serves": self.serves, "add": None if reason is None else self.add}


def _module(name: str) -> Callable[[], str | None]:
    return lambda: None if importlib.util.find_spec(name) is not None else f"python package {name!r} not importable"


def _program(name: str) -> Callable[[], str | None]:
    return lambda: None if shutil.which(name) else f"{name} not on PATH"


def _finn() -> str | None:
    from edgemtl.backends import finn

    return None if finn.finn_python(finn.DEFAULT_FINN_VENV) else f"no finn-plus venv at {finn.DEFAULT_FINN_VENV}"


def _deeploy() -> str | None:
    from edgemtl.backends import deeploy

    return None if deeploy.deeploy_python(deeploy.DEFAULT_DEEPLOY_VENV) else \
        f"no deeploy-pulp venv at {deeploy.DEFAULT_DEEPLOY_VENV}"


def _riscv() -> str | None:
    from edgemtl.backends.c import riscv_tools_missing

    return riscv_tools_missing()


def _tvm() -> str | None:
    from edgemtl.backends.tvm_build import tvm_missing

    return tvm_missing()


def _aarch64_cxx() -> str | None:
    from edgemtl.backends.tvm_build import cross_compiler_missing

    return cross_compiler_missing("aarch64")


def _emulated_board() -> str | None:
    from edgemtl.profile.emulated_board import board_dir_and_reason

    board, reason = board_dir_and_reason()
    return None if board is not None else reason


def _gap_sdk() -> str | None:
    return None if os.environ.get("GAP_SDK_HOME") else "GAP_SDK_HOME is not set (the GAP SDK's sourceme.sh sets it)"


TOOLCHAINS: tuple[Toolchain, ...] = (
    Toolchain("hls4ml, brevitas, qonnx", ("zcu104",), "QAT, QONNX export, HLS projects and their C simulation",
              _module("hls4ml"), "make setup (pyproject.toml pins them)"),
    Toolchain("g++", ("zcu104", "arm64", "gap9"), "hls4ml C simulation and testbench, TVM host modules, C on the host",
              _program("g++"), "apt-get install g++"),
    Toolchain("FINN (finn-plus venv)", ("zcu104",), "FINN's resource and fps estimates", _finn, "make finn-venv"),
    Toolchain("tclsh", ("zcu104",), "checks the Vivado block design script", _program("tclsh"), "apt-get install tcl"),
    Toolchain("Vitis HLS / Vivado", ("zcu104",), "synthesis, the bitstream (after edgemtl; see hw/zcu104/README.md)",
              _program("vitis_hls"), "AMD's Vitis 2024.2 installer (not packaged)"),
    Toolchain("RISC-V gcc, picolibc, qemu", ("gap9",), "the generated C under qemu rv32, bit for bit", _riscv,
              "apt-get install gcc-riscv64-unknown-elf picolibc-riscv64-unknown-elf qemu-system-misc"),
    Toolchain("Deeploy (deeploy-pulp venv)", ("gap9",), "Deeploy's tiled cluster code", _deeploy, "make deeploy-venv"),
    Toolchain("GAP9 SDK", ("gap9",), "GVSoC and board runs of the kit (after edgemtl; see hw/gap9/README.md)", _gap_sdk,
              "GreenWaves' gap_sdk (not packaged), then `source sourceme.sh`"),
    Toolchain("Apache TVM", ("arm64",), "TVM builds, meta-schedule tuning, RPC profiling", _tvm, "pip install -e '.[tvm]'"),
    Toolchain("aarch64 cross g++", ("arm64",), "TVM modules for the board", _aarch64_cxx,
              "apt-get install g++-aarch64-linux-gnu"),
    Toolchain("emulated arm64 board", ("arm64",), "`profile` without a board (timings labelled emulated)", _emulated_board,
              "apt-get install qemu-user-static && make emulated-arm64"),
)


def diagnose(target: str | None = None) -> list[dict[str, object]]:
    """Every toolchain (of one target, if given) with its status and, when missing, how to add it."""
    return [tool.check() for tool in TOOLCHAINS if target is None or target in tool.targets]
