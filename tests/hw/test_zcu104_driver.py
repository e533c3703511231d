"""The ZCU104 board kit off the board: the PYNQ driver against a fake `pynq` (DMA channels and buffers faked
at the boundary), its fixed-point conversions by hand, and block_design.tcl under tclsh with Vivado's
commands stubbed (skipped without tclsh)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

KIT = Path(__file__).resolve().parents[2] / "hw" / "zcu104"


def load_driver():
    spec = importlib.util.spec_from_file_location("zcu104_driver", KIT / "driver.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


IO = {
    "inputs": [{"name": "input", "port": "input_1", "shape": [3, 2, 2], "precision": "ufixed<8,1,RND_CONV,SAT>"}],
    "outputs": [
        {"name": "segmentation", "port": "layer9_out", "shape": [2, 2, 2], "precision": "fixed<16,6>"},
        {"name": "scene", "port": "layer11_out", "shape": [3], "precision": "ap_fixed<12,4,AP_TRN,AP_WRAP>"},
    ],
}


# ---------------------------------------------------------------------------------------------------------
# the fake board: an overlay whose DMAs record what they are sent and hand back prepared bytes
# ---------------------------------------------------------------------------------------------------------


class FakeBuffer(np.ndarray):
    freed = False

    def freebuffer(self):
        self.freed = True


class FakeChannel:
    def __init__(self, board, port, direction):
        self.board, self.port, self.direction = board, port, direction
        self.buffer = None

    def transfer(self, buffer):
        assert self.buffer is None, f"{self.port}: transfer while the channel is busy"
        self.board.calls.append(("transfer", self.direction, self.port, buffer.nbytes))
        self.buffer = buffer
        if self.direction == "send":
            self.board.sent[self.port] = np.array(buffer, copy=True)

    def wait(self):
        assert self.buffer is not None, f"{self.port}: wait without a transfer"
        self.board.calls.append(("wait", self.direction, self.port))
        if self.direction == "recv":
            assert "input_1" in self.board.sent, "an output came back before any input was sent"
            self.buffer[:] = self.board.replies[self.port]
        self.buffer = None


class FakeDMA:
    def __init__(self, board, port):
        self.sendchannel = FakeChannel(board, port, "send")
        self.recvchannel = FakeChannel(board, port, "recv")


class FakeBoard:
    """What the fake pynq module's Overlay returns: dma_<port> attributes plus a record of every call."""

    def __init__(self, ports, replies):
        self.calls, self.sent, self.replies, self.allocated = [], {}, replies, []
        for port in ports:
            setattr(self, f"dma_{port}", FakeDMA(self, port))


def fake_pynq(board):
    module = types.ModuleType("pynq")

    def overlay(path):
        board.bitfile = path
        return board

    def allocate(shape, dtype):
        buffer = np.zeros(shape, dtype=dtype).view(FakeBuffer)
        board.allocated.append(buffer)
        return buffer

    module.Overlay, module.allocate = overlay, allocate
    return module


# ---------------------------------------------------------------------------------------------------------


def test_imports_without_pynq(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynq", None)  # `import pynq` raises ImportError
    driver = load_driver()
    with pytest.raises(RuntimeError, match="pynq package is needed"):
        driver.Zcu104Model("x.bit", IO)


def test_fixed_point_by_hand():
    driver = load_driver()
    u8 = driver.FixedType.parse("ufixed<8,1,RND_CONV,SAT>")  # 7 fractional bits, 0 .. 255/128
    assert (u8.width, u8.integer, u8.signed, u8.rounding, u8.saturation) == (8, 1, False, "RND_CONV", "SAT")
    # 0.5 -> 64; 1 -> 128; 2 saturates at 255; -0.1 saturates at 0; 0.5 LSB -> 0 and 1.5 LSB -> 2 (half to even)
    x = np.array([0.5, 1.0, 2.0, -0.1, 1 / 256, 3 / 256])
    assert u8.to_raw(x).tolist() == [64, 128, 255, 0, 0, 2]
    s16 = driver.FixedType.parse("ap_fixed<16,6>")  # defaults: truncate, wrap; 10 fractional bits
    assert (s16.rounding, s16.saturation) == ("TRN", "WRAP")
    # -1.5 -> -1536; 0.0009765625 = 1 LSB; 0.0009 truncates down to 0; 32 wraps to -32 (range -32 .. 32 - 2^-10)
    assert s16.to_raw(np.array([-1.5, 2 ** -10, 0.0009, 32.0])).tolist() == [-1536, 1, 0, -32768]
    assert s16.from_raw(np.array([0xFA00, 0x0400, 0x7FFF])).tolist() == [-1.5, 1.0, 32 - 2 ** -10]
    # only the low 16 bits count: a sign-extended (or garbage-padded) word reads the same
    assert s16.from_raw(np.array([0xFFFFFFFFFFFFFA00], dtype=np.uint64)).tolist() == [-1.5]
    sym = driver.FixedType.parse("fixed<4,4,RND,SAT_SYM>")
    assert sym.to_raw(np.array([-9.0, 9.0, 2.5, -2.5])).tolist() == [-7, 7, 3, -2]  # RND: half up
    assert driver.FixedType.parse("ap_uint<3>").to_raw(np.array([9.0])).tolist() == [1]  # wraps mod 8
    with pytest.raises(ValueError, match="not a fixed-point"):
        driver.FixedType.parse("float")


def test_stream_layout():
    driver = load_driver()
    inputs, outputs = driver.load_io_spec({"zcu104_io": IO})  # a manifest section works too
    image, seg, scene = inputs[0], outputs[0], outputs[1]
    # 3 channels x 1 byte = 3-byte beats, padded to a 4-byte DMA stream; 4 pixels = 4 beats
    assert (image.beats, image.hls_bytes, image.dma_bytes) == (4, 3, 4)
    assert (seg.beats, seg.hls_bytes, seg.dma_bytes) == (4, 4, 4)
    # 12-bit values take 2 bytes each: 3 x 2 = 6-byte beat, 8-byte DMA stream, one beat
    assert (scene.beats, scene.hls_bytes, scene.dma_bytes) == (1, 6, 8)
    assert driver.tclargs(IO) == "beats=layer9_out:4,layer11_out:1"


def test_data_moves_through_the_dmas(monkeypatch):
    # input: channel c of pixel (h, w) = (c + 1) * 0.25 + 0.5 * h + 0.125 * w  (raw = value * 128)
    c, h, w = np.meshgrid(np.arange(3), np.arange(2), np.arange(2), indexing="ij")
    image = (c + 1) * 0.25 + 0.5 * h + 0.125 * w
    expected_in = np.zeros((4, 4), dtype=np.uint8)  # beats = pixels (h, w) in row-major order, bytes = channels
    for beat, (hh, ww) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        expected_in[beat, :3] = [int(image[ch, hh, ww] * 128) for ch in range(3)]
    assert expected_in[3].tolist() == [112, 144, 176, 0]  # pixel (1,1): 0.875, 1.125, 1.375; pad byte 0

    # outputs the fake IP sends back: segmentation values v(c, h, w) = -1.5 + c + 0.25 * (2h + w), fixed<16,6>
    pixels = [(hh, ww) for hh in range(2) for ww in range(2)]
    seg_values = {(ch, hh, ww): -1.5 + ch + 0.25 * (2 * hh + ww) for ch in range(2) for hh, ww in pixels}
    seg_reply = np.zeros((4, 4), dtype=np.uint8)
    for beat, (hh, ww) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        for ch in range(2):
            raw = int(seg_values[(ch, hh, ww)] * 1024) & 0xFFFF
            seg_reply[beat, 2 * ch: 2 * ch + 2] = [raw & 0xFF, raw >> 8]
    # scene: ap_fixed<12,4> (8 fractional bits): 0.5 -> 0x080, -2.0 -> 0xE00 (12-bit two's complement), 7.99609375
    # -> 0x7FF; each in 2 little-endian bytes, the top 4 bits of each slot sign-extended; 2 pad bytes
    scene_reply = np.array([[0x80, 0x00, 0x00, 0xFE, 0xFF, 0x07, 0xAA, 0xAA]], dtype=np.uint8)

    board = FakeBoard(["input_1", "layer9_out", "layer11_out"], {"layer9_out": seg_reply, "layer11_out": scene_reply})
    monkeypatch.setitem(sys.modules, "pynq", fake_pynq(board))
    driver = load_driver()
    model = driver.Zcu104Model("edgemtl.bit", IO)
    assert board.bitfile == "edgemtl.bit"
    assert [b.shape for b in board.allocated] == [(4, 4), (4, 4), (1, 8)]

    out = model(image)
    np.testing.assert_array_equal(board.sent["input_1"], expected_in)
    expected_seg = np.array([[[seg_values[(ch, hh, ww)] for ww in range(2)] for hh in range(2)] for ch in range(2)])
    np.testing.assert_array_equal(out["segmentation"], expected_seg)
    np.testing.assert_array_equal(out["scene"], [0.5, -2.0, 2047 / 256])
    # receivers armed before the input is sent; every channel waited on; whole buffers moved
    assert board.calls[:3] == [("transfer", "recv", "layer9_out", 16), ("transfer", "recv", "layer11_out", 8),
                               ("transfer", "send", "input_1", 16)]
    assert board.calls[3:] == [("wait", "send", "input_1"), ("wait", "recv", "layer9_out"),
                               ("wait", "recv", "layer11_out")]

    # a batch of two runs two frames and stacks the results
    board.calls.clear()
    batch = model(np.stack([image, image]))
    assert batch["segmentation"].shape == (2, 2, 2, 2) and batch["scene"].shape == (2, 3)
    assert sum(1 for call in board.calls if call[:2] == ("transfer", "send")) == 2
    model.close()
    assert all(b.freed for b in board.allocated)


@pytest.mark.parametrize("shape, size", [((2, 4, 4), (8, 8)), ((1, 8, 8), (32, 32)), ((3, 5, 7), (9, 4)), ((2, 6, 6), (6, 6))])
def test_bilinear_resize_matches_torch(shape, size):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal(shape)
    expected = torch.nn.functional.interpolate(torch.from_numpy(x)[None], size=size, mode="bilinear", align_corners=False)[0]
    np.testing.assert_allclose(load_driver().bilinear_resize(x, size), expected.numpy(), atol=1e-12)


def test_an_output_with_a_host_resize_is_resized_after_the_stream(monkeypatch):
    io = {"inputs": IO["inputs"], "outputs": [{**IO["outputs"][0], "host_resize": {"size": [4, 4], "mode": "bilinear",
                                                                                    "align_corners": False}}]}
    seg_reply = np.zeros((4, 4), dtype=np.uint8)
    seg_reply[3, 0] = 4  # channel 0 of pixel (1, 1) = 4 / 1024, everything else 0
    board = FakeBoard(["input_1", "layer9_out"], {"layer9_out": seg_reply})
    monkeypatch.setitem(sys.modules, "pynq", fake_pynq(board))
    driver = load_driver()
    model = driver.Zcu104Model("edgemtl.bit", io)
    out = model(np.zeros((3, 2, 2)))["segmentation"]
    streamed = np.zeros((2, 2, 2))
    streamed[0, 1, 1] = 4 / 1024
    np.testing.assert_array_equal(model.streamed["segmentation"], streamed)
    np.testing.assert_array_equal(out, driver.bilinear_resize(streamed, (4, 4)))
    assert out.shape == (2, 4, 4) and out[0, 3, 3] == 4 / 1024 and out[0, 0, 0] == 0
    with pytest.raises(ValueError, match="align_corners"):
        driver.load_io_spec({"inputs": IO["inputs"], "outputs": [{**IO["outputs"][0], "host_resize": {
            "size": [4, 4], "mode": "bilinear", "align_corners": True}}]})


def test_an_output_with_a_host_softmax_gets_it_after_the_stream(monkeypatch):
    """The PL streams a classifier's logits; the driver applies the model's softmax (dim 1 of the batch = axis 0)."""
    io = {"inputs": IO["inputs"], "outputs": [{**IO["outputs"][1], "host_softmax": {"dim": 1}}]}
    scene_reply = np.array([[0x80, 0x00, 0x00, 0xFE, 0xFF, 0x07, 0xAA, 0xAA]], dtype=np.uint8)  # 0.5, -2, 2047/256
    board = FakeBoard(["input_1", "layer11_out"], {"layer11_out": scene_reply})
    monkeypatch.setitem(sys.modules, "pynq", fake_pynq(board))
    driver = load_driver()
    model = driver.Zcu104Model("edgemtl.bit", io)
    out = model(np.zeros((3, 2, 2)))["scene"]
    logits = np.array([0.5, -2.0, 2047 / 256])
    np.testing.assert_array_equal(model.streamed["scene"], logits)
    np.testing.assert_allclose(out, np.exp(logits) / np.exp(logits).sum(), rtol=1e-12)
    with pytest.raises(ValueError, match="batch axis"):
        driver.load_io_spec({"inputs": IO["inputs"], "outputs": [{**IO["outputs"][1], "host_softmax": {"dim": 0}}]})


def test_missing_dma_is_named(monkeypatch):
    board = FakeBoard(["input_1", "layer9_out"], {})
    monkeypatch.setitem(sys.modules, "pynq", fake_pynq(board))
    with pytest.raises(RuntimeError, match="no dma_layer11_out for stream 'scene'"):
        load_driver().Zcu104Model("edgemtl.bit", IO)


# ---------------------------------------------------------------------------------------------------------
# block_design.tcl with Vivado's commands stubbed: argument handling, stream widths, adapters, checks
# ---------------------------------------------------------------------------------------------------------

STUBS = r"""
set calls {}
proc unknown {args} { global calls; lappend calls $args; return [lindex $args end] }
proc exit {code} { error "EXIT $code" }
proc get_ipdefs {args} { return {xilinx.com:hls:myproject:1.0} }
proc get_board_parts {args} { return {xilinx.com:zcu104:part0:1.1} }
proc make_wrapper {args} { return /tmp/design_1_wrapper.v }
proc get_bd_pins {args} {
    if {[lsearch $args -quiet] >= 0 && [string match *ap_continue [lindex $args end]]} { return {} }
    return [lindex $args end]
}
proc get_bd_intf_pins {args} {
    if {[lsearch $args -of_objects] < 0} { return [lindex $args end] }
    if {[string match "*Slave*" $args]} { return {/myproject_0/input_1} }
    return $::outputs
}
proc get_property {name object} {
    global calls; lappend calls [list get_property $name $object]
    switch -- $name {
        NAME { return [file tail $object] }
        CONFIG.TDATA_NUM_BYTES { return $::widths([file tail $object]) }
        default { return {} }
    }
}
array set widths {input_1 3 layer9_out 4 layer11_out 6}
set outputs {/myproject_0/layer9_out /myproject_0/layer11_out}
set argv $::env(TCL_ARGS)
set status ok
if {[catch {source $::env(KIT_TCL)} err]} { set status $err }
puts "STATUS $status"
foreach c $calls { puts "CALL $c" }
"""


def run_tcl(tmp_path: Path, *args: str) -> tuple[str, str]:
    harness = tmp_path / "harness.tcl"
    harness.write_text(STUBS)
    env = {"TCL_ARGS": " ".join(args), "KIT_TCL": str(KIT / "block_design.tcl"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(["tclsh", str(harness)], capture_output=True, text=True, env=env, timeout=60)
    status = next(line for line in done.stdout.splitlines() if line.startswith("STATUS"))
    return status, done.stdout


@pytest.mark.needs_tclsh
@pytest.mark.skipif(shutil.which("tclsh") is None, reason="needs tclsh (apt-get install tcl)")
def test_block_design_tcl_with_stubbed_vivado(tmp_path):
    status, out = run_tcl(tmp_path, str(tmp_path), "2", "beats=layer9_out:4,layer11_out:1", "build=0")
    assert status == "STATUS ok", out
    # input 3 B -> 32-bit DMA stream (mm2s only); outputs 4 B -> 32 bits, 6 B -> 64 bits (s2mm only)
    assert "CONFIG.c_include_mm2s 1 CONFIG.c_include_s2mm 0 CONFIG.c_m_axis_mm2s_tdata_width 32" in out
    assert "CONFIG.c_include_mm2s 0 CONFIG.c_include_s2mm 1 CONFIG.c_s_axis_s2mm_tdata_width 64" in out
    assert "CONFIG.IN_BYTES 4 CONFIG.OUT_BYTES 3" in out  # DMA -> HLS trims the pad byte
    assert "CONFIG.IN_BYTES 6 CONFIG.OUT_BYTES 8 CONFIG.BEATS 1" in out
    assert "CONFIG.IN_BYTES 4 CONFIG.OUT_BYTES 4 CONFIG.BEATS 4" in out
    assert "create_bd_cell -type ip -vlnv xilinx.com:ip:axi_dma dma_layer11_out" in out
    assert "connect_bd_net const_one/dout myproject_0/ap_start" in out
    assert "const_one/dout myproject_0/ap_continue" not in out  # the IP has no ap_continue pin here
    assert "CONFIG.NUM_SI 1 CONFIG.NUM_MI 3" in out and "assign_bd_address" in out
    assert "launch_runs" not in out  # build=0


@pytest.mark.needs_tclsh
@pytest.mark.skipif(shutil.which("tclsh") is None, reason="needs tclsh (apt-get install tcl)")
def test_block_design_tcl_refuses_bad_arguments(tmp_path):
    for args, message in [
        (["1", "beats=layer9_out:4", "build=0"], "has 2 output stream(s)"),
        (["2", "beats=layer9_out:4", "build=0"], "no beats=layer11_out:N given"),
        (["2", "colour=blue"], "unknown option 'colour'"),
        (["2", "beats=layer9_out:0"], "is not PORT:N with N >= 1"),
    ]:
        status, out = run_tcl(tmp_path, str(tmp_path), *args)
        assert status == "STATUS EXIT 1" and message in out, out
    status, out = run_tcl(tmp_path, str(tmp_path / "missing"), "2")
    assert status == "STATUS EXIT 1" and "does not exist" in out
