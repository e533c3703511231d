"""`edgemtl doctor`: which optional toolchains each target can use on this machine, and the exact command that adds
each one that is missing (`edgemtl toolchain install NAME` for those edgemtl installs: toolchain.py).

Each check is the one the flows themselves use (so doctor and compile never disagree). A missing toolchain never
fails a compile: the step it serves is skipped and says why. This lists them all in one place, before any compile.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from edgemtl import toolchain


@dataclass(frozen=True)
class Entry:
    """One optional toolchain a target can use, as doctor lists it."""

    name: str
    targets: tuple[str, ...]
    serves: str  # what a compile or profile does with it
    installer: str | None  # its name in `edgemtl toolchain install`, whose check doctor uses too
    add: str = ""  # otherwise: the exact command (or the vendor's installer) that adds it
    check: Callable[[], str | None] | None = None  # otherwise: None when present, else why not

    def row(self) -> dict[str, object]:
        installable = toolchain.TOOLCHAINS[self.installer] if self.installer else None
        reason = installable.missing() if installable else self.check() if self.check else None
        add = installable.install_command() if installable else self.add
        return {"toolchain": self.name, "targets": list(self.targets), "present": reason is None, "why_missing": reason,
                "serves": self.serves, "add": None if reason is None else add}


def _hls4ml() -> str | None:
    return None if importlib.util.find_spec("hls4ml") is not None else "python package 'hls4ml' not importable"


def _vitis() -> str | None:
    return None if shutil.which("vitis_hls") else "vitis_hls not on PATH"


def _gap_sdk() -> str | None:
    return None if os.environ.get("GAP_SDK_HOME") else "GAP_SDK_HOME is not set (the GAP SDK's sourceme.sh sets it)"


ENTRIES: tuple[Entry, ...] = (
    Entry("hls4ml, brevitas, qonnx", ("zcu104",), "QAT, QONNX export, HLS projects and their C simulation", None,
          "make setup (pyproject.toml pins them)", _hls4ml),
    Entry("g++", ("zcu104", "arm64", "gap9"), "hls4ml C simulation and testbench, TVM host modules, C on the host",
          "g++"),
    Entry("FINN (finn-plus venv)", ("zcu104",), "FINN's resource and fps estimates", "finn"),
    Entry("tclsh", ("zcu104",), "checks the Vivado block design script", "tcl"),
    Entry("Vitis HLS / Vivado", ("zcu104",), "synthesis, the bitstream (after edgemtl; see hw/zcu104/README.md)",
          None, "AMD's Vitis 2024.2 installer (not packaged)", _vitis),
    Entry("RISC-V gcc, picolibc, qemu", ("gap9",), "the generated C under qemu rv32, bit for bit", "riscv"),
    Entry("Deeploy (deeploy-pulp venv)", ("gap9",), "Deeploy's tiled cluster code", "deeploy"),
    Entry("GAP9 SDK", ("gap9",), "GVSoC and board runs of the kit (after edgemtl; see hw/gap9/README.md)", None,
          "GreenWaves' gap_sdk (not packaged), then `source sourceme.sh`", _gap_sdk),
    Entry("Apache TVM", ("arm64",), "TVM builds, meta-schedule tuning, RPC profiling", "tvm"),
    Entry("aarch64 cross g++, qemu-user", ("arm64",), "TVM modules for the board", "aarch64"),
    Entry("emulated arm64 board", ("arm64",), "`profile` without a board (timings labelled emulated)",
          "emulated-arm64"),
)


def diagnose(target: str | None = None) -> list[dict[str, object]]:
    """Every toolchain (of one target, if given) with its status and, when missing, how to add it."""
    return [tool.row() for tool in ENTRIES if target is None or target in tool.targets]
