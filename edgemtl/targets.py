"""Targets as data: `targets/*.toml` files parsed into typed `Target` objects.

A target says what the hardware is (compute units, clock, memory levels and sizes, precisions), which
toolchain and flow serve it, and how the device is reached. Adding a board is adding a file. Search
order: directories in `EDGEMTL_TARGETS_PATH` (os.pathsep-separated), then the repository's `targets/`.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgemtl.errors import EdgemtlError, validation_line
from edgemtl.resources import TARGETS_DIR

BUILTIN_TARGETS_DIR = TARGETS_DIR  # package data: an installed wheel has them too


class ComputeUnit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    kind: Literal["cpu", "gpu", "fpga-fabric", "dsp", "npu", "mcu-core", "cluster", "accelerator"]
    count: int = Field(0, ge=0, description="units of this kind; 0 = detect at run time")
    clock_mhz: float = Field(0, ge=0, description="0 = unknown or variable")
    isa: str = ""


class MemoryLevel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    level: Literal["on-chip", "off-chip", "storage"]
    size_bytes: int = Field(0, ge=0, description="0 = unbounded / whatever the host has")
    bandwidth_gbps: float = Field(0, ge=0)


class DeviceAccess(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reach: Literal["local", "rpc", "jtag", "serial", "none"]
    address: str = ""


class FabricLogic(BaseModel):
    """An FPGA part's programmable logic (its data sheet's resource table): what utilisation is a share of."""

    model_config = ConfigDict(extra="forbid")
    lut: int = Field(gt=0)
    ff: int = Field(gt=0)
    dsp: int = Field(gt=0)
    bram18: int = Field(gt=0)
    uram: int = Field(ge=0)


class Target(BaseModel):
    """One board: hardware facts plus the flow that compiles for it."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str
    flow: str
    toolchain: list[str] = Field(default_factory=list)
    precisions: list[str] = Field(min_length=1)
    device: DeviceAccess
    compute: list[ComputeUnit] = Field(min_length=1)
    memory: list[MemoryLevel] = Field(default_factory=list)
    part: str = ""  # FPGA part number or SoC name
    fabric: FabricLogic | None = None  # an FPGA part's logic: the one place its resource totals are written
    target_fps: list[float] = Field(default_factory=list)  # throughputs estimates are asked for (FPGA folding)
    # accuracy budget of a quantizing target: the relative metric loss a task may take by default (--max-drop overrides)
    max_drop: float | None = Field(None, gt=0, lt=1)
    source: str = ""  # the file it was read from (filled on load)

    @model_validator(mode="after")
    def _fpga_has_its_logic(self) -> "Target":
        if any(c.kind == "fpga-fabric" for c in self.compute) and self.fabric is None:
            raise ValueError("an fpga-fabric target needs a [fabric] table (lut, ff, dsp, bram18, uram of its part)")
        return self

    def summary(self) -> str:
        """One line of key facts for `edgemtl targets`."""
        units = ", ".join(f"{c.count or 'n'}x {c.name}" + (f" @{c.clock_mhz:g} MHz" if c.clock_mhz else "") for c in self.compute)
        memories = ", ".join(f"{m.name} {_size(m.size_bytes)}" for m in self.memory)
        budget = f"; max drop {self.max_drop:.0%}" if self.max_drop is not None else ""
        return f"{units}; {memories or 'memory n/a'}; {'/'.join(self.precisions)}{budget}; flow {self.flow}"


def _size(n: int) -> str:
    if n == 0:
        return "host-sized"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} B"


def target_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("EDGEMTL_TARGETS_PATH", "").split(os.pathsep) if p]
    return [*extra, BUILTIN_TARGETS_DIR]


def read_target(path: Path) -> Target:
    """Parse one target file; an invalid file is one clear error line naming the file and field."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        return Target.model_validate({**raw, "source": str(path)})
    except tomllib.TOMLDecodeError as exc:
        raise EdgemtlError(f"target file {path} is not valid TOML: {exc}") from None
    except ValidationError as exc:
        raise EdgemtlError(f"target file {path} is invalid: {validation_line(exc)}") from None


def available_targets() -> dict[str, Path]:
    """Target name -> file; earlier directories win."""
    found: dict[str, Path] = {}
    for directory in target_dirs():
        for path in sorted(directory.glob("*.toml")) if directory.is_dir() else []:
            found.setdefault(path.stem, path)
    return found


def load_target(name: str) -> Target:
    """The target called `name`; an unknown name lists the valid ones."""
    files = available_targets()
    if name not in files:
        raise EdgemtlError(f"unknown target {name!r}; available: {', '.join(sorted(files)) or 'none'}")
    target = read_target(files[name])
    if target.name != name:
        raise EdgemtlError(f"target file {files[name]} declares name {target.name!r}; rename the file or the name")
    return target
