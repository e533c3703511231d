"""`edgemtl toolchain`: the optional toolchains by name and how each is installed (the Makefile, .ci/run and
`edgemtl doctor` go through it).

Each toolchain is a plan of commands: Debian packages (one `apt-get update` and `apt-get install` for every name
given), the venvs of the toolchains whose pins clash with the main environment (FINN, Deeploy: their own venvs,
called as subprocesses), the main venv's optional extras (TVM, from edgemtl's own metadata), and the emulated arm64
board's build script. `install` runs the plan (steps already done are skipped: packages dpkg has, a venv whose stamp
matches its plan); `--print` prints it instead. apt needs root: without root or sudo it is one error line with the
exact command to run as root.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from edgemtl.errors import EdgemtlError

Command = tuple[str, ...]
APT_INSTALL = ("apt-get", "install", "-y", "-qq", "--no-install-recommends")
STAMP = ".installed"  # in a venv: the hash of the plan that built it
# torch is pinned to the CPU build in every venv (anything else pulls CUDA); the local wheel index serves 2.13.0.
TORCH = "torch==2.13.0"
FINN_PINS = (TORCH, "setuptools==80.10.2", "psutil", "bitstring>=4.3.1,<4.4", "click>=8.1.8,<9",
             "cmake>=4.0.3,<4.1", "mashumaro[yaml]>=3.15,<4", "matplotlib>=3.10.9,<3.11", "mip==1.17.0",
             "numpy>=2.4.6,<2.5", "onnx==1.21.0", "onnx-ir>=0.1.15", "onnx-passes>=0.4.0", "onnxoptimizer>=0.4.2,<0.5",
             "onnxruntime==1.25.1", "onnxscript>=0.7.0", "pandas>=2.3.1,<2.4", "protobuf==5.29.6", "pybind11==3.0.1",
             "pydantic>2.0", "pyyaml>=6.0.2,<6.1", "qonnx==1.0.0", "rich>=13.9.4,<14", "scikit-learn>=1.7.2,<1.8",
             "scipy>=1.17.0,<1.18", "termcolor>=2.5,<3", "dependencies==2.0.1", "packaging", "sympy",
             "typing-extensions", "unfoldNd")


@dataclass(frozen=True)
class Toolchain:
    """One installable toolchain: its Debian packages, then its own commands (a venv, a script)."""

    name: str
    what: str  # one line: what it adds and what uses it
    missing: Callable[[], str | None]  # None when present, else why not (the check the flows use)
    apt: tuple[str, ...] = ()
    commands: Callable[[], list[Command]] = lambda: []
    venv: Callable[[], Path] | None = None  # the commands build this venv; its stamp records them

    def install_command(self) -> str:
        return f"edgemtl toolchain install {self.name}"


# --- the checks (the ones the flows and tests use, so `list`, doctor and a compile agree) ---------------------------

def _programs(*names: str) -> Callable[[], str | None]:
    def missing() -> str | None:
        absent = [name for name in names if shutil.which(name) is None]
        return f"{', '.join(absent)} not on PATH" if absent else None
    return missing


def _riscv() -> str | None:
    from edgemtl.backends.c import riscv_tools_missing

    return riscv_tools_missing()


def _aarch64() -> str | None:
    from edgemtl.backends.tvm_build import cross_compiler_missing

    return cross_compiler_missing("aarch64") or _programs("qemu-aarch64-static")()


def _finn() -> str | None:
    from edgemtl.backends import finn

    return None if finn.finn_python(finn.DEFAULT_FINN_VENV) else f"no finn-plus venv at {finn.DEFAULT_FINN_VENV}"


def _deeploy() -> str | None:
    from edgemtl.backends import deeploy

    return None if deeploy.deeploy_python(deeploy.DEFAULT_DEEPLOY_VENV) else \
        f"no deeploy-pulp venv at {deeploy.DEFAULT_DEEPLOY_VENV}"


def _tvm() -> str | None:
    from edgemtl.backends.tvm_build import tvm_missing

    return tvm_missing()


def _emulated_board() -> str | None:
    from edgemtl.profile.emulated_board import board_dir_and_reason

    board, reason = board_dir_and_reason()
    return None if board is not None else reason


# --- what each runs ---------------------------------------------------------------------------------------------------

def _finn_venv() -> Path:
    from edgemtl.backends.finn import DEFAULT_FINN_VENV

    return DEFAULT_FINN_VENV


def _deeploy_venv() -> Path:
    from edgemtl.backends.deeploy import DEFAULT_DEEPLOY_VENV

    return DEFAULT_DEEPLOY_VENV


def _venv_commands(venv: Path, *installs: Command, check: str) -> list[Command]:
    python = str(venv / "bin" / "python")
    pip = (python, "-m", "pip", "install", "-q")
    return [(sys.executable, "-m", "venv", str(venv)), (*pip, "--upgrade", "pip"),
            *((*pip, *args) for args in installs), (python, "-c", check)]


def _finn_commands() -> list[Command]:
    # finn-plus and brevitas without their declared pins (they clash), then what FINN's estimate-only build needs
    return _venv_commands(_finn_venv(), (TORCH,), ("--no-deps", "finn-plus==1.6.1", "brevitas==0.13.0"), FINN_PINS,
                          check="import torch, finn.builder.build_dataflow_config; "
                                "assert torch.__version__.startswith('2.13.0+cpu'), torch.__version__")


def _deeploy_commands() -> list[Command]:
    # deeploy-pulp pins numpy<2 and protobuf 4.23. It defaults to the MiniMalloc allocator, an external binary;
    # edgemtl uses TetrisRandom, pure Python. No C kernel library comes with it.
    return _venv_commands(_deeploy_venv(), ("deeploy-pulp==0.2.1",),
                          check="import numpy, Deeploy.Targets.PULPOpen.Platform; "
                                "assert numpy.__version__.startswith('1.'), numpy.__version__")


def extra_requirements(extra: str) -> list[str]:
    """The pinned requirements of one of edgemtl's extras, read from its installed metadata (pyproject.toml)."""
    found = []
    for text in metadata.requires("edgemtl") or []:
        requirement, _, marker = text.partition(";")
        if marker.replace(" ", "").replace("'", '"') == f'extra=="{extra}"':
            found.append(requirement.strip())
    if not found:
        raise EdgemtlError(f"edgemtl's metadata names no [{extra}] extra; reinstall edgemtl (pip install -e .)")
    return found


def _tvm_commands() -> list[Command]:
    return [(sys.executable, "-m", "pip", "install", "-q", *extra_requirements("tvm"))]


def _board_script() -> Path:
    from edgemtl.resources import HW_DIR

    return HW_DIR / "arm64" / "make_emulated_board.sh"


def _board_commands() -> list[Command]:
    from edgemtl.profile.emulated_board import default_board_path

    return [("env", f"HOST_PYTHON={sys.executable}", "bash", str(_board_script()), str(default_board_path()))]


TOOLCHAINS: dict[str, Toolchain] = {tool.name: tool for tool in (
    Toolchain("riscv", "gap9: RISC-V gcc + picolibc + qemu-system-riscv32, the generated C bit for bit under rv32",
              _riscv, apt=("gcc-riscv64-unknown-elf", "picolibc-riscv64-unknown-elf", "qemu-system-misc")),
    Toolchain("aarch64", "arm64: the aarch64 cross g++ that links TVM modules for the board, qemu-user to run them",
              _aarch64, apt=("g++-aarch64-linux-gnu", "qemu-user-static")),
    Toolchain("tcl", "zcu104: tclsh, to check the Vivado / Vitis Tcl scripts' syntax", _programs("tclsh"),
              apt=("tcl",)),
    Toolchain("g++", "the host C++ compiler: hls4ml C simulation, TVM host modules, C on the host",
              _programs("g++"), apt=("g++",)),
    Toolchain("finn", "zcu104: FINN's resource and fps estimates (finn-plus in its own venv)", _finn,
              commands=_finn_commands, venv=_finn_venv),
    Toolchain("deeploy", "gap9: Deeploy's tiled cluster code (deeploy-pulp in its own venv)", _deeploy,
              commands=_deeploy_commands, venv=_deeploy_venv),
    Toolchain("tvm", "arm64: Apache TVM in this venv (edgemtl's [tvm] extra): builds, tuning, RPC profiling", _tvm,
              commands=_tvm_commands),
    Toolchain("emulated-arm64", "arm64: an emulated board (aarch64 Python, TVM runtime, ONNX Runtime under qemu-user) "
              "for `edgemtl profile` without a board; its timings are EMULATED", _emulated_board,
              apt=("qemu-user-static", "g++-aarch64-linux-gnu"), commands=_board_commands),
    Toolchain("chromium", "tests: headless Chromium for the report pages' browser check", _programs("chromium"),
              apt=("chromium",)),
)}


def lookup(names: list[str]) -> list[Toolchain]:
    unknown = [name for name in names if name not in TOOLCHAINS]
    if unknown:
        raise EdgemtlError(f"unknown toolchain {unknown[0]!r}; known: {', '.join(TOOLCHAINS)}")
    return [TOOLCHAINS[name] for name in dict.fromkeys(names)]


def status() -> list[dict[str, object]]:
    """Every installable toolchain: present or missing (and why), and the command that installs it."""
    rows = []
    for tool in TOOLCHAINS.values():
        reason = tool.missing()
        rows.append({"name": tool.name, "present": reason is None, "why_missing": reason, "what": tool.what,
                     "install": tool.install_command()})
    return rows


# --- planning and running ---------------------------------------------------------------------------------------------

def _sudo() -> tuple[str, ...] | None:
    """() as root, ("sudo",) where sudo exists, else None (apt cannot run)."""
    if os.geteuid() == 0:
        return ()
    return ("sudo",) if shutil.which("sudo") else None


def apt_commands(packages: list[str], sudo: tuple[str, ...] = ()) -> list[Command]:
    return [(*sudo, "apt-get", "update", "-qq"),
            (*sudo, "env", "DEBIAN_FRONTEND=noninteractive", *APT_INSTALL, *packages)]


def _packages(tools: list[Toolchain]) -> list[str]:
    return list(dict.fromkeys(p for tool in tools for p in tool.apt))


def plan(tools: list[Toolchain]) -> list[Command]:
    """The commands `install` runs for these toolchains on a machine that has none of them, in order (one apt call
    for all their packages, with sudo when not root)."""
    packages = _packages(tools)
    commands = apt_commands(packages, _sudo() or ()) if packages else []
    for tool in tools:
        commands += tool.commands()
    return commands


def _packages_missing(packages: list[str]) -> list[str]:
    """The packages dpkg does not have installed (each package checked, not just a command it ships)."""
    if shutil.which("dpkg-query") is None:
        return packages
    missing = []
    for package in packages:
        done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
        if done.returncode != 0 or not done.stdout.endswith("install ok installed"):
            missing.append(package)
    return missing


def _stamp(commands: list[Command]) -> str:
    return hashlib.sha256(repr(commands).encode()).hexdigest()[:16]


def _run(command: Command) -> None:
    print(f"+ {shlex.join(command)}", file=sys.stderr, flush=True)
    done = subprocess.run(command, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise EdgemtlError(f"`{shlex.join(command)}` failed with exit status {done.returncode} (its output is above)")


def install(tools: list[Toolchain]) -> list[str]:
    """Install each toolchain whose steps are not done yet; returns one line per toolchain saying where it stands."""
    packages = _packages_missing(_packages(tools))
    if packages:
        if shutil.which("apt-get") is None:
            raise EdgemtlError(f"the Debian packages {' '.join(packages)} are missing and this system has no apt-get; "
                               "install their equivalents with its package manager")
        sudo = _sudo()
        if sudo is None:
            as_root = " && ".join(shlex.join(c) for c in apt_commands(packages))
            raise EdgemtlError(f"installing {' '.join(packages)} needs root and there is no sudo: as root, run "
                               f"`{as_root}`, then this command again")
        for command in apt_commands(packages, sudo):
            _run(command)
    lines = []
    for tool in tools:
        commands = tool.commands()
        stamp = tool.venv() / STAMP if tool.venv is not None else None
        if stamp is not None and stamp.is_file() and stamp.read_text().strip() == _stamp(commands):
            lines.append(f"{tool.name}: up to date ({stamp.parent})")
            continue
        for command in commands:
            _run(command)
        if stamp is not None:
            stamp.write_text(_stamp(commands) + "\n")
        importlib.invalidate_caches()  # a package pip just added to this venv
        reason = tool.missing()
        if reason is not None:
            raise EdgemtlError(f"{tool.name}: installed, yet still missing: {reason}")
        lines.append(f"{tool.name}: present")
    return lines
