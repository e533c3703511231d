"""Calibration for `quantize_int8`: float values of the tensors that need a scale, the scale chosen from them,
and each integer layer's SQNR against float (where a path loses accuracy)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort

from edgemtl.model.intgraph import RANGES, IntGraph, quantize_input, run_reference
from edgemtl.passes.int8.config import Int8Config


def probe(model: onnx.ModelProto, tensors: list[str]) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """One image (C, H, W) -> the float values of `tensors` (and the input) in ONNX Runtime, unoptimised."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in tensors if t not in present and t != probe.graph.input[0].name)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]

    def run(image: np.ndarray) -> dict[str, np.ndarray]:
        return {input_name: image[None], **dict(zip(names, session.run(names, {input_name: image[None]})))}

    return run


def calibration_values(model: onnx.ModelProto, images: np.ndarray, tensors: list[str], config: Int8Config
                        ) -> dict[str, tuple[np.ndarray, float]]:
    """Per tensor: a seeded subset of its float values over the images, and the exact max |x|."""
    run = probe(model, tensors)
    rng = np.random.default_rng(config.seed)
    per_image = max(1, config.values_per_tensor // len(images))
    kept: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    peak = dict.fromkeys(tensors, 0.0)
    for image in images:
        results = run(image)
        for t in tensors:
            flat = results[t].reshape(-1)
            if not flat.size:   # an expert no token of this image was routed to
                continue
            peak[t] = max(peak[t], float(np.abs(flat).max()))
            kept[t].append(flat if flat.size <= per_image else rng.choice(flat, per_image, replace=False))
    return {t: (np.concatenate([np.zeros(0), *kept[t]]).astype(np.float32), peak[t]) for t in tensors}


def layer_sqnr(model: onnx.ModelProto, graph: IntGraph, images: np.ndarray) -> dict[str, float]:
    """Per integer node whose output is a tensor of the float graph: the SQNR (dB) of its dequantized output against
    that float tensor on real images, the error every layer up to it has added (where a path loses accuracy)."""
    known = {t.name for t in [*model.graph.value_info, *model.graph.output]}
    nodes = [n for n in graph.nodes if n.output in known]
    run = probe(model, [n.output for n in nodes])
    q = quantize_input(graph, images.astype(np.float64))
    ints = run_reference(graph, q, keep_all=True)
    floats = [run(image) for image in images]
    sqnr = {}
    for node in nodes:
        want = np.stack([f[node.output].reshape(-1) for f in floats]).astype(np.float64)
        got = ints[node.output].reshape(len(images), -1) * graph.tensors[node.output].scale
        noise = float(((want - got) ** 2).mean())
        sqnr[node.name] = round(10 * np.log10(float((want**2).mean()) / noise), 2) if noise > 0 else float("inf")
    return sqnr


def choose_scale(values: np.ndarray, peak: float, dtype: str, config: Int8Config) -> float:
    """The activation scale of one tensor from its calibration values (see `Int8Config.scale_method`)."""
    lo, hi = RANGES[dtype]
    if peak <= 0.0:
        return 1.0 / hi
    if config.scale_method == "max":
        return peak / hi
    magnitude = np.abs(values)
    if config.scale_method == "percentile":
        return max(float(np.percentile(magnitude, config.percentile)), peak * 1e-3) / hi
    candidates = {peak * f for f in np.linspace(0.25, 1.0, 31)}
    candidates |= {float(np.percentile(magnitude, p)) for p in (99.0, 99.9, 99.99, 99.999)}
    best, best_error = peak, np.inf
    for clip in sorted(c for c in candidates if c > 0):
        scale = clip / hi
        error = float(np.mean((np.clip(np.rint(values / scale), lo, hi) * scale - values) ** 2))
        if error < best_error:
            best, best_error = clip, error
    return best / hi

