"""Timings that cannot be read as plain truth say so: a wide spread, a busy machine, an implausible cross-check."""

from __future__ import annotations

from types import SimpleNamespace

from edgemtl.flow import FlowState
from edgemtl.flows import cpu_onnxruntime
from edgemtl import timing
from edgemtl.timing import Latency, measure
from edgemtl.report.html import render_html


def _latency(median: float, p90: float, load: float | None = 0.1) -> Latency:
    return Latency(median, p90, 50, "onnxruntime", "host CPU", 1, load_average_1min=load)


def test_a_measurement_records_the_load_and_its_spread():
    recorded = measure(lambda: None, runtime="noop", threads=1, runs=5, warmup=1).to_dict()
    assert "load_average_1min" in recorded and isinstance(recorded["warnings"], list)
    assert recorded["p90_over_median"] is None or recorded["p90_over_median"] >= 1


def test_a_wide_spread_and_a_busy_machine_are_flagged(monkeypatch):
    monkeypatch.setattr(timing.os, "cpu_count", lambda: 2)
    assert _latency(1.0, 1.5).warnings() == []
    assert _latency(1.0, 3.0).warnings() == ["noisy: p90 is 3.0x the median"]
    assert _latency(1.0, 1.1, load=3.5).warnings() == ["busy machine: load average 3.50 on 2 CPUs while timed"]


def test_an_all_task_median_below_the_slowest_single_task_is_implausible():
    """The all-task graph runs every head: measured faster than its slowest head, the timing was disturbed."""
    manifest = {"tasks": {"a": {"latency_ms": {"median": 2.0}}, "b": {"latency_ms": {"median": 5.0}}},
                "all_tasks": {"latency_ms": {"median": 1.0, "p90": 1.2, "provenance": {"kind": "measured"}, "warnings": []}}}
    ctx = SimpleNamespace(manifest=manifest, state=FlowState(tasks=["a", "b"]))
    cpu_onnxruntime._cross_check_all_tasks(ctx)
    assert manifest["all_tasks"]["latency_ms"]["warnings"][0].startswith("implausible: below the slowest single task's")
    manifest["all_tasks"]["latency_ms"] = {"median": 6.0, "warnings": []}
    cpu_onnxruntime._cross_check_all_tasks(ctx)
    assert manifest["all_tasks"]["latency_ms"]["warnings"] == []


def test_the_report_marks_a_flagged_latency():
    flagged = {**_latency(1.0, 3.0).to_dict(), "median": 1.0}
    html = render_html({"tasks": {"scene": {"kind": "classification", "latency_ms": flagged}}})
    assert "⚠ noisy" in html and "p90 is 3.0x the median" in html
