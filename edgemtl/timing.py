"""Wall-clock latency of a callable: warm-up, then repeated runs, median and p90.

Every figure carries its provenance (measured, where, with what runtime, how many runs) so reports never
mix measured numbers with estimates.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import torch

from edgemtl.manifest import prov


NOISY_SPREAD = 2.0  # p90 / median above this: the runs disagree too much for the median to stand alone
BUSY_LOAD_PER_CPU = 1.0  # 1-min load average per CPU above this: something else competed for the cores


@dataclass(frozen=True)
class Latency:
    median: float  # milliseconds
    p90: float
    runs: int
    runtime: str
    device: str
    threads: int
    batch: int = 1
    provenance: str = "measured"
    load_average_1min: float | None = None  # the machine's load when the timing ended: a busy machine times slower

    def warnings(self) -> list[str]:
        """Why this number should not be read as plain truth: a wide spread or a busy machine."""
        found = []
        if self.median > 0 and self.p90 / self.median > NOISY_SPREAD:
            found.append(f"noisy: p90 is {self.p90 / self.median:.1f}x the median")
        cpus = os.cpu_count() or 1
        if self.load_average_1min is not None and self.load_average_1min > BUSY_LOAD_PER_CPU * cpus:
            found.append(f"busy machine: load average {self.load_average_1min:.2f} on {cpus} CPUs while timed")
        return found

    def to_dict(self) -> dict[str, Any]:
        provenance = prov(self.provenance, source=self.runtime, device=self.device,  # type: ignore[arg-type]
                          detail=f"median of {self.runs} runs, batch {self.batch}, {self.threads} threads")
        return {**asdict(self), "provenance": provenance, "p90_over_median": self.p90 / self.median if self.median > 0 else None,
                "warnings": self.warnings()}


def host_cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where available (what a reader needs to compare numbers)."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sample_ms(run: Callable[[], object], runs: int, max_seconds: float, warmup: int) -> list[float]:
    """Wall-clock ms of up to `runs` calls after `warmup`; stops early after `max_seconds` (keeps at least 5)."""
    for _ in range(warmup):
        run()
    samples: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(samples) < runs and (len(samples) < 5 or time.perf_counter() < deadline):
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def measure(run: Callable[[], object], *, runtime: str, threads: int, warmup: int = 10, runs: int = 100,
            max_seconds: float = 10.0, batch: int = 1) -> Latency:
    """Time `run` after `warmup` calls; stops early after `max_seconds` (at least 5 runs are kept)."""
    samples = sample_ms(run, runs, max_seconds, warmup)
    values = np.asarray(samples)
    device = f"host CPU ({host_cpu_name()}, {threads} thread{'s' if threads != 1 else ''})"
    return Latency(float(np.median(values)), float(np.percentile(values, 90)), len(samples), runtime, device, threads, batch,
                   load_average_1min=load_average_1min())


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """PyTorch's intra-op threads set to `count` inside, restored after: on a shared machine more threads than free
    cores make small convolutions many times slower (a width search runs thousands of them)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def load_average_1min() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # not on every platform
        return None
