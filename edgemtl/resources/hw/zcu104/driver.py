"""PYNQ driver for an edgemtl hls4ml overlay on the ZCU104 (runs on the board; needs numpy and pynq there).

The overlay comes from block_design.tcl: the hls4ml IP (`myproject`, io_stream) with one AXI DMA per
stream, named dma_<port>. This driver loads the .bit/.hwh pair, allocates one contiguous buffer per stream,
converts float inputs to the IP's fixed-point input type, moves one frame per DMA transfer and converts
the outputs back. `pynq` is imported only when an overlay is opened, so this file can be imported (and
tested with a fake `pynq`) anywhere.

The I/O description (`io.json`, written next to the bundle's hls4ml project, or the "zcu104_io" section
of a manifest) names each stream:

    {"inputs":  [{"name": "input", "port": "input_1", "shape": [3, 64, 64],
                  "precision": "ufixed<8,1,RND_CONV,SAT>", "channels_last": true}],
     "outputs": [{"name": "segmentation", "port": "layer13_out", "shape": [5, 64, 64],
                  "precision": "fixed<16,6>", "channels_last": true}]}

shape is one sample in the model's layout (C, H, W) or (K,); precision is the hls4ml / Vitis HLS type of
the stream (`fixed<W,I,...>`, `ufixed<...>`, `ap_fixed<...>`, `ap_ufixed<...>`, `int<W>`, `ap_uint<W>` ...).
An output may carry "host_resize": {"size": [H, W], "mode": "bilinear", "align_corners": false}: the task's
final resize, which edgemtl leaves to the PS (hls4ml has no bilinear resize); the driver applies it here,
as torch.nn.functional.interpolate does, so the outputs have the model's shapes. An output may also carry
"host_softmax": {"dim": d} (d counts the batch axis, as in the model): the softmax that ends a classifier, which
the PL leaves out (hls4ml's table-based softmax is not bit-accurate); the driver applies it after any resize.

Stream layout (hls4ml io_stream, Vitis HLS AXI4-Stream): a 3-D tensor streams channels-last, one pixel per
beat, the C channel values of the pixel in one beat; a 1-D tensor is one beat of K values. Vitis HLS pads
each value of the beat to whole bytes (ceil(W/8), value 0 in the lowest bytes, little-endian); the block
design zero-pads the beat to the DMA's power-of-two width. Both can be overridden per stream with
"beat_values" and "slot_bytes" if a synthesis report shows otherwise.

Command line (on the board):
    python3 driver.py tclargs io.json                    # the beats=... argument block_design.tcl needs
    python3 driver.py run edgemtl.bit io.json x.npy [out.npz] [--time N]
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROUNDING = ("TRN", "TRN_ZERO", "RND", "RND_ZERO", "RND_MIN_INF", "RND_INF", "RND_CONV")
SATURATION = ("WRAP", "SAT", "SAT_ZERO", "SAT_SYM")
_TYPE = re.compile(r"^\s*(?:ap_)?(u?)(fixed|int)\s*<\s*([^>]*)>\s*$")


@dataclass(frozen=True)
class FixedType:
    """A Vitis HLS fixed-point (or integer) type: W bits, I of them integer (sign included when signed)."""

    width: int
    integer: int
    signed: bool = True
    rounding: str = "TRN"  # ap_fixed's defaults: truncate towards -inf ...
    saturation: str = "WRAP"  # ... and wrap around on overflow

    @classmethod
    def parse(cls, text: str) -> FixedType:
        match = _TYPE.match(str(text))
        if not match:
            raise ValueError(f"not a fixed-point or integer type: {text!r}")
        unsigned, kind, args = match.groups()
        parts = [p.strip() for p in args.split(",") if p.strip()]
        if kind == "int":
            if len(parts) != 1:
                raise ValueError(f"{text!r}: an integer type takes one width")
            width = int(parts[0])
            return cls(width, width, not unsigned)
        if len(parts) < 2:
            raise ValueError(f"{text!r}: a fixed type needs a width and integer bits")
        width, integer = int(parts[0]), int(parts[1])
        modes = [p.upper().removeprefix("AP_") for p in parts[2:4]]
        rounding = modes[0] if modes else "TRN"
        saturation = modes[1] if len(modes) > 1 else "WRAP"
        if rounding not in ROUNDING or saturation not in SATURATION:
            raise ValueError(f"{text!r}: unknown rounding {rounding!r} or saturation {saturation!r}")
        return cls(width, integer, not unsigned, rounding, saturation)

    def __post_init__(self) -> None:
        if not 1 <= self.width <= 62:
            raise ValueError(f"fixed-point width {self.width} outside 1..62 bits")

    @property
    def frac(self) -> int:
        return self.width - self.integer

    @property
    def min_raw(self) -> int:
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def max_raw(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1

    def to_raw(self, x: np.ndarray) -> np.ndarray:
        """Float values -> the integers the hardware holds (value * 2^frac), rounded and saturated as the type says."""
        s = np.asarray(x, dtype=np.float64) * 2.0 ** self.frac
        r = self.rounding
        if r == "TRN":
            q = np.floor(s)
        elif r == "TRN_ZERO":
            q = np.trunc(s)
        elif r == "RND":
            q = np.floor(s + 0.5)
        elif r == "RND_ZERO":
            q = np.sign(s) * np.ceil(np.abs(s) - 0.5)
        elif r == "RND_MIN_INF":
            q = np.ceil(s - 0.5)
        elif r == "RND_INF":
            q = np.sign(s) * np.floor(np.abs(s) + 0.5)
        else:  # RND_CONV: half to even
            q = np.rint(s)
        q = q.astype(np.int64)
        lo, hi = self.min_raw, self.max_raw
        if self.saturation == "SAT":
            return np.clip(q, lo, hi)
        if self.saturation == "SAT_SYM":
            return np.clip(q, -hi if self.signed else lo, hi)
        if self.saturation == "SAT_ZERO":
            return np.where((q < lo) | (q > hi), 0, q)
        span = 1 << self.width  # WRAP: keep the low W bits
        return ((q - lo) % span) + lo

    def from_raw(self, raw: np.ndarray) -> np.ndarray:
        """The low W bits of raw words -> float values (sign-extended when the type is signed)."""
        bits = np.asarray(raw).astype(np.uint64) & np.uint64((1 << self.width) - 1)
        values = bits.astype(np.int64)
        if self.signed:
            values = np.where(values >= (1 << (self.width - 1)), values - (1 << self.width), values)
        return values.astype(np.float64) / 2.0 ** self.frac


def next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(n))) if n > 1 else 1


@dataclass(frozen=True)
class StreamSpec:
    """One AXI4-Stream of the IP: which tensor it carries, in which type and layout."""

    name: str
    port: str
    shape: tuple[int, ...]
    precision: FixedType
    channels_last: bool = True
    beat_values: int = 0  # 0: C for a 3-D tensor, all of it for anything else
    slot_bytes: int = 0  # 0: ceil(W / 8)
    host_resize: tuple[int, int] | None = None  # (H, W) of the bilinear resize the PS applies after the stream
    host_softmax_axis: int | None = None  # the axis of one sample the PS applies a softmax over, last

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> StreamSpec:
        return cls(name=str(raw["name"]), port=str(raw.get("port", raw["name"])),
                   shape=tuple(int(s) for s in raw["shape"]), precision=FixedType.parse(raw["precision"]),
                   channels_last=bool(raw.get("channels_last", True)),
                   beat_values=int(raw.get("beat_values", 0)), slot_bytes=int(raw.get("slot_bytes", 0)),
                   host_resize=_resize_size(raw.get("host_resize")), host_softmax_axis=_softmax_axis(raw.get("host_softmax")))

    def on_host(self, streamed: np.ndarray) -> np.ndarray:
        """One sample as the model gives it: the streamed values, then any resize and softmax left to the PS."""
        out = bilinear_resize(streamed, self.host_resize) if self.host_resize else streamed
        return softmax(out, self.host_softmax_axis) if self.host_softmax_axis is not None else out

    @property
    def values_per_beat(self) -> int:
        if self.beat_values:
            return self.beat_values
        return self.shape[0] if len(self.shape) == 3 else math.prod(self.shape)

    @property
    def bytes_per_value(self) -> int:
        return self.slot_bytes or math.ceil(self.precision.width / 8)

    @property
    def beats(self) -> int:
        total = math.prod(self.shape)
        if total % self.values_per_beat:
            raise ValueError(f"stream {self.name}: {total} values do not fill beats of {self.values_per_beat}")
        return total // self.values_per_beat

    @property
    def hls_bytes(self) -> int:
        """TDATA bytes of the HLS port."""
        return self.values_per_beat * self.bytes_per_value

    @property
    def dma_bytes(self) -> int:
        """TDATA bytes of the DMA side (block_design.tcl: the next power of two)."""
        return next_pow2(self.hls_bytes)

    def _stream_order(self, x: np.ndarray) -> np.ndarray:
        if self.channels_last and x.ndim == 3:
            x = x.transpose(1, 2, 0)
        return x.reshape(self.beats, self.values_per_beat)

    def pack(self, x: np.ndarray) -> np.ndarray:
        """One sample in the model's layout -> the DMA buffer's bytes, shape (beats, dma_bytes)."""
        x = np.asarray(x)
        if x.shape != self.shape:
            raise ValueError(f"stream {self.name}: a sample has shape {self.shape}, got {x.shape}")
        raw = self.precision.to_raw(self._stream_order(x))
        # two's complement, little-endian, cut to the value's bytes (sign-extended within them)
        slots = np.ascontiguousarray(raw, dtype="<i8").view(np.uint8).reshape(self.beats, self.values_per_beat, 8)
        beat = slots[:, :, : self.bytes_per_value].reshape(self.beats, self.hls_bytes)
        out = np.zeros((self.beats, self.dma_bytes), dtype=np.uint8)
        out[:, : self.hls_bytes] = beat
        return out

    def unpack(self, buffer: np.ndarray) -> np.ndarray:
        """The DMA buffer's bytes (beats, dma_bytes) -> one sample in the model's layout, as floats."""
        data = np.asarray(buffer, dtype=np.uint8).reshape(self.beats, self.dma_bytes)[:, : self.hls_bytes]
        slots = data.reshape(self.beats, self.values_per_beat, self.bytes_per_value)
        words = np.zeros((self.beats, self.values_per_beat, 8), dtype=np.uint8)
        words[:, :, : self.bytes_per_value] = slots
        values = self.precision.from_raw(words.view("<u8")[..., 0])
        if self.channels_last and len(self.shape) == 3:
            c, h, w = self.shape
            return values.reshape(h, w, c).transpose(2, 0, 1)
        return values.reshape(self.shape)


def _resize_size(raw: dict[str, Any] | None) -> tuple[int, int] | None:
    if not raw:
        return None
    if raw.get("mode", "bilinear") != "bilinear" or raw.get("align_corners", False) or raw.get("size") is None:
        raise ValueError(f"the driver applies bilinear resizes to a given size without align_corners, not {raw}")
    return int(raw["size"][0]), int(raw["size"][1])


def _softmax_axis(raw: dict[str, Any] | None) -> int | None:
    if not raw:
        return None
    dim = int(raw["dim"])
    if dim == 0:
        raise ValueError(f"a host softmax over the batch axis (dim 0) is not per sample: {raw}")
    return dim - 1 if dim > 0 else dim


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return shifted / np.sum(shifted, axis=axis, keepdims=True)


def bilinear_resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, H, W) -> (C, *size), as torch's F.interpolate(mode="bilinear", align_corners=False)."""
    def taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        source = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        low = np.minimum(np.floor(source).astype(np.int64), n_in - 1)
        return low, np.minimum(low + 1, n_in - 1), source - low

    (y0, y1, fy), (x0, x1, fx) = taps(x.shape[-2], size[0]), taps(x.shape[-1], size[1])
    rows = x[:, y0, :] * (1 - fy)[None, :, None] + x[:, y1, :] * fy[None, :, None]
    return rows[:, :, x0] * (1 - fx)[None, None, :] + rows[:, :, x1] * fx[None, None, :]


def load_io_spec(source: str | Path | dict[str, Any]) -> tuple[list[StreamSpec], list[StreamSpec]]:
    """(inputs, outputs) from io.json, a manifest with a "zcu104_io" section, or an already-read dict."""
    raw = source if isinstance(source, dict) else json.loads(Path(source).read_text())
    raw = raw.get("zcu104_io", raw)
    inputs = [StreamSpec.from_dict(s) for s in raw["inputs"]]
    outputs = [StreamSpec.from_dict(s) for s in raw["outputs"]]
    if not inputs or not outputs:
        raise ValueError("the I/O description needs at least one input and one output stream")
    return inputs, outputs


def tclargs(source: str | Path | dict[str, Any]) -> str:
    """block_design.tcl's beats= argument: frames are this many beats on each output port."""
    _, outputs = load_io_spec(source)
    return "beats=" + ",".join(f"{s.port}:{s.beats}" for s in outputs)


def _pynq() -> Any:
    try:
        import pynq
    except ImportError as exc:  # off the board
        raise RuntimeError("the pynq package is needed to drive the overlay "
                           "(it runs on the ZCU104's PYNQ image)") from exc
    return pynq


class Zcu104Model:
    """The overlay as a function: float inputs in, float outputs out, one DMA transfer per stream per frame."""

    def __init__(self, bitfile: str | Path, io_spec: str | Path | dict[str, Any], overlay: Any = None,
                 timeout_s: float = 5.0) -> None:
        pynq = _pynq()
        self.inputs, self.outputs = load_io_spec(io_spec)
        self.overlay = overlay if overlay is not None else pynq.Overlay(str(bitfile))
        self.timeout_s = timeout_s
        self.streamed: dict[str, np.ndarray] = {}  # the last call's outputs as streamed, before the host ops
        self.dma: dict[str, Any] = {}
        self.buffers: dict[str, Any] = {}
        for stream in [*self.inputs, *self.outputs]:
            name = f"dma_{stream.port}"
            if not hasattr(self.overlay, name):
                raise RuntimeError(f"the overlay has no {name} for stream {stream.name!r} (see block_design.tcl)")
            self.dma[stream.name] = getattr(self.overlay, name)
            self.buffers[stream.name] = pynq.allocate(shape=(stream.beats, stream.dma_bytes), dtype=np.uint8)

    def _frame(self, sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for stream in self.outputs:  # receivers first, so no output beat is ever refused
            self.dma[stream.name].recvchannel.transfer(self.buffers[stream.name])
        for stream in self.inputs:
            buffer = self.buffers[stream.name]
            buffer[:] = stream.pack(sample[stream.name])
            self.dma[stream.name].sendchannel.transfer(buffer)  # PYNQ flushes the cache before sending
        for stream in self.inputs:
            self.dma[stream.name].sendchannel.wait()
        results = {}
        for stream in self.outputs:
            self.dma[stream.name].recvchannel.wait()  # PYNQ invalidates the cache after receiving
            results[stream.name] = stream.unpack(np.array(self.buffers[stream.name], copy=True))
        return results

    def __call__(self, x: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A batch (N, *shape) or one sample (*shape); a dict when the IP has several inputs."""
        given = x if isinstance(x, dict) else {self.inputs[0].name: x}
        arrays = {s.name: np.asarray(given[s.name], dtype=np.float64) for s in self.inputs}
        first = self.inputs[0]
        single = arrays[first.name].shape == first.shape
        n = 1 if single else arrays[first.name].shape[0]
        frames = [self._frame({k: (v if single else v[i]) for k, v in arrays.items()}) for i in range(n)]
        # what the IP streamed (bit for bit the C simulation's values), kept for checks; then the host ops
        self.streamed = frames[0] if single else {s.name: np.stack([f[s.name] for f in frames]) for s in self.outputs}
        resized = [{s.name: s.on_host(f[s.name]) for s in self.outputs} for f in frames]
        return resized[0] if single else {s.name: np.stack([f[s.name] for f in resized]) for s in self.outputs}

    def time(self, x: np.ndarray, runs: int = 100, warmup: int = 5) -> dict[str, Any]:
        """Median wall time of one frame through the overlay, PS-side conversions and resizes included."""
        sample = np.asarray(x, dtype=np.float64)
        for _ in range(warmup):
            self(sample)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self(sample)
            times.append(time.perf_counter() - start)
        return {"median_ms": statistics.median(times) * 1e3, "p90_ms": float(np.percentile(times, 90)) * 1e3,
                "runs": runs, "provenance": "measured (ZCU104 PL via PYNQ DMA, fixed-point conversion and any host "
                                            "resize on the A53 included, median)"}

    def close(self) -> None:
        for buffer in self.buffers.values():
            if hasattr(buffer, "freebuffer"):
                buffer.freebuffer()
        self.buffers.clear()


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[1] == "tclargs":
        print(tclargs(argv[2]))
        return 0
    if len(argv) >= 5 and argv[1] == "run":
        runs = 0
        if "--time" in argv:
            at = argv.index("--time")
            runs = int(argv[at + 1])
            argv = argv[:at] + argv[at + 2:]
        model = Zcu104Model(argv[2], argv[3])
        x = np.load(argv[4])
        outputs = model(x)
        out = argv[5] if len(argv) > 5 else "outputs.npz"
        streamed = {f"{s.name}_streamed": model.streamed[s.name] for s in model.outputs
                    if s.host_resize or s.host_softmax_axis is not None}
        np.savez(out, **outputs, **streamed)
        print(f"wrote {out}: " + ", ".join(f"{k} {v.shape}" for k, v in outputs.items()))
        if runs:
            sample = x if x.shape == model.inputs[0].shape else x[0]
            print(json.dumps(model.time(sample, runs=runs)))
        model.close()
        return 0
    print(__doc__.split("Command line (on the board):")[1].rstrip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
