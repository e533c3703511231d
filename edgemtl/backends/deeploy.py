"""Deeploy (deeploy-pulp) C code generation for the MCU target, with its static memory map at GAP9's sizes.

deeploy-pulp pins numpy<2 and protobuf 4.23, which the main environment cannot share, so it lives in its own venv
(`.venv-deeploy`, made by `edgemtl toolchain install deeploy`; `EDGEMTL_DEEPLOY_VENV` points elsewhere) and runs as a subprocess:
`deeploy_worker.py` (in this folder, standard library only at import) reads a versioned JSON request and writes a
JSON result. This module never imports Deeploy.

The input is the integer ONNX of `deeploy_onnx.export_deeploy_onnx`. The worker runs Deeploy's tiled PULPOpen
(Siracusa) flow: L1 / L2 sizes from the target (GAP9: 128,000 B cluster L1, 1,500,000 B L2), double buffering,
the TetrisRandom static allocator. deeploy-pulp 0.2.1 has no GAP9 platform of its own; the PULPOpen cluster is the
same kind of 8-core RISC-V cluster with a DMA between L2 and L1, so its kernels, tiling and memory map are the
closest Deeploy can give for GAP9 (the generated code includes Siracusa's DMA header, `mchan_siracusa.h`).
Numbers here are Deeploy's compile-time static allocation: exact for that code, measured on nothing.

The same worker run also hands the same integer ONNX to Deeploy's Generic platform (plain C reference kernels,
untiled), into `out_dir/generic/`. Its verdict is `result["generic"]`; with `generic_whole_onnx` (the whole task
when PULPOpen takes only a prefix) Generic is checked on that too, listing per layer what it rejects.

What is NOT checked here, and why (`NUMERICS_*`): neither platform's generated C is compiled or run by default.
deeploy-pulp 0.2.1 (wheel and sdist alike, the only release on PyPI) ships Deeploy's Python code generator only:
no `TargetLibraries/` (the C kernels that Network.c calls: Generic's `Convolution_s8.c`, `RequantShift_s8.c`, ...,
PULPOpen's pulp-nn), no `DeeployTest/` runners. So `numerics_checked` is False with the reason and the command
a user with Deeploy's repository runs. Where that repository is on disk (`EDGEMTL_DEEPLOY_GENERIC_KERNELS` =
its `TargetLibraries/Generic`), `run_generic_on_host` compiles Generic's Network.c with those kernels and the host
gcc, so the flow can compare its outputs with the reference executor bit for bit. PULPOpen's code needs the
PULP SDK and GVSoC: never run here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgemtl.backends.deeploy_onnx import read_deeploy_metadata
from edgemtl.backends.venv_worker import last_line, worker_env
from edgemtl.errors import EdgemtlError
from edgemtl.manifest import prov

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DEEPLOY_VENV = Path(os.environ.get("EDGEMTL_DEEPLOY_VENV", REPO_ROOT / ".venv-deeploy"))
WORKER = Path(__file__).resolve().with_name("deeploy_worker.py")
PROTOCOL_VERSION = 1
HOW_TO_CREATE = "edgemtl toolchain install deeploy"
PROVENANCE = prov("static", source="Deeploy's tiling and static allocation", detail="at compile time; not measured")
DEFAULT_L3_BYTES = 64_000_000  # Deeploy's test driver's L3; pass the board's external RAM when it is known
DEFAULT_N_CORES = 8             # GAP9's and Siracusa's cluster: 8 worker cores
# Deeploy's PULP GEMM tiling keeps the reduction (input) dimension whole and tiles outputs by 16, double-buffered
GEMM_OUTPUT_TILE = 16
GENERIC_PLATFORM = "Deeploy Generic (reference C kernels, untiled, single core)"
GENERIC_KERNELS_ENV = "EDGEMTL_DEEPLOY_GENERIC_KERNELS"
NUMERICS_REASON = ("deeploy-pulp 0.2.1 on PyPI (wheel and sdist) has no C kernel library (TargetLibraries) and no "
                   "test runners, so Deeploy's generated C is neither compiled nor run here")
# Deeploy v0.2.1's own runners, from a checkout of its repository (DeeployTest/), on the test folder the flow writes.
# Generic's was run as written here (with deeploy-pulp's venv first on PATH as `python`, cmake, and ccache, which
# Deeploy's CMakeLists sets as the compiler launcher); its install dir is unused with GCC but must be given.
NUMERICS_COMMAND = {
    "generic": ("cd Deeploy/DeeployTest && python deeployRunner_generic.py -t {test_dir} --toolchain GCC "
                "--toolchain-install-dir /usr   # needs cmake and ccache; `python` = deeploy-pulp's venv"),
    "pulpopen": ("cd Deeploy/DeeployTest && python deeployRunner_tiled_siracusa.py -t {test_dir} --l1 128000 "
                 "--l2 1500000 --doublebuffer   # needs the PULP SDK and GVSoC (Deeploy's container)"),
}


def deeploy_python(venv: Path = DEFAULT_DEEPLOY_VENV) -> Path | None:
    """The venv's interpreter when deeploy-pulp is installed in it, else None."""
    python = Path(venv) / "bin" / "python"
    if not python.exists():
        return None
    if not any(Path(venv).glob("lib/python3*/site-packages/Deeploy/Targets/PULPOpen/Platform.py")):
        return None
    return python


def deeploy_generate(onnx_path: Path, out_dir: Path, l1_bytes: int, l2_bytes: int, timeout_s: int = 600, *,
                     l3_bytes: int = DEFAULT_L3_BYTES, n_cores: int = DEFAULT_N_CORES, double_buffering: bool = True,
                     seed: int = 0, venv: Path = DEFAULT_DEEPLOY_VENV, generic: bool = True,
                     generic_whole_onnx: Path | None = None) -> dict[str, Any]:
    """Generate Deeploy's C for an integer ONNX into `out_dir` and return its static memory map.

    Returns {"available": False, "how_to_create": "edgemtl toolchain install deeploy", "reason": "Deeploy venv missing: ..."} when
    the venv is absent; {"available": True, "ok": False, "reason": one line, ...} when Deeploy cannot take the model
    (layers PULPOpen has no mapping for are listed in "unmapped" and Deeploy is not run; tiling failures carry
    "hints" such as fully connected layers too large for L1); otherwise {"available": True, "ok": True, "files",
    "memory": {"L1"|"L2"|"L3": {capacity, static, dynamic, total}}, "fits", "layers" (per Deeploy layer: its op,
    the edgemtl layers it implements, tile shapes per tensor and level, "tile_counts": {level: tiles}),
    "tile_summary", "deeploy_version", "seconds", ...}.

    With `generic` (default) every result where Deeploy ran carries "generic": {"ok", "reason", "files" (relative
    to out_dir, under generic/), "seconds", "layers", "rejected": [{"node", "op", "reason", "layer"}], and
    "whole_graph" (same keys) when `generic_whole_onnx` is given}; where Deeploy did not run, "generic" says so
    ({"ok": False, "ran": False, "reason"}).
    """
    python = deeploy_python(Path(venv))
    if python is None:
        reason = f"Deeploy venv missing: run `{HOW_TO_CREATE}` (looked in {venv})"
        return {"available": False, "how_to_create": HOW_TO_CREATE, "reason": reason,
                **({"generic": _not_run(reason)} if generic else {})}
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise EdgemtlError(f"integer ONNX {onnx_path} does not exist")
    for label, value in (("l1_bytes", l1_bytes), ("l2_bytes", l2_bytes), ("l3_bytes", l3_bytes), ("n_cores", n_cores)):
        if int(value) <= 0:
            raise EdgemtlError(f"{label} must be above 0, got {value}")
    meta = read_deeploy_metadata(onnx_path)
    out_dir = Path(out_dir).resolve()
    base = {"available": True, "onnx_path": str(onnx_path), "out_dir": str(out_dir), "provenance": PROVENANCE,
            "numerics_checked": False, "numerics_reason": f"{NUMERICS_REASON}; PULPOpen's code needs the PULP SDK "
                                                          "and GVSoC as well",
            "platform": "Deeploy PULPOpen (Siracusa) cluster, tiled", "l1_bytes": int(l1_bytes),
            "l2_bytes": int(l2_bytes), "l3_bytes": int(l3_bytes), "double_buffering": bool(double_buffering),
            "allocator": "TetrisRandom", "hints": l1_hints(onnx_path, int(l1_bytes))}
    if meta.get("unmapped"):
        reason = unmapped_message(meta["unmapped"])
        return {**base, "ok": False, "unmapped": meta["unmapped"], "reason": reason,
                **({"generic": _not_run(f"Deeploy was not started on this ONNX ({reason})")} if generic else {})}

    out_dir.mkdir(parents=True, exist_ok=True)
    request = {"version": PROTOCOL_VERSION, "onnx_path": str(onnx_path.resolve()), "out_dir": str(out_dir),
               "input_dtype": meta.get("input_dtype", "int8"), "l1_bytes": int(l1_bytes), "l2_bytes": int(l2_bytes),
               "l3_bytes": int(l3_bytes), "n_cores": int(n_cores), "double_buffering": bool(double_buffering),
               "seed": int(seed),
               "generic": {"enabled": bool(generic),
                           "whole_onnx_path": str(Path(generic_whole_onnx).resolve()) if generic_whole_onnx else None}}
    request_file, result_file = out_dir / "deeploy_request.json", out_dir / "deeploy_result.json"
    request_file.write_text(json.dumps(request, indent=1))
    result_file.unlink(missing_ok=True)
    start = time.perf_counter()
    try:
        with open(out_dir / "deeploy_worker.log", "w", encoding="utf-8") as log:
            # -P: the worker's folder (edgemtl/backends, which has an onnxruntime.py) must not go on sys.path
            proc = subprocess.run([str(python), "-P", str(WORKER), str(request_file), str(result_file)],
                                  cwd=out_dir, env=worker_env(), stdout=log, stderr=subprocess.STDOUT,
                                  timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        reason = f"Deeploy did not finish within {timeout_s} s"
        return {**base, "ok": False, "reason": reason, **({"generic": _not_run(reason)} if generic else {})}
    seconds = time.perf_counter() - start
    if not result_file.exists():
        reason = (f"Deeploy worker exited with status {proc.returncode} without a result: "
                  f"{last_line(out_dir / 'deeploy_worker.log')}")
        return {**base, "ok": False, "seconds": seconds, "reason": reason,
                **({"generic": _not_run(reason)} if generic else {})}
    result = json.loads(result_file.read_text())
    if result.get("version") != PROTOCOL_VERSION:
        return {**base, "ok": False, "reason": f"Deeploy worker speaks version {result.get('version')}, "
                                               f"edgemtl expects {PROTOCOL_VERSION}"}
    tool = f"deeploy-pulp {result.get('deeploy_version', '?')}"
    extra = {"generic": generic_record(result["generic"], meta, generic_whole_onnx)} if "generic" in result else {}
    if not result.get("ok"):
        return {**base, "ok": False, "seconds": seconds, "tool": tool, "deeploy_version": result.get("deeploy_version"),
                "stage": result.get("stage"),
                "reason": f"Deeploy {result.get('stage', '?')}: {result.get('reason', 'unknown')}", **extra}
    memory = result["memory"]
    return {**base, "ok": True, "seconds": seconds, "tool": tool, "deeploy_version": result.get("deeploy_version"),
            "files": result["files"], "memory": memory,
            "fits": {level: info["total"] <= info["capacity"] for level, info in memory.items()},
            "layers": attach_layers(result["layers"], meta), "tile_summary": tile_summary(result["layers"]),
            "n_cores": result.get("n_cores"), **extra}


def _not_run(reason: str) -> dict[str, Any]:
    return {"ok": False, "ran": False, "reason": f"not run: {reason}", "files": [], "seconds": 0.0,
            "platform": GENERIC_PLATFORM, "numerics_checked": False, "numerics_reason": "no Generic code generated"}


def generic_record(generic: dict[str, Any], meta: dict[str, Any], whole_onnx: Path | None) -> dict[str, Any]:
    """The worker's Generic verdict, each rejected node named with its edgemtl layer (from the ONNX's metadata)."""
    def named(record: dict[str, Any], node_layers: dict[str, str]) -> dict[str, Any]:
        out = {k: v for k, v in record.items() if k not in ("onnx_path", "whole_graph")}
        out["ran"] = out.get("stage") != "mapping"
        out["rejected"] = [{**r, "layer": node_layers.get(r.get("node", ""), r.get("node"))}
                           for r in record.get("rejected", [])]
        return out

    record = named(generic, meta.get("node_layers", {}))
    record["onnx"] = "the same integer ONNX as PULPOpen"
    record.update(numerics_checked=False, numerics_reason=NUMERICS_REASON)
    if "whole_graph" in generic:
        whole_meta = read_deeploy_metadata(Path(whole_onnx)) if whole_onnx else {}
        record["whole_graph"] = named(generic["whole_graph"], whole_meta.get("node_layers", {}))
        record["whole_graph"]["onnx"] = f"the whole task graph ({Path(whole_onnx).name if whole_onnx else '?'})"
    return record


def tile_summary(layers: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per local memory level: how many layers are tiled into it, their tiles in all, and the most of one layer."""
    summary: dict[str, dict[str, int]] = {}
    for entry in layers:
        for level, count in (entry.get("tile_counts") or {}).items():
            row = summary.setdefault(level, {"layers": 0, "tiles": 0, "max_tiles": 0, "layers_with_several": 0})
            row["layers"] += 1
            row["tiles"] += int(count)
            row["max_tiles"] = max(row["max_tiles"], int(count))
            row["layers_with_several"] += int(count) > 1
    return summary


def unmapped_message(unmapped: list[dict[str, Any]]) -> str:
    """One line naming the layers ({layer, op, reason} each) PULPOpen has no mapping for."""
    listed = "; ".join(f"{u['layer']} ({u['op']}): {u['reason']}" for u in unmapped)
    return f"{len(unmapped)} layer(s) Deeploy's PULPOpen cannot map: {listed}"


def attach_layers(layers: list[dict[str, Any]], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Name, for each Deeploy layer, the edgemtl layers whose tensors it writes. Deeploy renames fused nodes but
    keeps tensor names, suffixed `_tensor` and sometimes `_split` / `_pre_transposed` / `_tp`; its own layout
    Transposes get the layer of the tensor they move, or none for the network input's."""
    tensor_layers = meta.get("tensor_layers") or meta.get("layer_outputs", {})
    if "layer_outputs" in meta and "tensor_layers" not in meta:
        tensor_layers = {tensor: layer for layer, tensor in meta["layer_outputs"].items()}
    patterns = {tensor: re.compile(rf"(?:^|_){re.escape(tensor)}_tensor(?:_|$)") for tensor in tensor_layers}
    # Deeploy renames the model's outputs output_0, output_1, ... in order (several for a mappable prefix); a layer
    # in NHWC writes `<fused node>_output_<i>_pre_transposed` and a Transpose then writes output_<i>
    graph_outputs = {f"output_{i}": tensor for i, tensor in enumerate(meta.get("outputs") or [meta.get("output")])}
    output_name = re.compile(r"(?:.*_)?(output_\d+)(?:_pre_transposed)?")
    attached = []
    for entry in layers:
        names = set()
        for out in entry.get("outputs", []):
            match = output_name.fullmatch(out)
            if match and graph_outputs.get(match.group(1)) in tensor_layers:
                names.add(tensor_layers[graph_outputs[match.group(1)]])
            hits = [tensor for tensor, pattern in patterns.items() if pattern.search(out)]
            # a hit that is the "_"-suffix of a longer hit ("pooled" inside "p_pooled") is not the tensor
            names |= {tensor_layers[h] for h in hits if not any(o != h and o.endswith(f"_{h}") for o in hits)}
        attached.append({**entry, "edgemtl_layers": sorted(names)})
    return attached


def l1_hints(onnx_path: Path, l1_bytes: int) -> list[str]:
    """Fully connected layers Deeploy's PULP tiler cannot fit: it keeps the input dimension K whole and tiles the
    outputs by 16, double-buffered, so a Gemm with >= 16 outputs needs about 2 * 16 * K bytes of L1 for weights."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    node_layers = read_deeploy_metadata(onnx_path).get("node_layers", {})
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    hints = []
    for node in model.graph.node:
        if node.op_type != "Gemm" or node.input[1] not in weights:
            continue
        outputs, k = weights[node.input[1]]  # transB=1: (outputs, K)
        need = 2 * min(outputs, GEMM_OUTPUT_TILE) * k
        if need > l1_bytes:
            layer = node_layers.get(node.name, node.name)
            hints.append(f"layer {layer!r}: a fully connected layer with K={k} inputs needs ~{need:,} B of L1 for "
                         f"double-buffered weight tiles ({min(outputs, GEMM_OUTPUT_TILE)} outputs each; Deeploy does "
                         f"not tile the input dimension), more than L1's {l1_bytes:,} B")
    return hints


# -- Deeploy's Generic code on the host, where Deeploy's kernel sources are on disk ---------------------------------
_HARNESS = r"""/* edgemtl: N samples of DeeployNetwork's inputs from argv[1], its outputs to argv[2] */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "Network.h"
int main(int argc, char **argv) {
  static int8_t sample[%(bytes)d];
  FILE *in, *out;
  uint32_t i, o, offset;
  if (argc != 3 || !(in = fopen(argv[1], "rb")) || !(out = fopen(argv[2], "wb"))) return 2;
  InitNetwork(0, 1);
  while (fread(sample, 1, sizeof sample, in) == sizeof sample) {
    for (i = 0, offset = 0; i < DeeployNetwork_num_inputs; offset += DeeployNetwork_inputs_bytes[i++])
      memcpy(DeeployNetwork_inputs[i], sample + offset, DeeployNetwork_inputs_bytes[i]);
    RunNetwork(0, 1);
    for (o = 0; o < DeeployNetwork_num_outputs; o++)
      fwrite(DeeployNetwork_outputs[o], 1, DeeployNetwork_outputs_bytes[o], out);
  }
  fclose(in);
  return fclose(out) != 0;
}
"""
_C_TYPES = {"int8_t": np.int8, "uint8_t": np.uint8, "int16_t": np.int16, "uint16_t": np.uint16, "int32_t": np.int32,
            "uint32_t": np.uint32}


def generic_kernels_dir() -> Path | None:
    """Deeploy's `TargetLibraries/Generic` from `EDGEMTL_DEEPLOY_GENERIC_KERNELS`, or None (not on PyPI)."""
    value = os.environ.get(GENERIC_KERNELS_ENV)
    if not value:
        return None
    folder = Path(value)
    if not (folder / "inc" / "DeeployBasicMath.h").is_file() or not list((folder / "src").glob("*.c")):
        raise EdgemtlError(f"{GENERIC_KERNELS_ENV}={value} is not Deeploy's TargetLibraries/Generic (no "
                           "inc/DeeployBasicMath.h or src/*.c)")
    return folder


def _io_types(header: str, kind: str) -> list[type]:
    found = {index: ctype for ctype, index in re.findall(rf"extern (\w+)\s*\* ?DeeployNetwork_{kind}_(\d+);", header)}
    types = [found.get(str(i)) for i in range(len(found))]
    if not types or None in types or any(t not in _C_TYPES for t in types):
        raise EdgemtlError(f"cannot read the {kind} types of Deeploy's Network.h ({found or 'none declared'})")
    return [_C_TYPES[t] for t in types]


def run_generic_on_host(generic_dir: Path, q_inputs: np.ndarray, meta: dict[str, Any], workdir: Path,
                        kernels: Path, timeout_s: float = 300.0) -> list[np.ndarray]:
    """Compile Deeploy's Generic Network.c with Deeploy's own kernels (`kernels` = its TargetLibraries/Generic,
    built into a static library as Deeploy's CMake does) and the host gcc, run it on `q_inputs` (N, ...) and return
    every output (N, ...) as int64 in edgemtl's integers. Sign propagation as Deeploy's test generator applies it:
    an uint8 input is fed as x - 128 (the worker's input offset), an uint8 output in a signed C buffer is read
    back + 128. One-line EdgemtlError when a build or run fails."""
    generic_dir, workdir = Path(generic_dir), Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    header = (generic_dir / "Network.h").read_text()
    in_types, out_types = _io_types(header, "input"), _io_types(header, "output")
    if len(in_types) != 1 or np.dtype(in_types[0]).itemsize != 1:
        raise EdgemtlError(f"Deeploy's Network.h has {len(in_types)} inputs of {in_types}: one 8-bit input expected")
    x = np.asarray(q_inputs).astype(np.int64)
    if meta.get("input_dtype") == "uint8":
        x = x - 128
    flags = ["-std=gnu11", "-O1", "-w", "-DDEEPLOY_GENERIC_PLATFORM", f"-I{kernels / 'inc'}", f"-I{generic_dir}"]
    objects = []
    for source in sorted((kernels / "src").glob("*.c")):
        obj = workdir / f"{source.stem}.o"
        _gcc([*flags, "-c", str(source), "-o", str(obj)], timeout_s, f"Deeploy kernel {source.name}")
        objects.append(str(obj))
    library = workdir / "libdeeploybasic.a"
    library.unlink(missing_ok=True)
    _tool(["ar", "rcs", str(library), *objects], timeout_s, "ar of Deeploy's Generic kernels")
    sample_bytes = int(np.prod(x.shape[1:]))
    (workdir / "harness.c").write_text(_HARNESS % {"bytes": sample_bytes})
    exe = workdir / "deeploy_generic"
    _gcc([*flags, str(workdir / "harness.c"), str(generic_dir / "Network.c"), str(library), "-lm", "-o", str(exe)],
         timeout_s, "Deeploy's Generic Network.c")
    (workdir / "inputs.bin").write_bytes(x.astype(in_types[0]).tobytes())
    _tool([str(exe), str(workdir / "inputs.bin"), str(workdir / "outputs.bin")], timeout_s,
          "Deeploy's Generic network")
    raw = np.frombuffer((workdir / "outputs.bin").read_bytes(), dtype=np.uint8)
    sizes = [int(n) for n in re.findall(r"DeeployNetwork_outputs_bytes\[\d+\] = \{([\d, ]+)\}", header)[0].split(",")]
    per_sample = sum(sizes)
    if raw.size != per_sample * len(x):
        raise EdgemtlError(f"Deeploy's Generic network wrote {raw.size} bytes, expected {per_sample * len(x)}")
    raw = raw.reshape(len(x), per_sample)
    outputs, start = [], 0
    dtypes = meta.get("output_dtypes") or [meta.get("output_dtype", "int8")]
    for index, (size, ctype) in enumerate(zip(sizes, out_types)):
        values = np.ascontiguousarray(raw[:, start:start + size]).view(ctype).astype(np.int64)
        if dtypes[index] == "uint8" and np.dtype(ctype).kind == "i":
            values = values + 128
        outputs.append(values)
        start += size
    return outputs


def _gcc(args: list[str], timeout_s: float, what: str) -> None:
    _tool(["gcc", *args], timeout_s, what)


def _tool(command: list[str], timeout_s: float, what: str) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except FileNotFoundError:
        raise EdgemtlError(f"{command[0]} is not on PATH (needed for {what}); install gcc / binutils") from None
    except subprocess.TimeoutExpired:
        raise EdgemtlError(f"{what} took more than {timeout_s:g} s and was stopped") from None
    if done.returncode != 0:
        detail = " ".join((done.stderr or done.stdout).split())[:300]
        raise EdgemtlError(f"{what} failed with status {done.returncode}: {detail}")


def main(argv: list[str]) -> int:  # pragma: no cover - a manual entry point
    """python -m edgemtl.backends.deeploy MODEL.onnx OUT_DIR L1_BYTES L2_BYTES: print the result as JSON."""
    if len(argv) != 5:
        print("usage: python -m edgemtl.backends.deeploy MODEL.onnx OUT_DIR L1_BYTES L2_BYTES", file=sys.stderr)
        return 2
    print(json.dumps(deeploy_generate(Path(argv[1]), Path(argv[2]), int(argv[3]), int(argv[4])), indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv))
