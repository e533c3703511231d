"""The accuracy-budget section: per task its budget, loss and status, the remedies tried, the advice for a task over
budget, and the figure of loss per remedy, from hand-written manifests (no compile)."""

from __future__ import annotations

import re
from typing import Any

from edgemtl.report import html
from edgemtl.report.sections import budget

PNG_MAGIC = b"\x89PNG"


def _rung(name: str, loss: float, within: bool, shipped: bool, layers: list[str], steps: int) -> dict[str, Any]:
    """A zcu104 ladder row: widths, QAT steps and the estimated bit-operation cost."""
    return {"name": name, "precision": "w4a4", "layers_at_8_bits": layers, "relative_loss": loss, "within": within,
            "qat_steps": steps, "seconds": 3.5, "shipped": shipped,
            "cost": {"bit_operations": 1_234_000_000, "weight_kib": 9.5,
                     "provenance": {"kind": "estimated", "source": "edgemtl: MACs x weight bits x activation bits"}}}


def _manifest() -> dict[str, Any]:
    depth = {"max_relative_loss": 0.05, "set_by": "--max-drop", "judged_by": "rmse (lower is better), relative to float",
             "metric": "rmse", "float": 0.39, "quantized": 0.3947, "relative_loss": 0.012, "within": True,
             "shipped": "w4a4, first and last layers w8a8",
             "remedies": [_rung("w4a4, first and last layers w8a8", 0.012, True, True, ["first", "last"], 200)]}
    normals = {"max_relative_loss": 0.02, "set_by": "target zcu104",
               "judged_by": "1 - cosine_vs_float (no labels: agreement with the float model)", "metric": None,
               "float": None, "quantized": None, "relative_loss": 0.031, "within": False, "shipped": "w8a8, more QAT",
               "next": "--precision w8a8 or more --qat-steps", "over_budget_allowed": True,
               "remedies": [_rung("w4a4, first and last layers w8a8", 0.09, False, False, ["first", "last"], 200),
                            {"name": "w4a4 <sensitive>", "error": "calibration failed <nan>"},
                            _rung("w8a8", 0.04, False, False, ["first", "mid", "last"], 200),
                            _rung("w8a8, more QAT", 0.031, False, True, ["first", "mid", "last"], 400)]}
    scene = {"max_relative_loss": 0.02, "set_by": "target arm64", "judged_by": "accuracy (higher is better), relative to float",
             "metric": "accuracy", "float": 0.69, "quantized": 0.692, "relative_loss": -0.003, "within": True,
             "shipped": "default", "remedies": [{"name": "default", "description": "per-channel MinMax",
                                                 "relative_loss": -0.003,
                                                 "cost": {"latency_ms": 0.41, "latency_runs": 30,
                                                          "provenance": {"kind": "measured", "source": "ONNX Runtime"}}}]}
    return {"target": {"name": "zcu104", "flow": "fpga-hls4ml"},
            "quant_budget": {"default_max_relative_loss": 0.02, "set_by": "target zcu104", "per_task": {"depth": 0.05},
                             "allow_over_budget": True, "over_budget": ["normals"]},
            "tasks": {"depth": {"budget": depth}, "normals": {"budget": normals}, "scene": {"budget": scene},
                      "plain": {"kind": "classification"}}}


def _row(page: str, task: str) -> str:
    found = re.search(rf"<tr><td>{task}</td>.*?</tr>", page)
    assert found, f"no summary row for {task}"
    return found.group(0)


def test_the_table_shows_each_task_within_or_over_its_budget() -> None:
    page = budget.render(_manifest(), None)
    assert page.startswith("<h2>Accuracy budget</h2>")
    assert "at most 2 % relative loss vs float (set by target zcu104); per task: depth 5 %" in page
    depth = _row(page, "depth")
    assert "5 %" in depth and "--max-drop" in depth and "rmse 0.39 → 0.3947" in depth and "+1.20 %" in depth
    assert '<span class="ok">within</span>' in depth and "w4a4, first and last layers w8a8" in depth
    normals = _row(page, "normals")
    assert '<span class="fail">OVER BUDGET (shipped with --allow-over-budget)</span>' in normals
    assert "agreement" in normals and "+3.10 %" in normals
    assert "-0.30 %" in _row(page, "scene")
    assert "plain" not in page  # a task without a budget record has no row


def test_remedies_in_order_with_their_cost_and_the_advice_when_over_budget() -> None:
    page = budget.render(_manifest(), None)
    normals = page.split("<h3>normals: remedies in the order tried</h3>")[1].split("</table>")[0]
    assert [name for name in ("w4a4, first and last", "w4a4 &lt;sensitive&gt;", "<td>w8a8</td>", "w8a8, more QAT")
            if name in normals] == ["w4a4, first and last", "w4a4 &lt;sensitive&gt;", "<td>w8a8</td>", "w8a8, more QAT"]
    assert "<strong>w8a8, more QAT</strong> (shipped)" in normals and "calibration failed &lt;nan&gt;" in normals
    assert "1.23 G bit-ops, 9.5 KiB weights" in normals and 'class="prov prov-estimated"' in normals
    assert "Layers at 8 bits" in normals and ">400</td>" in normals
    assert "next to try: <code>--precision w8a8 or more --qat-steps</code>" in page
    assert page.count("next to try") == 1  # only the task over budget
    scene = page.split("<h3>scene: remedies in the order tried</h3>")[1].split("</table>")[0]
    assert "0.41 ms (30 runs)" in scene and 'class="prov prov-measured"' in scene and "per-channel MinMax" in scene
    assert "Layers at 8 bits" not in scene


def test_strings_are_escaped() -> None:
    manifest = _manifest()
    manifest["tasks"] = {"<b>x</b>": {"budget": {**manifest["tasks"]["depth"]["budget"], "shipped": "<script>",
                                                  "set_by": "<i>"}}}
    page = budget.render(manifest, None)
    assert "<b>" not in page and "<script>" not in page and "<i>" not in page and "&lt;script&gt;" in page


def test_without_budget_records_nothing_applies() -> None:
    for manifest in ({}, {"tasks": {"scene": {"kind": "classification"}}}, {"tasks": {"scene": {"budget": None}}}):
        assert not budget.applies(manifest) and budget.render(manifest, None) == ""
        assert budget.budget_plot(manifest) is None
    assert "Accuracy budget" not in html.render_html({"tasks": {"scene": {"kind": "classification"}}})


def test_a_bare_record_still_renders() -> None:
    """An older or partial record: no remedies, no quant_budget, no metric key."""
    manifest = {"tasks": {"scene": {"budget": {"relative_loss": 0.01}}}}
    page = budget.render(manifest, None)
    assert "<td>scene</td>" in page and "+1.00 %" in page and "<h3>" not in page
    assert budget.budget_plot(manifest) is None
    assert budget.summary(manifest) == {"quant_budget": {}, "tasks": {"scene": {"budget": None, "relative_loss": 0.01,
                                                                                "within": None, "shipped": None}}}


def test_the_figure_of_loss_per_remedy() -> None:
    png = budget.budget_plot(_manifest())
    assert png is not None and png.startswith(PNG_MAGIC)
    assert "<figure><img" in budget.render(_manifest(), None)


def test_summary_and_its_place_on_the_page() -> None:
    manifest = _manifest()
    assert budget.summary(manifest) == {
        "quant_budget": manifest["quant_budget"],
        "tasks": {"depth": {"budget": 0.05, "relative_loss": 0.012, "within": True,
                            "shipped": "w4a4, first and last layers w8a8"},
                  "normals": {"budget": 0.02, "relative_loss": 0.031, "within": False, "shipped": "w8a8, more QAT"},
                  "scene": {"budget": 0.02, "relative_loss": -0.003, "within": True, "shipped": "default"}}}
    report = html.summarize(manifest)
    assert report["quant_budget"]["over_budget"] == ["normals"] and report["tasks"]["normals"]["within"] is False
    page = html.render_html(manifest)
    assert page.index("<h2>Tasks</h2>") < page.index("<h2>Accuracy budget</h2>")


def test_the_unseen_test_split_is_shown_beside_the_decision_split():
    from edgemtl.report.sections import budget

    record = {"max_relative_loss": 0.02, "set_by": "target gap9", "judged_by": "rmse", "metric": "rmse", "float": 0.4,
              "quantized": 0.401, "relative_loss": 0.0025, "within": True, "shipped": "default", "remedies": [],
              "unseen": {"split": "scenes/test", "samples": 256, "metric": "rmse", "relative_loss": 0.0133}}
    missing = {**record, "unseen": {"split": None, "reason": "the data has no test split"}}
    html = budget.render({"tasks": {"depth": {"budget": record}, "seg": {"budget": missing}}}, None)
    assert "+1.33 % <span class=\"dim\">(scenes/test, 256 samples)</span>" in html
    assert "the data has no test split" in html and "Unseen test split" in html
