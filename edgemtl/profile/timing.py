"""Wall-clock latency of a callable: warm-up, then repeated runs, median and p90.

Every figure carries its provenance (measured, where, with what runtime, how many runs) so reports never
mix measured numbers with estimates.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    return Latency(float(np.median(values)), float(np.percentile(values, 90)), len(samples), runtime, device, threads, batch)
