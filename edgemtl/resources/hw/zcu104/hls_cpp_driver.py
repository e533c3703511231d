"""PYNQ driver for an edgemtl HLS C++ overlay on the ZCU104 (runs on the board; needs numpy and pynq there).

The overlay comes from hls_cpp_design.tcl: an HLS C++ top (mixture-of-experts models), cell `<top>_0`, either one
task's (tasks/<task>/hls) or the design serving every task (switchable/hls), whose input and output live in DDR.
The IP reads the input through m_axi_gmem0 and writes the output through m_axi_gmem1 at the physical addresses the
PS writes into its s_axi_control registers; ap_start (bit 0 of the control register at 0x00) starts one sample,
ap_done (bit 1) says it finished. No DMA, no stream layout: the
buffers hold the tensors as the C++ arrays do, one int8 / uint8 per value, CHW (row-major) order.

`io.json` (generate_hls writes it into tasks/<task>/hls, generate_multitask_hls into switchable/hls) gives the top's
name, each tensor's shape, dtype and scale (for the design serving every task: per task, with its id), and the input
quantisation, which this driver replicates in numpy (it does not import edgemtl):
q = clip(rint(x / scale), lo, hi), as edgemtl.model.intgraph.quantize_input. Outputs come back as scale * q;
the raw integers stay in `model.raw`, bit for bit what the C simulation wrote (tb_data/csim_outputs.bin).

Register names: Vitis HLS renames the C++ arguments `input` / `output` to `input_r` / `output_r` (Verilog
keywords), and a 64-bit address is one register or two halves, `_1` (low 32 bits) and `_2` (high). The driver
finds them by name in the IP's `register_map` and handles both. The design serving every task has one more
register, the task id (`task`, renamed `task_r`: a Verilog keyword too): `select(task)` writes it, and switching
tasks is that write, nothing else. `pynq` is imported only when an overlay is opened, so this file can be imported
(and tested with a fake `pynq`) anywhere.

Command line (on the board):
    python3 hls_cpp_driver.py run edgemtl.bit io.json inputs.npy [outputs.npz] [--time N] [--task NAME]
(--task: the design serving every task needs one; its --time also times a switch from another task)
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

RANGES = {"int8": (-128, 127), "uint8": (0, 255)}
CONTROL = 0x00   # ap_start: bit 0, ap_done: bit 1 (cleared when read), ap_idle: bit 2
AP_START, AP_DONE = 0x1, 0x2
ARGUMENTS = {"input": ("input_r", "input"), "output": ("output_r", "output")}   # Vitis's names first
TASK_REGISTERS = ("task_r", "task")   # the design serving every task: its task id register, Vitis's name first


@dataclass(frozen=True)
class TensorSpec:
    """One side of the top: a sample's shape, its integer type and the real value of one step."""

    shape: tuple[int, ...]
    dtype: str
    scale: float

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TensorSpec:
        dtype = str(raw["dtype"])
        if dtype not in RANGES:
            raise ValueError(f"io.json: dtype {dtype!r} is not int8 or uint8")
        return cls(tuple(int(s) for s in raw["shape"]), dtype, float(raw["scale"]))

    @property
    def numpy_dtype(self) -> type:
        return np.int8 if self.dtype == "int8" else np.uint8

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape))


def read_io(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """io.json as a dict (or an already-read dict)."""
    return source if isinstance(source, dict) else json.loads(Path(source).read_text())


def task_outputs(raw: dict[str, Any]) -> dict[str, tuple[int, TensorSpec]]:
    """The design serving every task: task -> (its id, its output); {} for a one-task design."""
    return {task: (int(entry["id"]), TensorSpec.from_dict(entry["output"])) for task, entry in raw.get("tasks", {}).items()}


def quantize(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Float inputs -> integers exactly as intgraph.quantize_input: divide in x's own float dtype, round half to
    even, saturate (so the board sees the same integers as the C simulation's tb_data)."""
    lo, hi = RANGES[spec.dtype]
    return np.clip(np.rint(np.asarray(x) / spec.scale), lo, hi).astype(np.int64)


def dequantize(q: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Integers -> real values, scale * q in float64 (as intgraph.dequantize)."""
    return np.asarray(q).astype(np.float64) * spec.scale


def _pynq() -> Any:
    try:
        import pynq
    except ImportError as exc:  # off the board
        raise RuntimeError("the pynq package is needed to drive the overlay "
                           "(it runs on the ZCU104's PYNQ image)") from exc
    return pynq


def _address(buffer: Any) -> int:
    """A PYNQ buffer's bus address (device_address since PYNQ 2.5, physical_address before and still)."""
    address = getattr(buffer, "device_address", None)
    return int(address if address is not None else buffer.physical_address)


def _register_names(register_map: Any) -> set[str]:
    """The register names a PYNQ RegisterMap has (properties of its generated class; attributes of a fake)."""
    return {name for name in dir(register_map) if not name.startswith("_")}


def address_registers(register_map: Any, argument: str) -> list[tuple[str, int, int]]:
    """How the 64-bit address of `argument` ("input" / "output") is written: [(register, shift, bits)], either
    one register for all of it or its low (`_1`) and high (`_2`) halves, under Vitis's name or the C++ one."""
    names = _register_names(register_map)
    for base in ARGUMENTS[argument]:
        if f"{base}_1" in names and f"{base}_2" in names:
            return [(f"{base}_1", 0, 32), (f"{base}_2", 32, 32)]
        if base in names:
            return [(base, 0, 64)]
    found = sorted(n for n in names if n.startswith(argument))
    raise RuntimeError(f"the IP's register map has no address register for {argument!r} (looked for "
                       f"{' / '.join(ARGUMENTS[argument])}, whole or as _1 / _2 halves; found {found or 'none'}): "
                       "is this overlay built by hls_cpp_design.tcl from an edgemtl HLS C++ top?")


class HlsCppModel:
    """The overlay as a function: float inputs in, float outputs out, one ap_start per sample."""

    def __init__(self, bitfile: str | Path, io_json: str | Path | dict[str, Any], overlay: Any = None,
                 timeout_s: float = 5.0, task: str | None = None) -> None:
        pynq = _pynq()
        raw = read_io(io_json)
        self.top, self.input, self.tasks = str(raw["top"]), TensorSpec.from_dict(raw["input"]), task_outputs(raw)
        if self.tasks and task not in self.tasks:
            raise ValueError(f"this design serves tasks {sorted(self.tasks)}: name one (task={task!r})")
        if not self.tasks and task is not None:
            raise ValueError(f"{self.top} is one task's design; it takes no task (got {task!r})")
        self.output = self.tasks[task][1] if task else TensorSpec.from_dict(raw["output"])
        self.task = task
        largest = max([spec.elements for _, spec in self.tasks.values()] or [self.output.elements])
        self.overlay = overlay if overlay is not None else pynq.Overlay(str(bitfile))
        self.timeout_s = timeout_s
        self.raw = np.zeros(0, dtype=np.int64)  # the last call's integer outputs, as the IP wrote them
        cell = f"{self.top}_0"
        if not hasattr(self.overlay, cell):
            raise RuntimeError(f"the overlay has no IP {cell} (the HLS top {self.top!r} of io.json, as "
                               "hls_cpp_design.tcl names it): was it built for this task's io.json?")
        self.ip = getattr(self.overlay, cell)
        self.in_buffer = pynq.allocate(shape=(self.input.elements,), dtype=self.input.numpy_dtype)
        self.out_buffer = pynq.allocate(shape=(largest,), dtype=self.output.numpy_dtype)
        self._write_address("input", _address(self.in_buffer))
        self._write_address("output", _address(self.out_buffer))
        if task:
            self.select(task)

    def select(self, task: str) -> None:
        """Switch the design serving every task to `task`: its id into the task register (the next ap_start runs it)."""
        if task not in self.tasks:
            raise ValueError(f"unknown task {task!r}; this design serves {sorted(self.tasks)}")
        names = _register_names(self.ip.register_map)
        register = next((name for name in TASK_REGISTERS if name in names), None)
        if register is None:
            raise RuntimeError(f"the IP's register map has no task register ({' / '.join(TASK_REGISTERS)}): is this "
                               "overlay built from switchable/hls (the design serving every task)?")
        setattr(self.ip.register_map, register, self.tasks[task][0])
        self.output = self.tasks[task][1]
        self.task = task

    def _write_address(self, argument: str, address: int) -> None:
        """The buffer's address into the IP's offset register(s): fixed buffers, so once is enough."""
        for register, shift, bits in address_registers(self.ip.register_map, argument):
            setattr(self.ip.register_map, register, (address >> shift) & ((1 << bits) - 1))

    def _wait_done(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not self.ip.read(CONTROL) & AP_DONE:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.top}_0 did not raise ap_done within {self.timeout_s} s (control register "
                                   f"{self.ip.read(CONTROL):#x}): is the bitstream loaded and the PL clock running?")

    def run_integers(self, q: np.ndarray) -> np.ndarray:
        """One sample of integers (any shape with the input's element count) -> the output integers, shaped."""
        self.in_buffer[:] = np.asarray(q).reshape(-1).astype(self.input.numpy_dtype)
        self.in_buffer.flush()            # the A53's cache -> DDR, where m_axi_gmem0 reads
        self.out_buffer.invalidate()      # no stale lines over what m_axi_gmem1 is about to write
        self.ip.write(CONTROL, AP_START)
        self._wait_done()
        self.out_buffer.invalidate()
        values = np.asarray(self.out_buffer)[:self.output.elements].view(self.output.numpy_dtype)
        return values.astype(np.int64).reshape(self.output.shape)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """A batch (N, *shape) or one sample (*shape) of floats -> the outputs (N, *out_shape) or one, as floats."""
        x = np.asarray(x)
        single = x.shape == self.input.shape
        if not single and x.shape[1:] != self.input.shape:
            raise ValueError(f"inputs must be {self.input.shape} or (N, *{self.input.shape}), got {x.shape}")
        q = quantize(x if not single else x[None], self.input)
        raw = np.stack([self.run_integers(sample) for sample in q])
        self.raw = raw[0] if single else raw
        return dequantize(self.raw, self.output)

    def time(self, x: np.ndarray, runs: int = 100, warmup: int = 5) -> dict[str, Any]:
        """Median wall time of one sample through the overlay, quantisation and cache maintenance included."""
        sample = np.asarray(x)
        for _ in range(warmup):
            self(sample)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self(sample)
            times.append(time.perf_counter() - start)
        return {"median_ms": statistics.median(times) * 1e3, "p90_ms": float(np.percentile(times, 90)) * 1e3,
                "runs": runs, "provenance": "measured (ZCU104 PL via PYNQ, the HLS C++ top on DDR buffers; "
                                            "quantisation and cache maintenance on the A53 included, median)"}

    def time_switching(self, x: np.ndarray, other: str, runs: int = 100) -> dict[str, Any]:
        """The first inference after a switch (from `other` to the selected task) against steady state: median wall
        time of one sample each way, alternating, register write included."""
        task, sample = self.task, np.asarray(x)
        after, steady = [], []
        for _ in range(runs):
            self.select(other)
            self(sample)
            start = time.perf_counter()
            self.select(task)
            self(sample)
            after.append(time.perf_counter() - start)
            start = time.perf_counter()
            self(sample)
            steady.append(time.perf_counter() - start)
        return {"after_switch_median_ms": statistics.median(after) * 1e3,
                "steady_median_ms": statistics.median(steady) * 1e3,
                "ratio": statistics.median(after) / statistics.median(steady), "runs": runs, "from": other, "to": task,
                "provenance": "measured (ZCU104 PL via PYNQ: the task register write, then one sample, against one "
                              "sample of the same task; medians)"}

    def close(self) -> None:
        for buffer in (self.in_buffer, self.out_buffer):
            if hasattr(buffer, "freebuffer"):
                buffer.freebuffer()


def _option(argv: list[str], flag: str) -> tuple[str | None, list[str]]:
    """The value after `flag` and argv without the two."""
    if flag not in argv:
        return None, argv
    at = argv.index(flag)
    return argv[at + 1], argv[:at] + argv[at + 2:]


def main(argv: list[str]) -> int:
    if len(argv) >= 5 and argv[1] == "run":
        runs, argv = _option(argv, "--time")
        task, argv = _option(argv, "--task")
        model = HlsCppModel(argv[2], argv[3], task=task)
        x = np.load(argv[4])
        outputs = model(x)
        out = argv[5] if len(argv) > 5 else "outputs.npz"
        np.savez(out, output=outputs, raw=model.raw)
        print(f"wrote {out}: output {outputs.shape} (float), raw {model.raw.shape} ({model.output.dtype} values)")
        if runs:
            sample = x if x.shape == model.input.shape else x[0]
            print(json.dumps(model.time(sample, runs=int(runs))))
            others = [t for t in model.tasks if t != task]
            if others:
                print(json.dumps(model.time_switching(sample, others[0], runs=int(runs))))
        model.close()
        return 0
    print(__doc__.split("Command line (on the board):")[1].rstrip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
