"""The ZCU104 kit for the HLS C++ tops (mixture-of-experts models) off the board: hls_cpp_driver.py against a fake
`pynq` whose "hardware" runs the integer reference on what it reads from DDR at the addresses written into its
registers (the cache faked too: the IP sees only flushed bytes, the A53 only invalidated ones); hls_cpp_design.tcl
under tclsh with Vivado's commands stubbed (skipped without tclsh); the io.json generate_hls writes."""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from edgemtl.backends.hls_cpp.generate import generate_hls
from edgemtl.backends.hls_cpp.multitask import generate_multitask_hls
from edgemtl.flows.fpga_hls4ml import hls_cpp_board_commands
from edgemtl.model.intgraph import RANGES, IntGraph, quantize_input, run_reference

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))  # the C backend's test graphs
from test_c_backend import moe_graph, transformer_graph, uint8_io_graph  # noqa: E402

KIT = Path(__file__).resolve().parents[2] / "hw" / "zcu104"
DDR_HIGH = 0x8_0000_0000   # the ZCU104's upper DDR: both halves of an address matter


def load_driver():
    spec = importlib.util.spec_from_file_location("zcu104_hls_cpp_driver", KIT / "hls_cpp_driver.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------------------
# the fake board: DDR behind a cache, an IP with a register map and a control register
# ---------------------------------------------------------------------------------------------------------
class FakeBuffer(np.ndarray):
    """A pynq buffer: the array is what the A53 sees (its cache), `ddr` what the PL sees."""

    def flush(self):
        self.ddr[:] = self
        self.board.calls.append(("flush", self.device_address))

    def invalidate(self):
        self[:] = self.ddr
        self.board.calls.append(("invalidate", self.device_address))

    def freebuffer(self):
        self.freed = True


class FakeRegisterMap:
    """Vitis's registers for the two addresses, in one naming style; every write recorded."""

    def __init__(self, board, names):
        object.__setattr__(self, "_board", board)
        for name in ["CTRL", "GIER", "IP_IER", "IP_ISR", *names]:
            object.__setattr__(self, name, 0)

    def __setattr__(self, name, value):
        if not hasattr(self, name):
            raise AttributeError(f"the register map has no {name}")
        self._board.calls.append(("register", name, value))
        object.__setattr__(self, name, value)


STYLES = {"halves": ["input_r_1", "input_r_2", "output_r_1", "output_r_2"], "whole": ["input_r", "output_r"],
          "c_names": ["input", "output"]}


class FakeIP:
    def __init__(self, board, graph, style, hung):
        self.board, self.graph, self.hung = board, graph, hung
        self.register_map = FakeRegisterMap(board, STYLES[style])
        self.done = False

    def _address(self, argument):
        rm, base = self.register_map, {"input": "input_r", "output": "output_r"}[argument]
        if hasattr(rm, f"{base}_1"):
            return getattr(rm, f"{base}_1") | getattr(rm, f"{base}_2") << 32
        return getattr(rm, base) if hasattr(rm, base) else getattr(rm, argument)

    def write(self, offset, value):
        self.board.calls.append(("write", offset, value))
        if offset == 0 and value & 1 and not self.hung:  # ap_start: one sample from DDR to DDR
            source, target = self.board.memory[self._address("input")], self.board.memory[self._address("output")]
            q = source.ddr.astype(np.int64).reshape(1, *self.graph.tensors[self.graph.input].shape)
            self.board.seen.append(q[0])
            out = run_reference(self.graph, q)[self.graph.output].reshape(-1)
            target.ddr[:out.size] = out   # the design serving every task: its largest output's buffer
            self.done = True

    def read(self, offset):
        assert offset == 0, offset
        done, self.done = self.done, False  # ap_done clears when read
        return 0x4 | (0x2 if done else 0)


class FakeBoard:
    def __init__(self, graph, top, style="halves", hung=False):
        self.calls, self.memory, self.seen, self.allocated = [], {}, [], []
        setattr(self, f"{top}_0", FakeIP(self, graph, style, hung))


def fake_pynq(board):
    module = types.ModuleType("pynq")

    def overlay(path):
        board.bitfile = path
        return board

    def allocate(shape, dtype):
        buffer = np.zeros(shape, dtype=dtype).view(FakeBuffer)
        buffer.board, buffer.ddr, buffer.freed = board, np.zeros(shape, dtype=dtype), False
        buffer.device_address = DDR_HIGH + 0x10_0000 * (len(board.allocated) + 1) + 0x40
        board.memory[buffer.device_address] = buffer
        board.allocated.append(buffer)
        return buffer

    module.Overlay, module.allocate = overlay, allocate
    return module


def float_inputs(graph: IntGraph, n: int, seed: int, dtype=np.float64) -> np.ndarray:
    """Floats around the input's range: exact half steps (rounding to even), saturating values, noise."""
    info = graph.tensors[graph.input]
    lo, hi = RANGES[info.dtype]
    rng = np.random.default_rng(seed)
    steps = rng.integers(lo - 20, hi + 21, size=(n, *info.shape)) + rng.choice([0.0, 0.5, -0.5, 0.25], (n, *info.shape))
    return (steps * info.scale).astype(dtype)


@pytest.fixture()
def project(tmp_path):
    def make(graph: IntGraph, top: str = "edgemtl_t") -> Path:
        return generate_hls(graph, tmp_path / graph.task / "hls", top).folder / "io.json"
    return make


# ---------------------------------------------------------------------------------------------------------
# (a) the driver
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, style, dtype", [(moe_graph, "halves", np.float64), (transformer_graph, "whole", np.float32),
                                                (uint8_io_graph, "c_names", np.float64)])
def test_driver_runs_the_top_bit_exact_through_registers_and_ddr(make, style, dtype, project, monkeypatch):
    graph = make()
    io_json = project(graph)
    board = FakeBoard(graph, "edgemtl_t", style)
    monkeypatch.setitem(sys.modules, "pynq", fake_pynq(board))
    model = load_driver().HlsCppModel("edgemtl.bit", io_json)
    assert board.bitfile == "edgemtl.bit"
    x_in, x_out = graph.tensors[graph.input], graph.tensors[graph.output]
    assert [(b.shape, b.dtype) for b in board.allocated] == [((x_in.elements,), np.dtype(x_in.dtype)),
                                                            ((x_out.elements,), np.dtype(x_out.dtype))]
    in_address, out_address = (b.device_address for b in board.allocated)
    written = {call[1]: call[2] for call in board.calls if call[0] == "register"}
    expected = {"halves": {"input_r_1": in_address & 0xFFFFFFFF, "input_r_2": in_address >> 32,
                           "output_r_1": out_address & 0xFFFFFFFF, "output_r_2": out_address >> 32},
                "whole": {"input_r": in_address, "output_r": out_address},
                "c_names": {"input": in_address, "output": out_address}}[style]
    assert written == expected

    x = float_inputs(graph, 3, seed=len(style), dtype=dtype)
    board.calls.clear()
    out = model(x)
    q = quantize_input(graph, x)
    assert np.array_equal(np.stack(board.seen), q)  # the integers the IP read are the reference's, exactly
    want = run_reference(graph, q)[graph.output]
    assert model.raw.shape == want.shape and np.array_equal(model.raw, want)
    assert out.dtype == np.float64 and np.array_equal(out, want.astype(np.float64) * x_out.scale)
    # per sample: flush the input, start, and only then read the output back through the cache
    per_sample = board.calls[: board.calls.index(("write", 0, 1)) + 1]
    assert ("flush", in_address) in per_sample and sum(1 for c in board.calls if c == ("write", 0, 1)) == 3
    assert board.calls[-1] == ("invalidate", out_address)

    one = model(x[1])  # one sample in, one sample out
    assert one.shape == tuple(x_out.shape) and np.array_equal(model.raw, want[1])
    with pytest.raises(ValueError, match="inputs must be"):
        model(x[:, :1])
    model.close()
    assert all(b.freed for b in board.allocated)


def test_a_hung_ip_is_a_clear_timeout(project, monkeypatch):
    graph = uint8_io_graph()
    board = FakeBoard(graph, "edgemtl_t", hung=True)
    monkeypatch.setitem(sys.modules, "pynq", fake_pynq(board))
    model = load_driver().HlsCppModel("edgemtl.bit", project(graph), timeout_s=0.05)
    with pytest.raises(RuntimeError, match=r"edgemtl_t_0 did not raise ap_done within 0.05 s"):
        model(float_inputs(graph, 1, seed=0)[0])


def test_a_missing_ip_or_register_is_named(project, monkeypatch):
    graph = uint8_io_graph()
    io_json = project(graph, top="edgemtl_seg")
    monkeypatch.setitem(sys.modules, "pynq", fake_pynq(FakeBoard(graph, "edgemtl_depth")))
    with pytest.raises(RuntimeError, match="the overlay has no IP edgemtl_seg_0"):
        load_driver().HlsCppModel("edgemtl.bit", io_json)
    board = FakeBoard(graph, "edgemtl_seg")
    object.__delattr__(board.edgemtl_seg_0.register_map, "output_r_2")   # half an address register
    monkeypatch.setitem(sys.modules, "pynq", fake_pynq(board))
    with pytest.raises(RuntimeError, match=r"no address register for 'output'.*found \['output_r_1'\]"):
        load_driver().HlsCppModel("edgemtl.bit", io_json)


def test_driver_imports_without_pynq_and_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynq", None)  # `import pynq` raises ImportError
    driver = load_driver()
    tree = ast.parse((KIT / "hls_cpp_driver.py").read_text())  # the board has no edgemtl
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "json", "statistics", "sys", "time", "dataclasses", "pathlib", "typing", "numpy",
                        "pynq"}, imported
    with pytest.raises(RuntimeError, match="pynq package is needed"):
        driver.HlsCppModel("x.bit", {"top": "t", "input": {}, "output": {}})


def test_driver_cli_writes_outputs_and_raw(project, monkeypatch, tmp_path):
    graph = moe_graph()
    board = FakeBoard(graph, "edgemtl_t")
    monkeypatch.setitem(sys.modules, "pynq", fake_pynq(board))
    x = float_inputs(graph, 2, seed=5)
    np.save(tmp_path / "inputs.npy", x)
    driver = load_driver()
    assert driver.main(["hls_cpp_driver.py", "run", "edgemtl.bit", str(project(graph)), str(tmp_path / "inputs.npy"),
                        str(tmp_path / "out.npz")]) == 0
    saved = np.load(tmp_path / "out.npz")
    want = run_reference(graph, quantize_input(graph, x))[graph.output]
    assert np.array_equal(saved["raw"], want) and np.array_equal(saved["output"], want * graph.tensors[graph.output].scale)
    assert driver.main(["hls_cpp_driver.py", "help"]) == 2


# ---------------------------------------------------------------------------------------------------------
# (b) hls_cpp_design.tcl with Vivado's commands stubbed
# ---------------------------------------------------------------------------------------------------------
STUBS = r"""
set calls {}
proc unknown {args} { global calls; lappend calls $args; return [lindex $args end] }
proc exit {code} { error "EXIT $code" }
proc get_ipdefs {args} { global calls; lappend calls [concat get_ipdefs $args]; return $::env(IPDEF) }
proc get_board_parts {args} { return {xilinx.com:zcu104:part0:1.1} }
proc make_wrapper {args} { return /tmp/design_1_wrapper.v }
proc get_bd_pins {args} {
    if {[lsearch $args -quiet] >= 0 && [file tail [lindex $args end]] in $::env(MISSING)} { return {} }
    return [lindex $args end]
}
proc get_bd_intf_pins {args} {
    if {[file tail [lindex $args end]] in $::env(MISSING)} { return {} }
    return [lindex $args end]
}
proc get_property {name object} {
    switch -- $name {
        PROGRESS { return 100% }
        DIRECTORY { return $::env(RUN_DIR) }
        default { return {} }
    }
}
set argv $::env(TCL_ARGS)
set status ok
if {[catch {source $::env(KIT_TCL)} err]} { set status $err }
puts "STATUS $status"
foreach c $calls { puts "CALL $c" }
"""
no_tclsh = pytest.mark.skipif(shutil.which("tclsh") is None, reason="needs tclsh (apt-get install tcl)")


def run_design_tcl(tmp_path: Path, *args: str, missing: str = "", ipdef: str = "xilinx.com:hls:edgemtl_seg:1.0"):
    harness = tmp_path / "harness.tcl"
    harness.write_text(STUBS)
    env = {"TCL_ARGS": " ".join(args), "KIT_TCL": str(KIT / "hls_cpp_design.tcl"), "PATH": "/usr/bin:/bin",
           "MISSING": missing, "IPDEF": ipdef, "RUN_DIR": str(tmp_path / "impl_1")}
    done = subprocess.run(["tclsh", str(harness)], capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    status = next(line for line in done.stdout.splitlines() if line.startswith("STATUS"))
    calls = [line.removeprefix("CALL ") for line in done.stdout.splitlines() if line.startswith("CALL ")]
    return status, calls, done.stdout


@pytest.mark.needs_tclsh
@no_tclsh
def test_design_tcl_wires_control_and_both_masters(tmp_path):
    status, calls, out = run_design_tcl(tmp_path, str(tmp_path), "edgemtl_seg", "clock_mhz=150", "build=0")
    assert status == "STATUS ok", out
    assert "get_ipdefs -filter {NAME == edgemtl_seg}" in calls
    assert "create_bd_cell -type ip -vlnv xilinx.com:hls:edgemtl_seg:1.0 edgemtl_seg_0" in calls
    ps = next(c for c in calls if c.startswith("set_property -dict {CONFIG.PSU__USE__M_AXI_GP0"))
    for setting in ("M_AXI_GP0 1", "S_AXI_GP2 1", "USE__IRQ0 1", "PL0_REF_CTRL__FREQMHZ 150"):
        assert setting in ps, (setting, ps)
    for link in ("zynq_ultra_ps_e_0/M_AXI_HPM0_FPD smc_ctrl/S00_AXI", "smc_ctrl/M00_AXI edgemtl_seg_0/s_axi_control",
                 "edgemtl_seg_0/m_axi_gmem0 smc_data/S00_AXI", "edgemtl_seg_0/m_axi_gmem1 smc_data/S01_AXI",
                 "smc_data/M00_AXI zynq_ultra_ps_e_0/S_AXI_HP0_FPD"):
        assert f"connect_bd_intf_net {link}" in calls, (link, calls)
    assert "set_property -dict {CONFIG.NUM_SI 2 CONFIG.NUM_MI 1} smc_data" in calls
    assert "connect_bd_net edgemtl_seg_0/interrupt zynq_ultra_ps_e_0/pl_ps_irq0" in calls
    assert "connect_bd_net zynq_ultra_ps_e_0/pl_clk0 edgemtl_seg_0/ap_clk" in calls
    assert "connect_bd_net rst_pl0/peripheral_aresetn edgemtl_seg_0/ap_rst_n" in calls
    assert calls.index("assign_bd_address") < calls.index("validate_bd_design") < calls.index("save_bd_design")
    assert not any(c.startswith("launch_runs") for c in calls)  # build=0


@pytest.mark.needs_tclsh
@no_tclsh
def test_design_tcl_builds_and_copies_bit_and_hwh(tmp_path):
    (tmp_path / "impl_1").mkdir()
    (tmp_path / "impl_1" / "design_1_wrapper.bit").write_bytes(b"bit")
    handoff = tmp_path / "prj" / "edgemtl.gen" / "sources_1" / "bd" / "design_1" / "hw_handoff"
    handoff.mkdir(parents=True)
    (handoff / "design_1.hwh").write_text("hwh")
    status, calls, out = run_design_tcl(tmp_path, str(tmp_path), "edgemtl_seg", f"proj_dir={tmp_path / 'prj'}",
                                        f"out_dir={tmp_path / 'overlay'}", missing="interrupt")
    assert status == "STATUS ok", out
    assert "launch_runs impl_1 -to_step write_bitstream -jobs 4" in calls
    assert (tmp_path / "overlay" / "edgemtl.bit").read_bytes() == b"bit"
    assert (tmp_path / "overlay" / "edgemtl.hwh").read_text() == "hwh"
    assert not any("pl_ps_irq0" in c for c in calls) and "has no interrupt pin" in out


@pytest.mark.needs_tclsh
@no_tclsh
def test_design_tcl_refuses_a_foreign_ip_and_bad_arguments(tmp_path):
    status, calls, out = run_design_tcl(tmp_path, str(tmp_path), "edgemtl_seg", missing="m_axi_gmem1")
    assert status == "STATUS EXIT 1", out
    assert "edgemtl_seg lacks the interface(s) m_axi_gmem1" in out
    assert "was it exported from edgemtl's tasks/<task>/hls project?" in out
    assert not any(c.startswith("connect_bd_intf_net") for c in calls)
    for args, kwargs, message in [
        (["edgemtl_seg"], {"ipdef": ""}, "no IP named edgemtl_seg in"),
        (["edgemtl-seg"], {}, "is not a C++ identifier"),
        (["edgemtl_seg", "colour=blue"], {}, "unknown option 'colour'"),
        (["edgemtl_seg", "clock_mhz=fast"], {}, "clock_mhz must be a positive number"),
        (["edgemtl_seg", "build=2"], {}, "build must be 0 or 1"),
    ]:
        status, _, out = run_design_tcl(tmp_path, str(tmp_path), *args, **kwargs)
        assert status == "STATUS EXIT 1" and message in out, (args, out)
    status, _, out = run_design_tcl(tmp_path, str(tmp_path / "missing"), "edgemtl_seg")
    assert status == "STATUS EXIT 1" and "does not exist" in out and "vitis_hls -f build_prj.tcl" in out


# ---------------------------------------------------------------------------------------------------------
# (c) io.json from generate_hls, and the commands the flow's manifest gives
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [moe_graph, uint8_io_graph])
def test_generate_hls_writes_io_json_from_the_graph(make, tmp_path):
    graph = make()
    sources = generate_hls(graph, tmp_path / "hls", "edgemtl_x")
    assert sources.folder / "io.json" in sources.files
    io = json.loads((sources.folder / "io.json").read_text())
    assert set(io) == {"top", "task", "input", "output", "quantize"}
    assert (io["top"], io["task"]) == ("edgemtl_x", graph.task)
    for side, name in (("input", graph.input), ("output", graph.output)):
        info = graph.tensors[name]
        assert io[side] == {"shape": list(info.shape), "dtype": info.dtype, "scale": info.scale}
    assert io["input"]["shape"] == sources.input_shape and io["output"]["dtype"] == sources.output_dtype
    lo, hi = RANGES[graph.tensors[graph.input].dtype]
    assert f"clip(rint(x / input.scale), {lo}, {hi})" in io["quantize"] and "half to even" in io["quantize"]


def test_board_commands_name_the_project_ip_and_top():
    build, design, run = hls_cpp_board_commands("seg", "edgemtl_seg")
    assert build == "(cd tasks/seg/hls && vitis_hls -f build_prj.tcl)"
    assert design == ("vivado -mode batch -source hw/hls_cpp_design.tcl -tclargs "
                      "tasks/seg/hls/edgemtl_seg_prj/solution1/impl/ip edgemtl_seg")
    assert run == "python3 hls_cpp_driver.py run edgemtl.bit io.json inputs.npy"
    assert (KIT / "hls_cpp_design.tcl").is_file() and (KIT / "hls_cpp_driver.py").is_file()


# ---------------------------------------------------------------------------------------------------------
# (d) the design serving every task: one overlay, the task chosen by a register
# ---------------------------------------------------------------------------------------------------------
class FakeTasksIP(FakeIP):
    """The design serving every task: on ap_start, the task whose id the task register holds."""

    def __init__(self, board, graphs, tasks, register):
        super().__init__(board, graphs[tasks[0]], "halves", hung=False)
        self.graphs, self.tasks, self.task_register = graphs, tasks, register
        if register:
            object.__setattr__(self.register_map, register, 0)

    def write(self, offset, value):
        self.graph = self.graphs[self.tasks[getattr(self.register_map, self.task_register)]]
        super().write(offset, value)


def two_tasks() -> dict[str, IntGraph]:
    """uint8_io_graph and the same trunk without its upsampling (another output size) as two tasks."""
    seg, small = uint8_io_graph(), copy.deepcopy(uint8_io_graph())
    seg.task, small.task = "seg", "small"
    resize = small.nodes.pop()
    del small.tensors[resize.output]
    small.output = small.nodes[-1].output
    return {"seg": seg, "small": small}


@pytest.mark.parametrize("register", ["task_r", "task"])
def test_driver_switches_the_design_serving_every_task_by_its_register(register, monkeypatch, tmp_path):
    graphs = two_tasks()
    io_json = generate_multitask_hls(graphs, tmp_path / "switchable" / "hls", "edgemtl_tasks").folder / "io.json"
    board = FakeBoard(graphs["seg"], "edgemtl_tasks")
    board.edgemtl_tasks_0 = FakeTasksIP(board, graphs, list(graphs), register)
    monkeypatch.setitem(sys.modules, "pynq", fake_pynq(board))
    driver = load_driver()
    model = driver.HlsCppModel("edgemtl.bit", io_json, task="small")
    assert board.allocated[1].shape == (graphs["seg"].tensors[graphs["seg"].output].elements,)   # the largest output
    x = float_inputs(graphs["seg"], 2, seed=7)
    q = quantize_input(graphs["seg"], x)
    for task in ("small", "seg", "small"):
        if task != model.task:
            model.select(task)
        model(x)
        assert np.array_equal(model.raw, run_reference(graphs[task], q)[graphs[task].output]), task
    assert [c for c in board.calls if c[:2] == ("register", register)] == [("register", register, k) for k in (1, 0, 1)]
    timing = model.time_switching(x[0], "seg", runs=3)
    assert timing["to"] == "small" and timing["from"] == "seg" and timing["ratio"] > 0
    with pytest.raises(ValueError, match=r"serves tasks \['seg', 'small'\]: name one"):
        driver.HlsCppModel("edgemtl.bit", io_json)
    with pytest.raises(ValueError, match="unknown task 'depth'"):
        model.select("depth")


def test_a_task_for_a_one_task_design_or_no_task_register_is_named(project, monkeypatch, tmp_path):
    graph = uint8_io_graph()
    monkeypatch.setitem(sys.modules, "pynq", fake_pynq(FakeBoard(graph, "edgemtl_t")))
    with pytest.raises(ValueError, match="one task's design; it takes no task"):
        load_driver().HlsCppModel("edgemtl.bit", project(graph), task="seg")
    graphs = two_tasks()
    io_json = generate_multitask_hls(graphs, tmp_path / "switchable" / "hls", "edgemtl_tasks").folder / "io.json"
    monkeypatch.setitem(sys.modules, "pynq", fake_pynq(FakeBoard(graphs["seg"], "edgemtl_tasks")))   # a one-task IP
    with pytest.raises(RuntimeError, match=r"no task register \(task_r / task\)"):
        load_driver().HlsCppModel("edgemtl.bit", io_json, task="seg")
