"""The FPGA part of the report: the per-task section and the resource figure, from hand-written manifests."""

from __future__ import annotations

from typing import Any

import pytest

from edgemtl.report.fpga_plots import FIT_LIMITS, fpga_estimates, fpga_resource_plot, part_totals
from edgemtl.targets import load_target
from edgemtl.report.html import render_html

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTION = "quantization, HLS C simulation and estimates</h2>"


def _fold(fps: float, lut: int, estimated_fps: float) -> dict[str, Any]:
    return {"provenance": "estimated (FINN analytical model)", "target_fps": fps, "lut": lut, "bram18": 40,
            "uram": 0, "dsp": 12, "estimated_fps": estimated_fps, "meets_target": estimated_fps >= fps,
            "latency_ms": 0.8}


def _roofline() -> dict[str, Any]:
    return {"provenance": "estimated (edgemtl roofline)", "precision": "w4a4", "fps": 2345.6, "latency_ms": 0.426,
            "resources": {"provenance": "estimated (edgemtl roofline)", "dsp": 1728, "lut": 71_840, "bram18": 100,
                          "uram": 3, "fits": True}}


ZCU104_FABRIC = load_target("zcu104").fabric.model_dump()


def _manifest() -> dict[str, Any]:
    scene = {
        "primary_metric": "top1",
        "quantization": {"precision": "w4a4", "qat_steps": 2, "metric_float": {"loss": 1.2, "top1": 0.81},
                         "metric_quant": {"loss": 1.3, "top1": 0.78}, "output_lsb": 0.125},
        "export_check": {"samples": 8, "qonnx_max_diff_lsb": 0.0, "onnxruntime_max_diff_lsb": 1.0},
        "hls4ml": {"ok": True, "project": "tasks/scene/hls4ml", "seconds": 12.5,
                   "csim": {"samples": 4, "max_abs_diff_lsb": 0.0, "passed": True,
                            "provenance": "simulated (hls4ml C simulation, bit-accurate)"},
                   "testbench": {"built": True, "ran": True}},
        "finn": {"available": True, "ok": True, "provenance": "estimated (FINN analytical model)",
                 "by_target_fps": {"1000": _fold(1000.0, 23_040, 1520.0), "10000": _fold(10000.0, 46_080, 9000.0)}},
        "roofline": _roofline(),
    }
    depth = {
        "quantization": {"precision": "w4a4", "qat_steps": 2, "metric_float": {"rmse": 0.3},
                         "metric_quant": {"rmse": 0.35}},
        "export_check": {"samples": 8, "qonnx_max_diff_lsb": 0.0, "onnxruntime_max_diff_lsb": 0.0},
        "hls4ml": {"ok": False, "error": "hls4ml cannot map op 'Resize' <linear>"},
        "finn": {"available": False, "how_to_create": "make finn-venv", "reason": "no finn-plus venv at /x/.venv-finn"},
        "roofline": _roofline(),
    }
    return {
        "target": {"name": "zcu104", "flow": "fpga-hls4ml", "fabric": ZCU104_FABRIC},
        "tasks": {"scene": scene, "depth": depth, "plain": {"kind": "classification"}},
        "needs_other_toolchain": [{"step": "quantize + HLS", "why": "data-dependent expert dispatch"}],
        "board_kit": {"folder": "hw", "readme": "hw/README.md", "next": "vitis_hls -f build_prj.tcl"},
    }


def test_section_lists_every_fpga_figure_with_its_provenance() -> None:
    html = render_html(_manifest())
    assert SECTION in html
    section = html[html.index(SECTION):html.index("<h2>Plots</h2>")]
    assert "<h3>scene</h3>" in section and "<h3>depth</h3>" in section and "<h3>plain</h3>" not in section
    assert "top1 0.81 → 0.78" in section  # the primary metric, not the first key
    assert "rmse 0.3 → 0.35" in section  # no primary metric: the first key
    assert "0 / 1 LSB" in section
    assert '<span class="prov prov-simulated">simulated (hls4ml C simulation, bit-accurate)</span>' in section
    assert "hls4ml cannot map op &#x27;Resize&#x27; &lt;linear&gt;" in section
    assert "FINN @ 1,000 fps target" in section and "1,520 fps" in section and "LUT 10.0%" in section
    assert "FINN @ 10,000 fps target" in section and "misses" in section and "LUT 20.0%" in section
    assert "<code>make finn-venv</code>" in section
    assert "2,346 fps" in section and '<span class="prov prov-estimated">estimated (edgemtl roofline)' in section
    assert "Needs another toolchain: quantize + HLS" in section
    assert 'href="hw/README.md"' in section
    # the section sits after the tasks table
    assert html.index("<h2>Tasks</h2>") < html.index(SECTION)
    assert "FPGA resources per task" in html  # the figure is registered and drawn


def test_no_section_without_fpga_data() -> None:
    manifest = {"tasks": {"scene": {"kind": "classification", "hls4ml": {"ok": True}}}}
    html = render_html(manifest)
    assert SECTION not in html and "FPGA resources per task" not in html
    assert SECTION not in render_html({})


def test_task_names_and_manifest_text_are_escaped() -> None:
    manifest = _manifest()
    manifest["tasks"] = {"<script>x</script>": manifest["tasks"]["scene"]}
    manifest["tasks"]["<script>x</script>"]["quantization"]["precision"] = "<b>w4a4</b>"
    manifest["board_kit"]["next"] = "<img src=x>"
    html = render_html(manifest)
    assert "<script>x" not in html and "<b>w4a4" not in html and "<img src=x>" not in html
    assert "<h3>&lt;script&gt;x&lt;/script&gt;</h3>" in html


def test_malformed_fpga_sections_still_render() -> None:
    manifest = _manifest()
    scene = manifest["tasks"]["scene"]
    scene["quantization"] = {"precision": 4, "metric_float": [], "qat_steps": "two"}
    scene["hls4ml"] = {"ok": True, "csim": "passed", "testbench": None}
    scene["finn"] = {"available": True, "ok": True, "by_target_fps": {"1000": "junk", "x": {"lut": "many"}}}
    scene["roofline"] = {"fps": float("nan"), "resources": []}
    manifest["needs_other_toolchain"] = "not a list"
    manifest["board_kit"] = {"readme": 7}
    html = render_html(manifest)
    assert SECTION in html


def test_plot_of_finn_and_roofline_estimates() -> None:
    manifest = _manifest()
    estimates = fpga_estimates(manifest["tasks"]["scene"], part_totals(manifest))
    assert [label for label, _, _ in estimates] == ["FINN @ 1,000 fps", "FINN @ 10,000 fps", "edgemtl roofline"]
    assert estimates[0][1]["lut"] == pytest.approx(0.1) and estimates[2][1]["dsp"] == pytest.approx(1.0)
    assert fpga_resource_plot(manifest).startswith(PNG_MAGIC)
    roofline_only = {"tasks": {"t": {"roofline": {"resources": {"utilisation": {"lut": 0.4, "dsp": 1.0}}}}}}
    assert fpga_resource_plot(roofline_only).startswith(PNG_MAGIC)


@pytest.mark.parametrize("manifest", [
    {},
    {"tasks": []},
    {"tasks": {"t": {"kind": "depth"}}},
    {"tasks": {"t": {"finn": {"available": False, "reason": "no venv"}, "roofline": {"fps": 10.0}}}},
    {"tasks": {"t": {"finn": {"ok": False, "by_target_fps": {"1000": {"lut": 5}}},
                     "roofline": {"resources": {"lut": "x", "utilisation": "y"}}}}},
])
def test_no_plot_without_estimates(manifest: dict[str, Any]) -> None:
    assert fpga_resource_plot(manifest) is None


def test_the_parts_totals_come_from_the_target_file_through_the_manifest() -> None:
    """The XCZU7EV's logic is written once, in targets/zcu104.toml; the compile records it, the report reads it."""
    assert part_totals(_manifest()) == {"lut": 230_400, "bram18": 624, "uram": 96, "dsp": 1728}  # DS891
    assert part_totals({"target": {"name": "host"}}) == {}
    assert FIT_LIMITS == {"lut": 0.70, "bram18": 0.80, "dsp": 0.80}


def test_finn_without_an_estimate_says_why() -> None:
    manifest = _manifest()
    manifest["tasks"]["scene"]["finn"] = {"available": True, "ok": False,
                                          "reason": "step_convert_to_hw: no FINN hardware layer for Resize"}
    html = render_html(manifest)
    assert "no estimate</span>: step_convert_to_hw: no FINN hardware layer for Resize" in html
    assert fpga_resource_plot(manifest).startswith(PNG_MAGIC)  # the roofline is still drawn


def _moe_manifest() -> dict[str, Any]:
    """A zcu104 bundle of an MoE model: int8 and edgemtl's HLS C++ per task (one task refused, one not simulated)."""
    csim = {"ran": True, "samples": 4, "max_lsb_difference": 0, "exact": True,
            "provenance": {"kind": "simulated", "source": "g++ C simulation of the generated HLS C++"}}
    roofline = {**_roofline(), "precision": "w8a8"}
    return {"target": {"name": "zcu104", "flow": "fpga-hls4ml", "fabric": ZCU104_FABRIC}, "tasks": {
        "depth": {"primary_metric": "rmse", "int8": {"ok": True, "metric_float": {"rmse": 0.4}, "metric_int8": {"rmse": 0.41}},
                  "hls_cpp": {"ok": True, "project": "tasks/depth/hls", "csim": csim, "estimate": {
                      "lut": 71000, "dsp": 334, "bram18": 604, "latency_ms": 83.4, "fits": True,
                      "utilisation": {"lut": 0.308, "dsp": 0.193, "bram18": 0.968},
                      "provenance": {"kind": "estimated", "source": "edgemtl HLS C++ design estimate"}}},
                  "roofline": roofline},
        "scene": {"int8": {"ok": True, "metric_float": {"top1": 0.8}, "metric_int8": {"top1": 0.8}},
                  "hls_cpp": {"ok": True, "project": "tasks/scene/hls",
                              "csim": {"built": False, "ran": False, "reason": "g++ not found on PATH"}}, "roofline": roofline},
        "edges": {"hls_cpp": {"ok": False, "error": "layer 'x' has op 'argmax'"}, "roofline": roofline}}}


def test_an_moe_model_shows_its_int8_metric_and_hls_cpp_c_simulation() -> None:
    from edgemtl.report.sections.fpga import compare_figures
    from edgemtl.report.sections import TaskInput

    manifest = _moe_manifest()
    html = render_html(manifest)
    section = html[html.index(SECTION):html.index("<h2>Plots</h2>")]
    section = section[:section.index("<figure")]  # the tables (the resource figure's caption names FINN)
    assert "w8a8 <span class=\"dim\">int8 integer graph, no QAT</span>" in section
    assert "rmse 0.4 → 0.41" in section and "top1 0.8 → 0.8" in section
    assert "<code>tasks/depth/hls</code>" in section and "0 LSB <span class=\"ok\">✓</span>" in section
    assert "on 4 samples" in section and "prov-simulated" in section
    assert "LUT 71 k (30.8%), DSP 334 (19.3%), BRAM18 604 (96.8%); 83.4 ms per inference" in section
    assert "not run: g++ not found on PATH" in section and "layer &#x27;x&#x27; has op &#x27;argmax&#x27;" in section
    assert "hls4ml" not in section and "FINN" not in section and "Needs another toolchain" not in section
    found = compare_figures(TaskInput(None, manifest, "depth", manifest["tasks"]["depth"], None, None))
    assert found["runtime"]["text"] == "edgemtl HLS C++ IP on the FPGA fabric (int8)"
    metric = found["metric"]
    assert metric["deployed_precision"] == "int8" and metric["deployed"]["value"] == 0.41
    assert metric["deployed"]["provenance"]["source"] == "manifest.json tasks.depth.int8.metric_int8.rmse"


def test_the_design_serving_every_task_shows_what_it_shares_and_its_switch_cost() -> None:
    manifest = _moe_manifest()
    manifest["moe"] = {"switchable_hls": {
        "ok": True, "project": "switchable/hls", "top": "edgemtl_tasks", "task_ids": {"depth": 0, "scene": 1},
        "shared_nodes": 50, "switched_nodes": {"/blocks.3/Add": 2}, "task_only_nodes": {"depth": 7, "scene": 2},
        "expert_rows": {"/blocks.1/mlp/TopK": {"stored": 5, "per_task": {"depth": 3, "scene": 2}}},
        "rom_bytes": 400_000, "per_task_designs_rom_bytes": 1_000_000,
        "csim": {"ran": True, "runs": 24, "max_lsb_difference": {"depth": 0, "scene": 0},
                 "provenance": {"kind": "simulated", "source": "g++ C simulation"}},
        "switching": {"max_ratio": 1.0, "provenance": {"kind": "simulated", "source": "g++ C simulation"}},
        "estimate": {"lut": 80000, "dsp": 300, "bram18": 500, "latency_ms": 90.0, "fits": True,
                     "utilisation": {"lut": 0.35, "dsp": 0.17, "bram18": 0.8},
                     "provenance": {"kind": "estimated", "source": "edgemtl HLS C++ design estimate"}}}}
    html = render_html(manifest)
    table = html[html.index("<h3>One design serving every task</h3>"):]
    table = table[:table.index("</table>")]
    assert "<code>switchable/hls</code>, top <code>edgemtl_tasks</code>; task register: depth = 0, scene = 1" in table
    assert "50 shared, 1 with a call per task form (/blocks.3/Add), heads: depth 7, scene 2" in table
    assert "5 stored once; per task depth 3, scene 2" in table and "400 k / 1 M (0.40x)" in table
    assert "0 LSB <span class=\"ok\">✓</span> <span class=\"dim\">24 runs</span>" in table and "1.000x" in table
    assert "LUT 80 k (35.0%)" in table
    manifest["moe"]["switchable_hls"] = {"ok": False, "error": "the task graphs quantize the input differently"}
    html = render_html(manifest)
    assert "not built</span>: the task graphs quantize the input differently" in html
