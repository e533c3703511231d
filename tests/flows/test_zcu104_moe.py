"""The zcu104 flow on a mixture-of-experts model: each task's expert path as an int8 integer graph, compiled to Vitis
HLS C++ and C-simulated with g++ against the integer reference (flows/fpga_hls_cpp.py). Slowest first: the tiny m3vit
compiled for real (every task, ~30 s); then the step's checks with the simulator faked at its boundary (seconds)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_model

import edgemtl.flows.fpga_hls_cpp as flow
from edgemtl.compile import compile_model
from edgemtl.data import load_data
from edgemtl.errors import EdgemtlError, VerificationError
from edgemtl.flow import CompileOptions, FlowContext, FlowState, Skipped
from edgemtl.flows import check_flow_options
from edgemtl.flows.fpga_hls4ml import board_kit_step
from edgemtl.model.checkpoint import LoadedModel, load
from edgemtl.model.intgraph import IntGraph, quantize_input, run_reference
from edgemtl.passes.quantize_int8 import build_int_graph
from edgemtl.targets import load_target

HLS4ML_STEPS = ("hls4ml_op_check", "quantize_brevitas", "export_qonnx", "hls4ml_csim")


@pytest.mark.slow          # ~20 s; the default suite compiles one task through the CLI (tests/test_cli.py)
@pytest.mark.needs_hls4ml
def test_compile_writes_c_simulated_hls_cpp_for_every_task(tmp_path, checkpoints):
    pytest.importorskip("hls4ml")  # the C simulation's ap_int.h headers
    if shutil.which("g++") is None:
        pytest.skip("g++ is not on PATH (sudo apt-get install g++)")
    options = CompileOptions(metric_samples=16, csim_samples=4, measure_latency=False)
    bundle = compile_model(load(checkpoints["m3vit"]), "zcu104", tmp_path / "bundle", options)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert "needs_other_toolchain" not in manifest
    steps = {step["name"]: step for step in manifest["steps"]}
    assert all(steps[name]["status"] == "skipped" and "expert dispatch" in steps[name]["reason"] for name in HLS4ML_STEPS)
    assert steps["quantize_int8"]["status"] == steps["hls_cpp_csim"]["status"] == "ok"
    assert manifest["passes"]["quantize_brevitas"]["skipped"].startswith("mixture-of-experts model")
    data = load_data("scenes", "val", n=4)
    for task, entry in manifest["tasks"].items():
        hls, int8 = entry["hls_cpp"], entry["int8"]
        assert int8["ok"] and set(int8["metric_int8"]) == set(int8["metric_float"])
        assert "HLS C simulation matches it bit for bit on 4 samples" in int8["metric_int8_source"]
        assert hls["ok"] and hls["project"] == entry["artifacts"]["hls_cpp"] == f"tasks/{task}/hls"
        assert hls["top"] == f"edgemtl_{task}" and "vitis_hls -f build_prj.tcl" in hls["next"]
        project = bundle / hls["project"]
        for name in ("build_prj.tcl", f"{hls['top']}_test.cpp", f"firmware/{hls['top']}.cpp", "firmware/kernels.h"):
            assert (project / name).is_file(), name
        csim = hls["csim"]
        assert csim["ran"] and csim["exact"] and csim["max_lsb_difference"] == 0 and csim["samples"] == 4
        assert csim["compiler"].startswith("g++ ") and csim["seconds"] > 0 and csim["provenance"]["kind"] == "simulated"
        # the test bench data build_prj.tcl's C simulation compares with: real samples, the reference's outputs
        graph = IntGraph.load(bundle / entry["artifacts"]["intgraph"])
        q_inputs = quantize_input(graph, data.normalise(data.images[:4]).astype(np.float64))
        expected = run_reference(graph, q_inputs)[graph.output]
        dtype = {role: flow.csim.NUMPY_TYPE[graph.tensors[name].dtype] for role, name in (("in", graph.input),
                                                                                             ("out", graph.output))}
        assert (project / "tb_data/inputs.bin").read_bytes() == q_inputs.astype(dtype["in"]).tobytes()
        written = np.frombuffer((project / "tb_data/expected.bin").read_bytes(), dtype["out"])
        assert np.array_equal(written.reshape(expected.shape), expected)
        (moe,) = hls["moe"]  # the tiny m3vit: one MoE block; two expert buffers on chip, as the expert-major plan
        assert moe["buffers"] == 2 and "2 of 4 experts on chip" in moe["plan_expert_major"]["notes"]
        assert moe["weight_bytes"] >= moe["plan_expert_major"]["weight_bytes_on_chip"] > 0
        assert entry["roofline"]["precision"] == "w8a8" and entry["roofline"]["provenance"]["kind"] == "estimated"
        assert manifest["moe"]["memory_plan"][task]["precision"] == "w8a8"
        assert json.loads((project / "io.json").read_text())["top"] == hls["top"]   # what hw/hls_cpp_driver.py reads
        assert manifest["board_kit"]["commands"][task][1].endswith(f"{project.relative_to(bundle)}/{hls['top']}_prj/"
                                                                   f"solution1/impl/ip {hls['top']}")
    switchable = manifest["moe"]["switchable_hls"]   # one design serving every task, each run after a task switch
    assert switchable["ok"] and switchable["task_ids"] == {task: k for k, task in enumerate(manifest["tasks"])}
    assert switchable["csim"]["exact"] and switchable["csim"]["runs"] == 3 * 4 * len(manifest["tasks"])
    assert switchable["switching"]["max_ratio"] == 1.0 and switchable["estimate"]["fits"]
    assert switchable["rom_bytes"] < switchable["per_task_designs_rom_bytes"]
    assert (bundle / "switchable/hls/firmware/edgemtl_tasks.cpp").is_file()
    assert (bundle / "hw" / "README.md").is_file() and "tasks/<task>/hls" in manifest["board_kit"]["next"]
    assert (bundle / "hw" / "hls_cpp_design.tcl").is_file() and "hw/hls_cpp_design.tcl" in manifest["board_kit"]["next"]


# -- the step with the simulator faked at its boundary ---------------------------------------------------------------
@pytest.fixture(scope="module")
def scene_graph() -> IntGraph:
    model, spec = tiny_model("m3vit")
    return build_int_graph(model, spec, "scene", load_data("scenes", "train", n=8))


def context(tmp_path: Path, graphs: dict[str, IntGraph], arch: str = "m3vit", **options) -> FlowContext:
    model, spec = tiny_model(arch)
    loaded = LoadedModel(model, spec, tmp_path / "model.pt", "0" * 64, "checkpoint")
    manifest = {"tasks": {task: {} for task in spec.task_names}, "model": {}}
    state = FlowState(tasks=list(graphs) or spec.task_names, data=load_data("scenes", "val", n=3), int_graphs=graphs)
    return FlowContext(loaded, load_target("zcu104"), CompileOptions(csim_samples=3, **options), tmp_path, manifest,
                       state=state)


@pytest.fixture()
def simulated(monkeypatch):
    """g++ faked: the build returns a path, the run returns the reference's outputs plus what the test sets."""
    offset = {}
    monkeypatch.setattr(flow.csim, "build_csim_batch", lambda projects, folder, **_: folder / "batch")
    monkeypatch.setattr(flow, "_compiler", lambda: {"compiler": "g++ 0.0", "flags": "-O2"})

    def run_binary(sources, exe, q_inputs, workdir, batched):
        graph = IntGraph.load(sources.folder.parent / "intgraph")
        got = run_reference(graph, q_inputs)[graph.output].copy()
        got.reshape(-1)[offset.get("at", 0)] += offset.get("by", 0)
        return got, ""

    monkeypatch.setattr(flow.csim, "run_binary", run_binary)
    monkeypatch.setattr(flow, "_simulator_missing", lambda: None)
    return offset


def test_a_difference_past_one_lsb_fails_the_compile_naming_task_and_worst(tmp_path, scene_graph, simulated):
    scene_graph.save(tmp_path / "tasks/scene/intgraph")
    simulated.update(at=5, by=1)  # 1 LSB: allowed, and said so
    ctx = context(tmp_path, {"scene": scene_graph})
    assert flow.hls_cpp_step(ctx) is None
    csim = ctx.manifest["tasks"]["scene"]["hls_cpp"]["csim"]
    assert csim["max_lsb_difference"] == 1 and csim["exact"] is False and csim["samples"] == 3
    assert csim["provenance"]["detail"].startswith("within 1 LSB")
    simulated.update(at=4, by=-3)  # sample 1, output (1,) of the scene head's 3 logits
    with pytest.raises(VerificationError) as err:
        flow.hls_cpp_step(context(tmp_path, {"scene": scene_graph}))
    assert str(err.value) == ("task 'scene': the HLS C simulation of tasks/scene/hls differs from the int8 reference "
                              "executor by 3 LSB (sample 1, output (1,); 1 allowed) on 3 samples; this is a backend bug, "
                              "please report it")


def test_without_gxx_the_projects_are_written_and_the_record_says_why(tmp_path, scene_graph, monkeypatch):
    """As the hls4ml testbench without g++: the compile goes on. A task the backend refuses is recorded, not fatal."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    generate = flow.generate_hls

    def refusing(graph, folder, top):
        if top == "edgemtl_depth":
            raise EdgemtlError("task 'depth': layer 'x' has op 'argmax', which the HLS C++ backend lacks")
        return generate(graph, folder, top)

    monkeypatch.setattr(flow, "generate_hls", refusing)
    ctx = context(tmp_path, {"scene": scene_graph, "depth": scene_graph})
    ctx.manifest["tasks"]["scene"]["int8"] = {"ok": True, "metric_int8": {"accuracy": 0.5}, "metrics_data": "scenes/val"}
    assert flow.hls_cpp_step(ctx) is None
    scene, depth = ctx.manifest["tasks"]["scene"], ctx.manifest["tasks"]["depth"]
    assert scene["hls_cpp"]["csim"] == {"built": False, "ran": False, "reason": "g++ not found on PATH"}
    assert scene["hls_cpp"]["estimate"]["latency_ms"] is None and scene["hls_cpp"]["estimate"]["bram18"] > 0
    assert scene["int8"]["metric_int8_source"].endswith("the HLS C simulation was not run")
    assert (tmp_path / "tasks/scene/hls/tb_data/expected.bin").is_file()
    assert depth["hls_cpp"] == {"ok": False, "error": "task 'depth': layer 'x' has op 'argmax', which the HLS C++ "
                                                      "backend lacks"}
    assert not (tmp_path / "tasks/depth/hls").exists() and "hls_cpp" not in depth.get("artifacts", {})


@pytest.fixture()
def switchable(monkeypatch):
    """g++ faked for the design serving every task: each run gives its task's reference output (plus what the test
    sets, at the test's run) and 100 cycles."""
    change = {}
    monkeypatch.setattr(flow.csim, "build_csim", lambda sources, **_: sources.folder / "exe")
    monkeypatch.setattr(flow, "_compiler", lambda: {"compiler": "g++ 0.0", "flags": "-O2"})

    def run(sources, exe, q_inputs, tasks, workdir):
        graphs = {t: IntGraph.load(sources.folder.parent.parent / f"tasks/{t}/intgraph") for t in set(tasks)}
        outputs = [run_reference(graphs[t], q[None])[graphs[t].output][0].copy() for t, q in zip(tasks, q_inputs)]
        if "run" in change:
            outputs[change["run"]].reshape(-1)[0] += change["by"]
        return outputs, "".join(f"EMH_CYCLES {i} 100\n" for i in range(len(tasks)))

    monkeypatch.setattr(flow.csim, "run_multitask_binary", run)
    monkeypatch.setattr(flow, "_simulator_missing", lambda: None)
    return change


def _two_task_context(tmp_path: Path, scene_graph: IntGraph) -> FlowContext:
    depth = copy.deepcopy(scene_graph)
    depth.task = "depth"
    graphs = {"scene": scene_graph, "depth": depth}
    for task, graph in graphs.items():
        graph.save(tmp_path / f"tasks/{task}/intgraph")
    ctx = context(tmp_path, graphs)
    for task in graphs:
        ctx.manifest["tasks"][task]["hls_cpp"] = {"ok": True}
    return ctx


def test_one_design_for_every_task_is_checked_run_by_run(tmp_path, scene_graph, switchable):
    ctx = _two_task_context(tmp_path, scene_graph)
    assert flow.switchable_hls_step(ctx) is None
    record = ctx.manifest["moe"]["switchable_hls"]
    assert record["ok"] and record["task_ids"] == {"scene": 0, "depth": 1} and record["csim"]["runs"] == 3 * 2 + 2 * 3 * 2
    assert record["csim"]["max_lsb_difference"] == {"scene": 0, "depth": 0} and record["switching"]["max_ratio"] == 1.0
    assert record["estimate"]["cycles_per_sample"] == [100] * 18 and record["estimate"]["provenance"]["kind"] == "estimated"
    assert record["rom_provenance"]["kind"] == "static" and record["switching"]["provenance"]["kind"] == "simulated"
    tb = tmp_path / "switchable/hls/tb_data"
    assert (tb / "tasks.bin").read_bytes() == bytes([0, 1] * 3 + [0] * 6 + [1] * 6)
    switchable.update(run=3, by=2)   # the depth run of sample 1, right after a switch from scene
    with pytest.raises(VerificationError, match=r"^task 'depth': the HLS C simulation of switchable/hls differs .* by 2 LSB"):
        flow.switchable_hls_step(_two_task_context(tmp_path, scene_graph))


def test_one_design_is_written_without_gxx_and_left_out_where_it_cannot_serve(tmp_path, scene_graph, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    ctx = _two_task_context(tmp_path, scene_graph)
    assert flow.switchable_hls_step(ctx) is None
    record = ctx.manifest["moe"]["switchable_hls"]
    assert record["csim"] == {"built": False, "ran": False, "reason": "g++ not found on PATH"}
    assert "switching" not in record and (tmp_path / "switchable/hls/tb_data/expected.bin").is_file()
    ctx = _two_task_context(tmp_path, scene_graph)
    ctx.state.int_graphs["depth"].tensors[ctx.state.int_graphs["depth"].input].scale *= 2
    assert flow.switchable_hls_step(ctx) is None
    assert ctx.manifest["moe"]["switchable_hls"] == {"ok": False, "error": (
        "the task graphs quantize the input differently (shape, dtype or scale); one design takes one input: use the "
        "per-task designs")}
    assert not (tmp_path / "switchable/hls").exists()
    ctx = context(tmp_path, {"scene": scene_graph})
    ctx.manifest["tasks"]["scene"]["hls_cpp"] = {"ok": True}
    assert flow.switchable_hls_step(ctx) == Skipped("one task: its own design (tasks/<task>/hls) is the design")


def test_a_model_without_experts_takes_the_hls4ml_path(tmp_path):
    ctx = context(tmp_path, {}, arch="mtl-cnn")
    assert flow.hls_cpp_step(ctx) == Skipped(flow.NOT_MOE)
    assert flow.quantize_step(ctx) == Skipped(flow.NOT_MOE)
    assert flow.switchable_hls_step(ctx) == Skipped(flow.NOT_MOE)
    assert ctx.manifest["passes"]["quantize_int8"] == {"skipped": flow.NOT_MOE}


@pytest.mark.parametrize(("options", "flags"), [({"precision": "w4a4"}, "--precision"),
                                                ({"layer_bits": {"first": (8, 8)}}, "--layer-bits"),
                                                ({"task_layer_bits": {"depth": {"precision": "w4a4", "layers": {}}}},
                                                 "--layer-bits")])
def test_hls4ml_quantizer_options_for_an_moe_model_are_a_one_line_error(tmp_path, options, flags):
    ctx = context(tmp_path, {}, **options)
    with pytest.raises(EdgemtlError, match=f"^{flags} sets the hls4ml path's quantizers; an MoE model on zcu104 is "
                                           r"quantized to int8 \(w8a8\)"):
        check_flow_options(ctx.target, ctx.loaded, ctx.options)
    check_flow_options(ctx.target, ctx.loaded, CompileOptions(precision="w8a8"))  # what it gets anyway
    mtl_cnn = context(tmp_path, {}, arch="mtl-cnn", **options)
    check_flow_options(mtl_cnn.target, mtl_cnn.loaded, mtl_cnn.options)  # the hls4ml path takes them


def test_board_kit_gives_the_hls_cpp_design_and_driver_commands(tmp_path):
    """An MoE bundle's next steps: the IP, hw/hls_cpp_design.tcl on it, hw/hls_cpp_driver.py on the board; per task
    with its top; a task the backend refused gets none."""
    ctx = context(tmp_path, {})
    ctx.manifest["tasks"]["scene"]["hls_cpp"] = {"ok": True, "top": "edgemtl_scene"}
    ctx.manifest["tasks"]["depth"]["hls_cpp"] = {"ok": False, "error": "refused"}
    ctx.manifest["moe"] = {"switchable_hls": {"ok": True, "top": "edgemtl_tasks", "project": "switchable/hls"}}
    board_kit_step(ctx)
    kit = ctx.manifest["board_kit"]
    assert "note" not in kit and "not generated" not in json.dumps(kit)
    assert (tmp_path / "hw" / "hls_cpp_design.tcl").is_file() and (tmp_path / "hw" / "hls_cpp_driver.py").is_file()
    for command in ("(cd tasks/<task>/hls && vitis_hls -f build_prj.tcl)",
                    "vivado -mode batch -source hw/hls_cpp_design.tcl -tclargs tasks/<task>/hls/<top>_prj/solution1/impl/ip "
                    "<top>", "python3 hls_cpp_driver.py run edgemtl.bit io.json inputs.npy"):
        assert command in kit["next"], command
    assert kit["commands"] == {"scene": [
        "(cd tasks/scene/hls && vitis_hls -f build_prj.tcl)",
        "vivado -mode batch -source hw/hls_cpp_design.tcl -tclargs tasks/scene/hls/edgemtl_scene_prj/solution1/impl/ip "
        "edgemtl_scene", "python3 hls_cpp_driver.py run edgemtl.bit io.json inputs.npy"]}
    assert kit["switchable_commands"] == [
        "(cd switchable/hls && vitis_hls -f build_prj.tcl)",
        "vivado -mode batch -source hw/hls_cpp_design.tcl -tclargs switchable/hls/edgemtl_tasks_prj/solution1/impl/ip "
        "edgemtl_tasks", "python3 hls_cpp_driver.py run edgemtl.bit io.json inputs.npy --task <task>"]


def test_top_names_are_distinct_cpp_identifiers():
    tops = flow.top_names(["depth", "sem-seg", "sem_seg", "3d", "tiefe-ä"])
    assert tops == {"depth": "edgemtl_depth", "sem-seg": "edgemtl_sem_seg", "sem_seg": "edgemtl_sem_seg_2",
                    "3d": "edgemtl_3d", "tiefe-ä": "edgemtl_tiefe__"}
