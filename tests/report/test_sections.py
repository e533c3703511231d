"""Report sections are plugins: every file in report/sections/ has the same four hooks and is on the page, the generic
report modules know no flow by name, and a new target is one more section (the comparison asks it for figures)."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import re
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import edgemtl
import edgemtl.report.sections as sections_package
from edgemtl.manifest import prov
from edgemtl.report import compare, html
from edgemtl.report.sections import Section

REPORT = Path(edgemtl.__file__).parent / "report"
TARGETS = Path(edgemtl.__file__).parent / "resources" / "targets"
HOOKS = ("applies", "render", "summary", "compare_figures")
SECTION_MODULES = [importlib.import_module(f"{sections_package.__name__}.{info.name}")
                   for info in pkgutil.iter_modules(sections_package.__path__)]


def _flows() -> set[str]:
    return {tomllib.loads(path.read_text())["flow"] for path in TARGETS.glob("*.toml")}


def test_the_generic_report_modules_name_no_flow() -> None:
    """Only a section's own `applies` may read a flow name; the page frame and the comparison ask the sections."""
    flows = _flows()
    assert {"cpu-onnxruntime", "mcu-gap9", "fpga-hls4ml"} <= flows
    for path in sorted(REPORT.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        for flow in flows:
            assert flow not in source, f"report/{path.name} names the flow {flow!r}: give that target a section"
        assert not re.search(r"""flow['"]?\)?\s*(==|!=|\bin\b)""", source), f"report/{path.name} compares a flow"


@pytest.mark.parametrize("module", SECTION_MODULES, ids=lambda module: module.__name__.rsplit(".", 1)[-1])
def test_every_section_has_the_same_hooks(module: Any) -> None:
    for hook in HOOKS:
        function = getattr(module, hook, None)
        assert callable(function), f"{module.__name__} lacks {hook}()"
        expected = list(inspect.signature(getattr(Section, hook)).parameters)[1:]  # less the protocol's self
        assert list(inspect.signature(function).parameters) == expected, f"{module.__name__}.{hook}"


def test_every_section_file_is_on_the_page_once() -> None:
    assert sorted(m.__name__ for m in html.SECTIONS) == sorted(m.__name__ for m in SECTION_MODULES)


def _fake_npu() -> SimpleNamespace:
    """A target with a flow the report has never seen: its section gives its runtime, latency, memory and layers."""
    def applies(manifest: Any) -> bool:
        return (manifest.get("target") or {}).get("flow") == "npu-fake"

    def render(manifest: Any, bundle_dir: Path | None) -> str:
        return "<h2>NPU</h2>"

    def summary(manifest: Any) -> dict[str, Any]:
        return {"tasks": {"scene": {"npu_cycles": 123}}}

    def compare_figures(task: Any) -> dict[str, Any]:
        runtime = task.runtime or "npu-blob"
        return {"runtime": {"value": runtime, "text": "the NPU's compiled blob", "chosen_by": "the only path"},
                "latencies": [{"median": 0.1, "p90": None, "unit": "ms", "runtime": "npu-blob", "on_target": False,
                               "provenance": prov("estimated", source="npu model", device="fake NPU")}],
                "memory": [{"value": 4096.0, "unit": "B", "what": "scratchpad",
                            "provenance": prov("static", source="npu compiler", device="fake NPU SRAM")}],
                "layers": {"none": "the fake NPU has no layers"}}

    return SimpleNamespace(__name__="npu", applies=applies, render=render, summary=summary,
                           compare_figures=compare_figures)


def test_a_new_target_is_one_more_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    npu = _fake_npu()
    monkeypatch.setattr(html, "SECTIONS", (*html.SECTIONS, npu))
    monkeypatch.setattr(compare, "SECTIONS", (*compare.SECTIONS, npu))
    manifest = {"target": {"name": "npu", "flow": "npu-fake"},
                "tasks": {"scene": {"kind": "classification", "peak_activation_bytes": 1000}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    figures = compare.compare_bundles([tmp_path])["tasks"]["scene"]["npu"]
    assert figures["runtime"]["value"] == "npu-blob" and figures["runtime"]["text"] == "the NPU's compiled blob"
    assert figures["latency"]["median"] == 0.1 and figures["latency"]["shipped"] is True
    assert [m.get("what") for m in figures["memory"]] == ["scratchpad", "peak activation memory (float32)"]
    assert figures["layers"] == {"none": "the fake NPU has no layers"} and figures["metric"] is None
    assert "<h2>NPU</h2>" in html.render_html(manifest)
    assert html.summarize(manifest)["tasks"]["scene"] == {"kind": "classification", "peak_activation_bytes": 1000,
                                                          "npu_cycles": 123}
