"""Reference vectors from the user's own images (`edgemtl profile --data`): what a board's outputs are checked
against when the images the bundle was compiled with are not the ones that matter (say, frames from the board's
own camera).

The bundle's spec (input shape, normalisation, tasks) is read from its manifest; the first test-split images of
`--data` are normalised by it; each task's float and int8 ONNX graphs are run on them by ONNX Runtime on this host.
The vectors are written to `BUNDLE/profile/reference/<data>/<task>/` (replaced as a whole, never half-written)
and the compile-time ones are left as they were.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgemtl.backends import onnxruntime as ort_backend
from edgemtl.bundle import file_slug
from edgemtl.data.sources import DEFAULT_HOLDOUT, open_data
from edgemtl.errors import EdgemtlError
from edgemtl.model.spec import ModelSpec, parse_model_spec

REFERENCE_SAMPLES = 4  # images per task in a reference set (the profiler runs and checks the first)
GRAPHS = {"output_float": "onnx", "output_int8": "int8_onnx"}  # reference file -> the manifest artifact it runs


def bundle_spec(manifest: dict[str, Any], where: str) -> ModelSpec:
    """The spec the bundle was compiled for, as far as data needs it: input shape and normalisation, tasks."""
    model = manifest.get("model") or {}
    if "input" not in model:
        raise EdgemtlError(f"{where} records no model input (shape, mean, std): recompile it with this edgemtl")
    tasks = [{"name": name, "kind": entry["kind"], "output_shape": entry["output_shape"]}
             for name, entry in manifest["tasks"].items()]
    return parse_model_spec({"input": model["input"], "tasks": tasks}, where)


def write_data_reference(bundle_path: Path, manifest: dict[str, Any], tasks: list[str], data: str, *,
                         resize: bool = False, holdout: tuple[float, float] | None = None, threads: int = 0,
                         samples: int = REFERENCE_SAMPLES) -> tuple[dict[str, dict[str, str]], dict[str, Any]]:
    """({task: {"input" | "output_float" | "output_int8": path relative to the bundle}}, a description to record)."""
    spec = bundle_spec(manifest, f"{bundle_path}/manifest.json")
    source = open_data(data, spec, resize=resize, holdout=holdout or DEFAULT_HOLDOUT)
    split = source.load("test", n=samples)
    images = np.ascontiguousarray(split.normalise(split.images[: len(split)]), dtype=np.float32)
    relative_root = Path("profile") / "reference" / file_slug(Path(data).name or data, "data")
    final = bundle_path / relative_root
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".reference-", dir=final.parent))
    paths: dict[str, dict[str, str]] = {}
    try:
        for task in tasks:
            artifacts = manifest["tasks"][task].get("artifacts") or {}
            graphs = {kind: bundle_path / artifacts[key] for kind, key in GRAPHS.items()
                      if isinstance(artifacts.get(key), str) and (bundle_path / artifacts[key]).is_file()}
            if not graphs:
                continue  # nothing ONNX Runtime can run for this task: the profiler skips it too
            (staging / task).mkdir()
            np.save(staging / task / "input.npy", images)
            paths[task] = {"input": str(relative_root / task / "input.npy")}
            for kind, graph in graphs.items():
                output = ort_backend.run(ort_backend.make_session(graph, threads), images)[task]
                np.save(staging / task / f"{kind}.npy", output)
                paths[task][kind] = str(relative_root / task / f"{kind}.npy")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in (final.parent, final.parent.parent):  # profile/reference, profile: when this made them
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    description = {**source.describe(), "split": "test", "samples": len(images), "folder": str(relative_root),
                   "outputs": "onnxruntime on this host (float and int8 ONNX of the bundle)"}
    return paths, description
