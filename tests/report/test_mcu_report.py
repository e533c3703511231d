"""The MCU (GAP9) part of the report: the per-task section, report.json and both figures, from hand-made manifests."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from edgemtl.report.html import render_html, summarize
from edgemtl.report.mcu_plots import (
    ESTIMATE_LABEL,
    SIMULATED_LABEL,
    mcu_layer_costs,
    mcu_layer_cycles_plot,
    mcu_placement_plot,
    mcu_placements,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTION = "<h2>MCU (GAP9)</h2>"
ESTIMATED = "estimated (analytical model: PULP-NN-class int8 kernels on GAP9's 8-core cluster)"
QEMU = "simulated (qemu-system-riscv32 rv32imac, one core, no SIMD; retired instructions, not cycles)"
DEEPLOY_STATIC = "static (Deeploy's tiling and static allocation at compile time; not measured)"


def _placement(task: str, status: str = "fits-l2", spilled: int = 0, staging: int = 0) -> dict[str, Any]:
    used = 40_000 + 30_000 - spilled + 66_000 + staging
    return {"provenance": ESTIMATED, "task": task, "status": status, "arena_bytes": 40_000, "weight_bytes": 30_000,
            "code_bytes": 66_000, "staging_bytes": staging, "l2_used_bytes": used, "l2_bytes": 1_500_000,
            "l3_used_bytes": spilled, "l3_bytes": 8_388_608,
            "weights_in_l3": [{"layer": 1, "name": "conv1", "bytes": spilled}] if spilled else [],
            "overflow": None, "verdict": f"{status}: L2 holds {used:,} of 1,500,000 B",
            "assumptions": ["activations: one static arena"]}


def _estimate(task: str, cycles: list[float]) -> dict[str, Any]:
    total = sum(cycles)
    return {"provenance": ESTIMATED, "task": task,
            "totals": {"cycles": total, "macs": 1_000_000, "clock_mhz": 370.0, "latency_ms": total / 370e3,
                       "power_mw": 50.0, "energy_mj": 50.0 * total / 370e6, "macs_per_cycle": 1e6 / total,
                       "fits": True, "placement": "fits-l2"},
            "layers": [{"index": i, "name": f"layer{i}", "op": op, "cycles": c}
                       for i, (op, c) in enumerate(zip(("conv", "conv", "add", "flatten"), cycles))],
            "kernels": {"conv": {"throughput": 15.5, "unit": "MAC", "source": "PULP-NN peak"}},
            "assumptions": ["the network runs layer by layer on GAP9's 8-core cluster at 370 MHz",
                            "energy = 50 mW x latency"],
            "context": {"tinymyo": {"model": "TinyMyo", "parameters": 3_600_000, "device": "GAP9", "latency_s": 0.785,
                                    "energy_mj": 44.91, "power_mw": 57.18,
                                    "provenance": "measured (published by TinyMyo's authors on GAP9; not this model)"}}}


def _c(task: str, qemu: dict[str, Any]) -> dict[str, Any]:
    return {"files": ["kernels.c", "network.c", "network.h", "network_weights.c", "test_vectors.h"],
            "arena": {"arena_bytes": 40_000, "lower_bound": 39_000, "alignment": 4,
                      "provenance": "static (liveness plan)"},
            "test_vectors": 32, "host": {"samples": 32, "bit_exact": True, "compiler": "gcc -std=c99 -O2"},
            "qemu": qemu}


def _qemu(instructions: list[float]) -> dict[str, Any]:
    return {"samples": 4, "bit_exact": True, "provenance": QEMU,
            "instructions": {"provenance": "simulated (qemu rv32imac, one core, no SIMD)", "samples": 4,
                             "totals": {"instructions": sum(instructions), "macs": 1_000_000,
                                        "instructions_per_mac": sum(instructions) / 1e6},
                             "layers": [{"layer": i, "name": f"layer{i}", "op": "conv", "macs": 1000,
                                         "instructions": value} for i, value in enumerate(instructions)]}}


def _int8(metric: str, before: float, after: float, higher: bool) -> dict[str, Any]:
    return {"ok": True, "metric": metric, "higher_is_better": higher, "metric_float": {metric: before, "other": 0.5},
            "metric_int8": {metric: after, "other": 0.49}, "relative_change": (after - before) / abs(before)}


def _manifest() -> dict[str, Any]:
    scene = {
        "kind": "classification", "int8": _int8("accuracy", 0.8, 0.79, True),
        "artifacts": {"intgraph": "tasks/scene/intgraph", "c": "tasks/scene/c", "deeploy": "tasks/scene/deeploy"},
        "deeploy_mappable": {"ok": True, "unmapped": []},
        "deeploy": {"available": True, "ok": True, "provenance": DEEPLOY_STATIC, "tool": "deeploy-pulp 0.2.1",
                    "hints": ["layer 'fc': a fully connected layer needs ~9,000 B of L1"],
                    "memory": {"L1": {"capacity": 128_000, "static": 34, "dynamic": 100_352, "total": 100_386},
                               "L2": {"capacity": 1_500_000, "static": 84_232, "dynamic": 49_152, "total": 133_384},
                               "L3": {"capacity": 8_388_608, "static": 0, "dynamic": 0, "total": 0}},
                    "fits": {"L1": True, "L2": True, "L3": True}},
        "c": _c("scene", _qemu([3.5e6, 1.3e7, 2e5, 0.0])),
        "memory_placement": _placement("scene"),
        "cycle_estimate": _estimate("scene", [28_000.0, 150_000.0, 8_000.0, 0.0]),
    }
    segmentation = {
        "kind": "segmentation", "int8": _int8("miou", 0.70, 0.69, True),
        "artifacts": {"c": "tasks/segmentation/c"},
        "deeploy_mappable": {"ok": False, "unmapped": [{"layer": "/seg/Resize", "op": "resize_bilinear",
                                                        "reason": "PULPOpen has no Resize layer"}]},
        "deeploy": {"available": True, "ok": False, "provenance": DEEPLOY_STATIC,
                    "unmapped": [{"layer": "/seg/Resize", "op": "resize_bilinear",
                                  "reason": "PULPOpen has no Resize layer"}],
                    "reason": "1 layer(s) Deeploy's PULPOpen cannot map"},
        "c": _c("segmentation", {"skipped": "riscv64-unknown-elf-gcc not found: edgemtl toolchain install riscv"}),
        "memory_placement": _placement("segmentation", "weights-in-l3", spilled=20_000, staging=8_000),
        "cycle_estimate": _estimate("segmentation", [28_000.0, 150_000.0, 9_000.0, 0.0]),
    }
    depth = {
        "kind": "depth", "int8": _int8("rmse", 0.30, 0.31, False),
        "artifacts": {"c": "tasks/depth/c"},
        "deeploy_mappable": {"ok": True, "unmapped": []},
        "deeploy": {"available": False, "how_to_create": "make deeploy-venv",
                    "reason": "Deeploy venv missing: run `make deeploy-venv` (looked in /x/.venv-deeploy)"},
        "c": _c("depth", _qemu([3.4e6, 1.2e7, 2e5, 100.0])),
        "memory_placement": _placement("depth"),
        "cycle_estimate": _estimate("depth", [27_000.0, 140_000.0, 8_000.0, 0.0]),
    }
    depth["cycle_estimate"]["assumptions"].append("activations: one static arena of 40,000 B")
    broken = {"kind": "depth", "int8": {"ok": False, "error": "op 'Softmax' <attention> has no int8 kernel"}}
    return {
        "target": {"name": "gap9", "flow": "mcu-gap9"},
        "tasks": {"scene": scene, "segmentation": segmentation, "depth": depth, "attention": broken},
        "board_kit": {"folder": "hw", "readme": "hw/README.md",
                      "next": "hw/README.md: make clean all run platform=gvsoc TASK=<task>, then platform=board"},
    }


def _section_html(html: str) -> str:
    return html[html.index(SECTION):html.index("<h2>Plots</h2>")]


def test_section_lists_every_mcu_figure_with_its_provenance() -> None:
    html = render_html(_manifest())
    assert SECTION in html
    assert html.index("<h2>Tasks</h2>") < html.index(SECTION) < html.index("<h2>Plots</h2>")
    section = _section_html(html)
    # metric float -> int8 with the relative change, judged by the metric's direction
    assert "accuracy 0.8 → 0.79" in section and "(-1.25%, worse)" in section
    assert "rmse 0.3 → 0.31" in section and "(+3.33%, worse)" in section
    assert "not quantized</span>: op &#x27;Softmax&#x27; &lt;attention&gt; has no int8 kernel" in section
    # C: host and qemu, each with its sample count; qemu carries its simulated badge
    assert section.count("✓ bit-exact</span> on 32 samples") == 3
    assert "✓ bit-exact</span> on 4 samples" in section
    assert f'<span class="prov prov-simulated" title="{QEMU}">simulated</span>' in section
    assert "16.7 M instructions" in section
    assert "not run: riscv64-unknown-elf-gcc not found" in section
    # arena, placement verdict, Deeploy memory per level / unmapped layers / missing venv
    assert "39.1 KiB" in section and 'prov prov-static' in section
    assert '<span class="ok">fits-l2</span>' in section and "weights-in-l3" in section
    assert "19.5 KiB weights in L3" in section
    assert "L1 98 KiB of 125 KiB" in section and "L2 130 KiB of 1.43 MiB" in section
    assert "hint: layer &#x27;fc&#x27;" in section
    assert "1 layer PULPOpen cannot map" in section and "<code>/seg/Resize</code> (resize_bilinear)" in section
    assert "Deeploy venv missing: <code>make deeploy-venv</code>" in section
    # the estimate at the clock, its assumptions one click away, labelled estimated
    assert "@ 370 MHz" in section and "mJ" in section
    assert '<a href="#mcu-assumptions">assumptions</a>' in section
    details = section[section.index('<details id="mcu-assumptions">'):]
    assert "<p>Every task:</p><ul><li>the network runs layer by layer on GAP9&#x27;s" in details
    assert "<p>depth:</p><ul><li>activations: one static arena of 40,000 B</li></ul>" in details
    assert "energy = 50 mW x latency" in details and "<td>PULP-NN peak</td>" in details
    assert section.count('<span class="prov prov-estimated"') >= 6
    assert "TinyMyo" in section and "prov-measured" in section
    # the board kit: one make line per task, from the manifest's own folders
    assert "make -f hw/Makefile clean all run platform=gvsoc NETWORK_DIR=tasks/scene/c</code>" in section
    assert 'href="hw/README.md"' in section
    # both figures are registered and drawn, their captions naming the provenance
    assert "GAP9 memory placement per task, estimated" in html
    assert "simulated under qemu" in html and "estimated by edgemtl" in html


def test_no_section_for_a_host_or_arm64_bundle() -> None:
    host = {"target": {"name": "host", "flow": "cpu-onnxruntime"},
            "tasks": {"scene": {"kind": "classification", "params": 10, "macs": 100,
                                "latency_ms": {"median": 0.4, "provenance": "measured"}}}}
    arm64 = {"target": {"name": "arm64", "flow": "cpu-arm64"},  # its int8 model is recorded under "int8" too
             "tasks": {"scene": {"kind": "classification", "int8": {"ok": True, "metric": "accuracy",
                                                                      "metric_float": {"accuracy": 0.9},
                                                                      "metric_int8": {"accuracy": 0.89}}}}}
    for manifest in (host, arm64, {}, {"tasks": []}):
        html = render_html(manifest)
        assert SECTION not in html and "GAP9 memory placement" not in html
    assert "c_bit_exact" not in str(summarize(host))


def test_task_names_and_manifest_text_are_escaped() -> None:
    manifest = _manifest()
    tasks = manifest["tasks"]
    tasks["<script>x</script>"] = tasks.pop("scene")
    entry = tasks["<script>x</script>"]
    entry["memory_placement"]["verdict"] = "<b>fits</b>"
    entry["deeploy"]["memory"]["<i>L9</i>"] = {"total": 1, "capacity": 2}
    entry["int8"]["metric"] = "<u>acc</u>"
    entry["int8"]["metric_float"]["<u>acc</u>"] = 0.5
    entry["artifacts"]["c"] = "tasks/<img src=x>/c"
    tasks["segmentation"]["deeploy"]["unmapped"][0]["layer"] = "<svg onload=1>"
    manifest["board_kit"]["readme"] = "javascript:alert(1)"
    html = render_html(manifest)
    for raw in ("<script>x", "<b>fits", "<i>L9", "<u>acc", "<img src=x>", "<svg onload", 'href="javascript:'):
        assert raw not in html
    assert "<td>&lt;script&gt;x&lt;/script&gt;</td>" in html


def test_malformed_mcu_sections_still_render() -> None:
    manifest = _manifest()
    scene = manifest["tasks"]["scene"]
    scene["int8"] = {"ok": True, "metric": 3, "metric_float": [], "relative_change": "big"}
    scene["c"] = {"host": "yes", "qemu": {"instructions": {"totals": [], "layers": "many"}}, "arena": []}
    scene["memory_placement"] = {"status": 7, "l2_bytes": float("nan"), "verdict": None}
    scene["deeploy"] = {"available": True, "ok": True, "memory": {"L1": "full", "L2": {"total": "x"}}, "hints": "h"}
    scene["cycle_estimate"] = {"totals": {"latency_ms": float("inf")}, "layers": [None, {"index": "x"}],
                               "assumptions": "none", "kernels": [], "context": {"x": 1}}
    manifest["tasks"]["segmentation"]["deeploy"]["unmapped"] = ["junk", 5]
    manifest["tasks"]["depth"]["int8"] = {"ok": True, "metrics": "scenes has no labels for task 'depth'"}
    manifest["board_kit"] = {"folder": 3}
    html = render_html(manifest)
    assert SECTION in html and "int8, not scored: scenes has no labels for task &#x27;depth&#x27;" in html
    summarize(manifest)  # no exception either
    assert mcu_placement_plot(manifest) is None or mcu_placement_plot(manifest).startswith(PNG_MAGIC)
    assert mcu_layer_cycles_plot(manifest).startswith(PNG_MAGIC)


def test_summary_carries_int8_metric_bit_exact_flags_and_the_estimate() -> None:
    tasks = summarize(_manifest())["tasks"]
    scene = tasks["scene"]
    assert scene["int8"] == {"metric": "accuracy", "float": 0.8, "int8": 0.79,
                             "relative_change": pytest.approx(-0.0125)}
    assert scene["c_bit_exact"]["host"] == {"bit_exact": True, "samples": 32}
    assert scene["c_bit_exact"]["qemu"] == {"bit_exact": True, "samples": 4, "provenance": QEMU}
    assert scene["mcu_estimate"]["provenance"] == ESTIMATED and scene["mcu_estimate"]["clock_mhz"] == 370.0
    assert tasks["segmentation"]["c_bit_exact"]["qemu"] == {
        "skipped": "riscv64-unknown-elf-gcc not found: edgemtl toolchain install riscv"}
    assert tasks["attention"]["int8"]["ok"] is False


def test_layer_costs_pair_the_estimate_and_the_instructions_by_index() -> None:
    """Each layer is labelled by the node name the integer ONNX and the C use, with its kind (was "0 conv")."""
    costs = mcu_layer_costs(_manifest()["tasks"]["scene"])
    assert [(i, label) for i, label, _, _ in costs] == [(0, "0 layer0 (conv)"), (1, "1 layer1 (conv)"), (2, "2 layer2 (add)"),
                                                        (3, "3 layer3 (flatten)")]
    assert costs[1][2:] == (150_000.0, 1.3e7)
    assert costs[3][2:] == (0.0, 0.0)  # kept, but neither value can sit on the log axis
    only_qemu = {"c": {"qemu": _qemu([10.0, 20.0])}}
    assert [row[2:] for row in mcu_layer_costs(only_qemu)] == [(None, 10.0), (None, 20.0)]
    assert mcu_layer_costs({"kind": "depth"}) == []


def test_placements_separate_l2_and_the_l3_spill() -> None:
    rows = {name: parts for name, parts, _ in mcu_placements(_manifest())}
    assert set(rows) == {"scene", "segmentation", "depth"}
    assert rows["segmentation"]["weights_in_l2"] == 10_000 and rows["segmentation"]["l3_spill"] == 20_000
    assert rows["segmentation"]["staging_bytes"] == 8_000 and rows["scene"]["l3_spill"] == 0


def test_plots_are_pngs_for_mcu_manifests() -> None:
    manifest = _manifest()
    assert mcu_placement_plot(manifest).startswith(PNG_MAGIC)  # with an L3 spill: two panels
    assert mcu_layer_cycles_plot(manifest).startswith(PNG_MAGIC)
    no_spill = copy.deepcopy(manifest)
    no_spill["tasks"]["segmentation"]["memory_placement"] = _placement("segmentation")
    assert mcu_placement_plot(no_spill).startswith(PNG_MAGIC)
    one = {"tasks": {"$x$": {"cycle_estimate": _estimate("x", [5.0, 6.0, 7.0, 8.0])}}}  # one task, no qemu
    assert mcu_layer_cycles_plot(one).startswith(PNG_MAGIC)
    too_big = {"tasks": {"t": {"memory_placement": _placement("t", "too-big") | {"l2_bytes": 100_000}}}}
    assert mcu_placement_plot(too_big).startswith(PNG_MAGIC)


def test_legend_keeps_the_two_series_apart() -> None:
    assert ESTIMATE_LABEL.startswith("estimated") and SIMULATED_LABEL.startswith("simulated")
    assert "not cycles" in SIMULATED_LABEL


@pytest.mark.parametrize("manifest", [
    {},
    {"tasks": []},
    {"tasks": {"t": {"kind": "depth", "latency_ms": {"median": 1.0}}}},
    {"tasks": {"t": {"memory_placement": {"l2_bytes": 0, "arena_bytes": 5}}}},
    {"tasks": {"t": {"memory_placement": "fits", "cycle_estimate": {"layers": "x"}, "c": {"qemu": {"skipped": "no"}}}}},
    {"tasks": {"t": {"cycle_estimate": {"layers": [{"index": 0, "cycles": 0.0}]}}}},
])
def test_no_plot_without_mcu_data(manifest: dict[str, Any]) -> None:
    assert mcu_placement_plot(manifest) is None
    assert mcu_layer_cycles_plot(manifest) is None


def test_a_deeploy_prefix_run_says_it_covers_only_part_of_the_task():
    from edgemtl.report.sections.mcu import _deeploy_cell
    raw = {"available": True, "ok": True, "scope": "prefix", "prefix_macs_share": 0.732,
           "layers_elsewhere": ["/model/depth/Resize", "/model/depth/fuse/Conv"],
           "memory": {"L1": {"capacity": 128000, "static": 34, "dynamic": 100352, "total": 100386}},
           "fits": {"L1": True}, "reason": "2 layer(s) Deeploy's PULPOpen cannot map"}
    text = _deeploy_cell(raw, {"ok": False})
    assert "prefix only, 73% of the task's MACs" in text and "/model/depth/Resize" in text


def test_long_layer_names_leave_the_panels_room(recwarn) -> None:
    """Found on the tiny flow bundles: ONNX node names such as /model/encoder/stages.1/.../Conv as 45-degree tick
    labels took more than the panel's height, and matplotlib gave up the layout ("axes sizes collapsed to zero")."""
    long = [f"/model/encoder/stages.{i}/stages.{i}.0/shortcut/shortcut.0/Conv" for i in range(18)]
    manifest = {"tasks": {task: {"cycle_estimate": _estimate(task, [5.0, 6.0, 7.0, 8.0]) | {
        "layers": [{"index": i, "name": name, "op": "conv", "cycles": 5.0 + i} for i, name in enumerate(long)]}}
        for task in ("depth", "scene")}}
    assert mcu_layer_cycles_plot(manifest).startswith(PNG_MAGIC)
    assert not [w for w in recwarn if "constrained_layout" in str(w.message)]
