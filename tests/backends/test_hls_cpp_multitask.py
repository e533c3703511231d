"""One HLS C++ design serving every task (backends/hls_cpp/multitask.py), C-simulated with g++: every task's outputs
must equal its own integer graph's reference, also when tasks alternate sample by sample (a value left over from the
previous task would show); the shifts it aligns must be the same integers; what differs per task must be selected, not
duplicated; and m3vit task paths with different expert sets must run on one MoE engine, each task only its experts."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_model
from edgemtl.analysis.fpga_cost import fabric_from_target
from edgemtl.backends.hls_cpp import csim
from edgemtl.backends.hls_cpp.estimate import estimate_multitask
from edgemtl.backends.hls_cpp.multitask import align_shifts, generate_multitask_hls, write_tb_data
from edgemtl.data import load_data
from edgemtl.errors import EdgemtlError
from edgemtl.flows.fpga_hls_cpp import switch_cycles
from edgemtl.model.intgraph import IntGraph, quantize_input, run_reference
from edgemtl.passes.partition_experts import TaskExpertPath
from edgemtl.passes.quantize_int8 import build_int_graph
from edgemtl.targets import load_target

sys.path.insert(0, str(Path(__file__).parent))  # the C backend's test graphs (tests/backends is not on sys.path)
from test_c_backend import assert_bit_exact, random_inputs, uint8_io_graph  # noqa: E402
from test_hls_cpp import TCL_STUBS, _schedules  # noqa: E402

pytestmark = pytest.mark.needs_hls4ml
pytest.importorskip("hls4ml")
if shutil.which("g++") is None:
    pytest.skip("g++ is not on PATH (sudo apt-get install g++)", allow_module_level=True)


def _variant(task: str, shift_change: int, scale: float = 1.0) -> IntGraph:
    """uint8_io_graph as another task: its first conv requantised with `shift_change` more bits (mul and add scaled
    to match, times `scale`: another calibration) and its add's input multipliers changed."""
    graph = copy.deepcopy(uint8_io_graph())
    graph.task = task
    conv, add = graph.nodes[0], graph.nodes[2]
    factor = 2.0 ** shift_change * scale
    for key in ("mul", "add"):
        conv.params[key] = np.rint(conv.params[key].astype(np.float64) * factor).astype(np.int32)
    conv.attrs["shift"] += shift_change
    add.attrs["mul_a"], add.attrs["mul_b"] = 60, 50
    return graph


def _run_interleaved(sources, graphs: dict[str, IntGraph], inputs: np.ndarray, folder: Path,
                     defines: tuple[str, ...] = ()) -> tuple[list[tuple[str, int]], str]:
    """Every task on every sample, alternating task by task, checked bit for bit; the runs and the stderr."""
    runs = [(task, s) for s in range(len(inputs)) for task in graphs]
    exe = csim.build_csim(sources, defines=list(defines))
    got, log = csim.run_multitask_binary(sources, exe, inputs[[s for _, s in runs]], [t for t, _ in runs], folder)
    expected = {task: run_reference(graph, inputs)[graph.output] for task, graph in graphs.items()}
    for out, (task, s) in zip(got, runs):
        assert_bit_exact(out, expected[task][s])
    return runs, log


def test_aligned_shifts_are_the_same_integers_and_share_one_call(tmp_path: Path) -> None:
    graphs = {"a": uint8_io_graph(), "b": _variant("b", -2, 1.1)}
    graphs["a"].task = "a"
    aligned = align_shifts(graphs)
    conv_a, conv_b = aligned["a"].nodes[0], aligned["b"].nodes[0]
    assert conv_a.attrs["shift"] == conv_b.attrs["shift"] == graphs["a"].nodes[0].attrs["shift"]
    assert graphs["b"].nodes[0].attrs["shift"] == conv_b.attrs["shift"] - 2      # the originals are left alone
    inputs = random_inputs(graphs["a"], 6, seed=3)
    for task in graphs:
        assert_bit_exact(run_reference(aligned[task], inputs)[aligned[task].output],
                         run_reference(graphs[task], inputs)[graphs[task].output])
    sources = generate_multitask_hls(graphs, tmp_path / "prj", "two")
    assert sources.switched == {} and len(sources.shared) == len(graphs["a"].nodes)
    source = (tmp_path / "prj" / "firmware" / "two.cpp").read_text()
    assert "switch (task)" in source and source.count("emh::conv<") == 2          # only the output copy switches
    weights = (tmp_path / "prj" / "firmware" / "two_weights.h").read_text()
    assert "mul_0[2][4]" in weights and "w_0[" in weights and "w_0[2]" not in weights   # weights once, mul per task
    _run_interleaved(sources, graphs, inputs, tmp_path / "run")


def test_shifts_int32_cannot_align_run_as_one_call_per_form(tmp_path: Path) -> None:
    graphs = {"a": uint8_io_graph(), "b": _variant("b", 10, scale=0.25)}        # b: 10 more bits, a quarter the scale
    graphs["a"].task = "a"
    assert int(np.abs(graphs["a"].nodes[0].params["add"]).max()) << 10 > 2**31    # a at b's shift: past int32
    assert align_shifts(graphs)["a"].nodes[0].attrs["shift"] == graphs["a"].nodes[0].attrs["shift"]
    sources = generate_multitask_hls(graphs, tmp_path / "prj", "two")
    assert sources.switched == {graphs["a"].nodes[0].name: 2}
    estimate = estimate_multitask(sources, fabric_from_target(load_target("zcu104")))
    shared = estimate_multitask(generate_multitask_hls({"a": graphs["a"], "c": _variant("c", 0)}, tmp_path / "one", "one"),
                                fabric_from_target(load_target("zcu104")))
    assert estimate.kernels == shared.kernels + 1                                  # the switched conv counts twice
    _run_interleaved(sources, graphs, random_inputs(graphs["a"], 4, seed=4), tmp_path / "run")


def test_test_bench_refuses_a_task_id_outside_the_design(tmp_path: Path) -> None:
    graphs = {"a": uint8_io_graph(), "b": _variant("b", 0)}
    graphs["a"].task = "a"
    sources = generate_multitask_hls(graphs, tmp_path / "prj", "two")
    inputs = random_inputs(graphs["a"], 1, seed=5)
    write_tb_data(sources, inputs, ["b"])
    (sources.folder / "tb_data" / "tasks.bin").write_bytes(bytes([2]))
    done = subprocess.run([str(csim.build_csim(sources)), *(str(sources.folder / "tb_data" / f) for f in
                                                            ("inputs.bin", "tasks.bin", "out.bin"))],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "outside 0 .. 1" in done.stderr


def test_inputs_quantised_differently_cannot_share_a_design(tmp_path: Path) -> None:
    other = _variant("b", 0)
    other.tensors[other.input].scale *= 2
    with pytest.raises(EdgemtlError, match="quantize the input differently"):
        generate_multitask_hls({"a": uint8_io_graph(), "b": other}, tmp_path / "prj", "two")
    with pytest.raises(EdgemtlError, match="not a C\\+\\+ identifier"):
        generate_multitask_hls({"a": uint8_io_graph()}, tmp_path / "prj", "two-tasks")


@pytest.mark.needs_tclsh
@pytest.mark.skipif(shutil.which("tclsh") is None, reason="needs tclsh (apt-get install tcl)")
def test_build_prj_tcl_passes_the_task_ids(tmp_path: Path) -> None:
    graphs = {"a": uint8_io_graph(), "b": _variant("b", 0)}
    graphs["a"].task = "a"
    sources = generate_multitask_hls(graphs, tmp_path / "prj", "two")
    inputs = random_inputs(graphs["a"], 2, seed=6)
    runs = ["a", "b"]
    write_tb_data(sources, inputs, runs, [run_reference(graphs[t], inputs[i:i + 1])[graphs[t].output][0]
                                          for i, t in enumerate(runs)])
    (tmp_path / "harness.tcl").write_text(TCL_STUBS)
    done = subprocess.run(["tclsh", str(tmp_path / "harness.tcl")], capture_output=True, text=True, timeout=60,
                          env={"PRJ_TCL": str(sources.folder / "build_prj.tcl"), "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    calls = [line.removeprefix("CALL ") for line in done.stdout.splitlines() if line.startswith("CALL ")]
    argv = next(c for c in calls if c.startswith("csim_design -argv")).removeprefix("csim_design -argv ").strip("{}").split()
    here = sources.folder.resolve()
    assert argv == [f"{here}/tb_data/{name}.bin" for name in ("inputs", "tasks", "csim_outputs", "expected")]
    run = subprocess.run([str(csim.build_csim(sources)), *argv], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "mismatching samples 0" in run.stdout


# -- real m3vit task paths, each with its own experts ---------------------------------------------------------------
KEPT = {"segmentation": [0, 1], "depth": [1, 2, 3], "normals": [3], "edges": [0, 1, 2, 3], "scene": [2]}


@pytest.fixture(scope="module")
def m3vit_paths() -> tuple[dict[str, IntGraph], np.ndarray]:
    model, spec = tiny_model("m3vit")
    data = load_data("scenes", "val", n=8)
    graphs = {task: build_int_graph(TaskExpertPath(model, task, [kept]).eval(), spec, task, data)
              for task, kept in KEPT.items()}
    return graphs, quantize_input(graphs["depth"], data.normalise(data.images[:3]).astype(np.float64))


def test_m3vit_paths_share_one_moe_engine_each_task_its_experts(m3vit_paths, tmp_path: Path) -> None:
    graphs, inputs = m3vit_paths
    sources = generate_multitask_hls(graphs, tmp_path / "prj", "m3vit_tasks")
    assert sources.switched == {} and set(sources.task_only) == set(KEPT)          # the heads: one case each
    (layer, rows), = sources.moe_rows.items()
    assert len({r for ids in rows.values() for r in ids}) == 4                      # each expert stored once
    assert {task: len(ids) for task, ids in rows.items()} == {task: len(k) for task, k in KEPT.items()}
    source = (tmp_path / "prj" / "firmware" / "m3vit_tasks.cpp").read_text()
    assert source.count("emh::moe<") == 1 and "s_axilite port = task" in source
    assert len(sources.activation_bits) < len(sources.shared) / 4       # arrays reused, heads across tasks too
    runs, log = _run_interleaved(sources, graphs, inputs, tmp_path / "run", defines=("EMH_MOE_TRACE",))
    for (task, _), (calls,) in zip(runs, _schedules(log)):
        computed = [e for kind, e, _, _ in calls if kind == "compute"]
        assert computed == list(range(len(KEPT[task])))                             # its experts only, in order


def test_first_inference_after_a_switch_against_steady_state() -> None:
    runs = [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 0), ("a", 0), ("a", 1), ("a", 1), ("b", 0), ("b", 0)]
    cycles = [100, 200, 110, 210, 100, 99, 110, 110, 200, 200]
    record = switch_cycles(runs, cycles)
    assert record["per_task"]["a"]["pairs"] == 2 and record["per_task"]["a"]["max_ratio"] == pytest.approx(100 / 99)
    assert record["per_task"]["b"] == {"pairs": 1, "max_ratio": 1.0, "after_switch_cycles": [200], "steady_cycles": [200]}
    assert record["max_ratio"] == pytest.approx(100 / 99)
