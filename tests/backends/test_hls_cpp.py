"""The HLS C++ backend: generated Vitis HLS projects, C-simulated with g++ and hls4ml's ap_int.h, must give exactly
`run_reference`'s integers: every op alone at the extremes for each input signedness the C backend's tests try, the
C backend's multi-op graphs (and its int64-requantisation and rounding-edge cases), the MoE layer, which must also
run expert-major and double-buffered (its C simulation logs the schedule with EMH_MOE_TRACE), and real m3vit task
paths on quantised images. Projects that share a test compile into one batched binary (one translation unit)."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_model
from edgemtl.backends.c.generate import fits_int32
from edgemtl.backends.hls_cpp import csim
from edgemtl.analysis.fpga_cost import fabric_from_target
from edgemtl.backends.hls_cpp.csim import build_csim, build_csim_batch, run_binary, run_csim, write_tb_data
from edgemtl.backends.hls_cpp.estimate import bram18_blocks, cycles_from_log, estimate_design
from edgemtl.backends.hls_cpp.generate import HlsSources, generate_hls, node_widths
from edgemtl.data import load_data
from edgemtl.errors import EdgemtlError
from edgemtl.model.intgraph import IntGraph, Node, TensorInfo, moe_route, quantize_input, run_reference
from edgemtl.passes.quantize_int8 import build_int_graph
from edgemtl.targets import load_target

sys.path.insert(0, str(Path(__file__).parent))  # the C backend's test graphs (tests/backends is not on sys.path)
from test_c_backend import (CASES, _extreme_inputs, _single, assert_bit_exact, ceil_pool_graph,  # noqa: E402
                            every_op_graph, moe_graph, random_inputs, reshaped_output_graph, transformer_graph,
                            uint8_io_graph, upsampling_graph)

pytestmark = pytest.mark.needs_hls4ml
pytest.importorskip("hls4ml")
if shutil.which("g++") is None:
    pytest.skip("g++ is not on PATH (sudo apt-get install g++)", allow_module_level=True)


# -- graphs beyond the C backend's builders -------------------------------------------------------------------------
def wide_graph() -> IntGraph:
    """uint8_io_graph with mul * 2^8 and shift + 8: the same integers, but requantisations past 32 bits."""
    wide = copy.deepcopy(uint8_io_graph())
    wide.task = "wide"
    for node in wide.nodes:
        node.params["mul"], node.params["add"] = ((node.params[k].astype(np.int64) << 8).astype(np.int32)
                                                  for k in ("mul", "add"))
        node.attrs["shift"] += 8
    return wide


def rounding_edges_graph() -> IntGraph:
    """Negative products on exact .5 boundaries, shift 0 and 31, int32 extremes of mul / add."""
    c, shape = 6, [6, 1, 8]
    tensors = {name: TensorInfo(name, shape, dtype, 1.0) for name, dtype in
               (("x", "int8"), ("y", "int8"), ("z", "uint8"), ("w", "int8"))}
    nodes = [Node("r1", "requant", ["x"], "z", {"shift": 1},
                  {"mul": np.array([1, -1, 3, 5, 1, 7], np.int32), "add": np.array([0, 0, -1, 1, 128, -3], np.int32)}),
             Node("r2", "requant", ["z"], "w", {"shift": 31},
                  {"mul": np.array([2**31 - 1, 2**30, -(2**31), 2**24, 2**31 - 1, 1], np.int32),
                   "add": np.array([-(2**31), 2**30, 0, 2**31 - 1, 0, 0], np.int32)}),
             Node("r3", "add", ["x", "w"], "y", {"shift": 0, "mul_a": -(2**20), "mul_b": 2**12},
                  {"mul": np.ones(c, np.int32), "add": np.arange(c, dtype=np.int32)})]
    return IntGraph("edges", "x", "y", tensors, nodes)


GRAPHS = [every_op_graph, uint8_io_graph, reshaped_output_graph, upsampling_graph, transformer_graph, ceil_pool_graph,
          wide_graph, rounding_edges_graph]


def _inputs(graph: IntGraph) -> np.ndarray:
    """Random samples, all lows, all highs, alternating lows and highs (and the reverse)."""
    return _extreme_inputs(graph)


def _batch(projects: dict[str, tuple[IntGraph, HlsSources]], folder: Path) -> Path:
    return build_csim_batch([sources for _, sources in projects.values()], folder / "bin", timeout_s=300)


# -- every op alone, and the multi-op graphs: one batched build each ---------------------------------------------------
@pytest.fixture(scope="module")
def op_projects(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[IntGraph, HlsSources]]]:
    folder = tmp_path_factory.mktemp("hls_ops")
    projects = {}
    for op, dtype in CASES:
        graph, top = _single(op, dtype), f"{op}_{dtype}"
        projects[top] = (graph, generate_hls(graph, folder / top, top))
    return _batch(projects, folder), projects


@pytest.fixture(scope="module")
def graph_projects(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[IntGraph, HlsSources]]]:
    folder = tmp_path_factory.mktemp("hls_graphs")
    projects = {}
    for make in GRAPHS:
        graph = make()
        projects[make.__name__] = (graph, generate_hls(graph, folder / make.__name__, make.__name__))
    return _batch(projects, folder), projects


@pytest.mark.parametrize(("op", "dtype"), CASES)
def test_op_alone_is_bit_exact_at_the_extremes(op: str, dtype: str, op_projects, tmp_path: Path) -> None:
    exe, projects = op_projects
    graph, sources = projects[f"{op}_{dtype}"]
    inputs = _inputs(graph)
    got, _ = run_binary(sources, exe, inputs, tmp_path, batched=True)
    assert_bit_exact(got, run_reference(graph, inputs)[graph.output])


@pytest.mark.parametrize("make", GRAPHS, ids=[make.__name__ for make in GRAPHS])
def test_multi_op_graph_is_bit_exact(make, graph_projects, tmp_path: Path) -> None:
    exe, projects = graph_projects
    graph, sources = projects[make.__name__]
    inputs = np.concatenate([_inputs(graph), random_inputs(graph, 4, seed=7)])
    got, _ = run_binary(sources, exe, inputs, tmp_path, batched=True)
    assert_bit_exact(got, run_reference(graph, inputs)[graph.output])


def test_widths_agree_with_the_c_backends_int32_proof() -> None:
    """A requantisation fits 32 bits exactly where the C backend's fits_int32 proves its int32 path; the wide graph
    needs more, and its flatten reuses its input's array."""
    seen = set()
    for make in GRAPHS:
        graph = make()
        for node in graph.nodes:
            if "mul" in node.params and node.op != "moe":
                acc_bits, rq_bits = node_widths(graph, node)
                assert acc_bits <= rq_bits + 1 and (rq_bits <= 32) == fits_int32(node, graph), node.name
                seen.add(rq_bits <= 32)
    assert seen == {True, False}


# -- the mixture of experts -------------------------------------------------------------------------------------------
def _schedules(log: str) -> list[list[list[tuple[str, int, int, int]]]]:
    """EMH_MOE_TRACE's log: per sample, per moe call, its events (load / compute, expert, buffer, routed tokens)."""
    samples: list[list[list[tuple[str, int, int, int]]]] = []
    for fields in (line.split() for line in log.splitlines()):
        if fields[:1] == ["sample"]:
            samples.append([])
        elif fields[:2] == ["moe", "begin"]:
            samples[-1].append([])
        elif fields[:2] == ["moe", "load"]:
            samples[-1][-1].append(("load", int(fields[2]), int(fields[3]), 0))
        elif fields[:2] == ["moe", "compute"]:
            samples[-1][-1].append(("compute", int(fields[2]), int(fields[3]), int(fields[4])))
    return samples


def assert_expert_major_double_buffered(events: list[tuple[str, int, int, int]], routed: np.ndarray) -> None:
    """Each expert's weights loaded once, experts in order, each run on its routed tokens only, expert e in buffer
    e % 2; expert e + 1's load issued before e computes (so it can overlap), e + 2's only after (same buffer)."""
    experts = len(routed)
    at = {(kind, e): i for i, (kind, e, _, _) in enumerate(events)}
    assert [e for kind, e, _, _ in events if kind == "load"] == list(range(experts))
    assert [(e, n) for kind, e, _, n in events if kind == "compute"] == list(enumerate(routed.tolist()))
    assert all(buffer == e % 2 for _, e, buffer, _ in events)
    for e in range(experts):
        assert at["load", e] < at["compute", e]
        if e + 1 < experts:
            assert at["load", e + 1] < at["compute", e]
        if e + 2 < experts:
            assert at["compute", e] < at["load", e + 2]


def _routed(x: np.ndarray, node: Node) -> np.ndarray:
    """Per expert, how many of the tokens of one sample x (T, D) the reference routes to it."""
    chosen, _ = moe_route(x[None].astype(np.int64), node)
    return np.bincount(chosen.reshape(-1), minlength=len(node.params["fc1"]))


def test_moe_is_bit_exact_expert_major_and_double_buffered(tmp_path: Path) -> None:
    graph = moe_graph()
    node = graph.nodes[0]
    sources = generate_hls(graph, tmp_path / "moe", "moe")
    assert "emh::moe<12, 8, 6, 4, 4, 2, 10, " in (sources.folder / "firmware" / "moe.cpp").read_text()
    exe = build_csim(sources, defines=["EMH_MOE_TRACE"])
    inputs = np.concatenate([_inputs(graph), random_inputs(graph, 8, seed=9)])
    got, log = run_binary(sources, exe, inputs, tmp_path / "run")
    assert_bit_exact(got, run_reference(graph, inputs)[graph.output])
    schedules = _schedules(log)
    assert len(schedules) == len(inputs) and all(len(s) == 1 for s in schedules)
    for sample, (events,) in zip(inputs, schedules):
        routed = _routed(sample, node)
        assert routed.sum() == 12 * 2
        assert_expert_major_double_buffered(events, routed)


def test_cycle_count_is_the_pipelined_iterations_a_gemm_and_the_moe_run(tmp_path: Path) -> None:
    """EMH_CYCLES counts one cycle per pipelined iteration: a gemm's multiply-accumulates plus the input and output
    copies; the MoE layer's routing, every expert's weight load, and per expert only its routed tokens' work."""
    gemm, moe = _single("gemm_rows", "int8"), moe_graph()
    projects = [generate_hls(gemm, tmp_path / "gemm", "gemm"), generate_hls(moe, tmp_path / "moe", "moe")]
    exe = build_csim_batch(projects, tmp_path / "bin", defines=["EMH_CYCLES"])
    rows, c = gemm.tensors[gemm.input].shape
    k = gemm.nodes[-1].params["weight"].shape[0]
    _, log = run_binary(projects[0], exe, random_inputs(gemm, 2, seed=3), tmp_path / "g", batched=True)
    assert cycles_from_log(log) == [rows * c + rows * k * c + rows * k] * 2
    node = moe.nodes[0]
    experts, hidden, d = node.params["fc1"].shape
    tokens = moe.tensors[moe.input].shape[0]
    inputs = random_inputs(moe, 3, seed=5)
    _, log = run_binary(projects[1], exe, inputs, tmp_path / "m", batched=True)
    fixed = tokens * d * 4 + tokens * experts * d + experts * (2 * hidden * d + hidden + d)   # copies, zero, output, route, loads
    assert cycles_from_log(log) == [fixed + int(_routed(x, node).sum()) * (d + 2 * hidden * d) for x in inputs]


def test_design_estimate_counts_what_the_generated_design_declares() -> None:
    """Resources grow with the experts a path keeps; arrays up to 1 Kbit are LUTRAM, larger ones BRAM18 at the
    block's aspect ratio; every figure is labelled estimated, with its assumptions."""
    fabric = fabric_from_target(load_target("zcu104"))
    assert (bram18_blocks(128, 8), bram18_blocks(2048, 8), bram18_blocks(2049, 8), bram18_blocks(600, 32),
            bram18_blocks(512, 48)) == (0, 1, 2, 2, 2)
    few, many = (estimate_design(moe_variant(e, 1), fabric, [1000, 2000]) for e in (1, 5))
    assert many.bram18 > few.bram18 and many.array_bits > few.array_bits and many.kernels == few.kernels
    assert few.latency_ms == pytest.approx(2000 / 200e3) and few.fits(0.7)
    record = few.to_dict()
    assert record["provenance"]["kind"] == "estimated" and record["fps"] == pytest.approx(1e3 / few.latency_ms)
    assert any("synthesis report" in a for a in record["assumptions"])


def moe_variant(experts: int, top_k: int) -> IntGraph:
    """moe_graph's layer with `experts` of its experts (cycled: expert e + 4 repeats e's router row, so their logits
    tie on every token, with its fc1 negated) and top `top_k`: odd counts run the ping-pong loop's last half-pair."""
    graph = moe_graph()
    graph.task = f"moe_{experts}_{top_k}"
    node, pick = graph.nodes[0], np.arange(experts) % 4
    for key in ("router", "router_mul", "router_add", "fc1", "fc1_mul", "fc1_add", "fc1_shift", "fc2", "fc2_mul",
                "fc2_add", "fc2_shift"):
        node.params[key] = node.params[key][pick].copy()
    node.params["fc1"][4:] = -node.params["fc1"][4:].clip(-127, 127)
    node.attrs["top_k"] = top_k
    return graph


def test_moe_with_odd_and_single_expert_counts_and_tied_logits(tmp_path: Path) -> None:
    projects = {}
    for experts, top_k in ((1, 1), (3, 2), (5, 3)):
        graph = moe_variant(experts, top_k)
        projects[graph.task] = (graph, generate_hls(graph, tmp_path / graph.task, graph.task))
    exe = build_csim_batch([sources for _, sources in projects.values()], tmp_path / "bin", defines=["EMH_MOE_TRACE"])
    for graph, sources in projects.values():
        inputs = np.concatenate([_inputs(graph), random_inputs(graph, 4, seed=2)])
        got, log = run_binary(sources, exe, inputs, tmp_path / sources.top, batched=True)
        assert_bit_exact(got, run_reference(graph, inputs)[graph.output])
        for sample, (events,) in zip(inputs, _schedules(log)):
            assert_expert_major_double_buffered(events, _routed(sample, graph.nodes[0]))
    graph = projects["moe_5_3"][0]   # experts 0 and 4 always tie: wherever 4 is chosen, 0 was chosen before it
    chosen, _ = moe_route(_inputs(graph).astype(np.int64), graph.nodes[0])
    takes_4 = (chosen == 4).any(axis=-1)
    assert takes_4.sum() > 10 and (chosen == 0).any(axis=-1)[takes_4].all()
    assert (np.argmax(chosen == 0, axis=-1) < np.argmax(chosen == 4, axis=-1))[takes_4].all()


def test_moe_on_chip_memory_is_the_expert_major_plan(tmp_path: Path) -> None:
    """Two expert buffers (the plan's double-buffered expert-major working set) and the router; per expert the same
    int8 matrices as the plan, with a 32-bit mul and add per feature where the plan counts a one-byte bias."""
    graph = moe_graph()
    memory = generate_hls(graph, tmp_path, "moe").moe[0]
    experts, hidden, d = graph.nodes[0].params["fc1"].shape
    assert memory.buffers == 2 and "2 of 4 experts on chip" in memory.plan.expert_major.notes
    assert memory.expert_bytes == memory.plan.expert_bytes + 7 * (hidden + d) + 8
    assert memory.router_bytes == (d + 1) * experts + 7 * experts
    plan = memory.plan.expert_major
    assert plan.weight_bytes_on_chip == 2 * memory.plan.expert_bytes + (d + 1) * experts
    assert memory.activation_bytes >= plan.activation_bytes_on_chip


def test_test_bench_compares_with_expected_outputs(tmp_path: Path) -> None:
    """The test bench as build_prj.tcl's csim_design runs it: tb_data inputs, outputs, expected; exit 1 on a difference."""
    graph = moe_graph()
    sources = generate_hls(graph, tmp_path, "moe")
    inputs = random_inputs(graph, 3, seed=4)
    want = run_reference(graph, inputs)[graph.output]
    exe = build_csim(sources)
    assert_bit_exact(run_csim(sources, inputs, tmp_path / "run", exe=exe), want)
    data = write_tb_data(sources, inputs, want)
    command = [str(exe), str(data / "inputs.bin"), str(data / "csim_outputs.bin"), str(data / "expected.bin")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "mismatching samples 0" in done.stdout
    wrong = want.copy()
    wrong[1, 0, 0] += 1 if wrong[1, 0, 0] < 127 else -1
    write_tb_data(sources, inputs, wrong)
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "mismatching samples 1" in done.stdout


# -- real task paths -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def m3vit():
    model, spec = tiny_model("m3vit")
    return model, spec, load_data("scenes", "val", n=8)


@pytest.mark.parametrize("task", ["depth", "scene"])
def test_m3vit_task_path_is_bit_exact_on_real_images(task: str, m3vit, tmp_path: Path) -> None:
    model, spec, data = m3vit
    graph = build_int_graph(model, spec, task, data)
    moe_nodes = [node for node in graph.nodes if node.op == "moe"]
    assert moe_nodes
    sources = generate_hls(graph, tmp_path / task, f"m3vit_{task}")
    exe = build_csim(sources, defines=["EMH_MOE_TRACE"])
    images = quantize_input(graph, data.normalise(data.images[:4]))
    got, log = run_binary(sources, exe, images, tmp_path / "run")
    values = run_reference(graph, images, keep_all=True)
    assert_bit_exact(got, values[graph.output])
    assert len(np.unique(got)) > 1
    for s, calls in enumerate(_schedules(log)):
        assert len(calls) == len(moe_nodes)
        for events, node in zip(calls, moe_nodes):
            assert_expert_major_double_buffered(events, _routed(values[node.inputs[0]][s], node))


# -- the project files and bad input ------------------------------------------------------------------------------------
TCL_STUBS = r"""
set calls {}
proc unknown {args} { global calls; lappend calls $args; return {} }
proc exit {args} { global calls; lappend calls exit }
set status ok
if {[catch {source $::env(PRJ_TCL)} err]} { set status $err }
puts "STATUS $status"
foreach c $calls { puts "CALL $c" }
"""


@pytest.mark.needs_tclsh
@pytest.mark.skipif(shutil.which("tclsh") is None, reason="needs tclsh (apt-get install tcl)")
def test_build_prj_tcl_with_stubbed_vitis(tmp_path: Path) -> None:
    """build_prj.tcl under tclsh with the Vitis commands stubbed: the project, part, 200 MHz clock, sources, and the
    C simulation's argv, which the built test bench then runs as Vitis would."""
    graph = uint8_io_graph()
    sources = generate_hls(graph, tmp_path / "prj", "seg")
    inputs = random_inputs(graph, 2, seed=1)
    want = run_reference(graph, inputs)[graph.output]
    write_tb_data(sources, inputs, want)
    (tmp_path / "harness.tcl").write_text(TCL_STUBS)
    done = subprocess.run(["tclsh", str(tmp_path / "harness.tcl")], capture_output=True, text=True, timeout=60,
                          env={"PRJ_TCL": str(sources.folder / "build_prj.tcl"), "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    out, here = done.stdout, sources.folder.resolve()
    assert "STATUS ok" in out, out
    calls = [line.removeprefix("CALL ") for line in out.splitlines() if line.startswith("CALL ")]
    for expected in ("open_project -reset seg_prj", "set_top seg", "set_part xczu7ev-ffvc1156-2-e",
                     "create_clock -period 5 -name default", "csynth_design", "export_design -format ip_catalog", "exit"):
        assert expected in calls, (expected, calls)
    assert any(c.startswith(f"add_files {here}/firmware/seg.cpp -cflags") for c in calls)
    assert any(c.startswith(f"add_files -tb {here}/seg_test.cpp") for c in calls)
    argv = next(c for c in calls if c.startswith("csim_design -argv")).removeprefix("csim_design -argv ").strip("{}").split()
    assert argv == [f"{here}/tb_data/{name}.bin" for name in ("inputs", "csim_outputs", "expected")]
    run = subprocess.run([str(build_csim(sources)), *argv], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "mismatching samples 0" in run.stdout
    assert_bit_exact(np.frombuffer(Path(argv[1]).read_bytes(), np.uint8).astype(np.int64).reshape(want.shape), want)


def test_unsupported_op_names_op_layer_and_task(tmp_path: Path) -> None:
    graph = uint8_io_graph()
    graph.nodes[1].op = "argmax"
    with pytest.raises(EdgemtlError, match=r"task 'uint8_io'.*layer 'layer1\.conv'.*'argmax'.*HLS C\+\+ backend"):
        generate_hls(graph, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_graphs_and_names_are_refused(tmp_path: Path) -> None:
    graph = uint8_io_graph()
    graph.tensors[graph.nodes[0].output].shape = [4, 7, 8]
    with pytest.raises(EdgemtlError, match=r"layer 'layer0\.conv'"):                 # the C backend's shape checks
        generate_hls(graph, tmp_path)
    graph = _single("softmax", "int8")
    graph.nodes[-1].params["exp"] = graph.nodes[-1].params["exp"] * 4                # e past the kernels' 17 bits
    with pytest.raises(EdgemtlError, match=r"layer 'layer0\.softmax'.*exp table"):
        generate_hls(graph, tmp_path)
    with pytest.raises(EdgemtlError, match="not a C\\+\\+ identifier"):
        generate_hls(uint8_io_graph(), tmp_path, top="my-task")


def test_missing_hls4ml_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (csim.ap_types_dir() / "ap_int.h").is_file()
    monkeypatch.setattr(csim.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EdgemtlError, match="hls4ml is not installed"):
        csim.ap_types_dir()
