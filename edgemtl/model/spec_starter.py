"""`edgemtl spec MODEL`: a starter spec written from the model's real outputs, so a user edits kinds instead of
typing shapes. Output shapes come from running the model once (ONNX Runtime for an ONNX file, the factory's
module for a state_dict); task kinds are guesses from the shapes, marked as such in the file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edgemtl.errors import EdgemtlError, first_line

HEADER = """\
# Starter spec written by `edgemtl spec` from the model's real output shapes.
# Check every task's `kind` (guessed from its shape): classification | segmentation | depth | normals | edges |
# regression | raw (any output, judged by its agreement with the float model). Set input.mean / input.std to the
# normalisation your images get before the model (values for images scaled to [0, 1]); they are 0 / 1 here.
"""


def starter_spec(model_path: Path, *, factory: str | None = None, input_shape: list[int] | None = None) -> str:
    """The YAML text of a spec for `model_path` (an ONNX file, or a state_dict with `factory`)."""
    if not model_path.is_file():
        raise EdgemtlError(f"model file {model_path} does not exist")
    if model_path.suffix.lower() == ".onnx":
        shape, outputs = _onnx_outputs(model_path, input_shape)
    elif factory is not None:
        if input_shape is None:
            raise EdgemtlError("a factory model needs --input-shape C,H,W (its code does not say what it takes)")
        shape, outputs = input_shape, _factory_outputs(model_path, factory, input_shape)
    else:
        raise EdgemtlError(f"{model_path}: `edgemtl spec` reads an ONNX file, or a state_dict with --model-factory")
    tasks = [_task_entry(name, out_shape, shape) for name, out_shape in outputs.items()]
    body = {"input": {"shape": shape, "mean": [0.0] * shape[0], "std": [1.0] * shape[0]}, "tasks": tasks}
    return HEADER + yaml.safe_dump(body, sort_keys=False, default_flow_style=None)


def _onnx_outputs(path: Path, input_shape: list[int] | None) -> tuple[list[int], dict[str, list[int]]]:
    import onnxruntime as ort

    from edgemtl.model.onnx_import import image_input_of, read_onnx

    proto = read_onnx(path)
    dims = list(image_input_of(proto, path).type.tensor_type.shape.dim)
    graph_shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims[1:]]
    if input_shape is not None:  # it wins over fixed dims too, as in the importer (exporters write dummy sizes)
        shape = input_shape
    elif None in graph_shape:
        raise EdgemtlError(f"{path}'s input has free dimensions {graph_shape} (C, H, W): pass --input-shape C,H,W")
    else:
        shape = [int(v) for v in graph_shape]
    for dim, value in zip(dims, [1, *shape]):
        dim.Clear()
        dim.dim_value = value
    try:
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
        values = session.run(None, {session.get_inputs()[0].name: x})
    except Exception as exc:  # the graph cannot load or run at that shape: the user's model or shape is wrong
        raise EdgemtlError(f"ONNX Runtime cannot run {path} on an input of shape {[1, *shape]}: {first_line(exc)}") from None
    return shape, {o.name: list(v.shape[1:]) for o, v in zip(session.get_outputs(), values)}


def _factory_outputs(path: Path, factory: str, shape: list[int]) -> dict[str, list[int]]:
    import torch

    from edgemtl.model.checkpoint import factory_model
    from edgemtl.user_code import call_user

    model = factory_model(path, factory)
    with torch.no_grad():
        outputs = call_user(model.eval(), factory, "the model's forward", torch.randn(2, *shape))
    if not isinstance(outputs, dict) or not all(isinstance(v, torch.Tensor) for v in outputs.values()):
        raise EdgemtlError(f"the model's forward must return a dict task -> tensor, got {type(outputs).__name__}")
    return {name: list(value.shape[1:]) for name, value in outputs.items()}


def _task_entry(output: str, shape: list[int], input_shape: list[int]) -> dict[str, Any]:
    name = re.sub(r"\W", "_", output)
    name = name if re.match(r"^[A-Za-z_]", name) else f"task_{name}"
    entry: dict[str, Any] = {"name": name, "kind": _guess_kind(shape, input_shape), "output_shape": shape}
    if name != output:
        entry["onnx_output"] = output
    return entry


def _guess_kind(shape: list[int], input_shape: list[int]) -> str:
    """classification for a vector, depth / segmentation for a map of the input's size, raw otherwise."""
    if len(shape) == 1:
        return "classification"
    if len(shape) == 3 and shape[1:] == input_shape[1:]:
        return "depth" if shape[0] == 1 else "segmentation"
    return "raw"
