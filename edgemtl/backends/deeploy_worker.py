"""Deeploy code-generation worker: runs INSIDE the deeploy-pulp venv (`.venv-deeploy`), never imported by edgemtl.

Interface (version 1), called by `edgemtl.backends.deeploy` as a subprocess:

    .venv-deeploy/bin/python -P deeploy_worker.py REQUEST.json RESULT.json

REQUEST: {"version": 1, "onnx_path", "out_dir", "input_dtype": "int8"|"uint8", "l1_bytes", "l2_bytes", "l3_bytes",
          "n_cores", "double_buffering": bool, "seed",
          "generic": {"enabled": bool, "whole_onnx_path": str | null}  (optional; absent = not run)}.
RESULT:  {"version": 1, "ok": true, "deeploy_version", "seconds", "files": [...],
          "memory": {"L1"|"L2"|"L3": {"capacity", "static", "dynamic", "total"}},
          "layers": [{"name", "op", "inputs", "outputs", "memory_levels", "tiles", "tile_counts"}...],
          "generic": {...}}
      or {"version": 1, "ok": false, "stage": "<load|frontend|tiling|codegen|boot|protocol>", "reason": "<one line>",
          "deeploy_version", "seconds", "generic": {...}}.
GENERIC: {"ok", "reason" (null when ok), "files" (relative to out_dir, under generic/), "seconds", "platform",
          "layers": [{"name", "op"}], "rejected": [{"node", "op", "reason"}],
          "whole_graph": {the same keys} (only when whole_onnx_path is given)}.

What it does: the tiled PULPOpen (Siracusa) flow of Deeploy's own test driver (DeeployTest/testMVP.py), reduced to
what a compile needs: the PULP platform with its 8-core cluster engine wrapped memory-aware with a three-level
hierarchy (L3 <-> L2 <-> L1, sizes from the request; I/O and default level L2, kernels run from L1), Deeploy's
memory-level annotation, then the tiler: double buffering between levels (every non-transient tensor gets two
buffers, as DeeployTest's DBTiler), the TetrisRandom static allocator (pure Python; the default MiniMalloc needs an
external binary) and the `random-max` constraint-solver strategy. After `prepare()`, the network's C (Network.h /
Network.c: buffers, RunNetwork, InitNetwork) is written to `out_dir`, plus the L3-resident constants as .hex files
the runtime loads, like Deeploy's test generator does (but without test vectors).

Tile counts per layer come from the tiling solution as the code generator consumed it: for every layer it tiles
at a memory level X (X = L1 for the L2 -> L1 loop, L2 for L3 -> L2), Deeploy hoists a `TILING_CODEGEN_<X>_<layer>_
numTiles` table of cumulative tile counts; its last entry is the number of tiles that loop runs.

Then, when the request asks for it, Deeploy's Generic platform (plain C reference kernels, untiled, sign
propagation) takes the SAME integer ONNX, as DeeployTest's generateNetwork.py sets it up (GenericPlatform,
GenericDeployer with GenericOptimizer, channels first, input offsets 0 for int8 / 128 for uint8), into
`out_dir/generic/`: a check that a second Deeploy platform accepts the graph; its C is not run here (Deeploy's
kernel library is not on PyPI; `deeploy.run_generic_on_host` runs it where a checkout's kernels are on disk).
Two adjustments, neither changes the arithmetic: Gemm nodes get ONNX's default alpha = beta = 1.0 written out as
floats (Generic's GEMM parser calls `.is_integer()` on them and fails on the int it assumes when they are absent;
edgemtl's exporter writes them itself now, this covers other files), and
nodes whose op type no Generic engine maps are listed as rejected before Deeploy is run (it would stop at the
first). With `whole_onnx_path` (the whole task graph when PULPOpen took only a prefix) the same check runs on it,
generated into `generic/whole/` only when Generic maps every node.

The memory map is Deeploy's own accounting (its `_printMemorySummary`): per level, the static part (constant
tensors placed there) plus the worst-case dynamic arena the static allocator reserved. Only the standard library is
imported at module level.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

# Run as a script, Python puts this file's folder first on sys.path, where edgemtl's own `onnxruntime.py` would
# shadow the real onnxruntime. The caller also passes `-P`; this covers a direct run.
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if (str(Path(p).resolve()) if p else str(Path.cwd())) != _HERE]

PROTOCOL_VERSION = 1
NETWORK_NAME = "DeeployNetwork"


class StageFailed(Exception):
    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage, self.reason = stage, reason


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:500] if text else type(exc).__name__


def _deeploy_version() -> str:
    from importlib.metadata import version

    return version("deeploy-pulp")


def _double_buffer_tiler(base: type) -> type:
    """A Tiler with two buffers for every non-transient tensor at every hop (DeeployTest's DBTiler)."""
    from Deeploy.DeeployTypes import TransientBuffer

    class DoubleBufferTiler(base):  # type: ignore[misc, valid-type]
        def multiBufferStrategy(self, tilerModel: Any, ctxt: Any, pattern: Any, path: list, hop: str,
                                tensorName: str) -> int:
            return 1 if isinstance(ctxt.lookup(tensorName), TransientBuffer) else 2

    return DoubleBufferTiler


def _single_buffer_tiler(base: type) -> type:
    class SingleBufferTiler(base):  # type: ignore[misc, valid-type]
        def multiBufferStrategy(self, tilerModel: Any, ctxt: Any, pattern: Any, path: list, hop: str,
                                tensorName: str) -> int:
            return 1

    return SingleBufferTiler


def build_deployer(request: dict[str, Any], work_dir: Path) -> Any:
    """The PULPOpen deployer, memory-level aware and tiled, for the request's model and memory sizes."""
    import onnx
    import onnx_graphsurgeon as gs
    from Deeploy.AbstractDataTypes import PointerClass
    from Deeploy.CommonExtensions.DataTypes import int8_t, uint8_t
    from Deeploy.MemoryLevelExtension.MemoryLevels import MemoryHierarchy, MemoryLevel
    from Deeploy.MemoryLevelExtension.NetworkDeployers.MemoryLevelDeployer import MemoryDeployerWrapper
    from Deeploy.MemoryLevelExtension.OptimizationPasses.MemoryLevelAnnotationPasses import \
        AnnotateDefaultMemoryLevel, AnnotateIOMemoryLevel
    from Deeploy.Targets.PULPOpen.Deployer import PULPDeployer
    from Deeploy.Targets.PULPOpen.Platform import MemoryPULPPlatformWrapper, PULPClusterEngine, PULPOptimizer, \
        PULPPlatform
    from Deeploy.TilingExtension.TilerExtension import Tiler, TilerDeployerWrapper

    try:
        graph = gs.import_onnx(onnx.load(request["onnx_path"]))
    except Exception as exc:
        raise StageFailed("load", _one_line(exc)) from exc

    platform = PULPPlatform(engines=[PULPClusterEngine("PULPCluster", n_cores=int(request["n_cores"]))])
    input_type = {"int8": int8_t, "uint8": uint8_t}[request["input_dtype"]]
    input_types = {f"input_{i}": PointerClass(input_type) for i in range(len(graph.inputs))}
    deployer = PULPDeployer(graph, platform, input_types, PULPOptimizer, scheduler=lambda g: [[n] for n in g.nodes],
                            name=NETWORK_NAME, default_channels_first=False,
                            deeployStateDir=str(work_dir / "deeployStates"))

    l3 = MemoryLevel(name="L3", neighbourNames=["L2"], size=int(request["l3_bytes"]))
    l2 = MemoryLevel(name="L2", neighbourNames=["L3", "L1"], size=int(request["l2_bytes"]))
    l1 = MemoryLevel(name="L1", neighbourNames=["L2"], size=int(request["l1_bytes"]))
    hierarchy = MemoryHierarchy([l3, l2, l1])
    hierarchy.setDefaultMemoryLevel("L2")
    deployer.Platform = MemoryPULPPlatformWrapper(deployer.Platform, hierarchy, l1)
    deployer = MemoryDeployerWrapper(deployer, [AnnotateIOMemoryLevel("L2"), AnnotateDefaultMemoryLevel(hierarchy)])

    tiler_cls = _double_buffer_tiler(Tiler) if request["double_buffering"] else _single_buffer_tiler(Tiler)
    deployer = TilerDeployerWrapper(deployer, tiler_cls, testName="edgemtl", workDir=str(work_dir))
    deployer.tiler.memoryAllocStrategy = "TetrisRandom"
    deployer.tiler.searchStrategy = "random-max"
    return deployer


def write_network(deployer: Any, out_dir: Path) -> list[str]:
    """Network.h / Network.c (and L3 constants as .hex), the shape of Deeploy's generated test network."""
    import numpy as np
    from Deeploy.DeeployTypes import CodeGenVerbosity, ConstantBuffer

    verbosity = CodeGenVerbosity(None)
    header = "\n".join([
        "#ifndef __DEEPLOY_NETWORK_H__", "#define __DEEPLOY_NETWORK_H__",
        "#include <stdint.h>", "#include <stdio.h>", "#include <stdlib.h>",
        deployer.generateIncludeString(),
        "void RunNetwork(uint32_t core_id, uint32_t numThreads);",
        "void InitNetwork(uint32_t core_id, uint32_t numThreads);",
        deployer.generateIOBufferInitializationCode(), "#endif", ""])
    body = "\n".join([
        "#include <math.h>", "#include <stdio.h>", "#include <stdlib.h>", deployer.generateIncludeString(),
        '#include "Network.h"', deployer.generateBufferInitializationCode(), deployer.generateGlobalDefinitionCode(),
        "void RunNetwork(__attribute__((unused)) uint32_t core_id, __attribute__((unused)) uint32_t numThreads) {",
        deployer.generateInferenceInitializationCode(), deployer.generateFunction(verbosity), "}",
        "void InitNetwork(__attribute__((unused)) uint32_t core_id, __attribute__((unused)) uint32_t numThreads) {",
        deployer.generateEngineInitializationCode(), deployer.generateBufferAllocationCode(), "}", ""])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "Network.h").write_text(header)
    (out_dir / "Network.c").write_text(body)
    files = ["Network.h", "Network.c"]
    # Constants Deeploy placed in L3 are loaded from files at run time (generateBufferAllocationCode names them)
    for buf in deployer.ctxt.globalObjects.values():
        if isinstance(buf, ConstantBuffer) and hasattr(buf, "extName"):
            (out_dir / "hex").mkdir(exist_ok=True)
            width = buf._type.referencedType.typeWidth
            signed = buf._type.referencedType.typeMin < 0
            kind = f"{'int' if signed else 'uint'}{width}"
            values = np.asarray(buf.values).reshape(-1)
            pad = (-values.size) % max(1, 32 // width)
            np.pad(values, (0, pad)).astype(kind).tofile(out_dir / "hex" / f"{buf.extName}.hex")
            files.append(f"hex/{buf.extName}.hex")
    return files


def memory_map(deployer: Any) -> dict[str, dict[str, int]]:
    """Per memory level: capacity, static (constants placed there), dynamic (the allocator's worst-case arena)."""
    out = {}
    hierarchy = deployer.tiler.memoryHierarchy
    for level, dynamic in deployer.worstCaseBufferSize.items():
        static = int(deployer.tiler.outerMemoryScheduler.getConstantTensorOffset(deployer.ctxt, level))
        capacity = int(hierarchy.memoryLevels[level].size)
        out[level] = {"capacity": capacity, "static": static, "dynamic": int(dynamic), "total": static + int(dynamic)}
    for level, info in hierarchy.memoryLevels.items():
        out.setdefault(level, {"capacity": int(info.size), "static": int(
            deployer.tiler.outerMemoryScheduler.getConstantTensorOffset(deployer.ctxt, level)), "dynamic": 0})
        out[level].setdefault("total", out[level]["static"])
    return out


def layer_report(deployer: Any) -> list[dict[str, Any]]:
    """Per Deeploy layer (after its fusions): op, output tensors, where each tensor lives, and the tile shapes the
    tiler chose for each tensor at its target level (one entry per tile step; with double buffering two such
    buffers exist)."""
    layers = []
    for name, layer in deployer.layerBinding.items():
        node = layer.node
        entry: dict[str, Any] = {"name": name, "op": node.op, "outputs": [t.name for t in node.outputs],
                                 "inputs": [t.name for t in node.inputs]}
        levels = {}
        for tensor in list(node.inputs) + list(node.outputs):
            try:
                levels[tensor.name] = getattr(deployer.ctxt.lookup(tensor.name), "_memoryLevel", None)
            except Exception:
                continue
        entry["memory_levels"] = levels
        entry["tiles"] = _tiles(layer)
        entry["tile_counts"] = tile_counts(deployer, name)
        layers.append(entry)
    return layers


def tile_counts(deployer: Any, layer_name: str) -> dict[str, int]:
    """Number of tiles the generated loop runs for this layer at each local memory level it is tiled into
    ({"L1": n} for an L2 -> L1 loop, "L2" for L3 -> L2); {} for a layer without a tiling loop."""
    counts = {}
    for level in deployer.tiler.memoryHierarchy.memoryLevels:
        buf = deployer.ctxt.globalObjects.get(f"TILING_CODEGEN_{level}_{layer_name}_numTiles")
        if buf is not None:
            values = [int(v) for v in list(getattr(buf, "values", []))]
            if values:
                counts[level] = values[-1]
    return counts


def _tiles(layer: Any) -> dict[str, Any]:
    block = layer.mapper.binder.executionBlock
    while getattr(block, "patternMemoryConstraint", None) is None and hasattr(block, "baseBlock"):
        block = block.baseBlock  # closures wrap the block the tiler annotated
    pattern = getattr(block, "patternMemoryConstraint", None)
    if pattern is None:
        return {}
    tiles: dict[str, Any] = {}
    for step in pattern.nodeConstraints:
        for tensor, constraint in step.tensorMemoryConstraints.items():
            per_level = {}
            for level, mem in constraint.memoryConstraints.items():
                shape = getattr(mem, "shape", None)
                space = getattr(mem, "addrSpace", None)
                per_level[level] = {"shape": [int(s) for s in shape] if shape is not None else None,
                                    "bytes": _int_or_none(mem.size),
                                    "buffers": _int_or_none(mem.multiBufferCoefficient),
                                    "address_space": [int(a) for a in space] if space else None}
            tiles[tensor] = per_level
    return tiles


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):  # an unsolved solver variable
        return None


def _seed(request: dict[str, Any]) -> None:
    import random

    import numpy as np

    random.seed(int(request.get("seed", 0)))
    np.random.seed(int(request.get("seed", 0)))


def generate(request: dict[str, Any]) -> dict[str, Any]:
    """The tiled PULPOpen run, then (when asked) the Generic check; a PULPOpen failure does not stop the latter."""
    try:
        result = generate_pulp(request)
    except StageFailed as exc:
        traceback.print_exc()
        result = {"ok": False, "stage": exc.stage, "reason": exc.reason}
    except Exception as exc:  # booting Deeploy itself failed: report it, the caller decides
        traceback.print_exc()
        result = {"ok": False, "stage": "boot", "reason": _one_line(exc)}
    generic = request.get("generic") or {}
    if generic.get("enabled"):
        out_dir = Path(request["out_dir"]).resolve()
        result["generic"] = generic_check(request["onnx_path"], out_dir, "generic", request)
        if generic.get("whole_onnx_path"):
            result["generic"]["whole_graph"] = generic_check(generic["whole_onnx_path"], out_dir, "generic/whole",
                                                             request)
    return result


def generate_pulp(request: dict[str, Any]) -> dict[str, Any]:
    _seed(request)
    out_dir = Path(request["out_dir"]).resolve()
    work_dir = out_dir / "deeploy_work"
    work_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    deployer = build_deployer(request, work_dir)
    try:
        deployer.frontEnd()
    except Exception as exc:
        raise StageFailed("frontend", _one_line(exc)) from exc
    try:
        deployer.midEnd()
    except Exception as exc:
        raise StageFailed("tiling", _one_line(exc)) from exc
    try:
        from Deeploy.DeeployTypes import CodeGenVerbosity

        deployer.backEnd(CodeGenVerbosity(None))
        deployer.prepared = True
        files = write_network(deployer, out_dir)
    except Exception as exc:
        raise StageFailed("codegen", _one_line(exc)) from exc
    return {"ok": True, "seconds": time.perf_counter() - start, "files": files, "memory": memory_map(deployer),
            "layers": layer_report(deployer),
            "platform": "PULPOpen (Siracusa) cluster, tiled", "n_cores": int(request["n_cores"]),
            "double_buffering": bool(request["double_buffering"]), "allocator": "TetrisRandom"}


# -- the Generic platform: does a second Deeploy platform accept the same graph? ---------------------------------
GENERIC_PLATFORM = "Deeploy Generic (reference C kernels, untiled, single core)"


def _generic_mapping_keys() -> set[str]:
    from Deeploy.Targets.Generic.Platform import GenericPlatform

    return {op for engine in GenericPlatform().engines for op in engine.Mapping}


def generic_rejected_ops(graph: Any) -> list[dict[str, str]]:
    """Nodes whose op type no Generic engine maps (Deeploy would stop at the first with 'No mapping found')."""
    mapped = _generic_mapping_keys()
    rejected = []
    for node in graph.nodes:
        if node.op in mapped:
            continue
        onnx_op = _PLACEHOLDER_OPS.get(node.op, node.op)
        if onnx_op == node.op:
            reason = f"Generic has no mapping for op type {node.op!r}"
        elif onnx_op not in mapped:
            reason = f"Generic has no mapping for op type {onnx_op!r} (written as edgemtl's placeholder {node.op!r})"
        else:
            reason = (f"Generic maps {onnx_op!r}, but edgemtl writes this layer as its placeholder {node.op!r} "
                      "(no exact integer form for it in Deeploy's format)")
        rejected.append({"node": node.name, "op": node.op, "reason": reason})
    return rejected


# the placeholders deeploy_onnx writes for layers PULPOpen lacks, and the ONNX op each stands for
_PLACEHOLDER_OPS = {"resize_bilinear": "Resize", "resize_nearest": "Resize"}


_UNMAPPED_AT = re.compile(r"of node (.*?)Candidates: (\[.*?\])")


def build_generic_deployer(graph: Any, input_dtype: str, work_dir: Path) -> Any:
    """GenericPlatform + GenericDeployer as DeeployTest's mapDeployer builds them (channels first, sign propagation:
    an unsigned input is a signed type with an offset of 2^(bits-1))."""
    from Deeploy.AbstractDataTypes import PointerClass
    from Deeploy.CommonExtensions.DataTypes import int8_t
    from Deeploy.Targets.Generic.Deployer import GenericDeployer
    from Deeploy.Targets.Generic.Platform import GenericOptimizer, GenericPlatform

    for node in graph.nodes:  # ONNX's defaults, written out as the floats Generic's GEMM parser expects
        if node.op == "Gemm":
            for key in ("alpha", "beta"):
                node.attrs[key] = float(node.attrs.get(key, 1.0))
    names = [f"input_{i}" for i in range(len(graph.inputs))]
    offset = 128 if input_dtype == "uint8" else 0
    return GenericDeployer(graph, GenericPlatform(), {n: PointerClass(int8_t) for n in names}, GenericOptimizer,
                           scheduler=lambda g: list(g.nodes), name=NETWORK_NAME, default_channels_first=True,
                           deeployStateDir=str(work_dir / "deeployStates"), inputOffsets={n: offset for n in names})


def generic_check(onnx_path: str, out_dir: Path, sub: str, request: dict[str, Any]) -> dict[str, Any]:
    """Untiled code generation with Deeploy's Generic platform into out_dir/sub (never raises)."""
    import onnx
    import onnx_graphsurgeon as gs

    start = time.perf_counter()
    result: dict[str, Any] = {"ok": False, "reason": None, "files": [], "platform": GENERIC_PLATFORM,
                              "onnx_path": str(onnx_path), "layers": [], "rejected": []}
    try:
        _seed(request)
        graph = gs.import_onnx(onnx.load(str(onnx_path)))
        rejected = generic_rejected_ops(graph)
        if rejected:
            listed = "; ".join(f"{r['node']} ({r['op']})" for r in rejected)
            result.update(rejected=rejected, stage="mapping",
                          reason=f"{len(rejected)} node(s) Generic has no mapping for: {listed}; not run")
            return result
        target = out_dir / sub
        work_dir = target / "deeploy_work"
        work_dir.mkdir(parents=True, exist_ok=True)
        deployer = build_generic_deployer(graph, request.get("input_dtype", "int8"), work_dir)
        stage = "frontend"
        try:
            from Deeploy.DeeployTypes import CodeGenVerbosity

            deployer.frontEnd()
            stage = "midend"
            deployer.midEnd()
            stage = "codegen"
            deployer.backEnd(CodeGenVerbosity(None))
            deployer.prepared = True
            files = write_network(deployer, target)
        except Exception as exc:
            traceback.print_exc()
            reason = _one_line(exc)
            match = _UNMAPPED_AT.search(str(exc))
            if match:
                node = match.group(1).strip()
                op = next((n.op for n in deployer.graph.nodes if n.name == node), "?")
                result["rejected"] = [{"node": node, "op": op,
                                       "reason": f"no parser / type checker accepted it (candidates {match.group(2)})"}]
            result.update(stage=stage, reason=f"Deeploy Generic {stage}: {reason}")
            return result
        result.update(ok=True, files=[f"{sub}/{f}" for f in files],
                      layers=[{"name": name, "op": layer.node.op} for name, layer in deployer.layerBinding.items()])
        shutil.rmtree(work_dir, ignore_errors=True)  # Deeploy's state dumps: kept only when something failed
        return result
    except Exception as exc:  # loading or booting failed
        traceback.print_exc()
        result.update(stage="boot", reason=f"Deeploy Generic: {_one_line(exc)}")
        return result
    finally:
        result["seconds"] = time.perf_counter() - start


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: deeploy_worker.py REQUEST.json RESULT.json", file=sys.stderr)
        return 2
    request = json.loads(Path(argv[1]).read_text())
    start = time.perf_counter()
    if request.get("version") != PROTOCOL_VERSION:
        result: dict[str, Any] = {"ok": False, "stage": "protocol",
                                  "reason": f"worker speaks version {PROTOCOL_VERSION}, got {request.get('version')}"}
    else:
        result = generate(request)
    try:
        result["deeploy_version"] = _deeploy_version()
    except Exception:
        result["deeploy_version"] = "unknown"
    result.setdefault("seconds", time.perf_counter() - start)
    result["version"] = PROTOCOL_VERSION
    Path(argv[2]).write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main(sys.argv))
